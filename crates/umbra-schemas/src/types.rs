//! Rust mirrors of the `.avsc` files. Field meanings and units are documented once, in the
//! `.avsc` files; timestamps are Unix epoch milliseconds (`timestamp-millis`).

use std::collections::HashMap;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

macro_rules! avro_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident),* $(,)? }) => {
        $(#[$m])*
        ///
        /// `Unknown` is the default symbol: what a reader sees for a symbol it does not know.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        #[avro(namespace = "io.umbra.v1")]
        #[allow(missing_docs)]
        pub enum $name {
            Unknown,
            $($variant),*
        }
        impl Default for $name {
            fn default() -> Self {
                Self::Unknown
            }
        }
    };
}

avro_enum!(
    /// See `external_event.avsc`.
    EventKind { CampaignLaunch, ScheduledBackup, Release, Maintenance }
);
avro_enum!(
    /// See `host_state.avsc`.
    HostHealth { Healthy, Degraded, Unhealthy }
);
avro_enum!(
    /// See `demand_forecast.avsc`.
    Horizon { Hour, Day, Week }
);
avro_enum!(
    /// See `shadow_entry.avsc`.
    ShadowState { Pending, Active, Claimed, Releasing }
);
avro_enum!(
    /// See `shadow_entry.avsc`.
    ShadowStatus { Requested, Healthy, Unhealthy, Failed, Claimed, Released }
);
avro_enum!(
    /// See `scaleup_forecast.avsc`.
    ScaleUpSubject { Workload, Pool }
);
avro_enum!(
    /// See `allocation_decision.avsc`.
    Outcome { ShadowHit, Standard, Rejected }
);
avro_enum!(
    /// See `fleet_command.avsc`.
    FleetCommandKind { CreateShadow, ExpandShadow, ReleaseShadow, MoveShadow, PlaceWorkload, ReleaseWorkload }
);
avro_enum!(
    /// See `fleet_event.avsc`.
    FleetEventKind { Created, Healthy, Unhealthy, Expanded, Released, Moved, Failed, Placed, Refused, HostCapacity }
);

/// Key of workload topics; see `workload_key.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct WorkloadKey {
    pub workload_id: String,
}
/// Key of host topics; see `host_key.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct HostKey {
    pub host_id: String,
}
/// Key of the external events topic; see `event_key.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct EventKey {
    pub event_id: String,
}
/// CPU (millicores), memory (bytes) and disk I/O (bytes/s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct Resources {
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    pub disk_io_bytes_per_s: i64,
}
/// See `usage_sample.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct UsageSample {
    pub workload_id: String,
    pub sample_time: i64,
    pub cpu_millicores: f64,
    pub cpu_capacity_millicores: f64,
    pub memory_bytes: f64,
    pub memory_capacity_bytes: f64,
    pub disk_read_bytes_per_s: f64,
    pub disk_write_bytes_per_s: f64,
    pub network_rx_bytes_per_s: f64,
    pub network_tx_bytes_per_s: f64,
    pub labels: HashMap<String, String>,
    pub source: String,
}
/// See `host_metrics.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct HostMetrics {
    pub host_id: String,
    pub sample_time: i64,
    pub capacity: Resources,
    pub used: Resources,
    pub healthy: bool,
    #[serde(default)]
    #[avro(default = "null")]
    pub committed: Option<Resources>,
}
/// See `external_event.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct ExternalEvent {
    pub event_id: String,
    pub kind: EventKind,
    pub start_time: i64,
    pub end_time: i64,
    pub workload_ids: Vec<String>,
    pub labels: HashMap<String, String>,
    pub expected_impact: Option<f64>,
    pub description: String,
}
/// Mean, p95 and max of one resource over one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct Stats {
    pub mean: f64,
    pub p95: f64,
    pub max: f64,
}
/// See `usage_series.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct UsagePoint {
    pub workload_id: String,
    pub bucket_start: i64,
    pub bucket_seconds: i32,
    pub sample_count: i32,
    pub cpu_millicores: Stats,
    pub memory_bytes: Stats,
    pub disk_io_bytes_per_s: Stats,
    pub labels: HashMap<String, String>,
    pub cpu_capacity_millicores: f64,
    pub memory_capacity_bytes: f64,
}
/// See `host_state.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct HostState {
    pub host_id: String,
    pub updated_at: i64,
    pub capacity: Resources,
    pub used: Resources,
    pub committed: Resources,
    pub health: HostHealth,
    pub health_score: f64,
}
/// A point forecast with its 80% and 95% intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct Interval {
    pub mean: f64,
    pub lower_80: f64,
    pub upper_80: f64,
    pub lower_95: f64,
    pub upper_95: f64,
}
/// Predicted demand at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct ForecastPoint {
    pub time: i64,
    pub cpu_millicores: Interval,
    pub memory_bytes: Interval,
    pub disk_io_bytes_per_s: Interval,
}
/// The forecast for one horizon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct HorizonForecast {
    pub horizon: Horizon,
    pub step_seconds: i32,
    pub points: Vec<ForecastPoint>,
}
/// See `demand_forecast.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct DemandForecast {
    pub workload_id: String,
    pub generated_at: i64,
    pub model: String,
    pub fallback_reason: Option<String>,
    pub horizons: Vec<HorizonForecast>,
}
/// One shadow instance on one candidate host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct ShadowCandidate {
    pub shadow_id: String,
    pub host_id: String,
    pub rank: i32,
    pub health_score: f64,
    pub headroom: f64,
    pub status: ShadowStatus,
    #[serde(default)]
    #[avro(default = "null")]
    pub reserved: Option<Resources>,
}
/// See `shadow_entry.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct ShadowEntry {
    pub workload_id: String,
    pub version: i64,
    pub state: ShadowState,
    pub predicted_start: i64,
    pub predicted_end: i64,
    pub requirements: Resources,
    pub candidates: Vec<ShadowCandidate>,
    pub host_ranking: Vec<String>,
    pub reason: String,
    pub updated_at: i64,
    #[serde(default = "one")]
    #[avro(default = "1")]
    pub replicas: i32,
    #[serde(default)]
    #[avro(default = "null")]
    pub pool_labels: Option<HashMap<String, String>>,
}
fn one() -> i32 {
    1
}
/// See `workload_request.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct WorkloadRequest {
    pub request_id: String,
    pub workload_id: String,
    pub labels: HashMap<String, String>,
    pub resources: Resources,
    pub requested_at: i64,
}
/// See `allocation_decision.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct AllocationDecision {
    pub request_id: String,
    pub workload_id: String,
    pub outcome: Outcome,
    pub host_id: Option<String>,
    pub shadow_id: Option<String>,
    pub requested_at: i64,
    pub decided_at: i64,
    pub reason: String,
}
/// See `claim.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct Claim {
    pub shadow_id: String,
    pub workload_id: String,
    pub request_id: String,
    pub host_id: String,
    pub entry_version: i64,
    pub claimed_at: i64,
}
/// See `fleet_command.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct FleetCommand {
    pub command_id: String,
    pub kind: FleetCommandKind,
    pub host_id: String,
    pub target_host_id: Option<String>,
    pub shadow_id: Option<String>,
    pub workload_id: String,
    pub request_id: Option<String>,
    pub resources: Resources,
    pub issued_at: i64,
}
/// See `fleet_event.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct FleetEvent {
    pub event_id: String,
    pub command_id: Option<String>,
    pub kind: FleetEventKind,
    pub host_id: String,
    pub shadow_id: Option<String>,
    pub workload_id: Option<String>,
    pub resources: Resources,
    pub reason: String,
    pub occurred_at: i64,
}
/// See `reshadow_request.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct ReshadowRequest {
    pub request_id: String,
    pub workload_id: String,
    pub shadow_id: String,
    pub from_host_id: String,
    pub to_host_id: Option<String>,
    pub reason: String,
    pub requested_at: i64,
}

impl Resources {
    /// True when every component is at most the matching one of `other`.
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_millicores <= other.cpu_millicores
            && self.memory_bytes <= other.memory_bytes
            && self.disk_io_bytes_per_s <= other.disk_io_bytes_per_s
    }
}

impl Resources {
    /// No resources.
    pub const ZERO: Resources = Resources {
        cpu_millicores: 0,
        memory_bytes: 0,
        disk_io_bytes_per_s: 0,
    };

    /// The sum, saturating at `i64::MAX`.
    pub fn plus(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millicores: self.cpu_millicores.saturating_add(o.cpu_millicores),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            disk_io_bytes_per_s: self
                .disk_io_bytes_per_s
                .saturating_add(o.disk_io_bytes_per_s),
        }
    }

    /// The difference, floored at zero per resource.
    pub fn minus(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millicores: (self.cpu_millicores.saturating_sub(o.cpu_millicores)).max(0),
            memory_bytes: (self.memory_bytes.saturating_sub(o.memory_bytes)).max(0),
            disk_io_bytes_per_s: (self
                .disk_io_bytes_per_s
                .saturating_sub(o.disk_io_bytes_per_s))
            .max(0),
        }
    }

    /// The larger of each resource.
    pub fn max(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millicores: self.cpu_millicores.max(o.cpu_millicores),
            memory_bytes: self.memory_bytes.max(o.memory_bytes),
            disk_io_bytes_per_s: self.disk_io_bytes_per_s.max(o.disk_io_bytes_per_s),
        }
    }

    /// True when every resource is at most the one of `limit`.
    pub fn fits_within(&self, limit: &Resources) -> bool {
        self.cpu_millicores <= limit.cpu_millicores
            && self.memory_bytes <= limit.memory_bytes
            && self.disk_io_bytes_per_s <= limit.disk_io_bytes_per_s
    }

    /// True when no resource is negative.
    pub fn is_non_negative(&self) -> bool {
        self.cpu_millicores >= 0 && self.memory_bytes >= 0 && self.disk_io_bytes_per_s >= 0
    }

    /// True when every resource is zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Which resources of `self` exceed `limit`, as "cpu 1200m > 800m" phrases.
    pub fn excess_over(&self, limit: &Resources) -> Vec<String> {
        let mut out = Vec::new();
        if self.cpu_millicores > limit.cpu_millicores {
            out.push(format!(
                "cpu {}m > {}m",
                self.cpu_millicores, limit.cpu_millicores
            ));
        }
        if self.memory_bytes > limit.memory_bytes {
            out.push(format!(
                "memory {} B > {} B",
                self.memory_bytes, limit.memory_bytes
            ));
        }
        if self.disk_io_bytes_per_s > limit.disk_io_bytes_per_s {
            out.push(format!(
                "disk I/O {} B/s > {} B/s",
                self.disk_io_bytes_per_s, limit.disk_io_bytes_per_s
            ));
        }
        out
    }
}
/// See `workload_scale.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct WorkloadScale {
    pub workload_id: String,
    pub observed_at: i64,
    pub replicas: i32,
    pub replica: Resources,
    #[serde(default)]
    #[avro(default = "{}")]
    pub labels: HashMap<String, String>,
}
/// See `scaleup_forecast.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.umbra.v1")]
#[allow(missing_docs)]
pub struct ScaleUpForecast {
    pub subject: String,
    pub kind: ScaleUpSubject,
    pub step_start: i64,
    pub step_seconds: i32,
    pub generated_at: i64,
    pub at_least: Vec<f64>,
    pub size: Resources,
    #[serde(default)]
    #[avro(default = "{}")]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    #[avro(default = "[]")]
    pub members: Vec<String>,
    #[serde(default)]
    #[avro(default = "0.0")]
    pub threshold: f64,
    #[serde(default)]
    #[avro(default = "0")]
    pub slots: i32,
}
