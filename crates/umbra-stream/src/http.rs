//! `/healthz` (the process runs), `/readyz` (every readiness gate is open: tables restored,
//! consumers started), `/metrics` (Prometheus text), and for a driver of the trace clock
//! `GET /progress` and `POST /clock` ([`crate::progress`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::StreamError;

type Gate = (String, Arc<AtomicBool>);

/// A set of named gates; the service is ready when all are open.
#[derive(Clone, Default)]
pub struct Readiness {
    gates: Arc<Mutex<Vec<Gate>>>,
}

impl Readiness {
    /// Adds a closed gate named `name` and returns the flag that opens it.
    pub fn gate(&self, name: impl Into<String>) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.into(), flag.clone()));
        flag
    }

    /// Names of the gates still closed.
    pub fn waiting_for(&self) -> Vec<String> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// True when every gate is open (and there is at least one).
    pub fn is_ready(&self) -> bool {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        !gates.is_empty() && gates.iter().all(|(_, f)| f.load(Ordering::Acquire))
    }
}

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: Metrics,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.readiness.is_ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: waiting for {}\n",
                s.readiness.waiting_for().join(", ")
            ),
        )
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn progress() -> Json<crate::progress::Report> {
    Json(crate::progress::report())
}

/// The body of `POST /clock`.
#[derive(serde::Deserialize)]
struct SetClock {
    now_ms: i64,
    /// The driver declares the pipeline settled at `now_ms` ([`crate::progress::mark`]).
    #[serde(default)]
    settled: bool,
}

async fn set_clock(Json(c): Json<SetClock>) -> Json<crate::progress::Report> {
    crate::progress::drive_clock(c.now_ms);
    if c.settled {
        crate::progress::mark(c.now_ms);
    }
    Json(crate::progress::report())
}

/// Binds `listen` and serves the endpoints, plus the service's own `extra` routes (the fleet
/// simulator's fault API), until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    readiness: Readiness,
    metrics_: Metrics,
    shutdown: CancellationToken,
    extra: Router,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StreamError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StreamError::Http {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StreamError::Http {
        addr: listen,
        source,
    })?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/progress", get(progress))
        .route("/clock", post(set_clock))
        .with_state(AppState {
            readiness,
            metrics: metrics_,
        })
        .merge(extra);
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "http endpoint failed");
        }
    });
    Ok((addr, handle))
}
