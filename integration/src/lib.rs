//! Test harness: the real broker and registry that `make test` starts (`umbra dev up` on
//! 127.0.0.1), unique topic prefixes so tests do not see each other's records, and the real
//! service binaries run as child processes.

pub mod pipeline;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use umbra_stream::admin::{ensure_topics, pipeline_topics};
use umbra_stream::config::KafkaSettings;
use umbra_stream::kafka;
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};

/// The broker and registry under test.
#[derive(Clone)]
pub struct Stack {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// Registry URL.
    pub registry_url: String,
    /// Registry client.
    pub registry: Arc<dyn SchemaRegistry>,
}

impl Stack {
    /// The stack named by `KAFKA_BOOTSTRAP_SERVERS` and `SCHEMA_REGISTRY_URL` (set by
    /// `make test`), defaulting to the dev stack's addresses.
    pub async fn connect() -> anyhow::Result<Self> {
        let bootstrap =
            std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let registry_url =
            std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
        kafka::wait_for_broker(&Self::settings_for(&bootstrap))
            .await
            .context("the integration tests need the dev stack: run them with `make test`, or `umbra dev up` first")?;
        let registry: Arc<dyn SchemaRegistry> = Arc::new(HttpRegistry::new(&registry_url)?);
        Ok(Self {
            bootstrap,
            registry_url,
            registry,
        })
    }

    fn settings_for(bootstrap: &str) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: bootstrap.to_string(),
            connect_timeout_ms: 10_000,
            ..KafkaSettings::default()
        }
    }

    /// Kafka settings of the stack.
    pub fn settings(&self) -> KafkaSettings {
        Self::settings_for(&self.bootstrap)
    }

    /// A fresh topic prefix with every pipeline topic created under it.
    pub async fn fresh_prefix(&self) -> anyhow::Result<String> {
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        ensure_topics(&self.settings(), &pipeline_topics(&prefix)).await?;
        Ok(prefix)
    }

    /// An idempotent producer.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(kafka::producer(&self.settings())?)
    }

    /// Sends raw bytes.
    pub async fn send_raw(
        &self,
        producer: &FutureProducer,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let mut r = FutureRecord::to(topic).headers(OwnedHeaders::new());
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.payload(v);
        }
        producer
            .send(r, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("send to {topic}: {e}"))?;
        Ok(())
    }

    /// Reads `topic` from the beginning until `done` says so or `timeout` passes; returns the
    /// records read.
    pub async fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Raw]) -> bool,
    ) -> anyhow::Result<Vec<Raw>> {
        let partitions = kafka::partitions(&self.settings(), topic).await?;
        let consumer: StreamConsumer = kafka::reader(&self.settings())?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(m) =
                tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv()).await
            {
                let m = m?;
                use rdkafka::message::Headers;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Raw {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        Ok(out)
    }

    /// Committed offsets of `group` on `topic`, by partition.
    pub async fn committed(&self, group: &str, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
        let mut settings = self.settings();
        settings
            .properties
            .insert("enable.auto.commit".into(), "false".into());
        let consumer = kafka::group_consumer(&settings, group)?;
        let partitions = kafka::partitions(&self.settings(), topic).await?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(topic, p);
        }
        let got = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(tpl, Duration::from_secs(10))
        })
        .await??;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }
}

/// One record as read from a topic.
#[derive(Debug, Clone)]
pub struct Raw {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers as strings.
    pub headers: HashMap<String, String>,
}

impl Raw {
    /// A header's value.
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).map(String::as_str)
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Path of a binary of the workspace, built by `cargo build --workspace --bins` (`make test`
/// does it before running the tests).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("no target dir")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first (make test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A service binary running as a child process.
pub struct Service {
    /// The process.
    pub child: Child,
    /// Its HTTP endpoint.
    pub http: String,
    /// Its log file.
    pub log: PathBuf,
}

impl Service {
    /// Starts service `name` (e.g. `ingest`) on the stack with topic `prefix` and extra env.
    pub fn start(
        stack: &Stack,
        name: &str,
        prefix: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "umbra-it-{prefix}{name}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(binary(&format!("umbra-{name}"))?);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("UMBRA_KAFKA__BOOTSTRAP_SERVERS", &stack.bootstrap)
            .env("UMBRA_REGISTRY__URL", &stack.registry_url)
            .env("UMBRA_TOPIC_PREFIX", prefix)
            .env("UMBRA_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        Ok(Self {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("service exited early ({status}); log:\n{}", self.log_text());
            }
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.http)).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("not ready within {timeout:?}; log:\n{}", self.log_text())
    }

    /// Sends a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} failed");
        }
        Ok(())
    }

    /// Waits for the process to exit and returns its exit code (None when killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        bail!("did not exit within {timeout:?}; log:\n{}", self.log_text())
    }

    /// The service's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric's value from `/metrics` (first sample whose line starts with `prefix`).
    pub async fn metric(&self, prefix: &str) -> anyhow::Result<Option<f64>> {
        let text = reqwest::get(format!("{}/metrics", self.http))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok()))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
