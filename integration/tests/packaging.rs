//! The Docker packaging, checked without a Docker engine (none runs here): every binary the
//! Dockerfile builds and copies is a binary of the workspace, every image compose.yaml builds
//! is a stage of the Dockerfile, every service and the fleet simulator is in the stack, and
//! Kafka UI decodes through the registry the stack runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `[[bin]]` of the workspace's packages, from `cargo metadata`.
fn workspace_binaries() -> BTreeSet<String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

struct Dockerfile {
    stages: BTreeSet<String>,
    built: BTreeSet<String>,
    copied: BTreeSet<String>,
    entrypoints: BTreeSet<String>,
}

fn dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(root().join("docker/Dockerfile")).expect("Dockerfile");
    let mut d = Dockerfile {
        stages: BTreeSet::new(),
        built: BTreeSet::new(),
        copied: BTreeSet::new(),
        entrypoints: BTreeSet::new(),
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"FROM") {
            if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                d.stages.insert(words[i + 1].to_string());
            }
        }
        for w in words.windows(2) {
            if w[0] == "--bin" {
                d.built.insert(w[1].to_string());
            }
        }
        if line.starts_with("COPY --from=build /out/") {
            let bin = words[2].trim_start_matches("/out/");
            d.copied.insert(bin.to_string());
        }
        if let Some(rest) = line.strip_prefix("ENTRYPOINT [\"") {
            d.entrypoints
                .insert(rest.split('"').next().unwrap_or_default().to_string());
        }
    }
    d
}

#[test]
fn the_dockerfile_builds_workspace_binaries_into_one_small_image_each() {
    let bins = workspace_binaries();
    let d = dockerfile();
    assert!(!d.built.is_empty());
    for b in d.built.iter().chain(&d.copied).chain(&d.entrypoints) {
        assert!(
            bins.contains(b),
            "{b} is not a binary of the workspace ({bins:?})"
        );
    }
    assert_eq!(
        d.built, d.copied,
        "every binary built is shipped, and only those"
    );
    assert_eq!(d.copied, d.entrypoints, "one runtime image per binary");
    // Every service binary and the fleet simulator have an image.
    for b in [
        "umbra",
        "umbra-ingest",
        "umbra-forecast",
        "umbra-shadow-manager",
        "umbra-interceptor",
        "umbra-rebalancer",
        "umbra-fleet-sim",
    ] {
        assert!(d.copied.contains(b), "no image for {b}");
    }
}

#[test]
fn compose_runs_the_whole_stack_with_kafka_ui_on_the_registry() {
    let d = dockerfile();
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).expect("compose");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("compose.yaml is YAML");
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for s in [
        "kafka",
        "registry",
        "kafka-ui",
        "topics",
        "ingest",
        "forecast",
        "shadow-manager",
        "interceptor",
        "rebalancer",
        "fleet-sim",
    ] {
        assert!(names.contains(s), "compose has no {s}");
    }
    for (name, svc) in services {
        let name = name.as_str().unwrap_or_default();
        // Anchors merge (`<<: *umbra-service`) are resolved by compose, not serde_yaml.
        let build = &svc["build"];
        if !build.is_null() {
            assert_eq!(
                build["dockerfile"].as_str(),
                Some("docker/Dockerfile"),
                "{name}"
            );
            let target = build["target"].as_str().expect("a build target");
            assert!(
                d.stages.contains(target),
                "{name}: no stage {target} in the Dockerfile"
            );
        }
        for dep in svc["depends_on"]
            .as_mapping()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let dep = dep.as_str().unwrap_or_default();
            assert!(names.contains(dep), "{name} depends on unknown {dep}");
        }
    }
    let ui = &services["kafka-ui"]["environment"];
    assert_eq!(
        ui["KAFKA_CLUSTERS_0_SCHEMAREGISTRY"].as_str(),
        Some("http://registry:8081")
    );
    assert_eq!(
        ui["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"].as_str(),
        Some("kafka:9092")
    );
    // The services reach the same Kafka and registry.
    let common = &doc["x-umbra-service"]["environment"];
    assert_eq!(
        common["KAFKA_BOOTSTRAP_SERVERS"].as_str(),
        Some("kafka:9092")
    );
    assert_eq!(
        common["SCHEMA_REGISTRY_URL"].as_str(),
        Some("http://registry:8081")
    );
    assert_eq!(
        services["registry"]["command"][4].as_str(),
        Some("kafka:9092"),
        "the registry keeps its schemas in the stack's Kafka"
    );
}
