//! `make bench-interceptor` (also in `make bench`): the interceptor's latency next to the
//! broker's floor measured in the same run, and its pure decision core.
//!
//! - floor: two hops with nothing in the middle (produce → consume → produce → consume, a
//!   relay that forwards bytes), at the same request rates;
//! - umbra: requests → the real `umbra-interceptor` binary → decisions, every request a shadow
//!   hit (one staged row per request, written to the shadow table by the bench), at 1,000 and
//!   5,000 requests/s; latency = decision consumed − request produced, in microseconds;
//! - core: `Core::decide` on one thread for 10,000 workloads and 1,000 hosts: shadow hits,
//!   standard allocation (best fit over every host), and rejections.
//!
//! Usage: `bench-interceptor [--bootstrap HOST:PORT --registry URL] [--rates 1000,5000]
//!         [--seconds 5]` (the broker part is skipped without a broker).

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use umbra_interceptor::{Core, Settings, Step, World};
use umbra_ledger::Ledger;
use umbra_schemas::*;
use umbra_stream::admin::{ensure_topics, pipeline_topics, TopicSpec};
use umbra_stream::config::KafkaSettings;
use umbra_stream::kafka;
use umbra_stream::processor::{send, Output};
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};

const GIB: i64 = 1 << 30;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn res(cpu: i64, mem: i64) -> Resources {
    Resources {
        cpu_millicores: cpu,
        memory_bytes: mem,
        disk_io_bytes_per_s: 0,
    }
}

fn row(w: &str, hosts: &[String], now_ms: i64) -> ShadowEntry {
    let candidates: Vec<ShadowCandidate> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| ShadowCandidate {
            shadow_id: format!("{w}-s{i}"),
            host_id: h.clone(),
            rank: i as i32,
            health_score: 1.0,
            headroom: 0.5,
            status: ShadowStatus::Healthy,
            reserved: None,
        })
        .collect();
    ShadowEntry {
        replicas: 1,
        pool_labels: None,
        workload_id: w.to_string(),
        version: 1,
        state: ShadowState::Active,
        predicted_start: now_ms - 60_000,
        predicted_end: now_ms + 3_600_000,
        requirements: res(1_000, 2 * GIB),
        host_ranking: hosts.to_vec(),
        candidates,
        reason: "bench".into(),
        updated_at: now_ms,
    }
}

fn request(id: String, w: &str, now_ms: i64) -> WorkloadRequest {
    WorkloadRequest {
        request_id: id,
        workload_id: w.to_string(),
        labels: Default::default(),
        resources: res(500, GIB),
        requested_at: now_ms,
    }
}

fn core_bench() {
    let (workloads, hosts) = (10_000usize, 1_000usize);
    let now = 1_700_000_000_000i64;
    let host_ids: Vec<String> = (0..hosts).map(|i| format!("host-{i:04}")).collect();
    let states: HashMap<String, HostState> = host_ids
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let used = res(
                ((i * 7919) % 48_000) as i64,
                ((i * 104_729) % 128) as i64 * GIB,
            );
            (
                h.clone(),
                HostState {
                    host_id: h.clone(),
                    updated_at: now,
                    capacity: res(64_000, 256 * GIB),
                    used,
                    committed: used,
                    health: HostHealth::Healthy,
                    health_score: 1.0,
                },
            )
        })
        .collect();
    let table: HashMap<String, ShadowEntry> = (0..workloads)
        .map(|i| {
            let w = format!("w{i:05}");
            let hs: Vec<String> = (0..3)
                .map(|k| host_ids[(i * 3 + k * 331) % hosts].clone())
                .collect();
            (w.clone(), row(&w, &hs, now))
        })
        .collect();
    let mut known: HashSet<String> = table.keys().cloned().collect();
    known.extend((0..workloads).map(|i| format!("cold{i:05}")));
    let ledger = Ledger::default();
    let world = World {
        now,
        table: &table,
        hosts: &states,
        ledger: &ledger,
        known: &known,
    };
    // A warm-up round, then the median of seven: one round is only 10,000 decisions.
    let time = |name: &str, reqs: &[WorkloadRequest], expect: fn(&Step) -> bool| -> f64 {
        let mut rates = Vec::new();
        for round in 0..8 {
            let mut core = Core::new(Settings::default());
            let start = Instant::now();
            let mut ok = 0usize;
            for r in reqs {
                let s = core.decide(r, &world);
                ok += usize::from(expect(&s));
                std::hint::black_box(&s);
            }
            let rate = reqs.len() as f64 / start.elapsed().as_secs_f64();
            assert_eq!(
                ok,
                reqs.len(),
                "{name}: every decision of the expected kind"
            );
            if round > 0 {
                rates.push(rate);
            }
        }
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let hits: Vec<WorkloadRequest> = (0..workloads)
        .map(|i| request(format!("h{i}"), &format!("w{i:05}"), now))
        .collect();
    let cold: Vec<WorkloadRequest> = (0..workloads)
        .map(|i| request(format!("c{i}"), &format!("cold{i:05}"), now))
        .collect();
    let bad: Vec<WorkloadRequest> = (0..workloads)
        .map(|i| WorkloadRequest {
            resources: res(-1, 0),
            ..request(format!("b{i}"), "w00000", now)
        })
        .collect();
    let r_hit = time("hits", &hits, |s| {
        matches!(s, Step::Decide { claim: Some(_), .. })
    });
    let r_std = time("standard", &cold, |s| matches!(s, Step::Place(_)));
    let r_bad = time("rejections", &bad, |s| {
        matches!(s, Step::Decide { claim: None, .. })
    });
    println!("\ninterceptor decision core: {workloads} workloads × {hosts} hosts, one thread");
    println!("{:<44} {:>14}", "decision kind", "decisions/s");
    println!(
        "{:<44} {:>14.0}",
        "shadow hit (row lookup, claim, expand)", r_hit
    );
    println!(
        "{:<44} {:>14.0}",
        "standard allocation (best fit, 1,000 hosts)", r_std
    );
    println!("{:<44} {:>14.0}", "rejection (validation)", r_bad);
    println!(
        "target: at least 1,000,000 decisions/s: shadow hits {}",
        if r_hit >= 1e6 { "met" } else { "NOT met" }
    );
}

fn pct(v: &mut [i64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// A consumer of `topic` positioned at its current end.
async fn tail(
    settings: &KafkaSettings,
    topic: &str,
) -> Result<StreamConsumer, Box<dyn std::error::Error>> {
    let c: StreamConsumer = kafka::reader(settings)?;
    let parts = kafka::partitions(settings, topic).await?;
    let ends = kafka::end_offsets(&c, topic, &parts).await?;
    let mut tpl = TopicPartitionList::new();
    for (p, e) in ends {
        tpl.add_partition_offset(topic, p, Offset::Offset(e))?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Sends `n` records at `rate`/s with `make(i)` → (key, payload); returns when all are queued.
async fn paced(
    producer: &FutureProducer,
    topic: &str,
    rate: u64,
    n: usize,
    make: impl Fn(usize) -> (Vec<u8>, Vec<u8>),
) {
    let mut acks = FuturesUnordered::new();
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_micros(i as u64 * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (k, v) = make(i);
        let p = producer.clone();
        let t = topic.to_string();
        acks.push(async move {
            p.send(
                FutureRecord::to(&t).key(&k).payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
        });
        while let Some(Some(_)) = futures::FutureExt::now_or_never(acks.next()) {}
    }
    while acks.next().await.is_some() {}
}

async fn floor(
    settings: &KafkaSettings,
    prefix: &str,
    rate: u64,
    n: usize,
) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let (a, b) = (format!("{prefix}floor.a"), format!("{prefix}floor.b"));
    ensure_topics(
        settings,
        &[
            TopicSpec {
                name: a.clone(),
                partitions: 3,
                compacted: false,
            },
            TopicSpec {
                name: b.clone(),
                partitions: 3,
                compacted: false,
            },
        ],
    )
    .await?;
    // The relay: consume a, produce b, nothing in the middle.
    let relay_in: StreamConsumer = tail(settings, &a).await?;
    let relay_out = kafka::producer(settings)?;
    let b2 = b.clone();
    let relay = tokio::spawn(async move {
        let mut acks = FuturesUnordered::new();
        loop {
            tokio::select! {
                m = relay_in.recv() => {
                    let Ok(m) = m else { continue };
                    let (k, v) = (m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec());
                    let p = relay_out.clone();
                    let t = b2.clone();
                    acks.push(async move { let _ = p.send(FutureRecord::to(&t).key(&k).payload(&v), Duration::from_secs(30)).await; });
                }
                Some(()) = acks.next() => {}
            }
        }
    });
    let out = tail(settings, &b).await?;
    let producer = kafka::producer(settings)?;
    let collect = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), out.recv()).await {
                Ok(Ok(m)) => {
                    let sent: i64 = std::str::from_utf8(m.payload().unwrap_or_default())
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    lat.push(micros() - sent);
                }
                _ => break,
            }
        }
        lat
    });
    paced(&producer, &a, rate, n, |i| {
        (
            format!("k{}", i % 1000).into_bytes(),
            micros().to_string().into_bytes(),
        )
    })
    .await;
    let lat = collect.await?;
    relay.abort();
    Ok(lat)
}

async fn umbra(
    settings: &KafkaSettings,
    prefix: &str,
    registry: Arc<dyn SchemaRegistry>,
    rate: u64,
    n: usize,
    first: usize,
) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let requests: Output<WorkloadKey, WorkloadRequest> =
        Output::new(registry.clone(), format!("{prefix}umbra.workload.requests")).await?;
    let decisions: umbra_stream::processor::Input<WorkloadKey, AllocationDecision> =
        umbra_stream::processor::Input::new(
            registry,
            format!("{prefix}umbra.allocation.decisions"),
        )
        .await?;
    let out = tail(settings, decisions.topic()).await?;
    let decisions = Arc::new(decisions);
    let d2 = decisions.clone();
    let collect = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        let mut hits = 0usize;
        while lat.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), out.recv()).await {
                Ok(Ok(m)) => {
                    let now = micros();
                    let Some(v) = m.payload() else { continue };
                    let Ok(d) = d2.decode_value(v).await else {
                        continue;
                    };
                    hits += usize::from(d.outcome == Outcome::ShadowHit);
                    let sent: i64 = d
                        .request_id
                        .rsplit('-')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    lat.push(now - sent);
                }
                _ => break,
            }
        }
        (lat, hits)
    });
    let producer = kafka::producer(settings)?;
    let emits: Vec<_> = (0..n).map(|i| first + i).collect();
    paced(&producer, requests.topic(), rate, n, |i| {
        let w = format!("w{:06}", emits[i]);
        let r = request(
            format!("r{}-{}", emits[i], micros()),
            &w,
            umbra_stream::now_millis(),
        );
        // Framed key and value, as any producer of requests sends them.
        let e = requests
            .record(&WorkloadKey { workload_id: w }, &r)
            .expect("encode");
        (e.key, e.value.unwrap_or_default())
    })
    .await;
    let (lat, hits) = collect.await?;
    if hits < lat.len() {
        println!(
            "  (note: {} of {} decisions were not shadow hits)",
            lat.len() - hits,
            lat.len()
        );
    }
    Ok(lat)
}

async fn broker(
    bootstrap: &str,
    registry_url: &str,
    rates: &[u64],
    seconds: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    // The bench's own consumers wait for fetches as the interceptor's request consumer does.
    let mut settings = KafkaSettings {
        bootstrap_servers: bootstrap.to_string(),
        ..KafkaSettings::default()
    };
    settings
        .properties
        .insert("fetch.wait.max.ms".into(), "10".into());
    kafka::wait_for_broker(&settings).await?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(HttpRegistry::new(registry_url)?);
    let prefix = format!("bi{}.", std::process::id());
    ensure_topics(&settings, &pipeline_topics(&prefix)).await?;
    // Stage one ready row per request (plus a warm-up set).
    let total: usize = 500 + rates.iter().map(|r| (*r * seconds) as usize).sum::<usize>();
    let table: Output<WorkloadKey, ShadowEntry> =
        Output::new(registry.clone(), format!("{prefix}umbra.shadow.table")).await?;
    let producer = kafka::producer(&settings)?;
    let now = umbra_stream::now_millis();
    let hosts: Vec<String> = (0..3).map(|i| format!("host-{i:03}")).collect();
    for chunk in (0..total).collect::<Vec<_>>().chunks(5_000) {
        let emits: Vec<_> = chunk
            .iter()
            .map(|i| {
                let w = format!("w{i:06}");
                table.record(
                    &WorkloadKey {
                        workload_id: w.clone(),
                    },
                    &row(&w, &hosts, now),
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
    // The real interceptor binary, release build, next to this one.
    let exe = std::env::current_exe()?.with_file_name("umbra-interceptor");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(std::env::temp_dir().join("bench-interceptor.log"))?;
    let mut child = Command::new(&exe)
        .env("UMBRA_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .env("UMBRA_REGISTRY__URL", registry_url)
        .env("UMBRA_TOPIC_PREFIX", &prefix)
        .env("UMBRA_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("UMBRA_SERVICE__ASSIGNMENT_GRACE_MS", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            format!(
                "starting {}: {e} (build it: cargo build --release -p umbra-interceptor)",
                exe.display()
            )
        })?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the interceptor did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm-up: the first request of each partition waits for the assignment catch-up.
    let _ = umbra(&settings, &prefix, registry.clone(), 500, 500, 0).await?;
    println!("\nrequest → decision latency through Nisshi on {bootstrap}, {seconds} s per rate, every request a shadow hit");
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "rate/s", "floor p50", "umbra p50", "Δ p50", "floor p99", "umbra p99", "Δ p99"
    );
    let mut first = 500;
    for rate in rates {
        let n = (*rate * seconds) as usize;
        let mut f = floor(&settings, &prefix, *rate, n).await?;
        let mut u = umbra(&settings, &prefix, registry.clone(), *rate, n, first).await?;
        first += n;
        let (f50, f99, u50, u99) = (
            pct(&mut f, 0.5),
            pct(&mut f, 0.99),
            pct(&mut u, 0.5),
            pct(&mut u, 0.99),
        );
        println!(
            "{:<10} {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>10.2}ms",
            rate,
            f50,
            u50,
            u50 - f50,
            f99,
            u99,
            u99 - f99
        );
        if u.len() < n || f.len() < n {
            println!(
                "  (received {} of {n} decisions, {} of {n} relayed records)",
                u.len(),
                f.len()
            );
        }
    }
    println!("target: within 1 ms of the floor at p50 and p99");
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    core_bench();
    let rates: Vec<u64> = arg("--rates")
        .unwrap_or_else(|| "1000,5000".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5);
    match (arg("--bootstrap"), arg("--registry")) {
        (Some(b), Some(r)) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(broker(&b, &r, &rates, seconds))?;
        }
        _ => println!("\nrequest → decision latency: skipped (no --bootstrap/--registry)"),
    }
    Ok(())
}
