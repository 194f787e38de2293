//! Interceptor: answers every workload request with exactly one allocation decision, on a
//! ready shadow when one was predicted.
//!
//! Decisions are made by [`core::Core`], pure over local state. Around it:
//!
//! - **Ownership by co-partitioning.** Requests, claims, decisions and the shadow table are
//!   keyed by workload id with the same partition count, so every request of a workload goes
//!   to the one instance that owns its partition. A shadow is claimed only by its workload's
//!   requests, so it can only be claimed by that owner.
//! - **Claims and decisions are the memory.** An instance reads the claims and decisions
//!   topics from the beginning at start-up and again after every new partition assignment
//!   (after waiting `assignment_grace_ms` for the previous owner's last writes); in between
//!   only its own writes land on its partitions, and it knows those. A request already decided
//!   (by this instance before a crash, or by the partition's previous owner) is not decided
//!   again; a shadow claimed by any hit is not claimed again. Not following them continuously
//!   keeps the broker's read load at one record per request.
//! - **Pipelined at-least-once.** A request is decided at once (state updated synchronously),
//!   its outputs are sent without waiting, and offsets are stored in order as outputs are
//!   acknowledged; up to `max_in_flight` requests are in flight. A hit sends the claim, the
//!   decision and the expand command together; a replayed request re-sends only its command
//!   (same id: the fleet runs it at most once). A standard placement waits for the fleet's
//!   answer (retrying refused placements on other hosts) before its decision, and its offset is
//!   stored only after that decision is acknowledged.

pub mod core;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use umbra_ledger::Ledger;
use umbra_schemas::{
    AllocationDecision, Claim, DemandForecast, FleetCommand, FleetEvent, HostKey, HostState,
    ShadowEntry, WorkloadKey, WorkloadRequest,
};
use umbra_stream::config::ServiceConfig;
use umbra_stream::dlq::{dead_letter, BadDataPolicy};
use umbra_stream::processor::{send, send_dead_letter, Emit, Input, Output};
use umbra_stream::reader::{RawRecord, RestoringReader};
use umbra_stream::service::Runtime;
use umbra_stream::telemetry::{with_headers, TraceCtx};
use umbra_stream::{kafka, StreamError};

pub use crate::core::{Core, Settings, Step, World};

/// Service name: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "interceptor";

/// Full configuration of the service.
pub type Config = ServiceConfig<Settings>;

/// Counts partition assignments, so that the loop notices a rebalance.
/// The partitions this instance owns now, and a count of assignments.
#[derive(Clone, Default)]
struct Ownership {
    generation: Arc<AtomicU64>,
    owned: Arc<Mutex<HashSet<i32>>>,
}

impl Ownership {
    fn owns(&self, partition: i32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&partition)
    }
}

impl ClientContext for Ownership {}
impl ConsumerContext for Ownership {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                owned.remove(&e.partition());
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            self.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(tpl.elements().iter().map(|e| e.partition()));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

enum Observed {
    Claim(Claim),
    Decision(AllocationDecision),
    Fleet(FleetEvent),
    Known(String, bool),
}

/// Follows the keys of the forecasts table: which workloads umbra knows.
async fn follow_known(
    rt: &Runtime<Settings>,
    tx: mpsc::UnboundedSender<Observed>,
) -> Result<(), StreamError> {
    let topic = rt.config.topic("umbra.forecasts");
    let input: Arc<Input<WorkloadKey, DemandForecast>> =
        Arc::new(Input::new(rt.registry.clone(), topic.clone()).await?);
    let reader = RestoringReader::open(&rt.config.kafka, &topic).await?;
    let gate = rt.readiness.gate(format!("restore {topic} keys"));
    tokio::spawn(reader.run(
        gate,
        rt.shutdown.clone(),
        rt.metrics.clone(),
        move |r: RawRecord| {
            let (input, tx) = (input.clone(), tx.clone());
            async move {
                let Some(k) = r.key else { return };
                // Only the key matters here; the forecast itself is the shadow manager's input.
                if let Ok(k) = input.decode_key(&k).await {
                    let _ = tx.send(Observed::Known(k.workload_id, r.value.is_some()));
                }
            }
        },
    ));
    Ok(())
}

type Completion =
    Pin<Box<dyn Future<Output = (Result<(), StreamError>, Option<(i32, i64)>)> + Send>>;

/// Offsets of requests in flight, per partition; an offset is stored once it and every
/// earlier one are done.
#[derive(Default)]
struct InFlight {
    parts: HashMap<i32, BTreeMap<i64, bool>>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.parts.values().map(BTreeMap::len).sum()
    }
    fn begin(&mut self, p: i32, o: i64) {
        self.parts.entry(p).or_default().insert(o, false);
    }
    /// Marks (p, o) done; returns the offset to store, if the front moved.
    fn done(&mut self, p: i32, o: i64) -> Option<i64> {
        let q = self.parts.get_mut(&p)?;
        if let Some(d) = q.get_mut(&o) {
            *d = true;
        }
        let mut last = None;
        while let Some(e) = q.first_entry() {
            if !*e.get() {
                break;
            }
            last = Some(*e.key());
            e.remove();
        }
        last
    }
}

struct Outputs {
    producer: FutureProducer,
    decisions: Output<WorkloadKey, AllocationDecision>,
    claims: Output<WorkloadKey, Claim>,
    commands: Output<HostKey, FleetCommand>,
}

impl Outputs {
    fn emits(&self, step: &Step) -> Result<Vec<Emit>, StreamError> {
        let wk = |w: &str| WorkloadKey {
            workload_id: w.to_string(),
        };
        let cmd = |c: &FleetCommand| {
            self.commands.record(
                &HostKey {
                    host_id: c.host_id.clone(),
                },
                c,
            )
        };
        let mut out = Vec::new();
        match step {
            Step::Decide {
                claim,
                decision,
                command,
            } => {
                if let Some(c) = claim {
                    out.push(self.claims.record(&wk(&c.workload_id), c)?);
                }
                out.push(
                    self.decisions
                        .record(&wk(&decision.workload_id), decision)?,
                );
                if let Some(c) = command {
                    out.push(cmd(c)?);
                }
            }
            Step::Replay { command: Some(c) } | Step::Place(c) => out.push(cmd(c)?),
            Step::Replay { command: None } | Step::Waiting => {}
        }
        Ok(out)
    }

    fn send_all(&self, emits: Vec<Emit>, trace: &TraceCtx, pos: Option<(i32, i64)>) -> Completion {
        let producer = self.producer.clone();
        let headers: Vec<_> = emits.iter().map(|e| trace.send(&e.topic)).collect();
        Box::pin(async move {
            let sends = emits
                .iter()
                .zip(&headers)
                .map(|(e, h)| send(&producer, e, with_headers(OwnedHeaders::new(), h)));
            let result = futures::future::join_all(sends)
                .await
                .into_iter()
                .collect::<Result<Vec<()>, _>>()
                .map(|_| ());
            (result, pos)
        })
    }
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    let rt = Runtime::start(NAME, config, shutdown.clone()).await?;
    let settings = rt.config.service.clone();
    let table = rt
        .table::<WorkloadKey, ShadowEntry>("umbra.shadow.table")
        .await?;
    let host_state = rt.table::<HostKey, HostState>("umbra.host.state").await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let claims_topic = rt.config.topic("umbra.claims");
    let decisions_topic = rt.config.topic("umbra.allocation.decisions");
    let fleet_tx = tx.clone();
    rt.follow::<HostKey, FleetEvent>("umbra.fleet.events", move |e| {
        let _ = fleet_tx.send(Observed::Fleet(e));
    })
    .await?;
    follow_known(&rt, tx.clone()).await?;
    drop(tx);
    let out = Outputs {
        producer: rt.producer.clone(),
        decisions: Output::new(rt.registry.clone(), decisions_topic.clone()).await?,
        claims: Output::new(rt.registry.clone(), claims_topic.clone()).await?,
        commands: Output::new(rt.registry.clone(), rt.config.topic("umbra.fleet.commands")).await?,
    };
    let requests_topic = rt.config.topic("umbra.workload.requests");
    let requests: Input<WorkloadKey, WorkloadRequest> =
        Input::new(rt.registry.clone(), requests_topic.clone()).await?;
    kafka::partitions(&rt.config.kafka, &requests_topic).await?;
    let ownership = Ownership::default();
    let consumer: Arc<StreamConsumer<Ownership>> = Arc::new(kafka::group_consumer_with_context(
        &rt.config.kafka,
        &rt.config.group_id(NAME),
        ownership.clone(),
    )?);
    let _lag = kafka::spawn_lag_reporter(
        consumer.clone(),
        requests_topic.clone(),
        rt.metrics.clone(),
        shutdown.clone(),
    );
    let consumer_gate = rt
        .readiness
        .consumer_gate(format!("consumer {requests_topic}"));

    let mut core = Core::new(settings.clone());
    let mut ledger = Ledger::default();
    let mut known: HashSet<String> = HashSet::new();
    let apply =
        |o: Observed, core: &mut Core, ledger: &mut Ledger, known: &mut HashSet<String>| match o {
            Observed::Claim(c) => core.observe_claim(&c),
            Observed::Decision(d) => core.observe_decision(&d),
            Observed::Fleet(e) => ledger.apply(&e),
            Observed::Known(w, present) => {
                if present {
                    known.insert(w);
                } else {
                    known.remove(&w);
                }
            }
        };
    // Nothing is decided before every input is restored, the claims and decisions included.
    for o in read_memory(&rt).await? {
        apply(o, &mut core, &mut ledger, &mut known);
    }
    let restored = rt.readiness.inputs_restored();
    tokio::pin!(restored);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut restored => break,
            Some(o) = rx.recv() => apply(o, &mut core, &mut ledger, &mut known),
        }
    }
    while let Ok(o) = rx.try_recv() {
        apply(o, &mut core, &mut ledger, &mut known);
    }
    consumer
        .subscribe(&[&requests_topic])
        .map_err(|e| StreamError::kafka(format!("subscribing to {requests_topic}"), e))?;
    consumer_gate.open();
    tracing::info!(known = known.len(), "inputs restored; deciding");

    let decisions_counter = rt.metrics.counter(
        "decisions_total",
        "Allocation decisions, by outcome.",
        &["outcome"],
    );
    let latency = rt.metrics.histogram(
        "decision_latency_seconds",
        "Time from a request's requested_at to its decision's decided_at, by outcome.",
        &["outcome"],
        vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    );
    let mut inflight = InFlight::default();
    let mut completions: FuturesUnordered<Completion> = FuturesUnordered::new();
    let mut waiting_pos: HashMap<String, (i32, i64)> = HashMap::new();
    let mut ready_parts: HashSet<i32> = HashSet::new();
    let mut seen_generation = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let clock = rt.config.clock.clone();
    let mut last_prune = clock.now_ms();
    let record_decision = |step: &Step| {
        if let Step::Decide { decision, .. } = step {
            let outcome = match decision.outcome {
                umbra_schemas::Outcome::ShadowHit => "shadow_hit",
                umbra_schemas::Outcome::Standard => "standard",
                umbra_schemas::Outcome::Rejected => "rejected",
                umbra_schemas::Outcome::Unknown => "unknown",
            };
            decisions_counter.with_label_values(&[outcome]).inc();
            latency
                .with_label_values(&[outcome])
                .observe((decision.decided_at - decision.requested_at).max(0) as f64 / 1000.0);
        }
    };

    let result: Result<(), StreamError> = loop {
        let can_read = inflight.len() < settings.max_in_flight;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some(o) = rx.recv() => {
                let fleet = matches!(o, Observed::Fleet(_));
                apply(o, &mut core, &mut ledger, &mut known);
                while let Ok(o) = rx.try_recv() {
                    apply(o, &mut core, &mut ledger, &mut known);
                }
                if fleet && core.waiting() > 0 {
                    abandon_unowned(&mut core, &mut waiting_pos, &ownership);
                    let steps = {
                        let t = table.read();
                        let h = host_state.read();
                        let w = World { now: clock.now_ms(), table: t.rows(), hosts: h.rows(), ledger: &ledger, known: &known };
                        core.follow_up(&w)
                    };
                    if let Err(e) = send_follow_ups(steps, &out, &mut waiting_pos, &mut completions, &record_decision) {
                        break Err(e);
                    }
                }
            }
            Some((r, pos)) = completions.next() => {
                if let Err(e) = r { break Err(e) }
                if let Some((p, o)) = pos {
                    if let Some(store) = inflight.done(p, o) {
                        if let Err(e) = consumer.store_offset(&requests_topic, p, store) {
                            tracing::debug!(partition = p, error = %e, "offset not stored (partition revoked?)");
                        }
                        umbra_stream::progress::settled(&requests_topic, p, store + 1);
                    }
                }
            }
            _ = tick.tick() => {
                let now = clock.now_ms();
                if core.waiting() > 0 {
                    abandon_unowned(&mut core, &mut waiting_pos, &ownership);
                    let steps = {
                        let t = table.read();
                        let h = host_state.read();
                        let w = World { now, table: t.rows(), hosts: h.rows(), ledger: &ledger, known: &known };
                        core.follow_up(&w)
                    };
                    if let Err(e) = send_follow_ups(steps, &out, &mut waiting_pos, &mut completions, &record_decision) {
                        break Err(e);
                    }
                }
                if now - last_prune > 3_600_000 {
                    core.prune(now);
                    last_prune = now;
                }
            }
            m = consumer.recv(), if can_read => {
                let msg = match m {
                    Ok(m) => m,
                    Err(e) => { tracing::warn!(error = %e, "consumer error; continuing"); continue; }
                };
                let (p, o) = (msg.partition(), msg.offset());
                if !ownership.owns(p) {
                    // Fetched before its partition was revoked: its new owner decides it.
                    continue;
                }
                let g = ownership.generation.load(Ordering::Acquire);
                if g != seen_generation {
                    seen_generation = g;
                    ready_parts.clear();
                }
                if !ready_parts.contains(&p) {
                    // A newly assigned partition: let its previous owner's last writes land,
                    // then read the claims and decisions up to their end before deciding.
                    if let Err(e) = catch_up(&rt, &settings, &mut rx, &mut |o| apply(o, &mut core, &mut ledger, &mut known), &shutdown).await {
                        break Err(e);
                    }
                    ready_parts.insert(p);
                }
                rt.metrics.consumed.with_label_values(&[&requests_topic]).inc();
                inflight.begin(p, o);
                let trace = TraceCtx::from_input(msg.headers(), &requests_topic);
                let decoded = match (msg.key(), msg.payload()) {
                    (_, None) => Err("record has no value".to_string()),
                    (_, Some(v)) => requests.decode_value(v).await.map_err(|e| e.to_string()),
                };
                let req = match decoded {
                    Ok(r) => r,
                    Err(reason) => {
                        match settings.bad_data {
                            BadDataPolicy::Fail => break Err(StreamError::Internal(format!("undecodable request at partition {p} offset {o}: {reason}"))),
                            BadDataPolicy::Drop => {
                                tracing::warn!(partition = p, offset = o, reason = %reason, "dropping undecodable request");
                                completions.push(Box::pin(async move { (Ok(()), Some((p, o))) }));
                            }
                            BadDataPolicy::DeadLetter => {
                                tracing::warn!(partition = p, offset = o, reason = %reason, "dead-lettering undecodable request");
                                rt.metrics.dead_lettered.with_label_values(&[&requests_topic, "decode"]).inc();
                                let dl = dead_letter(&msg, NAME, "decode", &reason);
                                let producer = rt.producer.clone();
                                completions.push(Box::pin(async move { (send_dead_letter(&producer, dl).await, Some((p, o))) }));
                            }
                        }
                        continue;
                    }
                };
                let step = {
                    let t = table.read();
                    let h = host_state.read();
                    let w = World { now: clock.now_ms(), table: t.rows(), hosts: h.rows(), ledger: &ledger, known: &known };
                    core.decide(&req, &w)
                };
                record_decision(&step);
                let emits = match out.emits(&step) {
                    Ok(e) => e,
                    Err(e) => break Err(e),
                };
                let pos = match &step {
                    Step::Place(_) => {
                        waiting_pos.insert(req.request_id.clone(), (p, o));
                        None
                    }
                    _ => Some((p, o)),
                };
                completions.push(out.send_all(emits, &trace, pos));
            }
        }
    };
    // Drain: what was decided is sent and acknowledged before the final commit.
    let drain = async {
        while let Some((r, pos)) = completions.next().await {
            if r.is_err() {
                continue;
            }
            if let Some((p, o)) = pos {
                if let Some(store) = inflight.done(p, o) {
                    let _ = consumer.store_offset(&requests_topic, p, store);
                }
            }
        }
    };
    drain.await;
    kafka::commit_stored(&consumer);
    result
}

/// Forgets the waiting placements of partitions this instance no longer owns: their new
/// owner re-reads those requests and decides them, finding any answer the fleet already gave.
fn abandon_unowned(
    core: &mut Core,
    waiting_pos: &mut HashMap<String, (i32, i64)>,
    ownership: &Ownership,
) {
    waiting_pos.retain(|rid, (p, _)| {
        let keep = ownership.owns(*p);
        if !keep {
            core.abandon(rid);
        }
        keep
    });
}

/// Sends the outputs of follow-up steps (fleet answers, re-sent placements); a decision
/// completes the offset its request has been holding.
fn send_follow_ups(
    steps: Vec<(String, Step)>,
    out: &Outputs,
    waiting_pos: &mut HashMap<String, (i32, i64)>,
    completions: &mut FuturesUnordered<Completion>,
    record_decision: &dyn Fn(&Step),
) -> Result<(), StreamError> {
    for (rid, step) in steps {
        record_decision(&step);
        let pos = if matches!(step, Step::Decide { .. }) {
            waiting_pos.remove(&rid)
        } else {
            None
        };
        completions.push(out.send_all(out.emits(&step)?, &TraceCtx::root("placement"), pos));
    }
    Ok(())
}

/// Reads the claims and decisions topics from the beginning to their current end: what
/// every instance has decided and claimed. Read at start-up and after each new assignment,
/// not followed in between (an instance only decides for the partitions it owns, so in
/// between only its own writes land there, and it knows those).
async fn read_memory(rt: &Runtime<Settings>) -> Result<Vec<Observed>, StreamError> {
    let claims = rt.read_values::<WorkloadKey, Claim>("umbra.claims").await?;
    let decisions = rt
        .read_values::<WorkloadKey, AllocationDecision>("umbra.allocation.decisions")
        .await?;
    Ok(claims
        .into_iter()
        .map(Observed::Claim)
        .chain(decisions.into_iter().map(Observed::Decision))
        .collect())
}

/// After a new assignment: waits `assignment_grace_ms` for the previous owner's last writes
/// (still applying fleet events meanwhile), then reads every claim and decision up to the end.
async fn catch_up(
    rt: &Runtime<Settings>,
    settings: &Settings,
    rx: &mut mpsc::UnboundedReceiver<Observed>,
    apply: &mut dyn FnMut(Observed),
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let grace = tokio::time::sleep(Duration::from_millis(settings.assignment_grace_ms));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(StreamError::Cancelled("catching up after an assignment")),
            _ = &mut grace => break,
            Some(o) = rx.recv() => apply(o),
        }
    }
    for o in read_memory(rt).await? {
        apply(o);
    }
    Ok(())
}
