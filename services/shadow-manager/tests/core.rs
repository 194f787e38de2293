//! The shadow manager's pure core, without Kafka: demand windows, ranked placement, and the
//! manager driving the fleet simulator's core through faults and restarts.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use umbra_fleet::{SimSettings, Simulator};
use umbra_ledger::Ledger;
use umbra_schemas::{
    Claim, DemandForecast, FleetCommand, FleetCommandKind, FleetEvent, ForecastPoint, Horizon,
    HorizonForecast, HostHealth, HostState, Interval, ReshadowRequest, Resources, ScaleUpForecast,
    ScaleUpSubject, ShadowState, ShadowStatus,
};
use umbra_shadow_manager::core::{choose_hosts, demand, held_by, host_slots, HostSlot};
use umbra_shadow_manager::{Action, Alternates, Inputs, Manager, Settings};

const GIB: i64 = 1 << 30;
const T0: i64 = 1_700_000_000_000;

fn iv(v: f64) -> Interval {
    Interval {
        mean: v * 0.8,
        lower_80: v * 0.6,
        upper_80: v,
        lower_95: v * 0.5,
        upper_95: v * 1.2,
    }
}

/// A forecast whose 80% upper bound is `cpu[i]` millicores and `mem_gib[i]` GiB at step i.
fn forecast(w: &str, start: i64, cpu: &[f64], mem_gib: f64) -> DemandForecast {
    DemandForecast {
        workload_id: w.into(),
        generated_at: start,
        model: "test".into(),
        fallback_reason: None,
        horizons: vec![HorizonForecast {
            horizon: Horizon::Day,
            step_seconds: 300,
            points: cpu
                .iter()
                .enumerate()
                .map(|(i, c)| ForecastPoint {
                    time: start + i as i64 * 300_000,
                    cpu_millicores: iv(*c),
                    memory_bytes: iv(mem_gib * GIB as f64),
                    disk_io_bytes_per_s: iv(0.0),
                })
                .collect(),
        }],
    }
}

fn res(cpu: i64, mem_gib: i64) -> Resources {
    Resources {
        cpu_millicores: cpu,
        memory_bytes: mem_gib * GIB,
        disk_io_bytes_per_s: 0,
    }
}

#[test]
fn demand_is_the_first_run_above_what_the_workload_holds() {
    let s = Settings::default();
    let mut cpu = vec![500.0; 24];
    for c in &mut cpu[6..9] {
        *c = 2_030.0;
    }
    let f = forecast("w", T0, &cpu, 0.5);
    // Holding 1 core and 1 GiB: the spike at steps 6..9 needs 1030m more, rounded to 1050m.
    let d = demand(&f, &res(1_000, 1), &s, T0).expect("a spike");
    assert_eq!(d.start, T0 + 6 * 300_000);
    assert_eq!(d.end, T0 + 9 * 300_000);
    assert_eq!(d.requirement, res(1_050, 0));
    // Holding enough: nothing to stage.
    assert_eq!(demand(&f, &res(2_100, 1), &s, T0), None);
    // Steps already past do not count.
    assert_eq!(demand(&f, &res(1_000, 1), &s, T0 + 9 * 300_000), None);
    // The quantile matters: the 95% bound is 20% higher.
    let s95 = Settings {
        quantile: umbra_shadow_manager::Quantile::Upper95,
        ..Settings::default()
    };
    let d95 = demand(&f, &res(1_000, 1), &s95, T0).expect("a spike");
    assert_eq!(d95.requirement.cpu_millicores, 1_450);
}

#[test]
fn replica_shadows_are_whole_replicas_and_only_cpu_opens_a_window() {
    let s = Settings::default();
    let mut cpu = vec![500.0; 24];
    for c in &mut cpu[6..9] {
        *c = 2_030.0;
    }
    // Memory well above what is held must not open a window on its own.
    let f = forecast("w", T0, &cpu, 8.0);
    let replica = res(600, 2);
    let until = |held: &Resources| {
        umbra_shadow_manager::core::demand_until(&f, held, Some(&replica), &s, T0).0
    };
    // Holding two replicas (1200m): 830m more at the spike; a shadow is one replica.
    let d = until(&res(1_200, 4)).expect("a spike");
    assert_eq!((d.start, d.end), (T0 + 6 * 300_000, T0 + 9 * 300_000));
    assert_eq!(d.requirement, replica);
    // Holding four replicas: nothing, although memory stays above what is held.
    assert_eq!(until(&res(2_400, 8)), None);
    // Without a replica size the memory excess alone stages a shadow.
    assert!(demand(&f, &res(2_400, 1), &s, T0).is_some());
}

fn slot(cap: Resources, load: Resources, score: f64) -> HostSlot {
    HostSlot {
        capacity: cap,
        limit: cap,
        load,
        score,
    }
}

#[test]
fn ranking_prefers_health_then_headroom_and_skips_what_does_not_fit() {
    let cap = res(8_000, 32);
    let slots: BTreeMap<String, HostSlot> = [
        ("a", slot(cap, res(1_000, 1), 1.0)),
        ("b", slot(cap, res(6_000, 1), 1.0)),
        ("c", slot(cap, res(0, 0), 0.5)),
        ("d", slot(cap, res(7_500, 1), 1.0)),
        ("e", slot(cap, res(0, 0), 0.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let got = choose_hosts(&slots, &res(1_000, 2), 3, &HashSet::new());
    let ids: Vec<&str> = got.iter().map(|(h, _)| h.as_str()).collect();
    // d cannot hold 1000m; e is unhealthy; a has more headroom than b; c is less healthy.
    assert_eq!(ids, ["a", "b", "c"]);
    let got = choose_hosts(&slots, &res(1_000, 2), 3, &HashSet::from(["a".to_string()]));
    assert_eq!(got[0].0, "b");
}

fn host_state(id: &str, cap: Resources, healthy: bool) -> HostState {
    HostState {
        host_id: id.into(),
        updated_at: T0,
        capacity: cap,
        used: Resources::ZERO,
        committed: Resources::ZERO,
        health: if healthy {
            HostHealth::Healthy
        } else {
            HostHealth::Unhealthy
        },
        health_score: if healthy { 1.0 } else { 0.0 },
    }
}

fn counter_ids() -> impl FnMut(&str, &str) -> String {
    let mut n = 0u64;
    move |w: &str, h: &str| {
        n += 1;
        format!("{w}@{h}#{n}")
    }
}

proptest! {
    /// Placement invariants over random fleets and demands, in one pass that places every
    /// workload: reservations planned on a host never exceed its spare capacity, each workload
    /// gets at most K distinct hosts, and the same input gives the same plan.
    #[test]
    fn placement_invariants(
        hosts in proptest::collection::vec((1_000i64..16_000, 1i64..64, 0i64..8_000, any::<bool>()), 1..12),
        needs in proptest::collection::vec((100.0f64..6_000.0, 0.1f64..16.0), 1..40),
        k in 1usize..4,
        verify in any::<bool>(),
    ) {
        let ledger = Ledger::default();
        let mut states = HashMap::new();
        for (i, (cpu, mem, used, healthy)) in hosts.iter().enumerate() {
            let id = format!("h{i:02}");
            let mut hs = host_state(&id, res(*cpu, *mem), *healthy || i == 0);
            hs.used = res((*used).min(*cpu), 0);
            states.insert(id, hs);
        }
        let forecasts: HashMap<String, DemandForecast> = needs
            .iter()
            .enumerate()
            .map(|(i, (c, m))| (format!("w{i:02}"), forecast(&format!("w{i:02}"), T0, &[*c; 12], *m)))
            .collect();
        let alternates = if verify { Alternates::Verify } else { Alternates::Reserve };
        let settings = Settings { candidates: k, alternates, ..Settings::default() };
        let plan = |ledger: &Ledger| {
            let mut m = Manager::new(settings.clone(), HashMap::new());
            let actions = m.reconcile(
                &Inputs { now: T0, forecasts: &forecasts, host_state: &states, ledger, claims: &HashMap::new(), reshadows: &[], scale_ups: &HashMap::new() },
                &mut counter_ids(),
            );
            (m.table().clone(), actions)
        };
        let (table, actions) = plan(&ledger);
        let (table2, actions2) = plan(&ledger);
        prop_assert_eq!(&actions, &actions2, "same input, same plan");
        prop_assert_eq!(&table, &table2);
        let mut reserved: HashMap<String, Resources> = HashMap::new();
        for e in table.values() {
            let hosts: HashSet<&str> = e.candidates.iter().map(|c| c.host_id.as_str()).collect();
            prop_assert_eq!(hosts.len(), e.candidates.len(), "distinct hosts");
            prop_assert!(e.candidates.len() <= k);
            for c in &e.candidates {
                let r = reserved.entry(c.host_id.clone()).or_default();
                *r = r.plus(&held_by(e, c));
            }
            let ranks: Vec<i32> = e.candidates.iter().map(|c| c.rank).collect();
            prop_assert_eq!(ranks, (0..e.candidates.len() as i32).collect::<Vec<_>>());
            // Only the top-ranked shadow reserves the full size under `verify`; every
            // alternative is still on a host where the full size fitted when it was chosen.
            let full = e.candidates.iter().filter(|c| c.reserved.is_none()).count();
            if verify && !e.candidates.is_empty() {
                prop_assert_eq!(full, 1);
                prop_assert!(e.candidates[0].reserved.is_none(), "the full shadow ranks first");
            } else if !verify {
                prop_assert_eq!(full, e.candidates.len());
            }
        }
        for (h, r) in &reserved {
            let st = &states[h];
            prop_assert!(st.health != HostHealth::Unhealthy, "nothing on an unhealthy host");
            prop_assert!(r.plus(&st.used).fits_within(&st.capacity), "host {} over capacity: {:?} + used {:?} > {:?}", h, r, st.used, st.capacity);
        }
        // The pending reservations are what the next pass sees as load.
        let slots = host_slots(&ledger, &states, table.values(), &settings);
        for (h, r) in &reserved {
            prop_assert_eq!(slots[h].load, r.plus(&states[h].used));
        }
    }
}

type IdGen = Box<dyn FnMut(&str, &str) -> String>;

/// The manager and the simulator's core talking without Kafka, with faults.
struct World {
    sim: Simulator,
    ledger: Ledger,
    manager: Manager,
    forecasts: HashMap<String, DemandForecast>,
    states: HashMap<String, HostState>,
    claims: HashMap<String, Claim>,
    now: i64,
    ids: IdGen,
    lose_every: usize,
    duplicate_every: usize,
    commands_seen: usize,
    reshadows: Vec<ReshadowRequest>,
    scale_ups: HashMap<String, ScaleUpForecast>,
}

impl World {
    fn new(hosts: usize, workloads: usize) -> Self {
        Self::with_alternates(hosts, workloads, Alternates::Verify)
    }

    fn with_alternates(hosts: usize, workloads: usize, alternates: Alternates) -> Self {
        let settings = SimSettings {
            hosts,
            host_capacity: res(8_000, 32),
            shadow_ready_delay_ms: 1_000,
            ..SimSettings::default()
        };
        let mut sim = Simulator::new(settings, Ledger::default());
        let mut ledger = Ledger::default();
        for e in sim.boot(T0) {
            ledger.apply(&e);
        }
        let forecasts = (0..workloads)
            .map(|i| {
                let w = format!("w{i}");
                (w.clone(), forecast(&w, T0, &[1_500.0; 288], 2.0))
            })
            .collect();
        Self {
            sim,
            ledger,
            manager: Manager::new(
                Settings {
                    command_timeout_ms: 5_000,
                    alternates,
                    ..Settings::default()
                },
                HashMap::new(),
            ),
            forecasts,
            states: HashMap::new(),
            claims: HashMap::new(),
            now: T0,
            ids: Box::new(counter_ids()),
            lose_every: 0,
            duplicate_every: 0,
            commands_seen: 0,
            reshadows: Vec::new(),
            scale_ups: HashMap::new(),
        }
    }

    fn deliver(&mut self, events: Vec<FleetEvent>) {
        for e in events {
            self.ledger.apply(&e);
        }
    }

    /// One second of the world: a reconcile pass, command delivery with faults, timers.
    fn step(&mut self) -> Vec<Action> {
        self.now += 1_000;
        let reshadows = std::mem::take(&mut self.reshadows);
        let actions = self.manager.reconcile(
            &Inputs {
                now: self.now,
                forecasts: &self.forecasts,
                host_state: &self.states,
                ledger: &self.ledger,
                claims: &self.claims,
                reshadows: &reshadows,
                scale_ups: &self.scale_ups,
            },
            &mut self.ids,
        );
        for a in &actions {
            if let Action::Command(c) = a {
                self.commands_seen += 1;
                if self.lose_every > 0 && self.commands_seen.is_multiple_of(self.lose_every) {
                    continue;
                }
                let ev = self.sim.execute(c, self.now);
                self.deliver(ev);
                if self.duplicate_every > 0
                    && self.commands_seen.is_multiple_of(self.duplicate_every)
                {
                    let ev = self.sim.execute(c, self.now);
                    assert!(ev.is_empty(), "a duplicate changed the fleet");
                }
            }
        }
        let ev = self.sim.tick(self.now);
        self.deliver(ev);
        assert!(self.sim.ledger().overcommitted().is_empty());
        actions
    }

    fn run(&mut self, seconds: usize) {
        for _ in 0..seconds {
            self.step();
        }
    }

    fn restart_manager(&mut self) {
        let table: HashMap<String, _> = self
            .manager
            .table()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.manager = Manager::new(self.manager.settings().clone(), table);
    }

    fn healthy(&self, w: &str) -> usize {
        self.manager.table()[w]
            .candidates
            .iter()
            .filter(|c| c.status == ShadowStatus::Healthy)
            .count()
    }

    /// What every live shadow in the fleet holds, summed.
    fn held_in_shadows(&self) -> Resources {
        self.sim
            .ledger()
            .shadows()
            .values()
            .fold(Resources::default(), |a, r| a.plus(&r.resources))
    }

    /// Live shadows in the fleet per workload: never more than K once settled.
    fn live_per_workload(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.sim.ledger().shadows().values() {
            *m.entry(r.workload_id.clone()).or_default() += 1;
        }
        m
    }
}

#[test]
fn shadows_become_ready_on_k_hosts_and_failures_are_replaced() {
    let mut w = World::new(6, 4);
    w.run(5);
    for i in 0..4 {
        let e = &w.manager.table()[&format!("w{i}")];
        assert_eq!(e.state, ShadowState::Active, "{e:?}");
        assert_eq!(w.healthy(&format!("w{i}")), 3);
        assert_eq!(e.requirements, res(1_500, 2));
    }
    // Fail one shadow: it is replaced on a host the workload does not use yet.
    let victim = w.manager.table()["w0"].candidates[0].clone();
    let ev = w.sim.fail_shadows(
        &umbra_fleet::ShadowSelector::Shadow(victim.shadow_id.clone()),
        w.now,
    );
    w.deliver(ev);
    w.run(1);
    let e = &w.manager.table()["w0"];
    assert!(
        e.reason.contains("failed: health check failed"),
        "{}",
        e.reason
    );
    assert!(e.candidates.iter().all(|c| c.shadow_id != victim.shadow_id));
    assert!(
        e.candidates.iter().all(|c| c.host_id != victim.host_id),
        "replacement avoids the failed host"
    );
    w.run(2);
    assert_eq!(w.healthy("w0"), 3, "{:?}", w.manager.table()["w0"]);
    // An unhealthy host: its candidates drop to the last rank.
    let top = w.manager.table()["w1"].candidates[0].host_id.clone();
    w.states
        .insert(top.clone(), host_state(&top, res(8_000, 32), false));
    w.run(1);
    let e = &w.manager.table()["w1"];
    assert_eq!(e.host_ranking.last(), Some(&top), "{e:?}");
    assert_eq!(e.candidates.last().map(|c| c.health_score), Some(0.0));
    assert_eq!(w.live_per_workload().values().max(), Some(&3));
}

#[test]
fn lost_and_duplicated_commands_and_restarts_are_survived() {
    let mut w = World::new(8, 6);
    w.lose_every = 3;
    w.duplicate_every = 4;
    for round in 0..4 {
        w.run(7);
        w.restart_manager();
        if round == 1 {
            w.lose_every = 0;
        }
    }
    w.lose_every = 0;
    w.run(30);
    for i in 0..6 {
        assert_eq!(
            w.healthy(&format!("w{i}")),
            3,
            "{:?}",
            w.manager.table()[&format!("w{i}")]
        );
    }
    // Nothing duplicated: each workload holds exactly its K shadows in the fleet.
    let live = w.live_per_workload();
    assert!(live.values().all(|n| *n == 3), "{live:?}");
    // Settled: another pass changes nothing.
    assert!(w.step().is_empty());
}

#[test]
fn forecast_drop_releases_and_claim_releases_the_others() {
    let mut w = World::new(4, 2);
    w.run(3);
    // The interceptor claims w0's best shadow.
    let best = w.manager.table()["w0"].candidates[0].clone();
    w.claims.insert(
        best.shadow_id.clone(),
        Claim {
            shadow_id: best.shadow_id.clone(),
            workload_id: "w0".into(),
            request_id: "r1".into(),
            host_id: best.host_id.clone(),
            entry_version: 1,
            claimed_at: w.now,
        },
    );
    w.run(2);
    let e = &w.manager.table()["w0"];
    assert_eq!(e.state, ShadowState::Claimed);
    // The others stay staged until the claimed one has become the workload.
    assert_eq!(e.candidates.len(), 3);
    assert_eq!(w.live_per_workload().get("w0"), Some(&3));
    // The claimed shadow becomes the workload (the interceptor's expand): w0 now holds 1.5
    // cores, so the row makes way and, the forecast asking for 1.5 cores more than before
    // being unchanged at 1.5 cores, nothing more is staged; a higher forecast stages anew.
    let expand = umbra_schemas::FleetCommand {
        command_id: "expand-r1".into(),
        kind: umbra_schemas::FleetCommandKind::ExpandShadow,
        host_id: best.host_id.clone(),
        target_host_id: None,
        shadow_id: Some(best.shadow_id.clone()),
        workload_id: "w0".into(),
        request_id: Some("r1".into()),
        resources: res(1_500, 2),
        issued_at: w.now,
    };
    let ev = w.sim.execute(&expand, w.now);
    w.deliver(ev);
    let actions = w.step();
    assert!(actions.contains(&Action::Delete("w0".into())));
    assert!(!w.manager.table().contains_key("w0"));
    w.run(1);
    assert_eq!(
        w.live_per_workload().get("w0"),
        None,
        "nothing more predicted: the other shadows are released"
    );
    let mut more = forecast("w0", T0, &[3_500.0; 288], 2.0);
    more.generated_at = w.now;
    w.forecasts.insert("w0".into(), more);
    w.run(3);
    let e = &w.manager.table()["w0"];
    assert_eq!(e.state, ShadowState::Active, "{e:?}");
    // Shadows of one replica of the size it was placed at; 2000m more is two replicas, so
    // K + 1 shadows on distinct hosts, and two requests may each claim one.
    assert_eq!(e.requirements, res(1_500, 2));
    assert_eq!((e.replicas, e.candidates.len()), (2, 4));
    // A request takes one of them: the row still serves the second replica; once it is the
    // workload (3000m held, 3500m forecast), the others stay staged for the next replica.
    let best = e.candidates[0].clone();
    let before: Vec<String> = e.candidates.iter().map(|c| c.shadow_id.clone()).collect();
    w.claims.insert(
        best.shadow_id.clone(),
        Claim {
            shadow_id: best.shadow_id.clone(),
            workload_id: "w0".into(),
            request_id: "r2".into(),
            host_id: best.host_id.clone(),
            entry_version: e.version,
            claimed_at: w.now,
        },
    );
    let ev = w.sim.execute(
        &umbra_schemas::FleetCommand {
            command_id: "expand-r2".into(),
            shadow_id: Some(best.shadow_id.clone()),
            host_id: best.host_id.clone(),
            request_id: Some("r2".into()),
            ..expand.clone()
        },
        w.now,
    );
    w.run(1);
    let e = &w.manager.table()["w0"];
    assert_eq!(
        e.state,
        ShadowState::Active,
        "one of two claims taken: {e:?}"
    );
    w.deliver(ev);
    w.run(3);
    let e = &w.manager.table()["w0"];
    assert!(e.candidates.iter().all(|c| c.shadow_id != best.shadow_id));
    assert_eq!(e.replicas, 1);
    assert_eq!(e.requirements, res(1_500, 2), "{e:?}");
    let kept = e
        .candidates
        .iter()
        .filter(|c| before.contains(&c.shadow_id))
        .count();
    assert_eq!(kept, 3, "the unclaimed shadows were kept: {e:?}");
    assert_eq!(e.state, ShadowState::Active);
    // w1's forecast drops to nothing: its row goes and its shadows are released.
    let mut dropped = forecast("w1", T0, &[0.0; 288], 0.0);
    dropped.generated_at = w.now; // a new forecast is a new generation
    w.forecasts.insert("w1".into(), dropped);
    let actions = w.step();
    assert!(actions.contains(&Action::Delete("w1".into())));
    w.run(1);
    assert_eq!(w.live_per_workload().get("w1"), None);
    assert!(!w.manager.table().contains_key("w1"));
}

#[test]
fn capacity_is_never_exceeded_when_demand_outgrows_the_fleet() {
    // 3 hosts of 8 cores, 10 workloads wanting 3 cores on 3 hosts each: most cannot fit.
    let mut w = World::with_alternates(3, 10, Alternates::Reserve);
    for f in w.forecasts.values_mut() {
        *f = forecast(&f.workload_id.clone(), T0, &[3_000.0; 288], 1.0);
    }
    w.run(10);
    assert!(w.sim.ledger().overcommitted().is_empty());
    let placed: usize = w.live_per_workload().values().sum();
    assert_eq!(placed, 6, "two 3-core shadows fit per 8-core host");
    let short = w
        .manager
        .table()
        .values()
        .filter(|e| e.candidates.len() < 3)
        .count();
    assert!(
        short >= 7,
        "the rest say why: {:?}",
        w.manager
            .table()
            .values()
            .map(|e| &e.reason)
            .collect::<Vec<_>>()
    );
    assert!(w
        .manager
        .table()
        .values()
        .any(|e| e.reason.contains("candidate hosts can hold")));
}

proptest! {
    /// The cached demand equals a fresh computation at any later time within its validity.
    #[test]
    fn demand_validity_is_honest(cpu in proptest::collection::vec(0.0f64..3_000.0, 1..60), held in 0i64..2_000, t0 in 0i64..3_600_000, dt in 0i64..3_600_000) {
        let s = Settings { planning_horizon_ms: 2 * 3_600_000, ..Settings::default() };
        let f = forecast("w", T0, &cpu, 0.0);
        let held = res(held, 0);
        let (d, until) = umbra_shadow_manager::core::demand_until(&f, &held, None, &s, T0 + t0);
        let later = T0 + t0 + dt;
        if later < until {
            prop_assert_eq!(demand(&f, &held, &s, later), d);
        }
    }
}

#[test]
fn reshadow_requests_move_a_shadow_once() {
    let mut w = World::new(6, 1);
    w.run(3);
    let before = w.manager.table()["w0"].clone();
    let moved = before.candidates[0].clone();
    let used: HashSet<String> = before
        .candidates
        .iter()
        .map(|c| c.host_id.clone())
        .collect();
    let to = w
        .sim
        .settings()
        .host_ids()
        .into_iter()
        .find(|h| !used.contains(h))
        .expect("a free host");
    let request = ReshadowRequest {
        request_id: "rs-1".into(),
        workload_id: "w0".into(),
        shadow_id: moved.shadow_id.clone(),
        from_host_id: moved.host_id.clone(),
        to_host_id: Some(to.clone()),
        reason: "cpu 93% > 85% for 10m".into(),
        requested_at: w.now,
    };
    w.reshadows.push(request.clone());
    w.run(1);
    let e = w.manager.table()["w0"].clone();
    assert!(e.reason.contains("reshadow rs-1: cpu 93%"), "{}", e.reason);
    assert!(e.candidates.iter().any(|c| c.host_id == to));
    assert!(e.candidates.iter().all(|c| c.host_id != moved.host_id));
    w.run(3);
    assert_eq!(w.healthy("w0"), 3);
    assert!(
        w.sim.ledger().shadow(&moved.shadow_id).is_none(),
        "the old shadow is released"
    );
    // The same request again (a replay after a restart) changes nothing.
    w.reshadows.push(request);
    assert!(w.step().is_empty());
}

fn pool_forecast(slots: i32, size: Resources, step_start: i64) -> ScaleUpForecast {
    ScaleUpForecast {
        subject: "pool/0".into(),
        kind: ScaleUpSubject::Pool,
        step_start,
        step_seconds: 300,
        generated_at: step_start,
        at_least: vec![0.9; slots.max(0) as usize],
        size,
        labels: HashMap::new(),
        members: vec!["w0".into(), "w1".into()],
        threshold: 0.01,
        slots,
    }
}

fn pooled_world() -> World {
    let mut w = World::new(4, 0);
    w.manager = Manager::new(
        Settings {
            workload_rows: false,
            command_timeout_ms: 5_000,
            ..Settings::default()
        },
        HashMap::new(),
    );
    w
}

/// Request `r1` of another workload (`w7`) takes the slot `taken` at `at`, as the
/// interceptor does: its claim, and the fleet's answer to its expand command.
fn claim_pool_slot(
    w: &mut World,
    taken: &umbra_schemas::ShadowCandidate,
    at: i64,
) -> Vec<FleetEvent> {
    w.claims.insert(
        taken.shadow_id.clone(),
        Claim {
            shadow_id: taken.shadow_id.clone(),
            workload_id: "w7".into(),
            request_id: "r1".into(),
            host_id: taken.host_id.clone(),
            entry_version: 1,
            claimed_at: at,
        },
    );
    let expand = FleetCommand {
        command_id: "expand-r1".into(),
        kind: FleetCommandKind::ExpandShadow,
        host_id: taken.host_id.clone(),
        target_host_id: None,
        shadow_id: Some(taken.shadow_id.clone()),
        workload_id: "w7".into(),
        request_id: Some("r1".into()),
        resources: res(1_000, 2),
        issued_at: at,
    };
    w.sim.execute(&expand, w.now)
}

fn slot_ids(w: &World) -> Vec<String> {
    w.manager.table()["pool/0"]
        .candidates
        .iter()
        .filter(|c| c.status != ShadowStatus::Claimed)
        .map(|c| c.shadow_id.clone())
        .collect()
}

#[test]
fn a_pool_row_holds_the_slots_its_forecast_asks_and_keeps_their_identity() {
    let mut w = pooled_world();
    w.scale_ups
        .insert("pool/0".into(), pool_forecast(3, res(1_200, 2), T0));
    w.run(5);
    let e = &w.manager.table()["pool/0"];
    assert!(e.pool_labels.is_some(), "a pool row: {e:?}");
    assert_eq!(e.replicas, 3);
    assert_eq!(w.healthy("pool/0"), 3);
    assert_eq!(w.sim.ledger().shadows().len(), 3);
    let first = slot_ids(&w);
    // Fewer wanted: the newest go, the others stay as they were (not re-staged).
    w.scale_ups.insert(
        "pool/0".into(),
        pool_forecast(1, res(1_200, 2), T0 + 300_000),
    );
    w.run(3);
    assert_eq!(slot_ids(&w), first[..1].to_vec());
    assert_eq!(w.sim.ledger().shadows().len(), 1);
    // More again: the kept slot stays, new ones join it.
    w.scale_ups.insert(
        "pool/0".into(),
        pool_forecast(2, res(1_200, 2), T0 + 600_000),
    );
    w.run(3);
    let now = slot_ids(&w);
    assert_eq!(now.len(), 2);
    assert_eq!(now[0], first[0]);
    assert_eq!(w.healthy("pool/0"), 2);
}

#[test]
fn a_claimed_slot_becomes_the_workload_and_is_refilled() {
    let mut w = pooled_world();
    w.scale_ups
        .insert("pool/0".into(), pool_forecast(2, res(1_200, 2), T0));
    w.run(5);
    let taken = w.manager.table()["pool/0"].candidates[0].clone();
    // A request of another workload takes the slot, as the interceptor does.
    let now = w.now;
    let ev = claim_pool_slot(&mut w, &taken, now);
    assert!(
        ev.iter()
            .any(|e| e.kind == umbra_schemas::FleetEventKind::Expanded),
        "the fleet expands a pool slot into any workload: {ev:?}"
    );
    w.deliver(ev);
    w.run(5);
    let e = &w.manager.table()["pool/0"];
    assert!(e.candidates.iter().all(|c| c.shadow_id != taken.shadow_id));
    // Under the step's forecast the claimed slot counts against its slots: not refilled yet.
    assert_eq!(
        w.healthy("pool/0"),
        1,
        "not refilled before the next step: {e:?}"
    );
    let f = w.scale_ups["pool/0"].clone();
    w.scale_ups.insert(
        "pool/0".into(),
        ScaleUpForecast {
            step_start: f.step_start + i64::from(f.step_seconds) * 1000,
            ..f
        },
    );
    w.run(5);
    let e = &w.manager.table()["pool/0"];
    assert_eq!(
        w.healthy("pool/0"),
        2,
        "refilled at the next step's forecast: {e:?}"
    );
    assert_eq!(w.sim.ledger().held("w7"), res(1_000, 2));
}

#[test]
fn a_stale_pool_forecast_holds_nothing_and_its_row_goes() {
    let mut w = pooled_world();
    w.scale_ups
        .insert("pool/0".into(), pool_forecast(2, res(1_200, 2), T0));
    w.run(5);
    assert_eq!(w.healthy("pool/0"), 2);
    // Twelve steps without a newer forecast: its forecaster has stopped.
    w.run(60 * 60);
    assert!(!w.manager.table().contains_key("pool/0"));
    assert!(w.sim.ledger().shadows().is_empty());
}

#[test]
fn a_host_that_refused_a_slot_is_not_asked_again_until_the_backoff_passes() {
    let mut w = pooled_world();
    let backoff = w.manager.settings().failed_host_backoff_ms;
    // A placement the manager has not heard of yet (the host's next report would show it):
    // the fleet knows host-000 is nearly full, the manager plans as if it were empty.
    let hidden = FleetCommand {
        command_id: "place-hidden".into(),
        kind: FleetCommandKind::PlaceWorkload,
        host_id: "host-000".into(),
        target_host_id: None,
        shadow_id: None,
        workload_id: "w9".into(),
        request_id: Some("r9".into()),
        resources: res(7_000, 2),
        issued_at: w.now,
    };
    let ev = w.sim.execute(&hidden, w.now);
    assert!(
        ev.iter()
            .any(|e| e.kind == umbra_schemas::FleetEventKind::Placed),
        "{ev:?}"
    );
    // More slots than the three other hosts hold (two each): the pool keeps wanting room on
    // host-000, which refuses.
    w.scale_ups
        .insert("pool/0".into(), pool_forecast(8, res(3_500, 2), T0));
    let asks_full_host = |actions: &[Action]| {
        actions.iter().any(|a| {
            matches!(a, Action::Command(c)
                if c.kind == FleetCommandKind::CreateShadow && c.host_id == "host-000")
        })
    };
    let seconds = (backoff / 1_000) as usize - 5;
    let passes_asking = (0..seconds).filter(|_| asks_full_host(&w.step())).count();
    assert_eq!(
        passes_asking, 1,
        "host-000 asked in one pass within the backoff"
    );
    let e = &w.manager.table()["pool/0"];
    assert!(
        e.candidates.iter().all(|c| c.host_id != "host-000"),
        "{e:?}"
    );
    assert_eq!(w.healthy("pool/0"), 6, "{e:?}");
    // Settled while the backoff lasts: a pass changes nothing.
    assert!(w.step().is_empty());
    // Once it has passed, the host is asked again (and refuses again), once.
    let later = (0..10).filter(|_| asks_full_host(&w.step())).count();
    assert_eq!(later, 1, "asked again once the backoff has passed");
}

#[test]
fn a_pool_whose_only_slot_was_claimed_writes_nothing_more_in_its_step() {
    let mut w = pooled_world();
    w.scale_ups
        .insert("pool/0".into(), pool_forecast(1, res(1_200, 2), T0));
    w.run(5);
    let taken = w.manager.table()["pool/0"].candidates[0].clone();
    let now = w.now;
    let ev = claim_pool_slot(&mut w, &taken, now);
    w.deliver(ev);
    // The slot became the workload: the row goes, once.
    let deletes: usize = (0..5)
        .map(|_| {
            w.step()
                .iter()
                .filter(|a| matches!(a, Action::Delete(id) if id == "pool/0"))
                .count()
        })
        .sum();
    assert_eq!(deletes, 1, "one tombstone for the row");
    assert!(!w.manager.table().contains_key("pool/0"));
    // The rest of the step: the forecast still says one slot, and it is spent.
    for _ in 0..10 {
        let a = w.step();
        assert!(
            a.is_empty(),
            "nothing to write while the step's slot is spent: {a:?}"
        );
    }
}

#[test]
fn verify_reserves_the_full_size_once_and_placeholders_on_the_other_hosts() {
    let placeholder = Settings::default().placeholder;
    let mut w = World::new(6, 1);
    w.run(5);
    let e = w.manager.table()["w0"].clone();
    assert_eq!(e.candidates.len(), 3, "{e:?}");
    assert_eq!(
        e.candidates[0].reserved, None,
        "rank 0 is the full shadow: {e:?}"
    );
    assert!(e.candidates[1..]
        .iter()
        .all(|c| c.reserved == Some(placeholder)));
    // What the fleet holds for the row: one full size and two placeholders.
    let held = w.held_in_shadows();
    assert_eq!(
        held,
        e.requirements.plus(&placeholder).plus(&placeholder),
        "{e:?}"
    );
    // The full shadow fails: another full one is staged on a new host and the row goes back
    // to three shadows, the worst placeholder released.
    let victim = e.candidates[0].clone();
    let ev = w.sim.fail_shadows(
        &umbra_fleet::ShadowSelector::Shadow(victim.shadow_id.clone()),
        w.now,
    );
    w.deliver(ev);
    w.run(3);
    let e = w.manager.table()["w0"].clone();
    assert_eq!(e.candidates.len(), 3, "{e:?}");
    assert_eq!(
        e.candidates.iter().filter(|c| c.reserved.is_none()).count(),
        1,
        "{e:?}"
    );
    assert_eq!(e.candidates[0].reserved, None, "{e:?}");
    assert_ne!(e.candidates[0].host_id, victim.host_id);
    assert_eq!(w.live_per_workload()["w0"], 3);
    assert!(w.sim.ledger().overcommitted().is_empty());
}

#[test]
fn reserve_holds_the_full_size_on_every_ranked_host() {
    let mut w = World::with_alternates(6, 1, Alternates::Reserve);
    w.run(5);
    let e = w.manager.table()["w0"].clone();
    assert_eq!(e.candidates.len(), 3);
    assert!(e.candidates.iter().all(|c| c.reserved.is_none()), "{e:?}");
    let held = w.held_in_shadows();
    assert_eq!(
        held,
        e.requirements.plus(&e.requirements).plus(&e.requirements)
    );
}

#[test]
fn shadow_ids_name_row_host_and_time_and_repeat_run_to_run() {
    let mut a = umbra_shadow_manager::ShadowIds::default();
    let first: Vec<String> = (0..3)
        .map(|_| a.next("pool-1", "host-004", 600_000))
        .collect();
    let distinct: HashSet<&String> = first.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "one pass never names two shadows alike: {first:?}"
    );
    assert_eq!(first[0], "pool-1@host-004:600000.0");
    // A later pass starts its sequence again, and its time keeps the ids apart.
    let later = a.next("pool-1", "host-004", 900_000);
    assert_eq!(later, "pool-1@host-004:900000.0");
    assert!(!first.contains(&later));
    // A second run of the same passes names the same shadows.
    let mut b = umbra_shadow_manager::ShadowIds::default();
    let again: Vec<String> = (0..3)
        .map(|_| b.next("pool-1", "host-004", 600_000))
        .collect();
    assert_eq!(first, again);
}

/// On a driven clock the manager sees a step's claims at the next step's mark: a claim made
/// in the step before does not count against the slots the new step's forecast asks.
#[test]
fn a_claim_seen_only_in_the_next_step_counts_against_its_own_step() {
    let mut w = pooled_world();
    w.scale_ups
        .insert("pool/0".into(), pool_forecast(1, res(1_200, 2), T0));
    w.run(5);
    let taken = w.manager.table()["pool/0"].candidates[0].clone();
    // The next step's forecast, one slot again, arrives with the claim made before it.
    w.scale_ups.insert(
        "pool/0".into(),
        pool_forecast(1, res(1_200, 2), T0 + 300_000),
    );
    let ev = claim_pool_slot(&mut w, &taken, T0 + 1);
    w.deliver(ev);
    w.run(5);
    let ids = slot_ids(&w);
    assert_eq!(ids.len(), 1, "the new step's slot is held: {ids:?}");
    assert_ne!(ids[0], taken.shadow_id, "a new slot, not the claimed one");
    assert_eq!(w.healthy("pool/0"), 1);
}
