//! Trace replay evaluation (DESIGN.md §4): how workload requests come from a usage trace, and
//! the baseline policies umbra's pipeline is compared with on the same requests.
//!
//! - [`scale_events`]: each workload is served by replicas of a fixed size; when usage needs
//!   one more replica than are running, a request for one replica is made; when it needs fewer
//!   for a whole stabilization window (the Kubernetes HPA's five minutes), replicas are
//!   released.
//! - Baselines, pure and deterministic: [`reactive`] (no reservations: every request waits the
//!   start-up delay), [`static_headroom`] (balloon-pod style: a fixed pool of replica-sized
//!   placeholders, refilled one start-up delay after each use), [`oracle`] (knows every future
//!   request and reserves exactly when it is needed), and the two sizings of static headroom the
//!   comparison calls for ([`static_equal_reserve`], [`static_equal_hits`]).

use serde::{Deserialize, Serialize};

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

/// How workloads are served: replicas of a fixed size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplicaModel {
    /// CPU of one replica, millicores.
    pub cpu_millicores: f64,
    /// Memory of one replica, bytes.
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
    /// Replicas needed for a usage (at least one).
    pub fn needed(&self, cpu: f64, memory: f64) -> u32 {
        let n = |v: f64, size: f64| {
            if v.is_finite() && v > 0.0 && size > 0.0 {
                (v / size).ceil() as u32
            } else {
                0
            }
        };
        n(cpu, self.cpu_millicores)
            .max(n(memory, self.memory_bytes))
            .max(1)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// When, seconds since the start of the replay.
    pub t_s: i64,
    /// Index of the workload.
    pub workload: usize,
    /// Up (a request) or down (a release).
    pub change: Change,
}

/// The requests and releases a usage trace makes, in time order. The replicas running at the
/// start are a given (no requests for them); a step without a sample keeps the previous need.
pub fn scale_events(workloads: &[Workload], step_s: i64, m: &ReplicaModel) -> Vec<ScaleEvent> {
    let mut out = Vec::new();
    for (w, wl) in workloads.iter().enumerate() {
        let steps = wl.cpu_millicores.len().min(wl.memory_bytes.len());
        let mut running: Option<u32> = None;
        let mut below_since: Option<i64> = None;
        for i in 0..steps {
            let (cpu, mem) = (wl.cpu_millicores[i], wl.memory_bytes[i]);
            if !cpu.is_finite() && !mem.is_finite() {
                continue;
            }
            let t = i as i64 * step_s;
            let need = m.needed(cpu, mem);
            let Some(run) = running else {
                running = Some(need);
                continue;
            };
            if need > run {
                out.extend((run..need).map(|_| ScaleEvent {
                    t_s: t,
                    workload: w,
                    change: Change::Up,
                }));
                running = Some(need);
                below_since = None;
            } else if need < run {
                let since = *below_since.get_or_insert(t);
                if t - since >= m.stabilization_s {
                    out.extend((need..run).map(|_| ScaleEvent {
                        t_s: t,
                        workload: w,
                        change: Change::Down,
                    }));
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

fn result(
    policy: &str,
    delays: &mut [f64],
    hits: usize,
    unclaimed_replica_s: f64,
    m: &ReplicaModel,
) -> PolicyResult {
    let requests = delays.len();
    let replica_hours = unclaimed_replica_s / 3600.0;
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
        unclaimed_core_hours: replica_hours * m.cpu_millicores / 1000.0,
        unclaimed_gib_hours: replica_hours * m.memory_bytes / (1024.0 * 1024.0 * 1024.0),
    }
}

/// No reservations: every request waits the start-up delay.
pub fn reactive(events: &[ScaleEvent], m: &ReplicaModel, startup_s: f64) -> PolicyResult {
    let mut delays: Vec<f64> = events
        .iter()
        .filter(|e| e.change == Change::Up)
        .map(|_| startup_s)
        .collect();
    result("reactive", &mut delays, 0, 0.0, m)
}

/// Knows every request in advance and has a reservation ready exactly when it comes: every
/// request a hit, nothing reserved unused.
pub fn oracle(events: &[ScaleEvent], m: &ReplicaModel) -> PolicyResult {
    let mut delays: Vec<f64> = events
        .iter()
        .filter(|e| e.change == Change::Up)
        .map(|_| 0.0)
        .collect();
    let hits = delays.len();
    result("oracle", &mut delays, hits, 0.0, m)
}

/// Balloon-pod style headroom: `slots` replica-sized placeholders over `duration_s`. A request
/// takes a free placeholder (a hit, placed at once) and its slot is refilled one start-up delay
/// later; with none free it waits the start-up delay. Unclaimed capacity is every placeholder
/// ready and unused, over time.
pub fn static_headroom(
    policy: &str,
    events: &[ScaleEvent],
    m: &ReplicaModel,
    slots: usize,
    startup_s: f64,
    duration_s: i64,
) -> PolicyResult {
    // Times at which each slot becomes ready again; all ready at the start.
    let mut ready_at: Vec<f64> = vec![0.0; slots];
    let mut delays = Vec::new();
    let mut hits = 0usize;
    let mut busy_s = 0.0;
    for e in events.iter().filter(|e| e.change == Change::Up) {
        let t = e.t_s as f64;
        if let Some(k) = (0..slots)
            .filter(|k| ready_at[*k] <= t)
            .min_by(|a, b| ready_at[*a].total_cmp(&ready_at[*b]))
        {
            hits += 1;
            delays.push(0.0);
            // The slot is refilled: not ready (not counted as reserved) while it restarts.
            let refill = t + startup_s;
            busy_s += refill.min(duration_s as f64) - t;
            ready_at[k] = refill;
        } else {
            delays.push(startup_s);
        }
    }
    let unclaimed = (slots as f64 * duration_s as f64 - busy_s).max(0.0);
    result(policy, &mut delays, hits, unclaimed, m)
}

/// Static headroom sized to reserve, on average, `avg_reserved_cores` (umbra's average).
pub fn static_equal_reserve(
    events: &[ScaleEvent],
    m: &ReplicaModel,
    avg_reserved_cores: f64,
    startup_s: f64,
    duration_s: i64,
) -> PolicyResult {
    let slots = (avg_reserved_cores / (m.cpu_millicores / 1000.0))
        .round()
        .max(0.0) as usize;
    static_headroom(
        "static-equal-reserve",
        events,
        m,
        slots,
        startup_s,
        duration_s,
    )
}

/// Static headroom with the fewest placeholders that reach `hit_rate` (umbra's), up to
/// `max_slots`.
pub fn static_equal_hits(
    events: &[ScaleEvent],
    m: &ReplicaModel,
    hit_rate: f64,
    startup_s: f64,
    duration_s: i64,
    max_slots: usize,
) -> PolicyResult {
    // Hit rate grows with the pool: search the smallest that reaches the target.
    let (mut lo, mut hi) = (0usize, max_slots);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if static_headroom("", events, m, mid, startup_s, duration_s).hit_rate >= hit_rate {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    static_headroom("static-equal-hits", events, m, lo, startup_s, duration_s)
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

    #[test]
    fn requests_follow_usage_and_releases_wait_for_the_window() {
        let m = ReplicaModel {
            cpu_millicores: 1_000.0,
            memory_bytes: 1e12,
            stabilization_s: 600,
        };
        // 1 replica, then 3 (two requests), dips to 1 for 5 min (no release), then for 10 min.
        let cpu = [500.0, 2_500.0, 2_500.0, 900.0, 2_400.0, 900.0, 900.0, 900.0];
        let ev = scale_events(&[wl(&cpu)], 300, &m);
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
        let m = ReplicaModel::default();
        let ev: Vec<ScaleEvent> = [0, 10, 20, 1_000]
            .iter()
            .map(|t| ScaleEvent {
                t_s: *t,
                workload: 0,
                change: Change::Up,
            })
            .collect();
        let r = reactive(&ev, &m, 30.0);
        assert_eq!((r.requests, r.hits, r.placement_delay_p50_s), (4, 0, 30.0));
        let o = oracle(&ev, &m);
        assert_eq!((o.hit_rate, o.unclaimed_core_hours), (1.0, 0.0));
        // Two placeholders: the third request at t=20 finds both refilling (ready at 30, 40).
        let s = static_headroom("s", &ev, &m, 2, 30.0, 3_600);
        assert_eq!(s.hits, 3);
        assert_eq!(s.placement_delay_p99_s, 30.0);
        // 2 slots × 3600 s reserved, 3 × 30 s in use: (7200 − 90) / 3600 replica-hours of 1 core.
        assert!((s.unclaimed_core_hours - (7_200.0 - 90.0) / 3_600.0).abs() < 1e-9);
        let eq = static_equal_hits(&ev, &m, 1.0, 30.0, 3_600, 64);
        assert_eq!((eq.policy.as_str(), eq.hits), ("static-equal-hits", 4));
        let er = static_equal_reserve(&ev, &m, 2.0, 30.0, 3_600);
        assert_eq!(er.hits, 3);
    }

    proptest! {
        /// Running replicas never go below one; a workload's ups minus downs is its final count
        /// minus its first; more placeholders never mean fewer hits.
        #[test]
        fn events_and_headroom_are_consistent(cpu in proptest::collection::vec(0.0f64..8_000.0, 2..200), slots in 0usize..6) {
            let m = ReplicaModel { cpu_millicores: 1_000.0, memory_bytes: 1e12, stabilization_s: 900 };
            let ev = scale_events(&[wl(&cpu)], 300, &m);
            let mut run = m.needed(cpu[0], 0.0) as i64;
            for e in &ev {
                run += if e.change == Change::Up { 1 } else { -1 };
                prop_assert!(run >= 1);
            }
            let a = static_headroom("a", &ev, &m, slots, 30.0, 300 * cpu.len() as i64);
            let b = static_headroom("b", &ev, &m, slots + 1, 30.0, 300 * cpu.len() as i64);
            prop_assert!(b.hits >= a.hits);
            prop_assert!(a.unclaimed_core_hours >= 0.0);
        }
    }
}
