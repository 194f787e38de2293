//! A small Confluent-compatible Schema Registry for development and tests.
//!
//! It speaks the subset of the Confluent REST API that `schema_registry_converter`,
//! confluent-kafka-python's `SchemaRegistryClient` and Kafka UI call, for Avro schemas only.
//! Every change is written to a compacted `_schemas` topic in Confluent's own record format
//! before it is acknowledged, and the state is rebuilt from that topic at start-up, so ids
//! and versions survive a restart. Production deployments point at a real registry instead.

mod api;
mod state;
mod store;

pub use api::router;
pub use state::{Compatibility, RegistryError, RegistryState};
pub use store::{KafkaStore, StoreError};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Settings of the dev registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// Kafka bootstrap servers holding the `_schemas` topic.
    pub bootstrap_servers: String,
    /// Name of the topic schemas persist in.
    pub topic: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: "_schemas".into(),
        }
    }
}

/// Errors that stop the registry from serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The `_schemas` topic could not be created or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address is taken or not bindable.
    #[error("cannot listen on {addr}: {source} (is another registry already running? pick another port)")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(#[source] std::io::Error),
}

/// Restores the registry from its topic, then serves until `shutdown` is cancelled.
pub async fn run(config: RegistryConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let store = KafkaStore::connect(&config.bootstrap_servers, &config.topic).await?;
    let mut state = RegistryState::default();
    let restored = store.restore(&mut state).await?;
    tracing::info!(records = restored, schemas = state.schema_count(), topic = %config.topic, "registry restored");
    let app = router(Arc::new(api::Shared::new(state, store)));
    tracing::info!(listen = %config.listen, "registry listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(ServeError::Http)
}
