//! The Kubernetes manifests: every overlay renders with `kubectl kustomize` (the Debian
//! `kubectl` package; `make test` installs it), every object parses into its k8s-openapi type,
//! and what an operator relies on holds: probes on /healthz and /readyz, resources, a service
//! account per service with no API token, a Service and a PodDisruptionBudget selecting each
//! Deployment, images that the Dockerfile builds, Kafka UI wired to the registry (dev) and the
//! endpoints pointing elsewhere (prod). No API server runs here: nothing is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use serde::Deserialize;
use umbra_k8s_agent::cluster::{Scope, API_CALLS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Default)]
struct Objects {
    deployments: Vec<Deployment>,
    statefulsets: Vec<StatefulSet>,
    jobs: Vec<Job>,
    services: Vec<Service>,
    accounts: Vec<ServiceAccount>,
    configmaps: Vec<ConfigMap>,
    pdbs: Vec<PodDisruptionBudget>,
    priority_classes: Vec<PriorityClass>,
    namespaces: Vec<Namespace>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
}

/// One rendered object as its k8s-openapi type, or a failure naming what did not fit.
fn typed<T: serde::de::DeserializeOwned>(overlay: &str, kind: &str, v: serde_yaml::Value) -> T {
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    serde_yaml::from_value(v).unwrap_or_else(|e| panic!("{overlay}: {kind} {name}: {e}"))
}

fn render(overlay: &str) -> Objects {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("k8s/overlays").join(overlay))
        .output()
        .expect("kubectl is installed (Debian package kubectl; make test installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut o = Objects::default();
    for doc in serde_yaml::Deserializer::from_slice(&out.stdout) {
        let v = serde_yaml::Value::deserialize(doc).expect("YAML");
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "Deployment" => o.deployments.push(typed(overlay, &kind, v)),
            "StatefulSet" => o.statefulsets.push(typed(overlay, &kind, v)),
            "Job" => o.jobs.push(typed(overlay, &kind, v)),
            "Service" => o.services.push(typed(overlay, &kind, v)),
            "ServiceAccount" => o.accounts.push(typed(overlay, &kind, v)),
            "ConfigMap" => o.configmaps.push(typed(overlay, &kind, v)),
            "PodDisruptionBudget" => o.pdbs.push(typed(overlay, &kind, v)),
            "PriorityClass" => o.priority_classes.push(typed(overlay, &kind, v)),
            "Namespace" => o.namespaces.push(typed(overlay, &kind, v)),
            "Role" => o.roles.push(typed(overlay, &kind, v)),
            "RoleBinding" => o.role_bindings.push(typed(overlay, &kind, v)),
            "ClusterRole" => o.cluster_roles.push(typed(overlay, &kind, v)),
            "ClusterRoleBinding" => o.cluster_role_bindings.push(typed(overlay, &kind, v)),
            other => panic!("{overlay}: unexpected kind {other}"),
        }
    }
    o
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn dockerfile_stages() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("docker/Dockerfile"))
        .expect("Dockerfile")
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

const SERVICES: [&str; 5] = [
    "ingest",
    "forecast",
    "shadow-manager",
    "interceptor",
    "rebalancer",
];

fn check_umbra_services(overlay: &str, o: &Objects) {
    let stages = dockerfile_stages();
    let accounts: BTreeSet<String> = o
        .accounts
        .iter()
        .filter_map(|a| a.metadata.name.clone())
        .collect();
    for s in SERVICES {
        let name = format!("umbra-{s}");
        let d = o
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{overlay}: no Deployment {name}"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("umbra"));
        let pod = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec");
        let sa = pod.service_account_name.clone().expect("service account");
        assert!(
            accounts.contains(&sa),
            "{overlay}: {name} uses unknown {sa}"
        );
        let account = o
            .accounts
            .iter()
            .find(|a| a.metadata.name.as_deref() == Some(sa.as_str()))
            .expect("account");
        assert_eq!(
            account.automount_service_account_token,
            Some(false),
            "{sa}: the services never call the Kubernetes API"
        );
        let c = &pod.containers[0];
        let image = c.image.clone().expect("image");
        let stage = image
            .strip_prefix("umbra/")
            .and_then(|i| i.split(':').next())
            .unwrap_or_default();
        assert!(
            stages.contains(stage),
            "{overlay}: image {image} is not built by the Dockerfile"
        );
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(
            path(&c.readiness_probe).as_deref(),
            Some("/readyz"),
            "{name}"
        );
        assert_eq!(
            path(&c.liveness_probe).as_deref(),
            Some("/healthz"),
            "{name}"
        );
        let r = c.resources.as_ref().expect("resources");
        assert!(
            r.requests
                .as_ref()
                .is_some_and(|m| m.contains_key("cpu") && m.contains_key("memory")),
            "{name}"
        );
        assert!(
            r.limits.as_ref().is_some_and(|m| m.contains_key("memory")),
            "{name}"
        );
        let l = pod_labels(d);
        assert!(
            o.services.iter().any(|s| s
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .is_some_and(|sel| selects(&sel, &l))
                && s.spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .is_some_and(|p| p.iter().any(|p| p.name.as_deref() == Some("http-metrics")))),
            "{overlay}: no metrics Service selects {name}"
        );
        assert!(
            o.pdbs.iter().any(|p| p
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.clone())
                .is_some_and(|sel| selects(&sel, &l))),
            "{overlay}: no PodDisruptionBudget for {name}"
        );
        assert!(
            c.env_from.iter().flatten().any(|e| e
                .config_map_ref
                .as_ref()
                .is_some_and(|r| r.name == "umbra-endpoints")),
            "{name} reads the endpoints"
        );
    }
    let pc = o
        .priority_classes
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("umbra-shadow"))
        .expect("the umbra-shadow PriorityClass");
    assert!(pc.value < 0, "shadows are preempted by any real pod");
    assert_eq!(pc.preemption_policy.as_deref(), Some("Never"));
    let namespaces: BTreeSet<_> = o
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["umbra".to_string(), "umbra-shadows".to_string()])
    );
    check_agent(overlay, o);
}

/// The agent: its own account with a token (it calls the API), probes, and a Deployment of
/// one (its pod watch reports each placeholder once).
fn check_agent(overlay: &str, o: &Objects) {
    let d = o
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("umbra-k8s-agent"))
        .unwrap_or_else(|| panic!("{overlay}: no agent Deployment"));
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("umbra-k8s-agent"));
    let c = &pod.containers[0];
    assert!(dockerfile_stages().contains("k8s-agent"));
    assert_eq!(c.image.as_deref(), Some("umbra/k8s-agent:0.1.0"));
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    let account = o
        .accounts
        .iter()
        .find(|a| a.metadata.name.as_deref() == Some("umbra-k8s-agent"))
        .expect("agent account");
    assert_ne!(account.automount_service_account_token, Some(false));
}

/// (scope, group, resource, verb) for every permission `rules` grant.
fn grants(scope: Scope, rules: &[PolicyRule]) -> BTreeSet<(Scope, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(
            r.resource_names.is_none() && r.non_resource_urls.is_none(),
            "{r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(g != "*" && res != "*" && v != "*", "no wildcards: {r:?}");
                    out.insert((scope, g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn endpoints(o: &Objects) -> BTreeMap<String, String> {
    o.configmaps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("umbra-endpoints"))
        .and_then(|c| c.data.clone())
        .expect("umbra-endpoints")
}

#[test]
fn the_dev_overlay_is_a_complete_stack_with_kafka_ui_on_the_registry() {
    let o = render("dev");
    check_umbra_services("dev", &o);
    let e = endpoints(&o);
    let registry_url = &e["SCHEMA_REGISTRY_URL"];
    let bootstrap = &e["KAFKA_BOOTSTRAP_SERVERS"];
    let service_names: BTreeSet<String> = o
        .services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    // The endpoints name Services of this overlay.
    let host = |url: &str| {
        url.trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert!(service_names.contains(&host(bootstrap)), "{bootstrap}");
    assert!(
        service_names.contains(&host(registry_url)),
        "{registry_url}"
    );
    assert_eq!(o.statefulsets.len(), 1, "single-node Kafka");
    let ui = o
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("kafka-ui"))
        .expect("Kafka UI");
    let env: BTreeMap<String, String> = ui
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        env.get("KAFKA_CLUSTERS_0_SCHEMAREGISTRY"),
        Some(registry_url)
    );
    assert_eq!(
        env.get("KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"),
        Some(bootstrap)
    );
    assert_eq!(o.jobs.len(), 1, "a job creates the topics");
}

#[test]
fn the_prod_overlay_points_at_an_existing_kafka_and_registry() {
    let o = render("prod");
    check_umbra_services("prod", &o);
    let e = endpoints(&o);
    assert_ne!(e["KAFKA_BOOTSTRAP_SERVERS"], "kafka:9092");
    assert_ne!(e["SCHEMA_REGISTRY_URL"], "http://schema-registry:8081");
    assert!(o.statefulsets.is_empty(), "no Kafka of its own");
    assert!(
        o.deployments.iter().all(|d| d
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("umbra-"))),
        "only umbra's services"
    );
}

#[test]
fn the_agents_rbac_grants_exactly_the_calls_it_makes() {
    for overlay in ["dev", "prod"] {
        let o = render(overlay);
        let agent = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == "umbra-k8s-agent"
                    && s.namespace.as_deref() == Some("umbra")
            })
        };
        let mut granted = BTreeSet::new();
        // Roles: scope from the namespace the binding grants in.
        for b in o.role_bindings.iter().filter(|b| agent(&b.subjects)) {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            let scope = match ns.as_str() {
                "umbra-shadows" => Scope::Placeholders,
                "default" => Scope::Workloads,
                other => panic!("{overlay}: the agent is granted in namespace {other}"),
            };
            assert_eq!(
                b.role_ref.kind, "Role",
                "{overlay}: no ClusterRole bound per namespace"
            );
            let role = o
                .roles
                .iter()
                .find(|r| {
                    r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                        && r.metadata.namespace.as_deref() == Some(ns.as_str())
                })
                .unwrap_or_else(|| panic!("{overlay}: Role {} in {ns}", b.role_ref.name));
            granted.extend(grants(scope, role.rules.as_deref().unwrap_or_default()));
        }
        for b in o
            .cluster_role_bindings
            .iter()
            .filter(|b| agent(&b.subjects))
        {
            let role = o
                .cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
                .expect("ClusterRole");
            granted.extend(grants(
                Scope::Cluster,
                role.rules.as_deref().unwrap_or_default(),
            ));
        }
        let calls: BTreeSet<_> = API_CALLS
            .iter()
            .map(|(s, g, r, v)| (*s, g.to_string(), r.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            granted, calls,
            "{overlay}: the agent's RBAC must grant exactly umbra_k8s_agent::cluster::API_CALLS"
        );
        // Nothing else is bound to any umbra account.
        let others = o
            .role_bindings
            .iter()
            .map(|b| &b.subjects)
            .chain(o.cluster_role_bindings.iter().map(|b| &b.subjects))
            .flat_map(|s| s.iter().flatten())
            .filter(|s| s.name != "umbra-k8s-agent")
            .count();
        assert_eq!(others, 0, "{overlay}: only the agent calls the API");
    }
}
