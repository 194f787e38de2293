//! Reading a whole topic into local state: every partition from the beginning, a restore
//! phase up to the end offsets captured when the reader opens, then following new records.
//! The table materializer and the forecast service's history are built on it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::http::Gate;
use crate::metrics::Metrics;
use crate::{kafka, StreamError};

/// One record as read, with its bytes owned.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// The producer's trace context (`traceparent` header), if any.
    pub traceparent: Option<String>,
}

/// A reader of every partition of one topic, opened at the beginning.
pub struct RestoringReader {
    topic: String,
    consumer: Arc<StreamConsumer>,
    end: HashMap<i32, i64>,
}

impl RestoringReader {
    /// Assigns every partition of `topic` from the beginning and captures the end offsets:
    /// the restore target.
    pub async fn open(settings: &KafkaSettings, topic: &str) -> Result<Self, StreamError> {
        let partitions = kafka::partitions(settings, topic).await?;
        let consumer = kafka::reader(settings)?;
        let end = kafka::end_offsets(&consumer, topic, &partitions).await?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(|e| StreamError::kafka(format!("assigning {topic}"), e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| StreamError::kafka(format!("assigning {topic}"), e))?;
        Ok(Self {
            topic: topic.to_string(),
            consumer: Arc::new(consumer),
            end,
        })
    }

    /// Topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Hands every record to `apply`, in order per partition, until `shutdown`; opens `ready`
    /// once every partition has reached the end offset captured at open.
    pub async fn run<F, Fut>(
        self,
        ready: Gate,
        shutdown: CancellationToken,
        metrics: Metrics,
        apply: F,
    ) where
        F: FnMut(RawRecord) -> Fut,
        Fut: Future<Output = ()>,
    {
        let lag = kafka::spawn_lag_reporter(
            self.consumer.clone(),
            self.topic.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        self.drive(Some(ready), false, shutdown, metrics, apply)
            .await;
        lag.abort();
    }

    /// Hands every record up to the end offsets captured at open to `apply`, then returns:
    /// for state that only its own writer changes afterwards (the shadow table in the shadow
    /// manager, the fleet ledger in the simulator). Returns `false` if `shutdown` came first.
    pub async fn restore<F, Fut>(
        self,
        shutdown: CancellationToken,
        metrics: Metrics,
        apply: F,
    ) -> bool
    where
        F: FnMut(RawRecord) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.drive(None, true, shutdown, metrics, apply).await
    }

    async fn drive<F, Fut>(
        self,
        ready: Option<Gate>,
        stop_at_end: bool,
        shutdown: CancellationToken,
        metrics: Metrics,
        mut apply: F,
    ) -> bool
    where
        F: FnMut(RawRecord) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut positions: HashMap<i32, i64> = HashMap::new();
        let caught_up = |pos: &HashMap<i32, i64>| {
            self.end
                .iter()
                .all(|(p, e)| pos.get(p).copied().unwrap_or(0) >= *e)
        };
        let consumed = metrics.consumed.with_label_values(&[&self.topic]);
        let mut idle_rounds = 0u32;
        let mut quiet_highs: HashMap<i32, i64> = HashMap::new();
        // A reader that follows reports its progress; a one-off read of a topic to its end
        // (a writer restoring its own table) is not an input the service waits on.
        let follows = !stop_at_end;
        if follows {
            for p in self.end.keys() {
                crate::progress::reads(&self.topic, *p);
            }
        }
        loop {
            if caught_up(&positions) {
                if stop_at_end {
                    tracing::info!(topic = %self.topic, "restored");
                    return true;
                }
                if let Some(ready) = ready.as_ref().filter(|r| !r.is_open()) {
                    ready.open();
                    tracing::info!(topic = %self.topic, "restored");
                }
            }
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return false,
                m = tokio::time::timeout(Duration::from_millis(250), self.consumer.recv()) => m,
            };
            match msg {
                // Idle: records compacted away at the end still move the client's position.
                Err(_idle) => {
                    idle_rounds += 1;
                    // Records removed at the end (a tombstone compacted at once) leave the
                    // position short of the end with nothing left to read: a high watermark
                    // seen twice a quarter second apart with no record read in between
                    // (after half a second of quiet, and every second after) counts the
                    // partition read to it in progress (the table's own position is not
                    // moved). Once would not do: a record written just before the query is
                    // then still on its way to this reader. On an idle reader only.
                    // The query runs off the runtime threads: it waits behind this client's
                    // own long-poll fetch (the broker answers a connection in order), and
                    // made from async code it held a runtime thread that long (the lockstep
                    // replay saw `/progress` take two seconds, a step twenty).
                    if follows && idle_rounds >= 2 && matches!(idle_rounds % 4, 2 | 3) {
                        let (client, topic) = (self.consumer.clone(), self.topic.clone());
                        let parts: Vec<i32> = self.end.keys().copied().collect();
                        let highs = tokio::task::spawn_blocking(move || {
                            parts
                                .into_iter()
                                .filter_map(|p| {
                                    client
                                        .fetch_watermarks(&topic, p, Duration::from_secs(1))
                                        .ok()
                                        .map(|(_, high)| (p, high))
                                })
                                .collect::<Vec<_>>()
                        })
                        .await
                        .unwrap_or_default();
                        for (p, high) in highs {
                            let seen_before = quiet_highs.insert(p, high) == Some(high);
                            if seen_before && high > positions.get(&p).copied().unwrap_or(0) {
                                crate::progress::applied(&self.topic, p, high);
                            }
                        }
                    }
                    if let Ok(pos) = self.consumer.position() {
                        for e in pos.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                let p = positions.entry(e.partition()).or_insert(0);
                                *p = (*p).max(o);
                                if follows {
                                    crate::progress::applied(&self.topic, e.partition(), *p);
                                }
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Ok(m)) => {
                    idle_rounds = 0;
                    quiet_highs.clear();
                    consumed.inc();
                    positions.insert(m.partition(), m.offset() + 1);
                    let record = RawRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        traceparent: crate::telemetry::traceparent(m.headers()),
                    };
                    drop(m);
                    let (partition, next) = (record.partition, record.offset + 1);
                    apply(record).await;
                    if follows {
                        crate::progress::applied(&self.topic, partition, next);
                    }
                }
            }
        }
    }
}
