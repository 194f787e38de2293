//! Per-workload history and events: a pure fold over usage points and events, and the
//! forecast of one workload from it. No I/O.

use std::collections::{HashMap, HashSet};

use umbra_forecasting::engine::{DAY, HOUR, WEEK};
use umbra_forecasting::{Event, Forecaster, Series};
use umbra_schemas::{
    DemandForecast, ExternalEvent, ForecastPoint, Horizon, HorizonForecast, Interval, UsagePoint,
};

/// Grid step of the history, seconds (the ingest bucket).
pub const STEP_S: i64 = 300;

/// Usage history of one workload on a 5-minute grid; missing buckets are NaN.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Start of the first bucket, Unix seconds.
    pub start_s: i64,
    /// CPU mean per bucket, millicores.
    pub cpu: Vec<f64>,
    /// Memory mean per bucket, bytes.
    pub memory: Vec<f64>,
    /// Disk I/O mean per bucket, bytes/s.
    pub disk: Vec<f64>,
    /// Labels from the latest point.
    pub labels: HashMap<String, String>,
    /// CPU provisioned, millicores, from the latest point that knew it; forecasts are clipped to it.
    pub cpu_capacity: Option<f64>,
    /// Memory provisioned, bytes, likewise.
    pub memory_capacity: Option<f64>,
}

impl History {
    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.cpu.len()
    }

    /// True when there are no buckets.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_empty()
    }

    /// Drops the buckets that had not ended before `now_ms`.
    pub fn keep_ended_before(&mut self, now_ms: i64) {
        let step_ms = STEP_S * 1000;
        let ended = (now_ms - self.start_s * 1000 - 1)
            .div_euclid(step_ms)
            .max(0) as usize;
        for v in [&mut self.cpu, &mut self.memory, &mut self.disk] {
            v.truncate(ended);
        }
    }

    fn set(&mut self, bucket_s: i64, cpu: f64, memory: f64, disk: f64, max_len: usize) {
        let t = bucket_s.div_euclid(STEP_S) * STEP_S;
        if self.cpu.is_empty() {
            self.start_s = t;
        }
        if t < self.start_s {
            let missing = ((self.start_s - t) / STEP_S) as usize;
            if missing + self.len() > max_len {
                return; // older than the window kept
            }
            for v in [&mut self.cpu, &mut self.memory, &mut self.disk] {
                v.splice(0..0, std::iter::repeat_n(f64::NAN, missing));
            }
            self.start_s = t;
        }
        let i = ((t - self.start_s) / STEP_S) as usize;
        for (v, x) in [
            (&mut self.cpu, cpu),
            (&mut self.memory, memory),
            (&mut self.disk, disk),
        ] {
            if v.len() <= i {
                v.resize(i + 1, f64::NAN);
            }
            // Overwriting makes a replayed point idempotent.
            v[i] = x;
        }
        if self.len() > max_len {
            let drop = self.len() - max_len;
            for v in [&mut self.cpu, &mut self.memory, &mut self.disk] {
                v.drain(..drop);
            }
            self.start_s += drop as i64 * STEP_S;
        }
    }
}

/// Everything the service knows.
#[derive(Debug, Default)]
pub struct State {
    max_len: usize,
    workloads: HashMap<String, History>,
    events: HashMap<String, ExternalEvent>,
    dirty: HashSet<String>,
    urgent: HashSet<String>,
}

impl State {
    /// Empty state keeping `history_days` of history per workload.
    pub fn new(history_days: u32) -> Self {
        Self {
            max_len: (history_days as usize * 86_400 / STEP_S as usize).max(1),
            ..Self::default()
        }
    }

    /// Applies one usage point; the workload is refitted at the next cadence.
    pub fn add_point(&mut self, p: &UsagePoint) {
        let h = self.workloads.entry(p.workload_id.clone()).or_default();
        h.set(
            p.bucket_start.div_euclid(1000),
            p.cpu_millicores.mean,
            p.memory_bytes.mean,
            p.disk_io_bytes_per_s.mean,
            self.max_len,
        );
        h.labels.clone_from(&p.labels);
        let known = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
        h.cpu_capacity = known(p.cpu_capacity_millicores).or(h.cpu_capacity);
        h.memory_capacity = known(p.memory_capacity_bytes).or(h.memory_capacity);
        self.dirty.insert(p.workload_id.clone());
    }

    /// Applies one event; the workloads in its scope are refitted at once.
    pub fn add_event(&mut self, e: ExternalEvent) {
        for (id, h) in &self.workloads {
            if in_scope(&e, id, &h.labels) {
                self.urgent.insert(id.clone());
            }
        }
        self.events.insert(e.event_id.clone(), e);
    }

    /// The history of a workload.
    pub fn history(&self, id: &str) -> Option<&History> {
        self.workloads.get(id)
    }

    /// Workloads to refit now: those an event concerns, and, when `due`, those with new data;
    /// each with its history up to the buckets that ended before `now_ms`. A bucket ending
    /// exactly now may still be arriving: leaving it to the next refit makes what a refit
    /// sees depend on the clock alone (the lockstep replay refits the same data every run).
    pub fn take_dirty(&mut self, due: bool, now_ms: i64) -> Vec<(String, History, Vec<Event>)> {
        let mut ids: HashSet<String> = std::mem::take(&mut self.urgent);
        if due {
            ids.extend(std::mem::take(&mut self.dirty));
        }
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let mut h = self.workloads.get(&id)?.clone();
                h.keep_ended_before(now_ms);
                let events = self
                    .events
                    .values()
                    .filter(|e| in_scope(e, &id, &h.labels))
                    .map(to_event)
                    .collect();
                Some((id, h, events))
            })
            .collect()
    }
}

/// Whether `e` concerns workload `id`: named in it, or matching all its labels; an event
/// with neither concerns every workload.
pub fn in_scope(e: &ExternalEvent, id: &str, labels: &HashMap<String, String>) -> bool {
    if e.workload_ids.is_empty() && e.labels.is_empty() {
        return true;
    }
    e.workload_ids.iter().any(|w| w == id)
        || (!e.labels.is_empty() && e.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn to_event(e: &ExternalEvent) -> Event {
    Event {
        kind: format!("{:?}", e.kind),
        start_s: e.start_time.div_euclid(1000),
        end_s: e.end_time.div_euclid(1000),
        impact: e.expected_impact,
    }
}

/// Largest lag of the data behind now that a forecast makes up for (a week of 5-minute steps);
/// beyond it the data is history and the forecast starts at its end.
const MAX_LAG_STEPS: i64 = 7 * 288;

/// `fc` without its first `n` steps.
fn skip(mut fc: umbra_forecasting::Forecast, n: usize) -> umbra_forecasting::Forecast {
    let n = n.min(fc.mean.len());
    for v in [
        &mut fc.mean,
        &mut fc.lower80,
        &mut fc.upper80,
        &mut fc.lower95,
        &mut fc.upper95,
    ] {
        v.drain(..n.min(v.len()));
    }
    fc.start_s += n as i64 * fc.step_s;
    fc
}

/// The forecast of one workload: hour and day ahead at 5 minutes, week ahead at hourly means,
/// for CPU, memory and disk I/O, each with 80% and 95% intervals.
pub fn forecast_workload(
    f: &Forecaster,
    id: &str,
    h: &History,
    events: &[Event],
    now_ms: i64,
) -> DemandForecast {
    let series = |v: &Vec<f64>| Series {
        start_s: h.start_s,
        step_s: STEP_S,
        values: v.clone(),
    };
    let resources = [
        ("cpu", series(&h.cpu)),
        ("memory", series(&h.memory)),
        ("disk", series(&h.disk)),
    ];
    let mut per_resource = Vec::new();
    let mut models = Vec::new();
    let mut reasons = Vec::new();
    // A forecast covers the hour, day and week from now. When the data lags behind now
    // (a slow input, a restore, a gap in the telemetry), the horizons are extended by the lag
    // and the steps already past dropped, so that what is published still reaches a day
    // ahead of now rather than a day ahead of the last data.
    let end_s = h.start_s + h.len() as i64 * STEP_S;
    let lag = match (now_ms.div_euclid(1000) - end_s).max(0) / STEP_S {
        // Data that old is history (a backfill, a trace without a trace clock): forecast
        // from its end.
        l if l > MAX_LAG_STEPS => 0,
        l => l as usize,
    };
    let lag_week = lag / WEEK.aggregate;
    for (name, s) in &resources {
        let mut short = f.evaluate(s, &[HOUR.steps + lag, DAY.steps + lag], events, None);
        let week = skip(
            f.evaluate(
                &s.downsample(WEEK.aggregate),
                &[WEEK.steps + lag_week],
                events,
                None,
            )
            .remove(0)
            .chosen,
            lag_week,
        );
        let day = skip(short.remove(1).chosen, lag);
        let hour = skip(short.remove(0).chosen, lag);
        models.push(format!("{name}:{}", day.model));
        for (hz, fc) in [("1h", &hour), ("1d", &day), ("1w", &week)] {
            if let Some(r) = &fc.fallback_reason {
                reasons.push(format!("{name} {hz}: {r}"));
            }
        }
        per_resource.push([hour, day, week]);
    }
    let horizon = |k: usize, which: Horizon| {
        let [cpu, mem, disk] = [
            &per_resource[0][k],
            &per_resource[1][k],
            &per_resource[2][k],
        ];
        let iv = |fc: &umbra_forecasting::Forecast, i: usize| Interval {
            mean: fc.mean[i],
            lower_80: fc.lower80[i],
            upper_80: fc.upper80[i],
            lower_95: fc.lower95[i],
            upper_95: fc.upper95[i],
        };
        HorizonForecast {
            horizon: which,
            step_seconds: cpu.step_s as i32,
            points: (0..cpu.mean.len())
                .map(|i| ForecastPoint {
                    time: (cpu.start_s + i as i64 * cpu.step_s) * 1000,
                    cpu_millicores: iv(cpu, i),
                    memory_bytes: iv(mem, i),
                    disk_io_bytes_per_s: iv(disk, i),
                })
                .collect(),
        }
    };
    DemandForecast {
        workload_id: id.to_string(),
        generated_at: now_ms,
        model: models.join(" "),
        fallback_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        horizons: vec![
            horizon(0, Horizon::Hour),
            horizon(1, Horizon::Day),
            horizon(2, Horizon::Week),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_schemas::{Record, Stats};

    fn point(id: &str, t_s: i64, v: f64) -> UsagePoint {
        let s = Stats {
            mean: v,
            p95: v,
            max: v,
        };
        UsagePoint {
            workload_id: id.into(),
            bucket_start: t_s * 1000,
            bucket_seconds: 300,
            sample_count: 1,
            cpu_millicores: s.clone(),
            memory_bytes: s.clone(),
            disk_io_bytes_per_s: s,
            labels: HashMap::new(),
            cpu_capacity_millicores: 0.0,
            memory_capacity_bytes: 0.0,
        }
    }

    #[test]
    fn history_is_a_grid_and_replays_are_idempotent() {
        let mut st = State::new(1);
        let t0 = 1_372_636_800;
        st.add_point(&point("a", t0 + 600, 3.0));
        st.add_point(&point("a", t0, 1.0));
        st.add_point(&point("a", t0 + 600, 3.0));
        let h = st.history("a").unwrap();
        assert_eq!(h.start_s, t0);
        assert_eq!(h.cpu.len(), 3);
        assert_eq!(h.cpu[0], 1.0);
        assert!(h.cpu[1].is_nan());
        assert_eq!(h.cpu[2], 3.0);
        // The window keeps one day.
        st.add_point(&point("a", t0 + 2 * 86_400, 9.0));
        assert_eq!(st.history("a").unwrap().len(), 288);
    }

    #[test]
    fn a_refit_sees_only_the_buckets_ended_before_now() {
        let mut st = State::new(28);
        let t0 = 1_372_636_800;
        for k in 0..3 {
            st.add_point(&point("a", t0 + k * 300, k as f64));
        }
        let len_at = |st: &mut State, now_s: i64| {
            st.dirty.insert("a".into());
            st.take_dirty(true, now_s * 1000)[0].1.len()
        };
        // The third bucket ends at t0 + 900: not at that instant, one millisecond later.
        assert_eq!(len_at(&mut st, t0 + 900), 2);
        assert_eq!(
            st.take_dirty(true, (t0 + 900) * 1000 + 1).len(),
            0,
            "taken once"
        );
        st.dirty.insert("a".into());
        assert_eq!(st.take_dirty(true, (t0 + 900) * 1000 + 1)[0].1.len(), 3);
        assert_eq!(len_at(&mut st, t0), 0);
    }

    #[test]
    fn events_make_their_workloads_urgent() {
        let mut st = State::new(28);
        st.add_point(&point("a", 1_372_636_800, 1.0));
        st.add_point(&point("b", 1_372_636_800, 1.0));
        assert!(
            st.take_dirty(false, i64::MAX).is_empty(),
            "new data waits for the cadence"
        );
        let mut e = ExternalEvent::example();
        e.workload_ids = vec!["b".into()];
        e.labels.clear();
        st.add_event(e);
        let now: Vec<String> = st
            .take_dirty(false, i64::MAX)
            .into_iter()
            .map(|(id, _, ev)| {
                assert_eq!(ev.len(), 1);
                id
            })
            .collect();
        assert_eq!(now, vec!["b".to_string()]);
        assert_eq!(st.take_dirty(true, i64::MAX).len(), 2);
    }

    #[test]
    fn a_forecast_has_three_horizons_of_the_right_length() {
        let mut st = State::new(28);
        for i in 0..(3 * 288) {
            st.add_point(&point(
                "a",
                1_372_636_800 + i * 300,
                100.0 + (i % 288) as f64,
            ));
        }
        let h = st.history("a").unwrap();
        let f = Forecaster::default();
        let fc = forecast_workload(&f, "a", h, &[], 0);
        assert_eq!(
            fc.horizons
                .iter()
                .map(|h| h.points.len())
                .collect::<Vec<_>>(),
            vec![12, 288, 168]
        );
        assert_eq!(fc.horizons[2].step_seconds, 3600);
        let end = (1_372_636_800 + 3 * 288 * 300) * 1000;
        assert_eq!(fc.horizons[1].points[0].time, end, "from the data's end");
        // Data lagging 10 hours behind now: the horizons still start now and reach as far.
        let now = end + 10 * 3_600_000;
        let late = forecast_workload(&f, "a", h, &[], now);
        let lens: Vec<usize> = late.horizons.iter().map(|h| h.points.len()).collect();
        assert_eq!(lens, vec![12, 288, 168]);
        assert_eq!(late.horizons[1].points[0].time, now);
        assert_eq!(late.horizons[2].points[0].time, now);
        // Data older than a week is history: forecast from its end.
        let old = forecast_workload(&f, "a", h, &[], end + 30 * 86_400_000);
        assert_eq!(old.horizons[1].points[0].time, end);
        // Seasonal: the day-ahead value 10 h on is the one the lag-free forecast gives there.
        let same = |x: &DemandForecast| x.horizons[1].points[120].cpu_millicores.mean;
        assert!((same(&late) - fc.horizons[1].points[240].cpu_millicores.mean).abs() < 1e-6);
        let p = &fc.horizons[1].points[0];
        assert!(
            p.cpu_millicores.lower_95 <= p.cpu_millicores.mean
                && p.cpu_millicores.mean <= p.cpu_millicores.upper_95
        );
    }
}
