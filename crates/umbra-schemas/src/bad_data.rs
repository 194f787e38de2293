//! What a service does with an input record it cannot decode or that fails validation: part of
//! each input's contract (docs/architecture.md, *At-least-once processing*), chosen per input
//! in the service's configuration (`bad_data`).

/// What to do with a record that cannot be decoded or fails validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadDataPolicy {
    /// Stop the service with an error: for inputs where a bad record means a bug upstream.
    Fail,
    /// Log, count and skip.
    Drop,
    /// Send to `<topic>.dlq` and go on.
    #[default]
    DeadLetter,
}
