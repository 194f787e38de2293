//! The rebalancer through the real broker with the fleet simulator, ingest and the shadow
//! manager: a host kept below the threshold keeps its shadows; pushed over it, its shadows
//! move to other hosts within the dwell time.

use std::time::{Duration, Instant};

use anyhow::bail;
use umbra_integration::pipeline::{forecast, Pipeline};
use umbra_schemas::*;
use umbra_stream::processor::Input;

fn load(id: &str, host: &str, cpu: i64) -> FleetCommand {
    FleetCommand {
        command_id: id.into(),
        kind: FleetCommandKind::PlaceWorkload,
        host_id: host.into(),
        target_host_id: None,
        shadow_id: None,
        workload_id: format!("outside-{id}"),
        request_id: None,
        resources: Resources {
            cpu_millicores: cpu,
            memory_bytes: 1 << 30,
            disk_io_bytes_per_s: 0,
        },
        issued_at: umbra_stream::now_millis(),
    }
}

#[tokio::test]
async fn shadows_move_off_a_host_over_the_threshold_and_stay_below_it() -> anyhow::Result<()> {
    let p = Pipeline::start().await?;
    p.forecasts(&[forecast("r1", 500.0, 1.0), forecast("r2", 500.0, 1.0)])
        .await?;
    let t = p
        .table_until("staged", Duration::from_secs(150), |t| {
            t.len() == 2
                && t.values().all(|e| {
                    e.candidates
                        .iter()
                        .filter(|c| c.status == ShadowStatus::Healthy)
                        .count()
                        == 3
                })
        })
        .await?;
    // The host with the most shadows.
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for c in t.values().flat_map(|e| &e.candidates) {
        *counts.entry(c.host_id.clone()).or_default() += 1;
    }
    let (hot, n) = counts
        .iter()
        .max_by_key(|(h, n)| (**n, std::cmp::Reverse((*h).clone())))
        .map(|(h, n)| (h.clone(), *n))
        .unwrap_or_default();
    assert!(n >= 1);
    let _rebalancer = p
        .start_service(
            "rebalancer",
            &[
                ("UMBRA_SERVICE__THRESHOLD", "0.85"),
                ("UMBRA_SERVICE__HYSTERESIS", "0.10"),
                ("UMBRA_SERVICE__DWELL_MS", "2000"),
                ("UMBRA_SERVICE__INTERVAL_MS", "500"),
            ],
        )
        .await?;
    let requests: Input<WorkloadKey, ReshadowRequest> = Input::new(
        p.stack.registry.clone(),
        format!("{}umbra.reshadow.requests", p.prefix),
    )
    .await?;
    // 75% busy: below the threshold. Nothing moves for three dwell times.
    p.fleet_commands(&[load("l1", &hot, 6_000)]).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let quiet = p
        .stack
        .read_until(requests.topic(), Duration::from_secs(1), |_| false)
        .await?;
    assert!(
        quiet.is_empty(),
        "moved while below the threshold: {} requests",
        quiet.len()
    );
    // 87.5% busy: over. Its shadows move within the dwell time (plus the pipeline's delays).
    let pushed = Instant::now();
    p.fleet_commands(&[load("l2", &hot, 1_000)]).await?;
    let raws = p
        .stack
        .read_until(requests.topic(), Duration::from_secs(60), |r| r.len() >= n)
        .await?;
    let mut seen = Vec::new();
    for r in &raws {
        if let Some(v) = &r.value {
            seen.push(requests.decode_value(v).await?);
        }
    }
    if seen.len() < n {
        bail!("{} of {n} shadows asked to move off {hot}", seen.len());
    }
    assert!(
        pushed.elapsed() < Duration::from_secs(30),
        "took {:?}",
        pushed.elapsed()
    );
    assert!(seen
        .iter()
        .all(|r| r.from_host_id == hot && r.to_host_id.as_deref() != Some(hot.as_str())));
    assert!(seen[0].reason.contains("> 85%"), "{}", seen[0].reason);
    // The shadow manager carries them out: no row keeps a shadow on the hot host.
    p.table_until("moved off the hot host", Duration::from_secs(90), |t| {
        t.values()
            .all(|e| e.candidates.iter().all(|c| c.host_id != hot) && e.candidates.len() == 3)
    })
    .await?;
    for v in p.fleet().await?.values() {
        assert!(v.committed.fits_within(&v.capacity), "{v:?}");
    }
    Ok(())
}
