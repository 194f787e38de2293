//! The shadow manager and the fleet simulator through the real broker and registry:
//! forecasts in → shadows created on hosts → table rows ready with ranked hosts; failures
//! replaced; an unhealthy host loses its rank; a SIGKILL mid-stream loses and duplicates
//! nothing; lost and duplicated fleet commands are survived.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use umbra_fleet::HostView;
use umbra_integration::pipeline::{forecast, Pipeline, MANAGER_ENV};
use umbra_integration::Service;
use umbra_schemas::*;

fn ready_with_k(e: &ShadowEntry, k: usize) -> bool {
    let hosts: HashSet<&str> = e.candidates.iter().map(|c| c.host_id.as_str()).collect();
    e.state == ShadowState::Active
        && e.candidates.len() == k
        && hosts.len() == k
        && e.candidates
            .iter()
            .all(|c| c.status == ShadowStatus::Healthy)
        && e.host_ranking
            == e.candidates
                .iter()
                .map(|c| c.host_id.clone())
                .collect::<Vec<_>>()
        && e.candidates
            .iter()
            .enumerate()
            .all(|(i, c)| c.rank == i as i32)
}

fn all_ready(t: &BTreeMap<String, ShadowEntry>, n: usize) -> bool {
    t.len() == n && t.values().all(|e| ready_with_k(e, 3))
}

fn assert_within_capacity(fleet: &BTreeMap<String, HostView>) {
    for (h, v) in fleet {
        assert!(
            v.committed.fits_within(&v.capacity),
            "host {h} over capacity: {v:?}"
        );
    }
}

fn shadows_in(fleet: &BTreeMap<String, HostView>) -> usize {
    fleet.values().map(|v| v.shadows.len()).sum()
}

#[tokio::test]
async fn forecasts_become_ranked_ready_shadows_failures_are_replaced_and_sick_hosts_drop(
) -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    p.forecasts(&[
        forecast("w-a", 1_500.0, 2.0),
        forecast("w-b", 2_000.0, 4.0),
        forecast("w-c", 500.0, 1.0),
    ])
    .await?;
    let t = p
        .table_until(
            "ready with 3 healthy ranked hosts each",
            Duration::from_secs(90),
            |t| all_ready(t, 3),
        )
        .await?;
    // Sized from the 80% upper bound, rounded up to the granularity.
    assert_eq!(t["w-a"].requirements.cpu_millicores, 1_500);
    assert_eq!(t["w-b"].requirements.memory_bytes, 4 << 30);
    let fleet = p.fleet().await?;
    assert_within_capacity(&fleet);
    assert_eq!(shadows_in(&fleet), 9, "{fleet:#?}");

    // The best shadow of w-a fails its health check: it is replaced on another host.
    let victim = t["w-a"].candidates[0].clone();
    p.fault(serde_json::json!({"fault": "fail_shadow", "shadow_id": victim.shadow_id}))
        .await?;
    let t = p
        .table_until(
            "w-a replaced its failed shadow",
            Duration::from_secs(90),
            |t| {
                t.get("w-a").is_some_and(|e| {
                    ready_with_k(e, 3)
                        && e.candidates
                            .iter()
                            .all(|c| c.shadow_id != victim.shadow_id && c.host_id != victim.host_id)
                })
            },
        )
        .await?;
    assert!(t["w-a"].version > 0);

    // The host of w-b's best shadow turns unhealthy: it drops to the last rank.
    let sick = t["w-b"].candidates[0].host_id.clone();
    p.fault(serde_json::json!({"fault": "host_health", "host_id": sick, "healthy": false}))
        .await?;
    p.table_until(
        "w-b ranked its sick host last",
        Duration::from_secs(90),
        |t| {
            t.get("w-b").is_some_and(|e| {
                e.host_ranking.last() == Some(&sick)
                    && e.candidates.last().is_some_and(|c| {
                        c.health_score < 0.2 && c.status == ShadowStatus::Unhealthy
                    })
            })
        },
    )
    .await?;
    let fleet = p.fleet().await?;
    assert_within_capacity(&fleet);
    assert_eq!(shadows_in(&fleet), 9, "replaced, not added: {fleet:#?}");
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_duplicates_nothing_and_overcommits_nothing(
) -> anyhow::Result<()> {
    let mut p = Pipeline::start().await?;
    let n = 30;
    let fcs: Vec<DemandForecast> = (0..n)
        .map(|i| forecast(&format!("w{i:02}"), 500.0, 1.0))
        .collect();
    p.forecasts(&fcs).await?;
    // Kill as soon as the manager has written part of the table.
    p.table_until("partly written", Duration::from_secs(90), |t| !t.is_empty())
        .await?;
    p.manager.signal("KILL")?;
    p.manager.wait_exit(Duration::from_secs(10)).await?;
    p.manager = Service::start(&p.stack, "shadow-manager", &p.prefix, MANAGER_ENV)?;
    p.manager.wait_ready(Duration::from_secs(150)).await?;
    p.table_until(
        "complete after the restart",
        Duration::from_secs(150),
        |t| all_ready(t, n),
    )
    .await?;
    // Orphans of the crash (commands acknowledged before their row) are released; in the end
    // the fleet holds exactly K shadows per workload.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let fleet = p.fleet().await?;
        assert_within_capacity(&fleet);
        let t = p.table_now().await?;
        let referenced: HashSet<String> = t
            .values()
            .flat_map(|e| e.candidates.iter().map(|c| c.shadow_id.clone()))
            .collect();
        let held: HashSet<String> = fleet
            .values()
            .flat_map(|v| v.shadows.iter().cloned())
            .collect();
        if held == referenced && held.len() == 3 * n {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "fleet holds {} shadows, table references {}: {:?}",
                held.len(),
                referenced.len(),
                held.symmetric_difference(&referenced).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

#[tokio::test]
async fn lost_and_duplicated_fleet_commands_are_survived() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    p.fault(serde_json::json!({"fault": "lose_commands", "count": 3}))
        .await?;
    p.fault(serde_json::json!({"fault": "duplicate_commands", "count": 3}))
        .await?;
    let fcs: Vec<DemandForecast> = (0..4)
        .map(|i| forecast(&format!("d{i}"), 1_000.0, 2.0))
        .collect();
    p.forecasts(&fcs).await?;
    p.table_until(
        "ready despite lost commands",
        Duration::from_secs(150),
        |t| all_ready(t, 4),
    )
    .await?;
    let fleet = p.fleet().await?;
    assert_within_capacity(&fleet);
    assert_eq!(shadows_in(&fleet), 12, "{fleet:#?}");
    let lost = p
        .sim
        .metric("umbra_fleet_commands_total{outcome=\"lost\"")
        .await?;
    let dup = p
        .sim
        .metric("umbra_fleet_commands_total{outcome=\"duplicate\"")
        .await?;
    assert_eq!(lost, Some(3.0));
    assert!(dup.is_some_and(|d| d >= 3.0), "duplicates seen: {dup:?}");
    Ok(())
}

#[tokio::test]
async fn on_a_trace_clock_shadows_are_staged_in_trace_time() -> anyhow::Result<()> {
    // The demo's compressed replay: 2013 trace time running 1,000 times faster than the wall.
    let origin_trace = 1_372_636_800_000i64;
    let origin_wall = umbra_stream::now_millis().to_string();
    let clock = [
        ("UMBRA_CLOCK__SPEED", "1000"),
        ("UMBRA_CLOCK__ORIGIN_TRACE_MS", "1372636800000"),
        ("UMBRA_CLOCK__ORIGIN_WALL_MS", origin_wall.as_str()),
    ];
    let p = Pipeline::start_with(&clock).await?;
    // Forecasts made in trace time, an hour after the origin (seconds of wall time away).
    p.forecasts(&[umbra_integration::pipeline::forecast_at(
        "old",
        800.0,
        1.0,
        origin_trace + 3_600_000,
    )])
    .await?;
    let t = p
        .table_until("staged in trace time", Duration::from_secs(90), |t| {
            all_ready(t, 1)
        })
        .await?;
    let e = &t["old"];
    assert!(
        e.predicted_start >= origin_trace && e.predicted_start < origin_trace + 2 * 86_400_000,
        "{e:?}"
    );
    assert!(
        e.updated_at >= origin_trace && e.updated_at < origin_trace + 86_400_000,
        "row times are trace times: {}",
        e.updated_at
    );
    Ok(())
}
