//! Traces and metrics across services. Traces: the services export OTLP (http/json, configured only by the
//! standard `OTEL_*` variables) to a receiver this test runs on 127.0.0.1, and one trace runs
//! from raw telemetry through ingest, forecast and the shadow manager, and another from a
//! request through the interceptor to its decision. Every span of a trace hangs from the
//! test's root or from another span of it, and every `process <topic>` span links to the
//! `send <topic>` span of the service before it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use rdkafka::message::OwnedHeaders;
use serde_json::Value;
use umbra_integration::{free_port, Service, Stack};
use umbra_schemas::*;
use umbra_stream::processor::{send, Output};
use umbra_stream::telemetry::with_headers;

const T0_MS: i64 = 1_372_636_800_000;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    kind: i64,
    links: Vec<String>,
}

/// A minimal OTLP/HTTP JSON trace receiver.
async fn receiver() -> anyhow::Result<(String, Arc<Mutex<Vec<Span>>>)> {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let sink = sink.clone();
            async move {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let mut got = Vec::new();
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for s in ss["spans"].as_array().into_iter().flatten() {
                            let text = |k: &str| s[k].as_str().unwrap_or_default().to_lowercase();
                            got.push(Span {
                                service: service.clone(),
                                trace: text("traceId"),
                                id: text("spanId"),
                                parent: text("parentSpanId"),
                                name: text("name"),
                                kind: s["kind"].as_i64().unwrap_or_default(),
                                links: s["links"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|l| l["spanId"].as_str().map(str::to_lowercase))
                                    .collect(),
                            });
                        }
                    }
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).extend(got);
                "{}"
            }
        }),
    );
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://127.0.0.1:{port}"), spans))
}

fn traceparent(trace: &str, span: &str) -> OwnedHeaders {
    with_headers(
        OwnedHeaders::new(),
        &[("traceparent".into(), format!("00-{trace}-{span}-01"))],
    )
}

fn of_trace(spans: &Arc<Mutex<Vec<Span>>>, trace: &str) -> Vec<Span> {
    spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|s| s.trace == trace)
        .cloned()
        .collect()
}

/// Every span's parent is the root or a span of the trace; every consumer span links to its
/// producer: the root, or a `send` span of its topic in the trace.
fn continuity(spans: &[Span], root: &str) -> Result<(), String> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    for s in spans {
        if !(s.parent == root || ids.contains(s.parent.as_str())) {
            return Err(format!(
                "{} ({}) hangs from {}, outside the trace",
                s.name, s.service, s.parent
            ));
        }
        if s.name.starts_with("process ") {
            if s.kind != 5 || s.links.len() != 1 {
                return Err(format!(
                    "{}: not a consumer span linked to its producer",
                    s.name
                ));
            }
            let producer = &s.links[0];
            let send = s.name.replacen("process", "send", 1);
            if !(producer == root || spans.iter().any(|p| &p.id == producer && p.name == send)) {
                return Err(format!(
                    "{} links to {producer}, not to a {send} span",
                    s.name
                ));
            }
        }
        if s.name.starts_with("send ") && s.kind != 4 {
            return Err(format!("{}: not a producer span", s.name));
        }
    }
    Ok(())
}

fn hops(spans: &[Span]) -> BTreeSet<(String, String)> {
    spans
        .iter()
        .map(|s| (s.service.clone(), s.name.clone()))
        .collect()
}

async fn wait_for(
    spans: &Arc<Mutex<Vec<Span>>>,
    trace: &str,
    root: &str,
    want: &[(String, String)],
    logs: &[&Service],
) -> Vec<Span> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = of_trace(spans, trace);
        let have = hops(&got);
        // Spans arrive in batches as they end: wait until the trace is whole.
        let whole = continuity(&got, root);
        if want.iter().all(|w| have.contains(w)) && whole.is_ok() {
            return got;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|s| s.log_text()).collect();
            panic!(
                "trace {trace} lacks {:?} or is broken ({whole:?}); has {have:?}\nlogs:\n{}",
                want.iter()
                    .filter(|w| !have.contains(*w))
                    .collect::<Vec<_>>(),
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dashboard_queries() -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/umbra.json");
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

/// Every `umbra_*` metric a query reads, without the histogram suffixes.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("umbra_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            out.insert(name.trim_end_matches("_bucket").to_string());
        }
    }
    out
}

/// The queries as recording rules through `promtool check rules` (Debian's prometheus
/// package; `make test` installs it).
fn check_promql(exprs: &[String]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: umbra:dashboard_{i}\n        expr: '{}'\n",
            e.replace('\'', "''")
        ));
    }
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules)?;
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("promtool");
    let out = std::process::Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn scrape(s: &Service) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{}/metrics", s.http))
        .await?
        .text()
        .await?)
}

/// (labels, value) of every sample of the metric whose lines start with `prefix`.
fn series(text: &str, prefix: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            Some((labels.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn one_trace_runs_from_telemetry_to_shadows_and_from_request_to_decision(
) -> anyhow::Result<()> {
    let (endpoint, spans) = receiver().await?;
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let days = 3;
    let now_wall = umbra_stream::now_millis().to_string();
    let origin = (T0_MS + days * 86_400_000).to_string();
    let common: Vec<(&str, &str)> = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // The services live at the end of the replayed history.
        ("UMBRA_CLOCK__ORIGIN_WALL_MS", &now_wall),
        ("UMBRA_CLOCK__ORIGIN_TRACE_MS", &origin),
    ];
    let with = |own: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        own.iter().copied().chain(common.iter().copied()).collect()
    };
    let mut services = vec![
        Service::start(
            &stack,
            "fleet-sim",
            &p,
            &with(umbra_integration::pipeline::SIM_ENV),
        )?,
        Service::start(
            &stack,
            "ingest",
            &p,
            &with(&[("UMBRA_SERVICE__IDLE_FLUSH_MS", "1000")]),
        )?,
        Service::start(
            &stack,
            "forecast",
            &p,
            &with(&[
                ("UMBRA_SERVICE__REFIT_INTERVAL_MS", "500"),
                ("UMBRA_SERVICE__MODELS", "[\"seasonal-naive\"]"),
                ("UMBRA_SERVICE__BACKTEST_ORIGINS", "1"),
            ]),
        )?,
        Service::start(
            &stack,
            "shadow-manager",
            &p,
            &with(umbra_integration::pipeline::MANAGER_ENV),
        )?,
        Service::start(&stack, "interceptor", &p, &with(&[]))?,
    ];
    for s in &mut services {
        s.wait_ready(Duration::from_secs(150)).await?;
    }
    let producer = stack.producer()?;

    // Telemetry: three days of samples, all carried by one trace of the test's.
    let (trace, root) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let raw: Output<WorkloadKey, UsageSample> =
        Output::new(stack.registry.clone(), format!("{p}umbra.usage.raw")).await?;
    let sends = (0..days * 288).map(|i| {
        let mut s = UsageSample::example();
        s.workload_id = "vm-traced".into();
        s.sample_time = T0_MS + i * 300_000;
        s.cpu_millicores = 500.0 + 400.0 * ((i % 288) as f64 / 288.0 * std::f64::consts::TAU).sin();
        let emit = raw
            .record(
                &WorkloadKey {
                    workload_id: "vm-traced".into(),
                },
                &s,
            )
            .expect("encode");
        let producer = producer.clone();
        async move { send(&producer, &emit, traceparent(trace, root)).await }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    let want = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(svc, name)| (format!("umbra-{svc}"), name.replace("{p}", &p)))
            .collect()
    };
    let telemetry = want(&[
        ("ingest", "process {p}umbra.usage.raw"),
        ("ingest", "send {p}umbra.usage.series"),
        ("forecast", "process {p}umbra.usage.series"),
        ("forecast", "send {p}umbra.forecasts"),
        ("shadow-manager", "process {p}umbra.forecasts"),
        ("shadow-manager", "send {p}umbra.shadow.table"),
    ]);
    let refs: Vec<&Service> = services.iter().collect();
    let got = wait_for(&spans, trace, root, &telemetry, &refs).await;
    assert!(got.len() >= telemetry.len());

    // A request: its own trace, through the interceptor to its decision.
    let (trace2, root2) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let requests: Output<WorkloadKey, WorkloadRequest> = Output::new(
        stack.registry.clone(),
        format!("{p}umbra.workload.requests"),
    )
    .await?;
    let req = WorkloadRequest {
        request_id: "traced-request".into(),
        workload_id: "vm-traced".into(),
        labels: Default::default(),
        resources: Resources {
            cpu_millicores: 200,
            memory_bytes: 1 << 28,
            disk_io_bytes_per_s: 0,
        },
        requested_at: umbra_stream::now_millis(),
    };
    send(
        &producer,
        &requests.record(
            &WorkloadKey {
                workload_id: "vm-traced".into(),
            },
            &req,
        )?,
        traceparent(trace2, root2),
    )
    .await?;
    let decision = want(&[
        ("interceptor", "process {p}umbra.workload.requests"),
        ("interceptor", "send {p}umbra.allocation.decisions"),
    ]);
    let got2 = wait_for(&spans, trace2, root2, &decision, &refs).await;
    let by_name: HashMap<&str, &Span> = got2.iter().map(|s| (s.name.as_str(), s)).collect();
    let process = by_name[format!("process {p}umbra.workload.requests").as_str()];
    assert_eq!(
        process.parent, root2,
        "the request's span continues the producer's"
    );

    // Metrics the dashboard reads: decision latency by outcome, decisions by outcome,
    // consumer lag per partition, shadows by status.
    let interceptor = &services[4];
    let manager = &services[3];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(interceptor).await?;
        let lag_partitions = series(&text, "umbra_consumer_lag{")
            .iter()
            .filter(|(labels, _)| labels.contains(&format!("topic=\"{p}umbra.workload.requests\"")))
            .count();
        let decided: f64 = series(&text, "umbra_decision_latency_seconds_count{")
            .iter()
            .map(|s| s.1)
            .sum();
        let counted: f64 = series(&text, "umbra_decisions_total{")
            .iter()
            .map(|s| s.1)
            .sum();
        let shadows: f64 = series(&scrape(manager).await?, "umbra_shadows{")
            .iter()
            .map(|s| s.1)
            .sum();
        if lag_partitions > 0 && decided >= 1.0 && counted >= 1.0 && shadows >= 1.0 {
            assert!(
                text.contains("umbra_decision_latency_seconds_bucket{"),
                "a histogram"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics missing: lag partitions {lag_partitions}, latency count {decided}, decisions {counted}, shadows {shadows}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The dashboard: every query is valid PromQL (promtool) and reads metrics the services
    // expose. A poison record makes the dead-letter counter appear.
    stack
        .send_raw(
            &producer,
            &format!("{p}umbra.usage.raw"),
            Some(b"k"),
            Some(b"garbage"),
        )
        .await?;
    let exprs = dashboard_queries();
    check_promql(&exprs)?;
    let mut exposed = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let missing = loop {
        exposed.clear();
        for s in &services {
            exposed.push_str(&scrape(s).await?);
        }
        let missing: Vec<String> = metric_names(&exprs)
            .into_iter()
            .filter(|m| !exposed.lines().any(|l| l.starts_with(m.as_str())))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics no service exposes: {missing:?}"
    );
    for s in &mut services {
        s.signal("TERM")?;
        s.wait_exit(Duration::from_secs(20)).await?;
    }
    Ok(())
}
