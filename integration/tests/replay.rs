//! `umbra replay`, shortened: a few VMs of the real trace through the real broker, registry,
//! services and fleet simulator, then the report. Also what a user meets around it: a taken
//! port, and ^C in the middle.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use umbra_integration::{binary, Stack};

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/bitbrains-rnd")
}

fn replay(state: &Path, out: &Path) -> Command {
    replay_days(state, out, "1")
}

/// The short replay over `live_days` live days.
fn replay_days(state: &Path, out: &Path, live_days: &str) -> Command {
    let mut c = Command::new(binary("umbra").expect("umbra built"));
    c.arg("replay")
        .arg("--data")
        .arg(data_dir())
        .args(["--vms", "4", "--seed", "3", "--history-days", "3"])
        .args([
            "--live-days",
            live_days,
            "--live-minutes",
            "0.75",
            "--quiet",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--out")
        .arg(out);
    c
}

/// Runs the short replay against the test stack; its summary and printed output.
fn run_replay(
    stack: &Stack,
    dir: &Path,
    live_days: &str,
    extra: &[&str],
) -> (serde_json::Value, String) {
    let out = dir.join("report");
    let output = replay_days(&dir.join("state"), &out, live_days)
        .args(extra)
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.bootstrap)
        .env("SCHEMA_REGISTRY_URL", &stack.registry_url)
        .output()
        .expect("umbra replay runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "umbra replay failed:\n{stdout}\n{stderr}"
    );
    assert!(out.join("report.html").is_file(), "{stdout}\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
            .expect("summary.json parses");
    (summary, format!("{stdout}\n{stderr}"))
}

/// The lockstep replay, the default, measures the policy, not the machine: the same seed
/// gives the same summary twice (docs/replay.md), and the pipeline's hits agree with the
/// offline core's. A quarter of a day of this trace holds step 27, where a write loop once
/// kept a barrier from settling.
#[tokio::test(flavor = "multi_thread")]
async fn a_lockstep_replay_gives_the_same_summary_twice() {
    let stack = Stack::connect().await.expect("test stack");
    // A quarter of a day: 72 steps, about two seconds each here (debug build).
    let (dir1, dir2) = (tempfile_dir("replay-det-1"), tempfile_dir("replay-det-2"));
    let (first, log) = run_replay(&stack, &dir1, "0.25", &[]);
    let (second, _) = run_replay(&stack, &dir2, "0.25", &[]);
    // Request by request, the same decision on the same host and shadow.
    let decisions = |d: &Path| {
        std::fs::read_to_string(d.join("report").join("decisions.jsonl")).expect("decisions.jsonl")
    };
    let (d1, d2) = (decisions(&dir1), decisions(&dir2));
    assert!(d1.lines().count() > 0, "no decisions written");
    for (a, b) in d1.lines().zip(d2.lines()) {
        assert_eq!(a, b, "two runs of the same seed decided a request apart");
    }
    assert_eq!(d1.lines().count(), d2.lines().count());
    assert_eq!(first["mode"], "lockstep", "{first}");
    assert!(log.contains("lockstep:"), "{log}");
    assert!(
        first["decisions"]["requests"].as_u64() > Some(0),
        "the trace made no requests: {first}"
    );
    for field in [
        "policies",
        "decisions",
        "overcommitted_hosts",
        "forecast",
        "curve",
    ] {
        assert_eq!(
            first[field], second[field],
            "{field} differs between two runs of the same seed"
        );
    }
    // The conformance line: the pipeline and the offline core at the same budget agree.
    let conformance = log
        .lines()
        .find(|l| l.starts_with("conformance at budget"))
        .unwrap_or_else(|| panic!("no conformance line: {log}"));
    let shares: Vec<f64> = conformance
        .split_whitespace()
        .filter_map(|w| w.strip_suffix('%').and_then(|n| n.parse().ok()))
        .collect();
    assert!(
        shares.len() >= 2 && (shares[0] - shares[1]).abs() <= 1.0,
        "pipeline and offline core disagree: {conformance}"
    );
    // And the slots the scale-up stage held, step by step, are the offline core's.
    let slots = log
        .lines()
        .find(|l| l.starts_with("slots per pool, step by step"))
        .unwrap_or_else(|| panic!("no slot conformance line: {log}"));
    let counts: Vec<usize> = slots
        .split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] == counts[1] && counts[0] > 0,
        "the pipeline's slots part from the offline core's: {slots}"
    );
    assert_eq!(first["decisions"]["behind_trace_minutes_p99"], 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_replay_decides_every_request_once_and_writes_the_report() {
    let stack = Stack::connect().await.expect("test stack");
    let dir = tempfile_dir("replay");
    let out = dir.join("report");
    // The real-time mode: inputs on a compressed clock, decisions as late as they come.
    let (summary, stdout) = run_replay(&stack, &dir, "1", &["--realtime"]);
    assert_eq!(summary["mode"], "realtime");
    assert!(
        summary["decisions"]["behind_trace_minutes_p50"].is_f64(),
        "{summary}"
    );
    for svg in [
        "hits-and-reservations.svg",
        "forecasts.svg",
        "utilization.svg",
    ] {
        assert!(out.join(svg).is_file(), "{svg} missing");
    }
    // The offline sweep's curve rides along, every policy on it, umbra's row with its
    // rejected and undecided requests.
    let curve = summary["curve"].as_array().expect("a curve");
    for policy in ["umbra", "static-size-classes", "keep-alive-1h", "oracle"] {
        assert!(
            curve.iter().any(|p| p["policy"] == policy),
            "{policy} on the curve"
        );
    }
    assert!(
        summary["policies"][0]["rejected"].is_u64() && summary["policies"][0]["undecided"].is_u64()
    );
    let d = &summary["decisions"];
    let requests = d["requests"].as_u64().expect("requests");
    assert!(requests > 0, "the trace made no requests: {summary}");
    assert_eq!(
        d["decided"], d["requests"],
        "every request decided: {summary}"
    );
    assert_eq!(d["duplicated"], 0, "no request decided twice: {summary}");
    assert_eq!(summary["overcommitted_hosts"], 0, "{summary}");
    let policies: Vec<&str> = summary["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| p["policy"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        policies,
        [
            "umbra",
            "reactive",
            "static-equal-reserve",
            "static-equal-hits",
            "oracle"
        ]
    );
    for p in summary["policies"].as_array().into_iter().flatten() {
        assert_eq!(p["requests"].as_u64(), Some(requests), "same requests: {p}");
    }
    // The summary table is printed too.
    assert!(stdout.contains("static-equal-reserve"), "{stdout}");
    // The services it started are gone.
    assert_no_pid_files(&dir.join("state"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_named_in_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile_dir("replay-port");
    let output = replay(&dir.join("state"), &dir.join("out"))
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("SCHEMA_REGISTRY_URL")
        .args(["--broker-port", &port.to_string()])
        .output()
        .expect("umbra replay runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("port {port}")) && stderr.contains("taken"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_the_services_and_a_second_run_needs_no_clean_up() {
    let stack = Stack::connect().await.expect("test stack");
    let dir = tempfile_dir("replay-int");
    let state = dir.join("state");
    let log = dir.join("stderr.log");
    let mut child = replay(&state, &dir.join("out"))
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.bootstrap)
        .env("SCHEMA_REGISTRY_URL", &stack.registry_url)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("umbra replay starts");
    // Interrupt once the services are running.
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("history:")
    {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no progress: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(child.try_wait().expect("wait").is_none(), "exited early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pids = pid_files(&state);
    assert!(!pids.is_empty(), "services were running");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not stopped 60 s after ^C"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exit.code(), Some(130), "{exit:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("interrupted"), "{text}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "service {pid} still running after ^C"
        );
    }
    assert_no_pid_files(&state);
}

fn pid_files(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| t.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_no_pid_files(dir: &Path) {
    let left = pid_files(dir);
    assert!(
        left.is_empty(),
        "pid files left in {}: {left:?}",
        dir.display()
    );
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("umbra-it-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
