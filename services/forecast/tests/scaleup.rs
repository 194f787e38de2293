//! The forecast service's scale-up stage fed record by record, as the service feeds it, holds
//! the slots the offline rule (the sweep's) holds on the same recorded trace.

use std::collections::HashMap;

use umbra_forecast::scaleup::{ScaleUpSettings, Stage};
use umbra_replay::online::{tails_of, Scorer, SlotRule};
use umbra_replay::pool::TradeOff;
use umbra_replay::steps::StepTrace;
use umbra_replay::sweep::SweepSettings;
use umbra_replay::Placeholder;
use umbra_schemas::{Resources, ScaleUpSubject, Stats, UsagePoint, WorkloadRequest, WorkloadScale};

const ORIGIN_S: i64 = 1_372_636_800; // a Monday, 00:00 UTC
const STEP_MS: i64 = 300_000;

/// Three workloads over `days`, with bursts of requests at a few times of day.
fn trace(days: usize) -> StepTrace {
    let steps = days * 288;
    let sizes = [300.0, 1_000.0, 2_000.0];
    let mut t = StepTrace {
        step_s: 300,
        origin_s: ORIGIN_S,
        ids: vec!["vm-a".into(), "vm-b".into(), "vm-c".into()],
        sizes: sizes
            .iter()
            .map(|c| Placeholder {
                cpu_millicores: *c,
                memory_bytes: 1_073_741_824.0,
            })
            .collect(),
        cpu: vec![vec![0.0; steps]; 3],
        ups: vec![vec![0; steps]; 3],
        downs: vec![vec![0; steps]; 3],
        running: vec![vec![0; steps]; 3],
    };
    for i in 0..steps {
        for (w, size) in sizes.iter().enumerate() {
            let busy = (i % 288 + 41 * w) % 72 < 3;
            t.cpu[w][i] = if busy { 1.4 } else { 0.5 } * size;
            t.running[w][i] = 1 + u32::from(busy);
            if busy && (i * 5 + w) % 4 != 0 {
                t.ups[w][i] = 1 + ((i + w) % 3 == 0) as u32;
            }
        }
    }
    t
}

fn point(t: &StepTrace, w: usize, i: usize) -> UsagePoint {
    let c = t.cpu[w][i];
    UsagePoint {
        workload_id: t.ids[w].clone(),
        bucket_start: (ORIGIN_S * 1000) + i as i64 * STEP_MS,
        bucket_seconds: 300,
        sample_count: 1,
        cpu_millicores: Stats {
            mean: c,
            p95: c,
            max: c,
        },
        memory_bytes: Stats {
            mean: 0.0,
            p95: 0.0,
            max: 0.0,
        },
        disk_io_bytes_per_s: Stats {
            mean: 0.0,
            p95: 0.0,
            max: 0.0,
        },
        labels: HashMap::new(),
        cpu_capacity_millicores: 0.0,
        memory_capacity_bytes: 0.0,
    }
}

/// Everything the service would read about step `i`: points, replica counts, requests.
fn feed(stage: &mut Stage, t: &StepTrace, i: usize) {
    let at = ORIGIN_S * 1000 + i as i64 * STEP_MS;
    for w in 0..t.workloads() {
        stage.add_point(&point(t, w, i));
        if i == 0 || t.running[w][i] != t.running[w][i - 1] {
            stage.add_scale(&WorkloadScale {
                workload_id: t.ids[w].clone(),
                observed_at: at,
                replicas: t.running[w][i] as i32,
                replica: Resources {
                    cpu_millicores: t.sizes[w].cpu_millicores as i64,
                    memory_bytes: t.sizes[w].memory_bytes as i64,
                    disk_io_bytes_per_s: 0,
                },
                labels: HashMap::new(),
            });
        }
        for k in 0..t.ups[w][i] {
            stage.add_request(&WorkloadRequest {
                request_id: format!("{}-{i}-{k}", t.ids[w]),
                workload_id: t.ids[w].clone(),
                labels: HashMap::new(),
                resources: Resources::default(),
                requested_at: at + 1,
            });
        }
    }
}

#[test]
fn the_stage_holds_the_slots_the_offline_rule_holds() {
    let full = trace(5);
    let live_from = 3 * 288;
    let budget = 0.5;
    let settings = ScaleUpSettings {
        trade_off: TradeOff::Budget(budget),
        ..ScaleUpSettings::default()
    };
    let mut stage = Stage::new(settings.clone());
    for i in 0..live_from {
        feed(&mut stage, &full, i);
    }
    let start = |i: usize| ORIGIN_S * 1000 + i as i64 * STEP_MS;
    stage.begin(start(live_from)).expect("begins");
    assert!(stage.begun());
    let mut pipeline: Vec<Vec<i32>> = Vec::new();
    for i in live_from..full.steps() {
        // Nothing is due before the step begins, nor before the step before is complete.
        assert!(stage.poll(start(i) - 1).expect("polls").is_empty());
        let out = stage.poll(start(i)).expect("polls");
        assert_eq!(
            out.len(),
            1,
            "step {i}: due with the points of the step before"
        );
        let f = &out[0];
        assert_eq!(f.step_start, start(i));
        let pools: Vec<_> = f
            .forecasts
            .iter()
            .filter(|x| x.kind == ScaleUpSubject::Pool)
            .collect();
        assert_eq!(
            f.forecasts.len() - pools.len(),
            3,
            "one forecast per workload"
        );
        pipeline.push(pools.iter().map(|p| p.slots).collect());
        feed(&mut stage, &full, i);
    }

    // The offline rule on the recorded trace, as the sweep runs it.
    let sweep = SweepSettings {
        sim: umbra_replay::pool::SimSettings {
            ready_delay_s: settings.ready_delay_s,
            fleet: None,
        },
        ..SweepSettings::default()
    };
    let (mut scorer, mut scores) = Scorer::begin(&full.slice(0..live_from), &sweep).unwrap();
    for i in live_from..full.steps() {
        scores.push(scorer.score(&full, i).unwrap());
    }
    let tails = tails_of(&scores);
    let warm = scorer.warm_from;
    let mut rule = SlotRule::new(TradeOff::Budget(budget), &sweep);
    let offline: Vec<Vec<i32>> = (live_from..full.steps())
        .map(|i| {
            rule.decide(
                &scorer.classes,
                &tails,
                &full,
                warm,
                live_from - warm,
                i - warm,
            )
            .1
            .into_iter()
            .map(|n| n as i32)
            .collect()
        })
        .collect();
    assert_eq!(pipeline, offline);
    assert!(
        pipeline.iter().flatten().any(|n| *n > 0),
        "the rule held slots at some step"
    );
}
