//! `make bench`: the runtime's hot paths against a plain baseline measured in the same run.
//!
//! - codec encode: umbra's `Codec::encode` (Avro + Confluent framing) vs bare apache-avro
//!   serialisation of the same value;
//! - codec decode: `Codec::decode` (framing check, schema resolution, serde) vs the same
//!   apache-avro resolution and serde on the unframed body;
//! - table apply: `TableState::apply` vs `HashMap::insert` of the same rows.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use umbra_schemas::{from_datum, to_datum, Record, UsageSample};
use umbra_stream::codec::Codec;
use umbra_stream::registry::{FixedRegistry, SchemaRegistry};
use umbra_stream::table::TableState;

fn rate(n: usize, f: impl FnMut(usize)) -> f64 {
    let mut f = f;
    // Warm-up: caches, allocator, branch predictors.
    for i in 0..n / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn row(name: &str, ours: f64, baseline: f64) {
    println!(
        "{name:<16} {ours:>14.0} {baseline:>14.0} {:>8.2}",
        ours / baseline
    );
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let registry: Arc<dyn SchemaRegistry> = Arc::new(FixedRegistry::default());
    let codec: Codec<UsageSample> = rt
        .block_on(Codec::register(registry, "bench-value".into()))
        .expect("codec");
    let schema = UsageSample::SCHEMA.parse().expect("schema");
    let sample = UsageSample::example();

    println!("umbra bench: {n} operations each, one core, ops/s (higher is better)");
    println!(
        "{:<16} {:>14} {:>14} {:>8}",
        "operation", "umbra", "baseline", "ratio"
    );

    let encode = rate(n, |_| {
        black_box(codec.encode(black_box(&sample)).expect("encode"));
    });
    let encode_base = rate(n, |_| {
        black_box(to_datum(&schema, black_box(&sample)).expect("encode"));
    });
    row("codec encode", encode, encode_base);

    let framed = codec.encode(&sample).expect("encode");
    let body = framed[5..].to_vec();
    let decode = rate(n, |_| {
        black_box(
            rt.block_on(codec.decode(black_box(&framed)))
                .expect("decode"),
        );
    });
    let decode_base = rate(n, |_| {
        black_box(from_datum::<UsageSample>(&schema, &schema, black_box(&body)).expect("decode"));
    });
    row("codec decode", decode, decode_base);

    let keys: Vec<String> = (0..10_000).map(|i| format!("vm-{i:05}")).collect();
    let mut table = TableState::<u64>::default();
    let apply = rate(n, |i| {
        table.apply(
            (i % 3) as i32,
            i as i64,
            keys[i % keys.len()].clone(),
            Some(i as u64),
        )
    });
    let mut map = HashMap::<String, u64>::new();
    let insert = rate(n, |i| {
        map.insert(keys[i % keys.len()].clone(), i as u64);
    });
    row("table apply", apply, insert);
    black_box((table.len(), map.len()));
}
