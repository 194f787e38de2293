//! Confluent wire format: magic byte 0, the writer schema's 4-byte big-endian registry id,
//! then the Avro body. Decoding resolves the writer schema (fetched by id, cached) against
//! the reader's own schema, so producers may evolve their schemas compatibly.

use std::marker::PhantomData;
use std::sync::Arc;

use apache_avro::Schema;
use umbra_schemas::{from_datum, from_datum_same, to_datum, Record};

use crate::registry::{RegistryError, SchemaRegistry};
use crate::StreamError;

/// Why bytes could not be decoded; everything but `RegistryUnavailable` is permanent and
/// goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Not Confluent framing: too short or a wrong magic byte.
    Framing,
    /// The schema id is not in the registry.
    UnknownSchemaId,
    /// The writer schema cannot be resolved to the reader's (another record type).
    Incompatible,
    /// The body does not decode with its writer schema.
    Malformed,
    /// The registry could not be asked; retry, do not dead-letter.
    RegistryUnavailable,
}

/// A decode failure with its reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct DecodeError {
    /// Category.
    pub kind: DecodeErrorKind,
    /// Human-readable reason.
    pub detail: String,
}

impl DecodeError {
    fn new(kind: DecodeErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == DecodeErrorKind::RegistryUnavailable
    }
}

/// Splits Confluent framing into (schema id, body).
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if bytes.len() < 5 {
        return Err(DecodeError::new(
            DecodeErrorKind::Framing,
            format!(
                "{} bytes is too short for Confluent framing (magic byte + 4-byte schema id)",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 {
        return Err(DecodeError::new(
            DecodeErrorKind::Framing,
            format!("magic byte is {}, expected 0", bytes[0]),
        ));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[5..]))
}

/// Prepends Confluent framing to an Avro body.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Encoder and decoder of one record type under one registry subject.
pub struct Codec<T> {
    registry: Arc<dyn SchemaRegistry>,
    subject: String,
    id: u32,
    schema: Schema,
    _t: PhantomData<fn() -> T>,
}

impl<T: Record> Codec<T> {
    /// Registers `T`'s schema under `subject` and returns a codec bound to its id.
    pub async fn register(
        registry: Arc<dyn SchemaRegistry>,
        subject: String,
    ) -> Result<Self, StreamError> {
        let schema = T::SCHEMA.parse()?;
        // A registry that is down for a while (a restart, an outage) is waited for, up to a
        // minute; a refusal or rejected credentials fail at once.
        let mut backoff = std::time::Duration::from_millis(100);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let id = loop {
            match registry.register(&subject, T::SCHEMA.text).await {
                Ok(id) => break id,
                Err(crate::registry::RegistryError::Unavailable(e))
                    if std::time::Instant::now() < deadline =>
                {
                    tracing::warn!(subject = %subject, error = %e, "schema registry unavailable; retrying registration");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(StreamError::Registry(format!(
                        "registering {} under {subject}: {e}",
                        T::SCHEMA.file
                    )))
                }
            }
        };
        Ok(Self {
            registry,
            subject,
            id,
            schema,
            _t: PhantomData,
        })
    }

    /// Registry id of the schema this codec writes with.
    pub fn schema_id(&self) -> u32 {
        self.id
    }

    /// Subject the schema is registered under.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Encodes `value` in Confluent framing.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, StreamError> {
        let body = to_datum(&self.schema, value).map_err(|e| StreamError::Encode {
            type_name: std::any::type_name::<T>(),
            detail: e.to_string(),
        })?;
        Ok(frame(self.id, &body))
    }

    /// The writer schema `id`, waiting out a registry that is down for a while (a restart, an
    /// outage: up to a minute, as registration does) instead of failing the record: a record
    /// skipped or dead-lettered for an outage would be lost for good.
    async fn writer_schema(&self, id: u32) -> Result<Arc<apache_avro::Schema>, DecodeError> {
        let mut backoff = std::time::Duration::from_millis(100);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.registry.schema(id).await {
                Ok(s) => return Ok(s),
                Err(RegistryError::NotFound(_)) => {
                    return Err(DecodeError::new(
                        DecodeErrorKind::UnknownSchemaId,
                        format!("schema id {id} is not in the registry"),
                    ))
                }
                Err(RegistryError::Unavailable(d)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(DecodeError::new(DecodeErrorKind::RegistryUnavailable, d));
                    }
                    tracing::warn!(schema_id = id, error = %d, "schema registry unavailable; retrying the schema lookup");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
                Err(other) => {
                    return Err(DecodeError::new(
                        DecodeErrorKind::UnknownSchemaId,
                        other.to_string(),
                    ))
                }
            }
        }
    }

    /// Decodes Confluent-framed bytes into `T`.
    pub async fn decode(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let (id, body) = unframe(bytes)?;
        if id == self.id {
            // Written with our own schema: deserialize directly. Anything it cannot read takes
            // the resolving path below, which gives the authoritative answer.
            if let Ok(v) = from_datum_same(&self.schema, body) {
                return Ok(v);
            }
        }
        let writer = if id == self.id {
            None
        } else {
            Some(self.writer_schema(id).await?)
        };
        let writer_schema = writer.as_deref().unwrap_or(&self.schema);
        from_datum(writer_schema, &self.schema, body).map_err(|e| {
            let kind = if writer.is_some() {
                DecodeErrorKind::Incompatible
            } else {
                DecodeErrorKind::Malformed
            };
            DecodeError::new(kind, format!("schema id {id} as {}: {e}", T::SCHEMA.file))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::FixedRegistry;
    use umbra_schemas::{HostMetrics, UsageSample};

    async fn codecs() -> (Arc<FixedRegistry>, Codec<UsageSample>, Codec<HostMetrics>) {
        let reg = Arc::new(FixedRegistry::default());
        let a = Codec::<UsageSample>::register(reg.clone(), "t-value".into())
            .await
            .unwrap();
        let b = Codec::<HostMetrics>::register(reg.clone(), "h-value".into())
            .await
            .unwrap();
        (reg, a, b)
    }

    #[tokio::test]
    async fn round_trip_and_poison_kinds() {
        let (_reg, samples, hosts) = codecs().await;
        let s = UsageSample::example();
        let bytes = samples.encode(&s).unwrap();
        assert_eq!(bytes[0], 0);
        assert_eq!(samples.decode(&bytes).await.unwrap(), s);

        let kind = |r: Result<UsageSample, DecodeError>| r.unwrap_err().kind;
        assert_eq!(
            kind(samples.decode(b"garbage!").await),
            DecodeErrorKind::Framing
        );
        assert_eq!(
            kind(samples.decode(&[0, 0]).await),
            DecodeErrorKind::Framing
        );
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] = 1;
        assert_eq!(
            kind(samples.decode(&wrong_magic).await),
            DecodeErrorKind::Framing
        );
        assert_eq!(
            kind(samples.decode(&frame(999, &bytes[5..])).await),
            DecodeErrorKind::UnknownSchemaId
        );
        let other = hosts.encode(&HostMetrics::example()).unwrap();
        assert_eq!(
            kind(samples.decode(&other).await),
            DecodeErrorKind::Incompatible
        );
        assert_eq!(
            kind(
                samples
                    .decode(&frame(samples.schema_id(), &[0xff, 0xff, 0xff]))
                    .await
            ),
            DecodeErrorKind::Malformed
        );
    }

    /// A registry that is down for its first `down` schema lookups.
    struct Flaky {
        inner: FixedRegistry,
        down: std::sync::atomic::AtomicUsize,
        lookups: std::sync::atomic::AtomicUsize,
    }

    impl SchemaRegistry for Flaky {
        fn register<'a>(
            &'a self,
            subject: &'a str,
            schema: &'a str,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<u32, RegistryError>> + Send + 'a>,
        > {
            self.inner.register(subject, schema)
        }
        fn schema<'a>(
            &'a self,
            id: u32,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Arc<Schema>, RegistryError>> + Send + 'a>,
        > {
            use std::sync::atomic::Ordering;
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let still_down = self
                .down
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
                .is_ok();
            if still_down {
                return Box::pin(async {
                    Err(RegistryError::Unavailable("connection refused".into()))
                });
            }
            self.inner.schema(id)
        }
    }

    #[tokio::test]
    async fn a_registry_outage_is_waited_out_not_taken_for_bad_data() {
        let reg = Arc::new(Flaky {
            inner: FixedRegistry::default(),
            down: 2.into(),
            lookups: 0.into(),
        });
        let samples = Codec::<UsageSample>::register(reg.clone(), "t-value".into())
            .await
            .unwrap();
        let hosts = Codec::<HostMetrics>::register(reg.clone(), "h-value".into())
            .await
            .unwrap();
        let other = hosts.encode(&HostMetrics::example()).unwrap();
        // Two failed lookups, then the answer: the record's own fault, not the outage's.
        let e = samples.decode(&other).await.unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Incompatible);
        assert_eq!(reg.lookups.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
