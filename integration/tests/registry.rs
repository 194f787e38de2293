//! The dev registry as a real process on the real broker: Confluent error codes, BACKWARD
//! compatibility, ids that survive a restart.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use umbra_integration::{binary, free_port, Stack};

const CT: &str = "application/vnd.schemaregistry.v1+json";

struct Registry {
    child: Child,
    url: String,
}

impl Registry {
    async fn start(stack: &Stack, port: u16, topic: &str) -> anyhow::Result<Self> {
        let child = Command::new(binary("umbra")?)
            .args([
                "registry",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--bootstrap-servers",
                &stack.bootstrap,
                "--topic",
                topic,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(reqwest::get(format!("{url}/subjects")).await, Ok(r) if r.status().is_success())
            {
                return Ok(Self { child, url });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("registry did not start")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).header("Accept", CT);
    if let Some(b) = body {
        req = req.header("Content-Type", CT).body(b.to_string());
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, CT, "Confluent content type");
    Ok((status, resp.json().await?))
}

const V1: &str =
    r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"b","type":"long","default":0}]}"#;
const BAD: &str = r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"c","type":"long"}]}"#;

#[tokio::test]
async fn confluent_api_error_codes_compatibility_and_restart() -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let topic = format!("_schemas_{}", uuid::Uuid::new_v4().simple());
    let port = free_port();
    let reg = Registry::start(&stack, port, &topic).await?;
    let u = &reg.url;
    use reqwest::Method as M;

    let (s, v) = call(
        M::POST,
        format!("{u}/subjects/x-value/versions"),
        Some(json!({"schema": V1})),
    )
    .await?;
    assert_eq!(s, 200);
    let id1 = v["id"].as_u64().expect("id");
    let (_, v) = call(
        M::POST,
        format!("{u}/subjects/x-value/versions"),
        Some(json!({"schema": V1})),
    )
    .await?;
    assert_eq!(v["id"].as_u64(), Some(id1), "re-registering is idempotent");
    let (s, v) = call(
        M::POST,
        format!("{u}/subjects/x-value/versions"),
        Some(json!({"schema": V2})),
    )
    .await?;
    assert_eq!(s, 200);
    let id2 = v["id"].as_u64().expect("id");
    assert_ne!(id1, id2);

    let (s, v) = call(
        M::POST,
        format!("{u}/subjects/x-value/versions"),
        Some(json!({"schema": BAD})),
    )
    .await?;
    assert_eq!(
        (s, v["error_code"].as_u64()),
        (409, Some(409)),
        "incompatible change: {v}"
    );
    let (s, v) = call(
        M::POST,
        format!("{u}/compatibility/subjects/x-value/versions/latest"),
        Some(json!({"schema": BAD})),
    )
    .await?;
    assert_eq!((s, v["is_compatible"].as_bool()), (200, Some(false)));
    let (s, v) = call(M::GET, format!("{u}/subjects/nope/versions"), None).await?;
    assert_eq!((s, v["error_code"].as_u64()), (404, Some(40401)));
    let (s, v) = call(M::GET, format!("{u}/subjects/x-value/versions/9"), None).await?;
    assert_eq!((s, v["error_code"].as_u64()), (404, Some(40402)));
    let (s, v) = call(M::GET, format!("{u}/schemas/ids/99999"), None).await?;
    assert_eq!((s, v["error_code"].as_u64()), (404, Some(40403)));
    let (s, v) = call(
        M::POST,
        format!("{u}/subjects/x-value/versions"),
        Some(json!({"schema": "{not json"})),
    )
    .await?;
    assert_eq!((s, v["error_code"].as_u64()), (422, Some(42201)));
    let (s, v) = call(
        M::POST,
        format!("{u}/subjects/x-value"),
        Some(json!({"schema": V2})),
    )
    .await?;
    assert_eq!(
        (s, v["version"].as_u64(), v["id"].as_u64()),
        (200, Some(2), Some(id2))
    );
    let (s, v) = call(M::GET, format!("{u}/config"), None).await?;
    assert_eq!(
        (s, v["compatibilityLevel"].as_str()),
        (200, Some("BACKWARD")),
        "BACKWARD by default"
    );
    let (s, v) = call(
        M::PUT,
        format!("{u}/config/y-value"),
        Some(json!({"compatibility": "NONE"})),
    )
    .await?;
    assert_eq!((s, v["compatibility"].as_str()), (200, Some("NONE")));
    let (s, v) = call(M::GET, format!("{u}/config/z-value"), None).await?;
    assert_eq!((s, v["error_code"].as_u64()), (404, Some(40408)));

    // Restart on the same topic: the same ids, versions and config.
    drop(reg);
    let reg = Registry::start(&stack, port, &topic).await?;
    let u = &reg.url;
    let (_, v) = call(
        M::GET,
        format!("{u}/subjects/x-value/versions/latest"),
        None,
    )
    .await?;
    assert_eq!(
        (v["id"].as_u64(), v["version"].as_u64()),
        (Some(id2), Some(2)),
        "ids survive a restart"
    );
    let (_, v) = call(M::GET, format!("{u}/schemas/ids/{id1}"), None).await?;
    assert_eq!(v["schema"].as_str(), Some(V1));
    let (_, v) = call(M::GET, format!("{u}/config/y-value"), None).await?;
    assert_eq!(v["compatibilityLevel"].as_str(), Some("NONE"));
    let (_, v) = call(
        M::POST,
        format!("{u}/subjects/w-value/versions"),
        Some(json!({"schema": r#"{"type":"string"}"#})),
    )
    .await?;
    assert!(
        v["id"].as_u64().expect("id") > id2,
        "new ids continue after the restored ones"
    );
    Ok(())
}
