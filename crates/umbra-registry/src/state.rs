//! The registry's state as a pure fold over its log; no I/O here.

use std::collections::{BTreeMap, HashMap};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// Compatibility levels, as Confluent names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// No check.
    None,
    /// A new schema can read data written with the latest one.
    #[default]
    Backward,
    /// ... with every earlier one.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// ... every earlier one can.
    ForwardTransitive,
    /// Backward and forward.
    Full,
    /// Backward and forward against every earlier one.
    FullTransitive,
}

/// An error answered to a client, with Confluent's HTTP status and error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    /// HTTP status.
    pub status: u16,
    /// Confluent error code (40401 subject not found, 409 incompatible, ...).
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

impl RegistryError {
    fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 40401.
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    /// 40402.
    pub fn version_not_found(version: &str) -> Self {
        Self::new(404, 40402, format!("Version {version} not found."))
    }
    /// 40403.
    pub fn schema_not_found() -> Self {
        Self::new(404, 40403, "Schema not found")
    }
    /// 40408.
    pub fn subject_config_not_found(subject: &str) -> Self {
        Self::new(
            404,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    /// 42201.
    pub fn invalid_schema(why: impl std::fmt::Display) -> Self {
        Self::new(422, 42201, format!("Invalid schema: {why}"))
    }
    /// 42202.
    pub fn invalid_version(version: &str) -> Self {
        Self::new(422, 42202, format!("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""))
    }
    /// 42203.
    pub fn invalid_compatibility(level: &str) -> Self {
        Self::new(422, 42203, format!("Invalid compatibility level: {level}. Valid values are NONE, BACKWARD, FORWARD, FULL, BACKWARD_TRANSITIVE, FORWARD_TRANSITIVE and FULL_TRANSITIVE"))
    }
    /// 409.
    pub fn incompatible(subject: &str, details: &[String]) -> Self {
        Self::new(409, 409, format!(
            "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
            details.join(", ")
        ))
    }
    /// 50001.
    pub fn store(why: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            50001,
            format!("Error in the backend data store: {why}"),
        )
    }
}

/// Key of a record of the `_schemas` topic, in Confluent's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogKey {
    /// A subject version.
    Schema {
        /// Subject.
        subject: String,
        /// Version within the subject.
        version: u32,
        /// Format version of the key.
        magic: u32,
    },
    /// Compatibility configuration, global when `subject` is null.
    Config {
        /// Subject, or null for the global level.
        subject: Option<String>,
        /// Format version of the key.
        magic: u32,
    },
    /// Any other record kind Confluent writes (NOOP, MODE, DELETE_SUBJECT...): ignored.
    #[serde(other)]
    Other,
}

/// Value of a SCHEMA record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    /// Subject.
    pub subject: String,
    /// Version within the subject.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text as registered.
    pub schema: String,
    /// Soft-deleted.
    #[serde(default)]
    pub deleted: bool,
}

/// Value of a CONFIG record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    /// The level.
    pub compatibility_level: Compatibility,
}

/// One version of one subject.
#[derive(Debug, Clone)]
pub struct Version {
    /// Version number, from 1.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Soft-deleted.
    pub deleted: bool,
}

#[derive(Debug, Clone)]
struct StoredSchema {
    text: String,
    parsed: Schema,
}

/// Everything the registry knows, rebuilt from its log.
#[derive(Debug, Default)]
pub struct RegistryState {
    schemas: BTreeMap<u32, StoredSchema>,
    by_canonical: HashMap<String, u32>,
    subjects: BTreeMap<String, Vec<Version>>,
    global: Compatibility,
    subject_config: HashMap<String, Compatibility>,
}

/// What registering a schema under a subject needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterPlan {
    /// Already registered under this subject: answer with its id, write nothing.
    Existing(u32),
    /// Write this record, then answer with its id.
    New(LogKey, SchemaValue),
}

/// Parses and normalises a schema text; the canonical form identifies a schema.
pub fn parse_schema(text: &str) -> Result<(Schema, String), RegistryError> {
    let parsed = Schema::parse_str(text).map_err(RegistryError::invalid_schema)?;
    let canonical = parsed.canonical_form();
    Ok((parsed, canonical))
}

impl RegistryState {
    /// Number of distinct schemas.
    pub fn schema_count(&self) -> usize {
        self.schemas.len()
    }

    /// Applies one record of the log. Records that do not parse are skipped with a warning:
    /// the log may hold kinds a newer registry wrote.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let key: LogKey = match serde_json::from_slice(key) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "skipping _schemas record with an unreadable key");
                return;
            }
        };
        match key {
            LogKey::Schema {
                subject, version, ..
            } => {
                let Some(value) = value else {
                    // A tombstone hard-deletes the version.
                    if let Some(vs) = self.subjects.get_mut(&subject) {
                        vs.retain(|v| v.version != version);
                    }
                    return;
                };
                let v: SchemaValue = match serde_json::from_slice(value) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping _schemas SCHEMA record with an unreadable value");
                        return;
                    }
                };
                let Ok((parsed, canonical)) = parse_schema(&v.schema) else {
                    tracing::warn!(
                        id = v.id,
                        "skipping _schemas record whose schema does not parse"
                    );
                    return;
                };
                self.by_canonical.entry(canonical).or_insert(v.id);
                self.schemas.entry(v.id).or_insert(StoredSchema {
                    text: v.schema.clone(),
                    parsed,
                });
                let versions = self.subjects.entry(v.subject).or_default();
                match versions.iter_mut().find(|x| x.version == v.version) {
                    Some(x) => {
                        x.id = v.id;
                        x.deleted = v.deleted;
                    }
                    None => {
                        versions.push(Version {
                            version: v.version,
                            id: v.id,
                            deleted: v.deleted,
                        });
                        versions.sort_by_key(|x| x.version);
                    }
                }
            }
            LogKey::Config { subject, .. } => {
                let level = value.and_then(|v| serde_json::from_slice::<ConfigValue>(v).ok());
                match (subject, level) {
                    (None, Some(c)) => self.global = c.compatibility_level,
                    (None, None) => self.global = Compatibility::default(),
                    (Some(s), Some(c)) => {
                        self.subject_config.insert(s, c.compatibility_level);
                    }
                    (Some(s), None) => {
                        self.subject_config.remove(&s);
                    }
                }
            }
            LogKey::Other => {}
        }
    }

    /// Subjects with at least one live version.
    pub fn subjects(&self) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| vs.iter().any(|v| !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn live_versions(&self, subject: &str) -> Result<Vec<&Version>, RegistryError> {
        let vs: Vec<&Version> = self
            .subjects
            .get(subject)
            .map(|vs| vs.iter().filter(|v| !v.deleted).collect())
            .unwrap_or_default();
        if vs.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        Ok(vs)
    }

    /// Live version numbers of a subject.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        Ok(self
            .live_versions(subject)?
            .iter()
            .map(|v| v.version)
            .collect())
    }

    /// One version of a subject: `latest`, `-1` or a number.
    pub fn version(&self, subject: &str, version: &str) -> Result<(u32, u32, &str), RegistryError> {
        let vs = self.live_versions(subject)?;
        let found = if version == "latest" || version == "-1" {
            vs.last().copied()
        } else {
            let n: u32 = version
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| RegistryError::invalid_version(version))?;
            vs.iter().copied().find(|v| v.version == n)
        };
        let v = found.ok_or_else(|| RegistryError::version_not_found(version))?;
        let text = self.schema_text(v.id)?;
        Ok((v.version, v.id, text))
    }

    /// Schema text by global id.
    pub fn schema_text(&self, id: u32) -> Result<&str, RegistryError> {
        self.schemas
            .get(&id)
            .map(|s| s.text.as_str())
            .ok_or_else(RegistryError::schema_not_found)
    }

    /// (subject, version) pairs that use a schema id.
    pub fn usages(&self, id: u32) -> Result<Vec<(String, u32)>, RegistryError> {
        if !self.schemas.contains_key(&id) {
            return Err(RegistryError::schema_not_found());
        }
        Ok(self
            .subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(|v| v.id == id && !v.deleted)
                    .map(move |v| (s.clone(), v.version))
            })
            .collect())
    }

    /// Looks a schema up under a subject.
    pub fn lookup(&self, subject: &str, text: &str) -> Result<(u32, u32), RegistryError> {
        let vs = self.live_versions(subject)?;
        let (_, canonical) = parse_schema(text)?;
        let id = *self
            .by_canonical
            .get(&canonical)
            .ok_or_else(RegistryError::schema_not_found)?;
        vs.iter()
            .find(|v| v.id == id)
            .map(|v| (v.id, v.version))
            .ok_or_else(RegistryError::schema_not_found)
    }

    /// Global compatibility level.
    pub fn global_compatibility(&self) -> Compatibility {
        self.global
    }

    /// Subject-level compatibility, if set.
    pub fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.subject_config.get(subject).copied()
    }

    fn effective(&self, subject: &str) -> Compatibility {
        self.subject_compatibility(subject).unwrap_or(self.global)
    }

    /// Checks `text` against the versions of `subject` the level asks for; `against` limits
    /// the check to one version (the compatibility endpoint). Returns the problems found.
    pub fn check(
        &self,
        subject: &str,
        text: &str,
        against: Option<u32>,
    ) -> Result<Vec<String>, RegistryError> {
        let (new, _) = parse_schema(text)?;
        let level = self.effective(subject);
        let vs: Vec<&Version> = self
            .subjects
            .get(subject)
            .map(|vs| vs.iter().filter(|v| !v.deleted).collect())
            .unwrap_or_default();
        let transitive = matches!(
            level,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        );
        let olds: Vec<&Version> = match against {
            Some(n) => vs.into_iter().filter(|v| v.version == n).collect(),
            None if transitive => vs,
            None => vs.last().copied().into_iter().collect(),
        };
        let mut problems = Vec::new();
        for old in olds {
            let old_schema = &self
                .schemas
                .get(&old.id)
                .ok_or_else(RegistryError::schema_not_found)?
                .parsed;
            let backward = matches!(
                level,
                Compatibility::Backward
                    | Compatibility::BackwardTransitive
                    | Compatibility::Full
                    | Compatibility::FullTransitive
            );
            let forward = matches!(
                level,
                Compatibility::Forward
                    | Compatibility::ForwardTransitive
                    | Compatibility::Full
                    | Compatibility::FullTransitive
            );
            if backward {
                if let Err(e) = SchemaCompatibility::can_read(old_schema, &new) {
                    problems.push(format!(
                        "new schema cannot read data written with version {}: {e}",
                        old.version
                    ));
                }
            }
            if forward {
                if let Err(e) = SchemaCompatibility::can_read(&new, old_schema) {
                    problems.push(format!(
                        "version {} cannot read data written with the new schema: {e}",
                        old.version
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Decides what registering `text` under `subject` takes.
    pub fn plan_register(&self, subject: &str, text: &str) -> Result<RegisterPlan, RegistryError> {
        let (_, canonical) = parse_schema(text)?;
        let existing_id = self.by_canonical.get(&canonical).copied();
        let versions = self.subjects.get(subject);
        if let (Some(id), Some(vs)) = (existing_id, versions) {
            if vs.iter().any(|v| v.id == id && !v.deleted) {
                return Ok(RegisterPlan::Existing(id));
            }
        }
        let problems = self.check(subject, text, None)?;
        if !problems.is_empty() {
            return Err(RegistryError::incompatible(subject, &problems));
        }
        let id =
            existing_id.unwrap_or_else(|| self.schemas.keys().next_back().map_or(1, |m| m + 1));
        let version = versions
            .and_then(|vs| vs.iter().map(|v| v.version).max())
            .unwrap_or(0)
            + 1;
        Ok(RegisterPlan::New(
            LogKey::Schema {
                subject: subject.to_string(),
                version,
                magic: 1,
            },
            SchemaValue {
                subject: subject.to_string(),
                version,
                id,
                schema: text.to_string(),
                deleted: false,
            },
        ))
    }

    /// Records that soft-delete a subject (all versions) or one version of it.
    pub fn plan_delete(
        &self,
        subject: &str,
        version: Option<&str>,
    ) -> Result<Vec<(LogKey, SchemaValue)>, RegistryError> {
        let targets: Vec<u32> = match version {
            None => self.versions(subject)?,
            Some(v) => vec![self.version(subject, v)?.0],
        };
        let vs = self.live_versions(subject)?;
        Ok(vs
            .into_iter()
            .filter(|v| targets.contains(&v.version))
            .map(|v| {
                (
                    LogKey::Schema {
                        subject: subject.to_string(),
                        version: v.version,
                        magic: 1,
                    },
                    SchemaValue {
                        subject: subject.to_string(),
                        version: v.version,
                        id: v.id,
                        schema: self
                            .schemas
                            .get(&v.id)
                            .map(|s| s.text.clone())
                            .unwrap_or_default(),
                        deleted: true,
                    },
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    const V2_OK: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
    const V2_BAD: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}"#;

    fn register(
        state: &mut RegistryState,
        subject: &str,
        text: &str,
    ) -> Result<u32, RegistryError> {
        match state.plan_register(subject, text)? {
            RegisterPlan::Existing(id) => Ok(id),
            RegisterPlan::New(k, v) => {
                let id = v.id;
                state.apply(
                    &serde_json::to_vec(&k).unwrap(),
                    Some(&serde_json::to_vec(&v).unwrap()),
                );
                Ok(id)
            }
        }
    }

    #[test]
    fn ids_are_global_and_reused_across_subjects() {
        let mut s = RegistryState::default();
        assert_eq!(register(&mut s, "a-value", V1), Ok(1));
        assert_eq!(register(&mut s, "a-value", V1), Ok(1));
        assert_eq!(register(&mut s, "b-value", V1), Ok(1));
        assert_eq!(register(&mut s, "a-value", V2_OK), Ok(2));
        assert_eq!(s.versions("a-value"), Ok(vec![1, 2]));
        assert_eq!(s.lookup("b-value", V1), Ok((1, 1)));
    }

    #[test]
    fn backward_incompatible_change_is_409() {
        let mut s = RegistryState::default();
        register(&mut s, "a-value", V1).unwrap();
        let err = register(&mut s, "a-value", V2_BAD).unwrap_err();
        assert_eq!((err.status, err.code), (409, 409));
        assert!(err.message.contains("incompatible"), "{}", err.message);
    }

    #[test]
    fn error_codes() {
        let s = RegistryState::default();
        assert_eq!(s.versions("nope").unwrap_err().code, 40401);
        assert_eq!(s.schema_text(7).unwrap_err().code, 40403);
        assert_eq!(parse_schema("{").unwrap_err().code, 42201);
    }

    #[test]
    fn confluent_log_format_is_understood() {
        let mut s = RegistryState::default();
        let key = br#"{"keytype":"SCHEMA","subject":"t-value","version":1,"magic":1}"#;
        let value = format!(
            r#"{{"subject":"t-value","version":1,"id":21,"schema":{},"deleted":false}}"#,
            serde_json::to_string(V1).unwrap()
        );
        s.apply(key, Some(value.as_bytes()));
        s.apply(br#"{"keytype":"NOOP","magic":0}"#, None);
        s.apply(
            br#"{"keytype":"CONFIG","subject":null,"magic":0}"#,
            Some(br#"{"compatibilityLevel":"FULL"}"#),
        );
        assert_eq!(s.version("t-value", "latest").unwrap().1, 21);
        assert_eq!(s.global_compatibility(), Compatibility::Full);
    }
}
