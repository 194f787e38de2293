//! The interceptor's pure core, without Kafka: hits, standard placement through the fleet
//! simulator's core, replays, restarts and bad requests.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use umbra_fleet::{SimSettings, Simulator};
use umbra_interceptor::core::{expand_id, place_id};
use umbra_interceptor::{Core, Settings, Step, World};
use umbra_ledger::Ledger;
use umbra_schemas::*;

const T0: i64 = 1_700_000_000_000;
const GIB: i64 = 1 << 30;

fn res(cpu: i64, mem_gib: i64) -> Resources {
    Resources {
        cpu_millicores: cpu,
        memory_bytes: mem_gib * GIB,
        disk_io_bytes_per_s: 0,
    }
}

fn entry(w: &str, hosts: &[&str], size: Resources) -> ShadowEntry {
    let candidates: Vec<ShadowCandidate> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| ShadowCandidate {
            shadow_id: format!("{w}-s{i}"),
            host_id: h.to_string(),
            rank: i as i32,
            health_score: 1.0,
            headroom: 0.5,
            status: ShadowStatus::Healthy,
            reserved: None,
        })
        .collect();
    ShadowEntry {
        replicas: 1,
        pool_labels: None,
        workload_id: w.into(),
        version: 7,
        state: ShadowState::Active,
        predicted_start: T0 - 60_000,
        predicted_end: T0 + 3_600_000,
        requirements: size,
        host_ranking: hosts.iter().map(|h| h.to_string()).collect(),
        candidates,
        reason: "forecast".into(),
        updated_at: T0,
    }
}

fn request(id: &str, w: &str, r: Resources) -> WorkloadRequest {
    WorkloadRequest {
        request_id: id.into(),
        workload_id: w.into(),
        labels: Default::default(),
        resources: r,
        requested_at: T0,
    }
}

struct Env {
    sim: Simulator,
    ledger: Ledger,
    table: HashMap<String, ShadowEntry>,
    hosts: HashMap<String, HostState>,
    known: HashSet<String>,
    now: i64,
}

impl Env {
    fn new(n_hosts: usize, cap: Resources) -> Self {
        let mut sim = Simulator::new(
            SimSettings {
                hosts: n_hosts,
                host_capacity: cap,
                ..SimSettings::default()
            },
            Ledger::default(),
        );
        let mut ledger = Ledger::default();
        for e in sim.boot(T0) {
            ledger.apply(&e);
        }
        Self {
            sim,
            ledger,
            table: HashMap::new(),
            hosts: HashMap::new(),
            known: HashSet::new(),
            now: T0,
        }
    }

    fn world(&self) -> World<'_> {
        World {
            now: self.now,
            table: &self.table,
            hosts: &self.hosts,
            ledger: &self.ledger,
            known: &self.known,
        }
    }

    /// Executes `cmd` on the simulator and folds the answer.
    fn execute(&mut self, cmd: &FleetCommand) {
        for e in self.sim.execute(cmd, self.now) {
            self.ledger.apply(&e);
        }
    }

    /// Executes a step's command on the simulator (unless lost) and folds the answer.
    fn fleet(&mut self, step: &Step, lose: bool) {
        let cmd = match step {
            Step::Decide {
                command: Some(c), ..
            }
            | Step::Place(c)
            | Step::Replay { command: Some(c) } => c,
            _ => return,
        };
        if !lose {
            self.execute(cmd);
        }
    }
}

fn decided(step: &Step) -> Option<&AllocationDecision> {
    match step {
        Step::Decide { decision, .. } => Some(decision),
        _ => None,
    }
}

/// Shadows `w-s0..2` of workload `w`, of `size`, created in the fleet on hosts 0..2.
fn stage_shadows(env: &mut Env, size: Resources) {
    stage_shadows_of(env, [size; 3]);
}

/// Shadows `w-s0..2` of workload `w` created in the fleet on hosts 0..2, each of its size.
fn stage_shadows_of(env: &mut Env, sizes: [Resources; 3]) {
    for (i, (h, size)) in ["host-000", "host-001", "host-002"]
        .iter()
        .zip(sizes)
        .enumerate()
    {
        env.execute(&FleetCommand {
            command_id: format!("create-{i}"),
            kind: FleetCommandKind::CreateShadow,
            host_id: h.to_string(),
            target_host_id: None,
            shadow_id: Some(format!("w-s{i}")),
            workload_id: "w".into(),
            request_id: None,
            resources: size,
            issued_at: T0,
        });
    }
}

#[test]
fn a_matching_request_takes_the_best_healthy_shadow_once() {
    let mut env = Env::new(3, res(8_000, 32));
    let mut e = entry("w", &["host-000", "host-001", "host-002"], res(2_000, 4));
    e.candidates[0].status = ShadowStatus::Unhealthy;
    env.table.insert("w".into(), e);
    // The shadows exist in the fleet.
    stage_shadows(&mut env, res(2_000, 4));
    let mut core = Core::new(Settings::default());
    let r1 = request("r1", "w", res(1_500, 4));
    let step = core.decide(&r1, &env.world());
    let Step::Decide {
        claim: Some(claim),
        decision,
        command: Some(cmd),
    } = &step
    else {
        panic!("expected a hit: {step:?}")
    };
    assert_eq!(decision.outcome, Outcome::ShadowHit);
    assert_eq!(
        decision.shadow_id.as_deref(),
        Some("w-s1"),
        "rank 0 is unhealthy: rank 1 wins"
    );
    assert_eq!(decision.host_id.as_deref(), Some("host-001"));
    assert_eq!((claim.shadow_id.as_str(), claim.entry_version), ("w-s1", 7));
    assert_eq!(cmd.kind, FleetCommandKind::ExpandShadow);
    assert_eq!(cmd.command_id, expand_id("r1"));
    env.fleet(&step, false);
    assert_eq!(env.ledger.held("w"), res(1_500, 4));
    // The same request again: its command again, no second decision.
    let again = core.decide(&r1, &env.world());
    assert!(matches!(&again, Step::Replay { command: Some(c) } if c.command_id == expand_id("r1")));
    // Another request of the same workload: the row is spent, standard allocation.
    let r2 = request("r2", "w", res(1_000, 1));
    let step = core.decide(&r2, &env.world());
    assert!(
        matches!(&step, Step::Place(c) if c.command_id == place_id("r2", 1)),
        "{step:?}"
    );
}

#[test]
fn a_row_predicting_two_replicas_serves_two_requests_on_distinct_shadows() {
    let mut env = Env::new(3, res(8_000, 32));
    let mut e = entry("w", &["host-000", "host-001", "host-002"], res(1_000, 1));
    e.replicas = 2;
    env.table.insert("w".into(), e);
    stage_shadows(&mut env, res(1_000, 1));
    let mut core = Core::new(Settings::default());
    let mut shadows = Vec::new();
    for r in ["r1", "r2"] {
        let step = core.decide(&request(r, "w", res(1_000, 1)), &env.world());
        let Step::Decide {
            claim: Some(claim),
            decision,
            ..
        } = &step
        else {
            panic!("expected a hit for {r}: {step:?}")
        };
        assert_eq!(decision.outcome, Outcome::ShadowHit);
        shadows.push(claim.shadow_id.clone());
        env.fleet(&step, false);
    }
    assert_ne!(shadows[0], shadows[1], "each claim takes its own shadow");
    // Two replicas predicted, two claimed: the third request waits for standard allocation.
    let step = core.decide(&request("r3", "w", res(1_000, 1)), &env.world());
    assert!(matches!(&step, Step::Place(_)), "{step:?}");
}

#[test]
fn standard_placement_follows_the_fleet_and_retries_refusals() {
    let mut env = Env::new(3, res(4_000, 16));
    env.known.insert("w".into());
    let mut core = Core::new(Settings::default());
    // Best fit: the fullest host that still fits. Fill host-001 from outside umbra's view.
    let filler = FleetCommand {
        command_id: "outside".into(),
        kind: FleetCommandKind::PlaceWorkload,
        host_id: "host-001".into(),
        target_host_id: None,
        shadow_id: None,
        workload_id: "other".into(),
        request_id: None,
        resources: res(2_500, 1),
        issued_at: T0,
    };
    for e in env.sim.execute(&filler, T0) {
        env.ledger.apply(&e);
    }
    let r = request("r1", "w", res(1_000, 1));
    let step = core.decide(&r, &env.world());
    let Step::Place(cmd) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(
        cmd.host_id, "host-001",
        "best fit takes the host with the least room left"
    );
    assert_eq!(core.waiting(), 1);
    // Meanwhile the host fills up: the fleet refuses, the next host is tried.
    let more = FleetCommand {
        command_id: "outside-2".into(),
        resources: res(1_000, 1),
        ..filler.clone()
    };
    for e in env.sim.execute(&more, T0) {
        env.ledger.apply(&e);
    }
    env.fleet(&step, false);
    let steps = core.follow_up(&env.world());
    assert_eq!(steps.len(), 1);
    let Step::Place(cmd2) = &steps[0].1 else {
        panic!("{steps:?}")
    };
    assert_eq!(cmd2.command_id, place_id("r1", 2));
    assert_ne!(cmd2.host_id, "host-001");
    // The second placement is lost: after the timeout it is sent again with the same id.
    env.fleet(&steps[0].1, true);
    assert!(core.follow_up(&env.world()).is_empty());
    env.now += Settings::default().placement_timeout_ms;
    let steps = core.follow_up(&env.world());
    let Step::Place(again) = &steps[0].1 else {
        panic!("{steps:?}")
    };
    assert_eq!(again.command_id, cmd2.command_id);
    env.fleet(&steps[0].1, false);
    let steps = core.follow_up(&env.world());
    let d = decided(&steps[0].1).expect("decided");
    assert_eq!(d.outcome, Outcome::Standard);
    assert_eq!(d.host_id.as_deref(), Some(cmd2.host_id.as_str()));
    assert!(d.reason.contains("no shadow was staged"), "{}", d.reason);
    assert_eq!(core.waiting(), 0);
    assert!(env.sim.ledger().overcommitted().is_empty());
}

#[test]
fn a_workload_never_seen_gets_standard_allocation_with_a_note() {
    let mut env = Env::new(2, res(4_000, 16));
    let mut core = Core::new(Settings::default());
    let r = request("first", "brand-new", res(1_000, 1));
    let step = core.decide(&r, &env.world());
    let Step::Place(_) = &step else {
        panic!("a new workload is placed, not rejected: {step:?}")
    };
    env.fleet(&step, false);
    let steps = core.follow_up(&env.world());
    let d = decided(&steps[0].1).expect("decided");
    assert_eq!(d.outcome, Outcome::Standard);
    assert!(
        d.reason.contains("new workload 'brand-new'") && d.reason.contains("standard allocation"),
        "{}",
        d.reason
    );
}

#[test]
fn shadows_give_way_to_a_request_that_fits_only_without_them() {
    // Two hosts of 4 cores, each holding 3 cores of another workload's shadows: a 2-core
    // request fits nowhere beside them, so the fleet preempts the shadows in its way.
    let mut env = Env::new(2, res(4_000, 16));
    env.known.insert("w".into());
    for (i, h) in ["host-000", "host-001"].iter().enumerate() {
        for k in 0..3 {
            let c = FleetCommand {
                command_id: format!("create-{i}-{k}"),
                kind: FleetCommandKind::CreateShadow,
                host_id: h.to_string(),
                target_host_id: None,
                shadow_id: Some(format!("other-s{i}{k}")),
                workload_id: "other".into(),
                request_id: None,
                resources: res(1_000, 1),
                issued_at: T0,
            };
            for ev in env.sim.execute(&c, T0) {
                env.ledger.apply(&ev);
            }
        }
    }
    let mut core = Core::new(Settings::default());
    let step = core.decide(&request("r", "w", res(2_000, 1)), &env.world());
    let Step::Place(cmd) = &step else {
        panic!("placed, not rejected: {step:?}")
    };
    let events = env.sim.execute(cmd, env.now);
    let preempted: Vec<_> = events
        .iter()
        .filter(|e| {
            e.kind == FleetEventKind::Failed && e.reason.starts_with(umbra_fleet::sim::PREEMPTED)
        })
        .collect();
    assert_eq!(
        preempted.len(),
        1,
        "one 1-core shadow makes room: {events:?}"
    );
    for e in &events {
        env.ledger.apply(e);
    }
    let steps = core.follow_up(&env.world());
    let d = decided(&steps[0].1).expect("decided");
    assert_eq!(d.outcome, Outcome::Standard, "{}", d.reason);
    assert!(env.sim.ledger().overcommitted().is_empty());
    // The other host gives up all three of its shadows for 3.5 cores.
    let step = core.decide(&request("r2", "w", res(3_500, 1)), &env.world());
    let Step::Place(cmd) = &step else {
        panic!("placed, not rejected: {step:?}")
    };
    assert_eq!(cmd.host_id, "host-001");
    env.fleet(&step, false);
    let steps = core.follow_up(&env.world());
    assert_eq!(
        decided(&steps[0].1).expect("decided").outcome,
        Outcome::Standard
    );
    assert!(env
        .ledger
        .host("host-001")
        .expect("host")
        .shadows
        .is_empty());
    // Real workloads alone now leave 2 and 0.5 cores: 2.5 cores is rejected.
    let step = core.decide(&request("r3", "w", res(2_500, 1)), &env.world());
    let d = decided(&step).expect("rejected at once");
    assert_eq!(d.outcome, Outcome::Rejected, "{}", d.reason);
    assert!(env.sim.ledger().overcommitted().is_empty());
}

#[test]
fn nothing_fits_is_rejected_with_the_fleets_reasons() {
    let mut env = Env::new(2, res(2_000, 4));
    env.known.insert("w".into());
    let mut core = Core::new(Settings::default());
    let step = core.decide(&request("big", "w", res(3_000, 1)), &env.world());
    let d = decided(&step).expect("rejected at once");
    assert_eq!(d.outcome, Outcome::Rejected);
    assert!(
        d.reason.contains("no healthy host has room for cpu 3000m"),
        "{}",
        d.reason
    );
}

#[test]
fn a_restart_remembers_decisions_claims_and_admitted_placements() {
    let mut env = Env::new(2, res(8_000, 32));
    env.known.insert("w".into());
    env.table.insert(
        "w".into(),
        entry("w", &["host-000", "host-001"], res(2_000, 4)),
    );
    let mut before = Core::new(Settings::default());
    let hit = before.decide(&request("r1", "w", res(1_000, 1)), &env.world());
    let placing = before.decide(&request("r2", "w", res(1_000, 1)), &env.world());
    env.fleet(&placing, false); // admitted, then the instance dies before deciding
    let Step::Decide {
        claim: Some(claim),
        decision,
        ..
    } = hit
    else {
        panic!()
    };
    // The new instance reads the claims and decisions topics.
    let mut after = Core::new(Settings::default());
    after.observe_claim(&claim);
    after.observe_decision(&decision);
    assert!(matches!(
        after.decide(&request("r1", "w", res(1_000, 1)), &env.world()),
        Step::Replay { .. }
    ));
    let step = after.decide(&request("r2", "w", res(1_000, 1)), &env.world());
    let d = decided(&step).expect("decided from the fleet's earlier answer, without placing again");
    assert_eq!(d.outcome, Outcome::Standard);
    // A third request cannot take the claimed row either.
    let step = after.decide(&request("r3", "w", res(500, 1)), &env.world());
    assert!(matches!(step, Step::Place(_)), "{step:?}");
}

#[test]
fn every_kind_of_bad_request_gets_its_reason() {
    let env = Env::new(1, res(8_000, 32));
    let mut known = env.known.clone();
    known.insert("w".into());
    let w = World {
        known: &known,
        ..env.world()
    };
    let mut core = Core::new(Settings::default());
    let cases: Vec<(WorkloadRequest, &str)> = vec![
        (request("", "w", res(1, 1)), "request_id is empty"),
        (request("a", " ", res(1, 1)), "workload_id is empty"),
        (request("b", "w", res(-5, 1)), "cpu_millicores is negative"),
        (
            request(
                "c",
                "w",
                Resources {
                    memory_bytes: i64::MAX,
                    ..res(1, 0)
                },
            ),
            "memory_bytes = 9223372036854775807 is above the largest allowed request",
        ),
        (request("d", "w", res(0, 0)), "no CPU and no memory"),
        (
            WorkloadRequest {
                requested_at: 5,
                ..request("e", "w", res(1, 1))
            },
            "old",
        ),
        (
            WorkloadRequest {
                requested_at: T0 + 10 * 3_600_000,
                ..request("f", "w", res(1, 1))
            },
            "in the future",
        ),
    ];
    for (r, why) in cases {
        let step = core.decide(&r, &w);
        let d = decided(&step).unwrap_or_else(|| panic!("{r:?} not decided: {step:?}"));
        assert_eq!(d.outcome, Outcome::Rejected);
        assert!(d.reason.contains(why), "{:?}: {}", r.request_id, d.reason);
    }
}

proptest! {
    /// Requests for workloads with and without shadows, through the simulator with lost
    /// answers and replays: every request ends with exactly one decision, no shadow is claimed
    /// twice, hits only take healthy shadows of a matching row, and no host is ever over
    /// capacity.
    #[test]
    fn one_decision_per_request_no_double_claim_no_overcommit(
        reqs in proptest::collection::vec((0u8..6, 100i64..3_000, 0i64..6, any::<bool>(), any::<bool>()), 1..60),
    ) {
        let mut env = Env::new(4, res(8_000, 16));
        for w in 0..6u8 {
            env.known.insert(format!("w{w}"));
            if w < 3 {
                env.table.insert(format!("w{w}"), entry(&format!("w{w}"), &["host-000", "host-001", "host-002"], res(2_000, 4)));
            }
        }
        // Shadows reserved in the fleet for the rows.
        for w in 0..3u8 {
            for (i, h) in ["host-000", "host-001", "host-002"].iter().enumerate() {
                let c = FleetCommand { command_id: format!("create-w{w}-{i}"), kind: FleetCommandKind::CreateShadow, host_id: h.to_string(), target_host_id: None, shadow_id: Some(format!("w{w}-s{i}")), workload_id: format!("w{w}"), request_id: None, resources: res(2_000, 4), issued_at: T0 };
                for e in env.sim.execute(&c, T0) { env.ledger.apply(&e); }
            }
        }
        let mut core = Core::new(Settings::default());
        let mut decisions: HashMap<String, usize> = HashMap::new();
        let mut claims: HashMap<String, String> = HashMap::new();
        let count = |step: &Step, decisions: &mut HashMap<String, usize>, claims: &mut HashMap<String, String>| -> Result<(), TestCaseError> {
            if let Step::Decide { claim, decision, .. } = step {
                *decisions.entry(decision.request_id.clone()).or_default() += 1;
                if let Some(c) = claim {
                    prop_assert!(claims.insert(c.shadow_id.clone(), c.request_id.clone()).is_none(), "shadow {} claimed twice", c.shadow_id);
                }
            }
            Ok(())
        };
        for (i, (w, cpu, mem, lose, replay)) in reqs.iter().enumerate() {
            let r = request(&format!("r{i}"), &format!("w{w}"), res(*cpu, *mem));
            let step = core.decide(&r, &env.world());
            count(&step, &mut decisions, &mut claims)?;
            env.fleet(&step, *lose);
            if *replay {
                let again = core.decide(&r, &env.world());
                prop_assert!(matches!(again, Step::Replay { .. } | Step::Waiting), "{again:?}");
            }
            let steps = core.follow_up(&env.world());
            for (_, s) in &steps { count(s, &mut decisions, &mut claims)?; env.fleet(s, false); }
            prop_assert!(env.sim.ledger().overcommitted().is_empty());
        }
        // Let every waiting placement finish (lost ones are sent again after the timeout).
        for _ in 0..10 {
            env.now += Settings::default().placement_timeout_ms;
            let steps = core.follow_up(&env.world());
            for (_, s) in &steps { count(s, &mut decisions, &mut claims)?; env.fleet(s, false); }
            let steps = core.follow_up(&env.world());
            for (_, s) in &steps { count(s, &mut decisions, &mut claims)?; env.fleet(s, false); }
        }
        prop_assert_eq!(core.waiting(), 0);
        prop_assert_eq!(decisions.len(), reqs.len(), "every request decided");
        prop_assert!(decisions.values().all(|n| *n == 1), "exactly once: {:?}", decisions);
        prop_assert!(claims.len() <= 3, "one claim per row at most");
        prop_assert!(env.sim.ledger().overcommitted().is_empty());
    }
}

#[test]
fn an_abandoned_placement_is_decided_once_by_the_new_owner() {
    let mut env = Env::new(2, res(8_000, 32));
    env.known.insert("w".into());
    let mut old_owner = Core::new(Settings::default());
    let r = request("r1", "w", res(1_000, 1));
    let placing = old_owner.decide(&r, &env.world());
    env.fleet(&placing, false);
    // The partition moves: the old owner stops waiting and says nothing more.
    old_owner.abandon("r1");
    assert_eq!(old_owner.waiting(), 0);
    assert!(old_owner.follow_up(&env.world()).is_empty());
    // The new owner re-reads the request and decides it from the fleet's answer.
    let mut new_owner = Core::new(Settings::default());
    let step = new_owner.decide(&r, &env.world());
    assert_eq!(decided(&step).map(|d| d.outcome), Some(Outcome::Standard));
    assert_eq!(env.sim.ledger().held("w"), res(1_000, 1), "placed once");
}

/// Pool row `pool/<c>` with healthy slots `pool<c>-s<i>` of `size` on `hosts`, created in the
/// fleet.
fn stage_pool(env: &mut Env, c: usize, hosts: &[&str], size: Resources) {
    let id = pool_id(c);
    let mut e = entry(&id, hosts, size);
    e.pool_labels = Some(HashMap::new());
    e.replicas = hosts.len() as i32;
    for (i, cand) in e.candidates.iter_mut().enumerate() {
        cand.shadow_id = format!("pool{c}-s{i}");
    }
    for (i, h) in hosts.iter().enumerate() {
        let cmd = FleetCommand {
            command_id: format!("create-pool{c}-{i}"),
            kind: FleetCommandKind::CreateShadow,
            host_id: h.to_string(),
            target_host_id: None,
            shadow_id: Some(format!("pool{c}-s{i}")),
            workload_id: id.clone(),
            request_id: None,
            resources: size,
            issued_at: T0,
        };
        for ev in env.sim.execute(&cmd, T0) {
            env.ledger.apply(&ev);
        }
    }
    env.table.insert(id, e);
}

fn hit_shadow(step: &Step) -> Option<&str> {
    decided(step)
        .filter(|d| d.outcome == Outcome::ShadowHit)
        .and_then(|d| d.shadow_id.as_deref())
}

#[test]
fn a_request_takes_its_own_shadow_first_then_the_smallest_pool_slot_it_fits() {
    let mut env = Env::new(3, res(16_000, 64));
    stage_pool(&mut env, 0, &["host-000"], res(500, 1));
    stage_pool(&mut env, 1, &["host-001", "host-002"], res(1_200, 2));
    stage_pool(&mut env, 2, &["host-002"], res(4_000, 8));
    env.table.insert(
        "w".into(),
        entry("w", &["host-000", "host-001", "host-002"], res(1_000, 1)),
    );
    stage_shadows(&mut env, res(1_000, 1));
    let mut core = Core::new(Settings::default());
    // Its own workload's shadow first, though a pool slot would fit.
    let s = core.decide(&request("r1", "w", res(1_000, 1)), &env.world());
    assert_eq!(hit_shadow(&s), Some("w-s0"), "{s:?}");
    env.fleet(&s, false);
    // Another workload of 1 core: not the 500m slot, the smallest that fits (1.2 cores).
    let s = core.decide(&request("r2", "other", res(1_000, 1)), &env.world());
    assert_eq!(hit_shadow(&s), Some("pool1-s0"), "{s:?}");
    let Step::Decide {
        claim: Some(claim),
        command: Some(cmd),
        ..
    } = &s
    else {
        panic!("a hit claims and expands: {s:?}")
    };
    assert_eq!(claim.shadow_id, "pool1-s0");
    assert_eq!(
        cmd.workload_id, "other",
        "the slot becomes the requesting workload"
    );
    env.fleet(&s, false);
    assert_eq!(env.ledger.held("other"), res(1_000, 1));
    // The next takes the pool's other slot, then the larger class once that one is spent.
    let s = core.decide(&request("r3", "other", res(1_000, 1)), &env.world());
    assert_eq!(hit_shadow(&s), Some("pool1-s1"));
    let s = core.decide(&request("r4", "other", res(1_000, 1)), &env.world());
    assert_eq!(hit_shadow(&s), Some("pool2-s0"));
    // Nothing left that fits: standard allocation.
    let s = core.decide(&request("r5", "other", res(1_000, 1)), &env.world());
    assert!(matches!(s, Step::Place(_)), "{s:?}");
}

#[test]
fn a_pool_slot_serves_only_requests_that_fit_it_and_carry_its_labels() {
    let mut env = Env::new(3, res(16_000, 64));
    // Only the third class holds slots: smaller classes without slots have no row.
    stage_pool(&mut env, 2, &["host-000"], res(1_200, 2));
    env.table.get_mut("pool/2").expect("staged").pool_labels =
        Some(HashMap::from([("tier".to_string(), "web".to_string())]));
    let mut core = Core::new(Settings::default());
    let mut web = request("r1", "a", res(1_000, 1));
    web.labels.insert("tier".into(), "web".into());
    let big = {
        let mut r = request("r2", "a", res(1_500, 1));
        r.labels = web.labels.clone();
        r
    };
    let s = core.decide(&big, &env.world());
    assert!(matches!(s, Step::Place(_)), "too large for the slot: {s:?}");
    let s = core.decide(&request("r3", "a", res(1_000, 1)), &env.world());
    assert!(
        matches!(s, Step::Place(_)),
        "without the pool's labels: {s:?}"
    );
    let s = core.decide(&web, &env.world());
    assert_eq!(hit_shadow(&s), Some("pool2-s0"), "{s:?}");
}

/// `alternates = "verify"`: the row's full shadow on host-000, placeholders on host-001 and
/// host-002, each created in the fleet at the size it holds.
fn stage_verified(env: &mut Env, size: Resources, placeholder: Resources) {
    let mut e = entry("w", &["host-000", "host-001", "host-002"], size);
    for c in &mut e.candidates[1..] {
        c.reserved = Some(placeholder);
    }
    env.table.insert("w".into(), e);
    stage_shadows_of(env, [size, placeholder, placeholder]);
}

/// A real workload of `r` on `host`.
fn fill(env: &mut Env, host: &str, r: Resources) {
    env.execute(&FleetCommand {
        command_id: format!("fill-{host}"),
        kind: FleetCommandKind::PlaceWorkload,
        host_id: host.into(),
        target_host_id: None,
        shadow_id: None,
        workload_id: format!("other-{host}"),
        request_id: Some(format!("fill-{host}")),
        resources: r,
        issued_at: T0,
    });
}

#[test]
fn a_placeholder_serves_only_while_its_host_has_room_for_the_request() {
    let placeholder = Resources {
        cpu_millicores: 10,
        memory_bytes: 16 << 20,
        disk_io_bytes_per_s: 0,
    };
    let mut env = Env::new(3, res(8_000, 32));
    stage_verified(&mut env, res(2_000, 4), placeholder);
    let mut core = Core::new(Settings::default());
    // The full shadow is taken first.
    let step = core.decide(&request("r1", "w", res(2_000, 4)), &env.world());
    assert_eq!(
        decided(&step).and_then(|d| d.shadow_id.as_deref()),
        Some("w-s0"),
        "{step:?}"
    );

    // The full shadow's host is sick; host-001 is full of real work, host-002 has room: the
    // placeholder on host-002 serves, and the fleet admits its expansion.
    let mut env = Env::new(3, res(8_000, 32));
    stage_verified(&mut env, res(2_000, 4), placeholder);
    env.table.get_mut("w").expect("row").candidates[0].status = ShadowStatus::Unhealthy;
    fill(&mut env, "host-001", res(7_000, 4));
    let mut core = Core::new(Settings::default());
    let step = core.decide(&request("r1", "w", res(2_000, 4)), &env.world());
    let d = decided(&step).expect("a decision").clone();
    assert_eq!(d.outcome, Outcome::ShadowHit, "{d:?}");
    assert_eq!(d.shadow_id.as_deref(), Some("w-s2"), "{d:?}");
    env.fleet(&step, false);
    assert_eq!(
        env.ledger.held("w"),
        res(2_000, 4),
        "expanded to the full size"
    );
    assert!(env.ledger.overcommitted().is_empty());

    // No placeholder host has room: standard allocation, saying why.
    let mut env = Env::new(3, res(8_000, 32));
    stage_verified(&mut env, res(2_000, 4), placeholder);
    env.table.get_mut("w").expect("row").candidates[0].status = ShadowStatus::Unhealthy;
    fill(&mut env, "host-001", res(7_000, 4));
    fill(&mut env, "host-002", res(7_000, 4));
    let mut core = Core::new(Settings::default());
    let step = core.decide(&request("r1", "w", res(2_000, 4)), &env.world());
    let Step::Place(cmd) = &step else {
        panic!("expected standard allocation: {step:?}")
    };
    assert_eq!(cmd.kind, FleetCommandKind::PlaceWorkload);
}
