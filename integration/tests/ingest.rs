//! Ingest through the real broker: samples out of order within the allowed lateness are
//! aggregated into 5-minute buckets (mean, p95, max); a duplicate and a too-late sample are
//! dead-lettered with their reasons.

use std::collections::BTreeMap;
use std::time::Duration;

use umbra_integration::{Service, Stack};
use umbra_schemas::*;
use umbra_stream::dlq::header;
use umbra_stream::processor::{send, Input, Output};

const T0: i64 = 1_372_636_800_000;

fn sample(t: i64, cpu: f64) -> UsageSample {
    UsageSample {
        workload_id: "vm-b".into(),
        sample_time: t,
        cpu_millicores: cpu,
        ..UsageSample::example()
    }
}

#[tokio::test]
async fn out_of_order_samples_become_buckets_and_duplicates_and_late_ones_are_refused(
) -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let raw = format!("{p}umbra.usage.raw");
    let out: Output<WorkloadKey, UsageSample> =
        Output::new(stack.registry.clone(), raw.clone()).await?;
    let producer = stack.producer()?;
    let key = WorkloadKey {
        workload_id: "vm-b".into(),
    };
    // 30 minutes of one-minute samples; cpu = minute index. Each pair of neighbours swapped
    // (out of order), then a duplicate and, after the stream moved on, a too-late sample.
    let mut order: Vec<i64> = (0..30).collect();
    for pair in order.chunks_mut(2) {
        pair.reverse();
    }
    let mut samples: Vec<UsageSample> = order
        .iter()
        .map(|m| sample(T0 + m * 60_000, *m as f64))
        .collect();
    samples.insert(10, sample(T0 + 3 * 60_000, 3.0));
    samples.push(sample(T0 + 60_000 + 1, 999.0));
    for s in &samples {
        send(&producer, &out.record(&key, s)?, Default::default()).await?;
    }
    let mut svc = Service::start(
        &stack,
        "ingest",
        &p,
        &[("UMBRA_SERVICE__IDLE_FLUSH_MS", "1000")],
    )?;
    svc.wait_ready(Duration::from_secs(150)).await?;
    let series = stack
        .read_until(
            &format!("{p}umbra.usage.series"),
            Duration::from_secs(90),
            |r| r.len() >= 6,
        )
        .await?;
    let input: Input<WorkloadKey, UsagePoint> =
        Input::new(stack.registry.clone(), format!("{p}umbra.usage.series")).await?;
    let mut buckets = BTreeMap::new();
    for r in &series {
        let pt = input
            .decode_value(r.value.as_deref().unwrap_or_default())
            .await?;
        buckets.insert(pt.bucket_start, pt);
    }
    assert_eq!(buckets.len(), 6, "30 minutes in 5-minute buckets");
    for (i, (start, pt)) in buckets.iter().enumerate() {
        let first = i as f64 * 5.0;
        assert_eq!(*start, T0 + i as i64 * 300_000);
        assert_eq!(pt.sample_count, 5, "bucket {i}");
        assert_eq!(pt.cpu_millicores.mean, first + 2.0);
        assert_eq!(pt.cpu_millicores.max, first + 4.0);
        assert_eq!(pt.cpu_millicores.p95, first + 4.0);
    }
    let dlq = stack
        .read_until(&format!("{raw}.dlq"), Duration::from_secs(30), |r| {
            r.len() >= 2
        })
        .await?;
    let reasons: Vec<&str> = dlq.iter().filter_map(|r| r.header(header::ERROR)).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("duplicate sample for vm-b"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("too late"), "{}", reasons[1]);
    svc.signal("TERM")?;
    assert_eq!(svc.wait_exit(Duration::from_secs(30)).await?, Some(0));
    let committed = stack.committed(&format!("{p}ingest"), &raw).await?;
    assert_eq!(
        committed.values().sum::<i64>(),
        samples.len() as i64,
        "every sample accounted for and committed"
    );
    Ok(())
}

#[tokio::test]
async fn a_bitbrains_replay_becomes_clean_buckets_with_every_sample_accounted_for(
) -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/bitbrains-rnd");
    let mut svc = Service::start(
        &stack,
        "ingest",
        &p,
        &[("UMBRA_SERVICE__IDLE_FLUSH_MS", "1000")],
    )?;
    svc.wait_ready(Duration::from_secs(150)).await?;
    let replay = std::process::Command::new(umbra_integration::binary("umbra")?)
        .args(["replay-raw", "--data"])
        .arg(&data)
        .args(["--vms", "3", "--days", "0.25", "--from-day", "1"])
        .args([
            "--bootstrap-servers",
            &stack.bootstrap,
            "--registry-url",
            &stack.registry_url,
            "--topic-prefix",
            &p,
        ])
        .output()?;
    let said = String::from_utf8_lossy(&replay.stdout).to_string();
    assert!(
        replay.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let sent: i32 = said
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(sent > 150, "{said}");
    let input: Input<WorkloadKey, UsagePoint> =
        Input::new(stack.registry.clone(), format!("{p}umbra.usage.series")).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let series = stack
            .read_until(
                &format!("{p}umbra.usage.series"),
                Duration::from_secs(2),
                |_| false,
            )
            .await?;
        let dlq = stack
            .read_until(
                &format!("{p}umbra.usage.raw.dlq"),
                Duration::from_secs(1),
                |_| false,
            )
            .await?;
        let mut counted = 0i32;
        let mut per_vm: BTreeMap<String, usize> = BTreeMap::new();
        for r in &series {
            let pt = input
                .decode_value(r.value.as_deref().unwrap_or_default())
                .await?;
            assert_eq!(pt.bucket_start % 300_000, 0);
            assert!(
                pt.cpu_millicores.max <= pt.cpu_capacity_millicores + 1e-6,
                "{pt:?}"
            );
            counted += pt.sample_count;
            *per_vm.entry(pt.workload_id).or_default() += 1;
        }
        if counted + dlq.len() as i32 == sent {
            assert_eq!(per_vm.len(), 3, "{per_vm:?}");
            // A quarter day is 72 five-minute buckets; the trace has gaps.
            assert!(per_vm.values().all(|n| (55..=73).contains(n)), "{per_vm:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{counted} samples in buckets + {} dead letters != {sent} sent",
            dlq.len()
        );
    }
    svc.signal("TERM")?;
    assert_eq!(svc.wait_exit(Duration::from_secs(30)).await?, Some(0));
    Ok(())
}
