//! Secrets in configuration (passwords): given through the environment or read from a file
//! (a mounted Kubernetes Secret), and never printed: `Debug`, `Display` and `Serialize` show
//! `[redacted]`, so a logged or dumped configuration cannot leak one, and errors name the
//! file or the setting, never the value.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value. Only [`Secret::expose`] gives the value, at the point of use.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads a secret file: its content without the trailing newline that editors and
    /// `kubectl create secret --from-file` leave. The error names the file, not its content.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(format!("secret file {} is empty", path.display()));
        }
        Ok(Self(value.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Empty stays empty, so that a layered configuration's defaults stay unset.
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret([redacted]) [redacted]");
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"[redacted]\"");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(
            serde_json::to_string(&Secret::default()).expect("json"),
            "\"\""
        );
    }

    #[test]
    fn secret_files_lose_their_trailing_newline_and_errors_name_the_file_only() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cr3t\n").expect("write");
        assert_eq!(Secret::from_file(&f).expect("read").expose(), "s3cr3t");
        std::fs::write(&f, "\n").expect("write");
        let e = Secret::from_file(&f).expect_err("empty");
        assert!(e.contains("is empty"), "{e}");
        let e = Secret::from_file(&dir.path().join("missing")).expect_err("missing");
        assert!(e.contains("missing"), "{e}");
    }
}
