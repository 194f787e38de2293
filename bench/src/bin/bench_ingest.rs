//! `make bench-ingest` (also in `make bench`): samples per second through the real
//! `umbra-ingest` binary, end to end through the broker (decode, validate, bucket, encode,
//! produce, offsets), against a plain consume-and-produce relay of the same records in the
//! same run; both per wall-clock second and per CPU second of the process doing the work.
//!
//! Usage: `bench-ingest --bootstrap HOST:PORT --registry URL [--samples 200000]`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use umbra_schemas::{Record, UsageSample, WorkloadKey};
use umbra_stream::admin::{ensure_topics, pipeline_topics, TopicSpec};
use umbra_stream::config::KafkaSettings;
use umbra_stream::kafka;
use umbra_stream::processor::{send, Output};
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// CPU seconds (user + system) used so far by process `pid` (`self` for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/PID/stat (utime, stime) are 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn metric(port: u16, prefix: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (Some(bootstrap), Some(registry_url)) = (arg("--bootstrap"), arg("--registry")) else {
        println!("ingest throughput: skipped (no --bootstrap/--registry)");
        return Ok(());
    };
    let n: usize = arg("--samples")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let settings = KafkaSettings {
        bootstrap_servers: bootstrap.clone(),
        ..KafkaSettings::default()
    };
    kafka::wait_for_broker(&settings).await?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(HttpRegistry::new(&registry_url)?);
    let prefix = format!("bg{}.", std::process::id());
    ensure_topics(&settings, &pipeline_topics(&prefix)).await?;
    let relay_out = format!("{prefix}relay.out");
    ensure_topics(
        &settings,
        &[TopicSpec {
            name: relay_out.clone(),
            partitions: 3,
            compacted: false,
        }],
    )
    .await?;
    // The input: n samples of 100 workloads, one a minute each, in time order.
    let raw: Output<WorkloadKey, UsageSample> =
        Output::new(registry.clone(), format!("{prefix}umbra.usage.raw")).await?;
    let producer = kafka::producer(&settings)?;
    let t0 = 1_372_636_800_000i64;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let emits: Vec<_> = chunk
            .iter()
            .map(|i| {
                let s = UsageSample {
                    workload_id: format!("vm-{:03}", i % 100),
                    sample_time: t0 + (*i / 100) as i64 * 60_000,
                    cpu_millicores: (*i % 4000) as f64,
                    ..UsageSample::example()
                };
                raw.record(
                    &WorkloadKey {
                        workload_id: s.workload_id.clone(),
                    },
                    &s,
                )
            })
            .collect::<Result<_, _>>()?;
        for r in
            futures::future::join_all(emits.iter().map(|e| send(&producer, e, Default::default())))
                .await
        {
            r?;
        }
    }
    println!(
        "ingest throughput: {n} samples of 100 workloads produced in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Baseline: consume every record and produce it unchanged, acknowledged, in this process.
    let consumer: StreamConsumer = kafka::group_consumer(&settings, &format!("{prefix}relay"))?;
    consumer.subscribe(&[raw.topic()])?;
    let cpu0 = cpu_seconds("self");
    let mut first: Option<Instant> = None;
    let mut acks = FuturesUnordered::new();
    let mut relayed = 0usize;
    while relayed < n {
        tokio::select! {
            m = consumer.recv() => {
                let m = m?;
                first.get_or_insert_with(Instant::now);
                let (k, v) = (m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec());
                let (p, t) = (producer.clone(), relay_out.clone());
                acks.push(async move { p.send(FutureRecord::to(&t).key(&k).payload(&v), Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e) });
                while acks.len() > 1_000 {
                    if let Some(r) = acks.next().await { r?; relayed += 1; }
                }
            }
            Some(r) = acks.next() => { r?; relayed += 1; }
        }
    }
    let relay_s = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let relay_cpu = cpu_seconds("self") - cpu0;
    drop(consumer);

    // umbra: the ingest binary, release build, next to this one.
    let exe = std::env::current_exe()?.with_file_name("umbra-ingest");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(&exe)
        .env("UMBRA_KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
        .env("UMBRA_REGISTRY__URL", &registry_url)
        .env("UMBRA_TOPIC_PREFIX", &prefix)
        .env("UMBRA_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("UMBRA_SERVICE__IDLE_FLUSH_MS", "500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "starting {}: {e} (cargo build --release -p umbra-ingest)",
                exe.display()
            )
        })?;
    let pid = child.id().to_string();
    let processed = format!("umbra_processing_seconds_count{{topic=\"{}\"", raw.topic());
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut start: Option<(Instant, f64)> = None;
    loop {
        let done = metric(port, &processed).await;
        if start.is_none() && done > 0.0 {
            start = Some((Instant::now(), cpu_seconds(&pid)));
        }
        if done >= n as f64 {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("ingest processed {done} of {n} samples in 10 minutes").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (t_start, cpu_start) = start.unwrap_or((Instant::now(), 0.0));
    let ingest_s = t_start.elapsed().as_secs_f64();
    let ingest_cpu = cpu_seconds(&pid) - cpu_start;
    let _ = child.kill();
    let _ = child.wait();
    let rate = |secs: f64| {
        if secs > 0.0 {
            n as f64 / secs
        } else {
            f64::NAN
        }
    };
    println!(
        "{:<36} {:>14} {:>14} {:>8}",
        "", "umbra ingest", "plain relay", "ratio"
    );
    println!(
        "{:<36} {:>14.0} {:>14.0} {:>8.2}",
        "samples per second (wall clock)",
        rate(ingest_s),
        rate(relay_s),
        rate(ingest_s) / rate(relay_s)
    );
    println!(
        "{:<36} {:>14.0} {:>14.0} {:>8.2}",
        "samples per CPU second of the worker",
        rate(ingest_cpu),
        rate(relay_cpu),
        rate(ingest_cpu) / rate(relay_cpu)
    );
    println!("(umbra decodes, validates, buckets into 5-minute points and encodes them; the relay forwards bytes)");
    Ok(())
}
