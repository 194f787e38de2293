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
use umbra_stream::config::KafkaSettings;
use umbra_stream::secret::Secret;

/// Settings of the dev registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// The Kafka holding the `_schemas` topic (security settings included).
    pub kafka: KafkaSettings,
    /// Name of the topic schemas persist in.
    pub topic: String,
    /// Users allowed in with HTTP basic authentication; empty: no authentication.
    pub users: Vec<(String, Secret)>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            kafka: KafkaSettings::default(),
            topic: "_schemas".into(),
            users: Vec::new(),
        }
    }
}

/// Reads a users file for basic authentication: one `user:password` per line; blank lines
/// and lines starting with `#` are skipped. Errors name the file and line, never a password.
pub fn read_users(path: &std::path::Path) -> Result<Vec<(String, Secret)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => {
                users.push((u.to_string(), Secret::new(p)));
            }
            _ => {
                return Err(format!(
                    "users file {} line {}: expected user:password",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    if users.is_empty() {
        return Err(format!("users file {} names no user", path.display()));
    }
    Ok(users)
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
    let store = KafkaStore::connect(&config.kafka, &config.topic).await?;
    let mut state = RegistryState::default();
    let restored = store.restore(&mut state).await?;
    tracing::info!(records = restored, schemas = state.schema_count(), topic = %config.topic, "registry restored");
    let mut app = router(Arc::new(api::Shared::new(state, store)));
    if !config.users.is_empty() {
        app = api::basic_auth(app, Arc::new(config.users.clone()));
    }
    tracing::info!(listen = %config.listen, users = config.users.len(), "registry listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(ServeError::Http)
}
