//! Trace replay evaluation (docs/demo.md, docs/scale-up.md): how workload requests come from a usage trace, and
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

pub mod online;
pub mod pipeline;
pub mod pool;
pub mod report;
pub mod scaleup;
pub mod steps;
pub mod sweep;

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

/// Replica CPU: this quantile of a VM's history (see [`ReplicaModel::sized_from`]).
pub const REPLICA_QUANTILE: f64 = 0.7;
/// Smallest replica, millicores: tiny VMs would otherwise flap on noise.
pub const MIN_REPLICA_MILLICORES: f64 = 200.0;
/// Replicas a VM's busiest hours need at most (an HPA's maxReplicas).
pub const MAX_REPLICAS: f64 = 8.0;

/// The replay's replica model of each workload from its history: a replica covers most of the
/// history ([`REPLICA_QUANTILE`], at least [`MIN_REPLICA_MILLICORES`]) and the busiest hours
/// need at most [`MAX_REPLICAS`] of them, so that an idle VM with rare bursts does not ask for
/// dozens of tiny replicas at once. Sizes are whole millicores and bytes.
pub fn replay_models(history: &[Workload]) -> Vec<ReplicaModel> {
    history
        .iter()
        .map(|h| {
            let mut m = ReplicaModel::sized_from(h, REPLICA_QUANTILE, MIN_REPLICA_MILLICORES, 300);
            let peak = ReplicaModel::sized_from(h, 0.999, 0.0, 300).cpu_millicores;
            // Whole millicores and bytes: the services see replica sizes as the integers of
            // the wire types, and the offline cores must size slots and classes as they do.
            m.cpu_millicores = m.cpu_millicores.max((peak / MAX_REPLICAS).ceil()).round();
            m.memory_bytes = m.memory_bytes.round();
            m
        })
        .collect()
}

/// History and live part of a seeded choice of VMs from a Bitbrains-format folder.
#[derive(Debug, Clone)]
pub struct TracePlan {
    /// Workload ids (VM names), in name order.
    pub ids: Vec<String>,
    /// The history, on 5-minute steps.
    pub history: Vec<Workload>,
    /// The live part that follows it.
    pub live: Vec<Workload>,
    /// Replica model per workload, from its history.
    pub models: Vec<ReplicaModel>,
    /// Unix seconds of the history's first step.
    pub origin_s: i64,
    /// Unix seconds of the live part's first step.
    pub live_start_s: i64,
}

impl TracePlan {
    /// `vms` VMs of `dir` chosen by `seed` ([`choose_vms`]), `history_days` then
    /// `live_days` from `from_day` days after the earliest trace's start.
    pub fn load(
        dir: &std::path::Path,
        vms: usize,
        seed: u64,
        from_day: f64,
        history_days: f64,
        live_days: f64,
    ) -> Result<Self, umbra_forecasting::data::DataError> {
        let ChosenVms {
            origin_s,
            vms: rows,
        } = choose_vms(dir, vms, seed, from_day, history_days)?;
        let hist_steps = (history_days * 288.0).round() as usize;
        let live_steps = (live_days * 288.0).round() as usize;
        let live_start_s = origin_s + hist_steps as i64 * 300;
        let history: Vec<Workload> = rows
            .iter()
            .map(|(id, r)| workload_from_rows(id, r, origin_s, 300, hist_steps))
            .collect();
        let live = rows
            .iter()
            .map(|(id, r)| workload_from_rows(id, r, live_start_s, 300, live_steps))
            .collect();
        Ok(Self {
            ids: rows.into_iter().map(|(id, _)| id).collect(),
            models: replay_models(&history),
            history,
            live,
            origin_s,
            live_start_s,
        })
    }

    /// The history and the live part on the step grid, each with its own requests.
    pub fn step_traces(&self) -> (steps::StepTrace, steps::StepTrace) {
        (
            steps::StepTrace::new(&self.history, &self.models, 300, self.origin_s),
            steps::StepTrace::new(&self.live, &self.models, 300, self.live_start_s),
        )
    }
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
    /// Usage within this fraction of what the running replicas serve changes nothing (the
    /// HPA's default tolerance is 0.1), so that a workload running right at its replica size
    /// does not flap on noise.
    pub tolerance: f64,
}

impl Default for ReplicaModel {
    fn default() -> Self {
        Self {
            cpu_millicores: 1_000.0,
            memory_bytes: 4.0 * 1024.0 * 1024.0 * 1024.0,
            stabilization_s: 300,
            tolerance: 0.1,
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
            tolerance: 0.1,
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
            let Some(run) = running else {
                running = Some(m.needed(*cpu));
                continue;
            };
            // Within the tolerance of what the running replicas serve: no change.
            let ratio = cpu / (f64::from(run) * m.cpu_millicores);
            let need = if (ratio - 1.0).abs() <= m.tolerance {
                run
            } else {
                m.needed(*cpu)
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

/// The `p` quantile of `v` (nearest rank; sorts `v`), 0 when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// hits / requests, 0 with no request.
fn hit_rate(hits: usize, requests: usize) -> f64 {
    if requests == 0 {
        0.0
    } else {
        hits as f64 / requests as f64
    }
}

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
        hit_rate: hit_rate(hits, requests),
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

/// Every file of `files` in the order a replay takes them for `seed` (seed 0: by name): the
/// same seed gives the same order on any machine.
pub fn seeded_order(files: &[std::path::PathBuf], seed: u64) -> Vec<std::path::PathBuf> {
    let mut sorted: Vec<std::path::PathBuf> = files.to_vec();
    sorted.sort();
    if seed == 0 {
        return sorted;
    }
    // A seeded shuffle (splitmix64 keys), so that the choice does not depend on a library's
    // generator staying the same across versions.
    let key = |i: usize| {
        let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..sorted.len()).collect();
    idx.sort_by_key(|i| key(*i));
    idx.into_iter().map(|i| sorted[i].clone()).collect()
}

/// `vms` of `files`, chosen by `seed` (seed 0: the first `vms` by name), in name order: the
/// same seed gives the same set on any machine.
pub fn select_files(
    files: &[std::path::PathBuf],
    vms: usize,
    seed: u64,
) -> Vec<std::path::PathBuf> {
    let mut chosen = seeded_order(files, seed);
    chosen.truncate(vms);
    chosen.sort();
    chosen
}

/// The VMs a replay runs and the Unix second its history starts at.
#[derive(Debug, Clone)]
pub struct ChosenVms {
    /// Start of the history: the earliest first sample of the first `vms` files in the seeded
    /// order, on the 5-minute grid, plus `from_day`.
    pub origin_s: i64,
    /// VM id and rows, in name order.
    pub vms: Vec<(String, Vec<BitbrainsRow>)>,
}

/// `vms` VMs of `dir` in the seeded order of [`seeded_order`], skipping every VM without a
/// sample in the `history_days` from the origin: umbra models a workload from its history
/// (the scale-up stage sizes and classes it when it begins), and a VM whose trace starts
/// later (a fifth of the Bitbrains VMs start two weeks or more into the trace) would be a
/// workload the offline core models from nothing while the pipeline does not model it at all.
pub fn choose_vms(
    dir: &std::path::Path,
    vms: usize,
    seed: u64,
    from_day: f64,
    history_days: f64,
) -> Result<ChosenVms, umbra_forecasting::data::DataError> {
    let files = umbra_forecasting::data::bitbrains_files(dir)?;
    let order = seeded_order(&files, seed);
    let mut read: Vec<(String, Vec<BitbrainsRow>)> = Vec::new();
    for f in order.iter().take(vms) {
        read.push((vm_id(f), bitbrains_rows(f)?));
    }
    let first = read
        .iter()
        .filter_map(|(_, r)| r.first().map(|x| x.time_s))
        .min()
        .unwrap_or(0);
    let origin_s = first.div_euclid(300) * 300 + (from_day * 86_400.0) as i64;
    let live_start_s = origin_s + (history_days * 288.0).round() as i64 * 300;
    let has_history = |r: &[BitbrainsRow]| {
        r.iter()
            .any(|x| x.time_s >= origin_s && x.time_s < live_start_s)
    };
    let mut chosen: Vec<(String, Vec<BitbrainsRow>)> =
        read.into_iter().filter(|(_, r)| has_history(r)).collect();
    for f in order.iter().skip(vms) {
        if chosen.len() >= vms {
            break;
        }
        let rows = bitbrains_rows(f)?;
        if has_history(&rows) {
            chosen.push((vm_id(f), rows));
        }
    }
    chosen.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(ChosenVms {
        origin_s,
        vms: chosen,
    })
}

/// CPU the workloads used, core-hours, on a grid of `step_s` seconds (missing steps count 0).
pub fn used_core_hours(workloads: &[Workload], step_s: i64) -> f64 {
    workloads
        .iter()
        .flat_map(|w| w.cpu_millicores.iter())
        .filter(|c| c.is_finite())
        .map(|c| c / 1000.0 * step_s as f64 / 3600.0)
        .sum()
}

/// Hosts of one size for the replay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FleetShape {
    /// Number of hosts.
    pub hosts: usize,
    /// CPU per host, millicores.
    pub cpu_millicores: f64,
    /// Memory per host, bytes.
    pub memory_bytes: f64,
}

impl FleetShape {
    /// Enough hosts of `cpu_millicores` × `memory_bytes` that the replicas the workloads need
    /// at their busiest commit about `target_fraction` of the fleet (at least 3 hosts).
    pub fn sized_for(
        live: &[Workload],
        models: &[ReplicaModel],
        cpu_millicores: f64,
        memory_bytes: f64,
        target_fraction: f64,
    ) -> Self {
        let (mut cpu, mut mem) = (0.0, 0.0);
        for (w, m) in live.iter().zip(models) {
            let peak = w
                .cpu_millicores
                .iter()
                .map(|c| m.needed(*c))
                .max()
                .unwrap_or(1);
            cpu += f64::from(peak) * m.cpu_millicores;
            mem += f64::from(peak) * m.memory_bytes;
        }
        let need = (cpu / (cpu_millicores * target_fraction))
            .max(mem / (memory_bytes * target_fraction))
            .ceil() as usize;
        Self {
            hosts: need.max(3),
            cpu_millicores,
            memory_bytes,
        }
    }
}

/// Where replicas run when every request waits for standard allocation (the host with the
/// most free CPU that fits; releases from the host holding the most of the workload), and
/// what that costs: minutes any host's CPU use exceeded its capacity (a replica uses its
/// workload's CPU divided evenly over its replicas), and host CPU utilization per step.
/// The baselines share it: placeholders and reservations use no CPU, so they move nothing.
pub fn standard_placement_overload(
    live: &[Workload],
    models: &[ReplicaModel],
    events: &[ScaleEvent],
    fleet: &FleetShape,
    step_s: i64,
) -> (f64, Vec<Vec<f64>>) {
    let n = fleet.hosts;
    // replicas[w][h]: replicas of workload w on host h.
    let mut replicas = vec![vec![0u32; n]; live.len()];
    let mut committed = vec![(0.0f64, 0.0f64); n];
    let place = |w: usize, replicas: &mut Vec<Vec<u32>>, committed: &mut Vec<(f64, f64)>| {
        let m = &models[w];
        let best = (0..n)
            .filter(|h| {
                committed[*h].0 + m.cpu_millicores <= fleet.cpu_millicores
                    && committed[*h].1 + m.memory_bytes <= fleet.memory_bytes
            })
            .max_by(|a, b| {
                (fleet.cpu_millicores - committed[*a].0)
                    .total_cmp(&(fleet.cpu_millicores - committed[*b].0))
                    .then(b.cmp(a))
            });
        if let Some(h) = best {
            replicas[w][h] += 1;
            committed[h].0 += m.cpu_millicores;
            committed[h].1 += m.memory_bytes;
        }
    };
    for (w, wl) in live.iter().enumerate() {
        let first = wl.cpu_millicores.iter().find(|c| c.is_finite()).copied();
        for _ in 0..models[w].needed(first.unwrap_or(0.0)) {
            place(w, &mut replicas, &mut committed);
        }
    }
    let steps = live
        .iter()
        .map(|w| w.cpu_millicores.len())
        .max()
        .unwrap_or(0);
    let mut next = 0usize;
    let mut overload_steps = 0usize;
    let mut util = vec![Vec::with_capacity(steps); n];
    for i in 0..steps {
        let t = i as i64 * step_s;
        while next < events.len() && events[next].t_s <= t {
            let e = events[next];
            next += 1;
            match e.change {
                Change::Up => place(e.workload, &mut replicas, &mut committed),
                Change::Down => {
                    if let Some(h) = (0..n)
                        .filter(|h| replicas[e.workload][*h] > 0)
                        .max_by_key(|h| replicas[e.workload][*h])
                    {
                        replicas[e.workload][h] -= 1;
                        committed[h].0 -= models[e.workload].cpu_millicores;
                        committed[h].1 -= models[e.workload].memory_bytes;
                    }
                }
            }
        }
        let mut used = vec![0.0f64; n];
        for (w, wl) in live.iter().enumerate() {
            let total: u32 = replicas[w].iter().sum();
            let cpu = wl.cpu_millicores.get(i).copied().unwrap_or(f64::NAN);
            if total == 0 || !cpu.is_finite() {
                continue;
            }
            for h in 0..n {
                used[h] += cpu * f64::from(replicas[w][h]) / f64::from(total);
            }
        }
        if used.iter().any(|u| *u > fleet.cpu_millicores) {
            overload_steps += 1;
        }
        for h in 0..n {
            util[h].push(used[h] / fleet.cpu_millicores);
        }
    }
    (overload_steps as f64 * step_s as f64 / 60.0, util)
}

/// Forecast accuracy as the pipeline lived it: for each workload and step, the forecast
/// published most recently before that step (the one the shadow manager was acting on).
#[derive(Debug, Clone, Default)]
pub struct ForecastLog {
    /// Per workload: step time (ms) → (mean, lower 80%, upper 80%) CPU, millicores.
    points: std::collections::HashMap<String, std::collections::BTreeMap<i64, (f64, f64, f64)>>,
}

impl ForecastLog {
    /// Records one forecast's CPU points at or after its generation time, finest horizon
    /// first; a later forecast replaces what an earlier one said about the same steps.
    pub fn record(
        &mut self,
        workload: &str,
        generated_at: i64,
        points: impl Iterator<Item = (i64, f64, f64, f64)>,
    ) {
        let m = self.points.entry(workload.to_string()).or_default();
        for (t, mean, lo, hi) in points {
            if t >= generated_at {
                m.insert(t, (mean, lo, hi));
            }
        }
    }

    /// What was forecast for `workload` at step time `t_ms`.
    pub fn at(&self, workload: &str, t_ms: i64) -> Option<(f64, f64, f64)> {
        self.points.get(workload)?.get(&t_ms).copied()
    }

    /// MASE (mean over workloads of the mean absolute error scaled by the in-sample
    /// seasonal-naive error of `history` with a season of `season` steps) and the share of
    /// actuals inside the 80% interval, over the `live` steps starting at `live_start_ms`.
    pub fn score(
        &self,
        history: &[Workload],
        live: &[Workload],
        live_start_ms: i64,
        step_s: i64,
        season: usize,
    ) -> (f64, f64) {
        let (mut mases, mut inside, mut total) = (Vec::new(), 0usize, 0usize);
        for (h, l) in history.iter().zip(live) {
            let hv = &h.cpu_millicores;
            let naive: Vec<f64> = (season..hv.len())
                .map(|i| (hv[i] - hv[i - season]).abs())
                .filter(|e| e.is_finite())
                .collect();
            let scale = naive.iter().sum::<f64>() / naive.len().max(1) as f64;
            let mut errs = Vec::new();
            for (i, actual) in l.cpu_millicores.iter().enumerate() {
                let t = live_start_ms + i as i64 * step_s * 1000;
                if let (true, Some((mean, lo, hi))) = (actual.is_finite(), self.at(&l.id, t)) {
                    errs.push((actual - mean).abs());
                    total += 1;
                    if *actual >= lo && *actual <= hi {
                        inside += 1;
                    }
                }
            }
            if !errs.is_empty() && scale > 0.0 {
                mases.push(errs.iter().sum::<f64>() / errs.len() as f64 / scale);
            }
        }
        let mase = if mases.is_empty() {
            f64::NAN
        } else {
            mases.iter().sum::<f64>() / mases.len() as f64
        };
        let coverage = if total == 0 {
            f64::NAN
        } else {
            inside as f64 / total as f64
        };
        (mase, coverage)
    }
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
            tolerance: 0.0,
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
        // With the HPA's 10% tolerance, 1050m on one 1000m replica changes nothing; 1150m does.
        let hpa = ReplicaModel {
            tolerance: 0.1,
            ..core()
        };
        let ev = scale_events(&[wl(&[900.0, 1_050.0, 1_000.0, 1_150.0])], 300, &[hpa]);
        assert_eq!(ev.iter().map(|e| e.t_s).collect::<Vec<_>>(), vec![900]);
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

    #[test]
    fn a_replay_takes_only_vms_with_a_history_and_still_as_many() {
        let dir = umbra_forecasting::data::shared_data_dir().join("bitbrains-rnd");
        let files = umbra_forecasting::data::bitbrains_files(&dir).unwrap();
        let (vms, history_days) = (50, 14.0);
        let c = choose_vms(&dir, vms, 1, 0.0, history_days).unwrap();
        assert_eq!(c.vms.len(), vms);
        let live_start = c.origin_s + (history_days * 86_400.0) as i64;
        for (id, rows) in &c.vms {
            assert!(
                rows.iter()
                    .any(|r| r.time_s >= c.origin_s && r.time_s < live_start),
                "{id} has no sample in the history"
            );
        }
        assert!(c.vms.windows(2).all(|w| w[0].0 < w[1].0), "in name order");
        // The plain seeded choice takes some VMs that start after the history (the data has
        // them), and those are what was replaced.
        let plain: Vec<String> = select_files(&files, vms, 1)
            .iter()
            .map(|f| vm_id(f))
            .collect();
        let kept: Vec<&String> = c.vms.iter().map(|(id, _)| id).collect();
        let dropped: Vec<&String> = plain.iter().filter(|id| !kept.contains(id)).collect();
        assert!(!dropped.is_empty());
        assert_eq!(
            choose_vms(&dir, vms, 1, 0.0, history_days)
                .unwrap()
                .origin_s,
            c.origin_s
        );
    }

    #[test]
    fn file_choice_is_fixed_by_the_seed() {
        let files: Vec<std::path::PathBuf> =
            (0..20).map(|i| format!("vm-{i:03}.csv").into()).collect();
        assert_eq!(select_files(&files, 3, 0), files[..3].to_vec());
        let a = select_files(&files, 5, 7);
        assert_eq!(a, select_files(&files, 5, 7));
        assert_ne!(a, select_files(&files, 5, 8));
        assert_eq!(a.len(), 5);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn standard_placement_counts_overload_from_use_not_reservations() {
        let m = ReplicaModel {
            cpu_millicores: 1_000.0,
            memory_bytes: 1.0,
            stabilization_s: 300,
            tolerance: 0.0,
        };
        // One host of 2 cores; one workload runs 1 replica, then uses 3 cores for two steps.
        let fleet = FleetShape {
            hosts: 1,
            cpu_millicores: 2_000.0,
            memory_bytes: 1e12,
        };
        let w = wl(&[900.0, 900.0, 3_000.0, 3_000.0, 900.0]);
        let ev = scale_events(std::slice::from_ref(&w), 300, &[m]);
        let (minutes, util) = standard_placement_overload(&[w], &[m], &ev, &fleet, 300);
        // The second replica fits, the third does not: 3 cores on a 2-core host twice.
        assert_eq!(minutes, 10.0);
        assert_eq!(util[0].len(), 5);
        assert!((util[0][2] - 1.5).abs() < 1e-9, "{util:?}");
        let sized = FleetShape::sized_for(&[wl(&[900.0, 3_000.0])], &[m], 2_000.0, 1e12, 0.5);
        assert_eq!(sized.hosts, 3);
    }

    #[test]
    fn forecast_scores_use_the_latest_forecast_before_each_step() {
        let step = 300i64;
        let history = wl(&[100.0, 200.0, 100.0, 200.0, 100.0, 200.0]);
        let live = wl(&[150.0, 150.0]);
        let mut log = ForecastLog::default();
        // An early forecast misses by 100; a later one for the second step by 0.
        log.record(
            "w",
            0,
            [(0, 250.0, 200.0, 300.0), (300_000, 250.0, 200.0, 300.0)].into_iter(),
        );
        log.record(
            "w",
            300_000,
            [(0, 0.0, 0.0, 0.0), (300_000, 150.0, 100.0, 200.0)].into_iter(),
        );
        assert_eq!(log.at("w", 0), Some((250.0, 200.0, 300.0)));
        let (mase, cover) = log.score(&[history], &[live], 0, step, 1);
        // Naive in-sample error 100; errors 100 and 0.
        assert!((mase - 0.5).abs() < 1e-9, "{mase}");
        assert!((cover - 0.5).abs() < 1e-9, "{cover}");
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
