//! The Rust types and the `.avsc` files must not drift apart, and every schema must follow the
//! project's rules (namespace, docs, enum defaults, timestamp-millis).

use apache_avro::{AvroSchema, Schema};
use serde_json::Value;
use umbra_schemas::*;

fn check_agrees<T: Record + AvroSchema + PartialEq + std::fmt::Debug>() {
    let file = T::SCHEMA;
    let from_file = file.parse().expect("parses");
    let from_rust = T::get_schema();
    // apache-avro leaves a logical type's base as `{"type":"long"}` after stripping
    // `logicalType`; the spec's [PRIMITIVES] rule reduces it to `"long"`.
    let pcf = |s: &Schema| {
        s.canonical_form()
            .replace(r#"{"type":"long"}"#, r#""long""#)
    };
    assert_eq!(
        pcf(&from_rust),
        pcf(&from_file),
        "{} and its Rust type disagree",
        file.file
    );
    let example = T::example();
    let bytes = to_datum(&from_file, &example).expect("encodes");
    let back: T = from_datum(&from_file, &from_file, &bytes).expect("decodes");
    assert_eq!(back, example, "{} does not round-trip", file.file);
    let fast: T = umbra_schemas::from_datum_same(&from_file, &bytes).expect("fast path decodes");
    assert_eq!(
        fast, example,
        "{} does not round-trip on the fast path",
        file.file
    );
}

#[test]
fn rust_types_agree_with_avsc_files() {
    check_agrees::<WorkloadKey>();
    check_agrees::<HostKey>();
    check_agrees::<EventKey>();
    check_agrees::<UsageSample>();
    check_agrees::<HostMetrics>();
    check_agrees::<ExternalEvent>();
    check_agrees::<UsagePoint>();
    check_agrees::<HostState>();
    check_agrees::<DemandForecast>();
    check_agrees::<ShadowEntry>();
    check_agrees::<WorkloadRequest>();
    check_agrees::<AllocationDecision>();
    check_agrees::<Claim>();
    check_agrees::<FleetCommand>();
    check_agrees::<FleetEvent>();
    check_agrees::<ReshadowRequest>();
    check_agrees::<WorkloadScale>();
    check_agrees::<ScaleUpForecast>();
}

#[test]
fn every_file_in_schemas_dir_is_bound_to_a_type() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .expect("schemas dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".avsc"))
        .collect();
    on_disk.sort();
    let mut bound: Vec<String> = ALL_FILES.iter().map(|f| f.file.to_string()).collect();
    bound.sort();
    assert_eq!(on_disk, bound);
}

fn walk(v: &Value, path: &str, problems: &mut Vec<String>) {
    let Value::Object(o) = v else {
        if let Value::Array(items) = v {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), problems);
            }
        }
        return;
    };
    match o.get("type").and_then(Value::as_str) {
        Some("record") | Some("enum") => {
            let name = o.get("name").and_then(Value::as_str).unwrap_or("?");
            if o.get("namespace").and_then(Value::as_str) != Some("io.umbra.v1") {
                problems.push(format!("{path}: {name} lacks namespace io.umbra.v1"));
            }
            if o.get("doc")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{path}: {name} lacks a doc"));
            }
            if o.get("type").and_then(Value::as_str) == Some("enum") {
                let default = o.get("default").and_then(Value::as_str);
                if default != Some("UNKNOWN") {
                    problems.push(format!("{path}: enum {name} lacks default UNKNOWN"));
                }
            }
            if let Some(Value::Array(fields)) = o.get("fields") {
                for f in fields {
                    let fname = f.get("name").and_then(Value::as_str).unwrap_or("?");
                    let fpath = format!("{path}.{fname}");
                    if f.get("doc")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        problems.push(format!("{fpath}: field lacks a doc"));
                    }
                    let is_time = ["_time", "_at", "_start", "_end"]
                        .iter()
                        .any(|s| fname.ends_with(s))
                        || fname == "time";
                    if is_time
                        && f["type"].get("logicalType").and_then(Value::as_str)
                            != Some("timestamp-millis")
                    {
                        problems.push(format!("{fpath}: timestamp field is not timestamp-millis"));
                    }
                    walk(&f["type"], &fpath, problems);
                }
            }
        }
        Some("array") => walk(&o["items"], path, problems),
        Some("map") => walk(&o["values"], path, problems),
        _ => {}
    }
}

#[test]
fn schemas_follow_the_project_rules() {
    let mut problems = Vec::new();
    for f in ALL_FILES {
        let v: Value = serde_json::from_str(f.text).expect("json");
        walk(&v, f.file, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "schema rule violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn unknown_enum_symbol_reads_as_default() {
    // A writer that knows a newer Outcome symbol; this reader must map it to UNKNOWN.
    let writer = Schema::parse_str(ALLOCATION_DECISION_NEWER).expect("parses");
    let reader = files::ALLOCATION_DECISION.parse().expect("parses");
    let mut d = AllocationDecision::example();
    d.outcome = Outcome::Standard;
    let value = apache_avro::types::Value::Record(vec![
        (
            "request_id".into(),
            apache_avro::types::Value::String(d.request_id.clone()),
        ),
        (
            "workload_id".into(),
            apache_avro::types::Value::String(d.workload_id.clone()),
        ),
        (
            "outcome".into(),
            apache_avro::types::Value::Enum(4, "QUEUED".into()),
        ),
        (
            "host_id".into(),
            apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
        ),
        (
            "shadow_id".into(),
            apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
        ),
        (
            "requested_at".into(),
            apache_avro::types::Value::TimestampMillis(d.requested_at),
        ),
        (
            "decided_at".into(),
            apache_avro::types::Value::TimestampMillis(d.decided_at),
        ),
        (
            "reason".into(),
            apache_avro::types::Value::String(d.reason.clone()),
        ),
    ]);
    let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&writer)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("encodes");
    let back: AllocationDecision = from_datum(&writer, &reader, &bytes).expect("resolves");
    assert_eq!(back.outcome, Outcome::Unknown);
}

const ALLOCATION_DECISION_NEWER: &str = r#"{
  "type": "record", "name": "AllocationDecision", "namespace": "io.umbra.v1",
  "fields": [
    {"name": "request_id", "type": "string"},
    {"name": "workload_id", "type": "string"},
    {"name": "outcome", "type": {"type": "enum", "name": "Outcome",
      "symbols": ["UNKNOWN", "SHADOW_HIT", "STANDARD", "REJECTED", "QUEUED"], "default": "UNKNOWN"}},
    {"name": "host_id", "type": ["null", "string"], "default": null},
    {"name": "shadow_id", "type": ["null", "string"], "default": null},
    {"name": "requested_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "decided_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "reason", "type": "string"}
  ]
}"#;
