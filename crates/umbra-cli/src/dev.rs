//! `umbra dev up | down | status`: the local stack of a Nisshi broker and the dev registry,
//! with every topic created and every schema registered. With `KAFKA_BOOTSTRAP_SERVERS` /
//! `SCHEMA_REGISTRY_URL` (or `--bootstrap-servers` / `--registry-url`) it uses an existing
//! Kafka and registry and starts nothing.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use umbra_stream::admin::{ensure_topics, pipeline_topics};
use umbra_stream::kafka;
use umbra_stream::registry::{HttpRegistry, SchemaRegistry};

/// Nisshi version the project is tested with.
const NISSHI_VERSION: &str = "0.8.1";

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Start the broker and the registry (unless external ones are given), create topics,
    /// register schemas, and report.
    Up(UpArgs),
    /// Stop what `up` started.
    Down(StateArgs),
    /// Show the broker, the registry, every topic and every subject.
    Status(UpArgs),
}

#[derive(clap::Args, Debug)]
pub struct StateArgs {
    /// Folder holding logs, pid files and the broker's sqlite storage.
    #[arg(long, default_value_os_t = crate::default_state_dir())]
    state_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Use this Kafka instead of starting Nisshi.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,
    /// Use this registry instead of starting the dev registry.
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    registry_url: Option<String>,
    /// Port of the dev broker on 127.0.0.1.
    #[arg(long, default_value_t = 9092)]
    broker_port: u16,
    /// Port of the dev registry on 127.0.0.1.
    #[arg(long, default_value_t = 8081)]
    registry_port: u16,
    /// Prefix of every topic name.
    #[arg(long, env = "UMBRA_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Where the dev broker keeps its log: `sqlite` (a file in the state folder, survives a
    /// restart of the broker) or `memory` (gone with the process; faster to read).
    #[arg(long, value_enum, default_value_t = BrokerStorage::Sqlite)]
    broker_storage: BrokerStorage,
}

/// The dev broker's storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerStorage {
    /// `nisshi.db` in the state folder.
    Sqlite,
    /// In the broker's memory.
    Memory,
}

impl UpArgs {
    fn bootstrap(&self) -> String {
        self.bootstrap_servers
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.broker_port))
    }
    fn registry(&self) -> String {
        self.registry_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", self.registry_port))
    }
}

pub async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Up(args) => up(args).await,
        Action::Down(args) => stop(&args.state_dir, true),
        Action::Status(args) => status(&args).await,
    }
}

fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pid"))
}

fn running_pid(dir: &Path, name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// Whether process `pid` runs. A child of this process that exited stays in `/proc` as a
/// zombie until reaped (the replay starts the stack itself and stops it before it exits):
/// it counts as gone, or stopping the stack would wait out its whole grace for each.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
}

/// The nisshi binary: on PATH, in cargo's bin folder, or installed now.
fn nisshi_binary() -> anyhow::Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nisshi"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/nisshi")));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    eprintln!("Nisshi (the dev Kafka broker) is not installed; installing nisshi@{NISSHI_VERSION} with cargo.");
    eprintln!("The first build takes about ten minutes; later runs reuse it.");
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("nisshi@{NISSHI_VERSION}"),
            "--locked",
            "--ignore-rust-version",
        ])
        .status()
        .context("running `cargo install nisshi` (is cargo on PATH?)")?;
    if !status.success() {
        bail!("`cargo install nisshi@{NISSHI_VERSION} --locked --ignore-rust-version` failed; run it by hand to see why");
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".cargo/bin/nisshi"))
}

/// Starts `program` in the background in `dir`, logging to `dir/<name>.log`.
fn spawn_logged(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
) -> anyhow::Result<std::process::Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .with_context(|| format!("creating {name}.log"))?;
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so that ^C on `umbra dev up` does not stop the stack.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    std::fs::write(pid_file(dir, name), child.id().to_string())?;
    Ok(child)
}

/// Waits until `probe` succeeds; fails early, with the end of its log, if `child` exits.
async fn wait_for_child<F, Fut>(
    dir: &Path,
    name: &str,
    child: &mut std::process::Child,
    probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut probe = probe;
    let start = Instant::now();
    let log = dir.join(format!("{name}.log"));
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "{name} exited ({status}) during start-up; last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if probe().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{name} did not answer within 30 s; see {}", log.display())
}

async fn broker_answers(bootstrap: &str) -> bool {
    let Ok(mut s) = umbra_stream::config::kafka_from_env(bootstrap) else {
        return false;
    };
    s.connect_timeout_ms = 1_000;
    kafka::wait_for_broker(&s).await.is_ok()
}

/// Whether an HTTP server answers at `url` (a registry that asks for credentials answers too).
async fn registry_answers(url: &str) -> bool {
    matches!(reqwest::get(format!("{url}/subjects")).await, Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED)
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    start(&args).await?;
    status(&args).await
}

/// A stack for `umbra replay`: external endpoints when given, else a broker and registry of
/// its own in `state_dir` on the given ports. Returns the bootstrap servers and registry URL.
pub async fn start_stack(
    state_dir: &Path,
    bootstrap_servers: Option<String>,
    registry_url: Option<String>,
    broker_port: u16,
    registry_port: u16,
    topic_prefix: &str,
    broker_storage: BrokerStorage,
) -> anyhow::Result<(String, String)> {
    let args = UpArgs {
        state: StateArgs {
            state_dir: state_dir.to_path_buf(),
        },
        bootstrap_servers,
        registry_url,
        broker_port,
        registry_port,
        topic_prefix: topic_prefix.to_string(),
        broker_storage,
    };
    start(&args).await?;
    Ok((args.bootstrap(), args.registry()))
}

/// Stops whatever a stack folder's pid files name (services, registry, broker), quietly.
pub fn stop_stack(dir: &Path) {
    let _ = stop(dir, false);
}

/// Starts the broker and the registry unless running or external, creates the topics and
/// registers the schemas.
async fn start(args: &UpArgs) -> anyhow::Result<()> {
    let dir = &args.state.state_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state folder {}", dir.display()))?;
    let bootstrap = args.bootstrap();
    let registry_url = args.registry();

    if args.bootstrap_servers.is_some() {
        let external = umbra_stream::config::kafka_from_env(&bootstrap)?;
        if let Err(e @ umbra_stream::StreamError::BrokerRefused { .. }) =
            kafka::wait_for_broker(&external).await
        {
            bail!("{e}");
        }
        if !broker_answers(&bootstrap).await {
            bail!("Kafka at {bootstrap} does not answer; check KAFKA_BOOTSTRAP_SERVERS, or unset it to start the dev broker");
        }
    } else if running_pid(dir, "nisshi").is_some() && broker_answers(&bootstrap).await {
        eprintln!("broker already running on {bootstrap}");
    } else {
        if !port_free(args.broker_port) {
            bail!("port {} on 127.0.0.1 is taken by another program; stop it or pick another with --broker-port", args.broker_port);
        }
        let nisshi = nisshi_binary()?;
        // Nisshi resolves sqlite paths against its working directory, which is `dir`.
        let db = std::fs::canonicalize(dir)?.join("nisshi.db");
        let url = format!("tcp://127.0.0.1:{}", args.broker_port);
        let mut child = spawn_logged(
            dir,
            "nisshi",
            &nisshi,
            &[
                "broker".into(),
                "--listener-url".into(),
                url.clone(),
                "--advertised-listener-url".into(),
                url,
                "--storage-engine".into(),
                match args.broker_storage {
                    BrokerStorage::Sqlite => "sqlite://nisshi.db".into(),
                    BrokerStorage::Memory => "memory://nisshi/".into(),
                },
                "--group-initial-rebalance-delay".into(),
                "500ms".into(),
            ],
        )?;
        wait_for_child(dir, "nisshi", &mut child, || broker_answers(&bootstrap)).await?;
        eprintln!(
            "broker started on {bootstrap} (pid {}, storage {})",
            child.id(),
            match args.broker_storage {
                BrokerStorage::Sqlite => db.display().to_string(),
                BrokerStorage::Memory => "in memory".to_string(),
            }
        );
    }

    let spec = pipeline_topics(&args.topic_prefix);
    let settings = umbra_stream::config::kafka_from_env(&bootstrap)?;
    let created = ensure_topics(&settings, &spec).await?;
    eprintln!(
        "topics: {} created, {} already there",
        created.len(),
        spec.len() - created.len()
    );

    if args.registry_url.is_some() {
        if !registry_answers(&registry_url).await {
            bail!("schema registry at {registry_url} does not answer; check SCHEMA_REGISTRY_URL, or unset it to start the dev registry");
        }
    } else if running_pid(dir, "registry").is_some() && registry_answers(&registry_url).await {
        eprintln!("registry already running on {registry_url}");
    } else {
        if !port_free(args.registry_port) {
            bail!("port {} on 127.0.0.1 is taken by another program; stop it or pick another with --registry-port", args.registry_port);
        }
        let me = std::env::current_exe()?;
        let mut child = spawn_logged(
            dir,
            "registry",
            &me,
            &[
                "registry".into(),
                "--listen".into(),
                format!("127.0.0.1:{}", args.registry_port),
                "--bootstrap-servers".into(),
                bootstrap.clone(),
            ],
        )?;
        wait_for_child(dir, "registry", &mut child, || {
            registry_answers(&registry_url)
        })
        .await?;
        eprintln!("registry started on {registry_url} (pid {})", child.id());
    }

    let registry =
        HttpRegistry::with_settings(&umbra_stream::config::registry_from_env(&registry_url)?)?;
    for t in umbra_schemas::TOPICS {
        let name = format!("{}{}", args.topic_prefix, t.name);
        registry
            .register(&format!("{name}-key"), t.key.text)
            .await
            .with_context(|| format!("registering {name}-key"))?;
        registry
            .register(&format!("{name}-value"), t.value.text)
            .await
            .with_context(|| format!("registering {name}-value"))?;
    }
    eprintln!(
        "schemas registered for {} topics",
        umbra_schemas::TOPICS.len()
    );
    Ok(())
}

/// Stops everything started in `dir` (services first, the broker last) by its pid file.
fn stop(dir: &Path, verbose: bool) -> anyhow::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".pid"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    // Services, then the registry, then the broker the others depend on.
    names.sort_by_key(|n| match n.as_str() {
        "nisshi" => 2,
        "registry" => 1,
        _ => 0,
    });
    if names.is_empty() && verbose {
        println!("nothing running from {}", dir.display());
    }
    for name in names {
        match running_pid(dir, &name) {
            Some(pid) => {
                let ok = Command::new("kill")
                    .arg(pid.to_string())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                let start = Instant::now();
                while ok && alive(pid) && start.elapsed() < Duration::from_secs(15) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if verbose {
                    println!("{name}: stopped (pid {pid})");
                }
            }
            None if verbose => println!("{name}: not running"),
            None => {}
        }
        let _ = std::fs::remove_file(pid_file(dir, &name));
    }
    Ok(())
}

async fn status(args: &UpArgs) -> anyhow::Result<()> {
    let dir = &args.state.state_dir;
    let bootstrap = args.bootstrap();
    let registry_url = args.registry();
    let mut healthy = true;
    let pid = |name| {
        running_pid(dir, name)
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default()
    };
    if broker_answers(&bootstrap).await {
        println!("broker    {bootstrap}  up{}", pid("nisshi"));
        let settings = umbra_stream::config::kafka_from_env(&bootstrap)?;
        let md = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, usize)>> {
            let c: BaseConsumer = kafka::client_config(&settings).create()?;
            let md = c.fetch_metadata(None, Duration::from_secs(5))?;
            let mut v: Vec<(String, usize)> = md
                .topics()
                .iter()
                .map(|t| (t.name().to_string(), t.partitions().len()))
                .collect();
            v.sort();
            Ok(v)
        })
        .await??;
        let expected = pipeline_topics(&args.topic_prefix);
        println!(
            "topics    {} present, {} of {} pipeline topics",
            md.len(),
            expected
                .iter()
                .filter(|e| md.iter().any(|(n, _)| *n == e.name))
                .count(),
            expected.len()
        );
        for (name, parts) in &md {
            println!("  {name:<40} {parts} partition(s)");
        }
    } else {
        healthy = false;
        println!("broker    {bootstrap}  DOWN (start it with `umbra dev up`)");
    }
    if registry_answers(&registry_url).await {
        println!("registry  {registry_url}  up{}", pid("registry"));
        let auth = umbra_stream::config::registry_from_env(&registry_url)?;
        let client = reqwest::Client::new();
        let get = |path: String| {
            let mut r = client.get(format!("{registry_url}{path}"));
            if let Some((user, password)) = auth.basic_auth() {
                r = r.basic_auth(user, Some(password.expose()));
            }
            r
        };
        let subjects: Vec<String> = get("/subjects".into())
            .send()
            .await?
            .error_for_status()
            .context("listing subjects (check UMBRA_REGISTRY__USERNAME and its password)")?
            .json()
            .await?;
        println!("subjects  {}", subjects.len());
        for s in &subjects {
            let latest: serde_json::Value = get(format!("/subjects/{s}/versions/latest"))
                .send()
                .await?
                .json()
                .await?;
            println!("  {s:<46} id {} v{}", latest["id"], latest["version"]);
        }
    } else {
        healthy = false;
        println!("registry  {registry_url}  DOWN (start it with `umbra dev up`)");
    }
    if !healthy {
        bail!("the dev stack is not fully up");
    }
    Ok(())
}
