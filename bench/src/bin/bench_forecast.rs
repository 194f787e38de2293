//! `make bench-forecast`: rolling-origin evaluation of umbra's forecasting on a Bitbrains-format
//! data folder, side by side with Python's statsforecast and prophet on the same windows.
//!
//! Windows: 28-day training window, `--origins` daily origins (default 14); targets CPU usage
//! MHz, memory usage KB, disk read+write KB/s; horizons 1h (12 × 5 min), 1d (288 × 5 min) and
//! 1w (168 hourly means). Metrics per model, horizon and target: MASE (scaled by the in-sample
//! seasonal naive with a daily period; geometric mean over windows), sMAPE, WAPE, 80%/95%
//! coverage, MSIS (95%), fit+predict seconds per series on one thread, failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use umbra_forecasting::data::{bitbrains_files, read_bitbrains, read_m4, shared_data_dir};
use umbra_forecasting::engine::{Forecaster, ForecasterConfig, HORIZONS};
use umbra_forecasting::metrics::{coverage, geometric_mean, mase, msis, smape, wape};
use umbra_forecasting::models::seasonal_naive;
use umbra_forecasting::{Model, Series};

struct Args {
    data: PathBuf,
    json: Option<PathBuf>,
    vms: usize,
    origins: usize,
    python: Option<PathBuf>,
    backtest_origins: usize,
    interval_buckets: usize,
    selection_margin: f64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        data: shared_data_dir().join("bitbrains-rnd"),
        json: None,
        vms: 10,
        origins: 14,
        python: None,
        backtest_origins: ForecasterConfig::default().backtest_origins,
        interval_buckets: ForecasterConfig::default().interval_buckets,
        selection_margin: ForecasterConfig::default().selection_margin,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--data" => a.data = PathBuf::from(v()?),
            "--json" => a.json = Some(PathBuf::from(v()?)),
            "--vms" => a.vms = v()?.parse().map_err(|e| format!("--vms: {e}"))?,
            "--origins" => a.origins = v()?.parse().map_err(|e| format!("--origins: {e}"))?,
            "--python" => a.python = Some(PathBuf::from(v()?)),
            "--backtest-origins" => a.backtest_origins = v()?.parse().map_err(|e| format!("--backtest-origins: {e}"))?,
            "--selection-margin" => a.selection_margin = v()?.parse().map_err(|e| format!("--selection-margin: {e}"))?,
            "--interval-buckets" => a.interval_buckets = v()?.parse().map_err(|e| format!("--interval-buckets: {e}"))?,
            other => return Err(format!("unknown argument {other}; usage: bench-forecast [--data DIR] [--json FILE] [--vms N] [--origins N] [--python PY] [--backtest-origins N] [--interval-buckets N] [--selection-margin F]")),
        }
    }
    Ok(a)
}

/// One forecast window, also the unit handed to the Python baselines.
#[derive(Serialize, Deserialize, Clone)]
struct Window {
    id: String,
    target: String,
    horizon: String,
    step_s: i64,
    start_s: i64,
    season: usize,
    train: Vec<f64>,
    actual: Vec<f64>,
}

/// One model's forecast of one window.
#[derive(Serialize, Deserialize, Clone)]
struct Prediction {
    id: String,
    target: String,
    horizon: String,
    model: String,
    mean: Vec<f64>,
    lo80: Vec<f64>,
    hi80: Vec<f64>,
    lo95: Vec<f64>,
    hi95: Vec<f64>,
    seconds: f64,
    #[serde(default)]
    failed: bool,
}

#[derive(Default)]
struct Acc {
    mase: Vec<f64>,
    smape: Vec<f64>,
    wape: Vec<f64>,
    c80: Vec<f64>,
    c95: Vec<f64>,
    msis: Vec<f64>,
    seconds: Vec<f64>,
    failures: usize,
}

#[derive(Serialize)]
struct Row {
    model: String,
    horizon: String,
    target: String,
    mase: Option<f64>,
    smape: f64,
    wape: f64,
    coverage80: f64,
    coverage95: f64,
    msis: f64,
    sec_per_series: f64,
    failures: usize,
    windows: usize,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn score(acc: &mut Acc, w: &Window, p: &Prediction) {
    acc.seconds.push(p.seconds);
    if p.failed || p.mean.len() != w.actual.len() {
        acc.failures += 1;
        return;
    }
    let (mut a, mut idx) = (Vec::new(), Vec::new());
    for (i, v) in w.actual.iter().enumerate() {
        if v.is_finite() {
            a.push(*v);
            idx.push(i);
        }
    }
    let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let (m, l80, h80, l95, h95) = (
        pick(&p.mean),
        pick(&p.lo80),
        pick(&p.hi80),
        pick(&p.lo95),
        pick(&p.hi95),
    );
    let insample: Vec<f64> = w.train.iter().copied().filter(|v| v.is_finite()).collect();
    if let Some(x) = mase(&a, &m, &insample, w.season) {
        acc.mase.push(x);
    }
    acc.smape.push(smape(&a, &m));
    if let Some(x) = wape(&a, &m) {
        acc.wape.push(x);
    }
    acc.c80.push(coverage(&a, &l80, &h80));
    acc.c95.push(coverage(&a, &l95, &h95));
    if let Some(x) = msis(&a, &l95, &h95, &insample, w.season, 0.05) {
        acc.msis.push(x);
    }
}

fn windows_of(id: &str, target: &str, s: &Series, origins: usize) -> Vec<Window> {
    let day = (86_400 / s.step_s) as usize;
    let mut out = Vec::new();
    for k in 0..origins {
        let origin = (28 + k) * day;
        for spec in HORIZONS {
            let (series, o, season) = if spec.aggregate > 1 {
                (
                    s.downsample(spec.aggregate),
                    origin / spec.aggregate,
                    day / spec.aggregate,
                )
            } else {
                (s.clone(), origin, day)
            };
            let train_len = 28 * season;
            if o < train_len || o + spec.steps > series.values.len() {
                continue;
            }
            out.push(Window {
                id: format!("{id}@{k}"),
                target: target.into(),
                horizon: spec.name.into(),
                step_s: series.step_s,
                start_s: series.time_of(o - train_len),
                season,
                train: series.values[o - train_len..o].to_vec(),
                actual: series.values[o..o + spec.steps].to_vec(),
            });
        }
    }
    out
}

fn prediction(
    w: &Window,
    model: &str,
    f: &umbra_forecasting::Forecast,
    seconds: f64,
) -> Prediction {
    Prediction {
        id: w.id.clone(),
        target: w.target.clone(),
        horizon: w.horizon.clone(),
        model: model.into(),
        mean: f.mean.clone(),
        lo80: f.lower80.clone(),
        hi80: f.upper80.clone(),
        lo95: f.lower95.clone(),
        hi95: f.upper95.clone(),
        seconds,
        failed: false,
    }
}

fn failed(w: &Window, model: &str, seconds: f64) -> Prediction {
    Prediction {
        id: w.id.clone(),
        target: w.target.clone(),
        horizon: w.horizon.clone(),
        model: model.into(),
        mean: vec![],
        lo80: vec![],
        hi80: vec![],
        lo95: vec![],
        hi95: vec![],
        seconds,
        failed: true,
    }
}

fn m4_check(dir: &Path) -> Result<(f64, f64), String> {
    let train = read_m4(&dir.join("Hourly-train.csv.gz")).map_err(|e| e.to_string())?;
    let test = read_m4(&dir.join("Hourly-test.csv.gz")).map_err(|e| e.to_string())?;
    let (mut s, mut m) = (0.0, 0.0);
    for ((_, y), (_, a)) in train.iter().zip(&test) {
        let f = seasonal_naive(y, 24, a.len()).map_err(|e| e.to_string())?;
        s += smape(a, &f);
        m += mase(a, &f, y, 24).unwrap_or(f64::NAN);
    }
    Ok((s / train.len() as f64, m / train.len() as f64))
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-forecast: {e}");
            std::process::exit(2);
        }
    };
    match m4_check(&shared_data_dir().join("m4-hourly")) {
        Ok((s, m)) => println!("M4 Hourly check, seasonal naive: sMAPE {s:.3} (reference 13.912), MASE {m:.3} (reference 1.193)"),
        Err(e) => println!("M4 Hourly check skipped: {e}"),
    }
    let files = match bitbrains_files(&args.data) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bench-forecast: {e}");
            std::process::exit(2);
        }
    };
    let mut windows = Vec::new();
    for path in files.iter().take(args.vms) {
        let vm = match read_bitbrains(path) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                continue;
            }
        };
        windows.extend(windows_of(&vm.id, "cpu", &vm.cpu_mhz, args.origins));
        windows.extend(windows_of(&vm.id, "memory", &vm.memory_kb, args.origins));
        windows.extend(windows_of(&vm.id, "disk", &vm.disk_kbps, args.origins));
    }
    let n_series = windows
        .iter()
        .map(|w| {
            (
                w.id.split('@').next().unwrap_or_default().to_string(),
                w.target.clone(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    println!(
        "data {}: {} VMs, {n_series} series, {} windows ({} origins × 3 horizons)",
        args.data.display(),
        files.len().min(args.vms),
        windows.len(),
        args.origins
    );

    // umbra: every candidate and the per-series choice, from one evaluation per window
    // (1h and 1d share the 5-minute fit; 1w is fitted on hourly means).
    let forecaster = Forecaster::new(ForecasterConfig {
        candidates: Model::all(),
        backtest_origins: args.backtest_origins,
        interval_buckets: args.interval_buckets,
        selection_margin: args.selection_margin,
        ..ForecasterConfig::default()
    });
    let mut preds: Vec<Prediction> = Vec::new();
    let mut i = 0;
    let started = Instant::now();
    while i < windows.len() {
        // Windows of one (series, origin) for 1h and 1d share a fit.
        let w = &windows[i];
        let group: Vec<&Window> = windows[i..]
            .iter()
            .take_while(|x| x.id == w.id && x.target == w.target && x.step_s == w.step_s)
            .collect();
        let history = Series {
            start_s: w.start_s,
            step_s: w.step_s,
            values: w.train.clone(),
        };
        let horizons: Vec<usize> = group.iter().map(|g| g.actual.len()).collect();
        let t = Instant::now();
        let evals = forecaster.evaluate(&history, &horizons, &[], None);
        let total = t.elapsed().as_secs_f64() / group.len() as f64;
        for (g, ev) in group.iter().zip(&evals) {
            for (model, r) in &ev.candidates {
                match r {
                    Ok(f) => preds.push(prediction(
                        g,
                        model.name(),
                        f,
                        f.fit_seconds / group.len() as f64,
                    )),
                    Err(_) => preds.push(failed(g, model.name(), 0.0)),
                }
            }
            preds.push(prediction(g, "umbra", &ev.chosen, total));
        }
        i += group.len();
        if i % 60 < group.len() {
            eprintln!(
                "  {i}/{} windows, {:.0} s",
                windows.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    if let Some(py) = &args.python {
        let dir = std::env::temp_dir().join(format!("umbra-bench-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let win_path = dir.join("windows.jsonl");
        let out_path = dir.join("predictions.jsonl");
        let text: String = windows
            .iter()
            .filter_map(|w| serde_json::to_string(w).ok())
            .map(|l| l + "\n")
            .collect();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/forecast_baselines.py");
        match std::fs::write(&win_path, text) {
            Ok(()) => {
                eprintln!("running the Python baselines ({})", py.display());
                let status = Command::new(py)
                    .arg(&script)
                    .arg(&win_path)
                    .arg(&out_path)
                    .status();
                match status {
                    Ok(s) if s.success() => {
                        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
                        preds.extend(
                            text.lines()
                                .filter_map(|l| serde_json::from_str::<Prediction>(l).ok()),
                        );
                    }
                    other => eprintln!("Python baselines failed: {other:?}"),
                }
            }
            Err(e) => eprintln!("cannot write {}: {e}", win_path.display()),
        }
    }

    let by_key: BTreeMap<(String, String, String), &Window> = windows
        .iter()
        .map(|w| ((w.id.clone(), w.target.clone(), w.horizon.clone()), w))
        .collect();
    let mut accs: BTreeMap<(String, String, String), Acc> = BTreeMap::new();
    for p in &preds {
        if let Some(w) = by_key.get(&(p.id.clone(), p.target.clone(), p.horizon.clone())) {
            score(
                accs.entry((p.model.clone(), p.horizon.clone(), p.target.clone()))
                    .or_default(),
                w,
                p,
            );
        }
    }
    let rows: Vec<Row> = accs
        .iter()
        .map(|((model, horizon, target), a)| Row {
            model: model.clone(),
            horizon: horizon.clone(),
            target: target.clone(),
            mase: geometric_mean(&a.mase),
            smape: mean(&a.smape),
            wape: mean(&a.wape),
            coverage80: mean(&a.c80),
            coverage95: mean(&a.c95),
            msis: mean(&a.msis),
            sec_per_series: mean(&a.seconds),
            failures: a.failures,
            windows: a.seconds.len(),
        })
        .collect();
    print_table(&rows);
    if let Some(path) = &args.json {
        let doc =
            serde_json::json!({ "series": n_series, "windows": windows.len(), "results": rows });
        match std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
            Ok(()) => println!("results written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

fn print_table(rows: &[Row]) {
    let find = |model: &str, h: &str, t: &str| {
        rows.iter()
            .find(|r| r.model == model && r.horizon == h && r.target == t)
    };
    println!();
    println!(
        "{:<28} {:>3} {:<7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>9} {:>5} {:>9} {:>9}",
        "model",
        "h",
        "target",
        "gmMASE",
        "sMAPE",
        "WAPE",
        "cov80",
        "cov95",
        "MSIS",
        "s/series",
        "fail",
        "MASE/snv",
        "time/sf"
    );
    for r in rows {
        let base = find("seasonal-naive", &r.horizon, &r.target).and_then(|b| b.mase);
        let sf =
            find("statsforecast-mstl-autoets", &r.horizon, &r.target).map(|b| b.sec_per_series);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<28} {:>3} {:<7} {:>7} {:>7.2} {:>6.3} {:>6.3} {:>6.3} {:>7.2} {:>9.4} {:>5} {:>9} {:>9}",
            r.model,
            r.horizon,
            r.target,
            r.mase.map_or("-".into(), |m| format!("{m:.3}")),
            r.smape,
            r.wape,
            r.coverage80,
            r.coverage95,
            r.msis,
            r.sec_per_series,
            r.failures,
            ratio(r.mase, base),
            ratio(Some(r.sec_per_series), sf),
        );
    }
}
