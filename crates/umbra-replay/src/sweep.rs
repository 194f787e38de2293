//! The trade-off curve (`umbra replay --sweep`): hit rate against reserve for umbra's pooled
//! scale-up rule at several reserve budgets and for every baseline at the same reserves, all on
//! the same requests with the same ready delay (docs/scale-up.md).
//!
//! Reserve ratio: what a policy held in shadows or slots and no request claimed, core-hours,
//! over the core-hours the workloads used.

use serde::{Deserialize, Serialize};

use crate::online::{tails_of, Scorer};
use crate::pool::{
    budget_thresholds, keep_alive, per_workload_pools, simulate, ClassCount, PoolSpec,
    PooledScaleUp, Scheduled, SimOutcome, SimSettings, SizeClasses, StaticPools, TradeOff,
};
use crate::scaleup::{brier, reliability, ModelSettings, ReliabilityBin, ScaleUpError};
use crate::steps::StepTrace;
use crate::Placeholder;

/// The budgets the sweep runs umbra at (reserve over used CPU).
pub const BUDGETS: &[f64] = &[0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 3.0];

/// Settings of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSettings {
    /// Budgets for umbra and for the baselines' points.
    pub budgets: Vec<f64>,
    /// Ready delay and refill time, the same for every policy.
    pub sim: SimSettings,
    /// The scale-up model.
    pub model: ModelSettings,
    /// Refit the model every this many steps of the live part (re-scoring is every step).
    pub refit_every_steps: usize,
    /// Steps before the live part scored out of sample, on which the budget controller first
    /// calibrates its threshold.
    pub warmup_steps: usize,
    /// Steps before each recalibration the budget controller looks back on (from the warm-up
    /// on, everything seen: a short window swings the threshold with each day's activity).
    pub calibration_window_steps: usize,
    /// Weight of each class's base rate under the model's class tails ([`floor_tails`]).
    pub base_rate_floor: f64,
    /// Largest number of requests of one class in one step the rule considers.
    pub class_kmax: usize,
    /// How a class's count is made of its members' forecasts.
    pub class_count: ClassCount,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            budgets: BUDGETS.to_vec(),
            sim: SimSettings::default(),
            model: ModelSettings::default(),
            refit_every_steps: 288,
            warmup_steps: 7 * 288,
            calibration_window_steps: usize::MAX,
            base_rate_floor: 0.1,
            class_kmax: 40,
            class_count: ClassCount::BurstShape,
        }
    }
}

/// One point of the curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// `umbra`, `static-one-size`, `static-size-classes`, `static-per-workload`,
    /// `keep-alive-10m`, `keep-alive-1h` or `oracle`.
    pub policy: String,
    /// The budget the point was chosen for (none: the policy has a single setting).
    pub budget: Option<f64>,
    /// Reserve held and not claimed over used CPU.
    pub reserve_ratio: f64,
    /// Requests placed at once on a ready slot, over all requests.
    pub hit_rate: f64,
    /// The setting behind the point (slots, per class or in all).
    pub setting: String,
    /// Requests refused because real replicas filled the fleet.
    #[serde(default)]
    pub rejected: u64,
    /// Slots (or kept replicas) preempted to make room for standard allocation.
    #[serde(default)]
    pub preempted: u64,
}

/// How good the scale-up probabilities were on the live part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleUpScore {
    /// Brier score of P(a request at the step), umbra's model.
    pub brier_model: f64,
    /// Brier score of each workload's base rate over its history.
    pub brier_base_rate: f64,
    /// Brier score of each workload's time-of-day profile over its history.
    pub brier_seasonal_profile: f64,
    /// Workload-steps scored.
    pub scored: usize,
    /// Reliability of the model's probabilities.
    pub reliability: Vec<ReliabilityBin>,
}

/// The sweep's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepResult {
    /// Requests in the live part.
    pub requests: u64,
    /// CPU the workloads used in the live part, core-hours.
    pub used_core_hours: f64,
    /// Every policy's points.
    pub curve: Vec<CurvePoint>,
    /// Per budget: umbra against the strongest static pool at no more reserve than umbra held.
    pub against_static: Vec<AgainstStatic>,
    /// The scale-up probabilities' score.
    pub scale_up: ScaleUpScore,
    /// umbra's steps at each budget: what the pipeline's run at that budget is compared with.
    #[serde(skip)]
    pub umbra_steps: Vec<UmbraSteps>,
}

/// umbra's rule at one budget, step by step over the live part.
#[derive(Debug, Clone, PartialEq)]
pub struct UmbraSteps {
    /// The budget.
    pub budget: f64,
    /// Slots held per step and size class (`[i][class]`).
    pub slots: Vec<Vec<usize>>,
    /// Cores held in slots and not claimed, per step (after the step's requests).
    pub reserve_cores: Vec<f64>,
}

/// umbra at one budget against the best static pool (one size or by size class, counts tuned
/// in hindsight) holding no more reserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgainstStatic {
    /// The budget.
    pub budget: f64,
    /// umbra's reserve ratio.
    pub umbra_reserve_ratio: f64,
    /// umbra's hit rate.
    pub umbra_hit_rate: f64,
    /// The best static pool's hit rate at no more reserve.
    pub static_hit_rate: f64,
    /// Which static pool that was and its counts.
    pub static_setting: String,
}

fn outcome_point(policy: &str, budget: Option<f64>, o: &SimOutcome, setting: String) -> CurvePoint {
    CurvePoint {
        policy: policy.into(),
        budget,
        reserve_ratio: o.reserve_ratio(),
        hit_rate: o.hit_rate(),
        setting,
        rejected: o.rejected,
        preempted: o.preempted,
    }
}

/// A static policy's configurations from none upward, each with its outcome: the path the
/// budget points are chosen from.
type StaticPath = Vec<(Vec<usize>, SimOutcome)>;

/// One pool of the largest replica's size, 0, 1, 2, … slots until the reserve passes `max_ratio`.
fn one_size_path(live: &StepTrace, sim: &SimSettings, max_ratio: f64) -> StaticPath {
    let slot = live.sizes.iter().fold(
        Placeholder {
            cpu_millicores: 0.0,
            memory_bytes: 0.0,
        },
        |a, s| Placeholder {
            cpu_millicores: a.cpu_millicores.max(s.cpu_millicores),
            memory_bytes: a.memory_bytes.max(s.memory_bytes),
        },
    );
    let pool = PoolSpec {
        slot,
        workload: None,
    };
    let mut path = Vec::new();
    for n in 0.. {
        let o = simulate(
            live,
            &mut StaticPools {
                pools: vec![pool],
                counts: vec![n],
            },
            sim,
        );
        // A slot more that the fleet has no room for changes nothing, and nor would any more.
        let full = path
            .last()
            .is_some_and(|(_, p): &(Vec<usize>, SimOutcome)| {
                p.hits == o.hits && p.reserve_core_hours == o.reserve_core_hours
            });
        let done = o.reserve_ratio() > max_ratio || o.hits == o.requests || full;
        path.push((vec![n], o));
        if done {
            break;
        }
    }
    path
}

/// Pools by size class with counts tuned in hindsight: from none, add the slot that buys the
/// most hits per core-hour of reserve, until the reserve passes `max_ratio` or no slot adds a hit.
fn size_class_path(live: &StepTrace, sim: &SimSettings, max_ratio: f64) -> StaticPath {
    let pools = SizeClasses::of(&live.sizes).pools();
    let run = |counts: &[usize]| {
        simulate(
            live,
            &mut StaticPools {
                pools: pools.clone(),
                counts: counts.to_vec(),
            },
            sim,
        )
    };
    let mut counts = vec![0usize; pools.len()];
    let mut current = run(&counts);
    let mut path = vec![(counts.clone(), current.clone())];
    while current.reserve_ratio() <= max_ratio && current.hits < current.requests {
        let best = (0..pools.len())
            .map(|c| {
                let mut next = counts.clone();
                next[c] += 1;
                let o = run(&next);
                let gain = (o.hits as f64 - current.hits as f64)
                    / (o.reserve_core_hours - current.reserve_core_hours).max(1e-9);
                (gain, next, o)
            })
            .filter(|(_, _, o)| o.hits > current.hits)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((_, next, o)) = best else { break };
        counts = next;
        current = o;
        path.push((counts.clone(), current.clone()));
    }
    path
}

/// The point of `path` with the most hits at a reserve ratio of at most `ratio`.
fn best_within(path: &StaticPath, ratio: f64) -> Option<&(Vec<usize>, SimOutcome)> {
    path.iter()
        .filter(|(_, o)| o.reserve_ratio() <= ratio + 1e-12)
        .max_by(|a, b| {
            a.1.hits
                .cmp(&b.1.hits)
                .then(b.1.reserve_core_hours.total_cmp(&a.1.reserve_core_hours))
        })
}

/// umbra's pooled rule over `trace[from..]` with the trade-off `t`; `tails` are the class
/// tails of the whole `trace` (the steps before `from` are what a budget calibrates on).
pub fn umbra_rule(
    classes: &SizeClasses,
    tails: &[Vec<Vec<f64>>],
    trace: &StepTrace,
    from: usize,
    t: TradeOff,
    s: &SweepSettings,
) -> SimOutcome {
    let live = trace.slice(from..trace.steps());
    let live_tails: Vec<Vec<Vec<f64>>> = tails.iter().map(|c| c[from..].to_vec()).collect();
    let mut rule = match t {
        TradeOff::MissCost(cost) => {
            PooledScaleUp::miss_cost(classes.clone(), live_tails, trace.step_s as f64, cost)
        }
        TradeOff::Budget(b) => {
            let thresholds = budget_thresholds(
                classes,
                tails,
                trace,
                from,
                b,
                s.refit_every_steps,
                s.calibration_window_steps,
                &s.sim,
            );
            PooledScaleUp::scheduled(classes.clone(), live_tails, thresholds)
        }
    };
    simulate(&live, &mut rule, &s.sim)
}

/// Runs the sweep: `history` then `live` (the same workloads), umbra's model fitted on the
/// history and refitted as the live part goes on.
pub fn sweep(
    history: &StepTrace,
    live: &StepTrace,
    s: &SweepSettings,
) -> Result<SweepResult, ScaleUpError> {
    let joined = history.then(live);
    // The rule as the forecast service runs it: begun on the history (its warm-up scored out
    // of sample), then one step at a time.
    let (mut scorer, mut scores) = Scorer::begin(history, s)?;
    scorer.fit_ahead(&joined, history.steps()..joined.steps());
    for i in history.steps()..joined.steps() {
        scores.push(scorer.score(&joined, i)?);
    }
    let (warm_from, live_from) = (scorer.warm_from, scorer.live_from);
    let classes = scorer.classes.clone();
    let all_tails = tails_of(&scores);
    let p: Vec<Vec<f64>> = (0..joined.workloads())
        .map(|w| scores.iter().map(|x| x.p_up[w]).collect())
        .collect();
    let split = live_from - warm_from;
    // The warm-up and the live part as one timeline, with the tails of both.
    let timeline = joined.slice(warm_from..joined.steps());

    let max_ratio = s.budgets.iter().copied().fold(0.0, f64::max) * 1.2;
    let mut curve = Vec::new();
    let mut against = Vec::new();
    let mut umbra_steps = Vec::new();
    let statics = [
        ("static-one-size", one_size_path(live, &s.sim, max_ratio)),
        (
            "static-size-classes",
            size_class_path(live, &s.sim, max_ratio),
        ),
    ];
    for &b in &s.budgets {
        let u = umbra_rule(
            &classes,
            &all_tails,
            &timeline,
            split,
            TradeOff::Budget(b),
            s,
        );
        curve.push(outcome_point("umbra", Some(b), &u, format!("budget {b}")));
        umbra_steps.push(UmbraSteps {
            budget: b,
            slots: u.targets.clone(),
            reserve_cores: u.reserve_cores.clone(),
        });
        for (name, path) in &statics {
            if let Some((counts, o)) = best_within(path, b) {
                curve.push(outcome_point(name, Some(b), o, format!("slots {counts:?}")));
            }
        }
        let best_static = statics
            .iter()
            .filter_map(|(name, path)| {
                best_within(path, u.reserve_ratio()).map(|(c, o)| (name, c, o))
            })
            .max_by(|a, b| a.2.hits.cmp(&b.2.hits));
        against.push(AgainstStatic {
            budget: b,
            umbra_reserve_ratio: u.reserve_ratio(),
            umbra_hit_rate: u.hit_rate(),
            static_hit_rate: best_static.map_or(0.0, |x| x.2.hit_rate()),
            static_setting: best_static.map_or_else(String::new, |(n, c, _)| format!("{n} {c:?}")),
        });
    }
    let per_workload = simulate(
        live,
        &mut StaticPools {
            pools: per_workload_pools(live),
            counts: vec![1; live.workloads()],
        },
        &s.sim,
    );
    curve.push(outcome_point(
        "static-per-workload",
        None,
        &per_workload,
        "1 per workload".into(),
    ));
    for (name, keep) in [("keep-alive-10m", 600.0), ("keep-alive-1h", 3_600.0)] {
        curve.push(outcome_point(
            name,
            None,
            &keep_alive(live, keep, s.sim.fleet),
            format!("{keep} s"),
        ));
    }
    let oracle = simulate(live, &mut Scheduled::oracle(live), &s.sim);
    curve.push(outcome_point(
        "oracle",
        None,
        &oracle,
        "exactly the requests to come".into(),
    ));

    let live_p: Vec<Vec<f64>> = p.iter().map(|x| x[split..].to_vec()).collect();
    Ok(SweepResult {
        requests: live.requests(),
        used_core_hours: oracle.used_core_hours,
        curve,
        against_static: against,
        scale_up: score(history, live, &live_p),
        umbra_steps,
    })
}

/// Brier scores of the model, each workload's base rate and its time-of-day profile (both from
/// the history), and the model's reliability table, on the live part.
pub fn score(history: &StepTrace, live: &StepTrace, p: &[Vec<f64>]) -> ScaleUpScore {
    let per_day = (86_400 / history.step_s) as usize;
    let hour = (3_600 / history.step_s) as usize;
    let (mut pm, mut pb, mut ps, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let origin_step = history.origin_s.div_euclid(history.step_s) as usize;
    for (w, pw) in p.iter().enumerate().take(live.workloads()) {
        let hu = &history.ups[w];
        let base = hu.iter().filter(|u| **u > 0).count() as f64 / hu.len().max(1) as f64;
        // Share of history steps with a request at each step of day, smoothed over ±1 hour.
        let mut by_tod = vec![0.0f64; per_day];
        for (i, u) in hu.iter().enumerate() {
            if *u > 0 {
                by_tod[(origin_step + i) % per_day] += 1.0;
            }
        }
        let days = (hu.len() / per_day).max(1) as f64;
        let profile: Vec<f64> = (0..per_day)
            .map(|tod| {
                (0..=2 * hour)
                    .map(|d| by_tod[(tod + per_day + d - hour) % per_day])
                    .sum::<f64>()
                    / days
                    / (2 * hour + 1) as f64
            })
            .collect();
        let live_origin = origin_step + hu.len();
        for (i, u) in live.ups[w].iter().enumerate() {
            pm.push(pw[i]);
            pb.push(base);
            ps.push(profile[(live_origin + i) % per_day]);
            y.push(if *u > 0 { 1.0 } else { 0.0 });
        }
    }
    ScaleUpScore {
        brier_model: brier(&pm, &y),
        brier_base_rate: brier(&pb, &y),
        brier_seasonal_profile: brier(&ps, &y),
        scored: y.len(),
        reliability: reliability(&pm, &y, &[0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short real trace: 8 VMs, 6 days of history, 2 live days.
    fn short() -> (StepTrace, StepTrace) {
        let dir = umbra_forecasting::data::shared_data_dir().join("bitbrains-rnd");
        let plan = crate::TracePlan::load(&dir, 8, 1, 0.0, 6.0, 2.0).expect("the shared data");
        plan.step_traces()
    }

    fn settings() -> SweepSettings {
        SweepSettings {
            budgets: vec![0.1, 1.0],
            warmup_steps: 2 * 288,
            model: ModelSettings {
                iterations: 40,
                ..ModelSettings::default()
            },
            ..SweepSettings::default()
        }
    }

    #[test]
    fn the_one_size_pool_stops_growing_where_the_fleet_has_no_room_for_a_slot() {
        // One workload whose replica fills what the fleet has left: no slot can ever be
        // staged, so neither the reserve nor the hits can reach a stopping point by growing.
        let steps = 48;
        let live = StepTrace {
            step_s: 300,
            origin_s: 0,
            ids: vec!["w".into()],
            sizes: vec![Placeholder {
                cpu_millicores: 2_000.0,
                memory_bytes: 1e9,
            }],
            cpu: vec![vec![1_500.0; steps]],
            ups: vec![(0..steps).map(|i| u32::from(i % 6 == 5)).collect()],
            downs: vec![(0..steps).map(|i| u32::from(i % 6 == 0 && i > 0)).collect()],
            running: vec![(0..steps).map(|i| 1 + u32::from(i % 6 == 5)).collect()],
        };
        let sim = SimSettings {
            ready_delay_s: 30.0,
            fleet: Some(crate::pool::FleetCapacity {
                cpu_millicores: 3_000.0,
                memory_bytes: 1e12,
            }),
        };
        let path = one_size_path(&live, &sim, 3.6);
        assert!(path.len() <= 2, "{} points", path.len());
        assert!(path.iter().all(|(_, o)| o.hits == 0));
    }

    #[test]
    fn the_sweep_is_the_same_twice_and_names_every_policy() {
        let (history, live) = short();
        assert!(
            live.requests() > 10,
            "two live days of eight VMs ask for replicas"
        );
        let a = sweep(&history, &live, &settings()).expect("the sweep runs");
        let b = sweep(&history, &live, &settings()).expect("the sweep runs");
        assert_eq!(
            serde_json::to_string(&a).expect("json"),
            serde_json::to_string(&b).expect("json"),
            "a seed gives the same result twice"
        );
        for name in [
            "umbra",
            "static-one-size",
            "static-size-classes",
            "static-per-workload",
            "keep-alive-10m",
            "keep-alive-1h",
            "oracle",
        ] {
            assert!(
                a.curve.iter().any(|p| p.policy == name),
                "{name} is on the curve"
            );
        }
        for p in &a.curve {
            assert!(
                (0.0..=1.0).contains(&p.hit_rate) && p.reserve_ratio >= 0.0,
                "{p:?}"
            );
        }
        let oracle = a
            .curve
            .iter()
            .find(|p| p.policy == "oracle")
            .expect("oracle");
        assert_eq!((oracle.hit_rate, oracle.reserve_ratio), (1.0, 0.0));
        // More budget, more hits; the static pools at a budget hold no more than it.
        let umbra: Vec<&CurvePoint> = a.curve.iter().filter(|p| p.policy == "umbra").collect();
        assert!(umbra[1].hit_rate >= umbra[0].hit_rate, "{umbra:?}");
        assert!(umbra[1].reserve_ratio > umbra[0].reserve_ratio, "{umbra:?}");
        for p in a
            .curve
            .iter()
            .filter(|p| p.policy.starts_with("static-") && p.budget.is_some())
        {
            assert!(p.reserve_ratio <= p.budget.unwrap_or(0.0) + 1e-9, "{p:?}");
        }
        assert_eq!(a.scale_up.scored, 8 * 2 * 288);
        assert!(
            a.scale_up.brier_model < a.scale_up.brier_base_rate,
            "{:?}",
            a.scale_up
        );
    }

    #[test]
    fn the_sweep_runs_on_three_days_of_history() {
        // The integration test's replay: 4 VMs of seed 3, 3 days of history, a live day.
        let dir = umbra_forecasting::data::shared_data_dir().join("bitbrains-rnd");
        let plan = crate::TracePlan::load(&dir, 4, 3, 0.0, 3.0, 1.0).expect("the shared data");
        let (history, live) = plan.step_traces();
        let r = sweep(&history, &live, &settings()).expect("a short history is enough");
        assert_eq!(r.scale_up.scored, 4 * 288);
        assert!(r.curve.iter().any(|p| p.policy == "umbra"));
    }
}
