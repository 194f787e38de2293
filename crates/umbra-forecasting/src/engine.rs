//! The forecaster: per-series model choice by rolling-origin backtest, split-conformal
//! intervals from the backtest residuals, external events, clipping, and fallbacks that say
//! why they were taken.

use crate::events::{deflate, inflate, resolve};
use crate::metrics::mase;
use crate::models::{seasonal_naive, Model, ModelError};
use crate::{Event, Series};

/// A forecast horizon as the service publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HorizonSpec {
    /// `1h`, `1d` or `1w`.
    pub name: &'static str,
    /// Number of points.
    pub steps: usize,
    /// Input steps per point: 1 at the native 5 minutes, 12 for hourly means.
    pub aggregate: usize,
}

/// The next hour at 5 minutes.
pub const HOUR: HorizonSpec = HorizonSpec {
    name: "1h",
    steps: 12,
    aggregate: 1,
};
/// The next day at 5 minutes.
pub const DAY: HorizonSpec = HorizonSpec {
    name: "1d",
    steps: 288,
    aggregate: 1,
};
/// The next week at hourly means.
pub const WEEK: HorizonSpec = HorizonSpec {
    name: "1w",
    steps: 168,
    aggregate: 12,
};
/// The three horizons the service publishes.
pub const HORIZONS: [HorizonSpec; 3] = [HOUR, DAY, WEEK];

/// Settings of the forecaster.
#[derive(Debug, Clone)]
pub struct ForecasterConfig {
    /// Models to choose from.
    pub candidates: Vec<Model>,
    /// Backtest origins per choice (more: better calibrated intervals, slower).
    pub backtest_origins: usize,
    /// Spacing of the backtest origins, in seconds.
    pub origin_spacing_s: i64,
    /// History used for fitting, at most, in seconds (older steps are ignored).
    pub max_history_s: i64,
    /// Number of horizon buckets that pool residuals for the conformal quantiles.
    pub interval_buckets: usize,
    /// How much lower (as a fraction) a model's backtest MASE must be than the daily seasonal
    /// naive's for the model to be chosen over it.
    pub selection_margin: f64,
}

impl Default for ForecasterConfig {
    fn default() -> Self {
        Self {
            candidates: vec![
                Model::SeasonalNaiveDaily,
                Model::SeasonalNaiveWeekly,
                Model::MstlAutoEts,
            ],
            backtest_origins: 5,
            origin_spacing_s: 86_400,
            max_history_s: 28 * 86_400,
            interval_buckets: 6,
            selection_margin: 0.0,
        }
    }
}

/// A forecast with its intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Model that produced the points.
    pub model: String,
    /// Why the preferred path was not taken, if it was not.
    pub fallback_reason: Option<String>,
    /// Start of the first point, Unix seconds.
    pub start_s: i64,
    /// Spacing of the points, seconds.
    pub step_s: i64,
    /// Point forecasts.
    pub mean: Vec<f64>,
    /// 80% interval, lower bounds.
    pub lower80: Vec<f64>,
    /// 80% interval, upper bounds.
    pub upper80: Vec<f64>,
    /// 95% interval, lower bounds.
    pub lower95: Vec<f64>,
    /// 95% interval, upper bounds.
    pub upper95: Vec<f64>,
    /// Mean MASE over the backtest origins, when there was a backtest.
    pub backtest_mase: Option<f64>,
    /// Seconds the final fit and predict took (not the backtest).
    pub fit_seconds: f64,
}

/// Every candidate's forecast and the one chosen.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// One entry per candidate, in configuration order.
    pub candidates: Vec<(Model, Result<Forecast, ModelError>)>,
    /// The forecast the service would publish.
    pub chosen: Forecast,
}

/// Chooses a model per series and forecasts with calibrated intervals.
#[derive(Debug, Clone, Default)]
pub struct Forecaster {
    config: ForecasterConfig,
}

impl Forecaster {
    /// A forecaster with `config`.
    pub fn new(config: ForecasterConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &ForecasterConfig {
        &self.config
    }

    /// Forecasts the `horizon` steps after `history` with the model the backtest prefers.
    pub fn forecast(
        &self,
        history: &Series,
        horizon: usize,
        events: &[Event],
        capacity: Option<f64>,
    ) -> Forecast {
        self.evaluate(history, &[horizon], events, capacity)
            .remove(0)
            .chosen
    }

    /// Forecasts with every candidate for each of `horizons` (steps after `history`) and
    /// chooses one per horizon. Each model is fitted once per backtest origin and once on the
    /// whole history, for the longest horizon; shorter horizons are its prefixes, with their
    /// own model choice and interval calibration.
    pub fn evaluate(
        &self,
        history: &Series,
        horizons: &[usize],
        events: &[Event],
        capacity: Option<f64>,
    ) -> Vec<Evaluation> {
        let history = self.trimmed(history);
        let start_s = history.time_of(history.values.len());
        let max_h = horizons.iter().copied().max().unwrap_or(0);
        let finite: Vec<f64> = history
            .values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let day = (86_400 / history.step_s).max(1) as usize;
        let flat_all = |reason: String| -> Vec<Evaluation> {
            horizons
                .iter()
                .map(|h| Evaluation {
                    candidates: Vec::new(),
                    chosen: flat(
                        &finite,
                        history.step_s,
                        *h,
                        start_s,
                        capacity,
                        reason.clone(),
                    ),
                })
                .collect()
        };
        if finite.len() < day.clamp(2, 48) || max_h == 0 {
            return flat_all(format!("only {} usable steps of history", finite.len()));
        }
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            return flat_all("constant history".into());
        }
        let resolved = resolve(&history, events);
        let mut deflated = history.clone();
        deflate(&mut deflated, &resolved);

        let spacing = (self.config.origin_spacing_s / history.step_s).max(1) as usize;
        // Per candidate: backtest origins and the final fit, at the longest horizon.
        let mut fitted = Vec::new();
        for model in &self.config.candidates {
            let input = if model.handles_events() {
                &history
            } else {
                &deflated
            };
            let origins = self.backtest(model, input, &history, max_h, spacing, events, &resolved);
            let started = std::time::Instant::now();
            let mean = model.forecast(input, max_h, events).map(|mut mean| {
                if !model.handles_events() {
                    inflate(&mut mean, start_s, history.step_s, &resolved);
                }
                mean
            });
            fitted.push((model.clone(), origins, mean, started.elapsed()));
        }

        let mut out = Vec::new();
        for &h in horizons {
            let mut candidates = Vec::new();
            for (model, origins, mean, took) in &fitted {
                let result = mean.clone().map(|mean| {
                    let residuals: Vec<Vec<f64>> = origins.iter().map(|o| o.residuals[..h].to_vec()).collect();
                    let scores: Vec<f64> = origins.iter().filter_map(|o| o.mase(h, day)).collect();
                    let backtest_mase = (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
                    let (reason, b) = match bands(&residuals, h, self.config.interval_buckets) {
                        Some(b) => (None, b),
                        None => (
                            Some("history too short to backtest: intervals from the spread of the history".to_string()),
                            spread_bands(&finite, h),
                        ),
                    };
                    let mut f = build(model.name(), reason, start_s, history.step_s, mean[..h].to_vec(), &b, capacity, backtest_mase);
                    f.fit_seconds = took.as_secs_f64();
                    f
                });
                candidates.push((model.clone(), result));
            }
            let chosen = self.choose(
                &candidates,
                &deflated,
                &finite,
                h,
                day,
                start_s,
                history.step_s,
                capacity,
            );
            out.push(Evaluation { candidates, chosen });
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        candidates: &[(Model, Result<Forecast, ModelError>)],
        deflated: &Series,
        finite: &[f64],
        horizon: usize,
        day: usize,
        start_s: i64,
        step_s: i64,
        capacity: Option<f64>,
    ) -> Forecast {
        // A model must beat the seasonal naive baseline by the margin to replace it: with a
        // handful of backtest origins, small differences are noise.
        let penalty = |m: &Model| {
            if *m == Model::SeasonalNaiveDaily {
                1.0
            } else {
                1.0 + self.config.selection_margin
            }
        };
        let best = candidates
            .iter()
            .filter_map(|(m, r)| {
                r.as_ref()
                    .ok()
                    .map(|f| (f, f.backtest_mase.map_or(f64::INFINITY, |k| k * penalty(m))))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(f, _)| f.clone());
        if let Some(f) = best {
            return f;
        }
        let why: Vec<String> = candidates
            .iter()
            .filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{}: {e}", m.name())))
            .collect();
        let reason = format!("every model failed ({})", why.join("; "));
        match seasonal_naive(&deflated.values, day, horizon) {
            Ok(mean) if mean.iter().all(|v| v.is_finite()) => build(
                "seasonal-naive",
                Some(reason),
                start_s,
                step_s,
                mean,
                &spread_bands(finite, horizon),
                capacity,
                None,
            ),
            _ => flat(finite, step_s, horizon, start_s, capacity, reason),
        }
    }

    fn trimmed(&self, history: &Series) -> Series {
        let keep = (self.config.max_history_s / history.step_s).max(1) as usize;
        let n = history.values.len();
        if n > keep {
            history.slice(n - keep, n)
        } else {
            history.clone()
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backtest(
        &self,
        model: &Model,
        input: &Series,
        original: &Series,
        horizon: usize,
        spacing: usize,
        events: &[Event],
        resolved: &[(Event, f64)],
    ) -> Vec<Origin> {
        let n = input.values.len();
        let day = (86_400 / input.step_s).max(1) as usize;
        let mut origins = Vec::new();
        for k in 0..self.config.backtest_origins {
            let Some(end) = n.checked_sub(horizon + k * spacing) else {
                break;
            };
            if end < 2 * day {
                break;
            }
            let train = input.slice(0, end);
            let Ok(mut f) = model.forecast(&train, horizon, events) else {
                continue;
            };
            if !model.handles_events() {
                inflate(&mut f, train.time_of(end), input.step_s, resolved);
            }
            let actual = original.values[end..end + horizon].to_vec();
            let residuals = actual
                .iter()
                .zip(&f)
                .map(|(a, p)| if a.is_finite() { a - p } else { f64::NAN })
                .collect();
            let insample: Vec<f64> = original.values[..end]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            origins.push(Origin {
                actual,
                forecast: f,
                residuals,
                insample,
            });
        }
        origins
    }
}

/// One backtest origin of one model.
struct Origin {
    actual: Vec<f64>,
    forecast: Vec<f64>,
    residuals: Vec<f64>,
    insample: Vec<f64>,
}

impl Origin {
    /// MASE over the first `h` steps.
    fn mase(&self, h: usize, m: usize) -> Option<f64> {
        let (a, p): (Vec<f64>, Vec<f64>) = self.actual[..h]
            .iter()
            .zip(&self.forecast[..h])
            .filter(|(a, _)| a.is_finite())
            .map(|(a, p)| (*a, *p))
            .unzip();
        mase(&a, &p, &self.insample, m)
    }
}

/// Residual quantiles per step: (q02.5, q10, q90, q97.5) to add to the point forecast.
type Bands = Vec<[f64; 4]>;

/// Split-conformal bands: the residuals of the backtest origins, pooled over buckets of
/// neighbouring horizon steps, give per-step quantiles with the finite-sample correction.
fn bands(residuals: &[Vec<f64>], horizon: usize, buckets: usize) -> Option<Bands> {
    if residuals.is_empty() {
        return None;
    }
    let buckets = buckets.clamp(1, horizon);
    let bucket_of = |h: usize| h * buckets / horizon;
    let mut pooled: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    for r in residuals {
        for (h, v) in r.iter().enumerate() {
            if v.is_finite() {
                pooled[bucket_of(h)].push(*v);
            }
        }
    }
    let mut per_bucket = Vec::with_capacity(buckets);
    for p in &mut pooled {
        if p.len() < 4 {
            return None;
        }
        p.sort_by(f64::total_cmp);
        per_bucket.push([
            conformal_quantile(p, 0.025),
            conformal_quantile(p, 0.10),
            conformal_quantile(p, 0.90),
            conformal_quantile(p, 0.975),
        ]);
    }
    Some((0..horizon).map(|h| per_bucket[bucket_of(h)]).collect())
}

/// The empirical quantile of sorted `v` at level `q`, widened outward by the split-conformal
/// `(n + 1)` correction.
fn conformal_quantile(v: &[f64], q: f64) -> f64 {
    let n = v.len();
    let rank = if q >= 0.5 {
        ((n + 1) as f64 * q).ceil()
    } else {
        ((n + 1) as f64 * q).floor()
    };
    let idx = (rank as isize - 1).clamp(0, n as isize - 1) as usize;
    v[idx]
}

/// Bands from the spread of the history (normal quantiles of its standard deviation), for
/// when there is nothing to calibrate on.
fn spread_bands(history: &[f64], horizon: usize) -> Bands {
    let n = history.len().max(1) as f64;
    let mean = history.iter().sum::<f64>() / n;
    let sd = (history.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    vec![[-1.96 * sd, -1.2816 * sd, 1.2816 * sd, 1.96 * sd]; horizon]
}

#[allow(clippy::too_many_arguments)]
fn build(
    model: &str,
    reason: Option<String>,
    start_s: i64,
    step_s: i64,
    mean: Vec<f64>,
    bands: &Bands,
    capacity: Option<f64>,
    backtest_mase: Option<f64>,
) -> Forecast {
    let cap = capacity
        .filter(|c| c.is_finite() && *c > 0.0)
        .unwrap_or(f64::INFINITY);
    let clip = |v: f64| v.clamp(0.0, cap);
    let band = |j: usize| -> Vec<f64> {
        mean.iter()
            .zip(bands)
            .map(|(m, b)| clip(m + b[j]))
            .collect()
    };
    let (lower95, lower80, upper80, upper95) = (band(0), band(1), band(2), band(3));
    Forecast {
        model: model.to_string(),
        fallback_reason: reason,
        start_s,
        step_s,
        mean: mean.iter().map(|v| clip(*v)).collect(),
        lower80,
        upper80,
        lower95,
        upper95,
        backtest_mase,
        fit_seconds: 0.0,
    }
}

/// The last finite value, flat, with intervals from the history's spread.
fn flat(
    finite: &[f64],
    step_s: i64,
    horizon: usize,
    start_s: i64,
    capacity: Option<f64>,
    reason: String,
) -> Forecast {
    let last = finite.last().copied().unwrap_or(0.0);
    build(
        "last-value",
        Some(reason),
        start_s,
        step_s,
        vec![last; horizon],
        &spread_bands(finite, horizon),
        capacity,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: Vec<f64>) -> Series {
        Series {
            start_s: 1_372_636_800,
            step_s: 300,
            values,
        }
    }

    #[test]
    fn degenerate_inputs_fall_back_with_a_reason() {
        let f = Forecaster::default();
        let cases: Vec<(&str, Vec<f64>)> = vec![
            ("empty", vec![]),
            ("short", vec![1.0, 2.0, 3.0]),
            ("all NaN", vec![f64::NAN; 3000]),
            ("all zero", vec![0.0; 3000]),
            ("constant", vec![7.5; 3000]),
            (
                "huge",
                (0..3000)
                    .map(|i| 1e300 * (1.0 + (i % 288) as f64))
                    .collect(),
            ),
            (
                "gappy",
                (0..3000)
                    .map(|i| {
                        if i % 3 == 0 {
                            f64::NAN
                        } else {
                            (i % 288) as f64
                        }
                    })
                    .collect(),
            ),
            (
                "infinite",
                (0..3000)
                    .map(|i| {
                        if i == 5 {
                            f64::INFINITY
                        } else {
                            1.0 + (i % 7) as f64
                        }
                    })
                    .collect(),
            ),
        ];
        for (name, values) in cases {
            let fc = f.forecast(&series(values), 12, &[], Some(1e9));
            assert_eq!(fc.mean.len(), 12, "{name}");
            assert!(
                fc.mean
                    .iter()
                    .chain(&fc.lower95)
                    .chain(&fc.upper95)
                    .all(|v| v.is_finite() && *v >= 0.0),
                "{name}: {fc:?}"
            );
            assert!(
                fc.lower95.iter().zip(&fc.upper95).all(|(l, u)| l <= u),
                "{name}"
            );
            if matches!(
                name,
                "empty" | "short" | "all NaN" | "all zero" | "constant"
            ) {
                assert!(
                    fc.fallback_reason.is_some(),
                    "{name} records why it fell back"
                );
            }
        }
    }

    #[test]
    fn conformal_quantiles() {
        let v: Vec<f64> = (1..=19).map(f64::from).collect();
        // n = 19: (n+1)*0.9 = 18 → the 18th smallest; (n+1)*0.1 = 2 → the 2nd.
        assert_eq!(conformal_quantile(&v, 0.9), 18.0);
        assert_eq!(conformal_quantile(&v, 0.1), 2.0);
    }
}
