//! The schema registry behind a trait, so that the codec can be tested offline with a
//! fixed-schema double and run against any Confluent-compatible registry in production.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

/// Why a registry call failed; the distinction decides between retrying and dead-lettering.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that the id or subject does not exist: retrying will not help.
    #[error("not found in the schema registry: {0}")]
    NotFound(String),
    /// The registry refused the schema (incompatible, invalid).
    #[error("schema registry refused: {0}")]
    Refused(String),
    /// The registry refused the credentials (HTTP 401 or 403): retrying will not help.
    #[error(
        "schema registry rejected the credentials (check registry.username and its password): {0}"
    )]
    Unauthorized(String),
    /// The registry could not be reached or failed: retry later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry returned a schema that does not parse.
    #[error("schema {id} from the registry does not parse: {detail}")]
    BadSchema {
        /// Schema id.
        id: u32,
        /// Parser error.
        detail: String,
    },
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the codec needs from a registry.
pub trait SchemaRegistry: Send + Sync + 'static {
    /// Registers `schema` under `subject` (or finds it) and returns its global id.
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<u32, RegistryError>>;
    /// The schema with global id `id`.
    fn schema<'a>(&'a self, id: u32) -> BoxFuture<'a, Result<Arc<Schema>, RegistryError>>;
}

fn classify(e: SRCError) -> RegistryError {
    // Decided by the client's own retriable flag and the HTTP status, never by substrings of
    // the whole message: that message carries the URL, and a registry on port 40987 once made
    // a refused connection read as "409 conflict" (not retried, records dead-lettered).
    let status = http_status(&e.error);
    let text = e.to_string();
    if e.retriable {
        return RegistryError::Unavailable(text);
    }
    match status {
        Some(404) => RegistryError::NotFound(text),
        Some(401 | 403) => RegistryError::Unauthorized(text),
        Some(s) if s >= 500 => RegistryError::Unavailable(text),
        Some(_) => RegistryError::Refused(text),
        // Not an HTTP answer (a body that does not parse, a client failure): worth a retry.
        None => RegistryError::Unavailable(text),
    }
}

/// The status code in schema_registry_converter's "... failed with status 404 Not Found".
fn http_status(error: &str) -> Option<u16> {
    let rest = &error[error.find("with status ")? + "with status ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A Confluent-compatible registry over HTTP (`schema_registry_converter`), with schemas
/// cached by id: ids are immutable, so the cache never needs invalidating.
pub struct HttpRegistry {
    settings: SrSettings,
    cache: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl HttpRegistry {
    /// A client of the registry at `url`.
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        Self::with_settings(&crate::config::RegistrySettings {
            url: url.to_string(),
            ..Default::default()
        })
    }

    /// A client of the registry `settings` name, with basic authentication when a user is set.
    pub fn with_settings(s: &crate::config::RegistrySettings) -> Result<Self, RegistryError> {
        let mut builder = SrSettings::new_builder(s.url.clone());
        builder.set_timeout(std::time::Duration::from_secs(5));
        if let Some((user, password)) = s.basic_auth() {
            builder.set_basic_authorization(user, Some(password.expose()));
        }
        let settings = builder
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(Self {
            settings,
            cache: Mutex::new(HashMap::new()),
        })
    }
}

impl SchemaRegistry for HttpRegistry {
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<u32, RegistryError>> {
        Box::pin(async move {
            let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
            let registered = post_schema(&self.settings, subject.to_string(), supplied)
                .await
                .map_err(classify)?;
            Ok(registered.id)
        })
    }

    fn schema<'a>(&'a self, id: u32) -> BoxFuture<'a, Result<Arc<Schema>, RegistryError>> {
        Box::pin(async move {
            if let Some(s) = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
            {
                return Ok(s.clone());
            }
            let registered = get_schema_by_id(id, &self.settings)
                .await
                .map_err(classify)?;
            let parsed =
                Schema::parse_str(&registered.schema).map_err(|e| RegistryError::BadSchema {
                    id,
                    detail: e.to_string(),
                })?;
            let parsed = Arc::new(parsed);
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, parsed.clone());
            Ok(parsed)
        })
    }
}

/// An in-memory registry for unit tests: assigns ids in registration order and knows only
/// what was registered with it.
#[derive(Default)]
pub struct FixedRegistry {
    inner: Mutex<Fixed>,
}

#[derive(Default)]
struct Fixed {
    /// (canonical form, parsed) by id - 1.
    schemas: Vec<(String, Arc<Schema>)>,
    /// Latest id per subject.
    subjects: HashMap<String, u32>,
}

impl FixedRegistry {
    /// Registers a schema under a subject synchronously; returns its id.
    pub fn insert(&self, subject: &str, text: &str) -> Result<u32, RegistryError> {
        let schema = Schema::parse_str(text).map_err(|e| RegistryError::Refused(e.to_string()))?;
        let canonical = schema.canonical_form();
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = match guard.schemas.iter().position(|(c, _)| *c == canonical) {
            Some(i) => i as u32 + 1,
            None => {
                guard.schemas.push((canonical, Arc::new(schema)));
                guard.schemas.len() as u32
            }
        };
        guard.subjects.insert(subject.to_string(), id);
        Ok(id)
    }
}

impl SchemaRegistry for FixedRegistry {
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<u32, RegistryError>> {
        Box::pin(async move { self.insert(subject, schema) })
    }

    fn schema<'a>(&'a self, id: u32) -> BoxFuture<'a, Result<Arc<Schema>, RegistryError>> {
        Box::pin(async move {
            let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            id.checked_sub(1)
                .and_then(|i| guard.schemas.get(i as usize))
                .map(|(_, s)| s.clone())
                .ok_or_else(|| RegistryError::NotFound(format!("schema id {id}")))
        })
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    fn http(status: &str, code: u32) -> SRCError {
        SRCError::non_retryable_with_cause(
            std::io::Error::other(format!("error_code: {code}, message: from the registry")),
            &format!("HTTP request to schema registry failed with status {status}"),
        )
    }

    #[test]
    fn each_status_gets_its_kind() {
        assert!(matches!(
            classify(http("404 Not Found", 40403)),
            RegistryError::NotFound(_)
        ));
        assert!(matches!(
            classify(http("401 Unauthorized", 401)),
            RegistryError::Unauthorized(_)
        ));
        assert!(matches!(
            classify(http("403 Forbidden", 403)),
            RegistryError::Unauthorized(_)
        ));
        assert!(matches!(
            classify(http("409 Conflict", 409)),
            RegistryError::Refused(_)
        ));
        assert!(matches!(
            classify(http("422 Unprocessable Entity", 42201)),
            RegistryError::Refused(_)
        ));
        assert!(matches!(
            classify(http("500 Internal Server Error", 50001)),
            RegistryError::Unavailable(_)
        ));
    }

    #[test]
    fn a_refused_connection_is_retried_whatever_digits_its_url_holds() {
        // The CI failure: "409" and "404" inside a port number are not statuses.
        for url in [
            "http://127.0.0.1:40987",
            "http://127.0.0.1:40401",
            "http://127.0.0.1:40403",
        ] {
            let e = SRCError::retryable_with_cause(
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("error sending request for url ({url}/schemas/ids/3)"),
                ),
                "http call to schema registry failed",
            );
            assert!(
                matches!(classify(e), RegistryError::Unavailable(_)),
                "{url}"
            );
        }
    }

    #[test]
    fn not_found_is_not_taken_for_rejected_credentials() {
        let e = |t: &str| classify(SRCError::new(t, None, false));
        assert!(matches!(
            e("HTTP request to schema registry failed with status 404 Not Found, was cause by error_code: 40403, message: Schema not found"),
            RegistryError::NotFound(_)
        ));
        assert!(matches!(
            e("HTTP request to schema registry failed with status 401 Unauthorized, was cause by error_code: 401"),
            RegistryError::Unauthorized(_)
        ));
        assert!(matches!(
            e("error sending request for url"),
            RegistryError::Unavailable(_)
        ));
    }
}
