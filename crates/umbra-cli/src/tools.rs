//! Commands for people: produce a request, follow decisions, print the shadow table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use umbra_schemas::{
    AllocationDecision, Record, Resources, ShadowEntry, WorkloadKey, WorkloadRequest,
};
use umbra_stream::config::KafkaSettings;
use umbra_stream::kafka;
use umbra_stream::processor::{send, Input, Output};
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};
use umbra_stream::telemetry::{with_headers, TraceCtx};

use crate::Endpoints;

/// Arguments of `umbra request`.
#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Workload to place.
    #[arg(long)]
    workload: String,
    /// CPU of one replica, in millicores.
    #[arg(long, default_value_t = 1000)]
    cpu_millicores: i64,
    /// Memory of one replica, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    memory_bytes: i64,
    /// Disk I/O of one replica, in bytes per second.
    #[arg(long, default_value_t = 0)]
    disk_io_bytes_per_s: i64,
    /// Request id; a random one when omitted. Re-sending an id yields no second decision.
    #[arg(long)]
    request_id: Option<String>,
    /// Labels, as key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not key=value"))
}

/// The endpoints with the `UMBRA_KAFKA__*` security settings of the environment.
fn settings(e: &Endpoints) -> anyhow::Result<KafkaSettings> {
    let mut s = umbra_stream::config::kafka_from_env(&e.bootstrap_servers)?;
    s.connect_timeout_ms = 5_000;
    Ok(s)
}

/// Waits for the broker and returns its settings with a registry client.
pub(crate) async fn connect(
    e: &Endpoints,
) -> anyhow::Result<(KafkaSettings, Arc<dyn SchemaRegistry>)> {
    let s = settings(e)?;
    kafka::wait_for_broker(&s).await?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(HttpRegistry::with_settings(
        &umbra_stream::config::registry_from_env(&e.registry_url)?,
    )?);
    Ok((s, registry))
}

/// `umbra request`.
pub async fn request(args: RequestArgs) -> anyhow::Result<()> {
    let (settings, registry) = connect(&args.endpoints).await?;
    let topic = format!("{}umbra.workload.requests", args.endpoints.topic_prefix);
    kafka::partitions(&settings, &topic).await?;
    let out: Output<WorkloadKey, WorkloadRequest> = Output::new(registry, topic.clone())
        .await
        .with_context(|| {
            format!(
                "is the registry at {} running? `umbra dev up` starts one",
                args.endpoints.registry_url
            )
        })?;
    let request = WorkloadRequest {
        request_id: args
            .request_id
            .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4())),
        workload_id: args.workload.clone(),
        labels: args.labels.into_iter().collect::<HashMap<_, _>>(),
        resources: Resources {
            cpu_millicores: args.cpu_millicores,
            memory_bytes: args.memory_bytes,
            disk_io_bytes_per_s: args.disk_io_bytes_per_s,
        },
        requested_at: umbra_stream::now_millis(),
    };
    let producer = kafka::producer(&settings)?;
    let emit = out.record(
        &WorkloadKey {
            workload_id: args.workload,
        },
        &request,
    )?;
    let trace = TraceCtx::root("umbra request");
    send(
        &producer,
        &emit,
        with_headers(OwnedHeaders::new(), &trace.send(&emit.topic)),
    )
    .await?;
    println!("{}", serde_json::to_string(&request)?);
    eprintln!(
        "produced request {} to {topic} (trace {})",
        request.request_id,
        trace.trace_id()
    );
    Ok(())
}

/// Reads every partition of `topic` from the beginning and prints each value as a JSON line;
/// stops at the end offsets read at start unless `follow`.
async fn dump<V: Record>(
    e: &Endpoints,
    default_topic: &str,
    follow: bool,
    table_mode: bool,
) -> anyhow::Result<()> {
    let (settings, registry) = connect(e).await?;
    let topic = format!("{}{default_topic}", e.topic_prefix);
    let partitions = kafka::partitions(&settings, &topic).await?;
    let input: Input<WorkloadKey, V> = Input::new(registry, topic.clone()).await?;
    let consumer = kafka::reader(&settings)?;
    let end = kafka::end_offsets(&consumer, &topic, &partitions).await?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut positions: HashMap<i32, i64> = HashMap::new();
    let mut rows: std::collections::BTreeMap<String, Option<V>> = std::collections::BTreeMap::new();
    let caught_up = |pos: &HashMap<i32, i64>| {
        end.iter()
            .all(|(p, e)| pos.get(p).copied().unwrap_or(0) >= *e)
    };
    while follow || !caught_up(&positions) {
        let msg = match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(m) => m?,
            Err(_) if follow => continue,
            Err(_) => bail!("no progress reading {topic} for 5 s (at {positions:?}, end {end:?})"),
        };
        positions.insert(msg.partition(), msg.offset() + 1);
        let key = match msg.key() {
            Some(k) => input
                .decode_key(k)
                .await
                .map(|k| k.workload_id)
                .unwrap_or_else(|e| format!("<bad key: {e}>")),
            None => "<no key>".into(),
        };
        let value = match msg.payload() {
            None => None,
            Some(v) => match input.decode_value(v).await {
                Ok(v) => Some(v),
                Err(err) => {
                    eprintln!(
                        "{topic}[{}]@{}: cannot decode: {err}",
                        msg.partition(),
                        msg.offset()
                    );
                    continue;
                }
            },
        };
        if table_mode {
            rows.insert(key, value);
        } else if let Some(v) = value {
            println!("{}", serde_json::to_string(&v)?);
        }
    }
    for v in rows.values().flatten() {
        println!("{}", serde_json::to_string(v)?);
    }
    Ok(())
}

/// `umbra decisions`.
pub async fn decisions(e: Endpoints, follow: bool) -> anyhow::Result<()> {
    dump::<AllocationDecision>(&e, "umbra.allocation.decisions", follow, false).await
}

/// `umbra table`.
pub async fn table(e: Endpoints) -> anyhow::Result<()> {
    dump::<ShadowEntry>(&e, "umbra.shadow.table", false, true).await
}
