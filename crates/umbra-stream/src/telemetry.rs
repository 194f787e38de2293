//! Structured logs and W3C trace context carried in Kafka headers.
//!
//! Every output record carries a `traceparent` header: a child of the input's trace when the
//! input had one, a new trace otherwise. So a request can be followed across services in any
//! OpenTelemetry backend once an exporter is configured on the tracer provider.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{BorrowedHeaders, Headers, OwnedHeaders};

/// Initialises JSON logs on stderr (level from `RUST_LOG`, default `info`). Safe to call twice.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn provider() -> &'static SdkTracerProvider {
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| SdkTracerProvider::builder().build())
}

struct HeaderExtractor<'a>(Option<&'a BorrowedHeaders>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0?;
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default()
    }
}

struct HeaderInjector(Vec<(String, String)>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// The trace context of an input record and of the span that processes it.
#[derive(Clone)]
pub struct TraceCtx(Context);

impl TraceCtx {
    /// Starts a processing span named `name`, child of the context in `headers` if any.
    pub fn from_input(headers: Option<&BorrowedHeaders>, name: &'static str) -> Self {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let tracer = provider().tracer("umbra");
        let span = tracer.start_with_context(name, &parent);
        Self(parent.with_span(span))
    }

    /// A new root span, for records that originate here (CLI, replay).
    pub fn root(name: &'static str) -> Self {
        let tracer = provider().tracer("umbra");
        let span = tracer.start(name);
        Self(Context::new().with_span(span))
    }

    /// The `traceparent` (and `tracestate`) headers to put on an output.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut inj = HeaderInjector(Vec::new());
        TraceContextPropagator::new().inject_context(&self.0, &mut inj);
        inj.0
    }

    /// Trace id in hex, for logs.
    pub fn trace_id(&self) -> String {
        self.0.span().span_context().trace_id().to_string()
    }
}

/// Appends string headers to `headers`.
pub fn with_headers(mut headers: OwnedHeaders, pairs: &[(String, String)]) -> OwnedHeaders {
    for (k, v) in pairs {
        headers = headers.insert(rdkafka::message::Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    headers
}
