//! Where a process stands in its inputs, and the driven clock: what the lockstep replay
//! (docs/replay.md) needs to advance trace time only once the pipeline has settled.
//!
//! A service is settled at clock time `T` when, for every input partition it reads, it has
//! taken every record up to the partition's end into its state *and* every output those
//! records cause is acknowledged by the broker, and — for a service that acts in passes (the
//! shadow manager's reconcile, the forecast's scoring, the fleet's health check) — a pass that
//! began at `T` or later has finished with its outputs acknowledged. The driver reads this
//! from `GET /progress`, compares it with the end offsets it reads from the broker, and
//! advances the clock with `POST /clock` when every service is settled and no topic grew in
//! the meantime.
//!
//! One record per process: a service is one process, and what it reports is the union of its
//! readers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The time a driven clock stands at (ms since the epoch); `i64::MIN` until the driver sets it.
static DRIVEN_NOW: AtomicI64 = AtomicI64::new(i64::MIN);
/// Told whenever the driven clock moves: passes waiting on a timer start at once, and a move
/// during a pass is seen when the pass ends (a watch keeps it, a notification would not).
static ADVANCED: std::sync::OnceLock<tokio::sync::watch::Sender<i64>> = std::sync::OnceLock::new();

fn advanced() -> &'static tokio::sync::watch::Sender<i64> {
    ADVANCED.get_or_init(|| tokio::sync::watch::Sender::new(i64::MIN))
}
/// The latest clock time the driver declared settled (`POST /clock` with `settled`): a service
/// acting on marks ([`act_on_marks`]) plans once per step on inputs that no longer move.
static MARK: AtomicI64 = AtomicI64::new(i64::MIN);
/// Set by a service that acts once per mark.
static ON_MARKS: AtomicBool = AtomicBool::new(false);
/// Set by a service whose inputs take effect in passes: its readers' positions count only once
/// a pass has covered them.
static IN_PASSES: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<State> = Mutex::new(State {
    applied: BTreeMap::new(),
    settled: BTreeMap::new(),
    pass_clock_ms: None,
    acted_mark_ms: None,
});

struct State {
    applied: BTreeMap<String, BTreeMap<i32, i64>>,
    settled: BTreeMap<String, BTreeMap<i32, i64>>,
    pass_clock_ms: Option<i64>,
    acted_mark_ms: Option<i64>,
}

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn raise(map: &mut BTreeMap<String, BTreeMap<i32, i64>>, topic: &str, partition: i32, next: i64) {
    let p = map
        .entry(topic.to_string())
        .or_default()
        .entry(partition)
        .or_insert(next);
    *p = (*p).max(next);
}

/// What `GET /progress` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The driven clock's time, if it has been set.
    pub clock_ms: Option<i64>,
    /// Whether the service acts in passes (then `pass_clock_ms` must reach the clock).
    pub passes: bool,
    /// The clock time at which the last finished pass began.
    pub pass_clock_ms: Option<i64>,
    /// Per topic and partition, the next offset whose effects are complete.
    pub settled: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Whether the service acts once per mark of the driver ([`act_on_marks`]).
    #[serde(default)]
    pub on_marks: bool,
    /// The latest mark the service acted on, its outputs acknowledged.
    #[serde(default)]
    pub acted_mark_ms: Option<i64>,
}

impl Report {
    /// True when this service has settled every partition it reports up to its end in `ends`
    /// and, if it acts in passes, has finished a pass begun at `clock_ms` or later. Readers
    /// report their partitions from offset 0 as they open; a group consumer reports a
    /// partition once it has taken a record from it (the driver knows what it sent there).
    pub fn settled_at(&self, clock_ms: i64, ends: &BTreeMap<String, BTreeMap<i32, i64>>) -> bool {
        if self.clock_ms != Some(clock_ms) {
            return false;
        }
        if self.passes && self.pass_clock_ms.is_none_or(|p| p < clock_ms) {
            return false;
        }
        self.settled.iter().all(|(topic, parts)| {
            parts.iter().all(|(p, at)| {
                ends.get(topic)
                    .and_then(|e| e.get(p))
                    .is_none_or(|end| at >= end)
            })
        })
    }

    /// True when a service acting on marks has acted on `mark` (or a later one); always for
    /// the others.
    pub fn acted_on(&self, mark: i64) -> bool {
        !self.on_marks || self.acted_mark_ms.is_some_and(|m| m >= mark)
    }
}

/// Declares that this service acts once per mark the driver gives ([`settled_mark`]) rather
/// than on its first look at a new clock time. Called at start, long before the driver's
/// first mark (the replay marks only once the live days begin).
pub fn act_on_marks() {
    ON_MARKS.store(true, Ordering::Release);
}

/// The driver declares the pipeline settled at `now_ms` (the clock's time): passes waiting on
/// the clock start at once.
pub fn mark(now_ms: i64) {
    let before = MARK.fetch_max(now_ms, Ordering::AcqRel);
    if now_ms > before {
        advanced().send_modify(|_| {});
    }
}

/// The latest time the driver declared settled, if any.
pub fn settled_mark() -> Option<i64> {
    match MARK.load(Ordering::Acquire) {
        i64::MIN => None,
        t => Some(t),
    }
}

/// The service acted on the mark at `mark_ms`, its outputs acknowledged.
pub fn acted_on_mark(mark_ms: i64) {
    let mut s = state();
    s.acted_mark_ms = Some(s.acted_mark_ms.map_or(mark_ms, |m| m.max(mark_ms)));
}

/// Declares that a partition of `topic` is read, before anything has been read from it: the
/// driver waits for it from offset 0.
pub fn reads(topic: &str, partition: i32) {
    let mut s = state();
    s.applied
        .entry(topic.to_string())
        .or_default()
        .entry(partition)
        .or_insert(0);
    if !IN_PASSES.load(Ordering::Acquire) {
        s.settled
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_insert(0);
    }
}

/// A reader took every record of `partition` before `next` into local state. For a service
/// not acting in passes this settles them too (their effect is the state itself).
pub fn applied(topic: &str, partition: i32, next: i64) {
    let mut s = state();
    raise(&mut s.applied, topic, partition, next);
    if !IN_PASSES.load(Ordering::Acquire) {
        raise(&mut s.settled, topic, partition, next);
    }
}

/// Every output of the records of `partition` before `next` is acknowledged.
pub fn settled(topic: &str, partition: i32, next: i64) {
    raise(&mut state().settled, topic, partition, next);
}

/// Declares that this service's followed inputs take effect in passes ([`begin_pass`]).
/// Called before its readers open.
pub fn act_in_passes() {
    IN_PASSES.store(true, Ordering::Release);
}

/// What a pass covers: the positions applied when it began, and the clock then.
#[derive(Debug, Clone)]
pub struct Pass {
    applied: BTreeMap<String, BTreeMap<i32, i64>>,
    clock_ms: Option<i64>,
}

impl Pass {
    /// The driven clock's time when the pass began (`None` on a wall clock).
    pub fn clock_ms(&self) -> Option<i64> {
        self.clock_ms
    }
}

/// Marks the start of a pass: call before reading the state it acts on.
pub fn begin_pass() -> Pass {
    Pass {
        applied: state().applied.clone(),
        clock_ms: driven_now(),
    }
}

/// The pass begun with `pass` finished, its outputs acknowledged: what it covered is settled.
pub fn end_pass(pass: Pass) {
    let mut s = state();
    for (topic, parts) in &pass.applied {
        for (p, o) in parts {
            raise(&mut s.settled, topic, *p, *o);
        }
    }
    if let Some(c) = pass.clock_ms {
        s.pass_clock_ms = Some(s.pass_clock_ms.map_or(c, |x| x.max(c)));
    }
}

/// True when a reader has applied records that no pass has covered yet: a service acting in
/// passes runs one soon, rather than at its next interval.
pub fn unsettled() -> bool {
    let s = state();
    s.applied.iter().any(|(topic, parts)| {
        parts.iter().any(|(p, o)| {
            s.settled
                .get(topic)
                .and_then(|x| x.get(p))
                .is_none_or(|at| at < o)
        })
    })
}

/// Completes once [`unsettled`] holds, polled every 10 ms (tables have no change
/// notification), never at once: a loop waiting on it cannot spin.
pub async fn wait_unsettled() {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if unsettled() {
            return;
        }
    }
}

/// This process's progress.
pub fn report() -> Report {
    let s = state();
    Report {
        clock_ms: driven_now(),
        passes: IN_PASSES.load(Ordering::Acquire),
        pass_clock_ms: s.pass_clock_ms,
        settled: s.settled.clone(),
        on_marks: ON_MARKS.load(Ordering::Acquire),
        acted_mark_ms: s.acted_mark_ms,
    }
}

/// The driven clock's time, once set.
pub fn driven_now() -> Option<i64> {
    match DRIVEN_NOW.load(Ordering::Acquire) {
        i64::MIN => None,
        t => Some(t),
    }
}

/// Sets the driven clock. It never goes back: a stale request is ignored.
pub fn drive_clock(now_ms: i64) {
    let before = DRIVEN_NOW.fetch_max(now_ms, Ordering::AcqRel);
    if now_ms > before {
        advanced().send_replace(now_ms);
    }
}

/// A watch of the driven clock: `changed()` completes once it has moved since last seen (for
/// a loop that acts in passes, to start one at once). It never completes on a wall clock.
pub fn clock_watch() -> tokio::sync::watch::Receiver<i64> {
    advanced().subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(parts: &[(&str, i32, i64)]) -> BTreeMap<String, BTreeMap<i32, i64>> {
        let mut m: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for (t, p, e) in parts {
            m.entry(t.to_string()).or_default().insert(*p, *e);
        }
        m
    }

    #[test]
    fn a_report_is_settled_only_at_its_clock_with_every_partition_read_to_its_end() {
        let mut r = Report {
            clock_ms: Some(1_000),
            passes: false,
            pass_clock_ms: None,
            settled: ends(&[("a", 0, 5), ("a", 1, 3)]),
            on_marks: false,
            acted_mark_ms: None,
        };
        assert!(r.settled_at(1_000, &ends(&[("a", 0, 5), ("a", 1, 3), ("b", 0, 9)])));
        assert!(!r.settled_at(2_000, &ends(&[("a", 0, 5)])), "another clock");
        assert!(
            !r.settled_at(1_000, &ends(&[("a", 0, 6)])),
            "a record not yet taken"
        );
        r.settled.get_mut("a").unwrap().insert(2, 0);
        assert!(
            !r.settled_at(1_000, &ends(&[("a", 2, 1)])),
            "a partition opened with nothing read yet"
        );
        r.settled.get_mut("a").unwrap().insert(2, 1);
        r.passes = true;
        assert!(!r.settled_at(1_000, &ends(&[("a", 0, 5)])), "no pass yet");
        r.pass_clock_ms = Some(999);
        assert!(
            !r.settled_at(1_000, &ends(&[("a", 0, 5)])),
            "a pass of before"
        );
        r.pass_clock_ms = Some(1_000);
        assert!(r.settled_at(1_000, &ends(&[("a", 0, 5)])));
    }

    #[test]
    fn a_service_acting_on_marks_is_behind_a_mark_until_it_has_acted_on_it() {
        let mut r = Report {
            on_marks: true,
            ..Report::default()
        };
        assert!(!r.acted_on(1_000), "nothing acted on yet");
        r.acted_mark_ms = Some(999);
        assert!(!r.acted_on(1_000), "an older mark");
        r.acted_mark_ms = Some(1_000);
        assert!(r.acted_on(1_000));
        assert!(r.acted_on(900), "a later mark covers an earlier one");
        r.on_marks = false;
        r.acted_mark_ms = None;
        assert!(
            r.acted_on(5_000),
            "a service not acting on marks is never behind one"
        );
    }
}
