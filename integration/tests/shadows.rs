//! The shadow manager and the fleet simulator through the real broker and registry:
//! forecasts in → shadows created on hosts → table rows ready with ranked hosts; failures
//! replaced; an unhealthy host loses its rank; a SIGKILL mid-stream loses and duplicates
//! nothing; lost and duplicated fleet commands are survived.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use umbra_fleet::HostView;
use umbra_integration::{Service, Stack};
use umbra_schemas::*;
use umbra_stream::processor::{send, Input, Output};

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
fn forecast(w: &str, cpu: f64, mem_gib: f64) -> DemandForecast {
    let now = umbra_stream::now_millis() / 300_000 * 300_000;
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

struct Pipeline {
    stack: Stack,
    prefix: String,
    sim: Service,
    manager: Service,
    _ingest: Service,
    table: Input<WorkloadKey, ShadowEntry>,
}

const SIM_ENV: &[(&str, &str)] = &[
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
const MANAGER_ENV: &[(&str, &str)] = &[
    ("UMBRA_SERVICE__RECONCILE_INTERVAL_MS", "200"),
    ("UMBRA_SERVICE__COMMAND_TIMEOUT_MS", "1500"),
];

impl Pipeline {
    async fn start() -> anyhow::Result<Self> {
        let stack = Stack::connect().await?;
        let prefix = stack.fresh_prefix().await?;
        let mut sim = Service::start(&stack, "fleet-sim", &prefix, SIM_ENV)?;
        let mut ingest = Service::start(&stack, "ingest", &prefix, &[])?;
        let mut manager = Service::start(&stack, "shadow-manager", &prefix, MANAGER_ENV)?;
        for s in [&mut sim, &mut ingest, &mut manager] {
            s.wait_ready(Duration::from_secs(60)).await?;
        }
        let table = Input::new(
            stack.registry.clone(),
            format!("{prefix}umbra.shadow.table"),
        )
        .await?;
        Ok(Self {
            stack,
            prefix,
            sim,
            manager,
            _ingest: ingest,
            table,
        })
    }

    async fn forecasts(&self, fcs: &[DemandForecast]) -> anyhow::Result<()> {
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
    async fn table_now(&self) -> anyhow::Result<BTreeMap<String, ShadowEntry>> {
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
    async fn table_until(
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

    async fn fleet(&self) -> anyhow::Result<BTreeMap<String, HostView>> {
        Ok(reqwest::get(format!("{}/fleet", self.sim.http))
            .await?
            .json()
            .await?)
    }

    async fn fault(&self, body: serde_json::Value) -> anyhow::Result<()> {
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

fn ready_with_k(e: &ShadowEntry, k: usize) -> bool {
    let hosts: HashSet<&str> = e.candidates.iter().map(|c| c.host_id.as_str()).collect();
    e.state == ShadowState::Active
        && e.candidates.len() == k
        && hosts.len() == k
        && e.candidates
            .iter()
            .all(|c| c.status == ShadowStatus::Healthy)
        && e.host_ranking
            == e.candidates
                .iter()
                .map(|c| c.host_id.clone())
                .collect::<Vec<_>>()
        && e.candidates
            .iter()
            .enumerate()
            .all(|(i, c)| c.rank == i as i32)
}

fn all_ready(t: &BTreeMap<String, ShadowEntry>, n: usize) -> bool {
    t.len() == n && t.values().all(|e| ready_with_k(e, 3))
}

fn assert_within_capacity(fleet: &BTreeMap<String, HostView>) {
    for (h, v) in fleet {
        assert!(
            v.committed.fits_within(&v.capacity),
            "host {h} over capacity: {v:?}"
        );
    }
}

fn shadows_in(fleet: &BTreeMap<String, HostView>) -> usize {
    fleet.values().map(|v| v.shadows.len()).sum()
}

#[tokio::test]
async fn forecasts_become_ranked_ready_shadows_failures_are_replaced_and_sick_hosts_drop(
) -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    p.forecasts(&[
        forecast("w-a", 1_500.0, 2.0),
        forecast("w-b", 2_000.0, 4.0),
        forecast("w-c", 500.0, 1.0),
    ])
    .await?;
    let t = p
        .table_until(
            "ready with 3 healthy ranked hosts each",
            Duration::from_secs(30),
            |t| all_ready(t, 3),
        )
        .await?;
    // Sized from the 80% upper bound, rounded up to the granularity.
    assert_eq!(t["w-a"].requirements.cpu_millicores, 1_500);
    assert_eq!(t["w-b"].requirements.memory_bytes, 4 << 30);
    let fleet = p.fleet().await?;
    assert_within_capacity(&fleet);
    assert_eq!(shadows_in(&fleet), 9, "{fleet:#?}");

    // The best shadow of w-a fails its health check: it is replaced on another host.
    let victim = t["w-a"].candidates[0].clone();
    p.fault(serde_json::json!({"fault": "fail_shadow", "shadow_id": victim.shadow_id}))
        .await?;
    let t = p
        .table_until(
            "w-a replaced its failed shadow",
            Duration::from_secs(30),
            |t| {
                t.get("w-a").is_some_and(|e| {
                    ready_with_k(e, 3)
                        && e.candidates
                            .iter()
                            .all(|c| c.shadow_id != victim.shadow_id && c.host_id != victim.host_id)
                })
            },
        )
        .await?;
    assert!(t["w-a"].version > 0);

    // The host of w-b's best shadow turns unhealthy: it drops to the last rank.
    let sick = t["w-b"].candidates[0].host_id.clone();
    p.fault(serde_json::json!({"fault": "host_health", "host_id": sick, "healthy": false}))
        .await?;
    p.table_until(
        "w-b ranked its sick host last",
        Duration::from_secs(30),
        |t| {
            t.get("w-b").is_some_and(|e| {
                e.host_ranking.last() == Some(&sick)
                    && e.candidates.last().is_some_and(|c| {
                        c.health_score < 0.2 && c.status == ShadowStatus::Unhealthy
                    })
            })
        },
    )
    .await?;
    let fleet = p.fleet().await?;
    assert_within_capacity(&fleet);
    assert_eq!(shadows_in(&fleet), 9, "replaced, not added: {fleet:#?}");
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_duplicates_nothing_and_overcommits_nothing(
) -> anyhow::Result<()> {
    let mut p = Pipeline::start().await?;
    let n = 30;
    let fcs: Vec<DemandForecast> = (0..n)
        .map(|i| forecast(&format!("w{i:02}"), 500.0, 1.0))
        .collect();
    p.forecasts(&fcs).await?;
    // Kill as soon as the manager has written part of the table.
    p.table_until("partly written", Duration::from_secs(30), |t| !t.is_empty())
        .await?;
    p.manager.signal("KILL")?;
    p.manager.wait_exit(Duration::from_secs(10)).await?;
    p.manager = Service::start(&p.stack, "shadow-manager", &p.prefix, MANAGER_ENV)?;
    p.manager.wait_ready(Duration::from_secs(60)).await?;
    p.table_until("complete after the restart", Duration::from_secs(60), |t| {
        all_ready(t, n)
    })
    .await?;
    // Orphans of the crash (commands acknowledged before their row) are released; in the end
    // the fleet holds exactly K shadows per workload.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fleet = p.fleet().await?;
        assert_within_capacity(&fleet);
        let t = p.table_now().await?;
        let referenced: HashSet<String> = t
            .values()
            .flat_map(|e| e.candidates.iter().map(|c| c.shadow_id.clone()))
            .collect();
        let held: HashSet<String> = fleet
            .values()
            .flat_map(|v| v.shadows.iter().cloned())
            .collect();
        if held == referenced && held.len() == 3 * n {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "fleet holds {} shadows, table references {}: {:?}",
                held.len(),
                referenced.len(),
                held.symmetric_difference(&referenced).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

#[tokio::test]
async fn lost_and_duplicated_fleet_commands_are_survived() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    p.fault(serde_json::json!({"fault": "lose_commands", "count": 3}))
        .await?;
    p.fault(serde_json::json!({"fault": "duplicate_commands", "count": 3}))
        .await?;
    let fcs: Vec<DemandForecast> = (0..4)
        .map(|i| forecast(&format!("d{i}"), 1_000.0, 2.0))
        .collect();
    p.forecasts(&fcs).await?;
    p.table_until(
        "ready despite lost commands",
        Duration::from_secs(60),
        |t| all_ready(t, 4),
    )
    .await?;
    let fleet = p.fleet().await?;
    assert_within_capacity(&fleet);
    assert_eq!(shadows_in(&fleet), 12, "{fleet:#?}");
    let lost = p
        .sim
        .metric("umbra_fleet_commands_total{outcome=\"lost\"")
        .await?;
    let dup = p
        .sim
        .metric("umbra_fleet_commands_total{outcome=\"duplicate\"")
        .await?;
    assert_eq!(lost, Some(3.0));
    assert!(dup.is_some_and(|d| d >= 3.0), "duplicates seen: {dup:?}");
    Ok(())
}
