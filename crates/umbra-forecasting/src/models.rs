//! The candidate models, behind one point-forecast call that never panics: inputs are
//! checked and scaled first, and a panic inside a library is caught and reported as an error
//! so that the engine can fall back.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::prophet::wasmstan::WasmstanOptimizer;
use augurs::prophet::{
    Holiday, HolidayOccurrence, PredictionData, Prophet, ProphetOptions, TrainingData,
};
use augurs::{Fit, Predict};

use crate::{Event, Series};

/// Why a model could not forecast.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The history is shorter than the model needs.
    #[error("history of {have} steps is shorter than the {need} this model needs")]
    TooShort {
        /// Steps available.
        have: usize,
        /// Steps needed.
        need: usize,
    },
    /// The library returned an error.
    #[error("{0}")]
    Library(String),
    /// The library panicked; caught.
    #[error("model panicked: {0}")]
    Panicked(String),
    /// The library returned NaN or infinite values.
    #[error("model returned non-finite values")]
    NonFinite,
}

/// A forecasting model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    /// Repeats the last day.
    SeasonalNaiveDaily,
    /// Repeats the last week.
    SeasonalNaiveWeekly,
    /// MSTL with daily and weekly periods (those the history covers twice) and an AutoETS
    /// trend (augurs).
    MstlAutoEts,
    /// Prophet with daily and weekly seasonality and events as holidays, MAP-fitted by the
    /// wasmstan optimizer (augurs). Fitted on hourly means for speed, then spread over steps.
    Prophet,
    /// The mean of the daily seasonal naive, MSTL+AutoETS and Prophet forecasts (those that
    /// succeed): combinations are robust where no single model wins everywhere.
    Ensemble,
}

impl Model {
    /// Stable name, used in forecasts, metrics and benchmark output.
    pub fn name(&self) -> &'static str {
        match self {
            Model::SeasonalNaiveDaily => "seasonal-naive",
            Model::SeasonalNaiveWeekly => "seasonal-naive-weekly",
            Model::MstlAutoEts => "mstl-autoets",
            Model::Prophet => "prophet",
            Model::Ensemble => "ensemble",
        }
    }

    /// All models.
    pub fn all() -> Vec<Model> {
        vec![
            Model::SeasonalNaiveDaily,
            Model::SeasonalNaiveWeekly,
            Model::MstlAutoEts,
            Model::Prophet,
            Model::Ensemble,
        ]
    }

    /// Whether the model takes external events itself (otherwise the engine applies them).
    pub fn handles_events(&self) -> bool {
        matches!(self, Model::Prophet | Model::Ensemble)
    }

    /// Point forecast of the `horizon` steps after `history`. Never panics.
    pub fn forecast(
        &self,
        history: &Series,
        horizon: usize,
        events: &[Event],
    ) -> Result<Vec<f64>, ModelError> {
        let mut values = history.values.clone();
        crate::fill_gaps(&mut values);
        // Scale to unit size: huge or tiny magnitudes must not reach the optimisers.
        let scale = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let scale = if scale > 0.0 && scale.is_finite() {
            scale
        } else {
            1.0
        };
        values.iter_mut().for_each(|v| *v /= scale);
        let scaled = Series {
            start_s: history.start_s,
            step_s: history.step_s,
            values,
        };
        let out = catch_unwind(AssertUnwindSafe(|| {
            self.forecast_scaled(&scaled, horizon, events)
        }))
        .map_err(|p| ModelError::Panicked(panic_text(&p)))??;
        if out.len() != horizon || out.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite);
        }
        Ok(out.into_iter().map(|v| v * scale).collect())
    }

    fn forecast_scaled(
        &self,
        h: &Series,
        horizon: usize,
        events: &[Event],
    ) -> Result<Vec<f64>, ModelError> {
        let day = (86_400 / h.step_s).max(1) as usize;
        let week = day * 7;
        match self {
            Model::SeasonalNaiveDaily => seasonal_naive(&h.values, day, horizon),
            Model::SeasonalNaiveWeekly => seasonal_naive(&h.values, week, horizon),
            Model::MstlAutoEts => {
                let periods: Vec<usize> = [day, week]
                    .into_iter()
                    .filter(|p| *p > 1 && h.values.len() >= 2 * p)
                    .collect();
                if periods.is_empty() {
                    return Err(ModelError::TooShort {
                        have: h.values.len(),
                        need: 2 * day,
                    });
                }
                let model = MSTLModel::new(periods, AutoETS::non_seasonal().into_trend_model());
                let fit = model
                    .fit(&h.values)
                    .map_err(|e| ModelError::Library(e.to_string()))?;
                let f = fit
                    .predict(horizon, None)
                    .map_err(|e| ModelError::Library(e.to_string()))?;
                Ok(f.point)
            }
            Model::Prophet => prophet(h, horizon, events),
            Model::Ensemble => {
                // Members see the events the way they do on their own.
                let resolved = crate::events::resolve(h, events);
                let mut deflated = h.clone();
                crate::events::deflate(&mut deflated, &resolved);
                let start = h.time_of(h.values.len());
                let mut members = Vec::new();
                for m in [Model::SeasonalNaiveDaily, Model::MstlAutoEts] {
                    if let Ok(mut f) = m.forecast_scaled(&deflated, horizon, events) {
                        crate::events::inflate(&mut f, start, h.step_s, &resolved);
                        members.push(f);
                    }
                }
                if let Ok(f) = prophet(h, horizon, events) {
                    members.push(f);
                }
                if members.len() < 2 {
                    return Err(ModelError::TooShort {
                        have: h.values.len(),
                        need: 2 * day,
                    });
                }
                let k = members.len() as f64;
                Ok((0..horizon)
                    .map(|i| members.iter().map(|m| m[i]).sum::<f64>() / k)
                    .collect())
            }
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// `y[t] = y[t - period]`, repeated over the horizon.
pub fn seasonal_naive(
    values: &[f64],
    period: usize,
    horizon: usize,
) -> Result<Vec<f64>, ModelError> {
    if values.len() < period || period == 0 {
        return Err(ModelError::TooShort {
            have: values.len(),
            need: period,
        });
    }
    let last = &values[values.len() - period..];
    Ok((0..horizon).map(|i| last[i % period]).collect())
}

/// The wasmstan optimizer, compiled once per process: compiling the WebAssembly component
/// costs far more than a fit.
fn optimizer() -> WasmstanOptimizer {
    static OPTIMIZER: std::sync::OnceLock<WasmstanOptimizer> = std::sync::OnceLock::new();
    OPTIMIZER.get_or_init(WasmstanOptimizer::new).clone()
}

fn prophet(h: &Series, horizon: usize, events: &[Event]) -> Result<Vec<f64>, ModelError> {
    // Hourly means keep the fit fast; each hour's value is spread over its steps.
    let per_hour = ((3_600 / h.step_s).max(1)) as usize;
    let hourly = if per_hour > 1 {
        h.downsample(per_hour)
    } else {
        h.clone()
    };
    if hourly.values.len() < 48 {
        return Err(ModelError::TooShort {
            have: h.values.len(),
            need: 48 * per_hour,
        });
    }
    let ds: Vec<i64> = (0..hourly.values.len())
        .map(|i| hourly.time_of(i))
        .collect();
    let data = TrainingData::new(ds, hourly.values.clone())
        .map_err(|e| ModelError::Library(e.to_string()))?;
    let mut opts = ProphetOptions {
        uncertainty_samples: 0,
        ..ProphetOptions::default()
    };
    let mut holidays: HashMap<String, Vec<HolidayOccurrence>> = HashMap::new();
    for e in events {
        holidays
            .entry(e.kind.clone())
            .or_default()
            .push(HolidayOccurrence::new(e.start_s, e.end_s));
    }
    opts.holidays = holidays
        .into_iter()
        .map(|(k, occ)| (k, Holiday::new(occ)))
        .collect();
    let mut model = Prophet::new(opts, optimizer());
    model
        .fit(data, Default::default())
        .map_err(|e| ModelError::Library(e.to_string()))?;
    let hours = horizon.div_ceil(per_hour);
    let last = hourly.time_of(hourly.values.len() - 1);
    let future = PredictionData::new(
        (1..=hours as i64)
            .map(|k| last + k * hourly.step_s)
            .collect(),
    );
    let p = model
        .predict(future)
        .map_err(|e| ModelError::Library(e.to_string()))?;
    let mut out = Vec::with_capacity(horizon);
    for i in 0..horizon {
        out.push(p.yhat.point[(i / per_hour).min(p.yhat.point.len() - 1)]);
    }
    Ok(out)
}
