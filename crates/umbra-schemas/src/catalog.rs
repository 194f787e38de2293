//! The topics of the pipeline: names, key and value schemas, partitions, cleanup policy.

use crate::{files, SchemaFile};

/// Whether a topic is a log of facts or a table of latest values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// `cleanup.policy=delete`: every record matters.
    Stream,
    /// `cleanup.policy=compact`: the latest record per key matters; tombstones delete.
    Table,
}

/// One topic of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    /// Default topic name; services take the actual name from their configuration.
    pub name: &'static str,
    /// Schema of the record key.
    pub key: SchemaFile,
    /// Schema of the record value.
    pub value: SchemaFile,
    /// Stream or table.
    pub kind: TopicKind,
    /// Partition count `umbra dev up` creates the topic with.
    pub partitions: i32,
}

impl Topic {
    /// Subject of the value schema under TopicNameStrategy.
    pub fn value_subject(&self) -> String {
        format!("{}-value", self.name)
    }
    /// Subject of the key schema under TopicNameStrategy.
    pub fn key_subject(&self) -> String {
        format!("{}-key", self.name)
    }
    /// Name of the dead-letter topic of this topic.
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.name)
    }
}

const fn stream(name: &'static str, key: SchemaFile, value: SchemaFile) -> Topic {
    Topic {
        name,
        key,
        value,
        kind: TopicKind::Stream,
        partitions: 3,
    }
}
const fn table(name: &'static str, key: SchemaFile, value: SchemaFile) -> Topic {
    Topic {
        name,
        key,
        value,
        kind: TopicKind::Table,
        partitions: 3,
    }
}

/// Every topic of docs/topics.md. Requests, claims, decisions, forecasts and the shadow table
/// share the workload key and partition count, so they are co-partitioned by workload id.
pub const TOPICS: &[Topic] = &[
    stream("umbra.usage.raw", files::WORKLOAD_KEY, files::USAGE_SAMPLE),
    stream("umbra.host.metrics", files::HOST_KEY, files::HOST_METRICS),
    stream(
        "umbra.events.external",
        files::EVENT_KEY,
        files::EXTERNAL_EVENT,
    ),
    stream(
        "umbra.usage.series",
        files::WORKLOAD_KEY,
        files::USAGE_POINT,
    ),
    table("umbra.host.state", files::HOST_KEY, files::HOST_STATE),
    table(
        "umbra.forecasts",
        files::WORKLOAD_KEY,
        files::DEMAND_FORECAST,
    ),
    table(
        "umbra.shadow.table",
        files::WORKLOAD_KEY,
        files::SHADOW_ENTRY,
    ),
    stream(
        "umbra.workload.requests",
        files::WORKLOAD_KEY,
        files::WORKLOAD_REQUEST,
    ),
    stream(
        "umbra.allocation.decisions",
        files::WORKLOAD_KEY,
        files::ALLOCATION_DECISION,
    ),
    stream("umbra.claims", files::WORKLOAD_KEY, files::CLAIM),
    stream(
        "umbra.fleet.commands",
        files::HOST_KEY,
        files::FLEET_COMMAND,
    ),
    stream("umbra.fleet.events", files::HOST_KEY, files::FLEET_EVENT),
    stream(
        "umbra.reshadow.requests",
        files::WORKLOAD_KEY,
        files::RESHADOW_REQUEST,
    ),
    stream(
        "umbra.workload.scale",
        files::WORKLOAD_KEY,
        files::WORKLOAD_SCALE,
    ),
    table(
        "umbra.scaleup.forecasts",
        files::WORKLOAD_KEY,
        files::SCALEUP_FORECAST,
    ),
];

/// Looks a topic up by its default name.
pub fn topic(name: &str) -> Option<&'static Topic> {
    TOPICS.iter().find(|t| t.name == name)
}
