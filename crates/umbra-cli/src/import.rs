//! `umbra import prometheus`: backfills usage series from a Prometheus server's
//! `query_range` API, where users already keep their history (for example container CPU from
//! cAdvisor: `sum by (pod) (rate(container_cpu_usage_seconds_total[5m]))`). Each series'
//! `--workload-label` names the workload; one point per step becomes one usage point of a
//! `--step`-long bucket on `umbra.usage.series`. Series without the label and values that are
//! not finite or negative are skipped and counted, never silently dropped.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context};
use serde::Deserialize;
use umbra_schemas::{Stats, UsagePoint, WorkloadKey};
use umbra_stream::kafka;
use umbra_stream::processor::{send, Output};

use crate::Endpoints;

/// Arguments of `umbra import prometheus`.
#[derive(clap::Args, Debug)]
pub struct PrometheusArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Base URL of the Prometheus server.
    #[arg(long)]
    url: String,
    /// PromQL for CPU use per workload, in cores (see --cpu-unit).
    #[arg(long)]
    query: String,
    /// PromQL for memory use per workload, in bytes.
    #[arg(long)]
    memory_query: Option<String>,
    /// PromQL for disk I/O per workload, in bytes per second.
    #[arg(long)]
    disk_query: Option<String>,
    /// Unit of the CPU query's values.
    #[arg(long, value_enum, default_value = "cores")]
    cpu_unit: CpuUnit,
    /// Start: RFC 3339 or Unix seconds.
    #[arg(long)]
    from: String,
    /// End: RFC 3339 or Unix seconds.
    #[arg(long)]
    to: String,
    /// Step and bucket length, in seconds.
    #[arg(long, default_value_t = 300)]
    step: u32,
    /// Label whose value is the workload id.
    #[arg(long)]
    workload_label: String,
}

/// Unit of CPU values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CpuUnit {
    /// Cores (what `rate(container_cpu_usage_seconds_total[..])` gives).
    Cores,
    /// Millicores.
    Millicores,
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<SeriesJson>,
}

#[derive(Deserialize)]
struct SeriesJson {
    metric: HashMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Parses RFC 3339 or Unix seconds into Unix seconds.
fn instant(s: &str) -> anyhow::Result<f64> {
    if let Ok(v) = s.parse::<f64>() {
        return Ok(v);
    }
    let t = time_from_rfc3339(s)
        .with_context(|| format!("'{s}' is neither Unix seconds nor RFC 3339"))?;
    Ok(t)
}

/// Minimal RFC 3339 (`2024-05-01T00:00:00Z`, optional fraction and offset) to Unix seconds.
fn time_from_rfc3339(s: &str) -> Option<f64> {
    let (date, rest) = s.split_once(['T', ' '])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (clock, offset_s) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0i64)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (c, o) = rest.split_at(i);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    } else {
        (rest, 0)
    };
    let mut c = clock.split(':');
    let (hh, mm) = (
        c.next()?.parse::<i64>().ok()?,
        c.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = c.next().unwrap_or("0").parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 - offset_s) as f64 + ss)
}

/// Runs one range query; returns (workload → time (ms) → value) and how many series lacked
/// the label and how many values were unusable.
async fn query(
    a: &PrometheusArgs,
    promql: &str,
    scale: f64,
) -> anyhow::Result<(BTreeMap<String, BTreeMap<i64, f64>>, usize, usize)> {
    let url = format!("{}/api/v1/query_range", a.url.trim_end_matches('/'));
    let (start, end) = (instant(&a.from)?, instant(&a.to)?);
    if end <= start {
        bail!("--to must be after --from");
    }
    let target = reqwest::Url::parse_with_params(
        &url,
        &[
            ("query", promql.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", format!("{}s", a.step)),
        ],
    )
    .with_context(|| format!("--url '{}' is not a URL", a.url))?;
    let resp = reqwest::get(target)
        .await
        .with_context(|| format!("Prometheus at {url} does not answer"))?;
    let status = resp.status();
    let body: Response = resp.json().await.with_context(|| {
        format!("Prometheus answered {status} with something that is not its API's JSON")
    })?;
    if body.status != "success" {
        bail!(
            "Prometheus refused the query '{promql}': {}",
            body.error.unwrap_or_default()
        );
    }
    let data = body
        .data
        .context("Prometheus answered success without data")?;
    if data.result_type != "matrix" {
        bail!(
            "query '{promql}' gave a {}, expected a range vector (matrix)",
            data.result_type
        );
    }
    let (mut unlabeled, mut unusable) = (0, 0);
    let mut out: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for s in data.result {
        let Some(w) = s.metric.get(&a.workload_label).filter(|w| !w.is_empty()) else {
            unlabeled += 1;
            continue;
        };
        let series = out.entry(w.clone()).or_default();
        for (t, v) in s.values {
            match v.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => {
                    *series.entry((t * 1000.0) as i64).or_default() += v * scale;
                }
                _ => unusable += 1,
            }
        }
    }
    Ok((out, unlabeled, unusable))
}

/// Runs the import; prints what was written and what was skipped.
pub async fn run(a: PrometheusArgs) -> anyhow::Result<()> {
    if a.step == 0 {
        bail!("--step must be positive");
    }
    let cpu_scale = match a.cpu_unit {
        CpuUnit::Cores => 1000.0,
        CpuUnit::Millicores => 1.0,
    };
    let (cpu, mut unlabeled, mut unusable) = query(&a, &a.query, cpu_scale).await?;
    let mut other = |r: (BTreeMap<String, BTreeMap<i64, f64>>, usize, usize)| {
        unlabeled += r.1;
        unusable += r.2;
        r.0
    };
    let memory = match &a.memory_query {
        Some(q) => other(query(&a, q, 1.0).await?),
        None => BTreeMap::new(),
    };
    let disk = match &a.disk_query {
        Some(q) => other(query(&a, q, 1.0).await?),
        None => BTreeMap::new(),
    };
    let one = |v: f64| Stats {
        mean: v,
        p95: v,
        max: v,
    };
    let width = i64::from(a.step) * 1000;
    let mut points = Vec::new();
    for (w, series) in &cpu {
        for (t, v) in series {
            let at = |m: &BTreeMap<String, BTreeMap<i64, f64>>| {
                m.get(w).and_then(|s| s.get(t)).copied().unwrap_or(0.0)
            };
            points.push(UsagePoint {
                workload_id: w.clone(),
                bucket_start: t.div_euclid(width) * width,
                bucket_seconds: a.step as i32,
                sample_count: 1,
                cpu_millicores: one(*v),
                memory_bytes: one(at(&memory)),
                disk_io_bytes_per_s: one(at(&disk)),
                labels: [("source".to_string(), "prometheus".to_string())].into(),
                cpu_capacity_millicores: 0.0,
                memory_capacity_bytes: 0.0,
            });
        }
    }
    let (settings, registry) = crate::tools::connect(&a.endpoints).await?;
    let out: Output<WorkloadKey, UsagePoint> = Output::new(
        registry,
        format!("{}umbra.usage.series", a.endpoints.topic_prefix),
    )
    .await?;
    let producer = kafka::producer(&settings)?;
    for chunk in points.chunks(5_000) {
        let emits: Vec<_> = chunk
            .iter()
            .map(|p| {
                out.record(
                    &WorkloadKey {
                        workload_id: p.workload_id.clone(),
                    },
                    p,
                )
            })
            .collect::<Result<_, _>>()?;
        for r in
            futures::future::join_all(emits.iter().map(|e| send(&producer, e, Default::default())))
                .await
        {
            r?;
        }
    }
    println!(
        "imported {} points of {} workloads to {}; skipped {unlabeled} series without label '{}' and {unusable} values that were not finite non-negative numbers",
        points.len(),
        cpu.len(),
        out.topic(),
        a.workload_label
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_unix_seconds() {
        assert_eq!(instant("1700000000").ok(), Some(1_700_000_000.0));
        assert_eq!(time_from_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            time_from_rfc3339("2023-11-14T22:13:20Z"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            time_from_rfc3339("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000.0)
        );
        assert!(instant("yesterday").is_err());
    }
}
