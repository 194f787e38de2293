//! Secure connections against a real Nisshi broker serving TLS only and requiring SASL/SCRAM
//! logins (its users made the way Nisshi allows: on a plain broker over the same SQLite
//! storage, before the secured one starts), and the dev registry requiring basic
//! authentication and itself reaching Kafka over SASL_SSL: a service with the right
//! credentials (its Kafka password from a file, the registry's from the environment) carries
//! records; a wrong Kafka password, a wrong registry password and a missing password file each
//! stop it with one clear message that names the user or the file and never the password;
//! neither password ever appears in a log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use umbra_integration::{binary, free_port, Service, Stack};
use umbra_schemas::*;
use umbra_stream::config::{KafkaSettings, RegistrySettings, SecurityProtocol};
use umbra_stream::processor::{send, Output};
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};
use umbra_stream::secret::Secret;

const KAFKA_PASSWORD: &str = "kafka-Pa55-7f3e";
const REGISTRY_PASSWORD: &str = "registry-Pa55-9c1d";

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nisshi() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([Path::new(&home).join(".cargo/bin")])
        .map(|d| d.join("nisshi"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nisshi"))
}

fn broker(dir: &Path, port: u16, secured: bool) -> anyhow::Result<Proc> {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(nisshi());
    cmd.current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://nisshi.db", "--silent"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(
            dir.join(format!("broker-{secured}.log")),
        )?)
        .stderr(Stdio::inherit());
    if secured {
        cmd.args(["--authentication", "--cert", "cert.pem", "--key", "key.pem"]);
    }
    Ok(Proc(cmd.spawn().context(
        "starting nisshi (cargo install nisshi; make test does)",
    )?))
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    for _ in 0..200 {
        if ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not happen within 20 s")
}

fn secure_kafka(bootstrap: &str, dir: &Path, password: &str) -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: bootstrap.to_string(),
        security_protocol: SecurityProtocol::SaslSsl,
        sasl_username: "umbra".into(),
        sasl_password: Some(Secret::new(password)),
        tls_ca_file: Some(dir.join("cert.pem")),
        ..KafkaSettings::default()
    }
}

/// The service's one-line error (its last line on stderr).
fn last_line(log: &str) -> &str {
    log.lines()
        .rfind(|l| l.starts_with("umbra-"))
        .unwrap_or_default()
}

#[tokio::test]
async fn services_reach_a_tls_scram_broker_and_a_basic_auth_registry_and_wrong_secrets_fail_clearly(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let openssl = Command::new("openssl")
        .current_dir(d)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
        ])
        .args(["-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .output()
        .context("openssl")?;
    anyhow::ensure!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");

    // Users live in the broker's storage; Nisshi adds them over a plain connection only.
    {
        let _plain = broker(d, port, false)?;
        until("the plain broker listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await?;
        let mut made = false;
        for _ in 0..50 {
            let out = Command::new(nisshi())
                .args(["user", "create", "umbra", KAFKA_PASSWORD, "--broker"])
                .arg(format!("tcp://{bootstrap}"))
                .args(["--mechanism", "scram512"])
                .output()?;
            if out.status.success() {
                made = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::ensure!(made, "nisshi user create failed");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _secured = broker(d, port, true)?;
    let good = secure_kafka(&bootstrap, d, KAFKA_PASSWORD);
    let mut ready = false;
    for _ in 0..50 {
        if umbra_stream::kafka::wait_for_broker(&KafkaSettings {
            connect_timeout_ms: 1_000,
            ..good.clone()
        })
        .await
        .is_ok()
        {
            ready = true;
            break;
        }
    }
    anyhow::ensure!(ready, "the secured broker answers the right credentials");
    // Plaintext is not served any more.
    let plain = umbra_stream::kafka::wait_for_broker(&KafkaSettings {
        bootstrap_servers: bootstrap.clone(),
        connect_timeout_ms: 2_000,
        ..KafkaSettings::default()
    })
    .await;
    assert!(plain.is_err(), "a plaintext client gets nothing");

    // Secrets as an operator mounts them: files.
    let kafka_pw_file = d.join("kafka-password");
    std::fs::write(&kafka_pw_file, format!("{KAFKA_PASSWORD}\n"))?;
    let users_file = d.join("registry-users");
    std::fs::write(
        &users_file,
        format!("# registry users\nsvc:{REGISTRY_PASSWORD}\n"),
    )?;
    let kafka_env = [
        ("UMBRA_KAFKA__SECURITY_PROTOCOL", "sasl_ssl".to_string()),
        ("UMBRA_KAFKA__SASL_USERNAME", "umbra".to_string()),
        (
            "UMBRA_KAFKA__SASL_PASSWORD_FILE",
            kafka_pw_file.display().to_string(),
        ),
        (
            "UMBRA_KAFKA__TLS_CA_FILE",
            d.join("cert.pem").display().to_string(),
        ),
    ];

    // The dev registry: basic auth in front, SASL_SSL behind.
    let rport = free_port();
    let registry_url = format!("http://127.0.0.1:{rport}");
    let registry_log = d.join("registry.log");
    let mut cmd = Command::new(binary("umbra")?);
    cmd.args(["registry", "--listen", &format!("127.0.0.1:{rport}")])
        .args(["--bootstrap-servers", &bootstrap, "--topic", "_schemas"])
        .arg("--users-file")
        .arg(&users_file)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .stdout(std::fs::File::create(&registry_log)?)
        .stderr(std::fs::File::create(d.join("registry.err"))?);
    for (k, v) in &kafka_env {
        cmd.env(k, v);
    }
    let _registry = Proc(cmd.spawn()?);
    let mut answered = None;
    for _ in 0..150 {
        if let Ok(r) = reqwest::get(format!("{registry_url}/subjects")).await {
            answered = Some(r.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answered,
        Some(reqwest::StatusCode::UNAUTHORIZED),
        "no credentials, no schemas; registry stderr: {}",
        std::fs::read_to_string(d.join("registry.err")).unwrap_or_default()
    );
    let wrong = reqwest::Client::new()
        .get(format!("{registry_url}/subjects"))
        .basic_auth("svc", Some("not-it"))
        .send()
        .await?;
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);

    // Topics and schemas through the secured stack, as an operator would create them.
    let prefix = format!("s{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut up = Command::new(binary("umbra")?);
    up.args([
        "dev",
        "up",
        "--bootstrap-servers",
        &bootstrap,
        "--registry-url",
        &registry_url,
    ])
    .args(["--topic-prefix", &prefix])
    .arg("--state-dir")
    .arg(d.join("state"))
    .env("UMBRA_REGISTRY__USERNAME", "svc")
    .env("UMBRA_REGISTRY__PASSWORD", REGISTRY_PASSWORD);
    for (k, v) in &kafka_env {
        up.env(k, v);
    }
    let out = up.output()?;
    anyhow::ensure!(
        out.status.success(),
        "umbra dev up on the secured stack: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let registry: Arc<dyn SchemaRegistry> =
        Arc::new(HttpRegistry::with_settings(&RegistrySettings {
            url: registry_url.clone(),
            username: "svc".into(),
            password: Some(Secret::new(REGISTRY_PASSWORD)),
            password_file: None,
        })?);
    let stack = Stack {
        bootstrap: bootstrap.clone(),
        registry_url: registry_url.clone(),
        registry: registry.clone(),
    };
    let env = |extra: &[(&'static str, String)]| -> Vec<(String, String)> {
        kafka_env
            .iter()
            .cloned()
            .chain([
                ("UMBRA_REGISTRY__USERNAME", "svc".to_string()),
                ("UMBRA_REGISTRY__PASSWORD", REGISTRY_PASSWORD.to_string()),
                ("UMBRA_SERVICE__IDLE_FLUSH_MS", "500".to_string()),
            ])
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .chain(extra.iter().cloned())
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    };
    let start = |extra: &[(&'static str, String)]| -> anyhow::Result<Service> {
        let e = env(extra);
        let refs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Service::start(&stack, "ingest", &prefix, &refs)
    };

    // The right credentials: ready, and records flow through.
    let mut ingest = start(&[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    let producer = umbra_stream::kafka::producer(&good)?;
    let raw: Output<WorkloadKey, UsageSample> =
        Output::new(registry.clone(), format!("{prefix}umbra.usage.raw")).await?;
    for i in 0..3 {
        let mut s = UsageSample::example();
        s.workload_id = "vm-secure".into();
        s.sample_time = 1_372_636_800_000 + i * 300_000;
        let emit = raw.record(
            &WorkloadKey {
                workload_id: "vm-secure".into(),
            },
            &s,
        )?;
        send(&producer, &emit, Default::default()).await?;
    }
    let mut produced = 0.0;
    for _ in 0..100 {
        produced = ingest
            .metric("umbra_records_produced_total")
            .await?
            .unwrap_or(0.0);
        if produced >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        produced >= 1.0,
        "usage series out over SASL_SSL; log:\n{}",
        ingest.log_text()
    );
    ingest.signal("TERM")?;
    assert_eq!(ingest.wait_exit(Duration::from_secs(20)).await?, Some(0));
    let good_log = ingest.log_text();

    // A wrong Kafka password: one clear line, the user named, the password nowhere.
    let mut bad = start(&[("UMBRA_KAFKA__SASL_PASSWORD", "wrong-kafka-pw-4711".into())])?;
    let code = bad.wait_exit(Duration::from_secs(30)).await?;
    let log = bad.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("refused the connection of user 'umbra'"),
        "{log}"
    );
    assert!(log.contains("SASL"), "{log}");
    assert!(
        !log.contains("wrong-kafka-pw-4711") && !log.contains(KAFKA_PASSWORD),
        "{log}"
    );
    println!("wrong Kafka password: {}", last_line(&log));

    // A wrong registry password.
    let mut bad = start(&[("UMBRA_REGISTRY__PASSWORD", "wrong-registry-pw-4712".into())])?;
    let code = bad.wait_exit(Duration::from_secs(30)).await?;
    let log = bad.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("rejected the credentials"), "{log}");
    assert!(
        !log.contains("wrong-registry-pw-4712") && !log.contains(REGISTRY_PASSWORD),
        "{log}"
    );
    println!("wrong registry password: {}", last_line(&log));

    // A password file that is not there: bad configuration, exit 2, the file named.
    let mut bad = start(&[(
        "UMBRA_KAFKA__SASL_PASSWORD_FILE",
        "/nonexistent/kafka-password".into(),
    )])?;
    let code = bad.wait_exit(Duration::from_secs(30)).await?;
    let log = bad.log_text();
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("/nonexistent/kafka-password"), "{log}");
    println!("missing password file: {}", last_line(&log));

    // Secrets never reach a log.
    let registry_text = std::fs::read_to_string(&registry_log).unwrap_or_default()
        + &std::fs::read_to_string(d.join("registry.err")).unwrap_or_default();
    for text in [&good_log, &registry_text] {
        assert!(
            !text.contains(KAFKA_PASSWORD) && !text.contains(REGISTRY_PASSWORD),
            "{text}"
        );
    }
    Ok(())
}
