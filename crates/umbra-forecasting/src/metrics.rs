//! Forecast accuracy metrics, as the M4 competition defines them.

/// Mean absolute error of the in-sample seasonal naive forecast with period `m` (the MASE
/// scale). `None` when the history is too short or the scale is zero.
pub fn seasonal_naive_scale(insample: &[f64], m: usize) -> Option<f64> {
    if insample.len() <= m {
        return None;
    }
    let n = insample.len() - m;
    let s: f64 = (m..insample.len())
        .map(|i| (insample[i] - insample[i - m]).abs())
        .sum();
    let scale = s / n as f64;
    (scale > 0.0 && scale.is_finite()).then_some(scale)
}

/// Mean absolute scaled error.
pub fn mase(actual: &[f64], forecast: &[f64], insample: &[f64], m: usize) -> Option<f64> {
    let scale = seasonal_naive_scale(insample, m)?;
    Some(mean_abs_error(actual, forecast) / scale)
}

/// Mean absolute error.
pub fn mean_abs_error(actual: &[f64], forecast: &[f64]) -> f64 {
    let n = actual.len().min(forecast.len()).max(1);
    actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum::<f64>()
        / n as f64
}

/// Symmetric MAPE in percent, M4 definition (`200 |a - f| / (|a| + |f|)`); steps where both are
/// zero count as zero error.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    let n = actual.len().min(forecast.len()).max(1);
    actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| {
            let d = a.abs() + f.abs();
            if d == 0.0 {
                0.0
            } else {
                200.0 * (a - f).abs() / d
            }
        })
        .sum::<f64>()
        / n as f64
}

/// Weighted absolute percentage error: `sum |a - f| / sum |a|`. `None` if all actuals are zero.
pub fn wape(actual: &[f64], forecast: &[f64]) -> Option<f64> {
    let num: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum();
    let den: f64 = actual.iter().map(|a| a.abs()).sum();
    (den > 0.0).then(|| num / den)
}

/// Fraction of actuals inside `[lower, upper]`.
pub fn coverage(actual: &[f64], lower: &[f64], upper: &[f64]) -> f64 {
    let n = actual.len().max(1);
    actual
        .iter()
        .zip(lower)
        .zip(upper)
        .filter(|((a, l), u)| **l <= **a && **a <= **u)
        .count() as f64
        / n as f64
}

/// Mean scaled interval score of a `(1 - alpha)` interval (M4 definition).
pub fn msis(
    actual: &[f64],
    lower: &[f64],
    upper: &[f64],
    insample: &[f64],
    m: usize,
    alpha: f64,
) -> Option<f64> {
    let scale = seasonal_naive_scale(insample, m)?;
    let n = actual.len().max(1);
    let s: f64 = actual
        .iter()
        .zip(lower)
        .zip(upper)
        .map(|((a, l), u)| {
            let mut v = u - l;
            if a < l {
                v += 2.0 / alpha * (l - a);
            }
            if a > u {
                v += 2.0 / alpha * (a - u);
            }
            v
        })
        .sum();
    Some(s / n as f64 / scale)
}

/// Geometric mean of positive values (zeros and non-finite values are skipped).
pub fn geometric_mean(values: &[f64]) -> Option<f64> {
    let logs: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .map(|v| v.ln())
        .collect();
    (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases() {
        assert_eq!(smape(&[1.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((smape(&[100.0], &[50.0]) - 200.0 * 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(wape(&[2.0, 2.0], &[1.0, 3.0]), Some(0.5));
        assert_eq!(coverage(&[1.0, 5.0], &[0.0, 0.0], &[2.0, 2.0]), 0.5);
        // insample 0,1,0,1 with m=1: scale 1; error 2 → MASE 2.
        assert_eq!(mase(&[3.0], &[1.0], &[0.0, 1.0, 0.0, 1.0], 1), Some(2.0));
        assert_eq!(mase(&[3.0], &[1.0], &[1.0, 1.0, 1.0], 1), None);
    }
}
