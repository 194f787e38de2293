//! The REST API. Bodies are parsed by hand because Confluent clients send
//! `application/vnd.schemaregistry.v1+json`, which axum's `Json` extractor refuses.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::state::{Compatibility, LogKey, RegisterPlan, RegistryError, RegistryState};
use crate::store::KafkaStore;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// State shared by the handlers.
pub struct Shared {
    state: RwLock<RegistryState>,
    /// Serialises writes so that ids and versions are assigned one at a time.
    write: tokio::sync::Mutex<()>,
    store: KafkaStore,
}

impl Shared {
    /// Wraps a restored state and its store.
    pub fn new(state: RegistryState, store: KafkaStore) -> Self {
        Self {
            state: RwLock::new(state),
            write: tokio::sync::Mutex::new(()),
            store,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RegistryState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a record to the topic, then applies it locally: state never runs ahead of the log.
    async fn persist(
        &self,
        key: &impl serde::Serialize,
        value: Option<&impl serde::Serialize>,
    ) -> Result<()> {
        let k = serde_json::to_vec(key).map_err(RegistryError::store)?;
        let v = value
            .map(serde_json::to_vec)
            .transpose()
            .map_err(RegistryError::store)?;
        self.store
            .write(&k, v.as_deref())
            .await
            .map_err(RegistryError::store)?;
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&k, v.as_deref());
        Ok(())
    }
}

type AppState = Arc<Shared>;

fn ok(value: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        value.to_string(),
    )
        .into_response()
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            json!({"error_code": self.code, "message": self.message}).to_string(),
        )
            .into_response()
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn parse_body(body: &Bytes) -> Result<SchemaBody> {
    let b: SchemaBody = serde_json::from_slice(body).map_err(|e| RegistryError {
        status: 422,
        code: 42201,
        message: format!("Invalid schema: request body: {e}"),
    })?;
    match b.schema_type.as_deref() {
        None | Some("AVRO") => {}
        Some(other) => {
            return Err(RegistryError::invalid_schema(format!(
                "schema type {other} is not supported by the umbra dev registry (AVRO only)"
            )))
        }
    }
    if !b.references.is_empty() {
        return Err(RegistryError::invalid_schema(
            "schema references are not supported by the umbra dev registry",
        ));
    }
    Ok(b)
}

fn level_name(c: Compatibility) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn parse_level(body: &Bytes) -> Result<Compatibility> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RegistryError::invalid_compatibility(&e.to_string()))?;
    let s = v
        .get("compatibility")
        .or_else(|| v.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .unwrap_or("");
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| RegistryError::invalid_compatibility(s))
}

async fn root() -> Response {
    ok(json!({}))
}

async fn subjects(State(s): State<AppState>) -> Response {
    ok(json!(s.read().subjects()))
}

async fn versions(State(s): State<AppState>, Path(subject): Path<String>) -> Result<Response> {
    Ok(ok(json!(s.read().versions(&subject)?)))
}

async fn version(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
) -> Result<Response> {
    let st = s.read();
    let (version, id, text) = st.version(&subject, &v)?;
    Ok(ok(
        json!({"subject": subject, "version": version, "id": id, "schema": text}),
    ))
}

async fn version_schema(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
) -> Result<Response> {
    let st = s.read();
    let (_, _, text) = st.version(&subject, &v)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        text.to_string(),
    )
        .into_response())
}

async fn register(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let b = parse_body(&body)?;
    let _guard = s.write.lock().await;
    let plan = s.read().plan_register(&subject, &b.schema)?;
    let id = match plan {
        RegisterPlan::Existing(id) => id,
        RegisterPlan::New(key, value) => {
            let id = value.id;
            s.persist(&key, Some(&value)).await?;
            tracing::info!(subject = %subject, id, version = value.version, "schema registered");
            id
        }
    };
    Ok(ok(json!({"id": id})))
}

async fn lookup(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let b = parse_body(&body)?;
    let st = s.read();
    let (id, version) = st.lookup(&subject, &b.schema)?;
    Ok(ok(
        json!({"subject": subject, "id": id, "version": version, "schema": st.schema_text(id)?}),
    ))
}

async fn delete_subject(
    State(s): State<AppState>,
    Path(subject): Path<String>,
) -> Result<Response> {
    let _guard = s.write.lock().await;
    let records = s.read().plan_delete(&subject, None)?;
    let deleted: Vec<u32> = records.iter().map(|(_, v)| v.version).collect();
    for (k, v) in records {
        s.persist(&k, Some(&v)).await?;
    }
    Ok(ok(json!(deleted)))
}

async fn delete_version(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
) -> Result<Response> {
    let _guard = s.write.lock().await;
    let records = s.read().plan_delete(&subject, Some(&v))?;
    let deleted = records.first().map(|(_, v)| v.version);
    for (k, v) in records {
        s.persist(&k, Some(&v)).await?;
    }
    Ok(ok(json!(deleted)))
}

async fn schema_by_id(State(s): State<AppState>, Path(id): Path<u32>) -> Result<Response> {
    Ok(ok(json!({"schema": s.read().schema_text(id)?})))
}

async fn schema_by_id_raw(State(s): State<AppState>, Path(id): Path<u32>) -> Result<Response> {
    let st = s.read();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        st.schema_text(id)?.to_string(),
    )
        .into_response())
}

async fn schema_versions(State(s): State<AppState>, Path(id): Path<u32>) -> Result<Response> {
    let usages = s.read().usages(id)?;
    Ok(ok(json!(usages
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect::<Vec<_>>())))
}

async fn schema_subjects(State(s): State<AppState>, Path(id): Path<u32>) -> Result<Response> {
    let mut subjects: Vec<String> = s.read().usages(id)?.into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    Ok(ok(json!(subjects)))
}

async fn schema_types() -> Response {
    ok(json!(["AVRO"]))
}

async fn get_global_config(State(s): State<AppState>) -> Response {
    ok(json!({"compatibilityLevel": level_name(s.read().global_compatibility())}))
}

async fn put_global_config(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let level = parse_level(&body)?;
    let _guard = s.write.lock().await;
    s.persist(
        &LogKey::Config {
            subject: None,
            magic: 0,
        },
        Some(&json!({"compatibilityLevel": level})),
    )
    .await?;
    Ok(ok(json!({"compatibility": level_name(level)})))
}

async fn get_subject_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let st = s.read();
    match st.subject_compatibility(&subject) {
        Some(level) => Ok(ok(json!({"compatibilityLevel": level_name(level)}))),
        None if q.get("defaultToGlobal").map(String::as_str) == Some("true") => Ok(ok(
            json!({"compatibilityLevel": level_name(st.global_compatibility())}),
        )),
        None => Err(RegistryError::subject_config_not_found(&subject)),
    }
}

async fn put_subject_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let level = parse_level(&body)?;
    let _guard = s.write.lock().await;
    s.persist(
        &LogKey::Config {
            subject: Some(subject),
            magic: 0,
        },
        Some(&json!({"compatibilityLevel": level})),
    )
    .await?;
    Ok(ok(json!({"compatibility": level_name(level)})))
}

async fn delete_subject_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
) -> Result<Response> {
    let _guard = s.write.lock().await;
    let previous = s
        .read()
        .subject_compatibility(&subject)
        .ok_or_else(|| RegistryError::subject_config_not_found(&subject))?;
    s.persist(
        &LogKey::Config {
            subject: Some(subject),
            magic: 0,
        },
        None::<&Value>,
    )
    .await?;
    Ok(ok(json!({"compatibilityLevel": level_name(previous)})))
}

async fn compatibility(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response> {
    let b = parse_body(&body)?;
    let st = s.read();
    let against = if st.versions(&subject).is_err() && (v == "latest" || v == "-1") {
        // A subject with no versions is compatible with anything.
        return Ok(ok(json!({"is_compatible": true})));
    } else {
        st.version(&subject, &v)?.0
    };
    let problems = st.check(&subject, &b.schema, Some(against))?;
    let mut out = json!({"is_compatible": problems.is_empty()});
    if q.get("verbose").map(String::as_str) == Some("true") {
        out["messages"] = json!(problems);
    }
    Ok(ok(out))
}

/// Schema references are not supported, so nothing refers to any version.
async fn referenced_by(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
) -> Result<Response> {
    s.read().version(&subject, &v)?;
    Ok(ok(json!([])))
}

async fn mode() -> Response {
    ok(json!({"mode": "READWRITE"}))
}

/// `app` behind HTTP basic authentication: a request without a known `user:password` gets
/// 401 with Confluent's error body and a `WWW-Authenticate` challenge.
pub fn basic_auth(app: Router, users: Arc<Vec<(String, umbra_stream::secret::Secret)>>) -> Router {
    use base64::Engine as _;
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let users = users.clone();
            async move {
                let given = req
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Basic "))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                let allowed = given
                    .as_deref()
                    .and_then(|g| g.split_once(':'))
                    .is_some_and(|(u, p)| {
                        users
                            .iter()
                            .any(|(name, pw)| name == u && constant_time_eq(pw.expose(), p))
                    });
                if allowed {
                    next.run(req).await
                } else {
                    let mut r = (
                        axum::http::StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"error_code": 401, "message": "Unauthorized"})),
                    )
                        .into_response();
                    r.headers_mut().insert(
                        axum::http::header::WWW_AUTHENTICATE,
                        axum::http::HeaderValue::from_static(
                            "Basic realm=\"umbra schema registry\"",
                        ),
                    );
                    r
                }
            }
        },
    ))
}

/// Compares without stopping at the first difference, so that timing says nothing about how
/// much of a password was right.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The registry's routes.
pub fn router(shared: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(schema_by_id_raw))
        .route("/schemas/ids/{id}/versions", get(schema_versions))
        .route("/schemas/ids/{id}/subjects", get(schema_subjects))
        .route("/schemas/types", get(schema_types))
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route("/mode", get(mode))
        .with_state(shared)
}
