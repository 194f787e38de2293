//! `umbra import prometheus` against a real Prometheus server (the Debian package, started
//! here on 127.0.0.1) holding data loaded with `promtool tsdb create-blocks-from openmetrics`:
//! series mapped to workloads by label, backfilled as usage series, and what cannot be used
//! is counted, not dropped silently.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use umbra_integration::{free_port, Stack};
use umbra_schemas::*;
use umbra_stream::processor::Input;

struct Prometheus(std::process::Child);
impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> anyhow::Result<std::path::PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let p = std::path::Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed: install the Debian package 'prometheus' (.ci/run does)")
}

#[tokio::test]
async fn prometheus_history_is_backfilled_as_usage_series() -> anyhow::Result<()> {
    let stack = Stack::connect().await?;
    let p = stack.fresh_prefix().await?;
    let dir = std::env::temp_dir().join(format!("umbra-prom-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    // 24 five-minute points for two pods, ending three hours ago (promtool writes blocks for
    // the past only), one series without the pod label, one NaN.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let t1 = (now - 3 * 3600) / 300 * 300;
    let t0 = t1 - 23 * 300;
    let mut om = String::from("# TYPE container_cpu_cores gauge\n");
    for i in 0..24 {
        let t = t0 + i * 300;
        om += &format!(
            "container_cpu_cores{{pod=\"web-1\"}} {} {t}\n",
            0.25 + i as f64 * 0.01
        );
        if i == 5 {
            om += &format!("container_cpu_cores{{pod=\"web-2\"}} NaN {t}\n");
        } else {
            om += &format!("container_cpu_cores{{pod=\"web-2\"}} 1.5 {t}\n");
        }
        om += &format!("container_cpu_cores{{namespace=\"x\"}} 9 {t}\n");
    }
    om += "# TYPE container_memory_bytes gauge\n";
    for i in 0..24 {
        om += &format!(
            "container_memory_bytes{{pod=\"web-1\"}} 1073741824 {}\n",
            t0 + i * 300
        );
    }
    om += "# EOF\n";
    let om_path = dir.join("data.om");
    std::fs::write(&om_path, om)?;
    let data = dir.join("tsdb");
    let out = Command::new(tool("promtool")?)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om_path)
        .arg(&data)
        .output()?;
    if !out.status.success() {
        bail!(
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 1h\nscrape_configs: []\n",
    )?;
    let port = free_port();
    let _prom = Prometheus(
        Command::new(tool("prometheus")?)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=100y")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
            .spawn()
            .context("starting prometheus")?,
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{url}/-/ready"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!(
                "prometheus not ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = Command::new(umbra_integration::binary("umbra")?)
        .args([
            "import",
            "prometheus",
            "--url",
            &url,
            "--query",
            "container_cpu_cores",
            "--memory-query",
            "container_memory_bytes",
        ])
        .args([
            "--from",
            &t0.to_string(),
            "--to",
            &t1.to_string(),
            "--step",
            "300",
            "--workload-label",
            "pod",
        ])
        .args([
            "--bootstrap-servers",
            &stack.bootstrap,
            "--registry-url",
            &stack.registry_url,
            "--topic-prefix",
            &p,
        ])
        .output()?;
    let said = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(said.contains("imported 47 points of 2 workloads"), "{said}");
    assert!(
        said.contains("skipped 1 series without label 'pod' and 1 values"),
        "{said}"
    );
    let topic = format!("{p}umbra.usage.series");
    let raws = stack
        .read_until(&topic, Duration::from_secs(30), |r| r.len() >= 47)
        .await?;
    let input: Input<WorkloadKey, UsagePoint> = Input::new(stack.registry.clone(), topic).await?;
    let mut got: BTreeMap<(String, i64), UsagePoint> = BTreeMap::new();
    for r in &raws {
        let pt = input
            .decode_value(r.value.as_deref().unwrap_or_default())
            .await?;
        got.insert((pt.workload_id.clone(), pt.bucket_start), pt);
    }
    assert_eq!(got.len(), 47);
    let first = &got[&("web-1".to_string(), t0 * 1000)];
    assert_eq!(first.cpu_millicores.mean, 250.0);
    assert_eq!(first.memory_bytes.mean, 1_073_741_824.0);
    assert_eq!(first.bucket_seconds, 300);
    assert_eq!(
        got[&("web-1".to_string(), t1 * 1000)]
            .cpu_millicores
            .mean
            .round(),
        480.0
    );
    assert_eq!(
        got[&("web-2".to_string(), t0 * 1000)].cpu_millicores.mean,
        1500.0
    );
    assert!(
        !got.contains_key(&("web-2".to_string(), (t0 + 5 * 300) * 1000)),
        "the NaN step is skipped"
    );
    // A query Prometheus refuses is one clear error.
    let bad = Command::new(umbra_integration::binary("umbra")?)
        .args([
            "import",
            "prometheus",
            "--url",
            &url,
            "--query",
            "rate(",
            "--from",
            &t0.to_string(),
            "--to",
            &t1.to_string(),
            "--workload-label",
            "pod",
        ])
        .args([
            "--bootstrap-servers",
            &stack.bootstrap,
            "--registry-url",
            &stack.registry_url,
            "--topic-prefix",
            &p,
        ])
        .output()?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Prometheus refused the query 'rate('"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
