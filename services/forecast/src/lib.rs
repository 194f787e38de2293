//! Forecast: demand forecasts per workload from usage series and external events.
//!
//! State: the per-workload history is rebuilt from Kafka at every start, by reading
//! `umbra.usage.series` and `umbra.events.external` from the beginning up to the end offsets
//! captured at start-up (then following them live). The usage series topic is itself the
//! changelog of that state, so a second store would only duplicate it; the price is a restore
//! that reads the retained history (28 days × 288 points per workload), which is seconds for
//! thousands of workloads. The service is ready once both topics are restored.
//!
//! Refits run on a cadence (`refit_interval_ms`) for workloads with new data, and at once for
//! workloads an arriving event concerns. Forecasts go to the compacted `umbra.forecasts`
//! topic keyed by workload. Nothing else needs to run: forecast-only operation is this.
//!
//! The scale-up stage ([`scaleup`]) also reads `umbra.workload.scale` (replicas running) and
//! `umbra.workload.requests` (the label stream) and publishes, at every step, P(N ≥ k) per
//! workload and the slots per size-class pool to the compacted `umbra.scaleup.forecasts`.

pub mod scaleup;
mod state;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use umbra_forecasting::{Forecaster, ForecasterConfig, Model};
use umbra_schemas::{
    DemandForecast, EventKey, ExternalEvent, ScaleUpForecast, UsagePoint, WorkloadKey,
    WorkloadRequest, WorkloadScale,
};
use umbra_stream::config::ServiceConfig;
use umbra_stream::processor::{send, Output};
use umbra_stream::service::Runtime;
use umbra_stream::telemetry::{with_headers, Parent, TraceCtx};
use umbra_stream::StreamError;

pub use state::{forecast_workload, History, State};

/// Service name: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "forecast";

/// Settings of the forecast service (`[service]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How often workloads with new data are refitted, in milliseconds of the service's clock
    /// (trace time in a replay).
    pub refit_interval_ms: u64,
    /// History kept per workload, in days.
    pub history_days: u32,
    /// Models to choose from per series, by name: `seasonal-naive`, `seasonal-naive-weekly`,
    /// `mstl-autoets`, `prophet`, `ensemble`.
    pub models: Vec<String>,
    /// Backtest origins per model choice (more: better-calibrated intervals, slower).
    pub backtest_origins: usize,
    /// The scale-up stage.
    pub scale_up: scaleup::ScaleUpSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            refit_interval_ms: 60_000,
            history_days: 28,
            models: Model::all().iter().map(|m| m.name().to_string()).collect(),
            backtest_origins: 5,
            scale_up: scaleup::ScaleUpSettings::default(),
        }
    }
}

/// Full configuration of the service.
pub type Config = ServiceConfig<Settings>;

fn models(names: &[String]) -> Result<Vec<Model>, StreamError> {
    names
        .iter()
        .map(|n| {
            Model::all().into_iter().find(|m| m.name() == n).ok_or_else(|| {
                StreamError::Config(format!("service.models: unknown model '{n}' (known: seasonal-naive, seasonal-naive-weekly, mstl-autoets, prophet, ensemble)"))
            })
        })
        .collect()
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    let models = models(&config.service.models)?;
    config
        .service
        .scale_up
        .validate()
        .map_err(StreamError::Config)?;
    let rt = Runtime::start(NAME, config, shutdown.clone()).await?;
    // Its inputs take effect in passes (scoring, refits): a driver of the clock waits for one.
    umbra_stream::progress::act_in_passes();
    let settings = rt.config.service.clone();
    let forecaster = Arc::new(Forecaster::new(ForecasterConfig {
        candidates: models,
        backtest_origins: settings.backtest_origins,
        max_history_s: i64::from(settings.history_days) * 86_400,
        ..ForecasterConfig::default()
    }));
    let out: Output<WorkloadKey, DemandForecast> =
        Output::new(rt.registry.clone(), rt.config.topic("umbra.forecasts")).await?;
    let state = Arc::new(Mutex::new(State::new(settings.history_days)));
    let s1 = state.clone();
    // The scale-up stage's inputs wait here until the main loop takes them: a fit holds the
    // stage for seconds, and readers must not wait on it.
    let inbox: Arc<Mutex<Vec<Input>>> = Arc::default();
    let i1 = inbox.clone();
    let scale_up = settings.scale_up.enabled;
    // The latest input's trace context per workload: its next forecast continues that trace.
    let parents: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let p1 = parents.clone();
    let usage_topic = rt
        .follow_traced::<WorkloadKey, UsagePoint>("umbra.usage.series", move |p, tp| {
            if let Some(tp) = tp {
                p1.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p.workload_id.clone(), tp);
            }
            if scale_up {
                i1.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Input::Point(p.clone()));
            }
            s1.lock().unwrap_or_else(|e| e.into_inner()).add_point(&p)
        })
        .await?;
    let scale_out: Option<Output<WorkloadKey, ScaleUpForecast>> = if scale_up {
        let i2 = inbox.clone();
        rt.follow::<WorkloadKey, WorkloadScale>("umbra.workload.scale", move |s| {
            i2.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Input::Scale(s))
        })
        .await?;
        let i3 = inbox.clone();
        rt.follow::<WorkloadKey, WorkloadRequest>("umbra.workload.requests", move |q| {
            i3.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Input::Request(q))
        })
        .await?;
        Some(
            Output::new(
                rt.registry.clone(),
                rt.config.topic("umbra.scaleup.forecasts"),
            )
            .await?,
        )
    } else {
        None
    };
    let mut stage = Some(scaleup::Stage::new(settings.scale_up.clone()));
    let s2 = state.clone();
    rt.follow::<EventKey, ExternalEvent>("umbra.events.external", move |e| {
        s2.lock().unwrap_or_else(|p| p.into_inner()).add_event(e)
    })
    .await?;

    // The cadence runs on the service's clock: a replay refits every so much trace time,
    // whatever the machine's speed.
    let mut last_refit: Option<i64> = None;
    let mut clock_moved = umbra_stream::progress::clock_watch();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // The scale-up stage scores each step as soon as its inputs are in.
            _ = tokio::time::sleep(Duration::from_millis(if scale_up { 50 } else { 200 })) => {}
            _ = clock_moved.changed() => {}
            _ = umbra_stream::progress::wait_unsettled() => {}
        }
        if !rt.readiness.is_ready() {
            continue;
        }
        let pass = umbra_stream::progress::begin_pass();
        if let Some(out) = &scale_out {
            step_scale_up(&rt, &inbox, &mut stage, out).await?;
        }
        // Event arrivals refit at once; new data waits for the cadence.
        let clock_now = rt.config.clock.now_ms();
        let due = last_refit.is_none_or(|t| clock_now - t >= settings.refit_interval_ms as i64);
        let work: Vec<(String, History, Vec<umbra_forecasting::Event>)> = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.take_dirty(due, clock_now)
        };
        if due {
            last_refit = Some(clock_now);
        }
        if work.is_empty() {
            umbra_stream::progress::end_pass(pass);
            continue;
        }
        let f = forecaster.clone();
        let now = rt.config.clock.now_ms();
        let forecasts = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(id, h, ev)| forecast_workload(&f, &id, &h, &ev, now))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| StreamError::Internal(e.to_string()))?;
        let mut published = HashSet::new();
        for fc in forecasts {
            let parent = parents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&fc.workload_id)
                .cloned();
            let trace =
                TraceCtx::process(&Parent::from_traceparent(parent.as_deref()), &usage_topic);
            let emit = out.record(
                &WorkloadKey {
                    workload_id: fc.workload_id.clone(),
                },
                &fc,
            )?;
            send(
                &rt.producer,
                &emit,
                with_headers(OwnedHeaders::new(), &trace.send(&emit.topic)),
            )
            .await?;
            rt.metrics.produced.with_label_values(&[out.topic()]).inc();
            published.insert(fc.workload_id);
        }
        umbra_stream::progress::end_pass(pass);
        tracing::info!(workloads = published.len(), "forecasts published");
    }
    Ok(())
}

/// An input of the scale-up stage.
enum Input {
    Point(UsagePoint),
    Scale(WorkloadScale),
    Request(WorkloadRequest),
}

/// Feeds the stage what arrived, begins it once, scores the steps that are due and publishes
/// their forecasts (workloads and pools of a step together, acknowledged before the next).
async fn step_scale_up(
    rt: &Runtime<Settings>,
    inbox: &Arc<Mutex<Vec<Input>>>,
    stage: &mut Option<scaleup::Stage>,
    out: &Output<WorkloadKey, ScaleUpForecast>,
) -> Result<(), StreamError> {
    let inputs = std::mem::take(&mut *inbox.lock().unwrap_or_else(|e| e.into_inner()));
    let Some(mut st) = stage.take() else {
        return Ok(());
    };
    let now = rt.config.clock.now_ms();
    let begin = !st.begun();
    let (st, published) = tokio::task::spawn_blocking(move || {
        for i in inputs {
            match i {
                Input::Point(p) => st.add_point(&p),
                Input::Scale(s) => st.add_scale(&s),
                Input::Request(q) => st.add_request(&q),
            }
        }
        let r = (|| {
            if begin {
                st.begin(now)?;
            }
            st.poll(now)
        })();
        (st, r)
    })
    .await
    .map_err(|e| StreamError::Internal(e.to_string()))?;
    let fits = st.fits();
    *stage = Some(st);
    let steps = match published {
        Ok(s) => s,
        // The model could not be fitted: say so and keep forecasting demand.
        Err(e) => {
            tracing::warn!(error = %e, "scale-up stage failed; its forecasts stop until restart");
            *stage = None;
            return Ok(());
        }
    };
    if begin {
        tracing::info!(fits, "scale-up stage began");
    }
    for step in steps {
        let emits = step
            .forecasts
            .iter()
            .map(|f| {
                out.record(
                    &WorkloadKey {
                        workload_id: f.subject.clone(),
                    },
                    f,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        futures::future::try_join_all(
            emits
                .iter()
                .map(|e| send(&rt.producer, e, OwnedHeaders::new())),
        )
        .await?;
        rt.metrics
            .produced
            .with_label_values(&[out.topic()])
            .inc_by(emits.len() as u64);
    }
    Ok(())
}
