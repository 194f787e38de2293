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
    let text = e.to_string();
    let lower = text.to_lowercase();
    // Not-found first: Confluent's error codes 40401 and 40403 contain "401" and "403".
    if lower.contains("404")
        || lower.contains("not found")
        || lower.contains("40403")
        || lower.contains("40401")
    {
        RegistryError::NotFound(text)
    } else if lower.contains("status 401")
        || lower.contains("status 403")
        || lower.contains("unauthorized")
        || lower.contains("forbidden")
    {
        RegistryError::Unauthorized(text)
    } else if lower.contains("409") || lower.contains("422") || lower.contains("incompatible") {
        RegistryError::Refused(text)
    } else {
        RegistryError::Unavailable(text)
    }
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
