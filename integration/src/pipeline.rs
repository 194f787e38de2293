//! The pipeline under test: the fleet simulator, ingest, the shadow manager and (optionally)
//! interceptors on a fresh topic prefix, with helpers to feed forecasts and requests and to
//! read the shadow table, the decisions and the fleet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use umbra_fleet::HostView;
use umbra_schemas::*;
use umbra_stream::processor::{send, Input, Output};

use crate::{Service, Stack};

const GIB: f64 = 1_073_741_824.0;

fn iv(v: f64) -> Interval {
    Interval {
        mean: v * 0.8,
        lower_80: v * 0.6,
        upper_80: v,
        lower_95: v * 0.5,
        upper_95: v * 1.2,
    }
}

/// A day-ahead forecast from now whose 80% upper bound is `cpu` millicores and `mem_gib` GiB.
pub fn forecast(w: &str, cpu: f64, mem_gib: f64) -> DemandForecast {
    forecast_at(w, cpu, mem_gib, umbra_stream::now_millis())
}

/// [`forecast`] from the time `from_ms` (a trace's time, for a trace clock).
pub fn forecast_at(w: &str, cpu: f64, mem_gib: f64, from_ms: i64) -> DemandForecast {
    let now = from_ms / 300_000 * 300_000;
    DemandForecast {
        workload_id: w.into(),
        generated_at: now,
        model: "test".into(),
        fallback_reason: None,
        horizons: vec![HorizonForecast {
            horizon: Horizon::Day,
            step_seconds: 300,
            points: (0..288)
                .map(|i| ForecastPoint {
                    time: now + i * 300_000,
                    cpu_millicores: iv(cpu),
                    memory_bytes: iv(mem_gib * GIB),
                    disk_io_bytes_per_s: iv(0.0),
                })
                .collect(),
        }],
    }
}

/// The running pipeline.
pub struct Pipeline {
    /// Broker and registry.
    pub stack: Stack,
    /// Topic prefix of this pipeline.
    pub prefix: String,
    /// The fleet simulator.
    pub sim: Service,
    /// The shadow manager.
    pub manager: Service,
    /// Ingest (host metrics into host state).
    pub ingest: Service,
    /// Interceptors, if started.
    pub interceptors: Vec<Service>,
    table: Input<WorkloadKey, ShadowEntry>,
    decisions: Input<WorkloadKey, AllocationDecision>,
}

/// Simulator settings of the tests: 6 hosts of 8 cores and 32 GiB.
pub const SIM_ENV: &[(&str, &str)] = &[
    ("UMBRA_SERVICE__HOSTS", "6"),
    ("UMBRA_SERVICE__HOST_CAPACITY__CPU_MILLICORES", "8000"),
    ("UMBRA_SERVICE__HOST_CAPACITY__MEMORY_BYTES", "34359738368"),
    (
        "UMBRA_SERVICE__HOST_CAPACITY__DISK_IO_BYTES_PER_S",
        "500000000",
    ),
    ("UMBRA_SERVICE__SHADOW_READY_DELAY_MS", "200"),
    ("UMBRA_SERVICE__METRICS_INTERVAL_MS", "300"),
];
/// Shadow manager settings of the tests.
pub const MANAGER_ENV: &[(&str, &str)] = &[
    ("UMBRA_SERVICE__RECONCILE_INTERVAL_MS", "200"),
    ("UMBRA_SERVICE__COMMAND_TIMEOUT_MS", "1500"),
];

fn env(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, x)| (k.as_str(), x.as_str())).collect()
}

impl Pipeline {
    /// Starts the simulator, ingest and the shadow manager on a fresh prefix.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`Pipeline::start`] with extra environment for every service (e.g. a trace clock).
    pub async fn start_with(common: &[(&str, &str)]) -> anyhow::Result<Self> {
        let stack = Stack::connect().await?;
        let prefix = stack.fresh_prefix().await?;
        let with = |own: &[(&'static str, &'static str)]| -> Vec<(String, String)> {
            own.iter()
                .chain(common.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let (sim_env, ingest_env, manager_env) = (with(SIM_ENV), with(&[]), with(MANAGER_ENV));
        let mut sim = Service::start(&stack, "fleet-sim", &prefix, &env(&sim_env))?;
        let mut ingest = Service::start(&stack, "ingest", &prefix, &env(&ingest_env))?;
        let mut manager = Service::start(&stack, "shadow-manager", &prefix, &env(&manager_env))?;
        for s in [&mut sim, &mut ingest, &mut manager] {
            s.wait_ready(Duration::from_secs(150)).await?;
        }
        let table = Input::new(
            stack.registry.clone(),
            format!("{prefix}umbra.shadow.table"),
        )
        .await?;
        let decisions = Input::new(
            stack.registry.clone(),
            format!("{prefix}umbra.allocation.decisions"),
        )
        .await?;
        Ok(Self {
            stack,
            prefix,
            sim,
            manager,
            ingest,
            interceptors: Vec::new(),
            table,
            decisions,
        })
    }

    /// Starts one more interceptor and waits until it is ready.
    pub async fn add_interceptor(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut s = Service::start(&self.stack, "interceptor", &self.prefix, env)?;
        s.wait_ready(Duration::from_secs(150)).await?;
        self.interceptors.push(s);
        Ok(())
    }

    /// Starts another service of the pipeline (e.g. `rebalancer`) and waits until it is ready.
    pub async fn start_service(&self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Service> {
        let mut s = Service::start(&self.stack, name, &self.prefix, env)?;
        s.wait_ready(Duration::from_secs(150)).await?;
        Ok(s)
    }

    /// Sends fleet commands straight to the fleet (load from outside umbra).
    pub async fn fleet_commands(&self, cmds: &[FleetCommand]) -> anyhow::Result<()> {
        let out: Output<HostKey, FleetCommand> = Output::new(
            self.stack.registry.clone(),
            format!("{}umbra.fleet.commands", self.prefix),
        )
        .await?;
        let producer = self.stack.producer()?;
        for c in cmds {
            let key = HostKey {
                host_id: c.host_id.clone(),
            };
            send(&producer, &out.record(&key, c)?, Default::default()).await?;
        }
        Ok(())
    }

    /// Produces workload requests.
    pub async fn requests(&self, reqs: &[WorkloadRequest]) -> anyhow::Result<()> {
        let out: Output<WorkloadKey, WorkloadRequest> = Output::new(
            self.stack.registry.clone(),
            format!("{}umbra.workload.requests", self.prefix),
        )
        .await?;
        let producer = self.stack.producer()?;
        let sends = reqs.iter().map(|r| {
            let emit = out.record(
                &WorkloadKey {
                    workload_id: r.workload_id.clone(),
                },
                r,
            );
            let producer = producer.clone();
            async move { send(&producer, &emit?, Default::default()).await }
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }

    /// Every decision on the decisions topic so far, in topic order per partition.
    pub async fn decisions_now(&self) -> anyhow::Result<Vec<AllocationDecision>> {
        let raws = self
            .stack
            .read_until(self.decisions.topic(), Duration::from_millis(800), |_| {
                false
            })
            .await?;
        let mut out = Vec::new();
        for r in raws {
            if let Some(v) = r.value {
                out.push(self.decisions.decode_value(&v).await?);
            }
        }
        Ok(out)
    }

    /// Waits until the decisions satisfy `ok`.
    pub async fn decisions_until(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&[AllocationDecision]) -> bool,
    ) -> anyhow::Result<Vec<AllocationDecision>> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.decisions_now().await?;
            if ok(&d) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.interceptors.iter().map(Service::log_text).collect();
                bail!("decisions never {what} within {timeout:?}: {} decisions\ninterceptor logs:\n{}", d.len(), logs.join("\n----\n"));
            }
        }
    }

    /// Produces forecasts.
    pub async fn forecasts(&self, fcs: &[DemandForecast]) -> anyhow::Result<()> {
        let out: Output<WorkloadKey, DemandForecast> = Output::new(
            self.stack.registry.clone(),
            format!("{}umbra.forecasts", self.prefix),
        )
        .await?;
        let producer = self.stack.producer()?;
        for f in fcs {
            let key = WorkloadKey {
                workload_id: f.workload_id.clone(),
            };
            send(&producer, &out.record(&key, f)?, Default::default()).await?;
        }
        Ok(())
    }

    /// The shadow table as its topic holds it now.
    pub async fn table_now(&self) -> anyhow::Result<BTreeMap<String, ShadowEntry>> {
        let raws = self
            .stack
            .read_until(self.table.topic(), Duration::from_millis(800), |_| false)
            .await?;
        let mut t = BTreeMap::new();
        for r in raws {
            let Some(k) = r.key else {
                bail!("null key in the shadow table")
            };
            let id = self.table.decode_key(&k).await?.workload_id;
            match r.value {
                None => {
                    t.remove(&id);
                }
                Some(v) => {
                    let e = self.table.decode_value(&v).await?;
                    if let Some(old) = t.get(&id) {
                        let old: &ShadowEntry = old;
                        assert!(
                            e.version > old.version,
                            "versions only grow: {} then {}",
                            old.version,
                            e.version
                        );
                    }
                    t.insert(id, e);
                }
            }
        }
        Ok(t)
    }

    /// Waits until the table satisfies `ok`.
    pub async fn table_until(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&BTreeMap<String, ShadowEntry>) -> bool,
    ) -> anyhow::Result<BTreeMap<String, ShadowEntry>> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.table_now().await?;
            if ok(&t) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!(
                    "table never {what} within {timeout:?}: {t:#?}\nmanager log:\n{}",
                    self.manager.log_text()
                );
            }
        }
    }

    /// The simulator's hosts.
    pub async fn fleet(&self) -> anyhow::Result<BTreeMap<String, HostView>> {
        Ok(reqwest::get(format!("{}/fleet", self.sim.http))
            .await?
            .json()
            .await?)
    }

    /// Injects a fault into the simulator.
    pub async fn fault(&self, body: serde_json::Value) -> anyhow::Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}/faults", self.sim.http))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("fault {body} refused: {}", r.text().await?);
        }
        Ok(())
    }
}
