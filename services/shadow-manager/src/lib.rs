//! Shadow manager: the single writer of the shadow table.
//!
//! It reads forecasts and host state (tables), fleet events, claims and re-shadow requests
//! (streams folded into local state), and its own table, restored once at start-up: being the
//! only writer, it then keeps the table in memory and writes every change through. Decisions
//! are made by [`core::Manager::reconcile`], a pure pass run whenever an input changes and on
//! a cadence; the service sends the table writes, waits for their acknowledgement, then sends
//! the fleet commands.
//!
//! Why streams are folded from the beginning instead of consumed in a group: the manager's
//! decisions depend on the whole fleet (every reservation on every host), not on one record
//! at a time, and every decision is idempotent (command ids derived from shadow ids, a table
//! row rewritten only when it changes). Re-reading the retained fleet events at start gives
//! the exact ledger back; no offsets need committing. Run one instance (it is the single
//! writer); the deployment uses `replicas: 1` with the Recreate strategy.

pub mod core;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use umbra_ledger::Ledger;
use umbra_schemas::{
    Claim, DemandForecast, FleetCommand, FleetEvent, HostKey, HostState, ReshadowRequest,
    ScaleUpForecast, ShadowEntry, WorkloadKey,
};
use umbra_stream::config::ServiceConfig;
use umbra_stream::processor::{send, Output};
use umbra_stream::service::Runtime;
use umbra_stream::table::restore_rows;
use umbra_stream::telemetry::{with_headers, Parent, TraceCtx};
use umbra_stream::StreamError;

pub use crate::core::{Action, Alternates, Inputs, Manager, Quantile, Settings, ShadowIds};

/// Service name: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "shadow-manager";

/// Full configuration of the service.
pub type Config = ServiceConfig<Settings>;

/// Local state fed by the folding readers.
#[derive(Default)]
struct Folded {
    ledger: Ledger,
    claims: HashMap<String, Claim>,
    reshadows: Vec<ReshadowRequest>,
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    config.service.validate().map_err(StreamError::Config)?;
    let rt = Runtime::start(NAME, config, shutdown.clone()).await?;
    let settings = rt.config.service.clone();
    let table_topic = rt.config.topic("umbra.shadow.table");
    let table_out: Output<WorkloadKey, ShadowEntry> =
        Output::new(rt.registry.clone(), table_topic.clone()).await?;
    let commands_out: Output<HostKey, FleetCommand> =
        Output::new(rt.registry.clone(), rt.config.topic("umbra.fleet.commands")).await?;
    let table_gate = rt.readiness.gate(format!("restore {table_topic}"));

    // Its inputs take effect in reconcile passes: a driver of the clock waits for a pass.
    umbra_stream::progress::act_in_passes();
    // On a driven clock it reconciles only at the driver's marks that its inputs have settled
    // (docs/replay.md): a pass on the first of a step's pool forecasts places those slots
    // before the next forecast is in, and where slots stand then depends on how the
    // forecasts were split into passes, which differs run to run.
    let on_marks = rt.config.clock.driven;
    if on_marks {
        umbra_stream::progress::act_on_marks();
    }
    let notify = Arc::new(Notify::new());
    let folded = Arc::new(Mutex::new(Folded::default()));
    let forecasts = rt
        .table::<WorkloadKey, DemandForecast>("umbra.forecasts")
        .await?;
    let host_state = rt.table::<HostKey, HostState>("umbra.host.state").await?;
    let scale_ups = rt
        .table::<WorkloadKey, ScaleUpForecast>("umbra.scaleup.forecasts")
        .await?;
    // The latest forecast's trace context per workload: the pass's writes for a workload
    // continue the trace of the forecast they follow from.
    let parents: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let p1 = parents.clone();
    let forecasts_topic = rt
        .follow_traceparents::<WorkloadKey, DemandForecast>("umbra.forecasts", move |k, tp| {
            p1.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(k.workload_id, tp);
        })
        .await?;
    let (f, n) = (folded.clone(), notify.clone());
    rt.follow::<HostKey, FleetEvent>("umbra.fleet.events", move |e| {
        f.lock().unwrap_or_else(|p| p.into_inner()).ledger.apply(&e);
        n.notify_one();
    })
    .await?;
    let (f, n) = (folded.clone(), notify.clone());
    rt.follow::<WorkloadKey, Claim>("umbra.claims", move |c| {
        f.lock()
            .unwrap_or_else(|p| p.into_inner())
            .claims
            .insert(c.shadow_id.clone(), c);
        n.notify_one();
    })
    .await?;
    let (f, n) = (folded.clone(), notify.clone());
    rt.follow::<WorkloadKey, ReshadowRequest>("umbra.reshadow.requests", move |r| {
        f.lock()
            .unwrap_or_else(|p| p.into_inner())
            .reshadows
            .push(r);
        n.notify_one();
    })
    .await?;
    let rows = restore_rows::<WorkloadKey, ShadowEntry>(
        &rt.config.kafka,
        rt.registry.clone(),
        &table_topic,
        rt.metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(rows = rows.len(), "umbra.shadow.table restored");
    table_gate.open();
    let mut manager = Manager::new(settings.clone(), rows);

    // Decisions wait until every input is restored: a pass over a half-read ledger would
    // place shadows on hosts that are already full.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = rt.readiness.ready() => {}
    }
    tracing::info!(rows = manager.table().len(), "inputs restored; reconciling");
    let rows_gauge = rt.metrics.table_rows.with_label_values(&[&table_topic]);
    let actions_counter = rt.metrics.counter(
        "shadow_actions_total",
        "Shadow table writes and fleet commands issued, by kind.",
        &["kind"],
    );
    let shadows_gauge = rt.metrics.gauge(
        "shadows",
        "Shadows in the table, by status (requested, healthy, unhealthy, failed, claimed, released).",
        &["status"],
    );
    let interval = Duration::from_millis(settings.reconcile_interval_ms.max(10));
    let mut clock_moved = umbra_stream::progress::clock_watch();
    let mut ids = ShadowIds::default();
    // The clock time of the last pass at a mark: one pass per mark.
    let mut acted_at: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = notify.notified() => {
                // Let a burst of input settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(interval) => {}
            _ = clock_moved.changed() => {}
            // A table changed (tables have no notification): a pass now.
            _ = umbra_stream::progress::wait_unsettled() => {}
        }
        let pass = umbra_stream::progress::begin_pass();
        let now = rt.config.clock.now_ms();
        if on_marks
            && (umbra_stream::progress::settled_mark() != Some(now) || acted_at == Some(now))
        {
            umbra_stream::progress::end_pass(pass);
            continue;
        }
        acted_at = Some(now);
        let actions = {
            let forecasts = forecasts.read();
            let hosts = host_state.read();
            let pools = scale_ups.read();
            let mut folded = folded.lock().unwrap_or_else(|p| p.into_inner());
            let reshadows = std::mem::take(&mut folded.reshadows);
            let inputs = Inputs {
                now,
                forecasts: forecasts.rows(),
                host_state: hosts.rows(),
                ledger: &folded.ledger,
                claims: &folded.claims,
                reshadows: &reshadows,
                scale_ups: pools.rows(),
            };
            manager.reconcile(&inputs, &mut |row, host| ids.next(row, host, now))
        };
        if actions.is_empty() {
            if on_marks {
                umbra_stream::progress::acted_on_mark(now);
            }
            umbra_stream::progress::end_pass(pass);
            continue;
        }
        let mut traces: HashMap<String, TraceCtx> = HashMap::new();
        let mut headers = |workload: &str, topic: &str| {
            let trace = traces.entry(workload.to_string()).or_insert_with(|| {
                let parent = parents
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(workload)
                    .cloned();
                TraceCtx::process(
                    &Parent::from_traceparent(parent.as_deref()),
                    &forecasts_topic,
                )
            });
            with_headers(OwnedHeaders::new(), &trace.send(topic))
        };
        // Table writes first: a crash after them leaves rows whose commands are re-sent (same
        // ids); a crash before them leaves at most orphan shadows, which the next pass releases.
        let mut writes = Vec::new();
        let mut commands = Vec::new();
        for a in &actions {
            match a {
                Action::Upsert(e) => {
                    let emit = table_out.record(
                        &WorkloadKey {
                            workload_id: e.workload_id.clone(),
                        },
                        e,
                    )?;
                    let h = headers(&e.workload_id, &emit.topic);
                    writes.push((emit, h));
                }
                Action::Delete(w) => {
                    let emit = table_out.tombstone(&WorkloadKey {
                        workload_id: w.clone(),
                    })?;
                    let h = headers(w, &emit.topic);
                    writes.push((emit, h));
                }
                Action::Command(c) => {
                    let emit = commands_out.record(
                        &HostKey {
                            host_id: c.host_id.clone(),
                        },
                        c,
                    )?;
                    let h = headers(&c.workload_id, &emit.topic);
                    commands.push((emit, h));
                }
            }
        }
        let (n_writes, n_commands) = (writes.len(), commands.len());
        for (batch, kind) in [(writes, "table_write"), (commands, "fleet_command")] {
            let sends = batch.into_iter().map(|(e, h)| {
                let producer = rt.producer.clone();
                async move { send(&producer, &e, h).await.map(|()| e.topic) }
            });
            let mut first_topic = None;
            let mut n = 0u64;
            for r in futures::future::join_all(sends).await {
                first_topic.get_or_insert(r?);
                n += 1;
            }
            actions_counter.with_label_values(&[kind]).inc_by(n);
            if let Some(t) = first_topic {
                rt.metrics.produced.with_label_values(&[&t]).inc_by(n);
            }
        }
        if on_marks {
            umbra_stream::progress::acted_on_mark(now);
        }
        umbra_stream::progress::end_pass(pass);
        rows_gauge.set(manager.table().len() as i64);
        let mut by_status: BTreeMap<String, i64> = [
            "requested",
            "healthy",
            "unhealthy",
            "failed",
            "claimed",
            "released",
        ]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
        for c in manager.table().values().flat_map(|e| e.candidates.iter()) {
            *by_status
                .entry(format!("{:?}", c.status).to_lowercase())
                .or_default() += 1;
        }
        for (status, n) in by_status {
            shadows_gauge.with_label_values(&[&status]).set(n);
        }
        tracing::debug!(writes = n_writes, commands = n_commands, "reconciled");
    }
    Ok(())
}
