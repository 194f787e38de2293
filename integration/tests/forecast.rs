//! The forecast service through the real broker and registry: usage series and an event in,
//! a schema-valid forecast out; a restart keeps the history.

use std::time::Duration;

use umbra_integration::{Service, Stack};
use umbra_schemas::*;
use umbra_stream::processor::{send, Input, Output};

const T0_MS: i64 = 1_372_636_800_000;

fn point(i: i64) -> UsagePoint {
    let daily = ((i % 288) as f64 / 288.0 * std::f64::consts::TAU).sin();
    let v = |base: f64| Stats {
        mean: base * (1.5 + daily),
        p95: base * 2.6,
        max: base * 2.8,
    };
    UsagePoint {
        workload_id: "vm-fc".into(),
        bucket_start: T0_MS + i * 300_000,
        bucket_seconds: 300,
        sample_count: 1,
        cpu_millicores: v(1000.0),
        memory_bytes: v(4.0e9),
        disk_io_bytes_per_s: v(1.0e6),
        labels: Default::default(),
        cpu_capacity_millicores: 8000.0,
        memory_capacity_bytes: 16.0e9,
    }
}

#[tokio::test]
async fn usage_and_an_event_in_a_forecast_out_and_a_restart_keeps_history() -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let producer = stack.producer()?;
    let series: Output<WorkloadKey, UsagePoint> =
        Output::new(stack.registry.clone(), format!("{p}umbra.usage.series")).await?;
    let key = WorkloadKey {
        workload_id: "vm-fc".into(),
    };
    let days = 3;
    let sends = (0..days * 288).map(|i| {
        let emit = series.record(&key, &point(i)).expect("encode");
        let producer = producer.clone();
        async move { send(&producer, &emit, Default::default()).await }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    let events: Output<EventKey, ExternalEvent> =
        Output::new(stack.registry.clone(), format!("{p}umbra.events.external")).await?;
    let end_of_history = T0_MS + days * 86_400_000;
    let event = ExternalEvent {
        event_id: "launch".into(),
        kind: EventKind::CampaignLaunch,
        start_time: end_of_history + 3_600_000,
        end_time: end_of_history + 7_200_000,
        workload_ids: vec!["vm-fc".into()],
        labels: Default::default(),
        expected_impact: Some(2.0),
        description: "test campaign".into(),
    };
    send(
        &producer,
        &events.record(
            &EventKey {
                event_id: "launch".into(),
            },
            &event,
        )?,
        Default::default(),
    )
    .await?;

    let env = [
        ("UMBRA_SERVICE__REFIT_INTERVAL_MS", "500"),
        (
            "UMBRA_SERVICE__MODELS",
            "[\"seasonal-naive\", \"mstl-autoets\"]",
        ),
        ("UMBRA_SERVICE__BACKTEST_ORIGINS", "1"),
    ];
    let topic = format!("{p}umbra.forecasts");
    let input: Input<WorkloadKey, DemandForecast> =
        Input::new(stack.registry.clone(), topic.clone()).await?;

    let mut svc = Service::start(&stack, "forecast", &p, &env)?;
    svc.wait_ready(Duration::from_secs(60)).await?;
    let got = stack
        .read_until(&topic, Duration::from_secs(90), |r| !r.is_empty())
        .await?;
    assert!(
        !got.is_empty(),
        "a forecast was published; log:\n{}",
        svc.log_text()
    );
    let first = input
        .decode_value(got[0].value.as_deref().expect("value"))
        .await?;
    assert_eq!(first.workload_id, "vm-fc");
    let lens: Vec<usize> = first.horizons.iter().map(|h| h.points.len()).collect();
    assert_eq!(lens, vec![12, 288, 168]);
    assert!(
        !first.model.contains("last-value"),
        "a real model after 3 days of history: {}",
        first.model
    );
    // The event doubles the day-ahead CPU forecast inside its window (hour 1 to 2).
    let day = &first.horizons[1].points;
    let inside = day
        .iter()
        .find(|pt| pt.time == event.start_time)
        .expect("window point");
    let yesterday = point((event.start_time - 86_400_000 - T0_MS) / 300_000)
        .cpu_millicores
        .mean;
    let ratio = inside.cpu_millicores.mean / yesterday;
    assert!(
        (ratio - 2.0).abs() < 0.3,
        "inside the event window the forecast is {ratio:.2}× the same time yesterday"
    );
    for pt in day {
        let c = &pt.cpu_millicores;
        assert!(
            c.lower_95 <= c.lower_80 && c.lower_80 <= c.upper_80 && c.upper_80 <= c.upper_95,
            "ordered intervals"
        );
        assert!(c.lower_95 >= 0.0, "clipped at zero");
        assert!(c.upper_95 <= 8000.0, "clipped at the CPU capacity");
    }
    svc.signal("TERM")?;
    assert_eq!(svc.wait_exit(Duration::from_secs(30)).await?, Some(0));

    // Restart with no new input: the history comes back from Kafka and a real forecast follows.
    let mut svc = Service::start(&stack, "forecast", &p, &env)?;
    svc.wait_ready(Duration::from_secs(60)).await?;
    let got = stack
        .read_until(&topic, Duration::from_secs(90), |r| r.len() >= 2)
        .await?;
    assert!(
        got.len() >= 2,
        "a forecast after the restart; log:\n{}",
        svc.log_text()
    );
    let second = input
        .decode_value(got[got.len() - 1].value.as_deref().expect("value"))
        .await?;
    assert!(second.generated_at > first.generated_at);
    assert!(
        !second.model.contains("last-value"),
        "history survived the restart: {}",
        second.model
    );
    assert_eq!(
        second.horizons[1].points[0].time, first.horizons[1].points[0].time,
        "same history, same forecast start"
    );
    svc.signal("TERM")?;
    assert_eq!(svc.wait_exit(Duration::from_secs(30)).await?, Some(0));
    Ok(())
}
