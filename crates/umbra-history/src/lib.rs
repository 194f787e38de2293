//! The history checker, in the style of Jepsen's Kafka checker: after a run, everything the
//! pipeline wrote is read back from its topics into a [`History`], and [`check`] judges it
//! against the invariants users trust umbra with. Pure functions: the fault suite
//! (`umbra chaos`) gathers the history, the tests here feed it by hand.
//!
//! | invariant | holds when |
//! |---|---|
//! | `one decision per request` | every request has a decision, and all decisions of a request agree (a redelivered identical decision is at-least-once, not a second decision) |
//! | `no shadow claimed twice` | no shadow id is claimed by two different requests |
//! | `no host over capacity` | folding the fleet's events in order, no host ever holds more than its capacity |
//! | `bad records dead-lettered` | every poison record injected is in its topic's dead-letter topic, with a reason, and nothing else is |
//! | `table = fold of its log` | the shadow table a fresh materializer restores equals the fold of every record of its topic in order, and versions only grow per row |
//! | `telemetry accounted for` | every good raw sample lands in a usage-series bucket of its workload |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use umbra_ledger::Ledger;
use umbra_schemas::{
    AllocationDecision, Claim, FleetEvent, ShadowEntry, UsagePoint, UsageSample, WorkloadRequest,
};

/// Everything a run wrote, read back in topic order per partition.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Requests produced to `umbra.workload.requests` that decode (poisons excluded).
    pub requests: Vec<WorkloadRequest>,
    /// Decisions on `umbra.allocation.decisions`.
    pub decisions: Vec<AllocationDecision>,
    /// Claims on `umbra.claims`.
    pub claims: Vec<Claim>,
    /// Fleet events, in order within each partition (a host's events are in one partition).
    pub fleet_events: Vec<FleetEvent>,
    /// The shadow table's log: (workload id, value or tombstone), in order per partition.
    pub table_log: Vec<(String, Option<ShadowEntry>)>,
    /// The shadow table as the runtime's table materializer restores it now.
    pub table_restored: BTreeMap<String, ShadowEntry>,
    /// Poison records injected: (topic, value bytes).
    pub poisons: Vec<(String, Vec<u8>)>,
    /// Dead-lettered records: (source topic, value bytes, error header).
    pub dead_letters: Vec<(String, Vec<u8>, String)>,
    /// Good raw samples sent to `umbra.usage.raw` (each once, however often it was sent).
    pub samples_sent: Vec<UsageSample>,
    /// Usage series ingest produced.
    pub usage: Vec<UsagePoint>,
}

/// One invariant's verdict: how much was checked, and every violation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The invariant.
    pub invariant: &'static str,
    /// Items checked (requests, shadows, events, records, rows, samples).
    pub checked: usize,
    /// What broke it, one line each.
    pub violations: Vec<String>,
}

impl Verdict {
    /// Whether the invariant holds.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The invariants, in the order of the table the fault suite prints.
pub const INVARIANTS: [&str; 6] = [
    "one decision per request",
    "no shadow claimed twice",
    "no host over capacity",
    "bad records dead-lettered",
    "table = fold of its log",
    "telemetry accounted for",
];

/// Judges `h` against every invariant.
pub fn check(h: &History) -> Vec<Verdict> {
    vec![
        one_decision_per_request(h),
        no_shadow_claimed_twice(h),
        no_host_over_capacity(h),
        bad_records_dead_lettered(h),
        table_is_the_fold_of_its_log(h),
        telemetry_accounted_for(h),
    ]
}

fn verdict(invariant: &'static str, checked: usize, violations: Vec<String>) -> Verdict {
    Verdict {
        invariant,
        checked,
        violations,
    }
}

/// What makes two decisions the same decision: outcome, host, shadow.
type Effect = (String, Option<String>, Option<String>);

fn effect(d: &AllocationDecision) -> Effect {
    (
        format!("{:?}", d.outcome),
        d.host_id.clone(),
        d.shadow_id.clone(),
    )
}

/// Every request decided, and never two different ways.
pub fn one_decision_per_request(h: &History) -> Verdict {
    let mut by_request: HashMap<&str, BTreeSet<Effect>> = HashMap::new();
    for d in &h.decisions {
        by_request
            .entry(&d.request_id)
            .or_default()
            .insert(effect(d));
    }
    let mut v = Vec::new();
    let ids: BTreeSet<&str> = h.requests.iter().map(|r| r.request_id.as_str()).collect();
    for id in &ids {
        match by_request.get(id) {
            None => v.push(format!("request {id} has no decision")),
            Some(e) if e.len() > 1 => {
                v.push(format!("request {id} decided {} ways: {e:?}", e.len()))
            }
            Some(_) => {}
        }
    }
    for id in by_request.keys() {
        if !ids.contains(id) {
            v.push(format!("decision for request {id}, which was never made"));
        }
    }
    verdict(INVARIANTS[0], ids.len(), v)
}

/// No shadow taken by two requests.
pub fn no_shadow_claimed_twice(h: &History) -> Verdict {
    let mut by_shadow: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in &h.claims {
        by_shadow
            .entry(&c.shadow_id)
            .or_default()
            .insert(&c.request_id);
    }
    // A hit decision names its shadow too; it must be its claim's request.
    for d in h.decisions.iter().filter(|d| d.shadow_id.is_some()) {
        if let Some(s) = &d.shadow_id {
            by_shadow.entry(s).or_default().insert(&d.request_id);
        }
    }
    let v = by_shadow
        .iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|(s, r)| format!("shadow {s} claimed by {r:?}"))
        .collect();
    verdict(INVARIANTS[1], by_shadow.len(), v)
}

/// The fleet's events folded in order: no host over its capacity after any of them.
pub fn no_host_over_capacity(h: &History) -> Verdict {
    let mut ledger = Ledger::default();
    let mut v: Vec<String> = Vec::new();
    for e in &h.fleet_events {
        ledger.apply(e);
        for (host, what) in ledger.overcommitted() {
            if v.len() < 20 {
                v.push(format!(
                    "after event {}: host {host} over capacity in {what:?}",
                    e.event_id
                ));
            }
        }
    }
    verdict(INVARIANTS[2], h.fleet_events.len(), v)
}

/// Poison in the dead-letter topics with a reason, and nothing else there.
pub fn bad_records_dead_lettered(h: &History) -> Verdict {
    let mut v = Vec::new();
    let mut dlq: Vec<&(String, Vec<u8>, String)> = h.dead_letters.iter().collect();
    for (topic, bytes) in &h.poisons {
        match dlq.iter().position(|(t, b, _)| t == topic && b == bytes) {
            Some(i) => {
                let (_, _, why) = dlq.remove(i);
                if why.is_empty() {
                    v.push(format!(
                        "a poison record of {topic} was dead-lettered without a reason"
                    ));
                }
            }
            None => v.push(format!(
                "a poison record of {topic} ({} bytes) is not in its dead-letter topic",
                bytes.len()
            )),
        }
    }
    // Redeliveries of a poison (after a crash) may dead-letter it again: the same bytes.
    for (topic, bytes, why) in dlq {
        if !h.poisons.iter().any(|(t, b)| t == topic && b == bytes) {
            v.push(format!(
                "a record of {topic} that was not poison was dead-lettered: {why}"
            ));
        }
    }
    verdict(INVARIANTS[3], h.poisons.len(), v)
}

/// The restored table equals the fold of the log, and versions only grow.
pub fn table_is_the_fold_of_its_log(h: &History) -> Verdict {
    let mut fold: BTreeMap<String, ShadowEntry> = BTreeMap::new();
    let mut last_version: HashMap<&str, i64> = HashMap::new();
    let mut v = Vec::new();
    for (key, value) in &h.table_log {
        match value {
            Some(e) => {
                if let Some(prev) = last_version.get(key.as_str()) {
                    if e.version <= *prev {
                        v.push(format!("row {key}: version {} after {prev}", e.version));
                    }
                }
                last_version.insert(key, e.version);
                fold.insert(key.clone(), e.clone());
            }
            None => {
                fold.remove(key);
            }
        }
    }
    for (k, e) in &fold {
        match h.table_restored.get(k) {
            None => v.push(format!("row {k} is in the log's fold but not restored")),
            Some(r) if r != e => v.push(format!(
                "row {k}: restored version {} differs from the fold's {}",
                r.version, e.version
            )),
            Some(_) => {}
        }
    }
    for k in h.table_restored.keys() {
        if !fold.contains_key(k) {
            v.push(format!("row {k} is restored but not in the log's fold"));
        }
    }
    verdict(INVARIANTS[4], h.table_log.len(), v)
}

const BUCKET_MS: i64 = 300_000;

/// Start of the usage bucket a sample taken at `t` (ms) belongs to.
pub fn bucket_start(t: i64) -> i64 {
    t.div_euclid(BUCKET_MS) * BUCKET_MS
}

/// Every good sample's bucket is in the usage series of its workload.
pub fn telemetry_accounted_for(h: &History) -> Verdict {
    let buckets: BTreeSet<(&str, i64)> = h
        .usage
        .iter()
        .map(|p| (p.workload_id.as_str(), p.bucket_start))
        .collect();
    let mut v = Vec::new();
    let distinct: BTreeSet<(&str, i64)> = h
        .samples_sent
        .iter()
        .map(|s| (s.workload_id.as_str(), s.sample_time))
        .collect();
    for (w, t) in &distinct {
        let bucket = bucket_start(*t);
        if !buckets.contains(&(*w, bucket)) && v.len() < 20 {
            v.push(format!("sample of {w} at {t} is in no usage bucket"));
        }
    }
    verdict(INVARIANTS[5], distinct.len(), v)
}
