//! The interceptor through the real broker and registry, with the shadow manager and the
//! fleet simulator: one shadow hit per staged row across two instances, a SIGKILL mid-burst
//! that loses and duplicates no decision, and a reason for every kind of bad request.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use umbra_integration::pipeline::{forecast, Pipeline};
use umbra_integration::Service;
use umbra_schemas::*;

const INTERCEPTOR_ENV: &[(&str, &str)] = &[
    ("UMBRA_SERVICE__ASSIGNMENT_GRACE_MS", "300"),
    ("UMBRA_SERVICE__PLACEMENT_TIMEOUT_MS", "2000"),
];

fn request(id: &str, w: &str, cpu: i64, mem: i64) -> WorkloadRequest {
    WorkloadRequest {
        request_id: id.into(),
        workload_id: w.into(),
        labels: Default::default(),
        resources: Resources {
            cpu_millicores: cpu,
            memory_bytes: mem,
            disk_io_bytes_per_s: 0,
        },
        requested_at: umbra_stream::now_millis(),
    }
}

fn per_request(ds: &[AllocationDecision]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for d in ds {
        *m.entry(d.request_id.as_str()).or_default() += 1;
    }
    m
}

/// Shadows staged for `workloads` (half a core, 1 GiB at the 80% bound), ready on 3 hosts;
/// returns their ids.
async fn staged(p: &Pipeline, workloads: &[String]) -> anyhow::Result<HashSet<String>> {
    let fcs: Vec<DemandForecast> = workloads.iter().map(|w| forecast(w, 500.0, 1.0)).collect();
    p.forecasts(&fcs).await?;
    let table = p
        .table_until("ready", Duration::from_secs(150), |t| {
            workloads.iter().all(|w| {
                t.get(w).is_some_and(|e| {
                    e.state == ShadowState::Active
                        && e.candidates
                            .iter()
                            .filter(|c| c.status == ShadowStatus::Healthy)
                            .count()
                            == 3
                })
            })
        })
        .await?;
    Ok(workloads
        .iter()
        .filter_map(|w| table.get(w))
        .flat_map(|e| e.candidates.iter().map(|c| c.shadow_id.clone()))
        .collect())
}

#[tokio::test]
async fn two_instances_and_a_burst_for_one_workload_claim_the_staged_shadow_once(
) -> anyhow::Result<()> {
    let mut p = Pipeline::start().await?;
    let before = staged(&p, &["hot".to_string()]).await?;
    p.add_interceptor(INTERCEPTOR_ENV).await?;
    p.add_interceptor(INTERCEPTOR_ENV).await?;
    let burst: Vec<WorkloadRequest> = (0..20)
        .map(|i| request(&format!("burst-{i}"), "hot", 400, 512 << 20))
        .collect();
    p.requests(&burst).await?;
    let ds = p
        .decisions_until("all 20 decided", Duration::from_secs(150), |d| {
            per_request(d).len() == 20
        })
        .await?;
    assert!(
        per_request(&ds).values().all(|n| *n == 1),
        "one decision each: {:?}",
        per_request(&ds)
    );
    let hits: Vec<&AllocationDecision> = ds
        .iter()
        .filter(|d| d.outcome == Outcome::ShadowHit)
        .collect();
    // One claimable shadow was staged before the burst: exactly one request gets it, whichever
    // instance decides it. After that claim the forecast (500m) is still above what the
    // workload holds (400m), so the shadow manager may stage a new row while the burst is
    // still being decided (seen on a loaded machine: a second hit, on another host and
    // shadow); such a shadow may be claimed too, but no shadow twice.
    let on_staged: Vec<&&AllocationDecision> = hits
        .iter()
        .filter(|d| d.shadow_id.as_ref().is_some_and(|s| before.contains(s)))
        .collect();
    assert_eq!(
        on_staged.len(),
        1,
        "exactly one request gets the staged shadow: {hits:?}"
    );
    let claimed: HashSet<&str> = hits.iter().filter_map(|d| d.shadow_id.as_deref()).collect();
    assert_eq!(
        claimed.len(),
        hits.len(),
        "no shadow claimed twice: {hits:?}"
    );
    let others: Vec<&AllocationDecision> = ds
        .iter()
        .filter(|d| d.outcome != Outcome::ShadowHit)
        .collect();
    assert!(
        others
            .iter()
            .all(|d| d.outcome == Outcome::Standard && d.host_id.is_some()),
        "{:?}",
        others.first()
    );
    assert!(ds
        .iter()
        .all(|d| d.decided_at >= d.requested_at && d.request_id.starts_with("burst-")));
    // The claimed shadow became the workload on its host.
    let hit = on_staged[0];
    let fleet = p.fleet().await?;
    let host = &fleet[hit.host_id.as_deref().unwrap_or_default()];
    assert!(
        !host
            .shadows
            .iter()
            .any(|s| Some(s.as_str()) == hit.shadow_id.as_deref()),
        "expanded, no longer a shadow"
    );
    assert!(host.workloads.contains_key("hot"));
    for v in fleet.values() {
        assert!(v.committed.fits_within(&v.capacity), "{v:?}");
    }
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_burst_loses_and_duplicates_no_decision() -> anyhow::Result<()> {
    let mut p = Pipeline::start().await?;
    let workloads: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    staged(&p, &workloads).await?;
    p.add_interceptor(INTERCEPTOR_ENV).await?;
    let n = 300;
    let reqs: Vec<WorkloadRequest> = (0..n)
        .map(|i| request(&format!("req-{i:03}"), &workloads[i % 10], 50, 64 << 20))
        .collect();
    p.requests(&reqs).await?;
    p.decisions_until("partly decided", Duration::from_secs(150), |d| {
        d.len() >= 30
    })
    .await?;
    p.interceptors[0].signal("KILL")?;
    p.interceptors[0].wait_exit(Duration::from_secs(10)).await?;
    let mut again = Service::start(&p.stack, "interceptor", &p.prefix, INTERCEPTOR_ENV)?;
    again.wait_ready(Duration::from_secs(150)).await?;
    p.interceptors[0] = again;
    let ds = p
        .decisions_until(
            "all decided after the restart",
            Duration::from_secs(200),
            |d| per_request(d).len() == n,
        )
        .await?;
    let counts = per_request(&ds);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "requests with two decisions: {twice:?}");
    let shadows: Vec<&str> = ds.iter().filter_map(|d| d.shadow_id.as_deref()).collect();
    let unique: HashSet<&&str> = shadows.iter().collect();
    assert_eq!(shadows.len(), unique.len(), "a shadow claimed twice");
    // Every staged row served a request; once a hit has become the workload, the row goes on
    // in replicas of that size (more hits, each on its own shadow, checked above).
    let hit_workloads: HashSet<&str> = ds
        .iter()
        .filter(|d| d.outcome == Outcome::ShadowHit)
        .map(|d| d.workload_id.as_str())
        .collect();
    assert_eq!(hit_workloads.len(), 10, "a hit for every staged row");
    let rejected: Vec<&AllocationDecision> = ds
        .iter()
        .filter(|d| d.outcome == Outcome::Rejected)
        .collect();
    assert!(
        rejected.is_empty(),
        "{} rejected, first: {:?}",
        rejected.len(),
        rejected.first()
    );
    for v in p.fleet().await?.values() {
        assert!(v.committed.fits_within(&v.capacity), "{v:?}");
    }
    Ok(())
}

#[tokio::test]
async fn every_kind_of_bad_request_gets_its_reason() -> anyhow::Result<()> {
    let mut p = Pipeline::start().await?;
    staged(&p, &["known".to_string()]).await?;
    p.add_interceptor(INTERCEPTOR_ENV).await?;
    let now = umbra_stream::now_millis();
    let bad = vec![
        (request("", "known", 100, 1), "request_id is empty"),
        (request("bad-neg", "known", -100, 1), "negative"),
        (
            request("bad-absurd", "known", 1 << 50, 1),
            "above the largest allowed request",
        ),
        (request("bad-zero", "known", 0, 0), "no CPU and no memory"),
        (
            WorkloadRequest {
                requested_at: now - 30 * 86_400_000,
                ..request("bad-old", "known", 100, 1)
            },
            "old",
        ),
        (
            WorkloadRequest {
                requested_at: now + 30 * 86_400_000,
                ..request("bad-future", "known", 100, 1)
            },
            "in the future",
        ),
        (
            request("bad-empty-workload", "", 100, 1),
            "workload_id is empty",
        ),
    ];
    // A workload umbra has never seen is not bad input: standard allocation, with a note.
    let new_workload = request("new-workload", "nobody", 100, 1);
    let mut reqs: Vec<WorkloadRequest> = bad.iter().map(|(r, _)| r.clone()).collect();
    reqs.push(new_workload.clone());
    p.requests(&reqs).await?;
    // And one record that is not a request at all.
    let topic = format!("{}umbra.workload.requests", p.prefix);
    let producer = p.stack.producer()?;
    p.stack
        .send_raw(
            &producer,
            &topic,
            Some(b"known"),
            Some(b"\x00\x00\x00\x00\x07garbage"),
        )
        .await?;
    let ds = p
        .decisions_until("all bad requests answered", Duration::from_secs(150), |d| {
            d.len() > bad.len()
        })
        .await?;
    let d = ds
        .iter()
        .find(|d| d.request_id == new_workload.request_id)
        .expect("the new workload's request is decided");
    assert_eq!(d.outcome, Outcome::Standard, "{d:?}");
    assert!(
        d.reason.contains("new workload 'nobody'") && d.host_id.is_some(),
        "{d:?}"
    );
    for (r, why) in &bad {
        let d = ds
            .iter()
            .find(|d| d.request_id == r.request_id && d.workload_id == r.workload_id)
            .unwrap_or_else(|| panic!("no decision for {r:?}"));
        assert_eq!(d.outcome, Outcome::Rejected, "{d:?}");
        assert!(d.reason.contains(why), "{}: {}", r.request_id, d.reason);
    }
    let dlq = p
        .stack
        .read_until(&format!("{topic}.dlq"), Duration::from_secs(60), |r| {
            !r.is_empty()
        })
        .await?;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("umbra.dlq.stage"), Some("decode"));
    assert_eq!(
        dlq[0].value.as_deref(),
        Some(&b"\x00\x00\x00\x00\x07garbage"[..])
    );
    // The poison record's offset is committed past.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let committed = p
            .stack
            .committed(&format!("{}interceptor", p.prefix), &topic)
            .await?;
        if committed.values().sum::<i64>() >= (reqs.len() + 1) as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "offsets not committed past the poison record: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
