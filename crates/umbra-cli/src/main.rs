//! `umbra`: the command people use. Starts the dev stack, produces requests, follows
//! decisions, prints the shadow table, and runs the dev schema registry.

mod chaos;
mod demo;
mod dev;
mod import;
mod lockstep;
mod plot;
mod replay;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "umbra",
    version,
    about = "Predictive shadow reservations for workloads: the umbra command"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to find Kafka and the registry; defaults to the dev stack.
#[derive(clap::Args, Clone, Debug)]
pub struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,
    /// Schema registry URL.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// Prefix of every topic name.
    #[arg(long, env = "UMBRA_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
}

#[derive(Subcommand)]
enum ImportSource {
    /// Usage series from a Prometheus server's query_range API.
    Prometheus(import::PrometheusArgs),
}

#[derive(Subcommand)]
enum Command {
    /// The local dev stack: broker (Nisshi) and schema registry.
    Dev {
        #[command(subcommand)]
        action: dev::Action,
    },
    /// Run the dev schema registry in the foreground.
    Registry {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// Kafka bootstrap servers holding the schemas topic.
        #[arg(
            long,
            env = "KAFKA_BOOTSTRAP_SERVERS",
            default_value = "127.0.0.1:9092"
        )]
        bootstrap_servers: String,
        /// Topic the schemas persist in.
        #[arg(long, default_value = "_schemas")]
        topic: String,
        /// File of `user:password` lines: clients must authenticate with one of them (HTTP
        /// basic authentication). Kafka security settings come from `UMBRA_KAFKA__*`.
        #[arg(long, env = "UMBRA_REGISTRY_USERS_FILE")]
        users_file: Option<std::path::PathBuf>,
    },
    /// Produce one workload request.
    Request(tools::RequestArgs),
    /// The demo's evaluation: replay a Bitbrains-format trace through the whole pipeline (a
    /// stack, the five services and the fleet simulator it starts), against the baselines,
    /// and write summary.json and report.html.
    Replay(demo::ReplayArgs),
    /// Replay a Bitbrains-format folder into the raw usage topic, with time compression.
    ReplayRaw(replay::ReplayArgs),
    /// The fault suite: load through the pipeline while faults happen, then the history
    /// checker's table of scenarios × invariants; fails on any violation.
    Chaos(chaos::ChaosArgs),
    /// Backfill history from a system that already keeps it.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Print allocation decisions as JSON lines.
    Decisions {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Keep printing new decisions as they come.
        #[arg(long)]
        follow: bool,
    },
    /// Forecast one VM of a Bitbrains-format trace a day ahead and draw forecast against actual
    /// with the intervals (SVG).
    Forecast(plot::ForecastArgs),
    /// Print the shadow table as JSON lines, one row per workload.
    Table {
        #[command(flatten)]
        endpoints: Endpoints,
    },
}

/// Default folder for the dev stack's state (logs, pids, broker storage).
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("UMBRA_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".state/dev"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Registry { .. }) {
        umbra_stream::telemetry::init_logging();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("umbra: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Dev { action } => dev::run(action).await,
            Command::Registry {
                listen,
                bootstrap_servers,
                topic,
                users_file,
            } => {
                let shutdown = umbra_stream::shutdown::install();
                let kafka = umbra_stream::config::kafka_from_env(&bootstrap_servers)?;
                let users = match users_file {
                    Some(f) => umbra_registry::read_users(&f).map_err(anyhow::Error::msg)?,
                    None => Vec::new(),
                };
                let config = umbra_registry::RegistryConfig {
                    listen,
                    kafka,
                    topic,
                    users,
                };
                umbra_registry::run(config, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Request(args) => tools::request(args).await,
            Command::Replay(args) => demo::run(args).await,
            Command::ReplayRaw(args) => replay::run(args).await,
            Command::Chaos(args) => chaos::run(args).await,
            Command::Import {
                source: ImportSource::Prometheus(args),
            } => import::run(args).await,
            Command::Decisions { endpoints, follow } => tools::decisions(endpoints, follow).await,
            Command::Table { endpoints } => tools::table(endpoints).await,
            Command::Forecast(args) => tokio::task::spawn_blocking(move || plot::run(args)).await?,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umbra: {e:#}");
            ExitCode::FAILURE
        }
    }
}
