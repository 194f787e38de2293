//! The scale-up model's crate, chosen by measurement (`make bench-scaleup`): on the same
//! features of the replay's plan (history for training, the live week for scoring), the
//! gradient-boosted model umbra uses (forust-ml) against a logistic regression (linfa-logistic),
//! with each workload's base rate and time-of-day profile as the baselines both must beat.
//! Prints Brier scores, their ratio to the base rate, and fit times measured in the same run.

use std::time::Instant;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use umbra_replay::scaleup::{brier, features, labels, ModelSettings, ScaleUpModel, FEATURES};
use umbra_replay::sweep::score;
use umbra_replay::TracePlan;

fn main() {
    let mut data = std::path::PathBuf::from("../shared/data/bitbrains-rnd");
    let mut vms = 50usize;
    let mut seeds = vec![1u64, 2, 3];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--data" => data = v.into(),
            "--vms" => vms = v.parse().expect("--vms N"),
            "--seeds" => {
                seeds = v
                    .split(',')
                    .map(|s| s.parse().expect("--seeds 1,2,3"))
                    .collect()
            }
            _ => panic!("usage: bench-scaleup [--data DIR] [--vms N] [--seeds 1,2,3]"),
        }
    }
    println!("scale-up model: P(a request at the next step) per workload, trained on 14 days, scored on the next 7");
    println!(
        "{:<5} {:>9} {:>11} {:>11} {:>11} {:>11} {:>10} {:>10}",
        "seed", "requests", "base rate", "profile", "logistic", "gbm", "fit lr s", "fit gbm s"
    );
    for seed in seeds {
        let plan = TracePlan::load(&data, vms, seed, 0.0, 14.0, 7.0).expect("the trace");
        let (history, live) = plan.step_traces();
        let joined = history.then(&live);
        let train = 288..history.steps();
        let test = history.steps()..joined.steps();
        let y_test = labels(&joined, test.clone());

        let t = Instant::now();
        let gbm = ScaleUpModel::fit(&joined, 0..history.steps(), &ModelSettings::default())
            .expect("fits");
        let gbm_s = t.elapsed().as_secs_f64();
        let p_gbm: Vec<Vec<f64>> = gbm.p_up(&joined, test.clone());
        let flat: Vec<f64> = p_gbm.iter().flatten().copied().collect();

        // The same columns for the logistic regression, standardised, missing as the mean.
        let to_rows = |range: std::ops::Range<usize>| {
            let n = joined.workloads() * range.len();
            let cols = features(&joined, range);
            let mut x = Array2::<f64>::zeros((n, FEATURES.len()));
            for c in 0..FEATURES.len() {
                for r in 0..n {
                    x[(r, c)] = cols[c * n + r];
                }
            }
            x
        };
        let mut x_train = to_rows(train.clone());
        let mut x_test = to_rows(test.clone());
        for c in 0..FEATURES.len() {
            let col: Vec<f64> = x_train
                .column(c)
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            let mean = col.iter().sum::<f64>() / col.len().max(1) as f64;
            let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                / col.len().max(1) as f64)
                .sqrt()
                .max(1e-9);
            for x in [&mut x_train, &mut x_test] {
                x.column_mut(c)
                    .mapv_inplace(|v| if v.is_finite() { (v - mean) / sd } else { 0.0 });
            }
        }
        let y_train: Array1<bool> = labels(&joined, train)
            .into_iter()
            .map(|v| v > 0.5)
            .collect();
        let t = Instant::now();
        let lr = LogisticRegression::default()
            .max_iterations(200)
            .fit(&Dataset::new(x_train, y_train))
            .expect("the logistic regression fits");
        let lr_s = t.elapsed().as_secs_f64();
        // linfa calls one of the two labels positive by its own order: turn its probability
        // into P(a request) whichever it chose.
        let positive_is_request = lr.labels().pos.class;
        let p_lr: Vec<f64> = lr
            .predict_probabilities(&x_test)
            .iter()
            .map(|p| if positive_is_request { *p } else { 1.0 - p })
            .collect();

        let base = score(&history, &live, &p_gbm);
        println!(
            "{:<5} {:>9} {:>11.5} {:>11.5} {:>11.5} {:>11.5} {:>10.1} {:>10.1}",
            seed,
            live.requests(),
            base.brier_base_rate,
            base.brier_seasonal_profile,
            brier(&p_lr, &y_test),
            brier(&flat, &y_test),
            lr_s,
            gbm_s
        );
        println!(
            "      skill against the base rate (1 - Brier/base): logistic {:.3}, gbm {:.3}, profile {:.3}",
            1.0 - brier(&p_lr, &y_test) / base.brier_base_rate,
            1.0 - brier(&flat, &y_test) / base.brier_base_rate,
            1.0 - base.brier_seasonal_profile / base.brier_base_rate
        );
    }
}
