//! Prometheus metrics every service exposes. Names are stable; labels are low-cardinality
//! (topic names, partitions, stages), never entity ids.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The runtime's metrics, registered in a registry of their own so that several services can
/// live in one test process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records read from input topics.
    pub consumed: IntCounterVec,
    /// Records acknowledged on output topics.
    pub produced: IntCounterVec,
    /// Records sent to a dead-letter topic, by source topic and stage.
    pub dead_lettered: IntCounterVec,
    /// High watermark minus position, by topic and partition.
    pub lag: IntGaugeVec,
    /// Time from receiving an input to having every output acknowledged.
    pub processing_seconds: HistogramVec,
    /// Rows held by a table materializer.
    pub table_rows: IntGaugeVec,
    /// Rows a table held when its restore phase ended: what a restart recovered, which a
    /// service's own writes after restore (the shadow manager's) do not overwrite.
    pub table_restored_rows: IntGaugeVec,
}

impl Metrics {
    /// A service's own counter, registered beside the standard metrics (`umbra_<name>`).
    /// Call once per name at start-up; labels must be low-cardinality.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        if let Err(e) = self.registry.register(Box::new(c.clone())) {
            tracing::warn!(metric = name, error = %e, "metric not registered");
        }
        c
    }

    /// A service's own gauge, registered beside the standard metrics (`umbra_<name>`).
    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        if let Err(e) = self.registry.register(Box::new(g.clone())) {
            tracing::warn!(metric = name, error = %e, "metric not registered");
        }
        g
    }

    /// A service's own histogram in seconds, registered beside the standard metrics.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        if let Err(e) = self.registry.register(Box::new(h.clone())) {
            tracing::warn!(metric = name, error = %e, "metric not registered");
        }
        h
    }

    /// Fresh metrics for `service`.
    pub fn new(service: &str) -> Self {
        let registry = Registry::new_custom(
            Some("umbra".into()),
            Some([("service".to_string(), service.to_string())].into()),
        )
        .unwrap_or_default();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let consumed = counter(
            "records_consumed_total",
            "Records read from input topics.",
            &["topic"],
        );
        let produced = counter(
            "records_produced_total",
            "Records acknowledged on output topics.",
            &["topic"],
        );
        let dead_lettered = counter(
            "records_dead_lettered_total",
            "Records sent to a dead-letter topic.",
            &["topic", "stage"],
        );
        let lag = IntGaugeVec::new(
            Opts::new("consumer_lag", "High watermark minus consumer position."),
            &["topic", "partition"],
        )
        .unwrap_or_else(|e| panic!("metric consumer_lag: {e}"));
        registry
            .register(Box::new(lag.clone()))
            .unwrap_or_else(|e| panic!("metric consumer_lag: {e}"));
        let processing_seconds = HistogramVec::new(
            HistogramOpts::new(
                "processing_seconds",
                "Input received to outputs acknowledged.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            &["topic"],
        )
        .unwrap_or_else(|e| panic!("metric processing_seconds: {e}"));
        registry
            .register(Box::new(processing_seconds.clone()))
            .unwrap_or_else(|e| panic!("metric processing_seconds: {e}"));
        let table_rows = IntGaugeVec::new(
            Opts::new("table_rows", "Rows held by a table materializer."),
            &["topic"],
        )
        .unwrap_or_else(|e| panic!("metric table_rows: {e}"));
        registry
            .register(Box::new(table_rows.clone()))
            .unwrap_or_else(|e| panic!("metric table_rows: {e}"));
        let table_restored_rows = IntGaugeVec::new(
            Opts::new(
                "table_restored_rows",
                "Rows a table materializer held when its restore phase ended.",
            ),
            &["topic"],
        )
        .unwrap_or_else(|e| panic!("metric table_restored_rows: {e}"));
        registry
            .register(Box::new(table_restored_rows.clone()))
            .unwrap_or_else(|e| panic!("metric table_restored_rows: {e}"));
        Self {
            registry,
            consumed,
            produced,
            dead_lettered,
            lag,
            processing_seconds,
            table_rows,
            table_restored_rows,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
