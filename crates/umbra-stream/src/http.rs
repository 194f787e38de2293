//! `/healthz` (the process runs), `/readyz` (every readiness gate is open: tables restored,
//! consumers started), `/metrics` (Prometheus text), and for a driver of the trace clock
//! `GET /progress` and `POST /clock` ([`crate::progress`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::StreamError;

/// One condition of readiness: closed until opened, then open for good. Clones share it, and
/// a task can await its opening instead of polling it.
#[derive(Clone, Debug)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            open: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl Gate {
    /// Opens the gate (again: a no-op) and wakes whoever awaits it.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// True once opened.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Resolves once the gate is open (at once if it is).
    pub async fn opened(&self) {
        let mut rx = self.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// What a gate stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GateKind {
    /// An input restored to the end offsets read at start: decisions wait for these.
    Input,
    /// A consumer subscribed: the service is ready once these are open too, but a service
    /// may start its consumer only after its inputs (the interceptor does).
    Consumer,
}

/// A set of named gates; the service is ready when all are open.
#[derive(Clone, Default)]
pub struct Readiness {
    gates: Arc<Mutex<Vec<(String, GateKind, Gate)>>>,
}

impl Readiness {
    fn add(&self, name: String, kind: GateKind) -> Gate {
        let gate = Gate::default();
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, kind, gate.clone()));
        gate
    }

    /// Adds a closed gate for an input named `name` and returns it, to open once the input
    /// is restored.
    pub fn gate(&self, name: impl Into<String>) -> Gate {
        self.add(name.into(), GateKind::Input)
    }

    /// Adds a closed gate for a consumer named `name`, to open once it is subscribed.
    pub fn consumer_gate(&self, name: impl Into<String>) -> Gate {
        self.add(name.into(), GateKind::Consumer)
    }

    /// Names of the gates still closed.
    pub fn waiting_for(&self) -> Vec<String> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, _, g)| !g.is_open())
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    /// True when every gate is open (and there is at least one).
    pub fn is_ready(&self) -> bool {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        !gates.is_empty() && gates.iter().all(|(_, _, g)| g.is_open())
    }

    fn first_closed(&self, of: Option<GateKind>) -> Option<Gate> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, k, g)| of.is_none_or(|of| of == *k) && !g.is_open())
            .map(|(_, _, g)| g.clone())
    }

    async fn wait(&self, of: Option<GateKind>) {
        // A gate added while this waits is waited for too: each round takes a fresh look.
        while let Some(gate) = self.first_closed(of) {
            gate.opened().await;
        }
    }

    /// Resolves once every gate added so far (and any added meanwhile) is open.
    pub async fn ready(&self) {
        self.wait(None).await;
    }

    /// Resolves once every input gate is open: consumer gates aside.
    pub async fn inputs_restored(&self) {
        self.wait(Some(GateKind::Input)).await;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn resolves_within<F: std::future::Future>(f: F, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), f)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn ready_waits_for_every_gate_even_one_added_while_waiting() {
        let r = Readiness::default();
        let a = r.gate("restore a");
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.ready().await }
        });
        a.open();
        // A gate added after the wait began: the wait is not over until it opens too.
        let b = r.gate("restore b");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert_eq!(r.waiting_for(), ["restore b"]);
        b.open();
        assert!(resolves_within(waiter, 1_000).await);
        assert!(r.is_ready());
    }

    #[tokio::test]
    async fn inputs_restored_leaves_consumer_gates_aside() {
        let r = Readiness::default();
        let input = r.gate("table t");
        let consumer = r.consumer_gate("consumer c");
        assert!(!resolves_within(r.inputs_restored(), 20).await);
        input.open();
        assert!(resolves_within(r.inputs_restored(), 1_000).await);
        // Ready as a whole only once the consumer is subscribed too.
        assert!(!r.is_ready());
        assert!(!resolves_within(r.ready(), 20).await);
        consumer.open();
        assert!(resolves_within(r.ready(), 1_000).await);
    }

    #[tokio::test]
    async fn an_open_gate_stays_open_and_answers_at_once() {
        let g = Gate::default();
        let clone = g.clone();
        clone.open();
        clone.open();
        assert!(g.is_open());
        assert!(resolves_within(g.opened(), 20).await);
        // No gate at all: not ready (the endpoint says so), though nothing is awaited.
        assert!(!Readiness::default().is_ready());
    }
}
