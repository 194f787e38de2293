//! At-least-once processing: consume a record, decide with a synchronous [`Handler`], produce
//! every output, and store the input's offset only after every output (and any dead letter)
//! is acknowledged by the broker. Stored offsets are committed in the background and once more
//! on shutdown; a crash re-delivers at most the records whose outputs were not acknowledged,
//! which is why outputs carry ids that make their effects idempotent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use umbra_schemas::Record;

use crate::codec::{Codec, DecodeError};
use crate::dlq::{dead_letter, BadDataPolicy, DeadLetter};
use crate::http::Gate;
use crate::metrics::Metrics;
use crate::registry::SchemaRegistry;
use crate::telemetry::{with_headers, TraceCtx};
use crate::StreamError;

/// One encoded output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    /// Destination topic.
    pub topic: String,
    /// Framed key.
    pub key: Vec<u8>,
    /// Framed value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// The codecs of one topic: encodes and decodes its keys and values under its subjects.
/// A service holds one per topic it reads ([`Input`]) or writes ([`Output`]).
pub struct TopicCodecs<K, V> {
    topic: String,
    key: Codec<K>,
    value: Codec<V>,
}

/// A topic a service reads.
pub type Input<K, V> = TopicCodecs<K, V>;
/// A topic a service writes.
pub type Output<K, V> = TopicCodecs<K, V>;

impl<K: Record, V: Record> TopicCodecs<K, V> {
    /// Registers the topic's key and value schemas (`<topic>-key`, `<topic>-value`).
    pub async fn new(
        registry: Arc<dyn SchemaRegistry>,
        topic: String,
    ) -> Result<Self, StreamError> {
        let key = Codec::register(registry.clone(), format!("{topic}-key")).await?;
        let value = Codec::register(registry, format!("{topic}-value")).await?;
        Ok(Self { topic, key, value })
    }

    /// Topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// An upsert of `value` under `key`.
    pub fn record(&self, key: &K, value: &V) -> Result<Emit, StreamError> {
        Ok(Emit {
            topic: self.topic.clone(),
            key: self.key.encode(key)?,
            value: Some(self.value.encode(value)?),
        })
    }

    /// A tombstone for `key`.
    pub fn tombstone(&self, key: &K) -> Result<Emit, StreamError> {
        Ok(Emit {
            topic: self.topic.clone(),
            key: self.key.encode(key)?,
            value: None,
        })
    }

    /// Decodes a key.
    pub async fn decode_key(&self, bytes: &[u8]) -> Result<K, DecodeError> {
        self.key.decode(bytes).await
    }

    /// Decodes a value.
    pub async fn decode_value(&self, bytes: &[u8]) -> Result<V, DecodeError> {
        self.value.decode(bytes).await
    }
}

/// A decoded input record as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming<K, V> {
    /// Decoded key.
    pub key: K,
    /// Decoded value.
    pub value: V,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// Why a handler refused a record: it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

/// The decision logic of a service: pure over its own state, no I/O.
pub trait Handler<K, V>: Send {
    /// Decides the outputs of one input, or rejects it.
    fn handle(&mut self, input: &Incoming<K, V>) -> Result<Vec<Emit>, Rejection>;

    /// The highest offset of `partition` whose effects are all in acknowledged outputs, given
    /// that everything up to `processed` has been handled. A handler that holds inputs in
    /// state (open aggregation windows) returns less, so that a restart reads them again.
    fn committable(&self, _partition: i32, processed: i64) -> Option<i64> {
        Some(processed)
    }

    /// Called about once a second with the wall-clock time: outputs that time alone releases
    /// (windows of idle inputs).
    fn tick(&mut self, _now_ms: i64) -> Vec<Emit> {
        Vec::new()
    }

    /// The driven clock moved to `clock_ms` (docs/replay.md): the driver sent every input
    /// timed before it before moving the clock. Outputs that this releases (windows that end
    /// by then, whatever their partition's own inputs say). Called only with
    /// [`Processor::clock_passes`].
    fn advance(&mut self, _clock_ms: i64) -> Vec<Emit> {
        Vec::new()
    }
}

/// Sends `emit` and waits for the broker's acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    emit: &Emit,
    headers: OwnedHeaders,
) -> Result<(), StreamError> {
    send_bytes(
        producer,
        &emit.topic,
        Some(&emit.key),
        emit.value.as_deref(),
        headers,
    )
    .await
}

/// Sends a dead letter and waits for the acknowledgement.
pub async fn send_dead_letter(
    producer: &FutureProducer,
    dl: DeadLetter,
) -> Result<(), StreamError> {
    send_bytes(
        producer,
        &dl.topic,
        dl.key.as_deref(),
        dl.value.as_deref(),
        dl.headers,
    )
    .await
}

/// Sends one record (a `None` value is a tombstone) and waits for the acknowledgement.
async fn send_bytes(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
) -> Result<(), StreamError> {
    let mut record = FutureRecord::to(topic).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| StreamError::Produce {
            topic: topic.to_string(),
            detail: e.to_string(),
        })
}

/// Counts of what a processor did, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessorStats {
    /// Inputs whose outputs were all acknowledged.
    pub processed: u64,
    /// Inputs sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Inputs dropped by a `drop` policy.
    pub dropped: u64,
}

/// Runs one input topic through a handler.
pub struct Processor<K, V> {
    /// Service name, for dead-letter headers and logs.
    pub service: String,
    /// Input topic.
    pub input: Input<K, V>,
    /// Group consumer (see [`crate::kafka::group_consumer`]).
    pub consumer: Arc<StreamConsumer>,
    /// Idempotent producer.
    pub producer: FutureProducer,
    /// What to do with records that cannot be decoded or are rejected.
    pub policy: BadDataPolicy,
    /// Metrics.
    pub metrics: Metrics,
    /// Under a driven clock, each move of the clock is a pass ([`Handler::advance`]) that the
    /// driver waits for (`crate::progress`); the service declares it acts in passes.
    pub clock_passes: bool,
}

enum Step {
    Outputs(Vec<Emit>),
    Bad { stage: &'static str, reason: String },
}

impl<K: Record, V: Record> Processor<K, V> {
    /// Consumes until `shutdown`, then commits what was acknowledged and returns.
    /// `started` is opened once the subscription is in place.
    pub async fn run<H: Handler<K, V>>(
        self,
        handler: &mut H,
        started: Gate,
        shutdown: CancellationToken,
    ) -> Result<ProcessorStats, StreamError> {
        let topic = self.input.topic().to_string();
        self.consumer
            .subscribe(&[&topic])
            .map_err(|e| StreamError::kafka(format!("subscribing to {topic}"), e))?;
        started.open();
        let lag_task = crate::kafka::spawn_lag_reporter(
            self.consumer.clone(),
            topic.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        );
        let mut stats = ProcessorStats::default();
        let mut processed: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clock_moved = crate::progress::clock_watch();
        let result = loop {
            let msg = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = clock_moved.changed(), if self.clock_passes => {
                    let pass = crate::progress::begin_pass();
                    let outputs = pass.clock_ms().map(|now| handler.advance(now)).unwrap_or_default();
                    if let Err(e) = self.release(handler, outputs, &processed, "advance").await {
                        break Err(e);
                    }
                    crate::progress::end_pass(pass);
                    continue;
                }
                _ = tick.tick() => {
                    let outputs = handler.tick(crate::now_millis());
                    if let Err(e) = self.release(handler, outputs, &processed, "tick").await {
                        break Err(e);
                    }
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "consumer error; continuing");
                    continue;
                }
            };
            processed.insert(msg.partition(), msg.offset());
            if let Err(e) = self.process_one(&msg, handler, &mut stats, &shutdown).await {
                break Err(e);
            }
        };
        lag_task.abort();
        // Commit what was stored: everything whose outputs were acknowledged.
        crate::kafka::commit_stored(&self.consumer);
        let _ = rdkafka::producer::Producer::flush(&self.producer, Duration::from_secs(10));
        tracing::info!(topic = %topic, processed = stats.processed, dead_lettered = stats.dead_lettered, "processor stopped");
        result.map(|()| stats)
    }

    /// Sends what time alone released (`outputs` of a tick or a clock move), then stores
    /// what became committable.
    async fn release<H: Handler<K, V>>(
        &self,
        handler: &mut H,
        outputs: Vec<Emit>,
        processed: &std::collections::HashMap<i32, i64>,
        cause: &'static str,
    ) -> Result<(), StreamError> {
        if outputs.is_empty() {
            return Ok(());
        }
        let trace = TraceCtx::root(cause);
        let sends = outputs.iter().map(|e| {
            send(
                &self.producer,
                e,
                with_headers(OwnedHeaders::new(), &trace.send(&e.topic)),
            )
        });
        for (r, e) in join_all(sends).await.into_iter().zip(&outputs) {
            r?;
            self.metrics.produced.with_label_values(&[&e.topic]).inc();
        }
        let topic = self.input.topic();
        for (p, o) in processed {
            if let Some(c) = handler.committable(*p, *o) {
                // A partition revoked meanwhile cannot be stored; its new owner re-reads.
                let _ = self.consumer.store_offset(topic, *p, c);
            }
        }
        Ok(())
    }

    async fn process_one<H: Handler<K, V>>(
        &self,
        msg: &BorrowedMessage<'_>,
        handler: &mut H,
        stats: &mut ProcessorStats,
        shutdown: &CancellationToken,
    ) -> Result<(), StreamError> {
        let started = Instant::now();
        let topic = msg.topic();
        self.metrics.consumed.with_label_values(&[topic]).inc();
        let trace = TraceCtx::from_input(msg.headers(), topic);
        let step = match self.decode(msg, shutdown).await? {
            Err((stage, reason)) => Step::Bad { stage, reason },
            Ok(input) => match handler.handle(&input) {
                Ok(out) => Step::Outputs(out),
                Err(Rejection(reason)) => Step::Bad {
                    stage: "validate",
                    reason,
                },
            },
        };
        match step {
            Step::Outputs(outputs) => {
                let sends = outputs.iter().map(|e| {
                    send(
                        &self.producer,
                        e,
                        with_headers(OwnedHeaders::new(), &trace.send(&e.topic)),
                    )
                });
                for (r, e) in join_all(sends).await.into_iter().zip(&outputs) {
                    r?;
                    self.metrics.produced.with_label_values(&[&e.topic]).inc();
                }
                stats.processed += 1;
            }
            Step::Bad { stage, reason } => match self.policy {
                BadDataPolicy::Fail => {
                    return Err(StreamError::Produce {
                        topic: topic.to_string(),
                        detail: format!(
                            "bad record at partition {} offset {} ({stage}): {reason}",
                            msg.partition(),
                            msg.offset()
                        ),
                    })
                }
                BadDataPolicy::Drop => {
                    tracing::warn!(topic, partition = msg.partition(), offset = msg.offset(), stage, reason = %reason, "dropping bad record");
                    stats.dropped += 1;
                }
                BadDataPolicy::DeadLetter => {
                    tracing::warn!(topic, partition = msg.partition(), offset = msg.offset(), stage, reason = %reason, "dead-lettering bad record");
                    send_dead_letter(
                        &self.producer,
                        dead_letter(msg, &self.service, stage, &reason),
                    )
                    .await?;
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[topic, stage])
                        .inc();
                    stats.dead_lettered += 1;
                }
            },
        }
        if let Some(o) = handler.committable(msg.partition(), msg.offset()) {
            // Storing fails only for a partition this consumer no longer owns (a rebalance
            // took it while the record was in flight): its new owner re-reads from the last
            // commit, so the outputs are repeated, never lost. Stopping here would turn a
            // rebalance under load into a crash.
            if let Err(e) = self.consumer.store_offset(topic, msg.partition(), o) {
                tracing::warn!(topic, partition = msg.partition(), offset = o, error = %e, "offset not stored: partition no longer assigned; its new owner re-reads");
            }
        }
        // Its outputs are acknowledged; what the handler still holds (an open bucket) comes
        // out with a later record, so the record itself is done.
        crate::progress::settled(topic, msg.partition(), msg.offset() + 1);
        self.metrics
            .processing_seconds
            .with_label_values(&[topic])
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Decodes key and value. A registry outage is waited out (the same bytes will decode
    /// once it is back); any other failure is final and returned as (stage, reason).
    async fn decode(
        &self,
        msg: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Result<Incoming<K, V>, (&'static str, String)>, StreamError> {
        let Some(key_bytes) = msg.key() else {
            return Ok(Err((
                "decode",
                "record has no key; keys are entity ids".into(),
            )));
        };
        let Some(value_bytes) = msg.payload() else {
            return Ok(Err((
                "decode",
                "record has no value (tombstone on a stream topic)".into(),
            )));
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let decoded = match self.input.decode_key(key_bytes).await {
                Err(e) => Err(("key", e)),
                Ok(key) => match self.input.decode_value(value_bytes).await {
                    Err(e) => Err(("value", e)),
                    Ok(value) => Ok(Incoming {
                        key,
                        value,
                        partition: msg.partition(),
                        offset: msg.offset(),
                    }),
                },
            };
            let err = match decoded {
                Ok(incoming) => return Ok(Ok(incoming)),
                Err(err) => err,
            };
            if !err.1.is_retryable() {
                return Ok(Err(("decode", format!("{}: {}", err.0, err.1))));
            }
            tracing::warn!(error = %err.1, "schema registry unavailable; retrying decode");
            tokio::select! {
                _ = shutdown.cancelled() => return Err(StreamError::Cancelled("waiting for the schema registry")),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
