//! Layered configuration: defaults < TOML file < environment. Unknown keys are rejected so a
//! typo cannot silently fall back to a default.
//!
//! Environment: `UMBRA_<SECTION>__<FIELD>` (e.g. `UMBRA_KAFKA__BOOTSTRAP_SERVERS`), plus the
//! conventional `KAFKA_BOOTSTRAP_SERVERS` and `SCHEMA_REGISTRY_URL`. The file is named by
//! `--config PATH` or `UMBRA_CONFIG`. `UMBRA_STATE_DIR` belongs to the `umbra` command and is
//! ignored here; any other `UMBRA_` variable must name a field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// How clients reach the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the local dev stack).
    #[default]
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SASL authentication without TLS (the password is sent SCRAM-protected, data in clear).
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// Connection to Kafka.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// Consumer group id; empty means the service's name.
    pub group_id: String,
    /// Extra librdkafka properties passed through unchanged. Credentials belong in the fields
    /// below, which are never printed.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for producers only, set after `properties` and the producer's
    /// defaults (the replay turns idempotence off on its own Nisshi broker:
    /// docs/architecture.md).
    pub producer_properties: BTreeMap<String, String>,
    /// How long to wait for the broker at start-up before giving up, in milliseconds.
    pub connect_timeout_ms: u64,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism: `SCRAM-SHA-512` or `SCRAM-SHA-256`.
    pub sasl_mechanism: String,
    /// SASL user name.
    pub sasl_username: String,
    /// SASL password. Give it through the environment (`UMBRA_KAFKA__SASL_PASSWORD`) or use
    /// `sasl_password_file`; never written in a config file that is checked in.
    pub sasl_password: Option<Secret>,
    /// File holding the SASL password (a mounted Secret), read at start-up.
    pub sasl_password_file: Option<PathBuf>,
    /// CA certificates (PEM) the brokers' certificates are checked against; unset: the
    /// system's trust store.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: String::new(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            connect_timeout_ms: 10_000,
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: String::new(),
            sasl_password: None,
            sasl_password_file: None,
            tls_ca_file: None,
        }
    }
}

impl KafkaSettings {
    /// Reads the password file, if one is named and no password is given, and checks that
    /// what the security protocol needs is there. Errors name settings and files only.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if self.sasl_password.as_ref().is_none_or(Secret::is_empty) {
            if let Some(f) = &self.sasl_password_file {
                self.sasl_password = Some(
                    Secret::from_file(f)
                        .map_err(|e| ConfigError(format!("kafka.sasl_password_file: {e}")))?,
                );
            }
        }
        if self.security_protocol.sasl() {
            if self.sasl_username.is_empty() {
                return Err(ConfigError(
                    "kafka.sasl_username is needed for a SASL security_protocol".into(),
                ));
            }
            if self.sasl_password.as_ref().is_none_or(Secret::is_empty) {
                return Err(ConfigError(
                    "kafka: a SASL security_protocol needs a password (UMBRA_KAFKA__SASL_PASSWORD or kafka.sasl_password_file)".into(),
                ));
            }
        }
        if let Some(ca) = &self.tls_ca_file {
            if !ca.is_file() {
                return Err(ConfigError(format!(
                    "kafka.tls_ca_file: {} is not a file",
                    ca.display()
                )));
            }
        }
        Ok(())
    }

    /// The librdkafka properties of the security settings (the password included: for the
    /// client only, never to be logged).
    pub fn security_properties(&self) -> Vec<(&'static str, String)> {
        let p = self.security_protocol;
        let mut out = vec![(
            "security.protocol",
            match p {
                SecurityProtocol::Plaintext => "plaintext",
                SecurityProtocol::Ssl => "ssl",
                SecurityProtocol::SaslPlaintext => "sasl_plaintext",
                SecurityProtocol::SaslSsl => "sasl_ssl",
            }
            .to_string(),
        )];
        if p.sasl() {
            out.push(("sasl.mechanism", self.sasl_mechanism.clone()));
            out.push(("sasl.username", self.sasl_username.clone()));
            if let Some(pw) = &self.sasl_password {
                out.push(("sasl.password", pw.expose().to_string()));
            }
        }
        if p.tls() {
            if let Some(ca) = &self.tls_ca_file {
                out.push(("ssl.ca.location", ca.display().to_string()));
            }
        }
        out
    }
}

/// Connection to the schema registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Base URL of a Confluent-compatible registry.
    pub url: String,
    /// User name for HTTP basic authentication; empty: none.
    pub username: String,
    /// Its password. Give it through the environment (`UMBRA_REGISTRY__PASSWORD`) or use
    /// `password_file`.
    pub password: Option<Secret>,
    /// File holding the password (a mounted Secret), read at start-up.
    pub password_file: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".into(),
            username: String::new(),
            password: None,
            password_file: None,
        }
    }
}

impl RegistrySettings {
    /// Reads the password file when no password is given; a user needs a password.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if self.password.as_ref().is_none_or(Secret::is_empty) {
            if let Some(f) = &self.password_file {
                self.password = Some(
                    Secret::from_file(f)
                        .map_err(|e| ConfigError(format!("registry.password_file: {e}")))?,
                );
            }
        }
        if !self.username.is_empty() && self.password.as_ref().is_none_or(Secret::is_empty) {
            return Err(ConfigError(
                "registry.username is set without a password (UMBRA_REGISTRY__PASSWORD or registry.password_file)".into(),
            ));
        }
        Ok(())
    }

    /// The basic-auth credentials, if any.
    pub fn basic_auth(&self) -> Option<(&str, &Secret)> {
        match (&self.username, &self.password) {
            (u, Some(p)) if !u.is_empty() => Some((u.as_str(), p)),
            _ => None,
        }
    }
}

/// The service's own HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Listen address; port 0 picks a free port (logged at start-up).
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Configuration of one service: the common sections plus the service's own (`[service]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig<S> {
    /// Kafka connection.
    pub kafka: KafkaSettings,
    /// Schema registry connection.
    pub registry: RegistrySettings,
    /// HTTP endpoint.
    pub http: HttpSettings,
    /// Prefix prepended to every topic name (isolates test runs and tenants on one cluster).
    pub topic_prefix: String,
    /// On shutdown, how long in-flight work may take to finish before the process exits, in ms.
    pub shutdown_grace_ms: u64,
    /// The clock decisions are made by (wall clock unless a compressed replay sets it).
    pub clock: ClockSettings,
    /// Settings of this service.
    pub service: S,
}

/// The time services decide by: the wall clock, or a trace's time running `speed` times faster
/// than the wall clock from an origin, so that a replay compressed in time (the demo's week in
/// minutes) is seen consistently by every service. Timers (refits, reconcile passes, metrics)
/// stay on the wall clock; what is compared with record timestamps uses this one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClockSettings {
    /// Trace milliseconds per wall-clock millisecond; 1 with zero origins is the wall clock.
    pub speed: f64,
    /// Wall-clock time (ms since the epoch) at which the trace time is `origin_trace_ms`; before
    /// it the clock stands at `origin_trace_ms`.
    pub origin_wall_ms: i64,
    /// Trace time (ms since the epoch) at `origin_wall_ms`.
    pub origin_trace_ms: i64,
    /// The clock stands still until a driver moves it (`POST /clock`, the lockstep replay):
    /// it reads `origin_trace_ms` until then, and `speed` and `origin_wall_ms` are unused.
    pub driven: bool,
}

impl Default for ClockSettings {
    fn default() -> Self {
        Self {
            speed: 1.0,
            origin_wall_ms: 0,
            origin_trace_ms: 0,
            driven: false,
        }
    }
}

impl ClockSettings {
    /// The current time by this clock, ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        if self.driven {
            return crate::progress::driven_now().unwrap_or(self.origin_trace_ms);
        }
        let wall = crate::now_millis();
        if self.speed == 1.0 && self.origin_wall_ms == 0 && self.origin_trace_ms == 0 {
            return wall;
        }
        // A replay starts at its origin: until then its time stands still, so that services
        // started ahead of it see the trace's start, not a time before it.
        self.origin_trace_ms + ((wall - self.origin_wall_ms).max(0) as f64 * self.speed) as i64
    }

    /// The wall-clock duration of `trace_ms` of clock time.
    pub fn wall_duration(&self, trace_ms: u64) -> std::time::Duration {
        if self.driven {
            // Driven time passes only between the driver's steps, never while waiting.
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(trace_ms as f64 / 1000.0 / self.speed.max(1e-9))
    }
}

impl<S: Default> Default for ServiceConfig<S> {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            http: HttpSettings::default(),
            topic_prefix: String::new(),
            clock: ClockSettings::default(),
            shutdown_grace_ms: 10_000,
            service: S::default(),
        }
    }
}

impl<S> ServiceConfig<S> {
    /// Actual name of a topic given its default name.
    pub fn topic(&self, default_name: &str) -> String {
        format!("{}{}", self.topic_prefix, default_name)
    }
    /// Consumer group id, defaulting to `service_name`.
    pub fn group_id(&self, service_name: &str) -> String {
        if self.kafka.group_id.is_empty() {
            format!("{}{}", self.topic_prefix, service_name)
        } else {
            self.kafka.group_id.clone()
        }
    }
}

/// A configuration that cannot be used; the message is one line.
#[derive(Debug, thiserror::Error)]
#[error("bad configuration: {0}")]
pub struct ConfigError(pub String);

/// Reads the secret files the configuration names and checks that credentials are complete.
pub fn resolve_secrets<S>(config: &mut ServiceConfig<S>) -> Result<(), ConfigError> {
    config.kafka.resolve_secrets()?;
    config.registry.resolve_secrets()
}

/// Kafka settings for a command-line tool: `bootstrap` plus the `UMBRA_KAFKA__*` environment
/// (security settings included), secrets resolved.
pub fn kafka_from_env(bootstrap: &str) -> Result<KafkaSettings, ConfigError> {
    let mut s: KafkaSettings = Figment::from(Serialized::defaults(KafkaSettings {
        bootstrap_servers: bootstrap.to_string(),
        ..KafkaSettings::default()
    }))
    .merge(Env::prefixed("UMBRA_KAFKA__").ignore(&["BOOTSTRAP_SERVERS"]))
    .extract()
    .map_err(|e| ConfigError(e.to_string().replace('\n', " ")))?;
    s.resolve_secrets()?;
    Ok(s)
}

/// Registry settings for a command-line tool: `url` plus the `UMBRA_REGISTRY__*` environment
/// (basic-auth user and password), secrets resolved.
pub fn registry_from_env(url: &str) -> Result<RegistrySettings, ConfigError> {
    let mut s: RegistrySettings = Figment::from(Serialized::defaults(RegistrySettings {
        url: url.to_string(),
        ..RegistrySettings::default()
    }))
    .merge(Env::prefixed("UMBRA_REGISTRY__").ignore(&["URL"]))
    .extract()
    .map_err(|e| ConfigError(e.to_string().replace('\n', " ")))?;
    s.resolve_secrets()?;
    Ok(s)
}

/// Loads `T` from defaults, then `file` (or `UMBRA_CONFIG`), then the environment.
pub fn load<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
) -> Result<T, ConfigError> {
    let file: Option<PathBuf> = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("UMBRA_CONFIG").map(PathBuf::from));
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = &file {
        if !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment
        .merge(
            Env::raw()
                .only(&["KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL"])
                .map(|k| match k.as_str() {
                    "KAFKA_BOOTSTRAP_SERVERS" => "kafka.bootstrap_servers".into(),
                    _ => "registry.url".into(),
                }),
        )
        .merge(
            Env::prefixed("UMBRA_")
                .ignore(&["CONFIG", "STATE_DIR"])
                .split("__"),
        );
    let value: T = figment.extract().map_err(|e| {
        let parts: Vec<String> = e
            .into_iter()
            .map(|e| e.to_string().replace('\n', " "))
            .collect();
        ConfigError(parts.join("; "))
    })?;
    Ok(value)
}

/// Checks what deserialization cannot: values that parse but cannot work.
pub fn validate<S>(config: &ServiceConfig<S>) -> Result<(), ConfigError> {
    if config.kafka.bootstrap_servers.trim().is_empty() {
        return Err(ConfigError("kafka.bootstrap_servers is empty".into()));
    }
    for server in config.kafka.bootstrap_servers.split(',') {
        let Some((host, port)) = server.trim().rsplit_once(':') else {
            return Err(ConfigError(format!(
                "kafka.bootstrap_servers: '{server}' is not host:port"
            )));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(ConfigError(format!(
                "kafka.bootstrap_servers: '{server}' is not host:port"
            )));
        }
    }
    if !(config.clock.speed.is_finite() && config.clock.speed > 0.0) {
        return Err(ConfigError(format!(
            "clock.speed must be a positive number, not {}",
            config.clock.speed
        )));
    }
    if !(config.registry.url.starts_with("http://") || config.registry.url.starts_with("https://"))
    {
        return Err(ConfigError(format!(
            "registry.url: '{}' is not an http(s) URL",
            config.registry.url
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Own {
        threshold: f64,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn layers_and_unknown_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "topic_prefix = \"t.\"\n[service]\nthreshold = 0.5\n[kafka]\nbootstrap_servers = \"h:1\"\n")?;
            jail.set_env("UMBRA_KAFKA__BOOTSTRAP_SERVERS", "env:2");
            let c: ServiceConfig<Own> =
                load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "env:2");
            assert_eq!(c.service.threshold, 0.5);
            assert_eq!(c.topic("umbra.x"), "t.umbra.x");
            jail.set_env("UMBRA_KAFKA__BOOTSTRAP_SERVER", "typo:2");
            let err = load::<ServiceConfig<Own>>(None)
                .expect_err("unknown key rejected")
                .to_string();
            assert!(err.contains("bootstrap_server"), "{err}");
            assert!(!err.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn a_trace_clock_runs_at_its_speed_from_its_origin() {
        let wall = crate::now_millis();
        let c = ClockSettings {
            speed: 2_000.0,
            origin_wall_ms: wall - 1_000,
            origin_trace_ms: 1_372_636_800_000,
            driven: false,
        };
        let t = c.now_ms();
        // One wall second after the origin is 2,000 trace seconds after it.
        assert!(
            (t - (1_372_636_800_000 + 2_000_000)).abs() < 2_000 * 200,
            "{t}"
        );
        assert_eq!(
            c.wall_duration(30_000),
            std::time::Duration::from_millis(15)
        );
        assert!((ClockSettings::default().now_ms() - crate::now_millis()).abs() < 1_000);
        // Before its origin a replay's clock stands at the trace's start.
        let ahead = ClockSettings {
            origin_wall_ms: wall + 60_000,
            ..c
        };
        assert_eq!(ahead.now_ms(), 1_372_636_800_000);
    }

    #[test]
    fn a_driven_clock_stands_at_its_origin_until_driven_and_never_goes_back() {
        let c = ClockSettings {
            origin_trace_ms: 1_000,
            driven: true,
            ..ClockSettings::default()
        };
        // The only test of this process that drives the clock: the time is process-wide.
        assert_eq!(c.now_ms(), 1_000);
        crate::progress::drive_clock(5_000);
        assert_eq!(c.now_ms(), 5_000);
        crate::progress::drive_clock(4_000);
        assert_eq!(c.now_ms(), 5_000, "a stale setting is ignored");
        assert_eq!(c.wall_duration(30_000), std::time::Duration::ZERO);
        assert!((ClockSettings::default().now_ms() - crate::now_millis()).abs() < 1_000);
    }

    #[test]
    fn validation() {
        let mut c = ServiceConfig::<Own>::default();
        assert!(validate(&c).is_ok());
        c.kafka.bootstrap_servers = "nohostport".into();
        assert!(validate(&c).is_err());
    }
}
