//! What every service does before and after its own logic: load configuration, connect to
//! the broker and the registry, serve the HTTP endpoints, create tables and processors, and
//! map the outcome to an exit code. Each service's `main.rs` is one call to [`main`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use umbra_schemas::{EntityKey, Record};

use crate::config::{self, ServiceConfig};
use crate::dlq::BadDataPolicy;
use crate::http::{self, Readiness};
use crate::metrics::Metrics;
use crate::processor::{Input, Processor};
use crate::reader::{RawRecord, RestoringReader};
use crate::registry::{HttpRegistry, SchemaRegistry};
use crate::table::Table;
use crate::{kafka, StreamError};

/// Exit code for a configuration that cannot be used.
pub const EXIT_BAD_CONFIG: u8 = 2;

/// The connections and endpoints of a running service.
pub struct Runtime<S> {
    /// Service name (`ingest`, `interceptor`, ...).
    pub name: &'static str,
    /// Configuration.
    pub config: ServiceConfig<S>,
    /// Schema registry client.
    pub registry: Arc<dyn SchemaRegistry>,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness gates.
    pub readiness: Readiness,
    /// Idempotent producer shared by the service's outputs.
    pub producer: FutureProducer,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Where the HTTP endpoint listens.
    pub http_addr: SocketAddr,
}

impl<S> Runtime<S> {
    /// Validates the configuration, waits for the broker, and starts the HTTP endpoint.
    pub async fn start(
        name: &'static str,
        config: ServiceConfig<S>,
        shutdown: CancellationToken,
    ) -> Result<Self, StreamError> {
        Self::start_with_routes(name, config, shutdown, axum::Router::new()).await
    }

    /// As [`Runtime::start`], with the service's own HTTP routes served beside the standard ones.
    pub async fn start_with_routes(
        name: &'static str,
        config: ServiceConfig<S>,
        shutdown: CancellationToken,
        routes: axum::Router,
    ) -> Result<Self, StreamError> {
        let mut config = config;
        crate::config::resolve_secrets(&mut config).map_err(|e| StreamError::Config(e.0))?;
        let metrics = Metrics::new(name);
        let readiness = Readiness::default();
        let (http_addr, _http) = http::serve(
            config.http.listen,
            readiness.clone(),
            metrics.clone(),
            shutdown.clone(),
            routes,
        )
        .await?;
        tracing::info!(service = name, http = %http_addr, "http endpoint listening");
        kafka::wait_for_broker(&config.kafka).await?;
        let registry: Arc<dyn SchemaRegistry> = Arc::new(
            HttpRegistry::with_settings(&config.registry)
                .map_err(|e| StreamError::Registry(e.to_string()))?,
        );
        let producer = kafka::producer(&config.kafka)?;
        Ok(Self {
            name,
            config,
            registry,
            metrics,
            readiness,
            producer,
            shutdown,
            http_addr,
        })
    }

    /// Starts materializing the table on `default_topic` behind a readiness gate.
    pub async fn table<K: EntityKey, V: Record>(
        &self,
        default_topic: &str,
    ) -> Result<Table<V>, StreamError> {
        let topic = self.config.topic(default_topic);
        let gate = self.readiness.gate(format!("table {topic}"));
        Table::start::<K>(
            &self.config.kafka,
            self.registry.clone(),
            topic,
            gate,
            self.metrics.clone(),
            self.shutdown.clone(),
        )
        .await
    }

    /// Follows `default_topic` from the beginning behind a readiness gate (open once the
    /// end offsets read now are reached), handing every decoded value to `apply`, in order per
    /// partition. Tombstones are skipped; undecodable records are logged and skipped: they were
    /// dead-lettered by the service that consumed them first. Returns the topic's name.
    pub async fn follow<K: Record, V: Record>(
        &self,
        default_topic: &str,
        apply: impl Fn(V) + Send + Sync + 'static,
    ) -> Result<String, StreamError> {
        self.follow_traced::<K, V>(default_topic, move |v, _| apply(v))
            .await
    }

    /// [`Runtime::follow`], handing each value with its producer's `traceparent`, for state
    /// whose later outputs continue the input's trace.
    pub async fn follow_traced<K: Record, V: Record>(
        &self,
        default_topic: &str,
        apply: impl Fn(V, Option<String>) + Send + Sync + 'static,
    ) -> Result<String, StreamError> {
        let topic = self.config.topic(default_topic);
        let input: Arc<Input<K, V>> =
            Arc::new(Input::new(self.registry.clone(), topic.clone()).await?);
        let reader = RestoringReader::open(&self.config.kafka, &topic).await?;
        let gate = self.readiness.gate(format!("restore {topic}"));
        let apply = Arc::new(apply);
        tokio::spawn(reader.run(
            gate,
            self.shutdown.clone(),
            self.metrics.clone(),
            move |r: RawRecord| {
                let (input, apply) = (input.clone(), apply.clone());
                async move {
                    if let Some(v) = decode_value(&input, &r).await {
                        apply(v, r.traceparent);
                    }
                }
            },
        ));
        Ok(topic)
    }

    /// Follows the keys of `default_topic` with each record's `traceparent` (values are not
    /// decoded): the trace context of the latest record per key, for a service that reads the
    /// values through a table but continues their traces.
    pub async fn follow_traceparents<K: Record, V: Record>(
        &self,
        default_topic: &str,
        apply: impl Fn(K, String) + Send + Sync + 'static,
    ) -> Result<String, StreamError> {
        let topic = self.config.topic(default_topic);
        let input: Arc<Input<K, V>> =
            Arc::new(Input::new(self.registry.clone(), topic.clone()).await?);
        let reader = RestoringReader::open(&self.config.kafka, &topic).await?;
        let gate = self
            .readiness
            .gate(format!("restore trace context of {topic}"));
        let apply = Arc::new(apply);
        tokio::spawn(reader.run(
            gate,
            self.shutdown.clone(),
            self.metrics.clone(),
            move |r: RawRecord| {
                let (input, apply) = (input.clone(), apply.clone());
                async move {
                    if let (Some(k), Some(tp)) = (r.key.as_deref(), r.traceparent) {
                        if let Ok(k) = input.decode_key(k).await {
                            apply(k, tp);
                        }
                    }
                }
            },
        ));
        Ok(topic)
    }

    /// Reads `default_topic` once, from the beginning to the end offsets read now, and returns
    /// its decoded values in order per partition (skipping as [`Runtime::follow`] does): for
    /// state only this service changes afterwards.
    pub async fn read_values<K: Record, V: Record>(
        &self,
        default_topic: &str,
    ) -> Result<Vec<V>, StreamError> {
        let topic = self.config.topic(default_topic);
        let input: Arc<Input<K, V>> =
            Arc::new(Input::new(self.registry.clone(), topic.clone()).await?);
        let seen: Arc<std::sync::Mutex<Vec<V>>> = Arc::default();
        let sink = seen.clone();
        let done = RestoringReader::open(&self.config.kafka, &topic)
            .await?
            .restore(
                self.shutdown.clone(),
                self.metrics.clone(),
                move |r: RawRecord| {
                    let (input, sink) = (input.clone(), sink.clone());
                    async move {
                        if let Some(v) = decode_value(&input, &r).await {
                            sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        }
                    }
                },
            )
            .await;
        if !done {
            return Err(StreamError::Cancelled("reading a topic to its end"));
        }
        let values = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(values)
    }

    /// A processor of `default_topic` in this service's consumer group.
    pub async fn processor<K: Record, V: Record>(
        &self,
        default_topic: &str,
        policy: BadDataPolicy,
    ) -> Result<Processor<K, V>, StreamError> {
        self.processor_in_group(default_topic, policy, self.name)
            .await
    }

    /// A processor of `default_topic` in the consumer group of `consumer` (a service with
    /// several inputs gives each its own group, so that one input's rebalance never pauses
    /// another).
    pub async fn processor_in_group<K: Record, V: Record>(
        &self,
        default_topic: &str,
        policy: BadDataPolicy,
        consumer: &str,
    ) -> Result<Processor<K, V>, StreamError> {
        let topic = self.config.topic(default_topic);
        let partitions = kafka::partitions(&self.config.kafka, &topic).await?;
        for p in &partitions {
            crate::progress::reads(&topic, *p);
        }
        Ok(Processor {
            service: self.name.to_string(),
            input: Input::new(self.registry.clone(), topic).await?,
            consumer: Arc::new(kafka::group_consumer(
                &self.config.kafka,
                &self.config.group_id(consumer),
            )?),
            producer: self.producer.clone(),
            policy,
            metrics: self.metrics.clone(),
            clock_passes: false,
        })
    }
}

/// The value of a followed record, or `None` for a tombstone or an undecodable record (logged).
async fn decode_value<K: Record, V: Record>(input: &Input<K, V>, r: &RawRecord) -> Option<V> {
    let bytes = r.value.as_ref()?;
    match input.decode_value(bytes).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(topic = %input.topic(), offset = r.offset, error = %e, "skipping undecodable record");
            None
        }
    }
}

/// Parses `--config PATH` (or `UMBRA_CONFIG`), loads and validates the configuration, runs
/// `run` on a Tokio runtime with signal handling, and maps the outcome to an exit code:
/// 0 after a graceful stop, 1 on a runtime error, 2 on bad configuration.
pub fn main<S, F, Fut>(name: &'static str, run: F) -> ExitCode
where
    S: Serialize + DeserializeOwned + Default,
    F: FnOnce(ServiceConfig<S>, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), StreamError>>,
{
    let mut args = std::env::args().skip(1);
    let mut file: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => match args.next() {
                Some(p) => file = Some(PathBuf::from(p)),
                None => return bad_config(name, "--config needs a path"),
            },
            "--help" | "-h" => {
                println!("umbra-{name} [--config FILE]\n\nConfiguration: defaults < FILE (or UMBRA_CONFIG) < environment (UMBRA_<SECTION>__<KEY>, KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL). See the Configuration section of README.md.");
                return ExitCode::SUCCESS;
            }
            other => {
                return bad_config(
                    name,
                    &format!("unknown argument '{other}' (usage: umbra-{name} [--config FILE])"),
                )
            }
        }
    }
    let config: ServiceConfig<S> =
        match config::load(file.as_deref()).and_then(|c| config::validate(&c).map(|()| c)) {
            Ok(c) => c,
            Err(e) => return bad_config(name, &e.to_string()),
        };
    crate::telemetry::init_logging();
    if crate::telemetry::init_tracing(name) {
        tracing::info!(service = name, "exporting traces over OTLP");
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("umbra-{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
    rt.block_on(async move {
        let shutdown = crate::shutdown::install();
        let deadline = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            }
        };
        let outcome = tokio::select! {
            r = run(config, shutdown) => r,
            () = deadline => {
                tracing::error!(service = name, grace_ms = grace.as_millis() as u64, "draining took longer than shutdown_grace_ms; exiting without a final commit");
                eprintln!("umbra-{name}: shutdown deadline of {} ms passed before in-flight work finished", grace.as_millis());
                return ExitCode::FAILURE;
            }
        };
        // Spans of the last messages are still batched: export them before exiting.
        let _ = tokio::task::spawn_blocking(crate::telemetry::shutdown_tracing).await;
        match outcome {
            // A stop requested before start-up finished is still a clean stop.
            Ok(()) | Err(StreamError::Cancelled(_)) => {
                tracing::info!(service = name, "stopped cleanly");
                ExitCode::SUCCESS
            }
            Err(StreamError::Config(e)) => {
                eprintln!("umbra-{name}: bad configuration: {e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
            Err(e) => {
                tracing::error!(service = name, error = %e, "stopped on error");
                eprintln!("umbra-{name}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn bad_config(name: &str, message: &str) -> ExitCode {
    eprintln!("umbra-{name}: {message}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
