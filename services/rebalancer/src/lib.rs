//! Rebalancer: moves shadows off overloaded hosts.
//!
//! It watches host state, the shadow table and forecasts (tables) and the fleet (fleet events
//! folded into a ledger, to know which workloads run where). A host is overloaded when its
//! utilization, measured now or predicted over the next window from the forecasts of the
//! workloads on it, stays above a threshold for a dwell time; it is clear again only once it
//! stays below the threshold minus a hysteresis for the same time. Every interval it plans
//! moves of shadows (never running workloads) off overloaded hosts with [`core::Planner`], within
//! a move budget, and emits re-shadow requests that the shadow manager carries out. Its state is
//! soft (dwell timers, recent moves): a restart only delays the next move by one dwell time.

pub mod core;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use tokio_util::sync::CancellationToken;
use umbra_ledger::Ledger;
use umbra_schemas::{
    DemandForecast, FleetEvent, HostKey, HostState, ReshadowRequest, ShadowEntry, WorkloadKey,
};
use umbra_stream::config::ServiceConfig;
use umbra_stream::processor::{send, Output};
use umbra_stream::service::Runtime;
use umbra_stream::telemetry::{with_headers, TraceCtx};
use umbra_stream::StreamError;

pub use crate::core::{Planner, Settings};

/// Service name: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "rebalancer";

/// Full configuration of the service.
pub type Config = ServiceConfig<Settings>;

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    config.service.validate().map_err(StreamError::Config)?;
    let rt = Runtime::start(NAME, config, shutdown.clone()).await?;
    // Its inputs take effect in passes: a driver of the clock waits for one.
    umbra_stream::progress::act_in_passes();
    // On a driven clock it plans once per step, at the driver's mark that the pipeline has
    // settled: any earlier look races the other services' reactions to the clock's move, and
    // two replays of one trace then move different shadows (docs/replay.md).
    let on_marks = rt.config.clock.driven;
    if on_marks {
        umbra_stream::progress::act_on_marks();
    }
    let s = rt.config.service.clone();
    let shadow_table = rt
        .table::<WorkloadKey, ShadowEntry>("umbra.shadow.table")
        .await?;
    let host_state = rt.table::<HostKey, HostState>("umbra.host.state").await?;
    let forecasts = rt
        .table::<WorkloadKey, DemandForecast>("umbra.forecasts")
        .await?;
    let out: Output<WorkloadKey, ReshadowRequest> = Output::new(
        rt.registry.clone(),
        rt.config.topic("umbra.reshadow.requests"),
    )
    .await?;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let sink = ledger.clone();
    rt.follow::<HostKey, FleetEvent>("umbra.fleet.events", move |e| {
        sink.lock().unwrap_or_else(|p| p.into_inner()).apply(&e)
    })
    .await?;
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = rt.readiness.ready() => {}
    }
    tracing::info!("inputs restored; watching hosts");
    let overloaded_gauge = rt.metrics.gauge(
        "rebalancer_overloaded_hosts",
        "Hosts counted as overloaded.",
        &[],
    );
    let moves_counter =
        rt.metrics
            .counter("rebalancer_moves_total", "Re-shadow requests emitted.", &[]);
    let mut planner = Planner::default();
    let observe_every = Duration::from_millis(s.interval_ms.min(1_000));
    let mut last_plan = 0i64;
    // Only one pass at a clock time observes and plans (on a driven clock, the one at the
    // driver's mark): a later pass at the same time sees some of the step's inputs, as many
    // as the machine's speed let in.
    let mut last_pass_at: Option<i64> = None;
    let mut clock_moved = umbra_stream::progress::clock_watch();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(observe_every) => {}
            _ = clock_moved.changed() => {}
            // Inputs no pass has seen yet: one now, so that what they cause follows at once.
            _ = umbra_stream::progress::wait_unsettled() => {}
        }
        let pass = umbra_stream::progress::begin_pass();
        let now = rt.config.clock.now_ms();
        let marked = !on_marks || umbra_stream::progress::settled_mark() == Some(now);
        if !marked || last_pass_at == Some(now) {
            umbra_stream::progress::end_pass(pass);
            continue;
        }
        last_pass_at = Some(now);
        let moves = {
            let hosts = host_state.read();
            let fc = forecasts.read();
            let table = shadow_table.read();
            let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
            let views = core::host_views(hosts.rows(), &ledger, fc.rows(), now, &s);
            planner.observe(&views, now, &s);
            if now - last_plan >= s.interval_ms as i64 {
                last_plan = now;
                planner.plan(&views, table.rows(), now, &s)
            } else {
                Vec::new()
            }
        };
        overloaded_gauge
            .with_label_values::<&str>(&[])
            .set(planner.overloaded().len() as i64);
        if moves.is_empty() {
            if on_marks {
                umbra_stream::progress::acted_on_mark(now);
            }
            umbra_stream::progress::end_pass(pass);
            continue;
        }
        let trace = TraceCtx::root("rebalance");
        for m in &moves {
            let req = core::request_of(m, now);
            tracing::info!(workload = %m.workload_id, shadow = %m.shadow_id, from = %m.from, to = %m.to, reason = %m.reason, "re-shadow requested");
            let emit = out.record(
                &WorkloadKey {
                    workload_id: m.workload_id.clone(),
                },
                &req,
            )?;
            send(
                &rt.producer,
                &emit,
                with_headers(OwnedHeaders::new(), &trace.send(&emit.topic)),
            )
            .await?;
            moves_counter.with_label_values::<&str>(&[]).inc();
            rt.metrics.produced.with_label_values(&[out.topic()]).inc();
        }
        if on_marks {
            umbra_stream::progress::acted_on_mark(now);
        }
        umbra_stream::progress::end_pass(pass);
    }
    Ok(())
}
