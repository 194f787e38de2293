//! The agent's Kafka side, like the fleet simulator's: fleet commands in (a consumer group,
//! offsets stored once the answer is acknowledged), fleet events and host metrics out.
//!
//! State: what the fleet has said is the fold of `umbra.fleet.events` (a [`Ledger`]), read to
//! the end at start-up; a command id answered before changes nothing. What the cluster holds
//! is never remembered: each command lists what it acts on, and a re-list at start-up and
//! every `relist_interval_ms` reconciles the two (see [`Cluster::relist`]).

use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher::Event;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use umbra_fleet::FleetOutputs;
use umbra_ledger::Ledger;
use umbra_schemas::{FleetCommand, FleetEvent, HostKey};
use umbra_stream::config::ServiceConfig;
use umbra_stream::dlq::dead_letter;
use umbra_stream::processor::{send_dead_letter, Input};
use umbra_stream::service::Runtime;
use umbra_stream::telemetry::TraceCtx;
use umbra_stream::{kafka, StreamError};

use crate::cluster::{news, Cluster};
use crate::{AgentError, PlaceholderSettings};

/// Name of the agent: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "k8s-agent";

/// The agent's settings (`[service]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Namespace of the placeholder pods (the agent's RBAC grants pods there).
    pub namespace: String,
    /// Namespace of the workloads' pod templates (ConfigMaps labelled
    /// `umbra.io/workload-id=<id>`, key `pod`) and of the workload pods the agent starts.
    pub workload_namespace: String,
    /// Image of the placeholder container.
    pub pause_image: String,
    /// PriorityClass of the placeholders (negative value, `preemptionPolicy: Never`).
    pub priority_class: String,
    /// How often host metrics are published, in milliseconds.
    pub metrics_interval_ms: u64,
    /// How often nodes and placeholders are re-listed and reconciled, in milliseconds.
    pub relist_interval_ms: u64,
    /// Attempts at a command while the API server is unreachable or failing, one second
    /// apart, before the command is refused.
    pub max_api_attempts: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        let p = PlaceholderSettings::default();
        Self {
            namespace: p.namespace,
            workload_namespace: p.workload_namespace,
            pause_image: p.pause_image,
            priority_class: p.priority_class,
            metrics_interval_ms: 10_000,
            relist_interval_ms: 60_000,
            max_api_attempts: 5,
        }
    }
}

impl AgentSettings {
    /// How placeholders are made.
    pub fn placeholders(&self) -> PlaceholderSettings {
        PlaceholderSettings {
            namespace: self.namespace.clone(),
            pause_image: self.pause_image.clone(),
            priority_class: self.priority_class.clone(),
            workload_namespace: self.workload_namespace.clone(),
        }
    }
}

/// Full configuration of the agent.
pub type Config = ServiceConfig<AgentSettings>;

/// Publishes `events` in order, folding each into the ledger once all are acknowledged.
async fn publish(
    out: &FleetOutputs,
    ledger: &mut Ledger,
    events: &[FleetEvent],
    trace: &TraceCtx,
) -> Result<(), StreamError> {
    out.events(events, trace).await?;
    for e in events {
        ledger.apply(e);
    }
    Ok(())
}

/// Carries out `cmd`, retrying while the API fails (not while it refuses), and refuses the
/// command when it keeps failing, so the shadow manager can place the shadow elsewhere.
async fn execute(
    cluster: &Cluster,
    cmd: &FleetCommand,
    attempts: u32,
    now: impl Fn() -> i64,
    shutdown: &CancellationToken,
) -> Result<FleetEvent, StreamError> {
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        match cluster.execute(cmd, now()).await {
            Ok(answer) => return Ok(answer),
            Err(AgentError::Api(e)) => {
                tracing::warn!(command_id = %cmd.command_id, attempt, error = %e, "Kubernetes API failed; retrying");
                last = e;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(StreamError::Cancelled("waiting for the Kubernetes API")),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    Ok(crate::refusal(
        cmd,
        format!("Kubernetes API unavailable after {attempts} attempts: {last}"),
        now(),
    ))
}

/// Runs the agent until `shutdown`, against the cluster `kube::Client::try_default` finds
/// (in-cluster service account, or `KUBECONFIG`).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    let client = kube::Client::try_default().await.map_err(|e| {
        StreamError::Config(format!(
            "no Kubernetes API (in-cluster service account or KUBECONFIG): {e}"
        ))
    })?;
    run_with_client(config, client, shutdown).await
}

/// [`run`] with a given Kubernetes client.
pub async fn run_with_client(
    config: Config,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), StreamError> {
    let rt = Runtime::start(NAME, config, shutdown.clone()).await?;
    let settings = rt.config.service.clone();
    let cluster = Cluster::new(client, settings.placeholders());
    let events_topic = rt.config.topic("umbra.fleet.events");
    let commands_topic = rt.config.topic("umbra.fleet.commands");
    let commands: Input<HostKey, FleetCommand> =
        Input::new(rt.registry.clone(), commands_topic.clone()).await?;
    let out = FleetOutputs::new(&rt).await?;
    let started = rt
        .readiness
        .gate(format!("restore {events_topic} and re-list"));
    let mut ledger = Ledger::default();
    for e in rt
        .read_values::<HostKey, FleetEvent>("umbra.fleet.events")
        .await?
    {
        ledger.apply(&e);
    }
    let clock = rt.config.clock.clone();
    let commands_counter = rt.metrics.counter(
        "fleet_commands_total",
        "Fleet commands by outcome: executed, duplicate (an id answered before).",
        &["outcome"],
    );
    let api_errors = rt.metrics.counter(
        "k8s_api_errors_total",
        "Kubernetes API calls that failed (not refusals), by call.",
        &["call"],
    );
    // Reconcile before taking commands: the cluster may have changed while no agent ran.
    let relisted = cluster
        .relist(&ledger, clock.now_ms())
        .await
        .map_err(|e| StreamError::Internal(format!("first re-list: {e}")))?;
    publish(&out, &mut ledger, &relisted, &TraceCtx::root("k8s relist")).await?;
    tracing::info!(
        hosts = ledger.hosts().len(),
        shadows = ledger.shadows().len(),
        reconciled = relisted.len(),
        "fleet restored and re-listed"
    );

    kafka::partitions(&rt.config.kafka, &commands_topic).await?;
    let consumer = std::sync::Arc::new(kafka::group_consumer(
        &rt.config.kafka,
        &rt.config.group_id(NAME),
    )?);
    let _lag = kafka::spawn_lag_reporter(
        consumer.clone(),
        commands_topic.clone(),
        rt.metrics.clone(),
        shutdown.clone(),
    );
    consumer
        .subscribe(&[&commands_topic])
        .map_err(|e| StreamError::kafka(format!("subscribing to {commands_topic}"), e))?;
    started.open();

    let mut watch = Box::pin(cluster.watch());
    let mut relist_tick =
        tokio::time::interval(Duration::from_millis(settings.relist_interval_ms.max(100)));
    relist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    relist_tick.tick().await;
    let mut metrics_tick =
        tokio::time::interval(Duration::from_millis(settings.metrics_interval_ms.max(100)));
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: Result<(), StreamError> = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            m = consumer.recv() => {
                let msg = match m {
                    Ok(m) => m,
                    Err(e) => { tracing::warn!(error = %e, "consumer error; continuing"); continue; }
                };
                rt.metrics.consumed.with_label_values(&[&commands_topic]).inc();
                let trace = TraceCtx::from_input(msg.headers(), &commands_topic);
                let decoded = match msg.payload() {
                    None => Err("record has no value".to_string()),
                    Some(v) => commands.decode_value(v).await.map_err(|e| e.to_string()),
                };
                match decoded {
                    Err(reason) => {
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), reason = %reason, "dead-lettering bad fleet command");
                        if let Err(e) = send_dead_letter(&rt.producer, dead_letter(&msg, NAME, "decode", &reason)).await { break Err(e) }
                        rt.metrics.dead_lettered.with_label_values(&[&commands_topic, "decode"]).inc();
                    }
                    Ok(cmd) if ledger.answered(&cmd.command_id) => {
                        commands_counter.with_label_values(&["duplicate"]).inc();
                    }
                    Ok(cmd) => {
                        let answer = match execute(&cluster, &cmd, settings.max_api_attempts, || clock.now_ms(), &shutdown).await {
                            Ok(a) => a,
                            Err(StreamError::Cancelled(_)) => break Ok(()),
                            Err(e) => break Err(e),
                        };
                        if answer.kind == umbra_schemas::FleetEventKind::Refused {
                            tracing::warn!(command_id = %cmd.command_id, reason = %answer.reason, "command refused");
                        }
                        if let Err(e) = publish(&out, &mut ledger, std::slice::from_ref(&answer), &trace).await { break Err(e) }
                        commands_counter.with_label_values(&["executed"]).inc();
                    }
                }
                // Fails only for a partition revoked meanwhile: its new owner re-reads, and
                // commands are idempotent by id.
                if let Err(e) = consumer.store_offset(msg.topic(), msg.partition(), msg.offset()) {
                    tracing::warn!(partition = msg.partition(), error = %e, "offset not stored: partition no longer assigned; its new owner re-reads");
                }
            }
            ev = watch.next() => {
                let now = clock.now_ms();
                let found = match ev {
                    Some(Ok(Event::Apply(p) | Event::InitApply(p))) => news(&ledger, &p, false, now),
                    Some(Ok(Event::Delete(p))) => news(&ledger, &p, true, now),
                    Some(Ok(Event::Init | Event::InitDone)) => None,
                    Some(Err(e)) => {
                        api_errors.with_label_values(&["watch pods"]).inc();
                        tracing::warn!(error = %e, "pod watch failed; it restarts with back-off");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        None
                    }
                    None => { watch = Box::pin(cluster.watch()); None }
                };
                if let Some(e) = found {
                    if let Err(e) = publish(&out, &mut ledger, &[e], &TraceCtx::root("k8s pod watch")).await { break Err(e) }
                }
            }
            _ = relist_tick.tick() => {
                match cluster.relist(&ledger, clock.now_ms()).await {
                    Ok(events) => if let Err(e) = publish(&out, &mut ledger, &events, &TraceCtx::root("k8s relist")).await { break Err(e) },
                    Err(e) => { api_errors.with_label_values(&["relist"]).inc(); tracing::warn!(error = %e, "re-list failed; next time"); }
                }
            }
            _ = metrics_tick.tick() => {
                match cluster.host_metrics(clock.now_ms()).await {
                    Ok(samples) => if let Err(e) = out.host_metrics(&samples).await { break Err(e) },
                    Err(e) => { api_errors.with_label_values(&["host metrics"]).inc(); tracing::warn!(error = %e, "host metrics failed; next time"); }
                }
            }
        }
    };
    kafka::commit_stored(&consumer);
    result
}
