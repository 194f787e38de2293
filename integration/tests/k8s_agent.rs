//! The Kubernetes fleet agent's Kafka side through the real broker and registry: fleet
//! commands in, fleet events and host metrics out, a poison command dead-lettered with the
//! committed offset past it, a duplicated command answered once. The Kubernetes API is a small
//! in-memory fake behind the kube client (no API server can run here; the API calls
//! themselves are checked request by request in the agent's own mock-API-server tests).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use umbra_integration::{free_port, Stack};
use umbra_k8s_agent::service::{run_with_client, AgentSettings, Config};
use umbra_schemas::*;
use umbra_stream::processor::{send, Input, Output};

/// Pods by (namespace, name); every pod is scheduled on its required node and ready.
#[derive(Default)]
struct FakeApi {
    pods: BTreeMap<(String, String), Value>,
    requests: Vec<String>,
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn matches(pod: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|kv| match kv.split_once('=') {
            Some((k, v)) => pod["metadata"]["labels"][k] == v,
            None => true,
        })
}

fn query(uri: &str, key: &str) -> String {
    uri.split('?')
        .nth(1)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(|v| {
            v.replace("%2F", "/")
                .replace("%3D", "=")
                .replace("%2C", ",")
        })
        .unwrap_or_default()
}

async fn handle(api: Arc<Mutex<FakeApi>>, req: Request<Body>) -> Response<Body> {
    let (method, uri) = (req.method().clone(), req.uri().to_string());
    let body = req.into_body().collect_bytes().await.unwrap_or_default();
    // Watches end at once, empty: the agent's re-list reports health in this test.
    if uri.contains("watch=true") {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Response::new(Body::from(Vec::new()));
    }
    let mut api = api.lock().unwrap_or_else(|p| p.into_inner());
    api.requests.push(format!("{method} {uri}"));
    let path = uri.split('?').next().unwrap_or_default().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reply = |code: StatusCode, v: Value| {
        let mut r = Response::new(Body::from(serde_json::to_vec(&v).unwrap_or_default()));
        *r.status_mut() = code;
        r
    };
    match (method, parts.as_slice()) {
        (Method::GET, ["api", "v1", "nodes"]) => reply(
            StatusCode::OK,
            list(
                "NodeList",
                vec![json!({"metadata": {"name": "node-1"}, "status": {
                    "allocatable": {"cpu": "8", "memory": "32Gi"},
                    "conditions": [{"type": "Ready", "status": "True"}]}})],
            ),
        ),
        (Method::GET, ["api", "v1", "pods"]) => reply(
            StatusCode::OK,
            list("PodList", api.pods.values().cloned().collect()),
        ),
        (Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => {
            let sel = query(&uri, "labelSelector");
            let items = api
                .pods
                .iter()
                .filter(|((n, _), p)| n == ns && matches(p, &sel))
                .map(|(_, p)| p.clone())
                .collect();
            reply(StatusCode::OK, list("PodList", items))
        }
        (Method::GET, ["api", "v1", "namespaces", _, "configmaps"]) => {
            reply(StatusCode::OK, list("ConfigMapList", vec![]))
        }
        (Method::POST, ["api", "v1", "namespaces", ns, "pods"]) => {
            let mut pod: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if api.pods.contains_key(&(ns.to_string(), name.clone())) {
                return reply(
                    StatusCode::CONFLICT,
                    json!({"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": "exists"}),
                );
            }
            let node = pod["spec"]["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                ["matchExpressions"][0]["values"][0]
                .clone();
            pod["metadata"]["namespace"] = json!(ns);
            pod["spec"]["nodeName"] = node;
            pod["status"] = json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]});
            api.pods.insert((ns.to_string(), name), pod.clone());
            reply(StatusCode::CREATED, pod)
        }
        (Method::DELETE, ["api", "v1", "namespaces", ns, "pods", name]) => {
            match api.pods.remove(&(ns.to_string(), name.to_string())) {
                Some(p) => reply(StatusCode::OK, p),
                None => reply(
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"}),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "code": 404, "reason": "NotFound", "message": "not served"}),
        ),
    }
}

fn command(kind: FleetCommandKind, id: &str) -> FleetCommand {
    FleetCommand {
        command_id: id.into(),
        kind,
        host_id: "node-1".into(),
        target_host_id: None,
        shadow_id: Some("shadow-a".into()),
        workload_id: "vm-a".into(),
        request_id: None,
        resources: Resources {
            cpu_millicores: 1500,
            memory_bytes: 2 << 30,
            disk_io_bytes_per_s: 0,
        },
        issued_at: 1,
    }
}

#[tokio::test]
async fn the_agent_answers_commands_on_kafka_dead_letters_poison_and_answers_once(
) -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let api: Arc<Mutex<FakeApi>> = Arc::default();
    let a = api.clone();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let a = a.clone();
        async move { Ok::<_, Infallible>(handle(a, req).await) }
    });
    let client = kube::Client::new(svc, "default");
    let mut config = Config::default();
    config.kafka.bootstrap_servers = stack.bootstrap.clone();
    config.registry.url = stack.registry_url.clone();
    config.topic_prefix = p.clone();
    config.http.listen = format!("127.0.0.1:{}", free_port()).parse()?;
    config.service = AgentSettings {
        relist_interval_ms: 300,
        metrics_interval_ms: 300,
        ..AgentSettings::default()
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_with_client(config, client, shutdown.clone()));

    let producer = stack.producer()?;
    let commands_topic = format!("{p}umbra.fleet.commands");
    let out: Output<HostKey, FleetCommand> =
        Output::new(stack.registry.clone(), commands_topic.clone()).await?;
    let key = HostKey {
        host_id: "node-1".into(),
    };
    let create = command(FleetCommandKind::CreateShadow, "create-a");
    stack
        .send_raw(
            &producer,
            &commands_topic,
            Some(b"node-1"),
            Some(b"\x00\x00\x00\x00\x01garbage"),
        )
        .await?;
    send(&producer, &out.record(&key, &create)?, Default::default()).await?;
    // The same command again, as a redelivery would bring it.
    send(&producer, &out.record(&key, &create)?, Default::default()).await?;

    let events: Input<HostKey, FleetEvent> =
        Input::new(stack.registry.clone(), format!("{p}umbra.fleet.events")).await?;
    let decode = |raws: &[umbra_integration::Raw]| -> Vec<FleetEvent> {
        raws.iter()
            .filter_map(|r| r.value.clone())
            .filter_map(|v| futures::executor::block_on(events.decode_value(&v)).ok())
            .collect()
    };
    let events_topic = format!("{p}umbra.fleet.events");
    let got = stack
        .read_until(&events_topic, Duration::from_secs(60), |r| {
            decode(r).iter().any(|e| e.kind == FleetEventKind::Healthy)
        })
        .await?;
    let got = decode(&got);
    let kinds: Vec<_> = got.iter().map(|e| (e.kind, e.command_id.clone())).collect();
    assert!(
        got.iter().any(|e| e.kind == FleetEventKind::HostCapacity
            && e.host_id == "node-1"
            && e.resources.cpu_millicores == 8000),
        "{kinds:?}"
    );
    assert!(
        got.iter().any(
            |e| e.kind == FleetEventKind::Healthy && e.shadow_id.as_deref() == Some("shadow-a")
        ),
        "{kinds:?}"
    );
    {
        let api = api.lock().unwrap_or_else(|p| p.into_inner());
        let placeholders: Vec<&Value> = api.pods.values().collect();
        assert_eq!(placeholders.len(), 1, "one placeholder");
        assert_eq!(
            placeholders[0]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1500m"
        );
    }

    // Release it; the release's answer, and still one answer to the create.
    send(
        &producer,
        &out.record(&key, &command(FleetCommandKind::ReleaseShadow, "release-a"))?,
        Default::default(),
    )
    .await?;
    let got = decode(
        &stack
            .read_until(&events_topic, Duration::from_secs(30), |r| {
                decode(r).iter().any(|e| e.kind == FleetEventKind::Released)
            })
            .await?,
    );
    let answers = |id: &str| {
        got.iter()
            .filter(|e| e.command_id.as_deref() == Some(id))
            .count()
    };
    assert_eq!(
        answers("create-a"),
        1,
        "a duplicated command is answered once"
    );
    assert_eq!(answers("release-a"), 1);
    assert!(
        api.lock()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .is_empty(),
        "the placeholder is gone"
    );

    // Host metrics from the node.
    let metrics = stack
        .read_until(
            &format!("{p}umbra.host.metrics"),
            Duration::from_secs(30),
            |r| !r.is_empty(),
        )
        .await?;
    assert!(!metrics.is_empty(), "host metrics published");

    // The poison command: dead-lettered with its bytes and reason.
    let dlq = stack
        .read_until(
            &format!("{commands_topic}.dlq"),
            Duration::from_secs(30),
            |r| !r.is_empty(),
        )
        .await?;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].value.as_deref(),
        Some(&b"\x00\x00\x00\x00\x01garbage"[..])
    );
    assert!(dlq[0]
        .header("umbra.dlq.error")
        .is_some_and(|e| !e.is_empty()));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), agent).await???;
    // Offsets follow delivery: the group's committed offset is past every command.
    let committed = stack
        .committed(&format!("{p}k8s-agent"), &commands_topic)
        .await?;
    assert_eq!(
        committed.values().sum::<i64>(),
        4,
        "poison, create twice, release: {committed:?}"
    );
    let requests = api
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .requests
        .clone();
    let creates = requests.iter().filter(|r| r.starts_with("POST ")).count();
    assert_eq!(creates, 1, "one pod created: {requests:?}");
    Ok(())
}
