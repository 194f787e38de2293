//! Trace replay evaluation (DESIGN.md §4): how workload requests come from a usage trace, and
//! the baseline policies umbra's pipeline is compared with on the same requests.
//!
//! - [`scale_events`]: each workload is served by replicas of a fixed size (per workload, from
//!   its history: [`ReplicaModel::sized_from`]; the Bitbrains VMs are small, so an absolute size
//!   would almost never scale them); when CPU use needs one more replica than are running, a
//!   request for one replica is made; when it needs fewer for a whole stabilization window (the
//!   Kubernetes HPA's five minutes), replicas are released.
//! - Baselines, pure and deterministic: [`reactive`] (no reservations: every request waits the
//!   start-up delay), [`static_headroom`] (balloon-pod style: a fixed pool of replica-sized
//!   placeholders, refilled one start-up delay after each use), [`oracle`] (knows every future
//!   request and reserves exactly when it is needed), and the two sizings of static headroom the
//!   comparison calls for ([`static_equal_reserve`], [`static_equal_hits`]).

pub mod report;

use serde::{Deserialize, Serialize};
use umbra_forecasting::data::{bitbrains_rows, vm_id, BitbrainsRow};

/// Usage of one workload on a regular grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Workload id.
    pub id: String,
    /// CPU use per step, millicores (NaN: no sample).
    pub cpu_millicores: Vec<f64>,
    /// Memory use per step, bytes (NaN: no sample).
    pub memory_bytes: Vec<f64>,
}

/// A Bitbrains-format VM on a regular grid of `step_s` seconds from `start_s` (Unix seconds):
/// CPU in millicores of the VM's cores (MHz over MHz per core), memory in bytes; a step
/// without a sample is NaN, several samples in one step are averaged.
pub fn workload_from_rows(
    id: &str,
    rows: &[BitbrainsRow],
    start_s: i64,
    step_s: i64,
    steps: usize,
) -> Workload {
    let mut sums = vec![(0.0f64, 0.0f64, 0u32); steps];
    for r in rows {
        if r.time_s < start_s {
            continue;
        }
        let k = ((r.time_s - start_s) / step_s) as usize;
        if k >= steps {
            break;
        }
        let per_core = if r.cores > 0.0 {
            r.cpu_capacity_mhz / r.cores
        } else {
            0.0
        };
        let cpu = if per_core > 0.0 {
            r.cpu_mhz / per_core * 1000.0
        } else {
            0.0
        };
        sums[k].0 += cpu.max(0.0);
        sums[k].1 += (r.memory_kb * 1024.0).max(0.0);
        sums[k].2 += 1;
    }
    let avg = |s: f64, n: u32| if n == 0 { f64::NAN } else { s / f64::from(n) };
    Workload {
        id: id.to_string(),
        cpu_millicores: sums.iter().map(|(c, _, n)| avg(*c, *n)).collect(),
        memory_bytes: sums.iter().map(|(_, m, n)| avg(*m, *n)).collect(),
    }
}

/// The first `vms` VMs of a Bitbrains-format folder, `days` days from `from_day` days after
/// each trace's start, on 5-minute steps.
pub fn workloads_from_dir(
    dir: &std::path::Path,
    vms: usize,
    from_day: f64,
    days: f64,
) -> Result<Vec<Workload>, umbra_forecasting::data::DataError> {
    let steps = (days * 288.0).round() as usize;
    let mut out = Vec::new();
    for f in umbra_forecasting::data::bitbrains_files(dir)?
        .iter()
        .take(vms)
    {
        let rows = bitbrains_rows(f)?;
        let start = rows[0].time_s.div_euclid(300) * 300 + (from_day * 86_400.0) as i64;
        out.push(workload_from_rows(&vm_id(f), &rows, start, 300, steps));
    }
    Ok(out)
}

/// How one workload is served: replicas of a fixed size, scaled on CPU like an HPA with a CPU
/// target; memory is what each replica requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplicaModel {
    /// CPU of one replica, millicores.
    pub cpu_millicores: f64,
    /// Memory one replica requests, bytes.
    pub memory_bytes: f64,
    /// Replicas are released only after usage needed fewer for this long, seconds.
    pub stabilization_s: i64,
}

impl Default for ReplicaModel {
    fn default() -> Self {
        Self {
            cpu_millicores: 1_000.0,
            memory_bytes: 4.0 * 1024.0 * 1024.0 * 1024.0,
            stabilization_s: 300,
        }
    }
}

impl ReplicaModel {
    /// Replicas needed for a CPU use (at least one).
    pub fn needed(&self, cpu: f64) -> u32 {
        if cpu.is_finite() && cpu > 0.0 && self.cpu_millicores > 0.0 {
            ((cpu / self.cpu_millicores).ceil() as u32).max(1)
        } else {
            1
        }
    }

    /// A replica size for a workload from its history: CPU at the `quantile` of its use (at
    /// least `min_cpu_millicores`), so that typical load runs on one or two replicas and bursts
    /// ask for more; memory at its median use.
    pub fn sized_from(
        history: &Workload,
        quantile: f64,
        min_cpu_millicores: f64,
        stabilization_s: i64,
    ) -> Self {
        let q = |v: &[f64], p: f64| {
            let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            if s.is_empty() {
                return 0.0;
            }
            s.sort_by(f64::total_cmp);
            s[((s.len() - 1) as f64 * p).round() as usize]
        };
        Self {
            cpu_millicores: q(&history.cpu_millicores, quantile).max(min_cpu_millicores),
            memory_bytes: q(&history.memory_bytes, 0.5),
            stabilization_s,
        }
    }
}

/// One replica more or less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A request for one more replica.
    Up,
    /// One replica released.
    Down,
}

/// A scaling event of one workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// When, seconds since the start of the replay.
    pub t_s: i64,
    /// Index of the workload.
    pub workload: usize,
    /// Up (a request) or down (a release).
    pub change: Change,
    /// CPU of the replica, millicores.
    pub cpu_millicores: f64,
    /// Memory of the replica, bytes.
    pub memory_bytes: f64,
}

/// The requests and releases a usage trace makes, in time order, with one replica model per
/// workload. The replicas running at the start are a given (no requests for them); a step
/// without a sample keeps the previous need.
pub fn scale_events(
    workloads: &[Workload],
    step_s: i64,
    models: &[ReplicaModel],
) -> Vec<ScaleEvent> {
    let mut out = Vec::new();
    for ((w, wl), m) in workloads.iter().enumerate().zip(models) {
        let mut running: Option<u32> = None;
        let mut below_since: Option<i64> = None;
        let event = |t_s: i64, change: Change| ScaleEvent {
            t_s,
            workload: w,
            change,
            cpu_millicores: m.cpu_millicores,
            memory_bytes: m.memory_bytes,
        };
        for (i, cpu) in wl.cpu_millicores.iter().enumerate() {
            if !cpu.is_finite() {
                continue;
            }
            let t = i as i64 * step_s;
            let need = m.needed(*cpu);
            let Some(run) = running else {
                running = Some(need);
                continue;
            };
            if need > run {
                out.extend((run..need).map(|_| event(t, Change::Up)));
                running = Some(need);
                below_since = None;
            } else if need < run {
                let since = *below_since.get_or_insert(t);
                if t - since >= m.stabilization_s {
                    out.extend((need..run).map(|_| event(t, Change::Down)));
                    running = Some(need);
                    below_since = None;
                }
            } else {
                below_since = None;
            }
        }
    }
    out.sort_by_key(|e| (e.t_s, e.workload, e.change == Change::Up));
    out
}

/// One policy's row of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyResult {
    /// Policy name (`reactive`, `static-equal-reserve`, `static-equal-hits`, `oracle`).
    pub policy: String,
    /// Requests (scale-ups).
    pub requests: usize,
    /// Requests placed at once on a reservation.
    pub hits: usize,
    /// hits / requests.
    pub hit_rate: f64,
    /// Median time from request to running, seconds.
    pub placement_delay_p50_s: f64,
    /// 99th percentile of the same.
    pub placement_delay_p99_s: f64,
    /// Reserved capacity no request used, core-hours.
    pub unclaimed_core_hours: f64,
    /// Reserved capacity no request used, GiB-hours.
    pub unclaimed_gib_hours: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn result(
    policy: &str,
    delays: &mut [f64],
    hits: usize,
    unclaimed_core_s: f64,
    unclaimed_gib_s: f64,
) -> PolicyResult {
    let requests = delays.len();
    PolicyResult {
        policy: policy.into(),
        requests,
        hits,
        hit_rate: if requests == 0 {
            0.0
        } else {
            hits as f64 / requests as f64
        },
        placement_delay_p50_s: percentile(delays, 0.5),
        placement_delay_p99_s: percentile(delays, 0.99),
        unclaimed_core_hours: unclaimed_core_s / 3600.0,
        unclaimed_gib_hours: unclaimed_gib_s / 3600.0,
    }
}

fn ups(events: &[ScaleEvent]) -> impl Iterator<Item = &ScaleEvent> {
    events.iter().filter(|e| e.change == Change::Up)
}

/// No reservations: every request waits the start-up delay.
pub fn reactive(events: &[ScaleEvent], startup_s: f64) -> PolicyResult {
    let mut delays: Vec<f64> = ups(events).map(|_| startup_s).collect();
    result("reactive", &mut delays, 0, 0.0, 0.0)
}

/// Knows every request in advance and has a reservation ready exactly when it comes: every
/// request a hit, nothing reserved unused.
pub fn oracle(events: &[ScaleEvent]) -> PolicyResult {
    let mut delays: Vec<f64> = ups(events).map(|_| 0.0).collect();
    let hits = delays.len();
    result("oracle", &mut delays, hits, 0.0, 0.0)
}

/// A placeholder of fixed size (balloon-pod style headroom).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Placeholder {
    /// CPU, millicores.
    pub cpu_millicores: f64,
    /// Memory, bytes.
    pub memory_bytes: f64,
}

/// Balloon-pod style headroom: `slots` placeholders of one size over `duration_s`. A request
/// whose replica fits a placeholder takes a free one (a hit, placed at once) and the slot is
/// refilled one start-up delay later; otherwise it waits the start-up delay. Unclaimed capacity
/// is every placeholder ready and unused, over time.
pub fn static_headroom(
    policy: &str,
    events: &[ScaleEvent],
    size: Placeholder,
    slots: usize,
    startup_s: f64,
    duration_s: i64,
) -> PolicyResult {
    let mut ready_at: Vec<f64> = vec![0.0; slots];
    let mut delays = Vec::new();
    let mut hits = 0usize;
    let mut busy_s = 0.0;
    for e in ups(events) {
        let t = e.t_s as f64;
        let fits = e.cpu_millicores <= size.cpu_millicores && e.memory_bytes <= size.memory_bytes;
        let free = (0..slots)
            .filter(|k| ready_at[*k] <= t)
            .min_by(|a, b| ready_at[*a].total_cmp(&ready_at[*b]));
        match free.filter(|_| fits) {
            Some(k) => {
                hits += 1;
                delays.push(0.0);
                // The slot restarts: not ready, so not counted as reserved, until refilled.
                let refill = t + startup_s;
                busy_s += refill.min(duration_s as f64) - t;
                ready_at[k] = refill;
            }
            None => delays.push(startup_s),
        }
    }
    let idle_slot_s = (slots as f64 * duration_s as f64 - busy_s).max(0.0);
    result(
        policy,
        &mut delays,
        hits,
        idle_slot_s * size.cpu_millicores / 1000.0,
        idle_slot_s * size.memory_bytes / GIB,
    )
}

/// Static headroom sized to reserve, on average, `avg_reserved_cores` (umbra's average).
pub fn static_equal_reserve(
    events: &[ScaleEvent],
    size: Placeholder,
    avg_reserved_cores: f64,
    startup_s: f64,
    duration_s: i64,
) -> PolicyResult {
    let slots = (avg_reserved_cores / (size.cpu_millicores / 1000.0))
        .round()
        .max(0.0) as usize;
    static_headroom(
        "static-equal-reserve",
        events,
        size,
        slots,
        startup_s,
        duration_s,
    )
}

/// Static headroom with the fewest placeholders that reach `hit_rate` (umbra's), up to
/// `max_slots` (the best it can do when even that falls short).
pub fn static_equal_hits(
    events: &[ScaleEvent],
    size: Placeholder,
    hit_rate: f64,
    startup_s: f64,
    duration_s: i64,
    max_slots: usize,
) -> PolicyResult {
    // More placeholders never mean fewer hits: search the smallest pool that reaches the rate.
    let (mut lo, mut hi) = (0usize, max_slots);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if static_headroom("", events, size, mid, startup_s, duration_s).hit_rate >= hit_rate {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    static_headroom("static-equal-hits", events, size, lo, startup_s, duration_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wl(cpu: &[f64]) -> Workload {
        Workload {
            id: "w".into(),
            cpu_millicores: cpu.to_vec(),
            memory_bytes: vec![0.0; cpu.len()],
        }
    }

    fn core() -> ReplicaModel {
        ReplicaModel {
            cpu_millicores: 1_000.0,
            memory_bytes: GIB,
            stabilization_s: 600,
        }
    }

    const ONE_CORE: Placeholder = Placeholder {
        cpu_millicores: 1_000.0,
        memory_bytes: GIB,
    };

    #[test]
    fn requests_follow_usage_and_releases_wait_for_the_window() {
        // 1 replica, then 3 (two requests), dips to 1 for 5 min (no release), then for 10 min.
        let cpu = [500.0, 2_500.0, 2_500.0, 900.0, 2_400.0, 900.0, 900.0, 900.0];
        let ev = scale_events(&[wl(&cpu)], 300, &[core()]);
        let ups: Vec<i64> = ev
            .iter()
            .filter(|e| e.change == Change::Up)
            .map(|e| e.t_s)
            .collect();
        let downs: Vec<i64> = ev
            .iter()
            .filter(|e| e.change == Change::Down)
            .map(|e| e.t_s)
            .collect();
        assert_eq!(ups, vec![300, 300]);
        assert_eq!(
            downs,
            vec![2_100, 2_100],
            "released after 600 s below, not at the 300 s dip"
        );
    }

    #[test]
    fn baselines_on_a_known_sequence() {
        let ev: Vec<ScaleEvent> = [0, 10, 20, 1_000]
            .iter()
            .map(|t| ScaleEvent {
                t_s: *t,
                workload: 0,
                change: Change::Up,
                cpu_millicores: 1_000.0,
                memory_bytes: GIB,
            })
            .collect();
        let r = reactive(&ev, 30.0);
        assert_eq!((r.requests, r.hits, r.placement_delay_p50_s), (4, 0, 30.0));
        let o = oracle(&ev);
        assert_eq!((o.hit_rate, o.unclaimed_core_hours), (1.0, 0.0));
        // Two placeholders: the third request at t=20 finds both refilling (ready at 30, 40).
        let s = static_headroom("s", &ev, ONE_CORE, 2, 30.0, 3_600);
        assert_eq!(s.hits, 3);
        assert_eq!(s.placement_delay_p99_s, 30.0);
        // 2 slots × 3600 s reserved, 3 × 30 s in use, of one core and one GiB each.
        assert!((s.unclaimed_core_hours - (7_200.0 - 90.0) / 3_600.0).abs() < 1e-9);
        assert!((s.unclaimed_gib_hours - s.unclaimed_core_hours).abs() < 1e-9);
        // Placeholders too small for the replica never hit.
        let small = Placeholder {
            cpu_millicores: 500.0,
            memory_bytes: GIB,
        };
        assert_eq!(static_headroom("s", &ev, small, 8, 30.0, 3_600).hits, 0);
        let eq = static_equal_hits(&ev, ONE_CORE, 1.0, 30.0, 3_600, 64);
        assert_eq!((eq.policy.as_str(), eq.hits), ("static-equal-hits", 4));
        assert_eq!(
            static_equal_reserve(&ev, ONE_CORE, 2.0, 30.0, 3_600).hits,
            3
        );
    }

    #[test]
    fn real_trace_requests_and_baselines() {
        let dir = umbra_forecasting::data::shared_data_dir().join("bitbrains-rnd");
        let history = workloads_from_dir(&dir, 5, 0.0, 14.0).expect("the shared data");
        let live = workloads_from_dir(&dir, 5, 14.0, 7.0).expect("the shared data");
        assert!(live.iter().all(|x| x.cpu_millicores.len() == 7 * 288));
        let models: Vec<ReplicaModel> = history
            .iter()
            .map(|h| ReplicaModel::sized_from(h, 0.5, 10.0, 300))
            .collect();
        let ev = scale_events(&live, 300, &models);
        let n = ev.iter().filter(|e| e.change == Change::Up).count();
        assert!(n > 50, "a week of five real VMs asks for replicas: {n}");
        let largest = models.iter().fold(
            Placeholder {
                cpu_millicores: 0.0,
                memory_bytes: 0.0,
            },
            |p, m| Placeholder {
                cpu_millicores: p.cpu_millicores.max(m.cpu_millicores),
                memory_bytes: p.memory_bytes.max(m.memory_bytes),
            },
        );
        assert_eq!(
            (reactive(&ev, 30.0).hit_rate, oracle(&ev).hit_rate),
            (0.0, 1.0)
        );
        let s = static_equal_hits(&ev, largest, 0.9, 30.0, 7 * 86_400, 1_024);
        assert!(s.hit_rate >= 0.9 && s.unclaimed_core_hours > 0.0, "{s:?}");
    }

    proptest! {
        /// Running replicas never go below one; more placeholders never mean fewer hits.
        #[test]
        fn events_and_headroom_are_consistent(cpu in proptest::collection::vec(0.0f64..8_000.0, 2..200), slots in 0usize..6) {
            let m = ReplicaModel { stabilization_s: 900, ..core() };
            let ev = scale_events(&[wl(&cpu)], 300, &[m]);
            let mut run = m.needed(cpu[0]) as i64;
            for e in &ev {
                run += if e.change == Change::Up { 1 } else { -1 };
                prop_assert!(run >= 1);
            }
            let a = static_headroom("a", &ev, ONE_CORE, slots, 30.0, 300 * cpu.len() as i64);
            let b = static_headroom("b", &ev, ONE_CORE, slots + 1, 30.0, 300 * cpu.len() as i64);
            prop_assert!(b.hits >= a.hits);
            prop_assert!(a.unclaimed_core_hours >= 0.0);
        }
    }
}
