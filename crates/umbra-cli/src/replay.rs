//! `umbra replay-raw`: replays a Bitbrains-format folder into `umbra.usage.raw` as raw usage
//! samples, in time order across VMs, with time compressed by `--speed` (trace seconds per
//! wall second; 0 sends as fast as the broker takes them). The rows keep their quirks
//! (irregular steps, gaps); ingest is what turns them into clean buckets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::OwnedHeaders;
use umbra_forecasting::data::{bitbrains_files, bitbrains_rows, vm_id, BitbrainsRow};
use umbra_schemas::{UsageSample, WorkloadKey};
use umbra_stream::kafka;
use umbra_stream::processor::{send, Output};

use crate::Endpoints;

/// Arguments of `umbra replay-raw`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// A folder in the Bitbrains format (`vm-*.csv[.gz]`).
    #[arg(long)]
    data: PathBuf,
    /// How many VMs (the first N files by name).
    #[arg(long, default_value_t = 50)]
    vms: usize,
    /// Skip this many days from the start of each trace.
    #[arg(long, default_value_t = 0.0)]
    from_day: f64,
    /// Replay this many days of trace.
    #[arg(long, default_value_t = 1.0)]
    days: f64,
    /// Trace seconds per wall-clock second (3600: an hour a second); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    speed: f64,
}

/// A sample of the trace as umbra measures it: CPU in millicores of the VM's cores (MHz
/// over MHz per core), memory and I/O in bytes.
pub fn sample_of(vm: &str, r: &BitbrainsRow) -> UsageSample {
    let mhz_per_core = if r.cores > 0.0 {
        r.cpu_capacity_mhz / r.cores
    } else {
        0.0
    };
    let millicores = |mhz: f64| {
        if mhz_per_core > 0.0 {
            mhz / mhz_per_core * 1000.0
        } else {
            0.0
        }
    };
    UsageSample {
        workload_id: vm.to_string(),
        sample_time: r.time_s * 1000,
        cpu_millicores: millicores(r.cpu_mhz).max(0.0),
        cpu_capacity_millicores: r.cores.max(0.0) * 1000.0,
        memory_bytes: (r.memory_kb * 1024.0).max(0.0),
        memory_capacity_bytes: (r.memory_capacity_kb * 1024.0).max(0.0),
        disk_read_bytes_per_s: (r.disk_read_kbps * 1024.0).max(0.0),
        disk_write_bytes_per_s: (r.disk_write_kbps * 1024.0).max(0.0),
        network_rx_bytes_per_s: (r.net_rx_kbps * 1024.0).max(0.0),
        network_tx_bytes_per_s: (r.net_tx_kbps * 1024.0).max(0.0),
        labels: [("source".to_string(), "bitbrains-rnd".to_string())].into(),
        source: "umbra replay-raw".into(),
    }
}

/// Runs the replay; prints what was sent.
pub async fn run(a: ReplayArgs) -> anyhow::Result<()> {
    if a.days <= 0.0 || a.from_day < 0.0 || a.speed < 0.0 {
        bail!("--days must be positive, --from-day and --speed not negative");
    }
    let files =
        bitbrains_files(&a.data).with_context(|| format!("reading {}", a.data.display()))?;
    if files.is_empty() {
        bail!("no vm-*.csv[.gz] files in {}", a.data.display());
    }
    let mut samples: Vec<UsageSample> = Vec::new();
    for f in files.iter().take(a.vms) {
        let rows = bitbrains_rows(f).with_context(|| format!("reading {}", f.display()))?;
        let t0 = rows[0].time_s + (a.from_day * 86_400.0) as i64;
        let t1 = t0 + (a.days * 86_400.0) as i64;
        let vm = vm_id(f);
        samples.extend(
            rows.iter()
                .filter(|r| r.time_s >= t0 && r.time_s < t1)
                .map(|r| sample_of(&vm, r)),
        );
    }
    samples.sort_by(|x, y| {
        x.sample_time
            .cmp(&y.sample_time)
            .then_with(|| x.workload_id.cmp(&y.workload_id))
    });
    let (settings, registry) = crate::tools::connect(&a.endpoints).await?;
    let out: Output<WorkloadKey, UsageSample> = Output::new(
        registry,
        format!("{}umbra.usage.raw", a.endpoints.topic_prefix),
    )
    .await?;
    let producer = kafka::producer(&settings)?;
    let Some(first) = samples.first().map(|s| s.sample_time) else {
        bail!("no samples in the chosen days");
    };
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for s in &samples {
        if a.speed > 0.0 {
            let due = Duration::from_secs_f64((s.sample_time - first) as f64 / 1000.0 / a.speed);
            tokio::time::sleep_until((started + due).into()).await;
        }
        let emit = out.record(
            &WorkloadKey {
                workload_id: s.workload_id.clone(),
            },
            s,
        )?;
        let producer = producer.clone();
        acks.push(async move { send(&producer, &emit, OwnedHeaders::new()).await });
        // Bounded in flight: the broker sets the pace when --speed is 0.
        while acks.len() >= 1_000 {
            if let Some(r) = acks.next().await {
                r?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    println!(
        "replayed {} samples of {} VMs ({} days of trace) to {} in {:.1} s",
        samples.len(),
        files.len().min(a.vms),
        a.days,
        out.topic(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
