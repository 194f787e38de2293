use rdkafka::error::KafkaError;

/// Errors of the stream runtime.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A Kafka client operation failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// Client error.
        #[source]
        source: KafkaError,
    },
    /// The broker did not answer in time.
    #[error("kafka broker at {bootstrap} does not answer: {detail} (is it running? `umbra dev up` starts one)")]
    BrokerUnreachable {
        /// Bootstrap servers tried.
        bootstrap: String,
        /// Client detail.
        detail: String,
    },
    /// The broker refused the credentials or the TLS handshake: retrying will not help.
    #[error("kafka broker at {bootstrap} refused the connection of user '{user}': {detail} (check kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username and its password, kafka.tls_ca_file)")]
    BrokerRefused {
        /// Bootstrap servers.
        bootstrap: String,
        /// SASL user name (empty without SASL).
        user: String,
        /// librdkafka's reason (it never contains the password).
        detail: String,
    },
    /// The schema registry failed or refused.
    #[error("schema registry: {0}")]
    Registry(String),
    /// A bundled schema is broken.
    #[error(transparent)]
    Schema(#[from] umbra_schemas::SchemaError),
    /// Encoding a record failed: a bug, since the types mirror the schemas.
    #[error("encoding a {type_name} failed: {detail}")]
    Encode {
        /// Rust type.
        type_name: &'static str,
        /// Avro error.
        detail: String,
    },
    /// The HTTP endpoint could not start.
    #[error("http endpoint on {addr}: {source} (is the port taken? set http.listen)")]
    Http {
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration value that parses but cannot be used (checked by the service).
    #[error("bad configuration: {0}")]
    Config(String),
    /// A topic the service needs does not exist.
    #[error("topic {0} does not exist (create the topics with `umbra dev up`)")]
    MissingTopic(String),
    /// A background task panicked or was aborted.
    #[error("internal: {0}")]
    Internal(String),
    /// Producing an output failed after the client's own retries.
    #[error("producing to {topic}: {detail}")]
    Produce {
        /// Topic.
        topic: String,
        /// Client error.
        detail: String,
    },
    /// Shutdown was requested while waiting.
    #[error("shut down while {0}")]
    Cancelled(&'static str),
}

impl StreamError {
    /// A Kafka client error with what was being done.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Self::Kafka {
            context: context.into(),
            source,
        }
    }
}
