//! The short fault suite (`umbra chaos --short`), as `make test` runs it: every scenario on a
//! broker and registry of the suite's own, judged by the history checker. It fails on any
//! violated invariant; the table it prints is checked to cover every scenario and invariant.

use std::process::Command;

use umbra_integration::{binary, free_port};

#[test]
fn the_short_fault_suite_finds_no_violation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("chaos.md");
    let run = Command::new(binary("umbra")?)
        .args(["chaos", "--short", "--seed", "11"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--broker-port", &free_port().to_string()])
        .args(["--registry-port", &free_port().to_string()])
        .arg("--out")
        .arg(&out)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("SCHEMA_REGISTRY_URL")
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "umbra chaos --short failed:\n{stdout}\n{stderr}"
    );
    let table = std::fs::read_to_string(&out)?;
    for scenario in [
        "kill",
        "broker",
        "registry",
        "rebalance",
        "bad-input",
        "fleet",
        "mixed",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("| {scenario} |"))),
            "{scenario} missing from\n{table}"
        );
    }
    for invariant in umbra_history::INVARIANTS {
        assert!(
            table.contains(invariant),
            "{invariant} missing from\n{table}"
        );
    }
    assert!(!table.contains("violations"), "{table}");
    // The poison scenarios injected their poison and found it dead-lettered.
    let bad = table
        .lines()
        .find(|l| l.starts_with("| bad-input |"))
        .unwrap_or_default();
    assert!(bad.contains("| 15 |"), "fifteen poison records: {bad}");
    Ok(())
}
