//! Persistence of the registry in a compacted Kafka topic, in Confluent's record format.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use umbra_stream::admin::{ensure_topics, TopicSpec};
use umbra_stream::config::KafkaSettings;
use umbra_stream::kafka;

use crate::state::RegistryState;

/// Errors of the `_schemas` topic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The broker failed or does not answer.
    #[error(transparent)]
    Stream(#[from] umbra_stream::StreamError),
    /// Restore made no progress towards the end offset.
    #[error("restoring {topic} stalled at offset {at} of {end}")]
    Stalled {
        /// Topic.
        topic: String,
        /// Next offset to read.
        at: i64,
        /// End offset captured at start.
        end: i64,
    },
    /// A Kafka operation failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: &'static str,
        /// Client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// The `_schemas` topic: one partition, compacted, written before any change is acknowledged.
pub struct KafkaStore {
    settings: KafkaSettings,
    topic: String,
    producer: FutureProducer,
}

impl KafkaStore {
    /// Connects, creating the topic when it does not exist.
    pub async fn connect(settings: &KafkaSettings, topic: &str) -> Result<Self, StoreError> {
        let settings = settings.clone();
        kafka::wait_for_broker(&settings).await?;
        ensure_topics(
            &settings,
            &[TopicSpec {
                name: topic.to_string(),
                partitions: 1,
                compacted: true,
            }],
        )
        .await?;
        let producer = kafka::producer(&settings)?;
        Ok(Self {
            settings,
            topic: topic.to_string(),
            producer,
        })
    }

    /// Replays the topic into `state` up to its end offset at call time; returns the count.
    pub async fn restore(&self, state: &mut RegistryState) -> Result<u64, StoreError> {
        let consumer = kafka::reader(&self.settings)?;
        let (_, high) = consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .map_err(|source| StoreError::Kafka {
                context: "reading the end offset of the schemas topic",
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|source| StoreError::Kafka {
                context: "assigning the schemas topic",
                source,
            })?;
        consumer.assign(&tpl).map_err(|source| StoreError::Kafka {
            context: "assigning the schemas topic",
            source,
        })?;
        let mut count = 0;
        let mut next = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while next < high {
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Stalled {
                    topic: self.topic.clone(),
                    at: next,
                    end: high,
                });
            }
            let msg = match tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
                Ok(Ok(m)) => m,
                Ok(Err(source)) => {
                    return Err(StoreError::Kafka {
                        context: "reading the schemas topic",
                        source,
                    })
                }
                Err(_) => {
                    // Records compacted away at the end: the position still moves on.
                    match consumer
                        .position()
                        .ok()
                        .and_then(|p| p.elements().first().map(|e| e.offset()))
                    {
                        Some(Offset::Offset(o)) if o >= high => break,
                        _ => continue,
                    }
                }
            };
            next = msg.offset() + 1;
            if let Some(key) = msg.key() {
                state.apply(key, msg.payload());
                count += 1;
            }
        }
        Ok(count)
    }

    /// Writes one record and waits for the broker's acknowledgement.
    pub async fn write(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        let mut record = FutureRecord::to(&self.topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(source, _)| StoreError::Kafka {
                context: "writing to the schemas topic",
                source,
            })
    }
}
