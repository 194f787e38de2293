//! Scale-up forecasts (docs/scale-up.md): per workload and step, the probability of at least
//! k more replicas being requested at the next step, learned from the request history (the
//! requests are the labels) and usage by one gradient-boosted model across workloads.
//!
//! P(N ≥ k) = P(N ≥ 1) × P(N ≥ k | N ≥ 1): the first factor is the model's, re-scored at every
//! new usage point from causal features ([`FEATURES`]); the second is the workload's own
//! burst-size tail from its request history, shrunk toward the tail of all workloads so that a
//! workload with few requests borrows strength from the others.

use forust_ml::{GradientBooster, Matrix};

use crate::steps::StepTrace;

/// Largest k of P(N ≥ k) kept per workload and step.
pub const KMAX: usize = 8;

/// The model's inputs, in column order. Each is read from steps before the one scored.
pub const FEATURES: &[&str] = &[
    "utilization",               // CPU over what the running replicas serve, last point
    "utilization_prev",          // the same one step earlier
    "requests_last_hour",        // replicas requested in the last 12 steps
    "requests_last_day",         // ... in the last 288 steps
    "requests_last_step",        // ... at the last step
    "steps_since_request",       // since the last step with a request (capped)
    "peak_gap_hour",             // most replicas running in the last hour minus running now
    "peak_gap_day",              // the same over the last day
    "seasonal_profile",          // share of past days with a request within an hour of this time
    "requests_per_day",          // request steps per day so far
    "step_of_day",               // time of day, in steps
    "weekend",                   // Saturday or Sunday
    "active_workloads",          // workloads with a request in the last hour (fleet-wide)
    "replica_cores",             // size of one replica
    "forecast_day_utilization",  // seasonal-naive CPU forecast (a day ago) over running capacity
    "forecast_week_utilization", // the same a week ago (missing in the first week)
    "running_replicas",          // replicas running now
    "threshold_gap_z",           // room to the scale-up threshold, in typical step-to-step moves
    "volatility",                // typical step-to-step move of CPU over the last day, per replica
    "utilization_trend",         // change of CPU over the last three steps, over what runs now
];

/// Errors of the scale-up model.
#[derive(Debug, thiserror::Error)]
pub enum ScaleUpError {
    /// The gradient-boosting crate refused the data or the settings.
    #[error("gradient boosting: {0}")]
    Booster(String),
    /// Nothing to learn from.
    #[error("no training rows: the training range {0:?} is empty or has no requests")]
    NoTrainingData(std::ops::Range<usize>),
}

/// Settings of the scale-up model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSettings {
    /// Boosting rounds.
    pub iterations: usize,
    /// Shrinkage per round.
    pub learning_rate: f32,
    /// Depth of each tree.
    pub max_depth: usize,
    /// Weight of the all-workload burst tail in a workload's own, in pseudo-requests.
    pub tail_prior: f64,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            iterations: 150,
            learning_rate: 0.08,
            max_depth: 4,
            tail_prior: 5.0,
        }
    }
}

/// Feature rows for steps `range` of every workload, column-major as the booster reads them
/// (row `w * range.len() + (i - range.start)`). Step `i`'s row only reads steps before `i`.
pub fn features(t: &StepTrace, range: std::ops::Range<usize>) -> Vec<f64> {
    let (n, len) = (t.workloads(), range.len());
    let rows = n * len;
    let mut cols = vec![0.0f64; rows * FEATURES.len()];
    let steps_per_day = (86_400 / t.step_s) as usize;
    let steps_per_hour = (3_600 / t.step_s) as usize;
    let origin_step = t.origin_s.div_euclid(t.step_s) as usize;
    // Fleet-wide: workloads with a request in the hour before each step.
    let mut active = vec![0.0f64; t.steps() + 1];
    for w in 0..n {
        let mut last: Option<usize> = None;
        for (i, a) in active.iter_mut().enumerate() {
            if let Some(l) = last {
                if i - l <= steps_per_hour {
                    *a += 1.0;
                }
            }
            if i < t.steps() && t.ups[w][i] > 0 {
                last = Some(i);
            }
        }
    }
    for w in 0..n {
        let size = t.sizes[w].cpu_millicores.max(1.0);
        // Gaps carry the last value forward.
        let mut last = 0.0;
        let cpu: Vec<f64> = t.cpu[w]
            .iter()
            .map(|c| {
                if c.is_finite() {
                    last = *c;
                }
                last
            })
            .collect();
        let run = &t.running[w];
        let ups = &t.ups[w];
        let mut cum = vec![0u64; t.steps() + 1];
        for i in 0..t.steps() {
            cum[i + 1] = cum[i] + u64::from(ups[i]);
        }
        // Step-to-step moves of CPU, summed, for the typical move over a window.
        let mut moves = vec![0.0f64; t.steps() + 1];
        for i in 1..t.steps() {
            moves[i + 1] = moves[i] + (cpu[i] - cpu[i - 1]).abs();
        }
        let util = |j: usize| {
            if run[j] == 0 {
                0.0
            } else {
                cpu[j] / (f64::from(run[j]) * size)
            }
        };
        // Request steps by step of day, over the days before the current one.
        let mut by_tod = vec![0u32; steps_per_day];
        let mut counted_days = 0usize;
        let mut last_up: Option<usize> = None;
        let mut up_steps = 0u64;
        for i in 0..range.end {
            // Fold finished days into the profile.
            let day = i / steps_per_day;
            while counted_days < day {
                for s in 0..steps_per_day {
                    let j = counted_days * steps_per_day + s;
                    if j < t.steps() && ups[j] > 0 {
                        by_tod[(origin_step + j) % steps_per_day] += 1;
                    }
                }
                counted_days += 1;
            }
            if i >= range.start {
                let row = w * len + (i - range.start);
                let mut f = [0.0f64; 20];
                if i >= 1 {
                    let j = i - 1;
                    f[0] = util(j);
                    f[1] = if j >= 1 { util(j - 1) } else { f[0] };
                    f[2] = (cum[i] - cum[i.saturating_sub(steps_per_hour)]) as f64;
                    f[3] = (cum[i] - cum[i.saturating_sub(steps_per_day)]) as f64;
                    f[4] = f64::from(ups[j]);
                    f[5] = last_up.map_or(2_000.0, |l| ((j - l) as f64).min(2_000.0));
                    let peak = |span: usize| {
                        run[i.saturating_sub(span)..i]
                            .iter()
                            .copied()
                            .max()
                            .unwrap_or(0)
                    };
                    // The window ends at j, so its peak is at least run[j].
                    f[6] = f64::from(peak(steps_per_hour) - run[j]);
                    f[7] = f64::from(peak(steps_per_day) - run[j]);
                    f[14] = if i >= steps_per_day && run[j] > 0 {
                        cpu[i - steps_per_day] / (f64::from(run[j]) * size)
                    } else {
                        f64::NAN
                    };
                    f[15] = if i >= 7 * steps_per_day && run[j] > 0 {
                        cpu[i - 7 * steps_per_day] / (f64::from(run[j]) * size)
                    } else {
                        f64::NAN
                    };
                    f[16] = f64::from(run[j]);
                    // The request rule (docs/scale-up.md) fires when CPU passes what the running
                    // replicas serve by the tolerance: how far away that is, against how far
                    // CPU typically moves in a step, is the chance of crossing it next.
                    let from = i.saturating_sub(steps_per_day).max(1);
                    let typical = if i > from {
                        (moves[i] - moves[from]) / (i - from) as f64
                    } else {
                        0.0
                    };
                    let capacity = f64::from(run[j].max(1)) * size;
                    f[17] = (1.1 * capacity - cpu[j]) / (typical + 1.0);
                    f[18] = typical / size;
                    f[19] = (cpu[j] - cpu[j.saturating_sub(3)]) / capacity;
                }
                let tod = (origin_step + i) % steps_per_day;
                if counted_days > 0 {
                    let window: u32 = (0..=2 * steps_per_hour)
                        .map(|d| by_tod[(tod + steps_per_day + d - steps_per_hour) % steps_per_day])
                        .sum();
                    f[8] = f64::from(window) / counted_days as f64;
                    f[9] = up_steps as f64 / (i as f64 / steps_per_day as f64);
                }
                f[10] = tod as f64;
                let weekday = ((origin_step + i) / steps_per_day + 4) % 7; // 1970-01-01: Thursday
                f[11] = if weekday >= 5 { 1.0 } else { 0.0 };
                f[12] = active[i];
                f[13] = size / 1000.0;
                for (c, v) in f.iter().enumerate() {
                    cols[c * rows + row] = *v;
                }
            }
            if ups[i] > 0 {
                last_up = Some(i);
                up_steps += 1;
            }
        }
    }
    cols
}

/// The label of each row of [`features`]: a request at the step.
pub fn labels(t: &StepTrace, range: std::ops::Range<usize>) -> Vec<f64> {
    (0..t.workloads())
        .flat_map(|w| range.clone().map(move |i| (w, i)))
        .map(|(w, i)| if t.ups[w][i] > 0 { 1.0 } else { 0.0 })
        .collect()
}

/// A fitted scale-up model.
pub struct ScaleUpModel {
    booster: GradientBooster,
    /// Per workload: P(N ≥ k | N ≥ 1) for k = 0..=KMAX (index 0 and 1 are 1).
    tails: Vec<[f64; KMAX + 2]>,
}

impl std::fmt::Debug for ScaleUpModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleUpModel")
            .field("tails", &self.tails)
            .finish_non_exhaustive()
    }
}

/// Logistic function.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl ScaleUpModel {
    /// Fits the model on steps `train` of `t` (the first day is skipped: its features have
    /// no past).
    pub fn fit(
        t: &StepTrace,
        train: std::ops::Range<usize>,
        s: &ModelSettings,
    ) -> Result<Self, ScaleUpError> {
        let steps_per_day = (86_400 / t.step_s) as usize;
        // The first day's rows have no daily profile yet; skip them when there is more to learn from.
        let from = if train.len() > 2 * steps_per_day {
            train.start.max(steps_per_day)
        } else {
            train.start.max(1)
        };
        let range = from..train.end;
        let y = labels(t, range.clone());
        if y.iter().all(|v| *v == 0.0) {
            return Err(ScaleUpError::NoTrainingData(train));
        }
        let x = features(t, range);
        let m = Matrix::new(&x, y.len(), FEATURES.len());
        // Serial, so that a seed gives the same model on any machine.
        let mut booster = GradientBooster::default()
            .set_iterations(s.iterations)
            .set_learning_rate(s.learning_rate)
            .set_max_depth(s.max_depth)
            .set_parallel(false)
            .set_seed(0);
        booster
            .fit_unweighted(&m, &y, None)
            .map_err(|e| ScaleUpError::Booster(e.to_string()))?;
        Ok(Self {
            booster,
            tails: burst_tails(t, train, s.tail_prior),
        })
    }

    /// P(at least one request) for steps `range` of every workload: `[w][i - range.start]`.
    pub fn p_up(&self, t: &StepTrace, range: std::ops::Range<usize>) -> Vec<Vec<f64>> {
        let len = range.len();
        let x = features(t, range);
        let m = Matrix::new(&x, t.workloads() * len, FEATURES.len());
        let raw = self.booster.predict(&m, false);
        raw.chunks(len.max(1))
            .take(t.workloads())
            .map(|c| c.iter().map(|v| sigmoid(*v)).collect())
            .collect()
    }

    /// P(N ≥ k | N ≥ 1) of workload `w`, k = 0..=KMAX+1.
    pub fn tail(&self, w: usize) -> &[f64; KMAX + 2] {
        &self.tails[w]
    }
}

/// Per workload, P(N ≥ k | N ≥ 1) from the steps with requests in `range`, shrunk toward the
/// tail of all workloads by `prior` pseudo-observations.
pub fn burst_tails(
    t: &StepTrace,
    range: std::ops::Range<usize>,
    prior: f64,
) -> Vec<[f64; KMAX + 2]> {
    let tail_of = |sizes: &mut dyn Iterator<Item = u32>| {
        let mut counts = [0u64; KMAX + 2];
        let mut n = 0u64;
        for s in sizes {
            n += 1;
            for (k, c) in counts.iter_mut().enumerate() {
                if s as usize >= k {
                    *c += 1;
                }
            }
        }
        (counts, n)
    };
    let (all, n_all) = tail_of(
        &mut t
            .ups
            .iter()
            .flat_map(|u| u[range.clone()].iter().copied())
            .filter(|u| *u > 0),
    );
    let pooled: Vec<f64> = all
        .iter()
        .map(|c| *c as f64 / n_all.max(1) as f64)
        .collect();
    t.ups
        .iter()
        .map(|u| {
            let (own, n) = tail_of(&mut u[range.clone()].iter().copied().filter(|u| *u > 0));
            let mut out = [0.0; KMAX + 2];
            for k in 0..KMAX + 2 {
                out[k] = if k <= 1 {
                    1.0
                } else {
                    (own[k] as f64 + prior * pooled[k]) / (n as f64 + prior)
                };
            }
            out
        })
        .collect()
}

/// Brier score of probabilities `p` for outcomes `y` (0 or 1).
pub fn brier(p: &[f64], y: &[f64]) -> f64 {
    p.iter().zip(y).map(|(p, y)| (p - y).powi(2)).sum::<f64>() / p.len().max(1) as f64
}

/// One bin of a reliability table.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReliabilityBin {
    /// Lower edge of the bin's predicted probability.
    pub from: f64,
    /// Upper edge.
    pub to: f64,
    /// Predictions in the bin.
    pub count: usize,
    /// Their mean predicted probability.
    pub predicted: f64,
    /// The share of them that came true.
    pub observed: f64,
}

/// Reliability table over bins with edges `edges` (ascending, from 0 to 1).
pub fn reliability(p: &[f64], y: &[f64], edges: &[f64]) -> Vec<ReliabilityBin> {
    edges
        .windows(2)
        .map(|e| {
            let last = e[1] >= 1.0;
            let inside: Vec<(f64, f64)> = p
                .iter()
                .zip(y)
                .filter(|(p, _)| **p >= e[0] && (**p < e[1] || (last && **p <= e[1])))
                .map(|(p, y)| (*p, *y))
                .collect();
            let count = inside.len();
            let mean = |f: fn(&(f64, f64)) -> f64| {
                if count == 0 {
                    f64::NAN
                } else {
                    inside.iter().map(f).sum::<f64>() / count as f64
                }
            };
            ReliabilityBin {
                from: e[0],
                to: e[1],
                count,
                predicted: mean(|v| v.0),
                observed: mean(|v| v.1),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Placeholder;

    /// Two workloads; the first asks for a replica every day at the same time and its usage
    /// climbs the step before, the second never asks.
    fn trace(days: usize) -> StepTrace {
        let steps = days * 288;
        let mut cpu = vec![vec![500.0; steps], vec![500.0; steps]];
        let mut ups = vec![vec![0u32; steps], vec![0u32; steps]];
        for d in 0..days {
            let i = d * 288 + 100;
            cpu[0][i - 1] = 990.0;
            ups[0][i] = if d % 2 == 0 { 1 } else { 3 };
        }
        StepTrace {
            step_s: 300,
            origin_s: 0,
            ids: vec!["a".into(), "b".into()],
            sizes: vec![
                Placeholder {
                    cpu_millicores: 1_000.0,
                    memory_bytes: 1.0,
                };
                2
            ],
            cpu,
            ups,
            downs: vec![vec![0; steps]; 2],
            running: vec![vec![1; steps]; 2],
        }
    }

    #[test]
    fn features_read_only_the_past() {
        let t = trace(3);
        let x = features(&t, 0..t.steps());
        let rows = 2 * t.steps();
        let at = |f: &str, w: usize, i: usize| {
            let c = FEATURES.iter().position(|n| *n == f).expect("a feature");
            x[c * rows + w * t.steps() + i]
        };
        // The request at step 388 shows in step 389's features, not in its own.
        assert_eq!(at("requests_last_step", 0, 388), 0.0);
        assert_eq!(at("requests_last_step", 0, 389), 3.0);
        assert_eq!(at("utilization", 0, 388), 0.99);
        assert_eq!(at("utilization", 0, 387), 0.5);
        // On day 2 the profile has seen one request near step 100 (of 288).
        assert_eq!(at("seasonal_profile", 0, 288 + 100), 1.0);
        assert_eq!(at("seasonal_profile", 1, 288 + 100), 0.0);
        // A changed future does not change a past row.
        let mut later = t.clone();
        later.ups[0][500] = 7;
        later.cpu[0][500] = 9_999.0;
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert!(bits(features(&later, 0..500)) == bits(features(&t, 0..500)));
    }

    #[test]
    fn the_model_learns_the_signal_and_beats_the_base_rate() {
        let t = trace(12);
        let train = 0..8 * 288;
        let m = ScaleUpModel::fit(&t, train.clone(), &ModelSettings::default()).expect("fits");
        let test = 8 * 288..t.steps();
        let p = m.p_up(&t, test.clone());
        let y = labels(&t, test.clone());
        let flat: Vec<f64> = p.iter().flatten().copied().collect();
        let base = labels(&t, train).iter().sum::<f64>() / (2.0 * 8.0 * 288.0);
        let b_model = brier(&flat, &y);
        let b_base = brier(&vec![base; flat.len()], &y);
        assert!(b_model < b_base / 2.0, "model {b_model} base rate {b_base}");
        assert!(p[0][100] > 0.5, "{}", p[0][100]);
        assert!(p[1][100] < 0.1, "{}", p[1][100]);
        // Burst tail: half the request steps asked for 3 replicas.
        let tail = m.tail(0);
        assert_eq!(tail[1], 1.0);
        assert!(tail[3] > 0.3 && tail[3] < 0.6, "{tail:?}");
        assert!(tail[4] < 0.1, "{tail:?}");
    }

    #[test]
    fn reliability_bins_partition_the_predictions() {
        let p = [0.05, 0.15, 0.95, 1.0];
        let y = [0.0, 1.0, 1.0, 1.0];
        let bins = reliability(&p, &y, &[0.0, 0.1, 0.5, 1.0]);
        assert_eq!(
            bins.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        assert_eq!(bins[2].observed, 1.0);
        assert!((brier(&p, &y) - (0.0025 + 0.7225 + 0.0025) / 4.0).abs() < 1e-12);
    }
}
