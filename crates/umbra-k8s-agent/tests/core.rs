//! The agent's decisions on k8s-openapi objects, without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;
use umbra_k8s_agent::*;
use umbra_schemas::{FleetCommand, FleetCommandKind, FleetEventKind, Resources};

fn create(shadow: &str, host: &str, cpu: i64, mem: i64) -> FleetCommand {
    FleetCommand {
        command_id: format!("create-{shadow}"),
        kind: FleetCommandKind::CreateShadow,
        host_id: host.into(),
        target_host_id: None,
        shadow_id: Some(shadow.into()),
        workload_id: "Shop/Checkout".into(),
        request_id: None,
        resources: Resources {
            cpu_millicores: cpu,
            memory_bytes: mem,
            disk_io_bytes_per_s: 0,
        },
        issued_at: 1,
    }
}

#[test]
fn a_shadow_becomes_a_pinned_low_priority_placeholder_of_its_size() {
    let s = PlaceholderSettings::default();
    let pod = placeholder_pod(&create("3F2A-b", "node-7", 1500, 2 << 30), &s).expect("pod");
    let name = pod.metadata.name.clone().unwrap_or_default();
    assert!(name.starts_with("umbra-shadow-3f2a-b-"), "{name}");
    assert_ne!(
        name,
        placeholder_name("3f2a-b"),
        "ids differing in case stay apart"
    );
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels[SHADOW_LABEL], "3F2A-b");
    assert_eq!(
        labels[WORKLOAD_LABEL], "Shop_Checkout",
        "a valid label value"
    );
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann[COMMAND_ANNOTATION], "create-3F2A-b");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.priority_class_name.as_deref(), Some("umbra-shadow"));
    assert_eq!(
        spec.node_name, None,
        "through the scheduler, for preemption"
    );
    let term = &spec
        .affinity
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
        .expect("required node affinity")
        .node_selector_terms[0];
    let req = &term.match_expressions.as_ref().expect("expressions")[0];
    assert_eq!(
        (req.key.as_str(), req.values.clone()),
        ("kubernetes.io/hostname", Some(vec!["node-7".to_string()]))
    );
    let c = &spec.containers[0];
    let r = c.resources.as_ref().expect("resources");
    let req = r.requests.as_ref().expect("requests");
    assert_eq!(req["cpu"], Quantity("1500m".into()));
    assert_eq!(req["memory"], Quantity((2i64 << 30).to_string()));
    assert_eq!(r.limits, r.requests, "guaranteed: requests equal limits");
    assert!(c.readiness_probe.is_some(), "the health check");
}

#[test]
fn commands_that_cannot_be_a_placeholder_are_refused_with_the_reason() {
    let s = PlaceholderSettings::default();
    let mut c = create("s", "node-1", 0, 0);
    assert!(
        matches!(placeholder_pod(&c, &s), Err(AgentError::BadCommand { reason, .. }) if reason.contains("reserves nothing"))
    );
    c.resources.cpu_millicores = 100;
    c.shadow_id = None;
    assert!(placeholder_pod(&c, &s).is_err());
    c.shadow_id = Some("s".into());
    c.kind = FleetCommandKind::ReleaseShadow;
    assert!(placeholder_pod(&c, &s).is_err());
}

fn with_status(mut pod: Pod, node: Option<&str>, status: PodStatus) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = node.map(str::to_string);
    }
    pod.status = Some(status);
    pod
}

fn condition(t: &str, status: &str, reason: Option<&str>, message: Option<&str>) -> PodCondition {
    PodCondition {
        type_: t.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message: message.map(str::to_string),
        ..PodCondition::default()
    }
}

#[test]
fn pod_states_become_shadow_events_with_kubernetes_reasons() {
    let s = PlaceholderSettings::default();
    let pod = placeholder_pod(&create("s1", "node-1", 500, 1 << 30), &s).expect("pod");
    // Pending and unscheduled: nothing to say yet.
    assert_eq!(
        shadow_event(&with_status(pod.clone(), None, PodStatus::default()), 5),
        None
    );
    let ready = with_status(
        pod.clone(),
        Some("node-1"),
        PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![condition("Ready", "True", None, None)]),
            ..PodStatus::default()
        },
    );
    let e = shadow_event(&ready, 5).expect("an event");
    assert_eq!(
        (e.kind, e.host_id.as_str()),
        (FleetEventKind::Healthy, "node-1")
    );
    assert_eq!(e.shadow_id.as_deref(), Some("s1"));
    assert_eq!(e.workload_id.as_deref(), Some("Shop/Checkout"));
    let not_ready = with_status(
        pod.clone(),
        Some("node-1"),
        PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![condition(
                "Ready",
                "False",
                Some("ContainersNotReady"),
                None,
            )]),
            ..PodStatus::default()
        },
    );
    let e = shadow_event(&not_ready, 6).expect("an event");
    assert_eq!(
        (e.kind, e.reason.as_str()),
        (FleetEventKind::Unhealthy, "ContainersNotReady")
    );
    // Preempted by a real pod: failed, with the scheduler's reason.
    let preempted = with_status(
        pod.clone(),
        Some("node-1"),
        PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![
                condition("Ready", "True", None, None),
                condition(
                    "DisruptionTarget",
                    "True",
                    Some("PreemptionByScheduler"),
                    Some("default-scheduler: preempting to accommodate a higher priority pod"),
                ),
            ]),
            ..PodStatus::default()
        },
    );
    let e = shadow_event(&preempted, 7).expect("an event");
    assert_eq!(e.kind, FleetEventKind::Failed);
    assert!(
        e.reason
            .starts_with("PreemptionByScheduler: default-scheduler"),
        "{}",
        e.reason
    );
    // Evicted: the kubelet's reason.
    let evicted = with_status(
        pod.clone(),
        Some("node-1"),
        PodStatus {
            phase: Some("Failed".into()),
            reason: Some("Evicted".into()),
            message: Some("The node was low on resource: memory.".into()),
            ..PodStatus::default()
        },
    );
    let e = shadow_event(&evicted, 8).expect("an event");
    assert_eq!(e.kind, FleetEventKind::Failed);
    assert_eq!(e.reason, "Evicted: The node was low on resource: memory.");
    // Deleted by someone: failed.
    let mut deleted = ready.clone();
    deleted.metadata.deletion_timestamp = Some(Time(Default::default()));
    assert_eq!(
        shadow_event(&deleted, 9).map(|e| e.kind),
        Some(FleetEventKind::Failed)
    );
    // A pod that is not a placeholder: nothing.
    let mut other = ready;
    other.metadata.annotations = None;
    assert_eq!(shadow_event(&other, 10), None);
}

#[test]
fn quantities_follow_kubernetes_notation() {
    assert_eq!(parse_quantity("1500m", 1000.0), Ok(1500));
    assert_eq!(parse_quantity("2", 1000.0), Ok(2000));
    assert_eq!(parse_quantity("0.1", 1000.0), Ok(100));
    assert_eq!(parse_quantity("250000000n", 1000.0), Ok(250));
    assert_eq!(parse_quantity("1Gi", 1.0), Ok(1 << 30));
    assert_eq!(parse_quantity("512Mi", 1.0), Ok(512 << 20));
    assert_eq!(parse_quantity("1e3", 1.0), Ok(1000));
    assert_eq!(parse_quantity("64k", 1.0), Ok(64_000));
    assert!(parse_quantity("12parsecs", 1.0).is_err());
    assert!(parse_quantity("", 1.0).is_err());
}

#[test]
fn what_a_node_has_left_is_allocatable_minus_requests_of_live_pods() {
    let node = Node {
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("3920m".into())),
                ("memory".to_string(), Quantity("15Gi".into())),
                ("pods".to_string(), Quantity("110".into())),
            ])),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    let cap = node_capacity(&node).expect("capacity");
    assert_eq!((cap.cpu_millicores, cap.memory_bytes), (3920, 15 << 30));
    let s = PlaceholderSettings::default();
    let on = |shadow: &str, node: &str, phase: &str| {
        with_status(
            placeholder_pod(&create(shadow, node, 1000, 1 << 30), &s).expect("pod"),
            Some(node),
            PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            },
        )
    };
    let pods = vec![
        on("a", "node-1", "Running"),
        on("b", "node-1", "Pending"),
        on("c", "node-1", "Succeeded"),
        on("d", "node-2", "Running"),
    ];
    let used = committed_on("node-1", &pods).expect("committed");
    assert_eq!((used.cpu_millicores, used.memory_bytes), (2000, 2 << 30));
}

proptest! {
    /// Every shadow id gives a valid, stable pod name and label value.
    #[test]
    fn names_and_labels_are_always_valid(id in ".{0,120}") {
        let name = placeholder_name(&id);
        prop_assert!(name.len() <= 63);
        prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        prop_assert!(name.ends_with(|c: char| c.is_ascii_alphanumeric()));
        prop_assert_eq!(&name, &placeholder_name(&id));
        let v = label_value(&id);
        prop_assert!(v.len() <= 63);
        prop_assert!(v.is_empty() || (v.starts_with(|c: char| c.is_ascii_alphanumeric()) && v.ends_with(|c: char| c.is_ascii_alphanumeric())));
    }
}

fn placed(pod: Pod, node: &str) -> Pod {
    with_status(
        pod,
        Some(node),
        PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        },
    )
}

#[test]
fn every_shadow_command_plans_its_change_once() {
    let s = PlaceholderSettings::default();
    let c = create("s1", "node-1", 500, 1 << 30);
    // Create: a placeholder; again with it there: nothing, the same answer.
    let p = plan(&c, None, None, &s, 1);
    assert!(matches!(p.ops.as_slice(), [Op::Create(_)]));
    assert_eq!(p.answer.kind, FleetEventKind::Created);
    assert_eq!(p.answer.command_id.as_deref(), Some("create-s1"));
    let pod = placed(placeholder_pod(&c, &s).expect("pod"), "node-1");
    let again = plan(&c, Some(&pod), None, &s, 2);
    assert!(again.ops.is_empty());
    assert_eq!(again.answer.kind, FleetEventKind::Created);
    // Release: delete; when gone already: nothing.
    let release = FleetCommand {
        command_id: "release-s1".into(),
        kind: FleetCommandKind::ReleaseShadow,
        ..c.clone()
    };
    let p = plan(&release, Some(&pod), None, &s, 3);
    assert_eq!(
        p.ops,
        vec![Op::Delete {
            namespace: "umbra-shadows".into(),
            name: placeholder_name("s1")
        }]
    );
    assert_eq!(p.answer.kind, FleetEventKind::Released);
    let p = plan(&release, None, None, &s, 3);
    assert!(p.ops.is_empty());
    assert_eq!(p.answer.reason, "already gone");
    // Move: the old placeholder goes, one of the same size comes on the target node.
    let mv = FleetCommand {
        command_id: "move-s1".into(),
        kind: FleetCommandKind::MoveShadow,
        target_host_id: Some("node-2".into()),
        resources: Resources::ZERO,
        ..c.clone()
    };
    let p = plan(&mv, Some(&pod), None, &s, 4);
    let [Op::Delete { name: old, .. }, Op::Create(new)] = p.ops.as_slice() else {
        panic!("{:?}", p.ops)
    };
    assert_eq!(old, &placeholder_name("s1"));
    assert_ne!(
        new.metadata.name.as_deref(),
        Some(old.as_str()),
        "created while the old one terminates"
    );
    let req = new.spec.as_ref().expect("spec").containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert_eq!(req["cpu"], Quantity("500m".into()));
    assert_eq!(
        (p.answer.kind, p.answer.host_id.as_str()),
        (FleetEventKind::Moved, "node-2")
    );
    assert_eq!(p.answer.reason, "moved from node-1");
    let p = plan(&mv, None, None, &s, 4);
    assert_eq!(p.answer.kind, FleetEventKind::Refused);
}

#[test]
fn an_expansion_places_the_workloads_own_pod_on_the_shadows_node() {
    let s = PlaceholderSettings::default();
    let c = create("s1", "node-1", 500, 1 << 30);
    let pod = placed(placeholder_pod(&c, &s).expect("pod"), "node-3");
    let template: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "checkout", "labels": {"app": "checkout"}},
        "spec": {"containers": [{"name": "app", "image": "shop/checkout:1.2",
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}
    }))
    .expect("template");
    let expand = FleetCommand {
        command_id: "expand-r1".into(),
        kind: FleetCommandKind::ExpandShadow,
        request_id: Some("r1".into()),
        ..c.clone()
    };
    let p = plan(&expand, Some(&pod), Some(&template), &s, 5);
    let [Op::Create(w), Op::Delete { name: gone, .. }] = p.ops.as_slice() else {
        panic!("{:?}", p.ops)
    };
    assert_eq!(gone, &placeholder_name("s1"), "then the placeholder goes");
    assert_eq!(w.metadata.namespace.as_deref(), Some("default"));
    let spec = w.spec.as_ref().expect("spec");
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("shop/checkout:1.2")
    );
    assert_eq!(
        spec.priority_class_name, None,
        "its own priority, above the shadow's"
    );
    let values = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .and_then(|n| n.node_selector_terms[0].match_expressions.clone())
        .expect("pinned")[0]
        .values
        .clone();
    assert_eq!(
        values,
        Some(vec!["node-3".to_string()]),
        "the shadow's node"
    );
    let labels = w.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["app"], "checkout");
    assert_eq!(labels[WORKLOAD_LABEL], "Shop_Checkout");
    assert_eq!(
        (p.answer.kind, p.answer.host_id.as_str()),
        (FleetEventKind::Expanded, "node-3")
    );
    // No template named: refused with the reason.
    let p = plan(&expand, Some(&pod), None, &s, 6);
    assert_eq!(p.answer.kind, FleetEventKind::Refused);
    assert!(
        p.answer.reason.contains("no pod template"),
        "{}",
        p.answer.reason
    );
    // Standard placement: the template's pod on the command's node.
    let place = FleetCommand {
        kind: FleetCommandKind::PlaceWorkload,
        shadow_id: None,
        host_id: "node-5".into(),
        ..c.clone()
    };
    let p = plan(&place, None, Some(&template), &s, 7);
    assert_eq!(p.answer.kind, FleetEventKind::Placed);
    let [Op::Create(w)] = p.ops.as_slice() else {
        panic!("{:?}", p.ops)
    };
    let mut placed_pod = (**w).clone();
    placed_pod.spec.as_mut().expect("spec").node_name = Some("node-5".into());
    assert_eq!(
        plan(&place, None, None, &s, 7).answer.kind,
        FleetEventKind::Refused
    );
    // Its release deletes that pod and frees what it requested; then nothing is left.
    let release = FleetCommand {
        kind: FleetCommandKind::ReleaseWorkload,
        ..place
    };
    let p = plan_workload_release(&release, std::slice::from_ref(&placed_pod), 8);
    assert_eq!(p.ops.len(), 1);
    assert_eq!(p.answer.resources.cpu_millicores, 500);
    let p = plan_workload_release(&release, &[], 9);
    assert!(p.ops.is_empty());
    assert_eq!(p.answer.reason, "nothing placed");
    // Not a fleet command the agent knows for shadows.
    let bad = FleetCommand {
        kind: FleetCommandKind::ReleaseWorkload,
        ..c
    };
    assert_eq!(
        plan(&bad, None, None, &s, 7).answer.kind,
        FleetEventKind::Refused
    );
}
