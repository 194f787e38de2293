//! The stream runtime every umbra service runs on.
//!
//! - [`codec`]: Confluent-framed Avro (magic byte 0, 4-byte schema id, Avro body) through a
//!   [`registry::SchemaRegistry`], schemas registered at start-up under TopicNameStrategy.
//! - [`processor`]: at-least-once consume → handle → produce, storing an input's offset only
//!   after every output it caused is acknowledged by the broker.
//! - [`table`]: the compacted-topic materializer with a restore phase and a readiness gate.
//! - [`dlq`]: dead-letter routing with the original bytes and headers naming the failure.
//! - [`http`], [`metrics`], [`shutdown`], [`telemetry`], [`config`]: what every service
//!   exposes and obeys.

pub mod admin;
pub mod codec;
pub mod config;
pub mod dlq;
mod error;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod processor;
pub mod progress;
pub mod reader;
pub mod registry;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod table;
pub mod telemetry;

pub use error::StreamError;

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
