//! The services against the real broker and registry: readiness after restore, clean
//! SIGTERM, dead letters, crash recovery, bad configuration.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use umbra_integration::{binary, Service, Stack};
use umbra_schemas::*;
use umbra_stream::codec::frame;
use umbra_stream::dlq::header;
use umbra_stream::processor::{send, Input, Output};

const SERVICES: [&str; 5] = [
    "ingest",
    "forecast",
    "shadow-manager",
    "interceptor",
    "rebalancer",
];

fn entry(workload: &str, version: i64) -> ShadowEntry {
    let mut e = ShadowEntry::example();
    e.workload_id = workload.into();
    e.version = version;
    e.pool_labels = None;
    e
}

#[tokio::test]
async fn each_service_is_ready_after_restoring_and_exits_zero_on_sigterm() -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    // A shadow table with history: 30 upserts over 10 workloads and 3 tombstones.
    let table_topic = format!("{p}umbra.shadow.table");
    let out: Output<WorkloadKey, ShadowEntry> =
        Output::new(stack.registry.clone(), table_topic).await?;
    let producer = stack.producer()?;
    for v in 0..3 {
        for w in 0..10 {
            let id = format!("vm-{w:03}");
            send(
                &producer,
                &out.record(
                    &WorkloadKey {
                        workload_id: id.clone(),
                    },
                    &entry(&id, v),
                )?,
                Default::default(),
            )
            .await?;
        }
    }
    for w in 0..3 {
        send(
            &producer,
            &out.tombstone(&WorkloadKey {
                workload_id: format!("vm-{w:03}"),
            })?,
            Default::default(),
        )
        .await?;
    }
    // The shadow manager goes last: its first pass deletes these rows (no forecast asks
    // for them), and the services after it would restore an empty table.
    let mut order: Vec<&str> = SERVICES
        .iter()
        .copied()
        .filter(|n| *n != "shadow-manager")
        .collect();
    order.push("shadow-manager");
    for name in order {
        let mut svc = Service::start(&stack, name, &p, &[])?;
        svc.wait_ready(Duration::from_secs(60)).await?;
        if matches!(name, "shadow-manager" | "interceptor" | "rebalancer") {
            let rows = svc
                .metric(&format!(
                    "umbra_table_restored_rows{{topic=\"{p}umbra.shadow.table\""
                ))
                .await?;
            assert_eq!(
                rows,
                Some(7.0),
                "{name} restored 10 workloads minus 3 tombstones"
            );
        }
        svc.signal("TERM")?;
        let code = svc.wait_exit(Duration::from_secs(30)).await?;
        assert_eq!(
            code,
            Some(0),
            "{name} exits 0 on SIGTERM; log:\n{}",
            svc.log_text()
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_configuration_is_one_clear_line_and_exit_code_two() -> anyhow::Result<()> {
    for name in SERVICES {
        let bin = binary(&format!("umbra-{name}"))?;
        let cases: [(&str, &str, &str); 3] = [
            (
                "UMBRA_KAFKA__BOOTSTRAP_SERVER",
                "127.0.0.1:9092",
                "bootstrap_server",
            ),
            ("UMBRA_HTTP__LISTEN", "not-an-address", "listen"),
            ("UMBRA_KAFKA__BOOTSTRAP_SERVERS", "nohostport", "host:port"),
        ];
        for (k, v, mention) in cases {
            let out = std::process::Command::new(&bin)
                .env_clear()
                .env(k, v)
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} {k}={v}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains("bad configuration") && stderr.to_lowercase().contains(mention),
                "{name}: {stderr}"
            );
        }
    }
    Ok(())
}

/// Ingest closes the buckets of an idle partition after a second instead of five minutes.
const FLUSH_SOON: &[(&str, &str)] = &[("UMBRA_SERVICE__IDLE_FLUSH_MS", "1000")];

fn sample(workload: &str, i: i64) -> UsageSample {
    let mut s = UsageSample::example();
    s.workload_id = workload.into();
    s.sample_time = 1_372_636_800_000 + i * 300_000;
    s.cpu_millicores = i as f64;
    s
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_later_records_still_processed() -> anyhow::Result<()>
{
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let raw_topic = format!("{p}umbra.usage.raw");
    let out: Output<WorkloadKey, UsageSample> =
        Output::new(stack.registry.clone(), raw_topic.clone()).await?;
    let other: Output<HostKey, HostMetrics> =
        Output::new(stack.registry.clone(), format!("{p}umbra.host.metrics")).await?;
    let producer = stack.producer()?;
    let key = out
        .record(
            &WorkloadKey {
                workload_id: "vm-001".into(),
            },
            &sample("vm-001", 0),
        )?
        .key;
    let good = out
        .record(
            &WorkloadKey {
                workload_id: "vm-001".into(),
            },
            &sample("vm-001", 1),
        )?
        .value
        .expect("value");
    let mut wrong_magic = good.clone();
    wrong_magic[0] = 7;
    let another_schema = other
        .record(&HostKey::example(), &HostMetrics::example())?
        .value
        .expect("value");
    let mut negative = sample("vm-001", 2);
    negative.memory_bytes = -5.0;
    let invalid = out
        .record(
            &WorkloadKey {
                workload_id: "vm-001".into(),
            },
            &negative,
        )?
        .value
        .expect("value");
    let mut nan = sample("vm-001", 3);
    nan.cpu_millicores = f64::NAN;
    let nan = out
        .record(
            &WorkloadKey {
                workload_id: "vm-001".into(),
            },
            &nan,
        )?
        .value
        .expect("value");
    let poisons: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"\xde\xad\xbe\xef garbage".to_vec(),
            "magic byte",
        ),
        (
            "unknown schema id",
            frame(987_654, &good[5..]),
            "not in the registry",
        ),
        ("wrong magic byte", wrong_magic, "magic byte is 7"),
        ("another schema", another_schema, "schema id"),
        ("fails validation", invalid, "negative"),
        ("NaN", nan, "finite"),
    ];
    for (_, bytes, _) in &poisons {
        stack
            .send_raw(&producer, &raw_topic, Some(&key), Some(bytes))
            .await?;
    }
    stack
        .send_raw(&producer, &raw_topic, Some(&key), Some(&good))
        .await?;

    let mut svc = Service::start(&stack, "ingest", &p, FLUSH_SOON)?;
    svc.wait_ready(Duration::from_secs(60)).await?;
    let dlq = stack
        .read_until(&format!("{raw_topic}.dlq"), Duration::from_secs(30), |r| {
            r.len() >= poisons.len()
        })
        .await?;
    let series = stack
        .read_until(
            &format!("{p}umbra.usage.series"),
            Duration::from_secs(30),
            |r| !r.is_empty(),
        )
        .await?;
    assert_eq!(
        dlq.len(),
        poisons.len(),
        "one dead letter per poison record"
    );
    let mut offsets = Vec::new();
    for (record, (what, bytes, why)) in dlq.iter().zip(&poisons) {
        assert_eq!(
            record.value.as_deref(),
            Some(bytes.as_slice()),
            "{what}: original bytes kept"
        );
        assert_eq!(
            record.key.as_deref(),
            Some(key.as_slice()),
            "{what}: original key kept"
        );
        assert_eq!(
            record.header(header::TOPIC),
            Some(raw_topic.as_str()),
            "{what}"
        );
        assert_eq!(record.header(header::SERVICE), Some("ingest"));
        let stage = record.header(header::STAGE).unwrap_or_default();
        assert!(
            stage == "decode" || stage == "validate",
            "{what}: stage {stage}"
        );
        let error = record.header(header::ERROR).unwrap_or_default();
        assert!(
            error.contains(why),
            "{what}: error '{error}' should mention '{why}'"
        );
        assert!(record.header(header::PARTITION).is_some());
        offsets.push(
            record
                .header(header::OFFSET)
                .unwrap_or_default()
                .parse::<i64>()?,
        );
    }
    assert_eq!(
        offsets,
        (0..poisons.len() as i64).collect::<Vec<_>>(),
        "dead letters name their source offsets"
    );
    assert_eq!(
        series.len(),
        1,
        "the good record after the poison ones was processed"
    );
    let input: Input<WorkloadKey, UsagePoint> =
        Input::new(stack.registry.clone(), format!("{p}umbra.usage.series")).await?;
    let point = input
        .decode_value(series[0].value.as_deref().expect("value"))
        .await?;
    assert_eq!(point.cpu_millicores.mean, 1.0);
    assert!(
        series[0].header("traceparent").is_some(),
        "outputs carry W3C trace context"
    );

    // The committed offset moves past the poison records once the service stops cleanly.
    svc.signal("TERM")?;
    assert_eq!(svc.wait_exit(Duration::from_secs(30)).await?, Some(0));
    let committed = stack.committed(&format!("{p}ingest"), &raw_topic).await?;
    let total: i64 = committed.values().sum();
    assert_eq!(
        total,
        poisons.len() as i64 + 1,
        "committed offsets cover every record: {committed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_batch_then_restart_loses_nothing() -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let raw_topic = format!("{p}umbra.usage.raw");
    let series_topic = format!("{p}umbra.usage.series");
    let out: Output<WorkloadKey, UsageSample> =
        Output::new(stack.registry.clone(), raw_topic.clone()).await?;
    let producer = stack.producer()?;
    const N: i64 = 3000;
    let mut expected = HashSet::new();
    let sends = (0..N).map(|i| {
        let w = format!("vm-{:03}", i % 25);
        expected.insert((w.clone(), 1_372_636_800_000 + i * 300_000));
        let emit = out
            .record(
                &WorkloadKey {
                    workload_id: w.clone(),
                },
                &sample(&w, i),
            )
            .expect("encode");
        let producer = producer.clone();
        async move { send(&producer, &emit, Default::default()).await }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }

    let mut svc = Service::start(&stack, "ingest", &p, FLUSH_SOON)?;
    svc.wait_ready(Duration::from_secs(60)).await?;
    let partial = stack
        .read_until(&series_topic, Duration::from_secs(60), |r| r.len() >= 200)
        .await?;
    assert!(partial.len() >= 200, "ingest made progress before the kill");
    svc.signal("KILL")?;
    assert_eq!(
        svc.wait_exit(Duration::from_secs(10)).await?,
        None,
        "killed by a signal"
    );
    let at_kill = stack
        .read_until(&series_topic, Duration::from_secs(3), |_| false)
        .await?
        .len();
    assert!(
        (at_kill as i64) < N,
        "the kill landed mid-stream ({at_kill} of {N} outputs)"
    );

    let mut svc = Service::start(&stack, "ingest", &p, FLUSH_SOON)?;
    svc.wait_ready(Duration::from_secs(60)).await?;
    let input: Input<WorkloadKey, UsagePoint> =
        Input::new(stack.registry.clone(), series_topic.clone()).await?;
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    let all = stack
        .read_until(&series_topic, Duration::from_secs(120), |r| {
            r.len() as i64 >= N
        })
        .await?;
    // Records arriving after the first N may still be duplicates of re-delivered inputs.
    let all = if (all.len() as i64) < N {
        all
    } else {
        stack
            .read_until(&series_topic, Duration::from_secs(3), |_| false)
            .await?
    };
    for r in &all {
        let point = input
            .decode_value(r.value.as_deref().expect("value"))
            .await?;
        *seen
            .entry((point.workload_id, point.bucket_start))
            .or_default() += 1;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "inputs without output after SIGKILL + restart (first 5): {missing:?}"
    );
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    eprintln!(
        "sigkill: {N} inputs, {at_kill} outputs at the kill, {} after restart, {duplicates} re-delivered duplicates",
        all.len()
    );
    svc.signal("TERM")?;
    assert_eq!(svc.wait_exit(Duration::from_secs(30)).await?, Some(0));
    Ok(())
}
