//! Dead-letter records: the original key and value bytes, the original headers, plus
//! headers naming where the record came from and why it was rejected (in the spirit of
//! Kafka Connect's `errors.deadletterqueue.context.headers.enable`).

use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};

/// Header names on dead-letter records.
pub mod header {
    /// Topic the record was read from.
    pub const TOPIC: &str = "umbra.dlq.topic";
    /// Partition it was read from.
    pub const PARTITION: &str = "umbra.dlq.partition";
    /// Offset it was read at.
    pub const OFFSET: &str = "umbra.dlq.offset";
    /// Stage that rejected it: `decode`, `validate`, `process`.
    pub const STAGE: &str = "umbra.dlq.stage";
    /// Why, in words.
    pub const ERROR: &str = "umbra.dlq.error";
    /// Service that rejected it.
    pub const SERVICE: &str = "umbra.dlq.service";
}

// Declared with the contracts, so that decision cores can carry it in their settings
// without the Kafka runtime.
pub use umbra_schemas::BadDataPolicy;

/// A record bound for a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// `<topic>.dlq`.
    pub topic: String,
    /// Original key bytes.
    pub key: Option<Vec<u8>>,
    /// Original value bytes.
    pub value: Option<Vec<u8>>,
    /// Original headers plus the dead-letter headers.
    pub headers: OwnedHeaders,
}

/// Builds the dead-letter record for `msg`, rejected by `service` at `stage` because of `error`.
pub fn dead_letter(
    msg: &BorrowedMessage<'_>,
    service: &str,
    stage: &str,
    error: &str,
) -> DeadLetter {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = msg.headers() {
        for h in original.iter() {
            if !h.key.starts_with("umbra.dlq.") {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
    }
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    for (k, v) in [
        (header::TOPIC, msg.topic()),
        (header::PARTITION, partition.as_str()),
        (header::OFFSET, offset.as_str()),
        (header::STAGE, stage),
        (header::ERROR, error),
        (header::SERVICE, service),
    ] {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    DeadLetter {
        topic: format!("{}.dlq", msg.topic()),
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers,
    }
}
