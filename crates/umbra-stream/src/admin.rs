//! Topic creation for the dev stack and tests.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;
use crate::kafka::client_config;
use crate::StreamError;

/// A topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// `cleanup.policy=compact` when true.
    pub compacted: bool,
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
/// Returns the names that were created.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[TopicSpec],
) -> Result<Vec<String>, StreamError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings)
        .create()
        .map_err(|e| StreamError::kafka("creating admin client", e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let n = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1));
            if t.compacted {
                n.set("cleanup.policy", "compact")
            } else {
                n.set("cleanup.policy", "delete")
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|e| StreamError::kafka("creating topics", e))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(StreamError::Kafka {
                    context: format!("creating topic {name}"),
                    source: rdkafka::error::KafkaError::AdminOp(code),
                })
            }
        }
    }
    Ok(created)
}

/// Every pipeline topic and its dead-letter topic, named with `prefix`.
pub fn pipeline_topics(prefix: &str) -> Vec<TopicSpec> {
    umbra_schemas::TOPICS
        .iter()
        .flat_map(|t| {
            [
                TopicSpec {
                    name: format!("{prefix}{}", t.name),
                    partitions: t.partitions,
                    compacted: t.kind == umbra_schemas::TopicKind::Table,
                },
                TopicSpec {
                    name: format!("{prefix}{}", t.dlq()),
                    partitions: 1,
                    compacted: false,
                },
            ]
        })
        .collect()
}
