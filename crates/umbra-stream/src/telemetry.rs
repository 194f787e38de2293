//! Structured logs, and OpenTelemetry traces that follow each message across services.
//!
//! Spans follow OpenTelemetry's messaging conventions: a `process <topic>` span (kind
//! consumer) for each input record, child of the producer's context found in the record's
//! `traceparent` header and linked to it; a `send <topic>` span (kind producer) for each
//! output, whose context goes into the output's `traceparent`. So one trace runs from raw
//! telemetry through ingest, forecast and the shadow manager, and from a request through the
//! interceptor to its decision.
//!
//! Export is OTLP over HTTP, configured by the standard variables: it is on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and
//! `OTEL_SDK_DISABLED` is not `true`, `OTEL_TRACES_EXPORTER` not `none`);
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (default) or `http/json`, `OTEL_BSP_*`
//! the batching, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` the resource. Without an
//! endpoint, spans are still made (their ids travel in the headers) and dropped.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
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

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

fn provider() -> &'static SdkTracerProvider {
    PROVIDER.get_or_init(|| SdkTracerProvider::builder().build())
}

fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Sets up trace export for `service` from the `OTEL_*` variables (see the module's
/// documentation). Call once at start-up, before any span; a second call changes nothing.
/// Returns whether spans are exported.
pub fn init_tracing(service: &str) -> bool {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty()));
    let disabled = env_true("OTEL_SDK_DISABLED")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    if !endpoint || disabled || PROVIDER.get().is_some() {
        return false;
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "OTLP trace export not set up (OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or http/json); spans are dropped");
            return false;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(format!("umbra-{service}"));
    }
    let p = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    PROVIDER.set(p).is_ok()
}

/// Exports the spans still batched. Call once the service has stopped.
pub fn shutdown_tracing() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.force_flush() {
            tracing::warn!(error = %e, "flushing spans");
        }
    }
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

struct OneHeader<'a>(Option<&'a str>);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0).flatten()
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

struct HeaderInjector(Vec<(String, String)>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// The W3C header that carries the producer's span context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` header of a record, if it has one.
pub fn traceparent(headers: Option<&BorrowedHeaders>) -> Option<String> {
    HeaderExtractor(headers)
        .get(TRACEPARENT)
        .map(str::to_string)
}

/// The producer's context of an input record (empty when the record carried none): kept
/// with state built from the record, so that work done later continues its trace.
#[derive(Clone, Default)]
pub struct Parent(Context);

impl Parent {
    /// From a record's headers.
    pub fn from_headers(headers: Option<&BorrowedHeaders>) -> Self {
        Self(TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
    }

    /// From a `traceparent` value kept earlier.
    pub fn from_traceparent(traceparent: Option<&str>) -> Self {
        Self(TraceContextPropagator::new().extract(&OneHeader(traceparent)))
    }
}

fn messaging(topic: &str, operation: &'static str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.destination.name", topic.to_string()),
    ]
}

/// The span that processes an input (or a root span), and the context outputs continue.
#[derive(Clone)]
pub struct TraceCtx(Context);

impl TraceCtx {
    /// `process <topic>`: a consumer span, child of `parent` and linked to it.
    pub fn process(parent: &Parent, topic: &str) -> Self {
        let tracer = provider().tracer("umbra");
        let remote = parent.0.span().span_context().clone();
        let mut builder = tracer
            .span_builder(format!("process {topic}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(messaging(topic, "process"));
        if remote.is_valid() {
            builder = builder.with_links(vec![Link::with_context(remote)]);
        }
        let span = builder.start_with_context(&tracer, &parent.0);
        Self(parent.0.with_span(span))
    }

    /// [`TraceCtx::process`] of a record just read from `topic`.
    pub fn from_input(headers: Option<&BorrowedHeaders>, topic: &str) -> Self {
        Self::process(&Parent::from_headers(headers), topic)
    }

    /// A new root span, for work that no input started (a timer, a fault, a CLI command).
    pub fn root(name: &'static str) -> Self {
        let tracer = provider().tracer("umbra");
        let span = tracer.start(name);
        Self(Context::new().with_span(span))
    }

    /// `send <topic>`: a producer span, child of this one; returns the headers that carry it
    /// to the consumer (`traceparent`, `tracestate`).
    pub fn send(&self, topic: &str) -> Vec<(String, String)> {
        let tracer = provider().tracer("umbra");
        let span = tracer
            .span_builder(format!("send {topic}"))
            .with_kind(SpanKind::Producer)
            .with_attributes(messaging(topic, "send"))
            .start_with_context(&tracer, &self.0);
        let cx = self.0.with_span(span);
        let mut inj = HeaderInjector(Vec::new());
        TraceContextPropagator::new().inject_context(&cx, &mut inj);
        cx.span().end();
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
