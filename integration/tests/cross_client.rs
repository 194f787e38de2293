//! Python's confluent-kafka (AvroSerializer / AvroDeserializer) and the Rust runtime read
//! each other's records through the real registry and broker.
//!
//! The Python interpreter is `PYTHON_FOR_TESTS` (set by `make test` to the virtualenv it
//! creates), else `.venv/bin/python` at the repository root.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use umbra_integration::Stack;
use umbra_schemas::*;
use umbra_stream::processor::{send, Input, Output};

fn python() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = std::env::var_os("PYTHON_FOR_TESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    (py, root.join("integration/python/cross_client.py"))
}

#[tokio::test]
async fn python_and_rust_read_each_other() -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let (py, script) = python();
    assert!(
        py.exists(),
        "{} missing: run `make test` (it creates the virtualenv)",
        py.display()
    );

    // Python → Rust: a workload request.
    let requests = format!("{p}umbra.workload.requests");
    let out = Command::new(&py)
        .arg(&script)
        .args([
            "produce",
            &stack.bootstrap,
            &stack.registry_url,
            &requests,
            "req-py-1",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "python produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = stack
        .read_until(&requests, Duration::from_secs(20), |r| !r.is_empty())
        .await?;
    assert_eq!(got.len(), 1);
    let input: Input<WorkloadKey, WorkloadRequest> =
        Input::new(stack.registry.clone(), requests.clone()).await?;
    let key = input
        .decode_key(got[0].key.as_deref().expect("key"))
        .await?;
    let request = input
        .decode_value(got[0].value.as_deref().expect("value"))
        .await?;
    assert_eq!(key.workload_id, "vm-py");
    assert_eq!(request.request_id, "req-py-1");
    assert_eq!(request.resources.cpu_millicores, 1500);
    assert_eq!(request.requested_at, 1_372_636_800_123);
    assert_eq!(
        request.labels.get("client").map(String::as_str),
        Some("python")
    );

    // Rust → Python: the decision.
    let decisions = format!("{p}umbra.allocation.decisions");
    let out_topic: Output<WorkloadKey, AllocationDecision> =
        Output::new(stack.registry.clone(), decisions.clone()).await?;
    let mut decision = AllocationDecision::example();
    decision.request_id = request.request_id.clone();
    decision.workload_id = request.workload_id.clone();
    send(
        &stack.producer()?,
        &out_topic.record(&key, &decision)?,
        Default::default(),
    )
    .await?;
    let out = Command::new(&py)
        .arg(&script)
        .args(["consume", &stack.bootstrap, &stack.registry_url, &decisions])
        .output()?;
    assert!(
        out.status.success(),
        "python consume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["key"]["workload_id"], "vm-py");
    assert_eq!(v["value"]["request_id"], "req-py-1");
    assert_eq!(v["value"]["outcome"], "SHADOW_HIT");
    assert_eq!(v["value"]["host_id"], "host-01");
    assert_eq!(v["value"]["shadow_id"], "sh-vm-001-a");
    Ok(())
}
