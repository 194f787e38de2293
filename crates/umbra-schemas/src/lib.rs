//! The Avro contracts of every umbra topic.
//!
//! The `.avsc` files under `schemas/` at the repository root are the single source of truth:
//! they carry the documentation of every record and field. The Rust types here mirror them and
//! derive their own Avro schema; `tests/agreement.rs` fails when the two drift apart (their
//! Parsing Canonical Forms must be equal), so a field cannot be added on one side only.

mod bad_data;
mod catalog;
mod examples;
mod types;

pub use bad_data::BadDataPolicy;
pub use catalog::{topic, Topic, TopicKind, TOPICS};
pub use types::*;

use apache_avro::Schema;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A bundled `.avsc` file does not parse; a build from a broken tree.
    #[error("schema {file} does not parse: {source}")]
    Parse {
        /// File name under `schemas/`.
        file: &'static str,
        /// Parser error.
        #[source]
        source: Box<apache_avro::Error>,
    },
}

/// One bundled schema file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaFile {
    /// File name under `schemas/`.
    pub file: &'static str,
    /// Full text of the file, as registered in the registry.
    pub text: &'static str,
}

impl SchemaFile {
    /// Parses the file.
    pub fn parse(&self) -> Result<Schema, SchemaError> {
        Schema::parse_str(self.text).map_err(|e| SchemaError::Parse {
            file: self.file,
            source: Box::new(e),
        })
    }
}

macro_rules! schema_file {
    ($name:literal) => {
        SchemaFile {
            file: $name,
            text: include_str!(concat!("../../../schemas/", $name)),
        }
    };
}

/// Every schema file, keyed by the Rust type it belongs to.
pub mod files {
    use super::SchemaFile;
    pub const WORKLOAD_KEY: SchemaFile = schema_file!("workload_key.avsc");
    pub const HOST_KEY: SchemaFile = schema_file!("host_key.avsc");
    pub const EVENT_KEY: SchemaFile = schema_file!("event_key.avsc");
    pub const USAGE_SAMPLE: SchemaFile = schema_file!("usage_sample.avsc");
    pub const HOST_METRICS: SchemaFile = schema_file!("host_metrics.avsc");
    pub const EXTERNAL_EVENT: SchemaFile = schema_file!("external_event.avsc");
    pub const USAGE_POINT: SchemaFile = schema_file!("usage_series.avsc");
    pub const HOST_STATE: SchemaFile = schema_file!("host_state.avsc");
    pub const DEMAND_FORECAST: SchemaFile = schema_file!("demand_forecast.avsc");
    pub const SHADOW_ENTRY: SchemaFile = schema_file!("shadow_entry.avsc");
    pub const WORKLOAD_REQUEST: SchemaFile = schema_file!("workload_request.avsc");
    pub const ALLOCATION_DECISION: SchemaFile = schema_file!("allocation_decision.avsc");
    pub const CLAIM: SchemaFile = schema_file!("claim.avsc");
    pub const FLEET_COMMAND: SchemaFile = schema_file!("fleet_command.avsc");
    pub const FLEET_EVENT: SchemaFile = schema_file!("fleet_event.avsc");
    pub const RESHADOW_REQUEST: SchemaFile = schema_file!("reshadow_request.avsc");
    pub const WORKLOAD_SCALE: SchemaFile = schema_file!("workload_scale.avsc");
    pub const SCALEUP_FORECAST: SchemaFile = schema_file!("scaleup_forecast.avsc");
}

/// A Rust type that travels on a topic as Avro, bound to its `.avsc` file.
pub trait Record:
    serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
    /// The schema file this type mirrors.
    const SCHEMA: SchemaFile;
    /// A realistic value with every optional field set, for docs and round-trip tests.
    fn example() -> Self;
}

macro_rules! bind {
    ($($ty:ty => $file:ident),* $(,)?) => {
        $(impl Record for $ty {
            const SCHEMA: SchemaFile = files::$file;
            fn example() -> Self { examples::$file() }
        })*
        /// Every schema file with the type bound to it, for tests and registration.
        pub const ALL_FILES: &[SchemaFile] = &[$(files::$file),*];
    };
}

bind! {
    WorkloadKey => WORKLOAD_KEY,
    HostKey => HOST_KEY,
    EventKey => EVENT_KEY,
    UsageSample => USAGE_SAMPLE,
    HostMetrics => HOST_METRICS,
    ExternalEvent => EXTERNAL_EVENT,
    UsagePoint => USAGE_POINT,
    HostState => HOST_STATE,
    DemandForecast => DEMAND_FORECAST,
    ShadowEntry => SHADOW_ENTRY,
    WorkloadRequest => WORKLOAD_REQUEST,
    AllocationDecision => ALLOCATION_DECISION,
    Claim => CLAIM,
    FleetCommand => FLEET_COMMAND,
    FleetEvent => FLEET_EVENT,
    ReshadowRequest => RESHADOW_REQUEST,
    WorkloadScale => WORKLOAD_SCALE,
    ScaleUpForecast => SCALEUP_FORECAST,
}

/// Id of the pool of size class `class`: its subject on `umbra.scaleup.forecasts` and its row's
/// key in the shadow table (`pool/0`, `pool/1`, ... smallest class first).
pub fn pool_id(class: usize) -> String {
    format!("pool/{class}")
}

/// True for the id of a pool ([`pool_id`]): its shadows are slots any fitting request may take.
pub fn is_pool_id(id: &str) -> bool {
    id.strip_prefix("pool/")
        .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// Encodes `value` as a bare Avro datum of `schema` (no framing).
pub fn to_datum<T: serde::Serialize>(
    schema: &Schema,
    value: &T,
) -> Result<Vec<u8>, apache_avro::Error> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()?
        .write_ser_to_vec(value)
}

/// Decodes a bare Avro datum written with `writer` into `T`, resolving it against `reader`
/// (Avro schema resolution: added fields take their defaults, unknown enum symbols the
/// enum's default).
pub fn from_datum<T: serde::de::DeserializeOwned>(
    writer: &Schema,
    reader: &Schema,
    mut bytes: &[u8],
) -> Result<T, apache_avro::Error> {
    let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()?
        .read_value(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(apache_avro::Error::new(
            apache_avro::error::Details::ReadBytes(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} bytes left over after the datum", bytes.len()),
            )),
        ));
    }
    apache_avro::from_value(&value)
}

/// Decodes a bare Avro datum written with `schema` itself (no resolution needed) straight into
/// `T`, without the intermediate `Value` tree: the fast path for records written with the
/// reader's own schema, which is nearly all of them.
pub fn from_datum_same<T: serde::de::DeserializeOwned>(
    schema: &Schema,
    mut bytes: &[u8],
) -> Result<T, apache_avro::Error> {
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()?
        .read_deser(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(apache_avro::Error::new(
            apache_avro::error::Details::ReadBytes(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} bytes left over after the datum", bytes.len()),
            )),
        ));
    }
    Ok(value)
}

/// A record key that names one entity; tables are maps from this id to the latest value.
pub trait EntityKey: Record {
    /// The entity id.
    fn id(&self) -> &str;
    /// The key of entity `id`.
    fn from_id(id: String) -> Self;
}

impl EntityKey for WorkloadKey {
    fn id(&self) -> &str {
        &self.workload_id
    }
    fn from_id(workload_id: String) -> Self {
        Self { workload_id }
    }
}
impl EntityKey for HostKey {
    fn id(&self) -> &str {
        &self.host_id
    }
    fn from_id(host_id: String) -> Self {
        Self { host_id }
    }
}
impl EntityKey for EventKey {
    fn id(&self) -> &str {
        &self.event_id
    }
    fn from_id(event_id: String) -> Self {
        Self { event_id }
    }
}
