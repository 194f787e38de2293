//! The rebalancer's planning core, without Kafka.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use umbra_rebalancer::core::{utilization, HostView, Move, Watch};
use umbra_rebalancer::{Planner, Settings};
use umbra_schemas::*;

fn res(cpu: i64) -> Resources {
    Resources {
        cpu_millicores: cpu,
        memory_bytes: 0,
        disk_io_bytes_per_s: 0,
    }
}

fn view(cap: i64, used: i64, committed: i64) -> HostView {
    HostView {
        capacity: res(cap),
        used: res(used),
        predicted: res(used),
        committed: res(committed.max(used)),
        healthy: true,
    }
}

fn entry(w: &str, hosts: &[&str], size: i64) -> ShadowEntry {
    ShadowEntry {
        replicas: 1,
        pool_labels: None,
        workload_id: w.into(),
        version: 1,
        state: ShadowState::Active,
        predicted_start: 0,
        predicted_end: 1,
        requirements: res(size),
        candidates: hosts
            .iter()
            .enumerate()
            .map(|(i, h)| ShadowCandidate {
                shadow_id: format!("{w}-{h}"),
                host_id: h.to_string(),
                rank: i as i32,
                health_score: 1.0,
                headroom: 0.5,
                status: ShadowStatus::Healthy,
                reserved: None,
            })
            .collect(),
        host_ranking: hosts.iter().map(|h| h.to_string()).collect(),
        reason: String::new(),
        updated_at: 0,
    }
}

fn settings() -> Settings {
    Settings {
        threshold: 0.85,
        hysteresis: 0.10,
        dwell_ms: 60_000,
        cooldown_ms: 600_000,
        max_moves_per_interval: 3,
        ..Settings::default()
    }
}

#[test]
fn overload_needs_the_dwell_time_and_clears_only_below_the_hysteresis() {
    let s = settings();
    let mut w = Watch::default();
    assert!(!w.observe(0.9, 0, &s));
    assert!(!w.observe(0.9, 59_999, &s), "not yet: dwell is 60 s");
    assert!(w.observe(0.9, 60_000, &s) && w.overloaded);
    // Between 75% and 85%: still overloaded (hysteresis).
    assert!(!w.observe(0.8, 100_000, &s));
    assert!(!w.observe(0.8, 200_000, &s) && w.overloaded);
    // Below 75% but not for long enough, then above again: the timer restarts.
    assert!(!w.observe(0.7, 210_000, &s));
    assert!(!w.observe(0.9, 250_000, &s));
    assert!(!w.observe(0.7, 260_000, &s));
    assert!(!w.observe(0.7, 319_999, &s) && w.overloaded);
    assert!(w.observe(0.7, 320_000, &s) && !w.overloaded);
}

proptest! {
    /// Noise around the threshold never flips the state more than once per dwell time.
    #[test]
    fn no_flapping(samples in proptest::collection::vec(0.6f64..1.0, 1..300)) {
        let s = settings();
        let mut w = Watch::default();
        let mut flips = Vec::new();
        for (i, u) in samples.iter().enumerate() {
            let now = i as i64 * 5_000;
            if w.observe(*u, now, &s) {
                flips.push(now);
            }
        }
        for pair in flips.windows(2) {
            prop_assert!(pair[1] - pair[0] >= s.dwell_ms, "flipped twice within the dwell: {:?}", flips);
        }
    }
}

fn overloaded(planner: &mut Planner, hosts: &BTreeMap<String, HostView>, s: &Settings) {
    planner.observe(hosts, 0, s);
    planner.observe(hosts, s.dwell_ms, s);
}

#[test]
fn shadows_leave_an_overloaded_host_for_the_emptiest_one_once() {
    let s = settings();
    let hosts: BTreeMap<String, HostView> = [
        ("a", view(10_000, 9_000, 9_500)),
        ("b", view(10_000, 2_000, 3_000)),
        ("c", view(10_000, 5_000, 5_000)),
        ("d", view(10_000, 1_000, 1_000)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let table: HashMap<String, ShadowEntry> = [
        entry("w1", &["a", "b"], 500),
        entry("w2", &["a", "d"], 500),
        entry("w3", &["c", "d"], 500),
    ]
    .into_iter()
    .map(|e| (e.workload_id.clone(), e))
    .collect();
    let mut p = Planner::default();
    overloaded(&mut p, &hosts, &s);
    assert_eq!(p.overloaded(), vec!["a".to_string()]);
    let moves = p.plan(&hosts, &table, s.dwell_ms, &s);
    let got: Vec<(&str, &str, &str)> = moves
        .iter()
        .map(|m| (m.workload_id.as_str(), m.from.as_str(), m.to.as_str()))
        .collect();
    // w1 cannot go to b (it has a shadow there): d is emptiest; w2 already uses d: b.
    assert_eq!(got, vec![("w1", "a", "d"), ("w2", "a", "b")]);
    assert!(
        moves[0].reason.contains("a at 90% > 85% for 60 s"),
        "{}",
        moves[0].reason
    );
    // Asked once: the next interval does not ask again while the shadows are still there.
    assert!(p.plan(&hosts, &table, s.dwell_ms + 1, &s).is_empty());
}

proptest! {
    /// Plans keep their promises: the budget; destinations stay below threshold − hysteresis
    /// and within capacity with every planned shadow counted; never a host the row already
    /// uses; never back along a recent move (no ping-pong between two hosts).
    #[test]
    fn plans_never_overload_destinations_and_never_ping_pong(
        hosts in proptest::collection::vec((2_000i64..20_000, 0.0f64..1.0), 2..8),
        rows in proptest::collection::vec((proptest::collection::vec(0usize..8, 1..4), 100i64..3_000), 0..30),
        rounds in 1usize..6,
    ) {
        let s = settings();
        let ids: Vec<String> = (0..hosts.len()).map(|i| format!("h{i}")).collect();
        let mut views: BTreeMap<String, HostView> = hosts.iter().enumerate().map(|(i, (cap, u))| {
            let used = (*cap as f64 * u) as i64;
            (ids[i].clone(), view(*cap, used, used))
        }).collect();
        let mut table: HashMap<String, ShadowEntry> = HashMap::new();
        for (i, (hs, size)) in rows.iter().enumerate() {
            let mut on: Vec<&str> = hs.iter().map(|h| ids[h % ids.len()].as_str()).collect();
            on.sort();
            on.dedup();
            table.insert(format!("w{i}"), entry(&format!("w{i}"), &on, *size));
        }
        let mut p = Planner::default();
        let mut history: Vec<Move> = Vec::new();
        for round in 0..rounds {
            let now = round as i64 * s.dwell_ms;
            p.observe(&views, now, &s);
            p.observe(&views, now + s.dwell_ms, &s);
            let moves = p.plan(&views, &table, now + s.dwell_ms, &s);
            prop_assert!(moves.len() <= s.max_moves_per_interval);
            let mut added: HashMap<&str, i64> = HashMap::new();
            for m in &moves {
                prop_assert_ne!(&m.from, &m.to);
                let e = &table[&m.workload_id];
                prop_assert!(!e.candidates.iter().any(|c| c.host_id == m.to), "moved onto a host the row uses");
                *added.entry(m.to.as_str()).or_default() += m.size.cpu_millicores;
                prop_assert!(!history.iter().any(|h| h.from == m.to && h.to == m.from), "ping-pong {} <-> {}", m.from, m.to);
            }
            for (to, extra) in &added {
                let v = &views[*to];
                prop_assert!(utilization(&v.used.plus(&res(*extra)), &v.capacity) <= s.threshold - s.hysteresis + 1e-9);
                prop_assert!(v.committed.plus(&res(*extra)).fits_within(&v.capacity));
            }
            // Carry the moves out: the shadow changes host (as the shadow manager does) and
            // the load moves with it.
            for m in &moves {
                if let Some(e) = table.get_mut(&m.workload_id) {
                    for c in &mut e.candidates {
                        if c.shadow_id == m.shadow_id {
                            c.host_id = m.to.clone();
                            c.shadow_id = format!("{}-moved{round}", c.shadow_id);
                        }
                    }
                }
                if let Some(v) = views.get_mut(&m.to) { v.committed = v.committed.plus(&m.size); }
                if let Some(v) = views.get_mut(&m.from) { v.committed = v.committed.minus(&m.size); }
            }
            history.extend(moves);
            let used_hosts: HashSet<&String> = views.keys().collect();
            prop_assert!(used_hosts.len() == views.len());
        }
    }
}
