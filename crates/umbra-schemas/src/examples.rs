//! One example value per record type (see [`crate::Record::example`]).
#![allow(non_snake_case)]

use std::collections::HashMap;

use crate::*;

const T0: i64 = 1_372_636_800_000; // 2013-07-01T00:00:00Z, the start of the Bitbrains trace

fn labels() -> HashMap<String, String> {
    HashMap::from([("tier".to_string(), "web".to_string())])
}
fn res(cpu: i64, mem_gib: i64) -> Resources {
    Resources {
        cpu_millicores: cpu,
        memory_bytes: mem_gib << 30,
        disk_io_bytes_per_s: 10 << 20,
    }
}
fn interval(mean: f64) -> Interval {
    Interval {
        mean,
        lower_80: mean * 0.8,
        upper_80: mean * 1.2,
        lower_95: mean * 0.7,
        upper_95: mean * 1.3,
    }
}
fn stats(mean: f64) -> Stats {
    Stats {
        mean,
        p95: mean * 1.5,
        max: mean * 2.0,
    }
}

pub(crate) fn WORKLOAD_KEY() -> WorkloadKey {
    WorkloadKey {
        workload_id: "vm-001".into(),
    }
}
pub(crate) fn HOST_KEY() -> HostKey {
    HostKey {
        host_id: "host-01".into(),
    }
}
pub(crate) fn EVENT_KEY() -> EventKey {
    EventKey {
        event_id: "campaign-2013-07".into(),
    }
}
pub(crate) fn USAGE_SAMPLE() -> UsageSample {
    UsageSample {
        workload_id: "vm-001".into(),
        sample_time: T0,
        cpu_millicores: 1250.0,
        cpu_capacity_millicores: 4000.0,
        memory_bytes: 3.5 * (1u64 << 30) as f64,
        memory_capacity_bytes: 8.0 * (1u64 << 30) as f64,
        disk_read_bytes_per_s: 2048.0,
        disk_write_bytes_per_s: 4096.0,
        network_rx_bytes_per_s: 512.0,
        network_tx_bytes_per_s: 256.0,
        labels: labels(),
        source: "example".into(),
    }
}
pub(crate) fn HOST_METRICS() -> HostMetrics {
    HostMetrics {
        host_id: "host-01".into(),
        sample_time: T0,
        capacity: res(32_000, 128),
        used: res(12_000, 40),
        healthy: true,
        committed: Some(res(16_000, 64)),
    }
}
pub(crate) fn EXTERNAL_EVENT() -> ExternalEvent {
    ExternalEvent {
        event_id: "campaign-2013-07".into(),
        kind: EventKind::CampaignLaunch,
        start_time: T0,
        end_time: T0 + 6 * 3_600_000,
        workload_ids: vec!["vm-001".into()],
        labels: labels(),
        expected_impact: Some(1.5),
        description: "summer campaign".into(),
    }
}
pub(crate) fn USAGE_POINT() -> UsagePoint {
    UsagePoint {
        workload_id: "vm-001".into(),
        bucket_start: T0,
        bucket_seconds: 300,
        sample_count: 1,
        cpu_millicores: stats(1250.0),
        memory_bytes: stats(3.0e9),
        disk_io_bytes_per_s: stats(6144.0),
        labels: labels(),
        cpu_capacity_millicores: 4000.0,
        memory_capacity_bytes: 8.0 * (1u64 << 30) as f64,
    }
}
pub(crate) fn HOST_STATE() -> HostState {
    HostState {
        host_id: "host-01".into(),
        updated_at: T0,
        capacity: res(32_000, 128),
        used: res(12_000, 40),
        committed: res(16_000, 64),
        health: HostHealth::Healthy,
        health_score: 0.98,
    }
}
pub(crate) fn DEMAND_FORECAST() -> DemandForecast {
    DemandForecast {
        workload_id: "vm-001".into(),
        generated_at: T0,
        model: "seasonal-naive-daily".into(),
        fallback_reason: Some("history shorter than two weeks".into()),
        horizons: vec![HorizonForecast {
            horizon: Horizon::Hour,
            step_seconds: 300,
            points: vec![ForecastPoint {
                time: T0 + 300_000,
                cpu_millicores: interval(1300.0),
                memory_bytes: interval(3.2e9),
                disk_io_bytes_per_s: interval(7000.0),
            }],
        }],
    }
}
pub(crate) fn SHADOW_ENTRY() -> ShadowEntry {
    ShadowEntry {
        replicas: 1,
        pool_labels: Some(labels()),
        workload_id: "vm-001".into(),
        version: 3,
        state: ShadowState::Active,
        predicted_start: T0 + 3_600_000,
        predicted_end: T0 + 7_200_000,
        requirements: res(1500, 4),
        candidates: vec![
            ShadowCandidate {
                shadow_id: "sh-vm-001-a".into(),
                host_id: "host-01".into(),
                rank: 0,
                health_score: 1.0,
                headroom: 0.4,
                status: ShadowStatus::Healthy,
                reserved: None,
            },
            ShadowCandidate {
                shadow_id: "sh-vm-001-b".into(),
                host_id: "host-02".into(),
                rank: 1,
                health_score: 0.9,
                headroom: 0.3,
                status: ShadowStatus::Requested,
                reserved: None,
            },
        ],
        host_ranking: vec!["host-01".into(), "host-02".into()],
        reason: "forecast".into(),
        updated_at: T0,
    }
}
pub(crate) fn WORKLOAD_REQUEST() -> WorkloadRequest {
    WorkloadRequest {
        request_id: "req-1".into(),
        workload_id: "vm-001".into(),
        labels: labels(),
        resources: res(1000, 2),
        requested_at: T0,
    }
}
pub(crate) fn ALLOCATION_DECISION() -> AllocationDecision {
    AllocationDecision {
        request_id: "req-1".into(),
        workload_id: "vm-001".into(),
        outcome: Outcome::ShadowHit,
        host_id: Some("host-01".into()),
        shadow_id: Some("sh-vm-001-a".into()),
        requested_at: T0,
        decided_at: T0 + 1,
        reason: "ready shadow of rank 0".into(),
    }
}
pub(crate) fn CLAIM() -> Claim {
    Claim {
        shadow_id: "sh-vm-001-a".into(),
        workload_id: "vm-001".into(),
        request_id: "req-1".into(),
        host_id: "host-01".into(),
        entry_version: 3,
        claimed_at: T0 + 1,
    }
}
pub(crate) fn FLEET_COMMAND() -> FleetCommand {
    FleetCommand {
        command_id: "cmd-1".into(),
        kind: FleetCommandKind::MoveShadow,
        host_id: "host-01".into(),
        target_host_id: Some("host-03".into()),
        shadow_id: Some("sh-vm-001-a".into()),
        workload_id: "vm-001".into(),
        request_id: Some("req-1".into()),
        resources: res(1500, 4),
        issued_at: T0,
    }
}
pub(crate) fn FLEET_EVENT() -> FleetEvent {
    FleetEvent {
        event_id: "ev-1".into(),
        command_id: Some("cmd-1".into()),
        kind: FleetEventKind::Created,
        host_id: "host-01".into(),
        shadow_id: Some("sh-vm-001-a".into()),
        workload_id: Some("vm-001".into()),
        resources: res(1500, 4),
        reason: "shadow reserved".into(),
        occurred_at: T0,
    }
}
pub(crate) fn RESHADOW_REQUEST() -> ReshadowRequest {
    ReshadowRequest {
        request_id: "rs-1".into(),
        workload_id: "vm-001".into(),
        shadow_id: "sh-vm-001-a".into(),
        from_host_id: "host-01".into(),
        to_host_id: Some("host-03".into()),
        reason: "cpu 93% > 85% for 10m".into(),
        requested_at: T0,
    }
}
pub(crate) fn WORKLOAD_SCALE() -> WorkloadScale {
    WorkloadScale {
        workload_id: "vm-001".into(),
        observed_at: T0,
        replicas: 2,
        replica: res(1000, 2),
        labels: labels(),
    }
}
pub(crate) fn SCALEUP_FORECAST() -> ScaleUpForecast {
    ScaleUpForecast {
        subject: "pool/1".into(),
        kind: ScaleUpSubject::Pool,
        step_start: T0 + 300_000,
        step_seconds: 300,
        generated_at: T0,
        at_least: vec![0.4, 0.1, 0.01],
        size: res(1200, 4),
        labels: labels(),
        members: vec!["vm-001".into(), "vm-002".into()],
        threshold: 0.02,
        slots: 2,
    }
}
