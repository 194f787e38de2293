//! `umbra forecast --data DIR --vm ID --out FILE.svg`: forecast against actual, with the
//! intervals, drawn so that a person can judge the forecast.

use std::path::PathBuf;

use anyhow::{bail, Context};
use plotters::prelude::*;
use umbra_forecasting::data::read_bitbrains;
use umbra_forecasting::engine::{Forecaster, ForecasterConfig, DAY};
use umbra_forecasting::metrics::{coverage, mase};
use umbra_forecasting::{Model, Series};

/// Arguments of `umbra forecast`.
#[derive(clap::Args, Debug)]
pub struct ForecastArgs {
    /// Folder in the Bitbrains format.
    #[arg(long, default_value = "../shared/data/bitbrains-rnd")]
    data: PathBuf,
    /// VM id (file name without extension), e.g. vm-001.
    #[arg(long)]
    vm: String,
    /// Output SVG file.
    #[arg(long)]
    out: PathBuf,
    /// Day of the trace at which the forecast starts (28 days of history before it).
    #[arg(long, default_value_t = 35)]
    origin_day: usize,
}

pub fn run(args: ForecastArgs) -> anyhow::Result<()> {
    let path = ["csv.gz", "csv"]
        .iter()
        .map(|ext| args.data.join(format!("{}.{ext}", args.vm)))
        .find(|p| p.is_file())
        .with_context(|| format!("no {}.csv.gz or .csv in {}", args.vm, args.data.display()))?;
    let vm = read_bitbrains(&path)?;
    let day = (86_400 / vm.cpu_mhz.step_s) as usize;
    let origin = args.origin_day * day;
    if origin < 7 * day || origin + DAY.steps > vm.cpu_mhz.values.len() {
        bail!(
            "--origin-day {} is outside the trace ({} days)",
            args.origin_day,
            vm.cpu_mhz.values.len() / day
        );
    }
    let forecaster = Forecaster::new(ForecasterConfig {
        candidates: Model::all(),
        ..ForecasterConfig::default()
    });
    let panels = [
        ("CPU usage (MHz)", &vm.cpu_mhz, Some(vm.cpu_capacity_mhz)),
        (
            "Memory usage (KB)",
            &vm.memory_kb,
            Some(vm.memory_capacity_kb),
        ),
        ("Disk read+write (KB/s)", &vm.disk_kbps, None),
    ];
    let root = SVGBackend::new(&args.out, (1200, 1100)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((3, 1));
    for ((title, series, cap), area) in panels.iter().zip(areas.iter()) {
        let train_from = origin.saturating_sub(28 * day);
        let history = series.slice(train_from, origin);
        let fc = forecaster.forecast(&history, DAY.steps, &[], *cap);
        let actual = &series.values[origin..origin + DAY.steps];
        let shown_from = origin - 2 * day;
        let shown: Series = series.slice(shown_from, origin + DAY.steps);
        let x = |i: usize| (i as f64) / day as f64 - 2.0;
        let finite_max = shown
            .values
            .iter()
            .chain(&fc.upper95)
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let insample: Vec<f64> = history
            .values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let (a, m): (Vec<f64>, Vec<f64>) = actual
            .iter()
            .zip(&fc.mean)
            .filter(|(a, _)| a.is_finite())
            .map(|(a, m)| (*a, *m))
            .unzip();
        let idx: Vec<usize> = (0..actual.len())
            .filter(|i| actual[*i].is_finite())
            .collect();
        let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let cov80 = coverage(&a, &pick(&fc.lower80), &pick(&fc.upper80));
        let cov95 = coverage(&a, &pick(&fc.lower95), &pick(&fc.upper95));
        let score = mase(&a, &m, &insample, day).map_or("-".into(), |v| format!("{v:.2}"));
        let caption = format!(
            "{} {title}: {} | MASE {score}, 80% cover {:.0}%, 95% cover {:.0}%{}",
            vm.id,
            fc.model,
            cov80 * 100.0,
            cov95 * 100.0,
            fc.fallback_reason
                .as_deref()
                .map(|r| format!(" (fallback: {r})"))
                .unwrap_or_default()
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-2.0f64..1.0f64, 0.0f64..(finite_max * 1.05).max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("days from the forecast origin")
            .draw()?;
        let band = |lo: &[f64], hi: &[f64]| -> Vec<(f64, f64)> {
            let mut pts: Vec<(f64, f64)> = lo
                .iter()
                .enumerate()
                .map(|(i, v)| (x(2 * day + i), *v))
                .collect();
            pts.extend(
                hi.iter()
                    .enumerate()
                    .rev()
                    .map(|(i, v)| (x(2 * day + i), *v)),
            );
            pts
        };
        chart
            .draw_series(std::iter::once(Polygon::new(
                band(&fc.lower95, &fc.upper95),
                RGBColor(200, 215, 240).filled(),
            )))?
            .label("95% interval")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 15, y + 5)],
                    RGBColor(200, 215, 240).filled(),
                )
            });
        chart
            .draw_series(std::iter::once(Polygon::new(
                band(&fc.lower80, &fc.upper80),
                RGBColor(150, 180, 230).filled(),
            )))?
            .label("80% interval")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 15, y + 5)],
                    RGBColor(150, 180, 230).filled(),
                )
            });
        chart
            .draw_series(LineSeries::new(
                shown
                    .values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(i, v)| (x(i), *v)),
                BLACK.stroke_width(1),
            ))?
            .label("actual")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
        chart
            .draw_series(LineSeries::new(
                fc.mean
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (x(2 * day + i), *v)),
                RGBColor(20, 60, 160).stroke_width(2),
            ))?
            .label("forecast")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RGBColor(20, 60, 160)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    println!("wrote {}", args.out.display());
    Ok(())
}
