//! `umbra replay` (and `make demo`): the evaluation of docs/demo.md through the real pipeline.
//!
//! 1. Plan, without Kafka: a seeded choice of VMs from a Bitbrains-format folder, two weeks of
//!    history and a live week on 5-minute steps, a replica size per VM from its history, the
//!    requests and releases the live week makes ([`umbra_replay::scale_events`]), and a fleet
//!    sized for the busiest hour.
//! 2. History: ingest and forecast run with the trace's clock standing at the live week's
//!    start; the history's raw samples go in as fast as the broker takes them, until every VM
//!    has usage series up to the live week.
//! 3. Live week: the five services and the fleet simulator run on a trace clock that covers
//!    the week in `--live-minutes`; the existing replicas are placed first; then, step by step
//!    on that clock, the week's raw samples go to ingest and its requests to the interceptor,
//!    releases to the fleet. The driver watches the fleet events, decisions and forecasts and
//!    measures as it goes.
//! 4. Report: umbra's row from what the pipeline did; the baselines on the same requests
//!    without Kafka; `summary.json`, `report.html`, the plots, `decisions.jsonl` (each
//!    request's first decision, in trace order) and `conformance.jsonl` (the pipeline against
//!    the offline core, step by step) in `--out`.
//!
//! The plan, the requests and the baselines are deterministic for a seed; so is umbra's row in
//! lockstep, the default (docs/replay.md, *The same twice*). Under `--realtime` it comes from
//! real processes racing a compressed clock and varies with the machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::OwnedHeaders;
use tokio_util::sync::CancellationToken;
use umbra_ledger::Ledger;
use umbra_replay::pipeline::{umbra_row, Decided, PipelineRun, RequestFate};
use umbra_replay::report::{
    write_report, ForecastPlot, ForecastScore, PolicyRow, ReportData, Summary,
};
use umbra_replay::{
    scale_events, standard_placement_overload, used_core_hours, workload_from_rows, Change,
    FleetShape, ForecastLog, Placeholder, PolicyResult, ReplicaModel, ScaleEvent, Workload,
};
use umbra_schemas::*;
use umbra_stream::config::{ClockSettings, KafkaSettings};
use umbra_stream::metrics::Metrics;
use umbra_stream::processor::{send, Emit, Input, Output};
use umbra_stream::reader::{RawRecord, RestoringReader};
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};

const STEP_S: i64 = 300;
/// The longest a lockstep barrier may take (the scale-up stage's first fit is the slowest).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Steps between trims of the replay's own broker (three hours of trace): a trim deletes
/// what every reader had passed at the trim before.
const TRIM_EVERY_STEPS: usize = 36;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Arguments of `umbra replay`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// A folder in the Bitbrains format (`vm-*.csv[.gz]`).
    #[arg(long, default_value = "../shared/data/bitbrains-rnd")]
    pub data: PathBuf,
    /// How many VMs (each a workload).
    #[arg(long, default_value_t = 50)]
    pub vms: usize,
    /// Chooses the VMs (0: the first by name) and seeds the fleet simulator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Folder for summary.json, report.html and the plots.
    #[arg(long, default_value = "replay-report")]
    pub out: PathBuf,
    /// Days from the start of the traces to skip.
    #[arg(long, default_value_t = 0.0)]
    pub from_day: f64,
    /// Days of history before the live part.
    #[arg(long, default_value_t = 14.0)]
    pub history_days: f64,
    /// Days replayed live.
    #[arg(long, default_value_t = 7.0)]
    pub live_days: f64,
    /// Wall-clock minutes the live days take, with `--realtime`.
    #[arg(long, default_value_t = 4.0)]
    pub live_minutes: f64,
    /// Replay in compressed real time instead of lockstep: the trace clock runs the live days
    /// in `--live-minutes` of wall time and decisions fall behind as far as the machine makes
    /// them (reported in trace minutes).
    #[arg(long)]
    pub realtime: bool,
    /// Replay in lockstep (the default): each step's inputs go out only once the pipeline has
    /// settled on the step before, so the result does not depend on the machine
    /// (docs/replay.md). Accepted for scripts written before it was the default.
    #[arg(long, conflicts_with = "realtime")]
    pub lockstep: bool,
    /// The services' `fetch.wait.max.ms`: how long a fetch waits at the broker for new records
    /// (default 10). Shorter answers sooner and costs the broker more polls (docs/replay.md,
    /// *What it costs*).
    #[arg(long)]
    pub fetch_wait_ms: Option<u64>,
    /// Storage of the replay's own broker: `memory` (default; the run's topics are gone with
    /// it anyway) or `sqlite` (a file in the state folder, kept with `--keep-stack`).
    #[arg(long, value_enum, default_value_t = crate::dev::BrokerStorage::Memory)]
    pub broker_storage: crate::dev::BrokerStorage,
    /// In lockstep, print every barrier slower than this many milliseconds with what it
    /// last waited for (where a replay spends its time).
    #[arg(long)]
    pub trace_barriers_ms: Option<u64>,
    /// Hosts in the simulated fleet (0: enough for the busiest hour at 60%).
    #[arg(long, default_value_t = 0)]
    pub hosts: usize,
    /// CPU per host, cores.
    #[arg(long, default_value_t = 16.0)]
    pub host_cores: f64,
    /// Memory per host, GiB.
    #[arg(long, default_value_t = 64.0)]
    pub host_memory_gib: f64,
    /// Start-up delay of a replica placed by standard allocation, seconds of trace.
    #[arg(long, default_value_t = 30.0)]
    pub startup_s: f64,
    /// Candidate hosts per prediction (K).
    #[arg(long, default_value_t = 3)]
    pub candidates: usize,
    /// Also stage per-workload rows from the demand forecasts, beside the pool rows (the
    /// services' default; the replay measures the pooled policy alone without it).
    #[arg(long)]
    pub workload_rows: bool,
    /// What a workload row's alternative hosts hold: `verify` (a minimal placeholder) or
    /// `reserve` (the full size); matters with `--workload-rows` (docs/shadows.md).
    #[arg(long, value_parser = ["verify", "reserve"], default_value = "verify")]
    pub alternates: String,
    /// Forecast models the forecast service chooses from (comma-separated).
    #[arg(
        long,
        default_value = "seasonal-naive,seasonal-naive-weekly",
        value_delimiter = ','
    )]
    pub models: Vec<String>,
    /// Forecast value that sizes shadows: `upper80`, `upper95` or `mean`.
    #[arg(long, default_value = "upper80")]
    pub quantile: String,
    /// Folder for the stack's and the services' state and logs (cleared at start).
    #[arg(long, default_value = ".state/replay")]
    pub state_dir: PathBuf,
    /// Port of the broker this command starts on 127.0.0.1.
    #[arg(long, default_value_t = 39092)]
    pub broker_port: u16,
    /// Port of the registry this command starts on 127.0.0.1.
    #[arg(long, default_value_t = 38081)]
    pub registry_port: u16,
    /// Use this Kafka instead of starting a broker.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: Option<String>,
    /// Use this registry instead of starting one.
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// Folder of the service binaries (default: this program's folder).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Only the offline sweep (no broker, no services): umbra's pooled scale-up rule at the
    /// budgets of `--budgets` and every baseline at the same reserves, the hit-rate-against-
    /// reserve curve in `--out` (docs/scale-up.md). Without it the pipeline's replay runs and
    /// the curve is added to its report.
    #[arg(long)]
    pub sweep: bool,
    /// umbra's reserve budget in the pipeline (a share of used CPU): the pooled rule's one
    /// setting, held by the forecast service's budget controller (docs/scale-up.md).
    #[arg(long, default_value_t = 0.2)]
    pub budget: f64,
    /// Reserve budgets of the sweep, as shares of used CPU.
    #[arg(long, value_delimiter = ',', default_values_t = umbra_replay::sweep::BUDGETS.to_vec())]
    pub budgets: Vec<f64>,
    /// Leave the broker and registry running afterwards, to inspect the topics (the services
    /// are stopped either way); `umbra dev down --state-dir <state-dir>` stops them.
    #[arg(long)]
    pub keep_stack: bool,
}

/// Everything decided before anything runs.
struct Plan {
    ids: Vec<String>,
    history: Vec<Workload>,
    live: Vec<Workload>,
    history_samples: Vec<UsageSample>,
    live_samples: Vec<UsageSample>,
    models: Vec<ReplicaModel>,
    events: Vec<ScaleEvent>,
    fleet: FleetShape,
    live_start_ms: i64,
    steps: usize,
    speed: f64,
    /// The history and the live part on the step grid, as the offline sweep reads them: the
    /// replica counts the replay publishes and the history's requests (the label stream).
    traces: (
        umbra_replay::steps::StepTrace,
        umbra_replay::steps::StepTrace,
    ),
    history_start_ms: i64,
}

impl Plan {
    /// How workload `id` is served.
    fn model_of(&self, id: &str) -> Option<&ReplicaModel> {
        self.ids
            .iter()
            .position(|x| x == id)
            .map(|k| &self.models[k])
    }
}

fn plan(a: &ReplayArgs) -> anyhow::Result<Plan> {
    if a.vms == 0 || a.history_days < 1.0 || a.live_days <= 0.0 || a.live_minutes <= 0.0 {
        bail!("--vms must be positive, --history-days at least 1, --live-days and --live-minutes positive");
    }
    // Every VM with a history in the window, as the offline sweep's plan takes them.
    let umbra_replay::ChosenVms {
        origin_s: t0,
        vms: rows,
    } = umbra_replay::choose_vms(&a.data, a.vms, a.seed, a.from_day, a.history_days)
        .with_context(|| format!("reading {}", a.data.display()))?;
    if rows.is_empty() {
        bail!(
            "no VM of {} has a sample in the history window",
            a.data.display()
        );
    }
    if rows.len() < a.vms {
        eprintln!(
            "note: only {} VMs of {} have a sample in the {} days of history; replaying those",
            rows.len(),
            a.data.display(),
            a.history_days
        );
    }
    let hist_steps = (a.history_days * 288.0).round() as usize;
    let steps = (a.live_days * 288.0).round() as usize;
    let live_start = t0 + hist_steps as i64 * STEP_S;
    let live_end = live_start + steps as i64 * STEP_S;
    let (mut history, mut live, mut hs, mut ls) = (vec![], vec![], vec![], vec![]);
    for (id, r) in &rows {
        history.push(workload_from_rows(id, r, t0, STEP_S, hist_steps));
        live.push(workload_from_rows(id, r, live_start, STEP_S, steps));
        for row in r {
            if row.time_s >= t0 && row.time_s < live_start {
                hs.push(crate::replay::sample_of(id, row));
            } else if row.time_s >= live_start && row.time_s < live_end {
                ls.push(crate::replay::sample_of(id, row));
            }
        }
    }
    let by_time = |x: &UsageSample, y: &UsageSample| {
        (x.sample_time, &x.workload_id).cmp(&(y.sample_time, &y.workload_id))
    };
    hs.sort_by(by_time);
    ls.sort_by(by_time);
    let models: Vec<ReplicaModel> = umbra_replay::replay_models(&history);
    let events = scale_events(&live, STEP_S, &models);
    let fleet = fleet_of(a, &live, &models);
    // The same step traces `TracePlan::step_traces` makes for the offline core, from the VMs
    // already read.
    let traces = (
        umbra_replay::steps::StepTrace::new(&history, &models, STEP_S, t0),
        umbra_replay::steps::StepTrace::from_events(&live, &models, &events, STEP_S, live_start),
    );
    Ok(Plan {
        traces,
        history_start_ms: t0 * 1000,
        ids: rows.into_iter().map(|(id, _)| id).collect(),
        history,
        live,
        history_samples: hs,
        live_samples: ls,
        models,
        events,
        fleet,
        live_start_ms: live_start * 1000,
        steps,
        // In lockstep the trace waits for the pipeline: no compression to speak of.
        speed: if a.realtime {
            a.live_days * 86_400.0 / (a.live_minutes * 60.0)
        } else {
            1.0
        },
    })
}

/// What the driver sees of the pipeline, updated by its readers.
#[derive(Default)]
struct Observed {
    ledger: Ledger,
    decisions: HashMap<String, Vec<AllocationDecision>>,
    forecasts: ForecastLog,
    forecasted: HashSet<String>,
    /// Newest usage-series bucket per workload, ms.
    series_until: HashMap<String, i64>,
    reshadows: usize,
    /// Slots the scale-up stage held per step and pool: (step start ms, pool index) → slots
    /// (the last forecast for the step counts).
    pool_slots: BTreeMap<(i64, usize), i32>,
    /// Shadows the fleet refused or failed: (trace ms, kind, reason). Where the pipeline held
    /// fewer slots than its forecasts asked, these say why.
    shadows_refused_or_failed: Vec<(i64, FleetEventKind, String)>,
}

type Shared = Arc<Mutex<Observed>>;

fn lock(o: &Shared) -> std::sync::MutexGuard<'_, Observed> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// Follows `topic` from the beginning, handing each decoded value to `apply`.
async fn follow<K: umbra_schemas::Record, V: umbra_schemas::Record>(
    kafka: &KafkaSettings,
    registry: Arc<dyn SchemaRegistry>,
    topic: String,
    shutdown: CancellationToken,
    apply: impl Fn(V) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let input: Arc<Input<K, V>> = Arc::new(Input::new(registry, topic.clone()).await?);
    let reader = RestoringReader::open(kafka, &topic).await?;
    let apply = Arc::new(apply);
    tokio::spawn(reader.run(
        umbra_stream::http::Gate::default(),
        shutdown,
        Metrics::new("umbra-replay"),
        move |r: RawRecord| {
            let (input, apply) = (input.clone(), apply.clone());
            async move {
                if let Some(v) = r.value.as_deref() {
                    if let Ok(v) = input.decode_value(v).await {
                        apply(v);
                    }
                }
            }
        },
    ));
    Ok(())
}

/// One service process of the replay.
struct Proc {
    name: String,
    child: Child,
    http: String,
    log: PathBuf,
}

/// The last `n` lines of a service's log.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The replay's processes; stopped in reverse order, also when dropped.
struct Procs {
    dir: PathBuf,
    procs: Vec<Proc>,
}

impl Procs {
    fn spawn(&mut self, bin_dir: &Path, name: &str, config: &str) -> anyhow::Result<()> {
        let bin = bin_dir.join(format!("umbra-{name}"));
        if !bin.is_file() {
            bail!(
                "{} is missing: build the services first (`cargo build --release --workspace --bins`)",
                bin.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        )?;
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .env("UMBRA_CONFIG", &cfg)
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            // Its own process group: ^C reaches the driver, which stops the services in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        std::fs::write(self.dir.join(format!("{name}.pid")), child.id().to_string())?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        });
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for p in &mut self.procs {
            loop {
                if let Some(status) = p.child.try_wait()? {
                    bail!(
                        "{} exited ({status}) during start-up; last lines of {}:\n{}",
                        p.name,
                        p.log.display(),
                        log_tail(&p.log, 8)
                    );
                }
                if let Ok(r) = reqwest::get(format!("{}/readyz", p.http)).await {
                    if r.status().is_success() {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} not ready after {:?}; see {}",
                        p.name,
                        timeout,
                        p.log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to each, newest first, waiting for it to drain and exit (SIGKILL after 15 s).
    fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            let _ = Command::new("kill").arg(p.child.id().to_string()).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if matches!(p.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            let _ = std::fs::remove_file(self.dir.join(format!("{}.pid", p.name)));
        }
    }

    /// Services that exited on their own, with the end of their logs.
    fn exited(&mut self) -> Option<String> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                // The log goes with the state folder, which a test's temporary folder takes
                // with it: its last lines are the only account CI keeps.
                return Some(format!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    log_tail(&p.log, 12)
                ));
            }
        }
        None
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// On the replay's own broker (Nisshi 0.8.1) its producers are not idempotent: that broker
/// has refused idempotent batches as out of sequence (9701 while it expected 9700, on day 2.8
/// of a week's replay; earlier 1624 for 1622), which librdkafka takes as fatal, and one
/// request in flight alone did not prevent it (docs/architecture.md). Without idempotence
/// there is no sequence to refuse; one request in flight keeps the order on a retry, and a
/// retried duplicate is what the services already take at least once. An external broker
/// keeps the services' defaults.
fn producer_properties(a: &ReplayArgs) -> BTreeMap<String, String> {
    if a.bootstrap_servers.is_some() {
        return BTreeMap::new();
    }
    [
        ("enable.idempotence", "false"),
        ("max.in.flight.requests.per.connection", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn fetch_wait_ms(a: &ReplayArgs) -> u64 {
    a.fetch_wait_ms.unwrap_or(10)
}

/// The configuration file of one service (everything but `[http]`).
fn service_config(
    name: &str,
    a: &ReplayArgs,
    p: &Plan,
    bootstrap: &str,
    registry: &str,
    prefix: &str,
    clock: &ClockSettings,
) -> String {
    // Durations in trace time: in real time, a few wall seconds at the replay's speed; in
    // lockstep the clock stands while the pipeline works, so only trace time matters.
    let lockstep = clock.driven;
    let trace_ms = |wall_ms: f64, lockstep_ms: i64| {
        if lockstep {
            lockstep_ms
        } else {
            (wall_ms * p.speed).round() as i64
        }
    };
    let producer: String = producer_properties(a)
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    let common = format!(
        "topic_prefix = \"{prefix}\"\nshutdown_grace_ms = 10000\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[kafka.properties]\n\"fetch.wait.max.ms\" = \"{}\"\n[kafka.producer_properties]\n{producer}[registry]\nurl = \"{registry}\"\n[clock]\nspeed = {}\norigin_wall_ms = {}\norigin_trace_ms = {}\ndriven = {}\n",
        fetch_wait_ms(a), clock.speed, clock.origin_wall_ms, clock.origin_trace_ms, clock.driven
    );
    let ready_ms = (a.startup_s * 1000.0) as i64;
    // Durations a service compares with record times are trace time; timers are wall time.
    let service = match name {
        "fleet-sim" => format!(
            "[service]\nhosts = {}\nworkload_start_delay_ms = {}\nshadow_ready_delay_ms = {}\nmetrics_interval_ms = {}\n[service.host_capacity]\ncpu_millicores = {}\nmemory_bytes = {}\ndisk_io_bytes_per_s = {}\n[service.faults]\nseed = {}\n",
            p.fleet.hosts,
            (a.startup_s * 1000.0) as i64,
            trace_ms(200.0, ready_ms).min(60_000),
            // Host metrics once a step (lockstep: the clock's step; real time: wall seconds).
            if lockstep { STEP_S * 1000 } else { 2_000 },
            p.fleet.cpu_millicores as i64,
            p.fleet.memory_bytes as i64,
            1_000_000_000_000i64,
            a.seed
        ),
        // A bucket closes as soon as the next one begins: the scale-up model scores a step
        // from the point of the step before.
        "ingest" => "[service]\nmax_future_ms = 86400000\nallowed_lateness_ms = 0\n".to_string(),
        // Refits every six hours of trace (the service's clock): a forecast is about 50 KB
        // (three horizons), and
        // hourly refits of every workload would have the broker (and each reader of the topic:
        // shadow manager, interceptor, rebalancer, this driver) spend most of its time on them.
        "forecast" => format!(
            "[service]\nrefit_interval_ms = {}\nbacktest_origins = 3\nmodels = [{}]\n[service.scale_up]\nready_delay_s = {}\nmax_wait_ms = {}\n[service.scale_up.trade_off]\nbudget = {}\n",
            6 * 3_600_000,
            a.models
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", "),
            a.startup_s,
            // Lockstep: a step missing some workload's point is scored a millisecond after it
            // begins, once the barrier at its start has brought in every point there is.
            if lockstep { 1 } else { STEP_S * 1000 },
            a.budget
        ),
        // The pooled policy: pool rows from the scale-up forecasts (and, with
        // --workload-rows, the per-workload rows from demand forecasts beside them).
        "shadow-manager" => format!(
            "[service]\nworkload_rows = {}\nalternates = \"{}\"\npool_forecast_max_age_steps = 288\ncandidates = {}\nquantile = \"{}\"\nlead_time_ms = 1800000\nrelease_grace_ms = 600000\ncommand_timeout_ms = {}\nreconcile_interval_ms = 100\n",
            a.workload_rows,
            a.alternates,
            a.candidates,
            match a.quantile.as_str() {
                "upper95" => "upper95",
                "mean" => "mean",
                _ => "upper80",
            },
            trace_ms(2_000.0, 2 * STEP_S * 1000).max(10_000),
        ),
        "interceptor" => format!(
            "[service]\nplacement_timeout_ms = {}\nmax_request_age_ms = {}\nwindow_tolerance_ms = 7200000\n",
            trace_ms(2_000.0, 2 * STEP_S * 1000).max(5_000),
            trace_ms(60_000.0, 86_400_000).max(86_400_000)
        ),
        // Moves are costly at this compression (a moved shadow is not ready for minutes of
        // trace): only for hosts over for half an hour, a few at a time, not back soon.
        "rebalancer" => "[service]\ninterval_ms = 300000\ndwell_ms = 1800000\nmax_moves_per_interval = 2\ncooldown_ms = 21600000\n".to_string(),
        _ => String::new(),
    };
    format!("{common}{service}")
}

/// Replica counts of `trace`'s steps `range` where they change (every workload at its first
/// step), as the autoscaler would report them: the scale-up model reads what the running
/// replicas serve from them.
fn scale_emits(
    p: &Plan,
    trace: &umbra_replay::steps::StepTrace,
    start_ms: i64,
    range: std::ops::Range<usize>,
    last: &mut HashMap<usize, u32>,
    out: &Output<WorkloadKey, WorkloadScale>,
) -> anyhow::Result<Vec<Emit>> {
    let mut emits = Vec::new();
    for (w, id) in trace.ids.iter().enumerate() {
        let Some(m) = p.model_of(id) else {
            continue;
        };
        for i in range.clone() {
            let n = trace.running[w][i];
            if last.get(&w) == Some(&n) {
                continue;
            }
            last.insert(w, n);
            emits.push(out.record(
                &WorkloadKey {
                    workload_id: id.clone(),
                },
                &WorkloadScale {
                    workload_id: id.clone(),
                    observed_at: start_ms + i as i64 * STEP_S * 1000,
                    replicas: n as i32,
                    replica: replica_resources(m),
                    labels: HashMap::new(),
                },
            )?);
        }
    }
    Ok(emits)
}

/// Commits `group`'s offsets on `topic` at its end: what is already on the topic (the
/// history's requests) was answered before umbra ran, so the interceptor starts after it.
async fn start_group_at_end(kafka: &KafkaSettings, group: &str, topic: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create()?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for t in md.topics() {
            for part in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, part.id(), Duration::from_secs(10))?;
                tpl.add_partition_offset(&topic, part.id(), rdkafka::Offset::Offset(high))?;
            }
        }
        consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
        Ok(())
    })
    .await??;
    Ok(())
}

/// Sends every emit, a bounded number in flight.
async fn send_all(
    producer: &rdkafka::producer::FutureProducer,
    emits: Vec<Emit>,
) -> anyhow::Result<()> {
    let mut acks = FuturesUnordered::new();
    for e in emits {
        let producer = producer.clone();
        acks.push(async move { send(&producer, &e, OwnedHeaders::new()).await });
        while acks.len() >= 1_000 {
            if let Some(r) = acks.next().await {
                r?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(())
}

/// Cores real replicas hold in the fleet after a step against what the trace runs then
/// (replicas × replica size), with the workloads furthest apart.
#[derive(Debug, Clone, serde::Serialize)]
struct RealCores {
    fleet: f64,
    trace: f64,
    /// Up to three (workload, fleet cores, trace cores), the furthest apart first.
    apart: Vec<(String, f64, f64)>,
}

/// What the live part measured, step by step.
#[derive(Default)]
struct Measured {
    /// (seconds since the live start, cores, GiB) reserved by live shadows.
    reserved: Vec<(f64, f64, f64)>,
    /// (seconds since the live start, hit rate so far).
    hit_rate: Vec<(f64, f64)>,
    /// Per host, CPU used / capacity per step.
    utilization: BTreeMap<String, Vec<f64>>,
    /// Per step, cores the fleet's real replicas left free: in all, and on the roomiest host
    /// (shadows aside: standard allocation may preempt them). A rejection is shown with them.
    room: Vec<(f64, f64)>,
    /// Per step, cores real replicas hold in the fleet against what the trace runs.
    real_cores: Vec<RealCores>,
    overload_steps: usize,
    overcommitted: HashSet<String>,
    requests: Vec<(String, ScaleEvent)>,
    /// Per request: CPU its workload held just before (millicores) and the 80% upper bound of
    /// the forecast then in force for that step, if any.
    request_context: HashMap<String, (f64, Option<f64>)>,
}

/// Runs the replay; prints the summary table and where the report is.
pub async fn run(mut a: ReplayArgs) -> anyhow::Result<()> {
    a.lockstep = !a.realtime;
    let shutdown = umbra_stream::shutdown::install();
    let begun = Instant::now();
    if a.sweep {
        return run_sweep(&a, begun);
    }
    eprintln!("planning: {} VMs of {}", a.vms, a.data.display());
    let p = plan(&a)?;
    let ups = p.events.iter().filter(|e| e.change == Change::Up).count();
    eprintln!(
        "plan: {} VMs, {} history samples, {} live samples, {} requests and {} releases in the live {} days, {} hosts of {} cores / {} GiB, live speed {:.0}x",
        p.ids.len(),
        p.history_samples.len(),
        p.live_samples.len(),
        ups,
        p.events.len() - ups,
        a.live_days,
        p.fleet.hosts,
        p.fleet.cpu_millicores / 1000.0,
        p.fleet.memory_bytes / GIB,
        p.speed
    );
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    // Leftovers of an interrupted run: stop them and start clean.
    crate::dev::stop_stack(&a.state_dir);
    let _ = std::fs::remove_dir_all(&a.state_dir);
    std::fs::create_dir_all(&a.state_dir)
        .with_context(|| format!("creating {}", a.state_dir.display()))?;
    // Unique per run, not per second: two replays on one broker started in the same second
    // (the tests run them side by side) once wrote into each other's topics.
    let prefix = format!(
        "replay-{}-{}-{}.",
        a.seed,
        umbra_stream::now_millis() / 1000,
        std::process::id()
    );
    let own_stack = a.bootstrap_servers.is_none();
    let (bootstrap, registry_url) = crate::dev::start_stack(
        &a.state_dir,
        a.bootstrap_servers.clone(),
        a.registry_url.clone(),
        a.broker_port,
        a.registry_port,
        &prefix,
        a.broker_storage,
    )
    .await?;
    let result = tokio::select! {
        r = evaluate(&a, &p, &bin_dir, &bootstrap, &registry_url, &prefix, shutdown.clone()) => r,
        _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    if own_stack && !(a.keep_stack && result.is_ok()) {
        crate::dev::stop_stack(&a.state_dir);
    } else if own_stack {
        eprintln!(
            "the stack stays up (topic prefix {prefix}): KAFKA_BOOTSTRAP_SERVERS={bootstrap} SCHEMA_REGISTRY_URL={registry_url} UMBRA_TOPIC_PREFIX={prefix} umbra table; stop it with `umbra dev down --state-dir {}`",
            a.state_dir.display()
        );
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) if shutdown.is_cancelled() => {
            eprintln!(
                "\ninterrupted: services and the stack are stopped; nothing was written ({e})"
            );
            std::process::exit(130);
        }
        Err(e) => return Err(e),
    };
    print_summary(&summary);
    println!(
        "report: {}  (summary.json beside it; {:.1} min in all)",
        a.out.join("report.html").display(),
        begun.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// The replay's plan as the offline core reads it (the same VMs, days and replica sizes).
/// The simulated fleet: `--hosts` of the given size, or enough that the workloads' busiest
/// step commits 60% of it.
fn fleet_of(
    a: &ReplayArgs,
    live: &[umbra_replay::Workload],
    models: &[ReplicaModel],
) -> FleetShape {
    let mut fleet = FleetShape::sized_for(
        live,
        models,
        a.host_cores * 1000.0,
        a.host_memory_gib * GIB,
        0.6,
    );
    if a.hosts > 0 {
        fleet.hosts = a.hosts;
    }
    fleet
}

fn trace_plan(a: &ReplayArgs) -> anyhow::Result<umbra_replay::TracePlan> {
    umbra_replay::TracePlan::load(
        &a.data,
        a.vms,
        a.seed,
        a.from_day,
        a.history_days,
        a.live_days,
    )
    .with_context(|| format!("reading {}", a.data.display()))
}

/// The offline sweep of the same plan: prints umbra against the static pools per budget.
fn offline_sweep(a: &ReplayArgs) -> anyhow::Result<(String, umbra_replay::sweep::SweepResult)> {
    if a.budgets.is_empty() || a.budgets.iter().any(|b| b.is_nan() || *b <= 0.0) {
        bail!("--budgets must be positive shares of used CPU");
    }
    let plan = trace_plan(a)?;
    let (history, live) = plan.step_traces();
    let settings = umbra_replay::sweep::SweepSettings {
        budgets: a.budgets.clone(),
        sim: umbra_replay::pool::SimSettings {
            ready_delay_s: a.startup_s,
            // Every policy on the replay's fleet, as the pipeline's run is.
            fleet: Some({
                let f = fleet_of(a, &plan.live, &plan.models);
                umbra_replay::pool::FleetCapacity {
                    cpu_millicores: f.hosts as f64 * f.cpu_millicores,
                    memory_bytes: f.hosts as f64 * f.memory_bytes,
                }
            }),
        },
        ..Default::default()
    };
    let r = umbra_replay::sweep::sweep(&history, &live, &settings)?;
    let title = format!(
        "{} VMs of {} (seed {}), {} days of history, {} live days: {} requests, {:.0} core-hours used",
        plan.ids.len(),
        a.data.display(),
        a.seed,
        a.history_days,
        a.live_days,
        r.requests,
        r.used_core_hours
    );
    Ok((title, r))
}

fn print_sweep(r: &umbra_replay::sweep::SweepResult) {
    println!(
        "\n{:<8} {:>14} {:>12} {:>18}  static pool",
        "budget", "umbra reserve", "umbra hits", "best static hits"
    );
    for x in &r.against_static {
        println!(
            "{:<8} {:>13.3}x {:>11.1}% {:>17.1}%  {}",
            x.budget,
            x.umbra_reserve_ratio,
            x.umbra_hit_rate * 100.0,
            x.static_hit_rate * 100.0,
            x.static_setting
        );
    }
    for p in r.curve.iter().filter(|p| p.budget.is_none()) {
        println!(
            "{:<22} reserve {:>6.3}x  hits {:>5.1}%  rejected {}  preempted {}  ({})",
            p.policy,
            p.reserve_ratio,
            p.hit_rate * 100.0,
            p.rejected,
            p.preempted,
            p.setting
        );
    }
    let (rejected, preempted) = r
        .curve
        .iter()
        .fold((0, 0), |(r, p), c| (r + c.rejected, p + c.preempted));
    println!(
        "on the replay's fleet, over every point of the curve: {rejected} requests rejected, {preempted} slots preempted"
    );
    let s = &r.scale_up;
    println!(
        "scale-up probabilities, Brier over {} workload-steps: model {:.4}, base rate {:.4}, time-of-day profile {:.4}",
        s.scored, s.brier_model, s.brier_base_rate, s.brier_seasonal_profile
    );
}

fn run_sweep(a: &ReplayArgs, begun: Instant) -> anyhow::Result<()> {
    eprintln!(
        "sweep: {} VMs of {}, seed {}, offline",
        a.vms,
        a.data.display(),
        a.seed
    );
    let (title, r) = offline_sweep(a)?;
    print_sweep(&r);
    let report = umbra_replay::report::write_sweep(&a.out, &title, &r)?;
    println!(
        "report: {}  (summary.json beside it; {:.1} min in all)",
        report.display(),
        begun.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn evaluate(
    a: &ReplayArgs,
    p: &Plan,
    bin_dir: &Path,
    bootstrap: &str,
    registry_url: &str,
    prefix: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    // The driver's readers wait at the broker as the services' do: a lockstep barrier waits
    // for the decisions they read.
    let kafka = KafkaSettings {
        bootstrap_servers: bootstrap.to_string(),
        properties: [(
            "fetch.wait.max.ms".to_string(),
            fetch_wait_ms(a).to_string(),
        )]
        .into(),
        producer_properties: producer_properties(a),
        ..KafkaSettings::default()
    };
    let registry: Arc<dyn SchemaRegistry> = Arc::new(HttpRegistry::new(registry_url)?);
    let producer = umbra_stream::kafka::producer(&kafka)?;
    let topic = |t: &str| format!("{prefix}{t}");
    let raw: Output<WorkloadKey, UsageSample> =
        Output::new(registry.clone(), topic("umbra.usage.raw")).await?;
    let requests: Output<WorkloadKey, WorkloadRequest> =
        Output::new(registry.clone(), topic("umbra.workload.requests")).await?;
    let commands: Output<HostKey, FleetCommand> =
        Output::new(registry.clone(), topic("umbra.fleet.commands")).await?;
    let scale: Output<WorkloadKey, WorkloadScale> =
        Output::new(registry.clone(), topic("umbra.workload.scale")).await?;
    let raw_emit = |s: &UsageSample| {
        raw.record(
            &WorkloadKey {
                workload_id: s.workload_id.clone(),
            },
            s,
        )
    };

    let obs: Shared = Arc::default();
    let readers = shutdown.child_token();
    let _stop_readers = readers.clone().drop_guard();
    {
        let o = obs.clone();
        follow::<WorkloadKey, UsagePoint>(
            &kafka,
            registry.clone(),
            topic("umbra.usage.series"),
            readers.clone(),
            move |u| {
                let mut o = lock(&o);
                let e = o
                    .series_until
                    .entry(u.workload_id.clone())
                    .or_insert(i64::MIN);
                *e = (*e).max(u.bucket_start);
            },
        )
        .await?;
        let o = obs.clone();
        follow::<HostKey, FleetEvent>(
            &kafka,
            registry.clone(),
            topic("umbra.fleet.events"),
            readers.clone(),
            move |e| {
                let mut o = lock(&o);
                if e.shadow_id.is_some()
                    && matches!(e.kind, FleetEventKind::Failed | FleetEventKind::Refused)
                {
                    o.shadows_refused_or_failed
                        .push((e.occurred_at, e.kind, e.reason.clone()));
                }
                o.ledger.apply(&e)
            },
        )
        .await?;
        let o = obs.clone();
        follow::<WorkloadKey, AllocationDecision>(
            &kafka,
            registry.clone(),
            topic("umbra.allocation.decisions"),
            readers.clone(),
            move |d| {
                lock(&o)
                    .decisions
                    .entry(d.request_id.clone())
                    .or_default()
                    .push(d)
            },
        )
        .await?;
        let o = obs.clone();
        follow::<WorkloadKey, DemandForecast>(
            &kafka,
            registry.clone(),
            topic("umbra.forecasts"),
            readers.clone(),
            move |f| {
                let mut o = lock(&o);
                o.forecasted.insert(f.workload_id.clone());
                // Finest horizon first: later (coarser) points only fill steps not yet given.
                let mut hs: Vec<&HorizonForecast> = f
                    .horizons
                    .iter()
                    .filter(|h| h.step_seconds == 300)
                    .collect();
                hs.sort_by_key(|h| std::cmp::Reverse(h.points.len()));
                for h in hs {
                    o.forecasts.record(
                        &f.workload_id,
                        f.generated_at,
                        h.points.iter().map(|q| {
                            (
                                q.time,
                                q.cpu_millicores.mean,
                                q.cpu_millicores.lower_80,
                                q.cpu_millicores.upper_80,
                            )
                        }),
                    );
                }
            },
        )
        .await?;
        let o = obs.clone();
        follow::<WorkloadKey, ScaleUpForecast>(
            &kafka,
            registry.clone(),
            topic("umbra.scaleup.forecasts"),
            readers.clone(),
            move |f| {
                if f.kind == ScaleUpSubject::Pool {
                    if let Some(c) = f.subject.strip_prefix("pool/").and_then(|c| c.parse().ok()) {
                        lock(&o).pool_slots.insert((f.step_start, c), f.slots);
                    }
                }
            },
        )
        .await?;
        let o = obs.clone();
        follow::<WorkloadKey, ReshadowRequest>(
            &kafka,
            registry.clone(),
            topic("umbra.reshadow.requests"),
            readers.clone(),
            move |_| lock(&o).reshadows += 1,
        )
        .await?;
    }

    // History: ingest and forecast with the clock standing at the live week's start.
    let frozen = ClockSettings {
        speed: p.speed,
        origin_wall_ms: i64::MAX / 4,
        origin_trace_ms: p.live_start_ms,
        driven: false,
    };
    let mut procs = Procs {
        dir: a.state_dir.clone(),
        procs: Vec::new(),
    };
    let config = |name: &str, clock: &ClockSettings| {
        service_config(name, a, p, bootstrap, registry_url, prefix, clock)
    };
    procs.spawn(bin_dir, "ingest", &config("ingest", &frozen))?;
    procs.wait_ready(Duration::from_secs(300)).await?;
    let t = Instant::now();
    send_all(
        &producer,
        p.history_samples
            .iter()
            .map(raw_emit)
            .collect::<Result<_, _>>()?,
    )
    .await?;
    // The history's replica counts and requests: what the scale-up model learns from.
    let (hist, _) = &p.traces;
    let mut emits = scale_emits(
        p,
        hist,
        p.history_start_ms,
        0..hist.steps(),
        &mut HashMap::new(),
        &scale,
    )?;
    let mut history_requests = 0;
    for (w, id) in hist.ids.iter().enumerate() {
        let Some(m) = p.model_of(id) else {
            continue;
        };
        for (i, n) in hist.ups[w].iter().enumerate() {
            for k in 0..*n {
                history_requests += 1;
                emits.push(requests.record(
                    &WorkloadKey {
                        workload_id: id.clone(),
                    },
                    &WorkloadRequest {
                        request_id: format!("history-{id}-{i:04}-{k}"),
                        workload_id: id.clone(),
                        labels: [("source".to_string(), "umbra replay".to_string())].into(),
                        resources: replica_resources(m),
                        requested_at: p.history_start_ms + i as i64 * STEP_S * 1000,
                    },
                )?);
            }
        }
    }
    send_all(&producer, emits).await?;
    start_group_at_end(
        &kafka,
        &format!("{prefix}interceptor"),
        &topic("umbra.workload.requests"),
    )
    .await
    .context("starting the interceptor after the history's requests")?;
    eprintln!(
        "history: {} raw samples and {history_requests} requests sent in {:.1} s",
        p.history_samples.len(),
        t.elapsed().as_secs_f64()
    );
    // Buckets close once a newer sample of the partition passes them by the allowed lateness
    // (10 min): wait for each VM's series to reach its last history sample but half an hour.
    let mut want: HashMap<&str, i64> = HashMap::new();
    for s in &p.history_samples {
        want.insert(&s.workload_id, s.sample_time - 30 * 60_000);
    }
    let complete = wait_until(
        "usage series up to the live week",
        Duration::from_secs(300),
        &mut procs,
        || {
            let o = lock(&obs);
            want.iter()
                .all(|(id, w)| o.series_until.get(*id).is_some_and(|t| t >= w))
        },
    )
    .await;
    if let Err(e) = complete {
        let o = lock(&obs);
        let behind: Vec<String> = want
            .iter()
            .filter(|(id, w)| o.series_until.get(**id).is_none_or(|t| t < *w))
            .map(|(id, w)| format!("{id} at {:?}, wanted {w}", o.series_until.get(*id)))
            .collect();
        bail!("{e}: {}", behind.join("; "));
    }
    eprintln!(
        "history: usage series complete after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Forecasts once the history is in: refits while it arrives would only compete for CPU.
    let fit = Instant::now();
    procs.spawn(bin_dir, "forecast", &config("forecast", &frozen))?;
    procs.wait_ready(Duration::from_secs(300)).await?;
    wait_until(
        "first forecasts",
        Duration::from_secs(300),
        &mut procs,
        || {
            let o = lock(&obs);
            want.keys().all(|id| o.forecasted.contains(*id))
        },
    )
    .await?;
    let fit_s = fit.elapsed().as_secs_f64();
    procs.stop();

    // The live week: every service on the trace clock, which starts once all are ready and
    // the existing replicas are placed.
    // The forecast restores its history first, alone on the broker (the slowest restore);
    // the warm-up allows for it twice over, and for the others.
    let warmup_ms = 20_000 + (fit_s * 3_000.0) as i64;
    // In lockstep the replay drives the clock: it stands at the live start until then.
    let clock = ClockSettings {
        speed: p.speed,
        origin_wall_ms: if a.realtime {
            umbra_stream::now_millis() + warmup_ms
        } else {
            0
        },
        origin_trace_ms: p.live_start_ms,
        driven: !a.realtime,
    };
    procs.spawn(bin_dir, "forecast", &config("forecast", &clock))?;
    procs.wait_ready(Duration::from_secs(300)).await?;
    // The fleet and the existing replicas next, so that the shadow manager starts from
    // what the workloads hold (and the size of their replicas).
    for name in ["fleet-sim", "ingest"] {
        procs.spawn(bin_dir, name, &config(name, &clock))?;
    }
    procs.wait_ready(Duration::from_secs(300)).await?;
    wait_until(
        "the fleet's hosts",
        Duration::from_secs(60),
        &mut procs,
        || lock(&obs).ledger.hosts().len() >= p.fleet.hosts,
    )
    .await?;
    let initial = place_initial(p, &obs, &commands, &producer, clock.now_ms()).await?;
    wait_until(
        "the existing replicas placed",
        Duration::from_secs(60),
        &mut procs,
        || {
            let o = lock(&obs);
            initial.iter().all(|c| o.ledger.answered(c))
        },
    )
    .await?;
    let refused = {
        let o = lock(&obs);
        initial
            .iter()
            .filter(|c| {
                o.ledger
                    .answer(c)
                    .is_some_and(|x| x.kind != FleetEventKind::Placed)
            })
            .count()
    };
    for name in ["shadow-manager", "interceptor", "rebalancer"] {
        procs.spawn(bin_dir, name, &config(name, &clock))?;
    }
    procs.wait_ready(Duration::from_secs(300)).await?;
    if refused > 0 {
        eprintln!(
            "note: {refused} of {} existing replicas did not fit the fleet",
            initial.len()
        );
    }
    if a.realtime && umbra_stream::now_millis() > clock.origin_wall_ms {
        eprintln!("note: start-up took longer than the warm-up; the live week started without it");
    }
    let mut lockstep = if a.realtime {
        None
    } else {
        let services = procs
            .procs
            .iter()
            .map(|x| (x.name.clone(), x.http.clone()))
            .collect();
        let topics: Vec<(String, i32)> = umbra_stream::admin::pipeline_topics(prefix)
            .into_iter()
            .map(|t| (t.name, t.partitions))
            .collect();
        let mut l = crate::lockstep::Lockstep::new(&kafka, services, &topics)?;
        l.trace_slower_than = a.trace_barriers_ms.map(Duration::from_millis);
        if a.bootstrap_servers.is_none() && !a.keep_stack {
            // The decisions stay whole: the replay may read them again from the start. The
            // tables are trimmed too: their readers restore them at start only, and a
            // service that exits ends the replay, so nothing restores from a trimmed table.
            let decisions = topic("umbra.allocation.decisions");
            l.trim_topics(
                &kafka,
                umbra_stream::admin::pipeline_topics(prefix)
                    .into_iter()
                    .filter(|t| t.name != decisions)
                    .map(|t| t.name),
            )?;
        }
        l.set_clock(p.live_start_ms).await?;
        l.settle(
            "start",
            p.live_start_ms,
            SETTLE_TIMEOUT,
            || procs.exited(),
            || Ok(()),
        )
        .await
        .context("settling before the live week")?;
        Some(l)
    };
    let live_begun = Instant::now();
    let measured = live_week(
        a,
        p,
        &obs,
        &clock,
        &producer,
        &raw_emit,
        &requests,
        &commands,
        &scale,
        &mut procs,
        lockstep.as_mut(),
        (
            &kafka,
            registry.clone(),
            topic("umbra.allocation.decisions"),
        ),
    )
    .await?;
    if let Some(l) = &lockstep {
        eprintln!(
            "lockstep: {} steps in {:.1} s, {} barriers ({:.1} s waiting at them)",
            p.steps,
            live_begun.elapsed().as_secs_f64(),
            l.settles,
            l.waited.as_secs_f64()
        );
        if l.trimmed() > 0 {
            eprintln!("  trimmed: {} records every reader had passed", l.trimmed());
        }
        for (kind, (n, d)) in &l.by_kind {
            eprintln!(
                "  {kind}: {n} barriers, {:.0} ms each",
                d.as_secs_f64() * 1000.0 / (*n).max(1) as f64
            );
        }
        if let Some(s) = &l.slowest {
            eprintln!(
                "  slowest: {} at {} in {:.0} ms, last waiting for: {}",
                s.kind,
                s.now_ms,
                s.took.as_secs_f64() * 1000.0,
                s.waiting_for.as_deref().unwrap_or("nothing")
            );
        }
    }

    // Every request answered (or 60 s), then stop the services cleanly.
    let asked: Vec<String> = measured.requests.iter().map(|(id, _)| id.clone()).collect();
    let _ = wait_until(
        "the last decisions",
        Duration::from_secs(60),
        &mut procs,
        || {
            let o = lock(&obs);
            asked.iter().all(|r| o.decisions.contains_key(r))
        },
    )
    .await;
    procs.stop();
    let o = lock(&obs);
    let mut summary = summarize(a, p, &o, &measured);
    print_misses(&o, &measured);
    drop(o);
    // The curve of every policy at every budget, from the offline core on the same plan.
    // The pipeline's run stands on its own: a sweep that cannot run is said, not fatal.
    match offline_sweep(a) {
        Ok((_, sweep)) => {
            print_sweep(&sweep);
            // The pipeline ran the offline core's rule at one budget: how close it came.
            if let Some(u) = sweep
                .curve
                .iter()
                .find(|c| c.policy == "umbra" && c.budget == Some(a.budget))
            {
                let pipeline = summary.policies.first();
                let (hit, ratio) = pipeline.map_or((0.0, 0.0), |r| {
                    (
                        r.hit_rate,
                        r.unclaimed_core_hours / r.used_core_hours.max(1e-9),
                    )
                });
                println!(
                    "conformance at budget {}: pipeline {:.1}% hits at {:.3}x reserve, offline core {:.1}% at {:.3}x ({})",
                    a.budget,
                    hit * 100.0,
                    ratio,
                    u.hit_rate * 100.0,
                    u.reserve_ratio,
                    if a.realtime {
                        "realtime replay: the pipeline decides late, so they need not agree"
                    } else if (hit - u.hit_rate).abs() <= 0.01
                        && (ratio - u.reserve_ratio).abs() <= 0.02 * u.reserve_ratio.max(1e-9)
                    {
                        "lockstep: they agree, within a point of hits and 2% of reserve"
                    } else {
                        "lockstep: they DISAGREE: more than a point of hits or 2% of reserve apart"
                    }
                );
            }
            if let Some(offline) = sweep.umbra_steps.iter().find(|u| u.budget == a.budget) {
                print_slot_conformance(p, &lock(&obs).pool_slots, &offline.slots);
                print_reserve_conformance(&measured.reserved, &offline.reserve_cores);
                {
                    let o = lock(&obs);
                    write_conformance(
                        &a.out,
                        p,
                        &o.pool_slots,
                        &measured,
                        offline,
                        &o.shadows_refused_or_failed,
                    )?;
                }
            }
            summary.curve = sweep.curve.clone();
            summary.sweep = Some(sweep);
        }
        Err(e) => eprintln!("the offline sweep did not run, so the report has no curve: {e:#}"),
    }
    let data = report_data(a, p, &lock(&obs), &measured);
    write_report(&a.out, &summary, &data)?;
    write_decisions(&a.out, &lock(&obs), &measured)?;
    Ok(summary)
}

/// `decisions.jsonl` in the report folder: each request of the trace, in trace order, with
/// its first decision (outcome, host, shadow), so that two runs can be compared request by
/// request. Wall-clock fields are left out.
fn write_decisions(out: &Path, o: &Observed, m: &Measured) -> anyhow::Result<()> {
    let path = out.join("decisions.jsonl");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for (rid, ev) in &m.requests {
        let d = o.decisions.get(rid).and_then(|ds| ds.first());
        let line = serde_json::json!({
            "request_id": rid,
            "t_s": ev.t_s,
            "workload_id": d.map(|d| d.workload_id.as_str()),
            "outcome": d.map(|d| format!("{:?}", d.outcome)),
            "host_id": d.and_then(|d| d.host_id.as_deref()),
            "shadow_id": d.and_then(|d| d.shadow_id.as_deref()),
            "decisions": o.decisions.get(rid).map_or(0, Vec::len),
        });
        writeln!(f, "{line}")?;
    }
    f.flush()?;
    Ok(())
}

/// The slots per pool (`classes` of them) the pipeline's scale-up stage held at live step `i`.
fn slots_at(
    p: &Plan,
    pipeline: &BTreeMap<(i64, usize), i32>,
    i: usize,
    classes: usize,
) -> Vec<usize> {
    let t = p.live_start_ms + i as i64 * STEP_S * 1000;
    (0..classes)
        .map(|c| pipeline.get(&(t, c)).map_or(0, |n| (*n).max(0) as usize))
        .collect()
}

/// Step by step, the slots per pool the pipeline's scale-up stage held against the offline
/// core's at the same budget: where they part, the hit rates part.
fn print_slot_conformance(
    p: &Plan,
    pipeline: &BTreeMap<(i64, usize), i32>,
    offline: &[Vec<usize>],
) {
    let mut same = 0usize;
    let mut differ: Vec<String> = Vec::new();
    for (i, want) in offline.iter().enumerate().take(p.steps) {
        let held = slots_at(p, pipeline, i, want.len());
        if held == *want {
            same += 1;
        } else {
            differ.push(format!("step {i}: pipeline {held:?}, offline {want:?}"));
        }
    }
    println!(
        "slots per pool, step by step: the same at {same} of {} live steps{}{}",
        offline.len().min(p.steps),
        if differ.is_empty() {
            ""
        } else {
            "; first differences: "
        },
        differ
            .iter()
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Step by step, the cores the pipeline held in slots after the step's requests against the
/// offline core's: where the reserve ratios part.
fn print_reserve_conformance(pipeline: &[(f64, f64, f64)], offline: &[f64]) {
    let step_h = STEP_S as f64 / 3600.0;
    let (mut same, mut less, mut more) = (0usize, (0usize, 0.0f64), (0usize, 0.0f64));
    let mut differ: Vec<String> = Vec::new();
    for (i, (held, want)) in pipeline.iter().map(|r| r.1).zip(offline).enumerate() {
        let d = held - want;
        if d.abs() < 1e-6 {
            same += 1;
            continue;
        }
        let side = if d < 0.0 { &mut less } else { &mut more };
        side.0 += 1;
        side.1 += d * step_h;
        differ.push(format!("step {i}: pipeline {held:.3}, offline {want:.3}"));
    }
    println!(
        "reserve per step (cores in slots after the step's requests): the same at {same} of {} live steps; the pipeline held less at {} ({:+.1} core-hours) and more at {} ({:+.1}){}{}",
        pipeline.len().min(offline.len()),
        less.0,
        less.1,
        more.0,
        more.1,
        if differ.is_empty() { "" } else { "; first differences: " },
        differ.iter().take(4).cloned().collect::<Vec<_>>().join("; ")
    );
}

/// `conformance.jsonl` in the report folder: per live step, the slots per pool and the
/// cores held in slots, the pipeline's against the offline core's at the same budget.
fn write_conformance(
    out: &Path,
    p: &Plan,
    pipeline_slots: &BTreeMap<(i64, usize), i32>,
    m: &Measured,
    offline: &umbra_replay::sweep::UmbraSteps,
    refused_or_failed: &[(i64, FleetEventKind, String)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("conformance.jsonl");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for (i, want) in offline.slots.iter().enumerate().take(p.steps) {
        let t = p.live_start_ms + i as i64 * STEP_S * 1000;
        let held = slots_at(p, pipeline_slots, i, want.len());
        let line = serde_json::json!({
            "step": i,
            "slots_pipeline": held,
            "slots_offline": want,
            "reserve_cores_pipeline": m.reserved.get(i).map(|r| r.1),
            "reserve_cores_offline": offline.reserve_cores.get(i),
            "free_cores_beside_real_replicas": m.room.get(i).map(|r| r.0),
            "roomiest_host_free_cores": m.room.get(i).map(|r| r.1),
            "real_cores_fleet": m.real_cores.get(i).map(|r| r.fleet),
            "real_cores_trace": m.real_cores.get(i).map(|r| r.trace),
            "real_cores_apart": m.real_cores.get(i).map(|r| &r.apart),
            "shadows_refused_or_failed": refused_or_failed
                .iter()
                .filter(|(at, _, _)| (t..t + STEP_S * 1000).contains(at))
                .map(|(_, k, why)| format!("{k:?}: {why}"))
                .collect::<Vec<_>>(),
        });
        writeln!(f, "{line}")?;
    }
    f.flush()?;
    Ok(())
}

/// Waits for `done`, failing after `timeout` or as soon as a service exits.
async fn wait_until(
    what: &str,
    timeout: Duration,
    procs: &mut Procs,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        if let Some(e) = procs.exited() {
            bail!("waiting for {what}: {e}");
        }
        if start.elapsed() > timeout {
            bail!(
                "waiting for {what}: not there after {timeout:?} (logs in {})",
                procs.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The replicas running when the live week starts (the cluster's existing deployment), on
/// the hosts with the most free CPU; returns the command ids.
async fn place_initial(
    p: &Plan,
    obs: &Shared,
    commands: &Output<HostKey, FleetCommand>,
    producer: &rdkafka::producer::FutureProducer,
    now: i64,
) -> anyhow::Result<Vec<String>> {
    let mut free: BTreeMap<String, (f64, f64)> = lock(obs)
        .ledger
        .hosts()
        .iter()
        .map(|(h, r)| {
            let f = r.free();
            (h.clone(), (f.cpu_millicores as f64, f.memory_bytes as f64))
        })
        .collect();
    let (mut emits, mut ids) = (Vec::new(), Vec::new());
    for (w, wl) in p.live.iter().enumerate() {
        let m = &p.models[w];
        let first = wl.cpu_millicores.iter().find(|c| c.is_finite()).copied();
        for k in 0..m.needed(first.unwrap_or(0.0)) {
            let Some((host, f)) = free
                .iter_mut()
                .filter(|(_, f)| f.0 >= m.cpu_millicores && f.1 >= m.memory_bytes)
                .max_by(|x, y| x.1 .0.total_cmp(&y.1 .0))
            else {
                continue;
            };
            f.0 -= m.cpu_millicores;
            f.1 -= m.memory_bytes;
            let id = format!("existing-{}-{k}", wl.id);
            emits.push(commands.record(
                &HostKey {
                    host_id: host.clone(),
                },
                &FleetCommand {
                    command_id: id.clone(),
                    kind: FleetCommandKind::PlaceWorkload,
                    host_id: host.clone(),
                    target_host_id: None,
                    shadow_id: None,
                    workload_id: wl.id.clone(),
                    request_id: None,
                    resources: replica_resources(m),
                    issued_at: now,
                },
            )?);
            ids.push(id);
        }
    }
    send_all(producer, emits).await?;
    Ok(ids)
}

fn replica_resources(m: &ReplicaModel) -> Resources {
    Resources {
        cpu_millicores: m.cpu_millicores.round() as i64,
        memory_bytes: m.memory_bytes.round() as i64,
        disk_io_bytes_per_s: 0,
    }
}

#[allow(clippy::too_many_arguments)]
async fn live_week(
    a: &ReplayArgs,
    p: &Plan,
    obs: &Shared,
    clock: &ClockSettings,
    producer: &rdkafka::producer::FutureProducer,
    raw_emit: &dyn Fn(&UsageSample) -> Result<Emit, umbra_stream::StreamError>,
    requests: &Output<WorkloadKey, WorkloadRequest>,
    commands: &Output<HostKey, FleetCommand>,
    scale: &Output<WorkloadKey, WorkloadScale>,
    procs: &mut Procs,
    mut lockstep: Option<&mut crate::lockstep::Lockstep>,
    decisions: (&KafkaSettings, Arc<dyn SchemaRegistry>, String),
) -> anyhow::Result<Measured> {
    let mut m = Measured::default();
    let mut last_scale: HashMap<usize, u32> = HashMap::new();
    // A step's requests, smaller replicas first, as the slot simulator takes them: a small
    // request does not take the only slot a larger one fits.
    let mut events = p.events.clone();
    events.sort_by(|x, y| {
        (x.t_s, x.change != Change::Up)
            .cmp(&(y.t_s, y.change != Change::Up))
            .then(
                p.models[x.workload]
                    .cpu_millicores
                    .total_cmp(&p.models[y.workload].cpu_millicores),
            )
            .then(x.workload.cmp(&y.workload))
    });
    let (mut next_sample, mut next_event) = (0usize, 0usize);
    let mut last_progress = Instant::now() - Duration::from_secs(10);
    let step_ms = STEP_S * 1000;
    let mut seq: HashMap<usize, usize> = HashMap::new();
    let ready_ms = (a.startup_s * 1000.0) as i64;
    for i in 0..p.steps {
        let t = p.live_start_ms + i as i64 * step_ms;
        if lockstep.is_none() {
            let due_wall = clock.origin_wall_ms + ((t - p.live_start_ms) as f64 / p.speed) as i64;
            let wait = due_wall - umbra_stream::now_millis();
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        if let Some(e) = procs.exited() {
            bail!("during the live week: {e}");
        }
        let mut emits = Vec::new();
        while next_sample < p.live_samples.len()
            && p.live_samples[next_sample].sample_time < t + step_ms
        {
            emits.push(raw_emit(&p.live_samples[next_sample])?);
            next_sample += 1;
        }
        let scales = scale_emits(
            p,
            &p.traces.1,
            p.live_start_ms,
            i..i + 1,
            &mut last_scale,
            scale,
        )?;
        // Lockstep (docs/replay.md, *A step in lockstep*): the step's samples close the step
        // before's usage point, which the scale-up stage scores (a step whose points are all
        // in); a millisecond later the steps still missing a point are scored with what came;
        // at a mark the shadow manager stages the slots, which are ready one start-up delay
        // later, and at another it writes them ready, before the step's requests arrive with
        // the replica counts they lead to. As the offline core, slots decided on a step's
        // point are ready for the next step's requests.
        let step_requests_from = m.requests.len();
        let now = if let Some(l) = lockstep.as_deref_mut() {
            l.set_clock(t).await?;
            send_all(producer, std::mem::take(&mut emits)).await?;
            // The step before's points all in: no step is scored late, one barrier fewer.
            let complete = |w: usize| {
                if i == 0 {
                    p.traces.0.cpu[w].last().is_some_and(|c| c.is_finite())
                } else {
                    p.traces.1.cpu[w].get(i - 1).is_some_and(|c| c.is_finite())
                }
            };
            let late = !(0..p.traces.1.workloads()).all(complete);
            for (kind, at) in [
                ("samples", t),
                ("late points", t + 1),
                ("slots ready", t + 1 + ready_ms),
            ] {
                if kind == "late points" && !late {
                    continue;
                }
                if kind == "slots ready" {
                    // The step's pool forecasts are all in: the shadow manager stages the
                    // slots at once, in one pass (docs/replay.md).
                    let last = if late { t + 1 } else { t };
                    l.mark_and_settle(
                        "placement mark",
                        last,
                        "shadow-manager",
                        SETTLE_TIMEOUT,
                        || procs.exited(),
                    )
                    .await?;
                }
                if at > t {
                    l.set_clock(at).await?;
                }
                l.settle(kind, at, SETTLE_TIMEOUT, || procs.exited(), || Ok(()))
                    .await?;
            }
            // The slots the fleet made ready go into the table before the requests come.
            l.mark_and_settle(
                "health mark",
                t + 1 + ready_ms,
                "shadow-manager",
                SETTLE_TIMEOUT,
                || procs.exited(),
            )
            .await?;
            t + 1 + ready_ms
        } else {
            clock.now_ms()
        };
        emits.extend(scales);
        // In lockstep a step's requests go one at a time, each once the one before is decided:
        // the interceptor takes them in the order the offline core does (smaller first), not
        // in whatever order its partitions deliver them.
        let mut one_by_one: Vec<(String, Emit)> = Vec::new();
        // CPU this step's releases take from each (host, workload): the ledger shows them
        // only once the fleet has answered.
        let mut releasing: HashMap<(String, String), i64> = HashMap::new();
        while next_event < events.len() && events[next_event].t_s * 1000 <= t - p.live_start_ms {
            let e = events[next_event];
            next_event += 1;
            let wl = &p.live[e.workload];
            let k = seq.entry(e.workload).or_default();
            *k += 1;
            match e.change {
                Change::Up => {
                    let id = format!("req-{}-{:04}-{}", wl.id, i, k);
                    let emit = requests.record(
                        &WorkloadKey {
                            workload_id: wl.id.clone(),
                        },
                        &WorkloadRequest {
                            request_id: id.clone(),
                            workload_id: wl.id.clone(),
                            labels: [("source".to_string(), "umbra replay".to_string())].into(),
                            resources: replica_resources(&p.models[e.workload]),
                            requested_at: now,
                        },
                    )?;
                    if lockstep.is_some() {
                        one_by_one.push((id.clone(), emit));
                    } else {
                        emits.push(emit);
                    }
                    let context = {
                        let o = lock(obs);
                        let held = o.ledger.held(&wl.id).cpu_millicores as f64;
                        (held, o.forecasts.at(&wl.id, t).map(|f| f.2))
                    };
                    m.request_context.insert(id.clone(), context);
                    m.requests.push((id, e));
                }
                Change::Down => {
                    let size = replica_resources(&p.models[e.workload]);
                    let host = release_host(&lock(obs).ledger, &wl.id, &releasing);
                    if let Some(host) = host {
                        *releasing.entry((host.clone(), wl.id.clone())).or_default() +=
                            size.cpu_millicores;
                        emits.push(commands.record(
                            &HostKey {
                                host_id: host.clone(),
                            },
                            &FleetCommand {
                                command_id: format!("release-{}-{:04}-{}", wl.id, i, k),
                                kind: FleetCommandKind::ReleaseWorkload,
                                host_id: host,
                                target_host_id: None,
                                shadow_id: None,
                                workload_id: wl.id.clone(),
                                request_id: None,
                                resources: size,
                                issued_at: now,
                            },
                        )?);
                    }
                }
            }
        }
        for (id, emit) in one_by_one {
            send_all(producer, vec![emit]).await?;
            // Bounded: a decision the replay does not see is waited for at the barrier.
            let start = Instant::now();
            while !lock(obs).decisions.contains_key(&id)
                && start.elapsed() < Duration::from_secs(20)
            {
                if let Some(e) = procs.exited() {
                    bail!("during the live week: {e}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        send_all(producer, emits).await?;
        if let Some(l) = lockstep.as_deref_mut() {
            let asked: Vec<String> = m.requests[step_requests_from..]
                .iter()
                .map(|(id, _)| id.clone())
                .collect();
            let seen = || {
                let o = lock(obs);
                let missing: Vec<&String> = asked
                    .iter()
                    .filter(|r| !o.decisions.contains_key(*r))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "the replay has seen no decision for {missing:?} ({} decisions seen in all)",
                        o.decisions.len()
                    ))
                }
            };
            let first = l
                .settle(
                    "requests",
                    now,
                    Duration::from_secs(20),
                    || procs.exited(),
                    seen,
                )
                .await;
            if let Err(e) = first {
                // Seen here: the replay's follower of the decisions stopped short of their
                // end while every service had settled. Read them again from the start, then
                // wait as long as any barrier may.
                eprintln!("\nnote: {e:#}; reading the decisions again");
                refresh_decisions(&decisions, obs).await?;
                l.settle("requests", now, SETTLE_TIMEOUT, || procs.exited(), seen)
                    .await?;
            }
        }
        if let Some(l) = lockstep.as_deref_mut() {
            // The step settled: the rebalancer plans now, on what no longer moves, and what
            // its moves cause settles before the clock moves on.
            l.mark_and_settle("rebalancer mark", now, "rebalancer", SETTLE_TIMEOUT, || {
                procs.exited()
            })
            .await?;
            if (i + 1) % TRIM_EVERY_STEPS == 0 {
                l.trim().await?;
            }
        }
        observe_step(p, i, obs, &mut m);
        if !a.quiet && (last_progress.elapsed() >= Duration::from_millis(500) || i + 1 == p.steps) {
            last_progress = Instant::now();
            progress(p, i, obs, &m);
        }
    }
    if !a.quiet {
        eprintln!();
    }
    Ok(m)
}

/// The host a replica of `workload` is released from: the one holding the most of it once the
/// releases already sent this step (`releasing`, CPU per host and workload) are taken off.
/// Without them every release of a step would go to the same host, and those past what it
/// holds would free nothing: the replicas would stay in the fleet for good.
fn release_host(
    ledger: &Ledger,
    workload: &str,
    releasing: &HashMap<(String, String), i64>,
) -> Option<String> {
    ledger
        .hosts()
        .iter()
        .filter_map(|(h, r)| {
            let held = r.workloads.get(workload)?.cpu_millicores;
            let going = releasing
                .get(&(h.clone(), workload.to_string()))
                .copied()
                .unwrap_or(0);
            (held > going).then(|| (h.clone(), held - going))
        })
        .max_by_key(|(_, left)| *left)
        .map(|(h, _)| h)
}

/// Reads the decisions topic from the start to its end and adds the decisions the replay's
/// follower has not delivered (a request already seen keeps what it has).
async fn refresh_decisions(
    (kafka, registry, topic): &(&KafkaSettings, Arc<dyn SchemaRegistry>, String),
    obs: &Shared,
) -> anyhow::Result<()> {
    let input: Arc<Input<WorkloadKey, AllocationDecision>> =
        Arc::new(Input::new(registry.clone(), topic.clone()).await?);
    let read: Arc<Mutex<Vec<AllocationDecision>>> = Arc::default();
    let sink = read.clone();
    RestoringReader::open(kafka, topic)
        .await?
        .restore(
            CancellationToken::new(),
            Metrics::new("umbra-replay"),
            move |r: RawRecord| {
                let (input, sink) = (input.clone(), sink.clone());
                async move {
                    if let Some(v) = r.value.as_deref() {
                        if let Ok(d) = input.decode_value(v).await {
                            sink.lock().unwrap_or_else(|p| p.into_inner()).push(d);
                        }
                    }
                }
            },
        )
        .await;
    let all = std::mem::take(&mut *read.lock().unwrap_or_else(|p| p.into_inner()));
    let mut o = lock(obs);
    let mut by_request: HashMap<String, Vec<AllocationDecision>> = HashMap::new();
    for d in all {
        by_request.entry(d.request_id.clone()).or_default().push(d);
    }
    for (id, ds) in by_request {
        o.decisions.entry(id).or_insert(ds);
    }
    Ok(())
}

/// Samples the fleet after step `i`: reservations, host use, overloads, commitments.
fn observe_step(p: &Plan, i: usize, obs: &Shared, m: &mut Measured) {
    let o = lock(obs);
    // Seconds since the live start: the report draws hours.
    let t_s = i as f64 * STEP_S as f64;
    // Summed in whole millicores and bytes: the same whatever order the shadows come in.
    let (cpu, mem) = o.ledger.shadows().values().fold((0i64, 0i64), |(c, b), s| {
        (c + s.resources.cpu_millicores, b + s.resources.memory_bytes)
    });
    m.reserved
        .push((t_s, cpu as f64 / 1000.0, mem as f64 / GIB));
    let usage: HashMap<&str, f64> = p
        .live
        .iter()
        .map(|w| {
            (
                w.id.as_str(),
                w.cpu_millicores.get(i).copied().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let mut over = false;
    let (mut free, mut roomiest) = (0.0f64, 0.0f64);
    for (h, r) in o.ledger.hosts() {
        let left = (r.capacity.cpu_millicores - r.committed_by_workloads().cpu_millicores) as f64;
        free += left / 1000.0;
        roomiest = roomiest.max(left / 1000.0);
        let mut used = 0.0;
        for (w, held) in &r.workloads {
            let total = o.ledger.held(w).cpu_millicores;
            let u = usage.get(w.as_str()).copied().unwrap_or(f64::NAN);
            if total > 0 && u.is_finite() {
                used += u * held.cpu_millicores as f64 / total as f64;
            }
        }
        let cap = r.capacity.cpu_millicores.max(1) as f64;
        over |= used > cap;
        m.utilization.entry(h.clone()).or_default().push(used / cap);
    }
    m.room.push((free, roomiest));
    let t1 = &p.traces.1;
    let mut apart: Vec<(String, f64, f64)> = (0..t1.workloads())
        .map(|w| {
            let id = &t1.ids[w];
            let fleet = o.ledger.held(id).cpu_millicores as f64 / 1000.0;
            let trace = f64::from(t1.running[w].get(i).copied().unwrap_or(0))
                * t1.sizes[w].cpu_millicores
                / 1000.0;
            (id.clone(), fleet, trace)
        })
        .collect();
    let (fleet, trace) = apart
        .iter()
        .fold((0.0, 0.0), |(f, t), x| (f + x.1, t + x.2));
    apart.retain(|x| (x.1 - x.2).abs() > 1e-6);
    apart.sort_by(|a, b| (b.1 - b.2).abs().total_cmp(&(a.1 - a.2).abs()));
    apart.truncate(3);
    m.real_cores.push(RealCores {
        fleet,
        trace,
        apart,
    });
    if over {
        m.overload_steps += 1;
    }
    for (h, _) in o.ledger.overcommitted() {
        m.overcommitted.insert(h);
    }
    let (hits, decided) = hit_counts(&o, &m.requests);
    m.hit_rate.push((
        t_s,
        if decided == 0 {
            0.0
        } else {
            hits as f64 / decided as f64
        },
    ));
}

fn hit_counts(o: &Observed, requests: &[(String, ScaleEvent)]) -> (usize, usize) {
    let mut hits = 0;
    let mut decided = 0;
    for (id, _) in requests {
        if let Some(d) = o.decisions.get(id).and_then(|d| d.first()) {
            decided += 1;
            hits += usize::from(d.outcome == Outcome::ShadowHit);
        }
    }
    (hits, decided)
}

/// Decision latency in wall seconds: both ends are on the same trace clock.
fn latency_s(d: &AllocationDecision, speed: f64) -> f64 {
    ((d.decided_at - d.requested_at) as f64 / speed / 1000.0).max(0.0)
}

fn progress(p: &Plan, i: usize, obs: &Shared, m: &Measured) {
    let o = lock(obs);
    let (hits, decided) = hit_counts(&o, &m.requests);
    let mut lat: Vec<f64> = m
        .requests
        .iter()
        .filter_map(|(id, _)| o.decisions.get(id).and_then(|d| d.first()))
        .map(|d| latency_s(d, p.speed))
        .collect();
    let p50 = umbra_replay::percentile(&mut lat, 0.5);
    let used: f64 = p
        .live
        .iter()
        .map(|w| {
            w.cpu_millicores[..=i]
                .iter()
                .filter(|c| c.is_finite())
                .sum::<f64>()
                / 1000.0
        })
        .sum::<f64>()
        * STEP_S as f64
        / 3600.0;
    let reserved: f64 = m.reserved.iter().map(|r| r.1).sum::<f64>() * STEP_S as f64 / 3600.0;
    let overloaded = m
        .utilization
        .values()
        .filter(|u| u.last().is_some_and(|x| *x > 1.0))
        .count();
    let live: Vec<Workload> = p
        .live
        .iter()
        .map(|w| Workload {
            id: w.id.clone(),
            cpu_millicores: w.cpu_millicores[..=i].to_vec(),
            memory_bytes: Vec::new(),
        })
        .collect();
    let (mase, cover) = o
        .forecasts
        .score(&p.history, &live, p.live_start_ms, STEP_S, 288);
    drop(o);
    let done = (i + 1) as f64 / p.steps as f64;
    let bar: String = (0..24)
        .map(|k| if (k as f64) < done * 24.0 { '#' } else { '.' })
        .collect();
    eprint!(
        "\r[{bar}] day {:.1}/{:.0}  requests {decided}/{}  hits {:.1}%  latency p50 {:.2} s  reserved {:.1} cores ({:.0}% of used)  overloaded hosts {overloaded}  MASE {:.2} cover80 {:.2}   ",
        (i + 1) as f64 / 288.0,
        p.steps as f64 / 288.0,
        m.requests.len(),
        if decided == 0 { 0.0 } else { 100.0 * hits as f64 / decided as f64 },
        p50,
        m.reserved.last().map(|r| r.1).unwrap_or(0.0),
        if used > 0.0 { 100.0 * reserved / used } else { 0.0 },
        mase,
        cover
    );
    let _ = std::io::stderr().flush();
}

fn row(r: PolicyResult, used: f64, overload_minutes: f64) -> PolicyRow {
    PolicyRow {
        policy: r.policy,
        requests: r.requests,
        hits: r.hits,
        hit_rate: r.hit_rate,
        placement_delay_p50_s: r.placement_delay_p50_s,
        placement_delay_p99_s: r.placement_delay_p99_s,
        used_core_hours: used,
        unclaimed_core_hours: r.unclaimed_core_hours,
        unclaimed_gib_hours: r.unclaimed_gib_hours,
        overload_minutes,
        rebalances: 0,
        rejected: 0,
        undecided: 0,
    }
}

fn summarize(a: &ReplayArgs, p: &Plan, o: &Observed, m: &Measured) -> Summary {
    let used = used_core_hours(&p.live, STEP_S);
    let fates: Vec<Option<RequestFate>> = m
        .requests
        .iter()
        .map(|(id, _)| {
            let ds = o.decisions.get(id)?;
            let d = ds.first()?;
            Some(RequestFate {
                decided: match d.outcome {
                    Outcome::ShadowHit => Decided::Hit,
                    Outcome::Standard => Decided::Standard,
                    Outcome::Rejected => Decided::Rejected,
                    Outcome::Unknown => Decided::Other,
                },
                decided_after_ms: d.decided_at - d.requested_at,
                decisions: ds.len(),
            })
        })
        .collect();
    let (umbra, decisions) = umbra_row(
        &fates,
        &PipelineRun {
            speed: p.speed,
            startup_s: a.startup_s,
            reserved: m.reserved.iter().map(|r| (r.1, r.2)).collect(),
            step_s: STEP_S,
            used_core_hours: used,
            overload_steps: m.overload_steps,
            rebalances: o.reshadows,
            // Shadows the fleet failed to make room for a standard placement.
            preempted_shadows: o
                .shadows_refused_or_failed
                .iter()
                .filter(|(_, kind, why)| {
                    *kind == FleetEventKind::Failed && why.starts_with(umbra_fleet::sim::PREEMPTED)
                })
                .count(),
        },
    );
    let reserved_core_h = umbra.unclaimed_core_hours;
    let duration_s = p.steps as i64 * STEP_S;
    let (overload, _) =
        standard_placement_overload(&p.live, &p.models, &p.events, &p.fleet, STEP_S);
    // Balloon placeholders big enough for any replica of the trace.
    let size = Placeholder {
        cpu_millicores: p
            .models
            .iter()
            .map(|m| m.cpu_millicores)
            .fold(0.0, f64::max),
        memory_bytes: p.models.iter().map(|m| m.memory_bytes).fold(0.0, f64::max),
    };
    let avg_reserved_cores = reserved_core_h / (duration_s as f64 / 3600.0).max(1e-9);
    let policies = vec![
        umbra.clone(),
        row(
            umbra_replay::reactive(&p.events, a.startup_s),
            used,
            overload,
        ),
        row(
            umbra_replay::static_equal_reserve(
                &p.events,
                size,
                avg_reserved_cores,
                a.startup_s,
                duration_s,
            ),
            used,
            overload,
        ),
        row(
            umbra_replay::static_equal_hits(
                &p.events,
                size,
                umbra.hit_rate,
                a.startup_s,
                duration_s,
                100_000,
            ),
            used,
            overload,
        ),
        row(umbra_replay::oracle(&p.events), used, overload),
    ];
    let (mase, coverage80) = o
        .forecasts
        .score(&p.history, &p.live, p.live_start_ms, STEP_S, 288);
    Summary {
        mode: if a.realtime { "realtime" } else { "lockstep" }.into(),
        policies,
        forecast: ForecastScore { mase, coverage80 },
        decisions,
        overcommitted_hosts: m.overcommitted.len(),
        curve: Vec::new(),
        sweep: None,
    }
}

fn report_data(a: &ReplayArgs, p: &Plan, o: &Observed, m: &Measured) -> ReportData {
    // The three workloads that asked for the most replicas.
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, e) in &m.requests {
        *counts.entry(e.workload).or_default() += 1;
    }
    let mut busiest: Vec<(usize, usize)> = counts.into_iter().collect();
    busiest.sort_by_key(|(w, n)| (std::cmp::Reverse(*n), *w));
    let forecasts = busiest
        .iter()
        .take(3)
        .map(|(w, _)| {
            let wl = &p.live[*w];
            let mut f = ForecastPlot {
                workload: wl.id.clone(),
                actual: Vec::new(),
                mean: Vec::new(),
                lower_80: Vec::new(),
                upper_80: Vec::new(),
            };
            for (i, c) in wl.cpu_millicores.iter().enumerate() {
                let h = i as f64 * STEP_S as f64;
                if c.is_finite() {
                    f.actual.push((h, *c));
                }
                if let Some((mean, lo, hi)) = o
                    .forecasts
                    .at(&wl.id, p.live_start_ms + i as i64 * STEP_S * 1000)
                {
                    f.mean.push((h, mean));
                    f.lower_80.push((h, lo));
                    f.upper_80.push((h, hi));
                }
            }
            f
        })
        .collect();
    // Hourly columns keep the heatmap readable.
    let utilization = m
        .utilization
        .iter()
        .map(|(h, u)| {
            (
                h.clone(),
                u.chunks(12)
                    .map(|c| c.iter().sum::<f64>() / c.len() as f64)
                    .collect(),
            )
        })
        .collect();
    ReportData {
        title: format!(
            "umbra replay: {} VMs of {} (seed {}), {} days of history, {} days live, {} hosts",
            p.ids.len(),
            a.data.display(),
            a.seed,
            a.history_days,
            a.live_days,
            p.fleet.hosts
        ),
        hit_rate: m.hit_rate.clone(),
        reserved_cores: m.reserved.iter().map(|r| (r.0, r.1)).collect(),
        forecasts,
        utilization,
    }
}

/// Why requests were not shadow hits, by the interceptor's reason (the part before `;`).
fn print_misses(o: &Observed, m: &Measured) {
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for (id, _) in &m.requests {
        match o.decisions.get(id).and_then(|d| d.first()) {
            Some(d) if d.outcome == Outcome::ShadowHit => {}
            Some(d) => {
                let reason = d.reason.split(';').next().unwrap_or_default().trim();
                // One line for every "request at T is outside the predicted window [a, b)".
                let reason = if reason.contains("outside the predicted window") {
                    "outside the predicted window"
                } else {
                    reason
                };
                let outcome = if d.outcome == Outcome::Rejected {
                    "rejected"
                } else {
                    "standard"
                };
                *why.entry(format!("{outcome}: {reason}")).or_default() += 1;
            }
            None => *why.entry("no decision".into()).or_default() += 1,
        }
    }
    // Of the requests with no shadow staged: did the forecast in force expect more than the
    // workload held (a placement or timing miss), or not (a forecast miss)?
    let (mut expected, mut not_expected, mut no_forecast) = (0, 0, 0);
    for (id, _) in &m.requests {
        let missed = o
            .decisions
            .get(id)
            .and_then(|d| d.first())
            .is_some_and(|d| d.reason.starts_with("no shadow was staged"));
        if !missed {
            continue;
        }
        match m.request_context.get(id) {
            Some((held, Some(upper))) if upper > held => expected += 1,
            Some((_, Some(_))) => not_expected += 1,
            _ => no_forecast += 1,
        }
    }
    let mut rows: Vec<(String, usize)> = why.into_iter().collect();
    rows.sort_by_key(|(r, n)| (std::cmp::Reverse(*n), r.clone()));
    println!("\numbra's requests that were not shadow hits, by reason:");
    for (r, n) in rows {
        println!("  {n:>6}  {r}");
    }
    println!(
        "  of those with no shadow staged: the forecast's 80% upper bound was above what the workload held for {expected}, not above for {not_expected}, no forecast for the step {no_forecast}"
    );
    // A rejection is the one outcome the issue allows only on a full fleet: each is shown whole.
    for (id, e) in &m.requests {
        if let Some(d) = o
            .decisions
            .get(id)
            .and_then(|d| d.first())
            .filter(|d| d.outcome == Outcome::Rejected)
        {
            println!("  rejected {id}: {}", d.reason);
            // The fleet as the step left it: was it full of real replicas, or only fragmented?
            let step = usize::try_from(e.t_s / STEP_S).unwrap_or(0);
            if let Some((free, roomiest)) = m.room.get(step) {
                println!(
                    "    after its step ({step}): real replicas left {free:.1} cores free across the fleet, {roomiest:.1} on the roomiest host"
                );
            }
        }
    }
}

fn print_summary(s: &Summary) {
    println!(
        "\n{:<22} {:>8} {:>8} {:>9} {:>9} {:>10} {:>11} {:>11} {:>9} {:>10} {:>8} {:>9}",
        "policy",
        "requests",
        "hit rate",
        "p50 s",
        "p99 s",
        "used c-h",
        "unclaim c-h",
        "unclaim G-h",
        "overload",
        "rebalances",
        "rejected",
        "undecided"
    );
    for r in &s.policies {
        println!(
            "{:<22} {:>8} {:>7.1}% {:>9.2} {:>9.2} {:>10.1} {:>11.1} {:>11.1} {:>8.0}m {:>10} {:>8} {:>9}",
            r.policy,
            r.requests,
            r.hit_rate * 100.0,
            r.placement_delay_p50_s,
            r.placement_delay_p99_s,
            r.used_core_hours,
            r.unclaimed_core_hours,
            r.unclaimed_gib_hours,
            r.overload_minutes,
            r.rebalances,
            r.rejected,
            r.undecided
        );
    }
    println!(
        "forecast MASE {:.3}, 80% interval coverage {:.2}; decisions {}/{} requests, {} duplicated; shadows preempted by standard placements: {}; hosts ever over capacity: {}",
        s.forecast.mase,
        s.forecast.coverage80,
        s.decisions.decided,
        s.decisions.requests,
        s.decisions.duplicated,
        s.decisions.preempted_shadows,
        s.overcommitted_hosts
    );
    println!(
        "replay: {}; decisions behind the trace p50 {:.1} min, p99 {:.1} min",
        s.mode, s.decisions.behind_trace_minutes_p50, s.decisions.behind_trace_minutes_p99
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(host: &str, workload: &str, cpu: i64) -> FleetEvent {
        FleetEvent {
            event_id: format!("{host}-{workload}-{cpu}"),
            command_id: None,
            kind: FleetEventKind::Placed,
            host_id: host.into(),
            shadow_id: None,
            workload_id: Some(workload.into()),
            resources: Resources {
                cpu_millicores: cpu,
                memory_bytes: 0,
                disk_io_bytes_per_s: 0,
            },
            reason: String::new(),
            occurred_at: 0,
        }
    }

    #[test]
    fn releases_of_one_step_spread_over_the_hosts_that_hold_the_replicas() {
        let mut ledger = Ledger::default();
        ledger.apply(&placed("host-1", "w", 1000));
        ledger.apply(&placed("host-2", "w", 2000));
        ledger.apply(&placed("host-3", "other", 5000));
        let mut releasing = HashMap::new();
        let mut hosts = Vec::new();
        // Three replicas of w, released in one step before the fleet answers any: each from
        // a host that still holds one, so that all three are freed.
        for _ in 0..3 {
            let h = release_host(&ledger, "w", &releasing).expect("a host holds w");
            *releasing.entry((h.clone(), "w".to_string())).or_default() += 1000;
            hosts.push(h);
        }
        hosts.sort();
        assert_eq!(hosts, ["host-1", "host-2", "host-2"]);
        // A fourth finds nothing left to release.
        assert_eq!(release_host(&ledger, "w", &releasing), None);
    }
}
