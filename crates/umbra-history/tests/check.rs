//! The checker finds each kind of violation, and passes a history without one.

use std::collections::BTreeMap;

use umbra_history::*;
use umbra_schemas::*;

fn request(id: &str) -> WorkloadRequest {
    WorkloadRequest {
        request_id: id.into(),
        workload_id: "w".into(),
        labels: Default::default(),
        resources: Resources {
            cpu_millicores: 500,
            memory_bytes: 1 << 30,
            disk_io_bytes_per_s: 0,
        },
        requested_at: 1,
    }
}

fn decision(id: &str, outcome: Outcome, shadow: Option<&str>, host: &str) -> AllocationDecision {
    AllocationDecision {
        request_id: id.into(),
        workload_id: "w".into(),
        outcome,
        host_id: Some(host.into()),
        shadow_id: shadow.map(str::to_string),
        requested_at: 1,
        decided_at: 2,
        reason: String::new(),
    }
}

fn event(id: &str, kind: FleetEventKind, host: &str, shadow: Option<&str>, cpu: i64) -> FleetEvent {
    FleetEvent {
        event_id: id.into(),
        command_id: None,
        kind,
        host_id: host.into(),
        shadow_id: shadow.map(str::to_string),
        workload_id: Some("w".into()),
        resources: Resources {
            cpu_millicores: cpu,
            memory_bytes: 0,
            disk_io_bytes_per_s: 0,
        },
        reason: String::new(),
        occurred_at: 1,
    }
}

fn entry(version: i64) -> ShadowEntry {
    let mut e = ShadowEntry::example();
    e.workload_id = "w".into();
    e.version = version;
    e.pool_labels = None;
    e
}

fn healthy() -> History {
    let mut table_restored = BTreeMap::new();
    table_restored.insert("w".to_string(), entry(2));
    let mut sample = UsageSample::example();
    sample.workload_id = "w".into();
    sample.sample_time = 600_000 + 10;
    let mut point = UsagePoint::example();
    point.workload_id = "w".into();
    point.bucket_start = 600_000;
    History {
        requests: vec![request("r1"), request("r2")],
        decisions: vec![
            decision("r1", Outcome::ShadowHit, Some("s1"), "h1"),
            // A redelivered identical decision is not a second one.
            decision("r1", Outcome::ShadowHit, Some("s1"), "h1"),
            decision("r2", Outcome::Standard, None, "h1"),
        ],
        claims: vec![Claim {
            shadow_id: "s1".into(),
            workload_id: "w".into(),
            request_id: "r1".into(),
            host_id: "h1".into(),
            entry_version: 1,
            claimed_at: 1,
        }],
        fleet_events: vec![
            event("e1", FleetEventKind::HostCapacity, "h1", None, 1000),
            event("e2", FleetEventKind::Created, "h1", Some("s1"), 600),
            event("e3", FleetEventKind::Released, "h1", Some("s1"), 600),
            event("e4", FleetEventKind::Created, "h1", Some("s2"), 900),
        ],
        table_log: vec![("w".into(), Some(entry(1))), ("w".into(), Some(entry(2)))],
        table_restored,
        poisons: vec![("raw".into(), b"garbage".to_vec())],
        dead_letters: vec![(
            "raw".into(),
            b"garbage".to_vec(),
            "decode: bad magic".into(),
        )],
        samples_sent: vec![sample],
        usage: vec![point],
    }
}

#[test]
fn a_clean_history_holds_every_invariant() {
    let verdicts = check(&healthy());
    assert_eq!(verdicts.len(), INVARIANTS.len());
    for v in &verdicts {
        assert!(v.holds(), "{v:?}");
        assert!(v.checked > 0, "{v:?}");
    }
}

#[test]
fn each_violation_is_found() {
    let broken = |f: &dyn Fn(&mut History), invariant: &str| {
        let mut h = healthy();
        f(&mut h);
        let v = check(&h);
        let failed: Vec<&str> = v
            .iter()
            .filter(|v| !v.holds())
            .map(|v| v.invariant)
            .collect();
        assert_eq!(failed, vec![invariant], "{v:?}");
    };
    broken(
        &|h| h.decisions.retain(|d| d.request_id != "r2"),
        "one decision per request",
    );
    broken(
        &|h| {
            h.decisions
                .push(decision("r2", Outcome::Standard, None, "h2"))
        },
        "one decision per request",
    );
    broken(
        &|h| {
            h.claims.push(Claim {
                request_id: "r2".into(),
                ..h.claims[0].clone()
            });
        },
        "no shadow claimed twice",
    );
    broken(
        &|h| {
            h.fleet_events
                .push(event("e5", FleetEventKind::Created, "h1", Some("s3"), 200))
        },
        "no host over capacity",
    );
    broken(&|h| h.dead_letters.clear(), "bad records dead-lettered");
    broken(
        &|h| {
            h.dead_letters
                .push(("raw".into(), b"good".to_vec(), "?".into()))
        },
        "bad records dead-lettered",
    );
    broken(
        &|h| h.table_log.push(("w".into(), Some(entry(2)))),
        "table = fold of its log",
    );
    broken(
        &|h| h.table_log.push(("w".into(), None)),
        "table = fold of its log",
    );
    broken(&|h| h.usage.clear(), "telemetry accounted for");
}
