//! Every schema round-trips through the real registry and the real broker.

use std::time::Duration;

use umbra_integration::Stack;
use umbra_schemas::*;
use umbra_stream::processor::{send, Input, Output};

async fn round_trip<
    K: Record + PartialEq + std::fmt::Debug,
    V: Record + PartialEq + std::fmt::Debug,
>(
    stack: &Stack,
    topic: &str,
) -> anyhow::Result<()> {
    let out: Output<K, V> = Output::new(stack.registry.clone(), topic.to_string()).await?;
    let input: Input<K, V> = Input::new(stack.registry.clone(), topic.to_string()).await?;
    let producer = stack.producer()?;
    send(
        &producer,
        &out.record(&K::example(), &V::example())?,
        Default::default(),
    )
    .await?;
    let got = stack
        .read_until(topic, Duration::from_secs(20), |r| !r.is_empty())
        .await?;
    assert_eq!(got.len(), 1, "{topic}: one record expected");
    let r = &got[0];
    let key = input.decode_key(r.key.as_deref().expect("key")).await?;
    let value = input
        .decode_value(r.value.as_deref().expect("value"))
        .await?;
    assert_eq!(key, K::example(), "{topic} key");
    assert_eq!(value, V::example(), "{topic} value");
    Ok(())
}

#[tokio::test]
async fn every_schema_round_trips_through_registry_and_broker() -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let t = |name: &str| format!("{p}{name}");
    round_trip::<WorkloadKey, UsageSample>(&stack, &t("umbra.usage.raw")).await?;
    round_trip::<HostKey, HostMetrics>(&stack, &t("umbra.host.metrics")).await?;
    round_trip::<EventKey, ExternalEvent>(&stack, &t("umbra.events.external")).await?;
    round_trip::<WorkloadKey, UsagePoint>(&stack, &t("umbra.usage.series")).await?;
    round_trip::<HostKey, HostState>(&stack, &t("umbra.host.state")).await?;
    round_trip::<WorkloadKey, DemandForecast>(&stack, &t("umbra.forecasts")).await?;
    round_trip::<WorkloadKey, ShadowEntry>(&stack, &t("umbra.shadow.table")).await?;
    round_trip::<WorkloadKey, WorkloadRequest>(&stack, &t("umbra.workload.requests")).await?;
    round_trip::<WorkloadKey, AllocationDecision>(&stack, &t("umbra.allocation.decisions")).await?;
    round_trip::<WorkloadKey, Claim>(&stack, &t("umbra.claims")).await?;
    round_trip::<HostKey, FleetCommand>(&stack, &t("umbra.fleet.commands")).await?;
    round_trip::<HostKey, FleetEvent>(&stack, &t("umbra.fleet.events")).await?;
    round_trip::<WorkloadKey, ReshadowRequest>(&stack, &t("umbra.reshadow.requests")).await?;
    round_trip::<WorkloadKey, WorkloadScale>(&stack, &t("umbra.workload.scale")).await?;
    round_trip::<WorkloadKey, ScaleUpForecast>(&stack, &t("umbra.scaleup.forecasts")).await?;
    // Every catalog topic was exercised above.
    assert_eq!(TOPICS.len(), 15);
    let subjects: Vec<String> = reqwest::get(format!("{}/subjects", stack.registry_url))
        .await?
        .json()
        .await?;
    for topic in TOPICS {
        for s in [
            format!("{p}{}", topic.key_subject()),
            format!("{p}{}", topic.value_subject()),
        ] {
            assert!(subjects.contains(&s), "subject {s} registered");
        }
    }
    Ok(())
}
