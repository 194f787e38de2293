//! `umbra chaos`: the fault suite. Each scenario runs bounded load through the real pipeline
//! (the fleet simulator, ingest, the shadow manager, interceptors, on a broker and registry of
//! the suite's own) while faults happen, then reads every topic back and judges the history
//! with `umbra_history::check`. It prints a table, scenarios × invariants, and fails on any
//! violation. Loops are bounded in count and time; traffic goes to 127.0.0.1 only.
//!
//! Load per scenario: raw telemetry (samples of a few workloads, 5 minutes apart), a forecast
//! per workload (so that shadows are staged), and a stream of requests, some sent twice.
//! Faults by scenario: `kill` (SIGKILL of each service in turn, then restart), `broker`
//! (broker SIGKILLed and restarted on its SQLite storage), `registry` (registry down, then
//! back), `rebalance` (interceptors joining and leaving while requests flow), `bad-input`
//! (twelve kinds of poison, duplicated, late and out-of-order samples, duplicated requests),
//! `fleet` (lost and duplicated commands, failing shadows, an unhealthy host), `mixed` (all of
//! these at once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use umbra_history::{check, History, Verdict, INVARIANTS};
use umbra_schemas::*;
use umbra_stream::config::KafkaSettings;
use umbra_stream::processor::{send, Input, Output};
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};
use umbra_stream::{kafka, table};

use crate::dev;

/// The scenarios, in the order they run.
pub const SCENARIOS: [&str; 7] = [
    "kill",
    "broker",
    "registry",
    "rebalance",
    "bad-input",
    "fleet",
    "mixed",
];

/// Arguments of `umbra chaos`.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// The short version (fewer requests and samples per scenario), as `make test` runs it.
    #[arg(long)]
    pub short: bool,
    /// Scenarios to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Where the suite's broker, registry and service logs live (cleared at start).
    #[arg(long, default_value = ".state/chaos")]
    pub state_dir: PathBuf,
    /// Port of the suite's broker on 127.0.0.1.
    #[arg(long, default_value_t = 39192)]
    pub broker_port: u16,
    /// Port of the suite's registry on 127.0.0.1.
    #[arg(long, default_value_t = 38181)]
    pub registry_port: u16,
    /// Also write the table (Markdown) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the fault timings.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const HOSTS: usize = 6;

/// One service process of a scenario.
struct Svc {
    name: String,
    child: Child,
    http: String,
    log: PathBuf,
    env: Vec<(String, String)>,
}

struct Stack {
    dir: PathBuf,
    bin: PathBuf,
    bootstrap: String,
    registry_url: String,
    broker_port: u16,
    registry_port: u16,
    registry: Arc<dyn SchemaRegistry>,
}

impl Stack {
    fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: self.bootstrap.clone(),
            ..KafkaSettings::default()
        }
    }

    fn spawn(
        &self,
        prefix: &str,
        name: &str,
        id: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<Svc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = self.dir.join(format!("{prefix}{name}-{id}.log"));
        let mut all: Vec<(String, String)> = vec![
            (
                "UMBRA_KAFKA__BOOTSTRAP_SERVERS".into(),
                self.bootstrap.clone(),
            ),
            ("UMBRA_REGISTRY__URL".into(), self.registry_url.clone()),
            ("UMBRA_TOPIC_PREFIX".into(), prefix.to_string()),
            ("UMBRA_HTTP__LISTEN".into(), format!("127.0.0.1:{port}")),
            ("RUST_LOG".into(), "info,rdkafka=warn".into()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let child = self.start(name, &log, &all)?;
        Ok(Svc {
            name: name.to_string(),
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
            env: all,
        })
    }

    fn start(&self, name: &str, log: &Path, env: &[(String, String)]) -> anyhow::Result<Child> {
        let bin = self.bin.join(format!("umbra-{name}"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn()
            .with_context(|| format!("starting {} (build the binaries first)", bin.display()))
    }

    /// SIGKILL, then the same process again.
    fn kill_and_restart(&self, s: &mut Svc) -> anyhow::Result<()> {
        let _ = s.child.kill();
        let _ = s.child.wait();
        s.child = self.start(&s.name, &s.log, &s.env)?;
        Ok(())
    }

    fn pid_of(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// SIGKILLs a process the stack started (`nisshi`, `registry`).
    fn kill_stack_part(&self, name: &str) {
        if let Some(pid) = self.pid_of(name) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.pid")));
        }
    }

    /// Starts what is not running (the broker on its SQLite file, the registry), creates
    /// `prefix`'s topics and registers its schemas.
    async fn up(&self, prefix: &str) -> anyhow::Result<()> {
        dev::start_stack(
            &self.dir,
            None,
            None,
            self.broker_port,
            self.registry_port,
            prefix,
            // The broker scenario restarts the broker: its log must survive it.
            dev::BrokerStorage::Sqlite,
        )
        .await
        .map(|_| ())
    }
}

async fn wait_ready(s: &mut Svc, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = s.child.try_wait()? {
            bail!("{} exited ({status}); see {}", s.name, s.log.display());
        }
        if let Ok(r) = reqwest::get(format!("{}/readyz", s.http)).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{} not ready within {timeout:?}; see {}",
        s.name,
        s.log.display()
    )
}

fn stop(s: &mut Svc) {
    let _ = Command::new("kill").arg(s.child.id().to_string()).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if matches!(s.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = s.child.kill();
    let _ = s.child.wait();
}

/// A small deterministic generator (SplitMix64): fault timings repeat for a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const T0_MS: i64 = 1_372_636_800_000;

fn sample(w: &str, i: i64) -> UsageSample {
    let mut s = UsageSample::example();
    s.workload_id = w.to_string();
    s.sample_time = T0_MS + i * 300_000;
    s.cpu_millicores = 300.0 + (i % 7) as f64 * 50.0;
    s.source = "chaos".into();
    s
}

fn forecast(w: &str, now: i64) -> DemandForecast {
    let now = now / 300_000 * 300_000;
    let iv = |v: f64| Interval {
        mean: v,
        lower_80: v * 0.8,
        upper_80: v * 1.2,
        lower_95: v * 0.7,
        upper_95: v * 1.3,
    };
    DemandForecast {
        workload_id: w.to_string(),
        generated_at: now,
        model: "chaos".into(),
        fallback_reason: None,
        horizons: vec![HorizonForecast {
            horizon: Horizon::Day,
            step_seconds: 300,
            points: (0..288)
                .map(|i| ForecastPoint {
                    time: now + i * 300_000,
                    cpu_millicores: iv(1000.0),
                    memory_bytes: iv(2.0 * (1u64 << 30) as f64),
                    disk_io_bytes_per_s: iv(0.0),
                })
                .collect(),
        }],
    }
}

fn request(id: &str, w: &str) -> WorkloadRequest {
    WorkloadRequest {
        request_id: id.to_string(),
        workload_id: w.to_string(),
        labels: Default::default(),
        resources: Resources {
            cpu_millicores: 500,
            memory_bytes: 1 << 30,
            disk_io_bytes_per_s: 0,
        },
        requested_at: umbra_stream::now_millis(),
    }
}

/// Twelve kinds of poison for a topic whose value schema is `schema_id`'s, given one good
/// encoded record of it: garbage, no value, unknown schema id, wrong magic byte, another
/// topic's schema, truncated Avro, an oversized record, and (for raw telemetry) values that
/// decode but are wrong: NaN, negative, absurd, a missing id, a timestamp far off.
async fn raw_poisons(
    out: &Output<WorkloadKey, UsageSample>,
    other: &[u8],
) -> anyhow::Result<Vec<(String, Option<Vec<u8>>)>> {
    let good = out
        .record(
            &WorkloadKey {
                workload_id: "w0".into(),
            },
            &sample("w0", 1),
        )?
        .value
        .unwrap_or_default();
    let mut bad_values = Vec::new();
    let mut s = sample("w0", 2);
    s.cpu_millicores = f64::NAN;
    bad_values.push(("NaN", s));
    let mut s = sample("w0", 3);
    s.memory_bytes = -5.0;
    bad_values.push(("negative", s));
    let mut s = sample("w0", 4);
    s.cpu_millicores = 1e15;
    bad_values.push(("absurd size", s));
    let mut s = sample("w0", 5);
    s.workload_id = String::new();
    bad_values.push(("missing id", s));
    let mut s = sample("w0", 6);
    s.sample_time = 86_400_000;
    bad_values.push(("timestamp far off", s));
    let mut out_v: Vec<(String, Option<Vec<u8>>)> = vec![
        (
            "garbage".into(),
            Some(b"\xde\xad\xbe\xef not avro".to_vec()),
        ),
        ("no value".into(), None),
        (
            "unknown schema id".into(),
            Some([&[0u8, 0x7f, 0xff, 0xff, 0xf0][..], &good[5..]].concat()),
        ),
        (
            "wrong magic byte".into(),
            Some([&[7u8][..], &good[1..]].concat()),
        ),
        ("another schema".into(), Some(other.to_vec())),
        (
            "truncated avro".into(),
            Some(good[..good.len().min(9)].to_vec()),
        ),
        ("oversized".into(), Some(vec![0x42; 256 * 1024])),
    ];
    for (kind, s) in bad_values {
        let v = out
            .record(
                &WorkloadKey {
                    workload_id: "w0".into(),
                },
                &s,
            )?
            .value
            .unwrap_or_default();
        out_v.push((kind.into(), Some(v)));
    }
    Ok(out_v)
}

struct Outcome {
    verdicts: Vec<Verdict>,
    requests: usize,
    samples: usize,
    poisons: usize,
    faults: Vec<String>,
}

async fn scenario(st: &Stack, name: &str, short: bool, rng: &mut Rng) -> anyhow::Result<Outcome> {
    let prefix = format!("chaos-{name}-{:04x}.", rng.below(0xffff));
    st.up(&prefix).await?;
    let t = |d: &str| format!("{prefix}{d}");
    let sim_env = vec![
        ("UMBRA_SERVICE__HOSTS", HOSTS.to_string()),
        (
            "UMBRA_SERVICE__HOST_CAPACITY__CPU_MILLICORES",
            "8000".to_string(),
        ),
        (
            "UMBRA_SERVICE__HOST_CAPACITY__MEMORY_BYTES",
            (32u64 << 30).to_string(),
        ),
        ("UMBRA_SERVICE__SHADOW_READY_DELAY_MS", "200".to_string()),
        ("UMBRA_SERVICE__WORKLOAD_START_DELAY_MS", "300".to_string()),
        ("UMBRA_SERVICE__METRICS_INTERVAL_MS", "500".to_string()),
    ];
    let manager_env = vec![
        ("UMBRA_SERVICE__RECONCILE_INTERVAL_MS", "200".to_string()),
        ("UMBRA_SERVICE__COMMAND_TIMEOUT_MS", "1500".to_string()),
    ];
    let ingest_env = vec![("UMBRA_SERVICE__IDLE_FLUSH_MS", "1000".to_string())];
    let interceptor_env: Vec<(&str, String)> = vec![];
    let mut sim = st.spawn(&prefix, "fleet-sim", 0, &sim_env)?;
    let mut ingest = st.spawn(&prefix, "ingest", 0, &ingest_env)?;
    let mut manager = st.spawn(&prefix, "shadow-manager", 0, &manager_env)?;
    let interceptors_at_start = if matches!(name, "rebalance" | "mixed") {
        2
    } else {
        1
    };
    let mut interceptors = Vec::new();
    for i in 0..interceptors_at_start {
        interceptors.push(st.spawn(&prefix, "interceptor", i, &interceptor_env)?);
    }
    for s in [&mut sim, &mut ingest, &mut manager]
        .into_iter()
        .chain(interceptors.iter_mut())
    {
        wait_ready(s, Duration::from_secs(90)).await?;
    }

    let producer = kafka::producer(&st.settings())?;
    let raw: Output<WorkloadKey, UsageSample> =
        Output::new(st.registry.clone(), t("umbra.usage.raw")).await?;
    let reqs: Output<WorkloadKey, WorkloadRequest> =
        Output::new(st.registry.clone(), t("umbra.workload.requests")).await?;
    let fcs: Output<WorkloadKey, DemandForecast> =
        Output::new(st.registry.clone(), t("umbra.forecasts")).await?;
    let workloads: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    let now = umbra_stream::now_millis();
    for w in &workloads {
        send(
            &producer,
            &fcs.record(
                &WorkloadKey {
                    workload_id: w.clone(),
                },
                &forecast(w, now),
            )?,
            Default::default(),
        )
        .await?;
    }

    let (n_requests, n_samples) = if short {
        (40usize, 24i64)
    } else {
        (200usize, 96i64)
    };
    let steps = 20usize;
    let mut history = History::default();
    let mut sent_samples: BTreeMap<(String, i64), UsageSample> = BTreeMap::new();
    let mut faults = Vec::new();
    let bad_input = matches!(name, "bad-input" | "mixed");
    let fault_step = |rng: &mut Rng| 4 + rng.below(10) as usize;
    let kill_at = fault_step(rng);
    let outage_at = fault_step(rng);
    let join_at = fault_step(rng);
    let leave_at = join_at + 3;
    let mut next_request = 0usize;
    let mut next_sample = 0i64;
    for step in 0..steps {
        // Load for this step.
        let per_step_samples = (n_samples as usize).div_ceil(steps) as i64;
        let mut indices: Vec<i64> =
            (next_sample..(next_sample + per_step_samples).min(n_samples)).collect();
        // Out of order: two neighbouring samples swapped, within ingest's allowed lateness.
        if bad_input && step == 5 && indices.len() >= 2 {
            indices.swap(0, 1);
            faults.push("two samples out of order".into());
        }
        for &i in &indices {
            for w in &workloads {
                let s = sample(w, i);
                let emit = raw.record(
                    &WorkloadKey {
                        workload_id: w.clone(),
                    },
                    &s,
                )?;
                send(&producer, &emit, Default::default()).await?;
                sent_samples.insert((w.clone(), s.sample_time), s);
            }
        }
        next_sample += indices.len() as i64;
        let per_step_requests = n_requests.div_ceil(steps);
        for _ in 0..per_step_requests {
            if next_request >= n_requests {
                break;
            }
            let w = &workloads[next_request % workloads.len()];
            let r = request(&format!("{prefix}r{next_request}"), w);
            let emit = reqs.record(
                &WorkloadKey {
                    workload_id: w.clone(),
                },
                &r,
            )?;
            send(&producer, &emit, Default::default()).await?;
            if bad_input && next_request.is_multiple_of(5) {
                // The same request again: one decision still.
                send(&producer, &emit, Default::default()).await?;
            }
            history.requests.push(r);
            next_request += 1;
        }

        // Faults.
        if matches!(name, "kill" | "mixed") && step == kill_at {
            for s in [&mut interceptors[0], &mut manager, &mut ingest, &mut sim] {
                faults.push(format!("SIGKILL {} at step {step}", s.name));
                st.kill_and_restart(s)?;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if name == "broker" && step == outage_at {
            faults.push(format!(
                "broker SIGKILL at step {step}, restarted on its SQLite file"
            ));
            st.kill_stack_part("nisshi");
            tokio::time::sleep(Duration::from_secs(2)).await;
            st.up(&prefix).await?;
        }
        if matches!(name, "registry" | "mixed") && step == outage_at {
            faults.push(format!("registry down at step {step} for 3 s"));
            st.kill_stack_part("registry");
            tokio::time::sleep(Duration::from_secs(3)).await;
            st.up(&prefix).await?;
        }
        if matches!(name, "rebalance" | "mixed") && step == join_at {
            faults.push(format!("interceptor joins at step {step}"));
            let id = interceptors.len();
            interceptors.push(st.spawn(&prefix, "interceptor", id, &interceptor_env)?);
        }
        if matches!(name, "rebalance" | "mixed") && step == leave_at {
            faults.push(format!("interceptor leaves (SIGTERM) at step {step}"));
            let mut gone = interceptors.remove(0);
            stop(&mut gone);
        }
        if bad_input && step == 2 {
            // Late, out of order and duplicated samples, and every kind of poison.
            let other = fcs
                .record(
                    &WorkloadKey {
                        workload_id: "w0".into(),
                    },
                    &forecast("w0", now),
                )?
                .value
                .unwrap_or_default();
            for (kind, value) in raw_poisons(&raw, &other).await? {
                send_raw(&producer, &t("umbra.usage.raw"), value.as_deref()).await?;
                // A record without a value is dead-lettered without one.
                history
                    .poisons
                    .push((t("umbra.usage.raw"), value.unwrap_or_default()));
                faults.push(format!("poison: {kind}"));
            }
            for (kind, value) in [
                ("garbage request", Some(b"not a request".to_vec())),
                ("request of another schema", Some(other.clone())),
            ] {
                send_raw(&producer, &t("umbra.workload.requests"), value.as_deref()).await?;
                if let Some(v) = value {
                    history.poisons.push((t("umbra.workload.requests"), v));
                }
                faults.push(format!("poison: {kind}"));
            }
            // A duplicate of a sample already sent: refused as a duplicate (dead-lettered).
            if let Some(((w, _), s)) = sent_samples.iter().next() {
                let emit = raw.record(
                    &WorkloadKey {
                        workload_id: w.clone(),
                    },
                    s,
                )?;
                send(&producer, &emit, Default::default()).await?;
                if let Some(v) = emit.value.clone() {
                    history.poisons.push((t("umbra.usage.raw"), v));
                }
                faults.push("duplicate sample".into());
            }
        }
        if name == "fleet" || (name == "mixed" && step == 6) {
            let fault = match step {
                3 => Some(serde_json::json!({"fault": "lose_commands", "count": 3})),
                5 => Some(serde_json::json!({"fault": "duplicate_commands", "count": 3})),
                7 => {
                    Some(serde_json::json!({"fault": "fail_workload_shadows", "workload_id": "w1"}))
                }
                9 => Some(
                    serde_json::json!({"fault": "host_health", "host_id": "host-001", "healthy": false}),
                ),
                13 => Some(
                    serde_json::json!({"fault": "host_health", "host_id": "host-001", "healthy": true}),
                ),
                6 if name == "mixed" => {
                    Some(serde_json::json!({"fault": "lose_commands", "count": 2}))
                }
                _ => None,
            };
            if let Some(f) = fault {
                let _ = reqwest::Client::new()
                    .post(format!("{}/faults", sim.http))
                    .json(&f)
                    .send()
                    .await;
                faults.push(format!(
                    "fleet: {}",
                    f["fault"].as_str().unwrap_or_default()
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(if short { 150 } else { 400 })).await;
    }

    // Settle on conditions, not on time: every request decided and every good sample in a
    // usage bucket (bounded). After a broker restart a consumer can take seconds to reconnect
    // and rejoin its group; a fixed wait would judge that delay as a loss.
    let decisions_input: Input<WorkloadKey, AllocationDecision> =
        Input::new(st.registry.clone(), t("umbra.allocation.decisions")).await?;
    let usage_input: Input<WorkloadKey, UsagePoint> =
        Input::new(st.registry.clone(), t("umbra.usage.series")).await?;
    let expected_buckets: BTreeSet<(String, i64)> = sent_samples
        .keys()
        .map(|(w, t)| (w.clone(), umbra_history::bucket_start(*t)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(if short { 60 } else { 120 });
    loop {
        let decided: std::collections::HashSet<String> = read_values(st, &decisions_input)
            .await?
            .into_iter()
            .map(|d| d.request_id)
            .collect();
        let bucketed: BTreeSet<(String, i64)> = read_values(st, &usage_input)
            .await?
            .into_iter()
            .map(|p| (p.workload_id, p.bucket_start))
            .collect();
        let settled = history
            .requests
            .iter()
            .all(|r| decided.contains(&r.request_id))
            && expected_buckets.is_subset(&bucketed);
        if settled {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "chaos: scenario {name} did not settle in time ({} of {} requests decided, {} of {} sample buckets written); judging it as it is",
                history.requests.iter().filter(|r| decided.contains(&r.request_id)).count(),
                history.requests.len(),
                expected_buckets.intersection(&bucketed).count(),
                expected_buckets.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // What the faults leave in flight after that (a claim's expansion, a table write) lands.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in interceptors
        .iter_mut()
        .chain([&mut manager, &mut ingest, &mut sim])
    {
        stop(s);
    }

    history.samples_sent = sent_samples.into_values().collect();
    history.decisions = read_values(st, &decisions_input).await?;
    history.claims = read_values(
        st,
        &Input::<WorkloadKey, Claim>::new(st.registry.clone(), t("umbra.claims")).await?,
    )
    .await?;
    history.fleet_events = read_values(
        st,
        &Input::<HostKey, FleetEvent>::new(st.registry.clone(), t("umbra.fleet.events")).await?,
    )
    .await?;
    history.usage = read_values(st, &usage_input).await?;
    let table_input: Input<WorkloadKey, ShadowEntry> =
        Input::new(st.registry.clone(), t("umbra.shadow.table")).await?;
    for r in read_raw(st, &t("umbra.shadow.table")).await? {
        let k = match r.key {
            Some(k) => table_input
                .decode_key(&k)
                .await
                .map(|k| k.workload_id)
                .unwrap_or_default(),
            None => String::new(),
        };
        let v = match r.value {
            Some(v) => Some(table_input.decode_value(&v).await?),
            None => None,
        };
        history.table_log.push((k, v));
    }
    history.table_restored = table::restore_rows::<WorkloadKey, ShadowEntry>(
        &st.settings(),
        st.registry.clone(),
        &t("umbra.shadow.table"),
        umbra_stream::metrics::Metrics::new("chaos"),
        tokio_util::sync::CancellationToken::new(),
    )
    .await?
    .into_iter()
    .collect();
    for topic in umbra_schemas::TOPICS {
        let dlq = t(&topic.dlq());
        for r in read_raw(st, &dlq).await? {
            let header = |h: &str| r.headers.get(h).cloned().unwrap_or_default();
            history.dead_letters.push((
                header(umbra_stream::dlq::header::TOPIC),
                r.value.unwrap_or_default(),
                header(umbra_stream::dlq::header::ERROR),
            ));
        }
    }
    Ok(Outcome {
        verdicts: check(&history),
        requests: history.requests.len(),
        samples: history.samples_sent.len(),
        poisons: history.poisons.len(),
        faults,
    })
}

async fn send_raw(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    value: Option<&[u8]>,
) -> anyhow::Result<()> {
    let mut r = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic).key(b"w0");
    if let Some(v) = value {
        r = r.payload(v);
    }
    producer
        .send(r, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("send to {topic}: {e}"))?;
    Ok(())
}

/// One record as read back.
struct Read {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HashMap<String, String>,
}

/// Every record of `topic` up to its end now, in order per partition.
async fn read_raw(st: &Stack, topic: &str) -> anyhow::Result<Vec<Read>> {
    let settings = st.settings();
    let partitions = kafka::partitions(&settings, topic).await?;
    let consumer = kafka::reader(&settings)?;
    let end = kafka::end_offsets(&consumer, topic, &partitions).await?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut pos: HashMap<i32, i64> = HashMap::new();
    let mut out = Vec::new();
    while !end
        .iter()
        .all(|(p, e)| pos.get(p).copied().unwrap_or(0) >= *e)
    {
        let m = match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => bail!("no progress reading {topic}"),
        };
        pos.insert(m.partition(), m.offset() + 1);
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Read {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    Ok(out)
}

async fn read_values<K: Record, V: Record>(
    st: &Stack,
    input: &Input<K, V>,
) -> anyhow::Result<Vec<V>> {
    let mut out = Vec::new();
    for r in read_raw(st, input.topic()).await? {
        if let Some(v) = r.value {
            out.push(input.decode_value(&v).await?);
        }
    }
    Ok(out)
}

fn table(rows: &[(String, Outcome)]) -> String {
    let mut s = String::from("| scenario | requests | samples | poison | ");
    s.push_str(&INVARIANTS.join(" | "));
    s.push_str(" |\n|---|---|---|---|");
    s.push_str(&"---|".repeat(INVARIANTS.len()));
    s.push('\n');
    for (name, o) in rows {
        s.push_str(&format!(
            "| {name} | {} | {} | {} |",
            o.requests, o.samples, o.poisons
        ));
        for v in &o.verdicts {
            if v.holds() {
                s.push_str(&format!(" ok ({}) |", v.checked));
            } else {
                s.push_str(&format!(
                    " **{} violations** ({}) |",
                    v.violations.len(),
                    v.checked
                ));
            }
        }
        s.push('\n');
    }
    s
}

/// Runs the suite; fails when any invariant is violated.
pub async fn run(a: ChaosArgs) -> anyhow::Result<()> {
    let names: Vec<String> = if a.scenarios.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        a.scenarios.clone()
    };
    for n in &names {
        if !SCENARIOS.contains(&n.as_str()) {
            bail!("unknown scenario '{n}' (known: {})", SCENARIOS.join(", "));
        }
    }
    let dir = a.state_dir.clone();
    dev::stop_stack(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bin = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("binary dir")?;
    dev::start_stack(
        &dir,
        None,
        None,
        a.broker_port,
        a.registry_port,
        "",
        dev::BrokerStorage::Sqlite,
    )
    .await?;
    let st = Stack {
        dir: dir.clone(),
        bin,
        bootstrap: format!("127.0.0.1:{}", a.broker_port),
        registry_url: format!("http://127.0.0.1:{}", a.registry_port),
        broker_port: a.broker_port,
        registry_port: a.registry_port,
        registry: Arc::new(HttpRegistry::new(&format!(
            "http://127.0.0.1:{}",
            a.registry_port
        ))?),
    };
    let mut rng = Rng(a.seed);
    let mut rows = Vec::new();
    let started = Instant::now();
    let result: anyhow::Result<()> = async {
        for n in &names {
            let t0 = Instant::now();
            eprintln!("chaos: scenario {n}");
            let o = scenario(&st, n, a.short, &mut rng)
                .await
                .with_context(|| format!("scenario {n}"))?;
            eprintln!(
                "chaos: scenario {n} done in {:.0} s; faults: {}",
                t0.elapsed().as_secs_f64(),
                o.faults.join("; ")
            );
            for v in o.verdicts.iter().filter(|v| !v.holds()) {
                for line in v.violations.iter().take(10) {
                    eprintln!("  VIOLATION [{n}] {}: {line}", v.invariant);
                }
            }
            rows.push((n.clone(), o));
        }
        Ok(())
    }
    .await;
    dev::stop_stack(&dir);
    result?;
    let text = table(&rows);
    println!("{text}");
    println!(
        "{} scenarios in {:.0} s (`umbra chaos{}`)",
        rows.len(),
        started.elapsed().as_secs_f64(),
        if a.short { " --short" } else { "" }
    );
    if let Some(out) = &a.out {
        std::fs::write(out, &text)?;
    }
    let violated: usize = rows
        .iter()
        .flat_map(|(_, o)| o.verdicts.iter())
        .filter(|v| !v.holds())
        .count();
    if violated > 0 {
        bail!("{violated} invariant(s) violated; see above");
    }
    Ok(())
}
