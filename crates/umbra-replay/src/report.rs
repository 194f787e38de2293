//! The replay's outputs: `summary.json` in the shape the demo issue fixes, and a
//! self-contained HTML report (a table per policy and inline SVG plots, each also written as
//! its own `.svg` file) from whatever the run measured.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::sweep::{CurvePoint, SweepResult};

/// Errors writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("drawing {what}: {detail}")]
    Plot {
        /// Which plot.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The summary could not be serialised.
    #[error("serialising the summary: {0}")]
    Json(#[from] serde_json::Error),
}

/// One policy's row of `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRow {
    /// `umbra`, `reactive`, `static-equal-reserve`, `static-equal-hits` or `oracle`.
    pub policy: String,
    /// Requests (scale-ups).
    pub requests: usize,
    /// Requests placed at once on a reservation.
    pub hits: usize,
    /// hits / requests.
    pub hit_rate: f64,
    /// Median time from request to running, seconds.
    pub placement_delay_p50_s: f64,
    /// 99th percentile of the same, seconds.
    pub placement_delay_p99_s: f64,
    /// Capacity the running replicas used, core-hours.
    pub used_core_hours: f64,
    /// Reserved capacity no request used, core-hours.
    pub unclaimed_core_hours: f64,
    /// Reserved capacity no request used, GiB-hours.
    pub unclaimed_gib_hours: f64,
    /// Minutes hosts spent overloaded.
    pub overload_minutes: f64,
    /// Shadows moved off overloaded hosts.
    pub rebalances: usize,
    /// Requests refused (umbra: by the interceptor or the fleet; the offline baselines place
    /// every request without an admission check, so 0).
    #[serde(default)]
    pub rejected: usize,
    /// Requests with no decision when the run ended.
    #[serde(default)]
    pub undecided: usize,
}

/// Forecast accuracy over the replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastScore {
    /// Mean absolute scaled error.
    pub mase: f64,
    /// Share of actuals inside the 80% interval.
    pub coverage80: f64,
}

/// Decision accounting of umbra's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionCounts {
    /// Requests produced.
    pub requests: usize,
    /// Requests with a decision.
    pub decided: usize,
    /// Requests with more than one decision.
    pub duplicated: usize,
    /// How far behind the trace decisions fell (decided minus requested, trace minutes),
    /// median and 99th percentile: zero in lockstep, the machine's lag in real time.
    #[serde(default)]
    pub behind_trace_minutes_p50: f64,
    /// See `behind_trace_minutes_p50`.
    #[serde(default)]
    pub behind_trace_minutes_p99: f64,
    /// Shadows and pool slots the fleet gave up to place a request by standard allocation.
    #[serde(default)]
    pub preempted_shadows: usize,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How the pipeline was replayed: `lockstep` or `realtime` (docs/replay.md).
    #[serde(default)]
    pub mode: String,
    /// One row per policy, all on the same trace and fleet.
    pub policies: Vec<PolicyRow>,
    /// Forecast accuracy.
    pub forecast: ForecastScore,
    /// umbra's decisions.
    pub decisions: DecisionCounts,
    /// Hosts ever committed beyond capacity (must be 0).
    pub overcommitted_hosts: usize,
    /// Hit rate against reserve for every policy, from the offline sweep (docs/scale-up.md).
    #[serde(default)]
    pub curve: Vec<CurvePoint>,
    /// The sweep behind the curve: umbra against static pools per budget, and the scale-up
    /// probabilities' score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepResult>,
}

/// A time series to plot: (seconds since the start, value).
pub type Points = Vec<(f64, f64)>;

/// A workload's forecast against what happened.
#[derive(Debug, Clone, Default)]
pub struct ForecastPlot {
    /// Workload id.
    pub workload: String,
    /// Actual use.
    pub actual: Points,
    /// Point forecast.
    pub mean: Points,
    /// Lower bound of the 80% interval.
    pub lower_80: Points,
    /// Upper bound of the 80% interval.
    pub upper_80: Points,
}

/// What the report draws besides the table.
#[derive(Debug, Clone, Default)]
pub struct ReportData {
    /// Title line (trace, VMs, seed).
    pub title: String,
    /// umbra's hit rate so far, over time.
    pub hit_rate: Points,
    /// Cores reserved by shadows and not claimed, over time.
    pub reserved_cores: Points,
    /// A few workloads' forecasts against actual use.
    pub forecasts: Vec<ForecastPlot>,
    /// Host utilization per host (rows) and time slot (columns), in [0, 1].
    pub utilization: Vec<(String, Vec<f64>)>,
}

fn bounds(series: &[&Points]) -> (f64, f64, f64, f64) {
    let all = series.iter().flat_map(|s| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for (x, y) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        (0.0, 1.0, 0.0, 1.0)
    } else {
        (x0, x1.max(x0 + 1.0), y0, y1.max(y0 + 1e-9) * 1.05)
    }
}

fn plot_err(what: &'static str) -> impl Fn(String) -> ReportError {
    move |detail| ReportError::Plot { what, detail }
}

/// Hit rate and unclaimed reservations over time, one SVG.
pub fn svg_hits_and_reservations(d: &ReportData) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        let e = plot_err("hit rate and reservations");
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let (top, bottom) = root.split_vertically(260);
        let (x0, x1, _, _) = bounds(&[&d.hit_rate, &d.reserved_cores]);
        for (area, title, s, (lo, hi)) in [
            (&top, "umbra shadow hit rate", &d.hit_rate, (0.0, 1.0)),
            (
                &bottom,
                "cores reserved by shadows, unclaimed",
                &d.reserved_cores,
                {
                    let b = bounds(&[&d.reserved_cores]);
                    (0.0, b.3)
                },
            ),
        ] {
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(x0 / 3600.0..x1 / 3600.0, lo..hi)
                .map_err(|x| e(x.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("hours of trace")
                .draw()
                .map_err(|x| e(x.to_string()))?;
            chart
                .draw_series(LineSeries::new(
                    s.iter().map(|(x, y)| (x / 3600.0, *y)),
                    &BLUE,
                ))
                .map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// Forecast against actual with the 80% band, one panel per workload.
pub fn svg_forecasts(d: &ReportData) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let n = d.forecasts.len().max(1);
        let root = SVGBackend::with_string(&mut svg, (900, 260 * n as u32)).into_drawing_area();
        let e = plot_err("forecasts");
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        for (area, f) in root.split_evenly((n, 1)).iter().zip(&d.forecasts) {
            let (x0, x1, y0, y1) = bounds(&[&f.actual, &f.mean, &f.upper_80, &f.lower_80]);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{}: CPU (millicores), forecast with 80% interval vs actual",
                        f.workload
                    ),
                    ("sans-serif", 16),
                )
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(x0 / 3600.0..x1 / 3600.0, y0..y1)
                .map_err(|x| e(x.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("hours of trace")
                .draw()
                .map_err(|x| e(x.to_string()))?;
            let band: Vec<(f64, f64)> = f
                .upper_80
                .iter()
                .map(|(x, y)| (x / 3600.0, *y))
                .chain(f.lower_80.iter().rev().map(|(x, y)| (x / 3600.0, *y)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(band, BLUE.mix(0.15))))
                .map_err(|x| e(x.to_string()))?;
            chart
                .draw_series(LineSeries::new(
                    f.mean.iter().map(|(x, y)| (x / 3600.0, *y)),
                    &BLUE,
                ))
                .map_err(|x| e(x.to_string()))?;
            chart
                .draw_series(LineSeries::new(
                    f.actual.iter().map(|(x, y)| (x / 3600.0, *y)),
                    &BLACK,
                ))
                .map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// Per-host utilization heatmap: hosts down, time across, white (idle) to red (full).
pub fn svg_heatmap(d: &ReportData) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let rows = d.utilization.len().max(1);
        let cols = d
            .utilization
            .iter()
            .map(|(_, v)| v.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let root =
            SVGBackend::with_string(&mut svg, (900, (60 + 14 * rows) as u32)).into_drawing_area();
        let e = plot_err("utilization heatmap");
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "host utilization over time (white 0%, red 100%)",
                ("sans-serif", 16),
            )
            .margin(10)
            .y_label_area_size(80)
            .build_cartesian_2d(0..cols, 0..rows)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .y_labels(rows)
            .y_label_formatter(&|i| {
                d.utilization
                    .get(*i)
                    .map(|(h, _)| h.clone())
                    .unwrap_or_default()
            })
            .draw()
            .map_err(|x| e(x.to_string()))?;
        chart
            .draw_series(d.utilization.iter().enumerate().flat_map(|(r, (_, v))| {
                v.iter().enumerate().map(move |(c, u)| {
                    let u = u.clamp(0.0, 1.0);
                    let fade = (255.0 * (1.0 - u)) as u8;
                    Rectangle::new([(c, r), (c + 1, r + 1)], RGBColor(255, fade, fade).filled())
                })
            }))
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, ReportError> {
    std::fs::write(&path, text).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes `summary.json`, the three SVG plots and `report.html` into `dir`; returns the
/// report's path.
pub fn write_report(
    dir: &Path,
    summary: &Summary,
    data: &ReportData,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write(
        dir.join("summary.json"),
        &serde_json::to_string_pretty(summary)?,
    )?;
    let plots = [
        (
            "hits-and-reservations.svg",
            svg_hits_and_reservations(data)?,
        ),
        ("forecasts.svg", svg_forecasts(data)?),
        ("utilization.svg", svg_heatmap(data)?),
    ];
    for (name, svg) in &plots {
        write(dir.join(name), svg)?;
    }
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>umbra replay</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}</style>\
         </head><body><h1>umbra trace replay</h1><p>{}</p><h2>Policies on the same trace and fleet</h2><table><tr>\
         <th>policy</th><th>requests</th><th>hit rate</th><th>delay p50 (s)</th><th>delay p99 (s)</th>\
         <th>used core-h</th><th>unclaimed core-h</th><th>unclaimed GiB-h</th><th>overload min</th><th>rebalances</th><th>rejected</th><th>undecided</th></tr>",
        escape(&data.title)
    );
    for p in &summary.policies {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.policy),
            p.requests,
            p.hit_rate * 100.0,
            p.placement_delay_p50_s,
            p.placement_delay_p99_s,
            p.used_core_hours,
            p.unclaimed_core_hours,
            p.unclaimed_gib_hours,
            p.overload_minutes,
            p.rebalances,
            p.rejected,
            p.undecided
        );
    }
    let _ = write!(
        html,
        "</table><p>Forecast MASE {:.3}, 80% interval coverage {:.2}. Decisions: {} requests, {} decided, {} duplicated. Hosts over capacity: {}.</p>",
        summary.forecast.mase,
        summary.forecast.coverage80,
        summary.decisions.requests,
        summary.decisions.decided,
        summary.decisions.duplicated,
        summary.overcommitted_hosts
    );
    for (name, svg) in &plots {
        let _ = write!(html, "<h2>{name}</h2>{svg}");
    }
    if !summary.curve.is_empty() {
        let svg = svg_curve(&summary.curve)?;
        write(dir.join("curve.svg"), &svg)?;
        let _ = write!(
            html,
            "<h2>Hit rate against reserve (offline sweep)</h2>{svg}"
        );
    }
    if let Some(r) = &summary.sweep {
        html.push_str(&sweep_html(r));
    }
    html.push_str("</body></html>\n");
    write(dir.join("report.html"), &html)
}

/// Policy colours of the curve plot, umbra first.
const CURVE_POLICIES: &[(&str, RGBColor)] = &[
    ("umbra", RGBColor(0, 90, 200)),
    ("static-one-size", RGBColor(200, 60, 40)),
    ("static-size-classes", RGBColor(230, 140, 0)),
    ("static-per-workload", RGBColor(120, 60, 160)),
    ("keep-alive-10m", RGBColor(40, 150, 80)),
    ("keep-alive-1h", RGBColor(20, 100, 50)),
    ("oracle", RGBColor(60, 60, 60)),
];

/// Hit rate against reserve ratio (log scale), a line per policy with budgets and a marker per
/// single-setting policy.
pub fn svg_curve(points: &[CurvePoint]) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        let e = plot_err("hit rate against reserve");
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let lo = points
            .iter()
            .map(|p| p.reserve_ratio)
            .filter(|r| *r > 0.0)
            .fold(1.0f64, f64::min)
            .max(1e-3)
            * 0.7;
        let hi = points
            .iter()
            .map(|p| p.reserve_ratio)
            .fold(1.0f64, f64::max)
            * 1.3;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "hit rate against reserve (share of used CPU held and not claimed)",
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.02)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("reserve / used CPU")
            .y_desc("hit rate")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (name, colour) in CURVE_POLICIES {
            let mut mine: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.policy == *name)
                .map(|p| (p.reserve_ratio.max(lo), p.hit_rate))
                .collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style = colour.stroke_width(2);
            chart
                .draw_series(LineSeries::new(mine.clone(), style))
                .map_err(|x| e(x.to_string()))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(mine.iter().map(|p| Circle::new(*p, 4, colour.filled())))
                .map_err(|x| e(x.to_string()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// The curve's table: per budget, umbra against the best static pool at no more reserve.
fn sweep_html(r: &SweepResult) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<h2>umbra against the strongest static pool</h2><p>{} requests, {:.0} core-hours used. \
         Static pools: counts tuned in hindsight, at no more reserve than umbra held.</p><table><tr>\
         <th>budget</th><th>umbra reserve</th><th>umbra hit rate</th><th>best static hit rate</th><th>static pool</th></tr>",
        r.requests, r.used_core_hours
    );
    for a in &r.against_static {
        let _ = write!(
            html,
            "<tr><td>{:.2}</td><td>{:.3}</td><td>{:.1}%</td><td>{:.1}%</td><td>{}</td></tr>",
            a.budget,
            a.umbra_reserve_ratio,
            a.umbra_hit_rate * 100.0,
            a.static_hit_rate * 100.0,
            escape(&a.static_setting)
        );
    }
    let s = &r.scale_up;
    let _ = write!(
        html,
        "</table><h2>Scale-up probabilities</h2><p>Brier score over {} workload-steps: model {:.4}, \
         base rate {:.4}, time-of-day profile {:.4}.</p><table><tr><th>predicted</th><th>steps</th>\
         <th>mean predicted</th><th>observed</th></tr>",
        s.scored, s.brier_model, s.brier_base_rate, s.brier_seasonal_profile
    );
    for b in &s.reliability {
        let _ = write!(
            html,
            "<tr><td>{:.2}–{:.2}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            b.from, b.to, b.count, b.predicted, b.observed
        );
    }
    html.push_str("</table>");
    html
}

/// The sweep alone (`umbra replay --sweep`): `summary.json` with the curve, `curve.svg` and
/// `report.html` in `dir`.
pub fn write_sweep(dir: &Path, title: &str, r: &SweepResult) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let summary = serde_json::json!({ "curve": r.curve, "sweep": r });
    write(
        dir.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    let svg = svg_curve(&r.curve)?;
    write(dir.join("curve.svg"), &svg)?;
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>umbra sweep</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>\
         <h1>umbra: hit rate against reserve</h1><p>{}</p>{svg}{}</body></html>\n",
        escape(title),
        sweep_html(r)
    );
    write(dir.join("report.html"), &html)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_summary_plots_and_a_self_contained_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let row = |p: &str, h: f64| PolicyRow {
            policy: p.into(),
            requests: 100,
            hits: (h * 100.0) as usize,
            hit_rate: h,
            placement_delay_p50_s: 0.0,
            placement_delay_p99_s: 30.0,
            used_core_hours: 10.0,
            unclaimed_core_hours: 1.5,
            unclaimed_gib_hours: 3.0,
            overload_minutes: 0.0,
            rebalances: 2,
            rejected: 1,
            undecided: 0,
        };
        let summary = Summary {
            mode: "lockstep".into(),
            policies: vec![row("umbra", 0.93), row("reactive", 0.0), row("oracle", 1.0)],
            forecast: ForecastScore {
                mase: 0.8,
                coverage80: 0.78,
            },
            decisions: DecisionCounts {
                requests: 100,
                decided: 100,
                duplicated: 0,
                behind_trace_minutes_p50: 0.0,
                behind_trace_minutes_p99: 0.0,
                preempted_shadows: 0,
            },
            overcommitted_hosts: 0,
            curve: vec![],
            sweep: None,
        };
        let t: Vec<f64> = (0..50).map(|i| i as f64 * 300.0).collect();
        let data = ReportData {
            title: "test <trace>".into(),
            hit_rate: t.iter().map(|x| (*x, 0.9)).collect(),
            reserved_cores: t.iter().map(|x| (*x, 2.0 + (x / 3000.0).sin())).collect(),
            forecasts: vec![ForecastPlot {
                workload: "vm-001".into(),
                actual: t.iter().map(|x| (*x, 100.0)).collect(),
                mean: t.iter().map(|x| (*x, 95.0)).collect(),
                lower_80: t.iter().map(|x| (*x, 80.0)).collect(),
                upper_80: t.iter().map(|x| (*x, 120.0)).collect(),
            }],
            utilization: vec![
                ("host-000".into(), vec![0.1, 0.5, 0.95]),
                ("host-001".into(), vec![0.3, 0.2, 0.0]),
            ],
        };
        let report = write_report(dir.path(), &summary, &data).expect("written");
        if let Ok(keep) = std::env::var("UMBRA_KEEP_REPORT") {
            let _ = write_report(Path::new(&keep), &summary, &data);
        }
        let html = std::fs::read_to_string(&report).expect("html");
        assert!(
            html.contains("<td>umbra</td><td>100</td><td>93.0%</td>"),
            "{html}"
        );
        assert!(html.contains("test &lt;trace&gt;"));
        assert_eq!(html.matches("<svg").count(), 3, "three inline plots");
        for f in [
            "hits-and-reservations.svg",
            "forecasts.svg",
            "utilization.svg",
        ] {
            assert!(std::fs::read_to_string(dir.path().join(f))
                .expect("svg")
                .starts_with("<svg"));
        }
        let back: Summary = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("summary.json")).expect("json"),
        )
        .expect("parses");
        assert_eq!(back, summary);
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("summary.json")).expect("json"),
        )
        .expect("json");
        for key in [
            "policy",
            "requests",
            "hits",
            "hit_rate",
            "placement_delay_p50_s",
            "placement_delay_p99_s",
            "used_core_hours",
            "unclaimed_core_hours",
            "unclaimed_gib_hours",
            "overload_minutes",
            "rebalances",
            "rejected",
            "undecided",
        ] {
            assert!(
                v["policies"][0].get(key).is_some(),
                "summary.json has {key}"
            );
        }
        assert!(
            v["forecast"]["coverage80"].is_number()
                && v["decisions"]["duplicated"].is_number()
                && v["overcommitted_hosts"].is_number()
        );
    }
}
