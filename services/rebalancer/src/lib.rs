//! Rebalancer: moves shadows off overloaded hosts.
//!
//! This version connects, registers its schemas, restores the state it needs and reports
//! ready; its decisions come with the service's own issue.

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use umbra_schemas::{DemandForecast, HostKey, HostState, ShadowEntry, WorkloadKey};
use umbra_stream::config::ServiceConfig;
use umbra_stream::service::Runtime;
use umbra_stream::StreamError;

/// Service name: consumer group, metrics label, dead-letter header.
pub const NAME: &str = "rebalancer";

/// Settings of this service (`[service]`); none yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {}

/// Full configuration of the service.
pub type Config = ServiceConfig<Settings>;

/// Runs the service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamError> {
    let rt = Runtime::start(NAME, config, shutdown.clone()).await?;
    let shadow_table = rt
        .table::<WorkloadKey, ShadowEntry>("umbra.shadow.table")
        .await?;
    let host_state = rt.table::<HostKey, HostState>("umbra.host.state").await?;
    let forecasts = rt
        .table::<WorkloadKey, DemandForecast>("umbra.forecasts")
        .await?;
    shadow_table.wait_ready(&shutdown).await?;
    tracing::info!(
        rows = shadow_table.read().len(),
        "umbra.shadow.table restored"
    );
    host_state.wait_ready(&shutdown).await?;
    tracing::info!(rows = host_state.read().len(), "umbra.host.state restored");
    forecasts.wait_ready(&shutdown).await?;
    tracing::info!(rows = forecasts.read().len(), "umbra.forecasts restored");
    shutdown.cancelled().await;
    Ok(())
}
