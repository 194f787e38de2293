//! The scale-up stage (docs/scale-up.md): per step, P(N ≥ k) of each workload's requests at
//! the next step and, per size class, the slots the trade-off holds. Pure over what the
//! service has read (usage points, replica counts, requests); the service feeds it and sends
//! what it returns.
//!
//! The stage begins once its inputs are restored: the history is everything before the
//! current step, its last week scored out of sample (the budget controller calibrates on it).
//! From then on each step is scored when every workload has its usage point of the step
//! before, or `max_wait_ms` after the step began, whichever comes first. It runs
//! [`umbra_replay::online`], the same code the offline sweep runs, so for the same inputs the
//! service holds the slots the sweep reports.
//!
//! The workloads and their size classes are fixed when the stage begins (a workload that
//! appears later is scored after the next restart).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use umbra_replay::online::{Scorer, SlotRule, StepScore};
use umbra_replay::pool::{SimSettings, TradeOff};
use umbra_replay::scaleup::ScaleUpError;
use umbra_replay::steps::StepTrace;
use umbra_replay::sweep::SweepSettings;
use umbra_replay::Placeholder;
use umbra_schemas::{
    pool_id, Resources, ScaleUpForecast, ScaleUpSubject, UsagePoint, WorkloadRequest, WorkloadScale,
};

/// Settings of the scale-up stage (`[service.scale_up]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleUpSettings {
    /// Publish scale-up forecasts and pool slots.
    pub enabled: bool,
    /// The one setting of the trade-off between hits and reserve: `{ budget = 0.2 }` holds the
    /// reserve at that share of used CPU; `{ miss_cost = 3000.0 }` holds the k-th slot of a
    /// class while P(N ≥ k) × that many core-seconds outweighs the slot's cores over a step.
    pub trade_off: TradeOff,
    /// Length of a step, seconds (the usage series' bucket).
    pub step_seconds: i64,
    /// A step is scored at the latest this long after it began, even if some workload's usage
    /// point of the step before has not arrived, in milliseconds of clock time.
    pub max_wait_ms: i64,
    /// From staging a slot to its being ready, seconds, in the budget controller's replay of
    /// the past (the fleet's shadow start-up).
    pub ready_delay_s: f64,
    /// Largest k of P(N_class ≥ k) published for a pool.
    pub max_published_k: usize,
}

impl Default for ScaleUpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            trade_off: TradeOff::Budget(0.2),
            step_seconds: 300,
            max_wait_ms: 60_000,
            ready_delay_s: 30.0,
            max_published_k: 16,
        }
    }
}

impl ScaleUpSettings {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.step_seconds <= 0 || 86_400 % self.step_seconds != 0 {
            return Err("service.scale_up.step_seconds must divide a day".into());
        }
        match self.trade_off {
            TradeOff::Budget(b) if !(b > 0.0 && b.is_finite()) => {
                Err("service.scale_up.trade_off.budget must be a positive number".into())
            }
            TradeOff::MissCost(c) if !(c > 0.0 && c.is_finite()) => {
                Err("service.scale_up.trade_off.miss_cost must be a positive number".into())
            }
            _ => Ok(()),
        }
    }

    fn sweep(&self) -> SweepSettings {
        SweepSettings {
            sim: SimSettings {
                ready_delay_s: self.ready_delay_s,
                fleet: None,
            },
            ..SweepSettings::default()
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// Step number (ms / step) → CPU mean, millicores.
    cpu: BTreeMap<i64, f64>,
    /// Observed at (ms) → replicas.
    replicas: BTreeMap<i64, u32>,
    /// Step number → requests.
    ups: BTreeMap<i64, u32>,
    replica: Option<Resources>,
    labels: HashMap<String, String>,
}

struct Running {
    /// Step number of the trace's step 0.
    origin: i64,
    trace: StepTrace,
    scorer: Scorer,
    rule: SlotRule,
    tails: Vec<Vec<Vec<f64>>>,
    /// Next step to score (index of the trace).
    next: usize,
}

/// The stage's state.
pub struct Stage {
    settings: ScaleUpSettings,
    step_ms: i64,
    seen: BTreeMap<String, Seen>,
    running: Option<Running>,
}

/// What one scored step publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepForecasts {
    /// Start of the step, ms.
    pub step_start: i64,
    /// One per workload, then one per pool.
    pub forecasts: Vec<ScaleUpForecast>,
}

impl Stage {
    /// An empty stage.
    pub fn new(settings: ScaleUpSettings) -> Self {
        Self {
            step_ms: settings.step_seconds * 1000,
            settings,
            seen: BTreeMap::new(),
            running: None,
        }
    }

    /// True once the stage has begun.
    pub fn begun(&self) -> bool {
        self.running.is_some()
    }

    /// Model fits so far.
    pub fn fits(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.scorer.fits)
    }

    fn index(&self, step: i64) -> Option<usize> {
        let r = self.running.as_ref()?;
        usize::try_from(step - r.origin).ok()
    }

    /// A usage point.
    pub fn add_point(&mut self, p: &UsagePoint) {
        let step = p.bucket_start.div_euclid(self.step_ms);
        let cpu = p.cpu_millicores.mean;
        if let Some(i) = self.index(step) {
            let r = self.running.as_mut().expect("index implies running");
            if let Some(w) = r.trace.ids.iter().position(|x| *x == p.workload_id) {
                grow(&mut r.trace, i + 1);
                r.trace.cpu[w][i] = cpu;
            }
            return;
        }
        self.seen
            .entry(p.workload_id.clone())
            .or_default()
            .cpu
            .insert(step, cpu);
    }

    /// A replica count.
    pub fn add_scale(&mut self, s: &WorkloadScale) {
        let e = self.seen.entry(s.workload_id.clone()).or_default();
        e.replicas.insert(s.observed_at, s.replicas.max(0) as u32);
        if self.running.is_none() {
            e.replica = Some(s.replica);
            e.labels = s.labels.clone();
        }
    }

    /// A request (the label stream).
    pub fn add_request(&mut self, q: &WorkloadRequest) {
        let step = q.requested_at.div_euclid(self.step_ms);
        if let Some(i) = self.index(step) {
            let r = self.running.as_mut().expect("index implies running");
            if let Some(w) = r.trace.ids.iter().position(|x| *x == q.workload_id) {
                grow(&mut r.trace, i + 1);
                r.trace.ups[w][i] += 1;
            }
            return;
        }
        *self
            .seen
            .entry(q.workload_id.clone())
            .or_default()
            .ups
            .entry(step)
            .or_default() += 1;
    }

    /// Begins at the step of `now`: the history is every step before it. Workloads need a
    /// usage point and a replica count to be modelled.
    pub fn begin(&mut self, now: i64) -> Result<(), ScaleUpError> {
        let now_step = now.div_euclid(self.step_ms);
        let modelled: Vec<&String> = self
            .seen
            .iter()
            .filter(|(_, s)| s.replica.is_some() && !s.cpu.is_empty())
            .map(|(id, _)| id)
            .collect();
        let Some(origin) = modelled
            .iter()
            .filter_map(|id| self.seen[*id].cpu.keys().next().copied())
            .min()
        else {
            return Ok(());
        };
        let steps = usize::try_from(now_step - origin).unwrap_or(0);
        let n = modelled.len();
        let mut trace = StepTrace {
            step_s: self.settings.step_seconds,
            origin_s: origin * self.settings.step_seconds,
            ids: modelled.iter().map(|s| (*s).clone()).collect(),
            sizes: modelled
                .iter()
                .map(|id| {
                    let r = self.seen[*id].replica.unwrap_or_default();
                    Placeholder {
                        cpu_millicores: r.cpu_millicores as f64,
                        memory_bytes: r.memory_bytes as f64,
                    }
                })
                .collect(),
            cpu: vec![vec![f64::NAN; steps]; n],
            ups: vec![vec![0; steps]; n],
            downs: vec![vec![0; steps]; n],
            running: vec![vec![0; steps]; n],
        };
        for (w, id) in modelled.iter().enumerate() {
            let s = &self.seen[*id];
            for (step, cpu) in s.cpu.range(origin..now_step) {
                trace.cpu[w][(step - origin) as usize] = *cpu;
            }
            for (step, u) in s.ups.range(origin..now_step) {
                trace.ups[w][(step - origin) as usize] = *u;
            }
        }
        let ids = trace.ids.clone();
        let sweep = self.settings.sweep();
        let (scorer, scores) = {
            fill_running(&mut trace, &self.seen, origin, self.step_ms, 0);
            Scorer::begin(&trace, &sweep)?
        };
        let mut tails: Vec<Vec<Vec<f64>>> = vec![Vec::new(); scorer.classes.slots.len()];
        for s in &scores {
            for (c, t) in s.class_tails.iter().enumerate() {
                tails[c].push(t.clone());
            }
        }
        // What arrived for the steps from now on, kept while the history was read.
        let pending: Vec<(usize, i64, f64)> = ids
            .iter()
            .enumerate()
            .flat_map(|(w, id)| {
                self.seen[id]
                    .cpu
                    .range(now_step..)
                    .map(move |(st, c)| (w, *st, *c))
            })
            .collect();
        let pending_ups: Vec<(usize, i64, u32)> = ids
            .iter()
            .enumerate()
            .flat_map(|(w, id)| {
                self.seen[id]
                    .ups
                    .range(now_step..)
                    .map(move |(st, u)| (w, *st, *u))
            })
            .collect();
        let mut r = Running {
            origin,
            rule: SlotRule::new(self.settings.trade_off, &sweep),
            trace,
            scorer,
            tails,
            next: steps,
        };
        for (w, st, c) in pending {
            let i = (st - origin) as usize;
            grow(&mut r.trace, i + 1);
            r.trace.cpu[w][i] = c;
        }
        for (w, st, u) in pending_ups {
            let i = (st - origin) as usize;
            grow(&mut r.trace, i + 1);
            r.trace.ups[w][i] += u;
        }
        for s in self.seen.values_mut() {
            s.cpu.clear();
            s.ups.clear();
        }
        self.running = Some(r);
        Ok(())
    }

    /// Scores every step that is due at `now`; the forecasts to publish, oldest step first.
    pub fn poll(&mut self, now: i64) -> Result<Vec<StepForecasts>, ScaleUpError> {
        let mut out = Vec::new();
        loop {
            let Some(r) = self.running.as_mut() else {
                return Ok(out);
            };
            let i = r.next;
            let start = (r.origin + i as i64) * self.step_ms;
            if now < start {
                return Ok(out);
            }
            let complete = i > 0
                && r.trace
                    .cpu
                    .iter()
                    .all(|c| c.get(i - 1).is_some_and(|v| v.is_finite()));
            if !complete && now < start + self.settings.max_wait_ms {
                return Ok(out);
            }
            grow(&mut r.trace, i + 1);
            fill_running(
                &mut r.trace,
                &self.seen,
                r.origin,
                self.step_ms,
                i.saturating_sub(1),
            );
            let score = r.scorer.score(&r.trace, i)?;
            for (c, t) in score.class_tails.iter().enumerate() {
                r.tails[c].push(t.clone());
            }
            let warm = r.scorer.warm_from;
            let (theta, slots) = r.rule.decide(
                &r.scorer.classes,
                &r.tails,
                &r.trace,
                warm,
                r.scorer.live_from - warm,
                i - warm,
            );
            r.next = i + 1;
            out.push(self.forecasts(start, now, &score, theta, &slots));
        }
    }

    fn forecasts(
        &self,
        start: i64,
        now: i64,
        score: &StepScore,
        theta: f64,
        slots: &[usize],
    ) -> StepForecasts {
        let r = self.running.as_ref().expect("forecasts only while running");
        let res = |p: &Placeholder| Resources {
            cpu_millicores: p.cpu_millicores.round() as i64,
            memory_bytes: p.memory_bytes.round() as i64,
            disk_io_bytes_per_s: 0,
        };
        let step_seconds = self.settings.step_seconds as i32;
        let mut forecasts: Vec<ScaleUpForecast> = r
            .trace
            .ids
            .iter()
            .enumerate()
            .map(|(w, id)| ScaleUpForecast {
                subject: id.clone(),
                kind: ScaleUpSubject::Workload,
                step_start: start,
                step_seconds,
                generated_at: now,
                at_least: score.at_least[w].to_vec(),
                size: res(&r.trace.sizes[w]),
                labels: HashMap::new(),
                members: Vec::new(),
                threshold: 0.0,
                slots: 0,
            })
            .collect();
        let classes = &r.scorer.classes;
        for (c, slot) in classes.slots.iter().enumerate() {
            let members: Vec<String> = classes
                .class_of
                .iter()
                .enumerate()
                .filter(|(_, k)| **k == c)
                .map(|(w, _)| r.trace.ids[w].clone())
                .collect();
            forecasts.push(ScaleUpForecast {
                subject: pool_id(c),
                kind: ScaleUpSubject::Pool,
                step_start: start,
                step_seconds,
                generated_at: now,
                at_least: score.class_tails[c]
                    .iter()
                    .skip(1)
                    .take(self.settings.max_published_k)
                    .copied()
                    .collect(),
                size: res(slot),
                labels: HashMap::new(),
                members,
                threshold: theta,
                slots: slots[c] as i32,
            });
        }
        StepForecasts {
            step_start: start,
            forecasts,
        }
    }
}

/// Grows every series of `t` to `len` steps (no sample, no request, replicas carried on).
fn grow(t: &mut StepTrace, len: usize) {
    for w in 0..t.workloads() {
        while t.cpu[w].len() < len {
            t.cpu[w].push(f64::NAN);
            t.ups[w].push(0);
            t.downs[w].push(0);
            let last = t.running[w].last().copied().unwrap_or(0);
            t.running[w].push(last);
        }
    }
}

/// Replicas running after each step from `from` on: the last count observed before the step
/// ended (none yet: 0, as before a workload's first sample).
fn fill_running(
    t: &mut StepTrace,
    seen: &BTreeMap<String, Seen>,
    origin: i64,
    step_ms: i64,
    from: usize,
) {
    for (w, id) in t.ids.iter().enumerate() {
        let Some(s) = seen.get(id) else { continue };
        for i in from..t.running[w].len() {
            let end = (origin + i as i64 + 1) * step_ms;
            t.running[w][i] = s.replicas.range(..end).next_back().map_or(0, |(_, r)| *r);
        }
    }
}
