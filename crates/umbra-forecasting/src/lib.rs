//! Demand forecasting for umbra, usable without Kafka: the forecast service, the simulator
//! and the benchmarks call it.
//!
//! - [`models`]: seasonal naive (daily, weekly), MSTL with an AutoETS trend, and Prophet with
//!   the wasmstan optimizer (augurs), behind one point-forecast interface that never panics;
//! - [`engine`]: per-series model choice by rolling-origin backtest, split-conformal intervals
//!   per horizon step, external events, clipping to `[0, capacity]`;
//! - [`metrics`]: MASE, sMAPE, WAPE, interval coverage and MSIS (checked against M4);
//! - [`data`]: readers of the Bitbrains trace and the M4 files.

pub mod data;
pub mod engine;
pub mod events;
pub mod metrics;
pub mod models;

pub use engine::{Forecast, Forecaster, ForecasterConfig, HorizonSpec};
pub use events::Event;
pub use models::{Model, ModelError};

/// A regular series: `values[i]` is the mean over `[start_s + i*step_s, start_s + (i+1)*step_s)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Start of the first step, Unix seconds.
    pub start_s: i64,
    /// Step length in seconds.
    pub step_s: i64,
    /// Values; may hold NaN for missing steps (models see them filled).
    pub values: Vec<f64>,
}

impl Series {
    /// Unix seconds of step `i`.
    pub fn time_of(&self, i: usize) -> i64 {
        self.start_s + i as i64 * self.step_s
    }

    /// The steps `[from, to)` as a new series.
    pub fn slice(&self, from: usize, to: usize) -> Series {
        Series {
            start_s: self.time_of(from),
            step_s: self.step_s,
            values: self.values[from..to].to_vec(),
        }
    }

    /// Means over groups of `factor` steps (e.g. 12 five-minute steps to an hour); NaNs are
    /// skipped, an all-NaN group stays NaN.
    pub fn downsample(&self, factor: usize) -> Series {
        let values = self
            .values
            .chunks(factor)
            .filter(|c| c.len() == factor)
            .map(|c| {
                let (s, n) = c
                    .iter()
                    .filter(|v| v.is_finite())
                    .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
                if n == 0 {
                    f64::NAN
                } else {
                    s / n as f64
                }
            })
            .collect();
        Series {
            start_s: self.start_s,
            step_s: self.step_s * factor as i64,
            values,
        }
    }
}

/// Replaces non-finite values by linear interpolation between the nearest finite neighbours
/// (constant extrapolation at the ends; zeros if nothing is finite). Returns the count filled.
pub fn fill_gaps(values: &mut [f64]) -> usize {
    let finite: Vec<usize> = (0..values.len())
        .filter(|&i| values[i].is_finite())
        .collect();
    let filled = values.len() - finite.len();
    if filled == 0 {
        return 0;
    }
    if finite.is_empty() {
        values.iter_mut().for_each(|v| *v = 0.0);
        return filled;
    }
    let (first, last) = (finite[0], finite[finite.len() - 1]);
    let (vf, vl) = (values[first], values[last]);
    values[..first].iter_mut().for_each(|v| *v = vf);
    values[last + 1..].iter_mut().for_each(|v| *v = vl);
    for w in finite.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b > a + 1 {
            let (va, vb) = (values[a], values[b]);
            for (k, v) in values[a + 1..b].iter_mut().enumerate() {
                let t = (k + 1) as f64 / (b - a) as f64;
                *v = va + t * (vb - va);
            }
        }
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_interpolated() {
        let mut v = vec![f64::NAN, 1.0, f64::NAN, f64::NAN, 4.0, f64::INFINITY];
        assert_eq!(fill_gaps(&mut v), 4);
        assert_eq!(v, vec![1.0, 1.0, 2.0, 3.0, 4.0, 4.0]);
        let mut none = vec![f64::NAN; 3];
        fill_gaps(&mut none);
        assert_eq!(none, vec![0.0; 3]);
    }

    #[test]
    fn downsample_means() {
        let s = Series {
            start_s: 0,
            step_s: 300,
            values: vec![1.0, 3.0, f64::NAN, 5.0, 7.0],
        };
        let h = s.downsample(2);
        assert_eq!(h.step_s, 600);
        assert_eq!(h.values, vec![2.0, 5.0]);
    }
}
