//! External events: a window in which demand is expected to change by a factor.
//!
//! An event with an `impact` multiplies the forecast inside its window by it. An event without
//! one takes the impact learned from earlier events of the same kind in the history: the mean
//! demand inside their windows over the mean demand at the same times one week earlier (one
//! day when the history is shorter). Recurring events such as a nightly backup need no event
//! at all: they are part of the daily seasonal component every model fits. Before fitting,
//! past event windows are divided by their impact, so that a one-off campaign does not leak
//! into the seasonal profile.

use crate::Series;

/// One external event as the forecaster sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Kind, e.g. `CAMPAIGN_LAUNCH`; impacts are learned per kind.
    pub kind: String,
    /// Start, Unix seconds, inclusive.
    pub start_s: i64,
    /// End, Unix seconds, exclusive.
    pub end_s: i64,
    /// Expected multiplier on demand; `None` to learn it from history.
    pub impact: Option<f64>,
}

impl Event {
    fn covers(&self, t: i64) -> bool {
        self.start_s <= t && t < self.end_s
    }
}

/// Largest multiplier accepted, from data or from a user: beyond it an impact is a typo.
const MAX_IMPACT: f64 = 20.0;

/// The impact of `kind` learned from the events of that kind that lie inside `history`.
pub fn learn_impact(history: &Series, events: &[Event], kind: &str) -> Option<f64> {
    let n = history.values.len();
    let lag = if n as i64 * history.step_s >= 2 * 7 * 86_400 {
        7 * 86_400
    } else {
        86_400
    } / history.step_s;
    let lag = lag as usize;
    let (mut inside, mut before) = (0.0, 0.0);
    let mut count = 0;
    for e in events.iter().filter(|e| e.kind == kind) {
        for i in lag..n {
            let t = history.time_of(i);
            if e.covers(t) && !events.iter().any(|o| o.covers(history.time_of(i - lag))) {
                let (a, b) = (history.values[i], history.values[i - lag]);
                if a.is_finite() && b.is_finite() {
                    inside += a;
                    before += b;
                    count += 1;
                }
            }
        }
    }
    (count >= 3 && before > 0.0).then(|| (inside / before).clamp(1.0 / MAX_IMPACT, MAX_IMPACT))
}

/// The multiplier each event stands for: its own, or the learned one of its kind, or none.
pub fn resolve(history: &Series, events: &[Event]) -> Vec<(Event, f64)> {
    events
        .iter()
        .filter_map(|e| {
            let impact = e
                .impact
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| v.clamp(1.0 / MAX_IMPACT, MAX_IMPACT));
            let impact = impact.or_else(|| learn_impact(history, events, &e.kind))?;
            Some((e.clone(), impact))
        })
        .collect()
}

/// Divides the history inside past event windows by their impact.
pub fn deflate(history: &mut Series, resolved: &[(Event, f64)]) {
    for i in 0..history.values.len() {
        let t = history.time_of(i);
        for (e, k) in resolved {
            if e.covers(t) {
                history.values[i] /= k;
            }
        }
    }
}

/// Multiplies forecast steps inside future event windows by their impact.
pub fn inflate(values: &mut [f64], start_s: i64, step_s: i64, resolved: &[(Event, f64)]) {
    for (i, v) in values.iter_mut().enumerate() {
        let t = start_s + i as i64 * step_s;
        for (e, k) in resolved {
            if e.covers(t) {
                *v *= k;
            }
        }
    }
}
