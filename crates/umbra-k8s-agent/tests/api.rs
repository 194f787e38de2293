//! The agent against kube's mock service, scenario by scenario (the `tower-test` pattern of
//! kube-rs' controller-rs): an `ApiServerVerifier` expects each request the agent makes, in
//! order, checks it, and answers it as an API server would. No real API server runs here.

use std::time::Duration;

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use kube::client::Body;
use kube::runtime::watcher::Event;
use serde_json::{json, Value};
use umbra_k8s_agent::cluster::{news, ApiCall, Cluster, Scope, API_CALLS};
use umbra_k8s_agent::*;
use umbra_ledger::{Ledger, ShadowHealth};
use umbra_schemas::{FleetCommand, FleetCommandKind, FleetEvent, FleetEventKind, Resources};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Expects the agent's requests one by one and answers them.
struct ApiServerVerifier(Handle);

impl ApiServerVerifier {
    /// The next request, which must be `method` on a URI starting with `path` and containing
    /// each of `query`; returns its body and the means to answer.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        query: &[&str],
    ) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no {method} {path} within 5 s"))
            .unwrap_or_else(|| panic!("client gone before {method} {path}"));
        let uri = req.uri().to_string();
        let decoded = uri
            .replace("%2F", "/")
            .replace("%3D", "=")
            .replace("%2C", ",")
            .replace("%21", "!");
        assert_eq!(req.method(), &method, "{uri}");
        assert!(
            decoded.starts_with(path),
            "expected {method} {path}, got {decoded}"
        );
        for q in query {
            assert!(decoded.contains(q), "{decoded} lacks {q}");
        }
        let call = api_call(&method, &decoded);
        assert!(
            API_CALLS.contains(&call),
            "{method} {decoded} is {call:?}, which API_CALLS (and so the RBAC) does not list"
        );
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json request body")
        };
        (body, send)
    }

    /// After the client is dropped: no request was left unanswered.
    async fn done(mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await
        {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// The RBAC terms of a request: scope, group, resource, verb.
fn api_call(method: &Method, uri: &str) -> ApiCall {
    let path = uri.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => panic!("not an API path: {uri}"),
    };
    let group: &'static str = match group {
        "" => "",
        "metrics.k8s.io" => "metrics.k8s.io",
        g => panic!("unexpected API group {g}"),
    };
    let (scope, rest) = match rest {
        ["namespaces", "umbra-shadows", rest @ ..] => (Scope::Placeholders, rest),
        ["namespaces", "default", rest @ ..] => (Scope::Workloads, rest),
        ["namespaces", ns, ..] => panic!("unexpected namespace {ns}"),
        rest => (Scope::Cluster, rest),
    };
    let resource: &'static str = match rest.first() {
        Some(&"pods") => "pods",
        Some(&"nodes") => "nodes",
        Some(&"configmaps") => "configmaps",
        r => panic!("unexpected resource {r:?}"),
    };
    let named = rest.len() > 1;
    let verb = match (method.as_str(), named) {
        ("GET", false) if uri.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (scope, group, resource, verb)
}

fn answer(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response"),
    );
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": items})
}

fn mock() -> (Cluster, ApiServerVerifier) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    (
        Cluster::new(client, PlaceholderSettings::default()),
        ApiServerVerifier(handle),
    )
}

fn command(kind: FleetCommandKind, id: &str, shadow: &str, host: &str) -> FleetCommand {
    FleetCommand {
        command_id: id.into(),
        kind,
        host_id: host.into(),
        target_host_id: None,
        shadow_id: Some(shadow.into()),
        workload_id: "shop/checkout".into(),
        request_id: Some("r1".into()),
        resources: Resources {
            cpu_millicores: 500,
            memory_bytes: 1 << 30,
            disk_io_bytes_per_s: 0,
        },
        issued_at: 1,
    }
}

/// The placeholder as the API server would hold it: scheduled on `node`, with a Ready
/// condition of `ready`.
fn running(shadow: &str, node: &str, ready: bool) -> Pod {
    let cmd = command(
        FleetCommandKind::CreateShadow,
        &format!("create-{shadow}"),
        shadow,
        node,
    );
    let mut pod = placeholder_pod(&cmd, &PlaceholderSettings::default()).expect("pod");
    pod.metadata.resource_version = Some("7".into());
    pod.metadata.uid = Some(format!("uid-{shadow}"));
    pod.spec.as_mut().expect("spec").node_name = Some(node.into());
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: (!ready).then(|| "ContainersNotReady".into()),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

fn ledger_with(events: &[FleetEvent]) -> Ledger {
    let mut l = Ledger::default();
    for e in events {
        l.apply(e);
    }
    l
}

fn created(shadow: &str, host: &str) -> FleetEvent {
    FleetEvent {
        event_id: format!("created-{shadow}"),
        command_id: Some(format!("create-{shadow}")),
        kind: FleetEventKind::Created,
        host_id: host.into(),
        shadow_id: Some(shadow.into()),
        workload_id: Some("shop/checkout".into()),
        resources: Resources {
            cpu_millicores: 500,
            memory_bytes: 1 << 30,
            disk_io_bytes_per_s: 0,
        },
        reason: String::new(),
        occurred_at: 1,
    }
}

const PODS: &str = "/api/v1/namespaces/umbra-shadows/pods";

#[tokio::test]
async fn create_makes_one_pinned_placeholder_and_a_retry_makes_none() {
    let (cluster, mut api) = mock();
    let cmd = command(FleetCommandKind::CreateShadow, "create-s1", "s1", "node-1");
    let server = tokio::spawn(async move {
        let (_, send) = api
            .expect(Method::GET, PODS, &["labelSelector=umbra.io/shadow-id=s1"])
            .await;
        answer(send, StatusCode::OK, &list("PodList", vec![]));
        let (body, send) = api.expect(Method::POST, PODS, &[]).await;
        assert_eq!(body["spec"]["priorityClassName"], "umbra-shadow");
        assert_eq!(
            body["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "500m"
        );
        assert_eq!(
            body["spec"]["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                ["matchExpressions"][0]["values"][0],
            "node-1"
        );
        assert_eq!(
            body["metadata"]["annotations"][COMMAND_ANNOTATION],
            "create-s1"
        );
        answer(send, StatusCode::CREATED, &body);
        // The same command again (its answer was lost): the placeholder is found, not re-made.
        let (_, send) = api
            .expect(Method::GET, PODS, &["labelSelector=umbra.io/shadow-id=s1"])
            .await;
        answer(
            send,
            StatusCode::OK,
            &list(
                "PodList",
                vec![serde_json::to_value(running("s1", "node-1", false)).expect("json")],
            ),
        );
        api
    });
    let first = cluster.execute(&cmd, 10).await.expect("create");
    assert_eq!(
        (first.kind, first.host_id.as_str()),
        (FleetEventKind::Created, "node-1")
    );
    let again = cluster.execute(&cmd, 11).await.expect("retry");
    assert_eq!(again.kind, FleetEventKind::Created);
    assert_eq!(again.reason, "placeholder exists");
    drop(cluster);
    server.await.expect("verifier").done().await;
}

#[tokio::test]
async fn a_refused_create_answers_refused_with_kubernetes_message_and_an_outage_is_an_error() {
    let (cluster, mut api) = mock();
    let cmd = command(FleetCommandKind::CreateShadow, "create-s1", "s1", "node-1");
    let server = tokio::spawn(async move {
        let (_, send) = api.expect(Method::GET, PODS, &[]).await;
        answer(send, StatusCode::OK, &list("PodList", vec![]));
        let (_, send) = api.expect(Method::POST, PODS, &[]).await;
        answer(
            send,
            StatusCode::FORBIDDEN,
            &status(403, "Forbidden", "pods \"umbra-shadow-s1\" is forbidden: exceeded quota: shadows, requested: cpu=500m"),
        );
        // Then the API server fails: not a refusal, the command is to be tried again.
        let (_, send) = api.expect(Method::GET, PODS, &[]).await;
        answer(
            send,
            StatusCode::SERVICE_UNAVAILABLE,
            &status(503, "ServiceUnavailable", "etcd leader changed"),
        );
        api
    });
    let refused = cluster.execute(&cmd, 10).await.expect("an answer");
    assert_eq!(refused.kind, FleetEventKind::Refused);
    assert!(
        refused.reason.contains("exceeded quota"),
        "{}",
        refused.reason
    );
    assert_eq!(refused.command_id.as_deref(), Some("create-s1"));
    let err = cluster.execute(&cmd, 11).await.expect_err("an outage");
    assert!(matches!(err, AgentError::Api(_)), "{err:?}");
    drop(cluster);
    server.await.expect("verifier").done().await;
}

#[tokio::test]
async fn pod_watch_reports_ready_then_preemption_with_kubernetes_reason() {
    let (cluster, mut api) = mock();
    let mut ledger = ledger_with(&[created("s1", "node-1")]);
    let starting = running("s1", "node-1", false);
    let ready = running("s1", "node-1", true);
    let mut preempted = ready.clone();
    preempted
        .status
        .as_mut()
        .expect("status")
        .conditions
        .as_mut()
        .expect("conditions")
        .push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("PreemptionByScheduler".into()),
            message: Some(
                "default-scheduler: preempting to accommodate a higher priority pod".into(),
            ),
            ..PodCondition::default()
        });
    let server = {
        let (starting, ready, preempted) = (starting.clone(), ready.clone(), preempted.clone());
        tokio::spawn(async move {
            let (_, send) = api
                .expect(
                    Method::GET,
                    PODS,
                    &["labelSelector=app.kubernetes.io/managed-by=umbra"],
                )
                .await;
            answer(
                send,
                StatusCode::OK,
                &list(
                    "PodList",
                    vec![serde_json::to_value(&starting).expect("json")],
                ),
            );
            let (_, send) = api
                .expect(Method::GET, PODS, &["watch=true", "resourceVersion=100"])
                .await;
            let mut body = Vec::new();
            for (kind, pod) in [
                ("MODIFIED", &ready),
                ("MODIFIED", &preempted),
                ("DELETED", &preempted),
            ] {
                body.extend(
                    serde_json::to_vec(&json!({"type": kind, "object": pod})).expect("json"),
                );
                body.push(b'\n');
            }
            send.send_response(
                Response::builder()
                    .body(Body::from(body))
                    .expect("response"),
            );
            api
        })
    };
    let mut watch = Box::pin(cluster.watch());
    let mut told = Vec::new();
    let mut seen = 0;
    while seen < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("watch event in time")
            .expect("stream goes on")
            .expect("no watch error");
        let found = match ev {
            Event::InitApply(p) | Event::Apply(p) => {
                seen += 1;
                news(&ledger, &p, false, 20)
            }
            Event::Delete(p) => {
                seen += 1;
                news(&ledger, &p, true, 21)
            }
            Event::Init | Event::InitDone => None,
        };
        if let Some(e) = found {
            ledger.apply(&e);
            told.push(e);
        }
    }
    let kinds: Vec<_> = told.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![FleetEventKind::Healthy, FleetEventKind::Failed],
        "starting says nothing; ready is healthy; preemption fails it; its deletion then tells nothing: {told:?}"
    );
    assert_eq!(
        told[1].reason,
        "PreemptionByScheduler: default-scheduler: preempting to accommodate a higher priority pod"
    );
    assert_eq!(told[1].host_id, "node-1");
    assert!(ledger.shadow("s1").is_none(), "the shadow has ended");
    drop(watch);
    drop(cluster);
    server.await.expect("verifier");
}

#[tokio::test]
async fn expand_starts_the_workload_from_its_template_on_the_shadows_node_then_removes_the_placeholder(
) {
    let (cluster, mut api) = mock();
    let cmd = command(FleetCommandKind::ExpandShadow, "expand-r1", "s1", "node-3");
    let placeholder = running("s1", "node-3", true);
    let name = placeholder.metadata.name.clone().expect("name");
    let template = "metadata:\n  name: checkout\n  labels: {app: checkout}\nspec:\n  containers:\n  - name: app\n    image: shop/checkout:1.2\n    resources: {requests: {cpu: 500m, memory: 1Gi}}\n";
    let server = {
        let name = name.clone();
        tokio::spawn(async move {
            let (_, send) = api
                .expect(Method::GET, PODS, &["umbra.io/shadow-id=s1"])
                .await;
            answer(
                send,
                StatusCode::OK,
                &list(
                    "PodList",
                    vec![serde_json::to_value(&placeholder).expect("json")],
                ),
            );
            let (_, send) = api
                .expect(
                    Method::GET,
                    "/api/v1/namespaces/default/configmaps",
                    &["labelSelector=umbra.io/workload-id=shop_checkout"],
                )
                .await;
            answer(
                send,
                StatusCode::OK,
                &list(
                    "ConfigMapList",
                    vec![
                        json!({"metadata": {"name": "checkout-template", "namespace": "default"}, "data": {"pod": template}}),
                    ],
                ),
            );
            let (body, send) = api
                .expect(Method::POST, "/api/v1/namespaces/default/pods", &[])
                .await;
            assert_eq!(body["spec"]["containers"][0]["image"], "shop/checkout:1.2");
            assert_eq!(
                body["spec"]["affinity"]["nodeAffinity"]
                    ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                    ["matchExpressions"][0]["values"][0],
                "node-3"
            );
            assert_eq!(body["metadata"]["labels"][WORKLOAD_LABEL], "shop_checkout");
            answer(send, StatusCode::CREATED, &body);
            let (_, send) = api
                .expect(Method::DELETE, &format!("{PODS}/{name}"), &[])
                .await;
            answer(
                send,
                StatusCode::OK,
                &serde_json::to_value(&placeholder).expect("json"),
            );
            api
        })
    };
    let e = cluster.execute(&cmd, 30).await.expect("expand");
    assert_eq!(
        (e.kind, e.host_id.as_str()),
        (FleetEventKind::Expanded, "node-3")
    );
    drop(cluster);
    server.await.expect("verifier").done().await;
}

#[tokio::test]
async fn release_deletes_the_placeholder_and_a_second_release_finds_it_gone() {
    let (cluster, mut api) = mock();
    let cmd = command(
        FleetCommandKind::ReleaseShadow,
        "release-s1",
        "s1",
        "node-1",
    );
    let placeholder = running("s1", "node-1", true);
    let name = placeholder.metadata.name.clone().expect("name");
    let server = tokio::spawn(async move {
        let (_, send) = api
            .expect(Method::GET, PODS, &["umbra.io/shadow-id=s1"])
            .await;
        answer(
            send,
            StatusCode::OK,
            &list(
                "PodList",
                vec![serde_json::to_value(&placeholder).expect("json")],
            ),
        );
        let (_, send) = api
            .expect(Method::DELETE, &format!("{PODS}/{name}"), &[])
            .await;
        // Deleted meanwhile by someone else: still released.
        answer(
            send,
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "pods not found"),
        );
        let (_, send) = api
            .expect(Method::GET, PODS, &["umbra.io/shadow-id=s1"])
            .await;
        answer(send, StatusCode::OK, &list("PodList", vec![]));
        api
    });
    let e = cluster.execute(&cmd, 40).await.expect("release");
    assert_eq!(
        (e.kind, e.reason.as_str()),
        (FleetEventKind::Released, "released")
    );
    let e = cluster.execute(&cmd, 41).await.expect("release again");
    assert_eq!(
        (e.kind, e.reason.as_str()),
        (FleetEventKind::Released, "already gone")
    );
    drop(cluster);
    server.await.expect("verifier").done().await;
}

#[tokio::test]
async fn after_a_restart_the_relist_reconciles_the_cluster_with_the_fleets_events() {
    let (cluster, mut api) = mock();
    // What the fleet said before the restart: s1 created (its pod became ready meanwhile),
    // s2 healthy (its pod was deleted meanwhile), s3 released (its pod was left behind).
    let mut s2 = created("s2", "node-2");
    s2.command_id = Some("create-s2".into());
    let healthy = FleetEvent {
        kind: FleetEventKind::Healthy,
        command_id: None,
        ..s2.clone()
    };
    let released = FleetEvent {
        kind: FleetEventKind::Released,
        command_id: Some("release-s3".into()),
        ..created("s3", "node-1")
    };
    let ledger = ledger_with(&[
        created("s1", "node-1"),
        s2,
        healthy,
        created("s3", "node-1"),
        released,
    ]);
    assert_eq!(
        ledger.shadow("s2").map(|s| s.health),
        Some(ShadowHealth::Healthy)
    );
    let s1 = running("s1", "node-1", true);
    let s3 = running("s3", "node-1", true);
    let s3_name = s3.metadata.name.clone().expect("name");
    let server = tokio::spawn(async move {
        let (_, send) = api.expect(Method::GET, "/api/v1/nodes", &[]).await;
        answer(
            send,
            StatusCode::OK,
            &list(
                "NodeList",
                vec![
                    json!({"metadata": {"name": "node-1"}, "status": {"allocatable": {"cpu": "3920m", "memory": "15Gi"}}}),
                ],
            ),
        );
        let (_, send) = api
            .expect(
                Method::GET,
                PODS,
                &["labelSelector=app.kubernetes.io/managed-by=umbra"],
            )
            .await;
        answer(
            send,
            StatusCode::OK,
            &list(
                "PodList",
                vec![
                    serde_json::to_value(&s1).expect("json"),
                    serde_json::to_value(&s3).expect("json"),
                ],
            ),
        );
        let (_, send) = api
            .expect(Method::DELETE, &format!("{PODS}/{s3_name}"), &[])
            .await;
        answer(
            send,
            StatusCode::OK,
            &serde_json::to_value(&s3).expect("json"),
        );
        api
    });
    let events = cluster.relist(&ledger, 50).await.expect("relist");
    let told: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.host_id.as_str(), e.shadow_id.as_deref()))
        .collect();
    assert_eq!(
        told,
        vec![
            (FleetEventKind::HostCapacity, "node-1", None),
            (FleetEventKind::Healthy, "node-1", Some("s1")),
            (FleetEventKind::Failed, "node-2", Some("s2")),
        ]
    );
    assert_eq!(events[0].resources.cpu_millicores, 3920);
    assert_eq!(events[2].reason, "placeholder pod not found on re-list");
    drop(cluster);
    server.await.expect("verifier").done().await;
}

#[tokio::test]
async fn host_metrics_are_allocatable_and_requests_when_metrics_api_is_absent() {
    let (cluster, mut api) = mock();
    let s1 = running("s1", "node-1", true);
    let server = tokio::spawn(async move {
        let (_, send) = api.expect(Method::GET, "/api/v1/nodes", &[]).await;
        answer(
            send,
            StatusCode::OK,
            &list(
                "NodeList",
                vec![
                    json!({"metadata": {"name": "node-1"}, "status": {"allocatable": {"cpu": "4", "memory": "16Gi"},
                "conditions": [{"type": "Ready", "status": "True"}]}}),
                ],
            ),
        );
        let (_, send) = api
            .expect(
                Method::GET,
                "/api/v1/pods",
                &["fieldSelector=status.phase!=Succeeded"],
            )
            .await;
        answer(
            send,
            StatusCode::OK,
            &list("PodList", vec![serde_json::to_value(&s1).expect("json")]),
        );
        let (_, send) = api
            .expect(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes", &[])
            .await;
        answer(
            send,
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
        api
    });
    let m = cluster.host_metrics(60).await.expect("metrics");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].capacity.cpu_millicores, 4000);
    assert_eq!(m[0].committed.map(|c| c.cpu_millicores), Some(500));
    assert_eq!(m[0].used.cpu_millicores, 500, "requests stand in for usage");
    assert!(m[0].healthy);
    drop(cluster);
    server.await.expect("verifier").done().await;
}
