//! A synthetic series with known daily and weekly seasonality and a known event effect: the
//! forecaster recovers both.

use umbra_forecasting::engine::{Forecaster, ForecasterConfig};
use umbra_forecasting::events::learn_impact;
use umbra_forecasting::metrics::mean_abs_error;
use umbra_forecasting::{Event, Model, Series};

const STEP: i64 = 300;
const DAY: i64 = 86_400;
const T0: i64 = 1_372_636_800; // a Monday, 00:00 UTC

fn truth(t: i64) -> f64 {
    let day_phase = (t % DAY) as f64 / DAY as f64 * std::f64::consts::TAU;
    let weekday = ((t - T0) / DAY) % 7; // 0 = Monday
    let weekly = if weekday >= 5 { 0.6 } else { 1.0 };
    (100.0 + 40.0 * day_phase.sin()) * weekly
}

fn noise(i: usize) -> f64 {
    // Deterministic pseudo-noise in [-2, 2].
    let x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((x >> 33) as f64 / (1u64 << 31) as f64) * 4.0 - 2.0
}

/// Campaigns on day 10 and 17, 12:00–18:00, with demand 1.5×; a third one on day 28.
fn campaigns() -> Vec<Event> {
    [10, 17, 28]
        .iter()
        .map(|d| Event {
            kind: "CAMPAIGN_LAUNCH".into(),
            start_s: T0 + d * DAY + 12 * 3600,
            end_s: T0 + d * DAY + 18 * 3600,
            impact: None,
        })
        .collect()
}

fn history(days: i64, events: &[Event]) -> Series {
    let n = (days * DAY / STEP) as usize;
    let values = (0..n)
        .map(|i| {
            let t = T0 + i as i64 * STEP;
            let k = if events.iter().any(|e| e.start_s <= t && t < e.end_s) {
                1.5
            } else {
                1.0
            };
            truth(t) * k + noise(i)
        })
        .collect();
    Series {
        start_s: T0,
        step_s: STEP,
        values,
    }
}

#[test]
fn daily_and_weekly_seasonality_are_recovered() {
    let h = history(28, &[]);
    let f = Forecaster::new(ForecasterConfig {
        candidates: vec![Model::MstlAutoEts],
        ..ForecasterConfig::default()
    });
    // Forecast the next day (a Monday after a weekend): both seasonalities matter.
    let fc = f.forecast(&h, 288, &[], None);
    let actual: Vec<f64> = (0..288)
        .map(|i| truth(fc.start_s + i as i64 * STEP))
        .collect();
    let mae = mean_abs_error(&actual, &fc.mean);
    // Tolerance: within 5% of the mean level (100), i.e. close to the noise amplitude.
    assert!(
        mae < 5.0,
        "MAE {mae:.2} of {} against the known seasonal profile",
        fc.model
    );
    // The weekend dip is there: Saturday is forecast lower than Friday at the same hour.
    let fri = f.forecast(&history(25, &[]), 288, &[], None);
    let sat = f.forecast(&history(26, &[]), 288, &[], None);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&sat.mean) < 0.75 * mean(&fri.mean),
        "weekly: sat {:.1} vs fri {:.1}",
        mean(&sat.mean),
        mean(&fri.mean)
    );
}

#[test]
fn a_known_event_effect_is_learned_and_applied() {
    let events = campaigns();
    let h = history(28, &events[..2]);
    let learned =
        learn_impact(&h, &events, "CAMPAIGN_LAUNCH").expect("learned from two past campaigns");
    assert!(
        (learned - 1.5).abs() < 0.05,
        "learned impact {learned:.3}, true 1.5"
    );

    let f = Forecaster::default();
    let fc = f.forecast(&h, 288, &events, None);
    let (start, end) = (events[2].start_s, events[2].end_s);
    let mut ratio = Vec::new();
    for (i, v) in fc.mean.iter().enumerate() {
        let t = fc.start_s + i as i64 * STEP;
        if start <= t && t < end {
            ratio.push(v / truth(t));
        }
    }
    assert!(!ratio.is_empty());
    let r = ratio.iter().sum::<f64>() / ratio.len() as f64;
    assert!(
        (r - 1.5).abs() < 0.1,
        "forecast inside the future campaign is {r:.3}× the baseline, expected 1.5×"
    );
    // Outside the window the forecast is not inflated.
    let outside: Vec<f64> = fc
        .mean
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let t = fc.start_s + *i as i64 * STEP;
            t < start - 3600
        })
        .map(|(i, v)| v / truth(fc.start_s + i as i64 * STEP))
        .collect();
    let o = outside.iter().sum::<f64>() / outside.len() as f64;
    assert!((o - 1.0).abs() < 0.1, "outside the event {o:.3}×");
}

#[test]
fn explicit_impact_is_used_without_history() {
    let mut events = campaigns();
    events.truncate(0);
    let h = history(14, &[]);
    let e = Event {
        kind: "RELEASE".into(),
        start_s: h.time_of(h.values.len()) + 3600,
        end_s: h.time_of(h.values.len()) + 7200,
        impact: Some(2.0),
    };
    let f = Forecaster::default();
    let with = f.forecast(&h, 36, std::slice::from_ref(&e), None);
    let without = f.forecast(&h, 36, &[], None);
    assert!((with.mean[20] / without.mean[20] - 2.0).abs() < 1e-9);
    assert_eq!(with.mean[0], without.mean[0]);
}
