//! The fleet simulator.
//!
//! The simulator ([`Simulator`], run by `umbra-fleet-sim`)
//! executes fleet commands against simulated hosts, admits nothing beyond capacity and says
//! why it refuses, runs health checks and workload start-ups after configurable delays, and
//! injects faults by chance (`[service.faults]`) or on request through its HTTP API:
//!
//! ```text
//! POST /faults {"fault": "fail_shadow", "shadow_id": "..."}          the shadow fails its health check now
//! POST /faults {"fault": "fail_workload_shadows", "workload_id": "..."}
//! POST /faults {"fault": "host_health", "host_id": "host-001", "healthy": false}
//! POST /faults {"fault": "lose_commands", "count": 2}                the next 2 commands are lost
//! POST /faults {"fault": "duplicate_commands", "count": 2}           the next 2 are delivered twice
//! GET  /fleet                                                         hosts, commitments, shadows
//! ```
//!
//! State: the simulator's ledger is the fold of its own events, so at start-up it reads
//! `umbra.fleet.events` up to the end offsets and continues from there; commands are consumed
//! in a group with offsets stored after their events are acknowledged, and a command id that
//! was answered before (a replay or a duplicate) changes nothing.

pub mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use umbra_ledger::Ledger;
use umbra_schemas::{FleetCommand, FleetEvent, HostKey, HostMetrics, Resources};
use umbra_stream::config::ServiceConfig;
use umbra_stream::dlq::dead_letter;
use umbra_stream::metrics::Metrics;
use umbra_stream::processor::{send, send_dead_letter, Input, Output};
use umbra_stream::service::Runtime;
use umbra_stream::telemetry::{with_headers, TraceCtx};
use umbra_stream::{kafka, StreamError};

pub use sim::{FaultSettings, ShadowSelector, SimSettings, Simulator};

/// Name of the simulator: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "fleet-sim";

/// Full configuration of the simulator.
pub type Config = ServiceConfig<SimSettings>;

/// A fault requested through the HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultRequest {
    /// One shadow fails its health check now.
    FailShadow {
        /// Shadow id.
        shadow_id: String,
    },
    /// Every live shadow of a workload fails its health check now.
    FailWorkloadShadows {
        /// Workload id.
        workload_id: String,
    },
    /// A host turns unhealthy, or healthy again.
    HostHealth {
        /// Host id.
        host_id: String,
        /// New health.
        healthy: bool,
    },
    /// The next `count` commands are consumed and never executed.
    LoseCommands {
        /// How many.
        count: u32,
    },
    /// The next `count` commands are delivered twice.
    DuplicateCommands {
        /// How many.
        count: u32,
    },
}

/// One host as `GET /fleet` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostView {
    /// Capacity.
    pub capacity: Resources,
    /// Placed workloads plus live shadows.
    pub committed: Resources,
    /// Health.
    pub healthy: bool,
    /// Live shadow ids.
    pub shadows: Vec<String>,
    /// Placed resources by workload.
    pub workloads: BTreeMap<String, Resources>,
}

enum Control {
    Fault(FaultRequest, oneshot::Sender<usize>),
    Fleet(oneshot::Sender<BTreeMap<String, HostView>>),
}

fn unavailable() -> (axum::http::StatusCode, String) {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the simulator is not running\n".to_string(),
    )
}

fn routes(tx: mpsc::Sender<Control>) -> Router {
    async fn fault(
        State(tx): State<mpsc::Sender<Control>>,
        Json(req): Json<FaultRequest>,
    ) -> Result<Json<serde_json::Value>, (axum::http::StatusCode, String)> {
        let (reply, rx) = oneshot::channel();
        tx.send(Control::Fault(req, reply))
            .await
            .map_err(|_| unavailable())?;
        let events = rx.await.map_err(|_| unavailable())?;
        Ok(Json(serde_json::json!({ "events": events })))
    }
    async fn fleet(
        State(tx): State<mpsc::Sender<Control>>,
    ) -> Result<Json<BTreeMap<String, HostView>>, (axum::http::StatusCode, String)> {
        let (reply, rx) = oneshot::channel();
        tx.send(Control::Fleet(reply))
            .await
            .map_err(|_| unavailable())?;
        Ok(Json(rx.await.map_err(|_| unavailable())?))
    }
    Router::new()
        .route("/faults", post(fault))
        .route("/fleet", get(fleet))
        .with_state(tx)
}

fn fleet_view(ledger: &Ledger) -> BTreeMap<String, HostView> {
    ledger
        .hosts()
        .iter()
        .map(|(id, h)| {
            (
                id.clone(),
                HostView {
                    capacity: h.capacity,
                    committed: h.committed(),
                    healthy: h.healthy,
                    shadows: h.shadows.keys().cloned().collect(),
                    workloads: h.workloads.clone(),
                },
            )
        })
        .collect()
}

/// What a fleet (the simulator, the Kubernetes agent) publishes: fleet events and host
/// metrics, keyed by host.
pub struct FleetOutputs {
    producer: FutureProducer,
    events: Output<HostKey, FleetEvent>,
    metrics_out: Output<HostKey, HostMetrics>,
    metrics: Metrics,
}

impl FleetOutputs {
    /// The outputs of the service `rt` runs.
    pub async fn new<S>(rt: &Runtime<S>) -> Result<Self, StreamError> {
        Ok(Self {
            producer: rt.producer.clone(),
            events: Output::new(rt.registry.clone(), rt.config.topic("umbra.fleet.events")).await?,
            metrics_out: Output::new(rt.registry.clone(), rt.config.topic("umbra.host.metrics"))
                .await?,
            metrics: rt.metrics.clone(),
        })
    }

    /// Publishes events in order and waits for every acknowledgement: a fleet's ledger after
    /// a restart is the fold of exactly what was acknowledged.
    pub async fn events(&self, events: &[FleetEvent], trace: &TraceCtx) -> Result<(), StreamError> {
        for e in events {
            let emit = self.events.record(
                &HostKey {
                    host_id: e.host_id.clone(),
                },
                e,
            )?;
            send(
                &self.producer,
                &emit,
                with_headers(OwnedHeaders::new(), &trace.send(self.events.topic())),
            )
            .await?;
            self.metrics
                .produced
                .with_label_values(&[self.events.topic()])
                .inc();
        }
        Ok(())
    }

    /// Publishes host metrics samples.
    pub async fn host_metrics(&self, samples: &[HostMetrics]) -> Result<(), StreamError> {
        for m in samples {
            let emit = self.metrics_out.record(
                &HostKey {
                    host_id: m.host_id.clone(),
                },
                m,
            )?;
            send(&self.producer, &emit, OwnedHeaders::new()).await?;
            self.metrics
                .produced
                .with_label_values(&[self.metrics_out.topic()])
                .inc();
        }
        Ok(())
    }
}

/// Runs the simulator until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    let (tx, mut control) = mpsc::channel(64);
    let rt = Runtime::start_with_routes(NAME, config, shutdown.clone(), routes(tx)).await?;
    let settings = rt.config.service.clone();
    let events_topic = rt.config.topic("umbra.fleet.events");
    let commands_topic = rt.config.topic("umbra.fleet.commands");
    let commands: Input<HostKey, FleetCommand> =
        Input::new(rt.registry.clone(), commands_topic.clone()).await?;
    let out = FleetOutputs::new(&rt).await?;
    let started = rt.readiness.gate(format!("restore {events_topic}"));
    // The simulator's state is the fold of its own events.
    let mut ledger = Ledger::default();
    for e in rt
        .read_values::<HostKey, FleetEvent>("umbra.fleet.events")
        .await?
    {
        ledger.apply(&e);
    }
    let mut sim = Simulator::new(settings.clone(), ledger);
    let clock = rt.config.clock.clone();
    out.events(&sim.boot(clock.now_ms()), &TraceCtx::root("fleet boot"))
        .await?;
    tracing::info!(
        hosts = sim.ledger().hosts().len(),
        shadows = sim.ledger().shadows().len(),
        "fleet restored"
    );

    let commands_counter = rt.metrics.counter(
        "fleet_commands_total",
        "Fleet commands by outcome: executed, duplicate (an id answered before), lost (injected).",
        &["outcome"],
    );
    let faults_counter = rt.metrics.counter(
        "fleet_faults_injected_total",
        "Faults injected, by kind.",
        &["fault"],
    );
    // Time alone changes the fleet (a shadow becomes ready): a driver of the clock waits
    // for a health-check pass at its time.
    umbra_stream::progress::act_in_passes();
    for p in kafka::partitions(&rt.config.kafka, &commands_topic).await? {
        umbra_stream::progress::reads(&commands_topic, p);
    }
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

    let (mut lose_next, mut duplicate_next) = (0u32, 0u32);
    let mut metrics_tick =
        tokio::time::interval(Duration::from_millis(settings.metrics_interval_ms.max(10)));
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_metrics_ms: Option<i64> = None;
    let mut clock_moved = umbra_stream::progress::clock_watch();
    let result: Result<(), StreamError> = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some(c) = control.recv() => match c {
                Control::Fleet(reply) => { let _ = reply.send(fleet_view(sim.ledger())); }
                Control::Fault(req, reply) => {
                    let now = clock.now_ms();
                    let kind = match &req { FaultRequest::FailShadow{..} => "fail_shadow", FaultRequest::FailWorkloadShadows{..} => "fail_workload_shadows", FaultRequest::HostHealth{..} => "host_health", FaultRequest::LoseCommands{..} => "lose_commands", FaultRequest::DuplicateCommands{..} => "duplicate_commands" };
                    faults_counter.with_label_values(&[kind]).inc();
                    tracing::warn!(?req, "fault injected");
                    let events = match req {
                        FaultRequest::FailShadow { shadow_id } => sim.fail_shadows(&ShadowSelector::Shadow(shadow_id), now),
                        FaultRequest::FailWorkloadShadows { workload_id } => sim.fail_shadows(&ShadowSelector::Workload(workload_id), now),
                        FaultRequest::HostHealth { host_id, healthy } => sim.set_host_health(&host_id, healthy, now),
                        FaultRequest::LoseCommands { count } => { lose_next += count; Vec::new() }
                        FaultRequest::DuplicateCommands { count } => { duplicate_next += count; Vec::new() }
                    };
                    if let Err(e) = out.events(&events, &TraceCtx::root("fleet fault")).await { break Err(e) }
                    let _ = reply.send(events.len());
                }
            },
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
                    Ok(cmd) => {
                        let lost = if lose_next > 0 { lose_next -= 1; true } else { sim.roll_lost() };
                        if lost {
                            tracing::warn!(command_id = %cmd.command_id, kind = ?cmd.kind, "command lost (injected)");
                            commands_counter.with_label_values(&["lost"]).inc();
                        } else {
                            if settings.command_delay_ms > 0 {
                                tokio::time::sleep(clock.wall_duration(settings.command_delay_ms)).await;
                            }
                            let copies = if duplicate_next > 0 { duplicate_next -= 1; 2 } else if sim.roll_duplicate() { 2 } else { 1 };
                            for _ in 0..copies {
                                if sim.is_duplicate(&cmd) {
                                    commands_counter.with_label_values(&["duplicate"]).inc();
                                    continue;
                                }
                                let events = sim.execute(&cmd, clock.now_ms());
                                if let Err(e) = out.events(&events, &trace).await { return finish(&consumer, Err(e)) }
                                commands_counter.with_label_values(&["executed"]).inc();
                            }
                        }
                    }
                }
                // Fails only for a partition revoked meanwhile: its new owner re-reads, and
                // commands are idempotent by id.
                if let Err(e) = consumer.store_offset(msg.topic(), msg.partition(), msg.offset()) {
                    tracing::warn!(partition = msg.partition(), error = %e, "offset not stored: partition no longer assigned; its new owner re-reads");
                }
                umbra_stream::progress::settled(msg.topic(), msg.partition(), msg.offset() + 1);
            }
            _ = async {
                // Every 20 ms, and at once when a driven clock moves.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = clock_moved.changed() => {}
                }
            } => {
                let pass = umbra_stream::progress::begin_pass();
                let now = clock.now_ms();
                let events = sim.tick(now);
                if let Err(e) = out.events(&events, &TraceCtx::root("fleet health check")).await { break Err(e) }
                // A driven clock reports host metrics every interval of its own time.
                if clock.driven && next_metrics_ms.is_none_or(|t| now >= t) {
                    if let Err(e) = out.host_metrics(&sim.host_metrics(now)).await { break Err(e) }
                    next_metrics_ms = Some(now + settings.metrics_interval_ms as i64);
                }
                umbra_stream::progress::end_pass(pass);
            }
            _ = metrics_tick.tick(), if !clock.driven => {
                if let Err(e) = out.host_metrics(&sim.host_metrics(clock.now_ms())).await { break Err(e) }
            }
        }
    };
    finish(&consumer, result)
}

fn finish(
    consumer: &rdkafka::consumer::StreamConsumer,
    result: Result<(), StreamError>,
) -> Result<(), StreamError> {
    kafka::commit_stored(consumer);
    result
}
