//! umbra's pooled scale-up rule one step at a time (docs/scale-up.md): what the forecast
//! service runs on the usage, scale and request streams, and what the offline sweep runs on a
//! recorded trace. Both call the same two pieces in the same order, so for the same inputs they
//! hold the same slots:
//!
//! - [`Scorer`]: the scale-up model's P(N ≥ k) per workload for the next step and, from them,
//!   each size class's P(N_class ≥ k) (with the base-rate floor). Budget-independent.
//! - [`SlotRule`]: the threshold in force (a miss cost, or a budget held by the controller) and
//!   the slots per class it buys at the step.
//!
//! Every value at step `i` reads only steps before `i`.

use crate::pool::{
    class_base_rates, class_burst_shapes, class_tails, floor_tails, shaped_class_tails, slots_held,
    Calibration, ClassCount, SizeClasses, TradeOff,
};
use crate::scaleup::{burst_tails, ScaleUpError, ScaleUpModel, KMAX};
use crate::steps::StepTrace;
use crate::sweep::SweepSettings;

/// What the scorer says of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepScore {
    /// The step scored (an index of the trace).
    pub step: usize,
    /// Per workload: P(at least one request at the step).
    pub p_up: Vec<f64>,
    /// Per workload: P(N ≥ k) for k = 1..=KMAX.
    pub at_least: Vec<[f64; KMAX]>,
    /// Per size class: P(N_class ≥ k) for k = 0..=class_kmax.
    pub class_tails: Vec<Vec<f64>>,
}

/// The model's side of the rule: refitted every `refit_every_steps` from the first scored step
/// on everything before, re-scored every step.
pub struct Scorer {
    settings: SweepSettings,
    /// First step scored (out of sample from here).
    pub warm_from: usize,
    /// First step slots are held for: the step the scorer began at.
    pub live_from: usize,
    /// The size classes of the workloads, fixed when the scorer began.
    pub classes: SizeClasses,
    base: Vec<Vec<f64>>,
    model: Option<ScaleUpModel>,
    tails: Vec<[f64; KMAX + 2]>,
    /// Each class's burst shape, refreshed with every fit ([`ClassCount::BurstShape`]).
    shapes: Vec<Option<Vec<f64>>>,
    /// Fits made so far (a fit happens at `warm_from + n * refit_every_steps`).
    pub fits: usize,
    /// Fits made ahead of their step ([`Scorer::fit_ahead`]), by step.
    ahead: std::collections::BTreeMap<usize, Result<Fit, ScaleUpError>>,
}

/// What a fit at a step gives: the model (none while nothing asked for a replica), each
/// workload's burst tail and each class's burst shape.
struct Fit {
    model: Option<ScaleUpModel>,
    tails: Vec<[f64; KMAX + 2]>,
    shapes: Vec<Option<Vec<f64>>>,
}

impl Fit {
    /// The fit at step `i` on the steps before it.
    fn at(
        trace: &StepTrace,
        i: usize,
        settings: &SweepSettings,
        classes: &SizeClasses,
    ) -> Result<Self, ScaleUpError> {
        let (model, tails) = match ScaleUpModel::fit(trace, 0..i, &settings.model) {
            Ok(m) => {
                let tails = (0..trace.workloads()).map(|w| *m.tail(w)).collect();
                (Some(m), tails)
            }
            // Nothing asked for a replica yet: nothing to expect.
            Err(ScaleUpError::NoTrainingData(_)) => {
                (None, burst_tails(trace, 0..i, settings.model.tail_prior))
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            model,
            tails,
            shapes: class_burst_shapes(trace, 0..i, classes, settings.class_kmax),
        })
    }
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("warm_from", &self.warm_from)
            .field("live_from", &self.live_from)
            .field("fits", &self.fits)
            .finish_non_exhaustive()
    }
}

impl Scorer {
    /// A scorer beginning at `trace.steps()` (the history is everything before it), with the
    /// warm-up steps scored out of sample: `warmup_steps` back, and at least two days in.
    pub fn begin(
        trace: &StepTrace,
        settings: &SweepSettings,
    ) -> Result<(Self, Vec<StepScore>), ScaleUpError> {
        let live_from = trace.steps();
        let per_day = (86_400 / trace.step_s.max(1)) as usize;
        let warm_from = live_from
            .saturating_sub(settings.warmup_steps)
            .max((2 * per_day).min(live_from));
        let classes = SizeClasses::of(&trace.sizes);
        let base = class_base_rates(trace, &classes, settings.class_kmax);
        let mut s = Self {
            settings: settings.clone(),
            warm_from,
            live_from,
            classes,
            base,
            model: None,
            tails: burst_tails(trace, 0..0, settings.model.tail_prior),
            shapes: Vec::new(),
            fits: 0,
            ahead: std::collections::BTreeMap::new(),
        };
        let mut scores = Vec::with_capacity(live_from - warm_from);
        for i in warm_from..live_from {
            scores.push(s.score(trace, i)?);
        }
        Ok((s, scores))
    }

    fn fit_due(&self, i: usize) -> bool {
        let every = self.settings.refit_every_steps.max(1);
        i >= self.warm_from && (i - self.warm_from).is_multiple_of(every)
    }

    /// Makes the fits due at `steps` now, on every core, for a trace known ahead (the offline
    /// sweep): a fit reads only the steps before its own, each is serial and seeded, so the
    /// scores are those of fitting each at its step, in less wall time.
    pub fn fit_ahead(&mut self, trace: &StepTrace, steps: std::ops::Range<usize>) {
        let due: Vec<usize> = steps
            .filter(|i| self.fit_due(*i) && *i <= trace.steps())
            .collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(due.len());
        if threads < 2 {
            return;
        }
        let (settings, classes) = (&self.settings, &self.classes);
        let fits: Vec<(usize, Result<Fit, ScaleUpError>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|k| {
                    let mine: Vec<usize> = due.iter().copied().skip(k).step_by(threads).collect();
                    s.spawn(move || {
                        mine.into_iter()
                            .map(|i| (i, Fit::at(trace, i, settings, classes)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        self.ahead.extend(fits);
    }

    /// Scores step `i` (`trace` holds at least the steps before `i` and is the same trace,
    /// grown, as before); refits first when a refit is due.
    pub fn score(&mut self, trace: &StepTrace, i: usize) -> Result<StepScore, ScaleUpError> {
        if self.fit_due(i) {
            let fit = match self.ahead.remove(&i) {
                Some(f) => f?,
                None => Fit::at(trace, i, &self.settings, &self.classes)?,
            };
            self.model = fit.model;
            self.tails = fit.tails;
            self.shapes = fit.shapes;
            self.fits += 1;
        }
        let p_up: Vec<f64> = match &self.model {
            Some(m) => m
                .p_up(trace, i..i + 1)
                .into_iter()
                .map(|v| v.first().copied().unwrap_or(0.0))
                .collect(),
            None => vec![0.0; trace.workloads()],
        };
        let per_w: Vec<Vec<f64>> = p_up.iter().map(|p| vec![*p]).collect();
        let kmax = self.settings.class_kmax;
        let mut ct = match self.settings.class_count {
            ClassCount::Independent => class_tails(&per_w, &self.tails, &self.classes, kmax),
            ClassCount::BurstShape => {
                shaped_class_tails(&per_w, &self.tails, &self.shapes, &self.classes, kmax)
            }
        };
        floor_tails(&mut ct, &self.base, self.settings.base_rate_floor);
        let at_least = p_up
            .iter()
            .zip(&self.tails)
            .map(|(p, t)| std::array::from_fn(|k| p * t[k + 1]))
            .collect();
        Ok(StepScore {
            step: i,
            p_up,
            at_least,
            class_tails: ct.into_iter().map(|mut c| c.remove(0)).collect(),
        })
    }
}

/// The rule's side: the threshold in force and the slots per class it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRule {
    trade_off: TradeOff,
    settings: SweepSettings,
    /// Thresholds of the steps held so far (from the rule's first step).
    pub thresholds: Vec<f64>,
}

impl SlotRule {
    /// A rule for `trade_off`.
    pub fn new(trade_off: TradeOff, settings: &SweepSettings) -> Self {
        Self {
            trade_off,
            settings: settings.clone(),
            thresholds: Vec::new(),
        }
    }

    /// The threshold and the slots per class for step `i`. `tails` (`[class][step][k]`) start
    /// at the first scored step, `trace` at step 0, and the first scored step is `warm_from`
    /// of `trace`; `from` (the first step slots are held for) and `i` are counted from the
    /// first scored step. Both hold at least every step before `i`; steps come in order.
    pub fn decide(
        &mut self,
        classes: &SizeClasses,
        tails: &[Vec<Vec<f64>>],
        trace: &StepTrace,
        warm_from: usize,
        from: usize,
        i: usize,
    ) -> (f64, Vec<usize>) {
        let theta = match self.trade_off {
            TradeOff::MissCost(cost) => trace.step_s as f64 / cost.max(1e-9),
            TradeOff::Budget(budget) => {
                let period = self.settings.refit_every_steps.max(1);
                if (i - from).is_multiple_of(period) || self.thresholds.is_empty() {
                    let timeline = trace.slice(warm_from..(warm_from + i).min(trace.steps()));
                    Calibration {
                        classes,
                        tails,
                        trace: &timeline,
                        from,
                        budget,
                        window: self.settings.calibration_window_steps,
                        sim: &self.settings.sim,
                    }
                    .threshold(i, period, &self.thresholds)
                } else {
                    self.thresholds.last().copied().unwrap_or(0.05)
                }
            }
        };
        self.thresholds.push(theta);
        let slots = classes
            .slots
            .iter()
            .enumerate()
            .map(|(c, slot)| {
                tails[c]
                    .get(i)
                    .map_or(0, |t| slots_held(t, slot.cpu_millicores / 1000.0, theta))
            })
            .collect();
        (theta, slots)
    }
}

/// Class tails `[class][step][k]` of a run of step scores.
pub fn tails_of(scores: &[StepScore]) -> Vec<Vec<Vec<f64>>> {
    let classes = scores.first().map_or(0, |s| s.class_tails.len());
    (0..classes)
        .map(|c| scores.iter().map(|s| s.class_tails[c].clone()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{budget_thresholds, simulate, PooledScaleUp};
    use crate::Placeholder;

    /// Two workloads of different classes over `days`, requests in bursts at a few times of
    /// day (a deterministic pattern, so the model has something to learn).
    fn trace(days: usize) -> StepTrace {
        let steps = days * 288;
        let mut t = StepTrace {
            step_s: 300,
            origin_s: 1_372_636_800,
            ids: vec!["a".into(), "b".into()],
            sizes: vec![
                Placeholder {
                    cpu_millicores: 500.0,
                    memory_bytes: 1e9,
                },
                Placeholder {
                    cpu_millicores: 2_000.0,
                    memory_bytes: 4e9,
                },
            ],
            cpu: vec![vec![0.0; steps]; 2],
            ups: vec![vec![0; steps]; 2],
            downs: vec![vec![0; steps]; 2],
            running: vec![vec![1; steps]; 2],
        };
        for i in 0..steps {
            let tod = i % 288;
            for w in 0..2 {
                let busy = (tod + 37 * w) % 96 < 4;
                t.cpu[w][i] = if busy { 1.3 } else { 0.6 } * t.sizes[w].cpu_millicores;
                if busy && (i * 7 + w) % 3 != 0 {
                    t.ups[w][i] = 1 + ((i + w) % 2) as u32;
                }
            }
        }
        t
    }

    #[test]
    fn the_rule_step_by_step_holds_what_the_offline_rule_holds() {
        let full = trace(6);
        let s = SweepSettings {
            warmup_steps: 2 * 288,
            model: crate::scaleup::ModelSettings {
                iterations: 20,
                ..Default::default()
            },
            ..SweepSettings::default()
        };
        let live_from = 4 * 288;
        // The scorer on a history that grows one step at a time, as a service sees it ...
        let (mut scorer, mut scores) = Scorer::begin(&full.slice(0..live_from), &s).unwrap();
        let mut grown = full.slice(0..live_from);
        let mut rule = SlotRule::new(TradeOff::Budget(1.0), &s);
        let mut tails: Vec<Vec<Vec<f64>>> = tails_of(&scores);
        let mut online_slots = Vec::new();
        for i in live_from..full.steps() {
            grown = full.slice(0..i + 1);
            // ... which does not know the step's own data yet.
            for w in 0..2 {
                grown.cpu[w][i] = f64::NAN;
                grown.ups[w][i] = 0;
            }
            let sc = scorer.score(&grown, i).unwrap();
            for (c, t) in sc.class_tails.iter().enumerate() {
                tails[c].push(t.clone());
            }
            scores.push(sc);
            let warm = scorer.warm_from;
            let (_, slots) = rule.decide(
                &scorer.classes,
                &tails,
                &grown,
                warm,
                scorer.live_from - warm,
                i - warm,
            );
            online_slots.push(slots);
        }
        assert_eq!(grown.steps(), full.steps());
        // ... against the offline rule over the whole recorded trace at once.
        let (mut off_scorer, mut off_scores) =
            Scorer::begin(&full.slice(0..live_from), &s).unwrap();
        for i in live_from..full.steps() {
            off_scores.push(off_scorer.score(&full, i).unwrap());
        }
        assert_eq!(scores, off_scores, "scores read only the steps before");
        let warm = off_scorer.warm_from;
        let timeline = full.slice(warm..full.steps());
        let all = tails_of(&off_scores);
        let thresholds = budget_thresholds(
            &off_scorer.classes,
            &all,
            &timeline,
            live_from - warm,
            1.0,
            s.refit_every_steps,
            s.calibration_window_steps,
            &s.sim,
        );
        assert_eq!(thresholds, rule.thresholds);
        let live_tails: Vec<Vec<Vec<f64>>> =
            all.iter().map(|c| c[live_from - warm..].to_vec()).collect();
        let offline = PooledScaleUp::scheduled(off_scorer.classes.clone(), live_tails, thresholds);
        for (k, slots) in online_slots.iter().enumerate() {
            for (c, n) in slots.iter().enumerate() {
                assert_eq!(
                    *n,
                    offline.slots_for(c, k, rule.thresholds[k]),
                    "step {k} class {c}"
                );
            }
        }
        // The rule held something, and what it held caught requests.
        assert!(online_slots.iter().flatten().any(|n| *n > 0));
        let live = full.slice(live_from..full.steps());
        let mut replay = offline.clone();
        let o = simulate(&live, &mut replay, &s.sim);
        assert!(o.hits > 0, "{o:?}");
    }
}
