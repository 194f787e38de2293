//! librdkafka clients configured as docs/architecture.md describes.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::config::KafkaSettings;
use crate::StreamError;

/// Base client configuration: bootstrap servers plus pass-through properties.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.bootstrap_servers);
    // IPv4 loopback brokers advertise 127.0.0.1; do not let librdkafka try ::1 first.
    c.set("broker.address.family", "v4");
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    for (k, v) in settings.security_properties() {
        c.set(k, v);
    }
    c
}

/// An idempotent producer whose partitioner agrees with Java clients on key → partition.
pub fn producer(settings: &KafkaSettings) -> Result<FutureProducer, StreamError> {
    producer_config(settings)
        .create()
        .map_err(|e| StreamError::kafka("creating producer", e))
}

/// The configuration of [`producer`]: the client's, the producer's defaults, then
/// `producer_properties`.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut c = client_config(settings);
    // A consumer property set for every client would only earn a configuration warning here.
    c.remove("fetch.wait.max.ms");
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000");
    for (k, v) in &settings.producer_properties {
        c.set(k, v);
    }
    c
}

/// A group consumer for at-least-once processing: offsets are stored by the processor only
/// after outputs are acknowledged, and the stored offsets are auto-committed.
pub fn group_consumer(
    settings: &KafkaSettings,
    group_id: &str,
) -> Result<StreamConsumer, StreamError> {
    group_consumer_with_context(
        settings,
        group_id,
        rdkafka::consumer::DefaultConsumerContext,
    )
}

/// [`group_consumer`] with a context of the caller's (to observe rebalances).
pub fn group_consumer_with_context<C: rdkafka::consumer::ConsumerContext + 'static>(
    settings: &KafkaSettings,
    group_id: &str,
    context: C,
) -> Result<StreamConsumer<C>, StreamError> {
    let mut c = client_config(settings);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("enable.partition.eof", "false");
    default_fetch_wait(&mut c, settings, "10");
    c.create_with_context(context)
        .map_err(|e| StreamError::kafka("creating consumer", e))
}

/// Commits the offsets stored so far, synchronously: the last step of a clean stop. Nothing
/// stored is not an error; a failure is logged, because what was not committed is simply
/// delivered again and recognised by the idempotent effects.
pub fn commit_stored<C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
) {
    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        Ok(())
        | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => {
            tracing::warn!(error = %e, "final commit failed; the uncommitted records will be re-delivered")
        }
    }
}

/// A consumer that reads assigned partitions and never commits (table restore, tools).
pub fn reader(settings: &KafkaSettings) -> Result<StreamConsumer, StreamError> {
    let mut c = client_config(settings);
    c.set("group.id", "umbra-reader-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    default_fetch_wait(&mut c, settings, "100");
    c.create()
        .map_err(|e| StreamError::kafka("creating reader", e))
}

/// How long the broker may hold a fetch that has no data yet, unless the configuration says
/// otherwise. librdkafka's 500 ms default is a latency floor with brokers (Nisshi among them)
/// that answer a waiting fetch only when it expires: group consumers decide on the request
/// path and wait 10 ms; table and history readers 100 ms.
fn default_fetch_wait(c: &mut ClientConfig, settings: &KafkaSettings, ms: &str) {
    if !settings.properties.contains_key("fetch.wait.max.ms") {
        c.set("fetch.wait.max.ms", ms);
    }
}

/// Remembers the connection errors librdkafka reports that retrying will not cure: a
/// refused login or a failed TLS handshake.
#[derive(Default)]
struct ProbeContext {
    refused: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let auth = error.rdkafka_error_code()
            == Some(rdkafka::types::RDKafkaErrorCode::Authentication)
            || reason.contains("SASL")
            || reason.contains("SSL handshake failed");
        if auth {
            *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        } else {
            tracing::debug!(error = %error, reason, "kafka client error while connecting");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// Waits until the broker answers a metadata request, or fails with a clear message: the
/// broker refusing the credentials or the TLS handshake is said at once, naming the user and
/// the settings to check (never the password).
pub async fn wait_for_broker(settings: &KafkaSettings) -> Result<(), StreamError> {
    let settings = settings.clone();
    let timeout = Duration::from_millis(settings.connect_timeout_ms.max(1));
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<ProbeContext> = client_config(&settings)
            .create_with_context(ProbeContext::default())
            .map_err(|e| StreamError::kafka("creating client", e))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let attempt = consumer.fetch_metadata(None, left.min(Duration::from_millis(500)));
            // Serve the error events the attempt raised.
            let _ = consumer.poll(Duration::ZERO);
            if let Some(reason) = consumer
                .context()
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return Err(StreamError::BrokerRefused {
                    bootstrap: settings.bootstrap_servers.clone(),
                    user: settings.sasl_username.clone(),
                    detail: reason,
                });
            }
            match attempt {
                Ok(_) => return Ok(()),
                Err(e) if left.is_zero() => {
                    return Err(StreamError::BrokerUnreachable {
                        bootstrap: settings.bootstrap_servers.clone(),
                        detail: e.to_string(),
                    })
                }
                Err(_) => {}
            }
        }
    })
    .await
    .map_err(|e| StreamError::Internal(format!("join: {e}")))?
}

/// Partition ids of a topic, or an error naming the topic when it does not exist.
pub async fn partitions(settings: &KafkaSettings, topic: &str) -> Result<Vec<i32>, StreamError> {
    let settings = settings.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&settings)
            .create()
            .map_err(|e| StreamError::kafka("creating client", e))?;
        let md = consumer
            .fetch_metadata(
                Some(&topic),
                Duration::from_millis(settings.connect_timeout_ms.max(1)),
            )
            .map_err(|e| StreamError::BrokerUnreachable {
                bootstrap: settings.bootstrap_servers.clone(),
                detail: e.to_string(),
            })?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if parts.is_empty() {
            return Err(StreamError::MissingTopic(topic));
        }
        Ok(parts)
    })
    .await
    .map_err(|e| StreamError::Internal(format!("join: {e}")))?
}

/// Sets `umbra_consumer_lag{topic,partition}` (high watermark minus position) for the
/// partitions of `topic` that `consumer` holds, every 5 s until `shutdown`.
pub fn spawn_lag_reporter<C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: std::sync::Arc<rdkafka::consumer::StreamConsumer<C>>,
    topic: String,
    metrics: crate::metrics::Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let c = consumer.clone();
            let t = topic.clone();
            let lags = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                if let Ok(pos) = c.position() {
                    for e in pos.elements_for_topic(&t) {
                        if let (rdkafka::Offset::Offset(p), Ok((_, high))) = (
                            e.offset(),
                            c.fetch_watermarks(&t, e.partition(), Duration::from_secs(2)),
                        ) {
                            out.push((e.partition(), (high - p).max(0)));
                        }
                    }
                }
                out
            })
            .await
            .unwrap_or_default();
            for (p, lag) in lags {
                metrics
                    .lag
                    .with_label_values(&[&topic, &p.to_string()])
                    .set(lag);
            }
        }
    })
}

/// High watermarks of `partitions`, read once: the restore target.
pub async fn end_offsets(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, StreamError> {
    let mut out = HashMap::new();
    for p in partitions {
        let (_low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .map_err(|e| StreamError::kafka(format!("reading end offsets of {topic}"), e))?;
        out.insert(*p, high);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_properties_come_last_and_consumer_ones_are_left_out() {
        let mut s = KafkaSettings::default();
        s.properties.insert("fetch.wait.max.ms".into(), "10".into());
        assert_eq!(producer_config(&s).get("enable.idempotence"), Some("true"));
        assert_eq!(producer_config(&s).get("fetch.wait.max.ms"), None);
        s.producer_properties
            .insert("enable.idempotence".into(), "false".into());
        s.producer_properties
            .insert("max.in.flight.requests.per.connection".into(), "1".into());
        let c = producer_config(&s);
        assert_eq!(c.get("enable.idempotence"), Some("false"));
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(c.get("acks"), Some("all"));
    }
}
