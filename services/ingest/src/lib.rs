//! Ingest: validates raw workload usage samples and publishes them as usage series, and keeps
//! host state (compacted, keyed by host) from host metrics.
//!
//! Valid samples are aggregated into fixed buckets (default 5 minutes: mean, p95 and max per
//! resource, see [`buckets`]); out-of-order and late samples are accepted while their bucket
//! is open (`allowed_lateness_ms` behind the partition's newest sample), and a bucket closes
//! when the stream passes its end plus the lateness, or when its partition has been idle for
//! `idle_flush_ms`, or, under a driven clock (the lockstep replay), when the clock passes it.
//! Invalid, duplicate and too-late samples go to `umbra.usage.raw.dlq` with the reason.
//! Offsets of samples in open buckets are not committed, so a restart re-reads them (a
//! re-emitted bucket replaces the earlier one downstream: usage points are keyed by bucket).

use serde::{Deserialize, Serialize};
pub mod buckets;

use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

use umbra_schemas::{
    HostHealth, HostKey, HostMetrics, HostState, UsagePoint, UsageSample, WorkloadKey,
};
use umbra_stream::config::{ClockSettings, ServiceConfig};
use umbra_stream::dlq::BadDataPolicy;
use umbra_stream::processor::{Emit, Handler, Incoming, Output, Rejection};
use umbra_stream::service::Runtime;
use umbra_stream::StreamError;

use crate::buckets::Bucketer;

/// Service name: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "ingest";

/// Settings of the ingest service (`[service]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Length of a usage-series bucket, in seconds.
    pub bucket_seconds: i32,
    /// A sample more than this far in the future of the wall clock is rejected, in ms.
    pub max_future_ms: i64,
    /// Largest plausible CPU use of one workload, in millicores.
    pub max_cpu_millicores: f64,
    /// Largest plausible memory use of one workload, in bytes.
    pub max_memory_bytes: f64,
    /// Largest plausible disk or network throughput of one workload, in bytes/s.
    pub max_throughput_bytes_per_s: f64,
    /// How far behind the newest sample of its partition a sample may arrive and still be
    /// counted in its bucket, in milliseconds of sample time.
    pub allowed_lateness_ms: i64,
    /// Buckets of a partition that received nothing for this long (wall clock) are closed, ms.
    pub idle_flush_ms: i64,
    /// What to do with samples that cannot be decoded or fail validation.
    pub bad_data: BadDataPolicy,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            bucket_seconds: 300,
            max_future_ms: 24 * 3_600_000,
            max_cpu_millicores: 1.0e7,
            max_memory_bytes: 1.0e14,
            max_throughput_bytes_per_s: 1.0e12,
            allowed_lateness_ms: 10 * 60_000,
            idle_flush_ms: 5 * 60_000,
            bad_data: BadDataPolicy::DeadLetter,
        }
    }
}

/// Full configuration of the service.
pub type Config = ServiceConfig<IngestSettings>;

/// Earliest plausible sample time (2000-01-01T00:00:00Z), in ms.
const EPOCH_2000_MS: i64 = 946_684_800_000;

/// Checks one sample; the error says which field is wrong and why.
pub fn validate(s: &UsageSample, settings: &IngestSettings, now_ms: i64) -> Result<(), String> {
    if s.workload_id.trim().is_empty() {
        return Err("workload_id is empty".into());
    }
    if s.sample_time < EPOCH_2000_MS {
        return Err(format!(
            "sample_time {} is before 2000-01-01",
            s.sample_time
        ));
    }
    if s.sample_time > now_ms + settings.max_future_ms {
        return Err(format!(
            "sample_time {} is more than {} ms in the future",
            s.sample_time, settings.max_future_ms
        ));
    }
    let checks: [(&str, f64, f64); 8] = [
        (
            "cpu_millicores",
            s.cpu_millicores,
            settings.max_cpu_millicores,
        ),
        (
            "cpu_capacity_millicores",
            s.cpu_capacity_millicores,
            settings.max_cpu_millicores,
        ),
        ("memory_bytes", s.memory_bytes, settings.max_memory_bytes),
        (
            "memory_capacity_bytes",
            s.memory_capacity_bytes,
            settings.max_memory_bytes,
        ),
        (
            "disk_read_bytes_per_s",
            s.disk_read_bytes_per_s,
            settings.max_throughput_bytes_per_s,
        ),
        (
            "disk_write_bytes_per_s",
            s.disk_write_bytes_per_s,
            settings.max_throughput_bytes_per_s,
        ),
        (
            "network_rx_bytes_per_s",
            s.network_rx_bytes_per_s,
            settings.max_throughput_bytes_per_s,
        ),
        (
            "network_tx_bytes_per_s",
            s.network_tx_bytes_per_s,
            settings.max_throughput_bytes_per_s,
        ),
    ];
    for (field, value, max) in checks {
        if !value.is_finite() {
            return Err(format!("{field} is {value}, not a finite number"));
        }
        if value < 0.0 {
            return Err(format!("{field} is negative ({value})"));
        }
        if value > max {
            return Err(format!(
                "{field} is {value}, above the plausible maximum {max}"
            ));
        }
    }
    Ok(())
}

struct Ingest {
    settings: IngestSettings,
    clock: ClockSettings,
    series: Output<WorkloadKey, UsagePoint>,
    buckets: Bucketer,
}

impl Ingest {
    fn emits(&self, points: Vec<UsagePoint>) -> Result<Vec<Emit>, Rejection> {
        points
            .iter()
            .map(|p| {
                self.series
                    .record(
                        &WorkloadKey {
                            workload_id: p.workload_id.clone(),
                        },
                        p,
                    )
                    .map_err(|e| Rejection(e.to_string()))
            })
            .collect()
    }
}

impl Handler<WorkloadKey, UsageSample> for Ingest {
    fn handle(
        &mut self,
        input: &Incoming<WorkloadKey, UsageSample>,
    ) -> Result<Vec<Emit>, Rejection> {
        let s = &input.value;
        validate(s, &self.settings, self.clock.now_ms()).map_err(Rejection)?;
        if input.key.workload_id != s.workload_id {
            return Err(Rejection(format!(
                "key workload_id '{}' differs from value workload_id '{}'",
                input.key.workload_id, s.workload_id
            )));
        }
        let closed = self
            .buckets
            .add(input.partition, input.offset, s, umbra_stream::now_millis())
            .map_err(Rejection)?;
        self.emits(closed)
    }

    fn committable(&self, partition: i32, processed: i64) -> Option<i64> {
        self.buckets.committable(partition, processed)
    }

    fn tick(&mut self, now_ms: i64) -> Vec<Emit> {
        let closed = self.buckets.flush_idle(now_ms, self.settings.idle_flush_ms);
        self.closed(closed)
    }

    // The lockstep replay moves the clock once every sample before it is in: a partition
    // whose workloads stopped reporting would otherwise hold its last buckets until it has
    // been idle for `idle_flush_ms` of wall time, and the step they end would be scored
    // without them, or not, as the machine's speed has it.
    fn advance(&mut self, clock_ms: i64) -> Vec<Emit> {
        let closed = self.buckets.advance(clock_ms);
        self.closed(closed)
    }
}

impl Ingest {
    fn closed(&self, closed: Vec<UsagePoint>) -> Vec<Emit> {
        match self.emits(closed) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "encoding closed buckets");
                Vec::new()
            }
        }
    }
}

/// Checks one host metrics sample; the error says which field is wrong and why.
pub fn validate_host(
    m: &HostMetrics,
    settings: &IngestSettings,
    now_ms: i64,
) -> Result<(), String> {
    if m.host_id.trim().is_empty() {
        return Err("host_id is empty".into());
    }
    if m.sample_time < EPOCH_2000_MS || m.sample_time > now_ms + settings.max_future_ms {
        return Err(format!("sample_time {} is implausible", m.sample_time));
    }
    if m.capacity.cpu_millicores <= 0 || m.capacity.memory_bytes <= 0 {
        return Err(format!("capacity {:?} has no CPU or no memory", m.capacity));
    }
    for (what, r) in [
        ("capacity", Some(&m.capacity)),
        ("used", Some(&m.used)),
        ("committed", m.committed.as_ref()),
    ] {
        if let Some(r) = r {
            if !r.is_non_negative() {
                return Err(format!("{what} {r:?} is negative"));
            }
            if r.cpu_millicores as f64 > settings.max_cpu_millicores * 100.0
                || r.memory_bytes as f64 > settings.max_memory_bytes * 100.0
            {
                return Err(format!("{what} {r:?} is above any plausible host"));
            }
        }
    }
    Ok(())
}

/// Host state from a metrics sample and the previous health score: the score is an
/// exponentially weighted share of healthy samples, so one bad sample degrades a host and a
/// run of them makes it unhealthy, while one good sample does not make it healthy again.
pub fn host_state_of(m: &HostMetrics, previous_score: Option<f64>) -> HostState {
    let sample = if m.healthy { 1.0 } else { 0.0 };
    let score = previous_score.map_or(sample, |p| 0.5 * p + 0.5 * sample);
    let health = if !m.healthy || score < 0.3 {
        HostHealth::Unhealthy
    } else if score < 0.9 {
        HostHealth::Degraded
    } else {
        HostHealth::Healthy
    };
    HostState {
        host_id: m.host_id.clone(),
        updated_at: m.sample_time,
        capacity: m.capacity,
        used: m.used,
        committed: m.committed.unwrap_or(m.used),
        health,
        health_score: score,
    }
}

struct HostStates {
    settings: IngestSettings,
    clock: ClockSettings,
    out: Output<HostKey, HostState>,
    scores: HashMap<String, f64>,
}

impl Handler<HostKey, HostMetrics> for HostStates {
    fn handle(&mut self, input: &Incoming<HostKey, HostMetrics>) -> Result<Vec<Emit>, Rejection> {
        let m = &input.value;
        validate_host(m, &self.settings, self.clock.now_ms()).map_err(Rejection)?;
        if input.key.host_id != m.host_id {
            return Err(Rejection(format!(
                "key host_id '{}' differs from value host_id '{}'",
                input.key.host_id, m.host_id
            )));
        }
        let state = host_state_of(m, self.scores.get(&m.host_id).copied());
        self.scores.insert(m.host_id.clone(), state.health_score);
        let emit = self
            .out
            .record(&input.key, &state)
            .map_err(|e| Rejection(e.to_string()))?;
        Ok(vec![emit])
    }
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    let rt = Runtime::start(NAME, config, shutdown.clone()).await?;
    let series = Output::new(rt.registry.clone(), rt.config.topic("umbra.usage.series")).await?;
    let mut processor = rt
        .processor::<WorkloadKey, UsageSample>("umbra.usage.raw", rt.config.service.bad_data)
        .await?;
    if rt.config.clock.driven {
        // A driver of the clock waits for the buckets each move closes.
        processor.clock_passes = true;
        umbra_stream::progress::act_in_passes();
    }
    let gate = rt.readiness.consumer_gate("consumer umbra.usage.raw");
    let mut handler = Ingest {
        settings: rt.config.service.clone(),
        clock: rt.config.clock.clone(),
        series,
        buckets: Bucketer::new(
            rt.config.service.bucket_seconds,
            rt.config.service.allowed_lateness_ms,
        ),
    };
    let hosts_out = Output::new(rt.registry.clone(), rt.config.topic("umbra.host.state")).await?;
    let hosts_processor = rt
        .processor_in_group::<HostKey, HostMetrics>(
            "umbra.host.metrics",
            rt.config.service.bad_data,
            &format!("{NAME}-host-metrics"),
        )
        .await?;
    let hosts_gate = rt.readiness.consumer_gate("consumer umbra.host.metrics");
    let mut hosts_handler = HostStates {
        settings: rt.config.service.clone(),
        clock: rt.config.clock.clone(),
        out: hosts_out,
        scores: HashMap::new(),
    };
    // One input failing stops the other too: a restart resumes both from their commits.
    let stop_on_error = |r: Result<_, StreamError>| {
        if r.is_err() {
            shutdown.cancel();
        }
        r
    };
    let (a, b) = tokio::join!(
        async { stop_on_error(processor.run(&mut handler, gate, shutdown.clone()).await) },
        async {
            stop_on_error(
                hosts_processor
                    .run(&mut hosts_handler, hosts_gate, shutdown.clone())
                    .await,
            )
        }
    );
    a?;
    b?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_schemas::Record;

    #[test]
    fn validation_reasons() {
        let st = IngestSettings::default();
        let now = 1_700_000_000_000;
        let ok = UsageSample::example();
        assert_eq!(validate(&ok, &st, now), Ok(()));
        let with = |f: fn(&mut UsageSample)| {
            let mut s = UsageSample::example();
            f(&mut s);
            validate(&s, &st, now).unwrap_err()
        };
        assert!(with(|s| s.cpu_millicores = f64::NAN).contains("not a finite number"));
        assert!(with(|s| s.memory_bytes = -1.0).contains("negative"));
        assert!(with(|s| s.disk_read_bytes_per_s = 1e30).contains("plausible maximum"));
        assert!(with(|s| s.workload_id = " ".into()).contains("empty"));
        assert!(with(|s| s.sample_time = 5).contains("before 2000"));
        assert!(with(|s| s.sample_time = i64::MAX / 2).contains("future"));
    }

    #[test]
    fn host_health_follows_a_weighted_share_of_healthy_samples() {
        let mut m = HostMetrics::example();
        let s = host_state_of(&m, None);
        assert_eq!((s.health, s.health_score), (HostHealth::Healthy, 1.0));
        assert_eq!(s.committed, m.committed.unwrap_or_default());
        m.healthy = false;
        let s = host_state_of(&m, Some(1.0));
        assert_eq!((s.health, s.health_score), (HostHealth::Unhealthy, 0.5));
        m.healthy = true;
        let s = host_state_of(&m, Some(0.5));
        assert_eq!((s.health, s.health_score), (HostHealth::Degraded, 0.75));
        let st = IngestSettings::default();
        m.used.cpu_millicores = -1;
        assert!(validate_host(&m, &st, m.sample_time)
            .unwrap_err()
            .contains("negative"));
    }
}
