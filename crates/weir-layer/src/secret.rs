//! Secrets in configuration: HMAC keys and database URLs can be given
//! inline or, preferably, as a `*_file` key naming a file (Kubernetes and
//! Docker secrets are mounted as files; env vars leak into process listings
//! and crash reports).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A secret string: `Debug` and `Serialize` print `"<redacted>"`, so
/// `weir config print` and log lines never show it.
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself; call sites are easy to audit with grep.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("`{key}` and `{key}_file` are both set; set one")]
    Both { key: String },
    #[error("cannot read `{key}_file` {path}: {source}")]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{key}` is empty")]
    Empty { key: String },
}

/// Resolves `key` / `key_file`: at most one may be set; a file's content is
/// used with trailing whitespace (the usual final newline) removed.
pub fn resolve(
    key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, SecretError> {
    let s = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(SecretError::Both {
                key: key.to_owned(),
            });
        }
        (Some(s), None) => s.clone(),
        (None, Some(p)) => {
            let raw = std::fs::read_to_string(p).map_err(|source| SecretError::Read {
                key: key.to_owned(),
                path: p.to_owned(),
                source,
            })?;
            Secret(raw.trim_end().to_owned())
        }
        (None, None) => return Ok(None),
    };
    if s.0.is_empty() {
        return Err(SecretError::Empty {
            key: key.to_owned(),
        });
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_everywhere() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn resolves_inline_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "from-file\n").unwrap();
        let inline = Secret::new("inline");
        assert_eq!(
            resolve("k", Some(&inline), None).unwrap().unwrap().expose(),
            "inline"
        );
        assert_eq!(
            resolve("k", None, Some(&f)).unwrap().unwrap().expose(),
            "from-file"
        );
        assert!(matches!(
            resolve("k", Some(&inline), Some(&f)),
            Err(SecretError::Both { .. })
        ));
        assert!(matches!(
            resolve("k", None, Some(&dir.path().join("missing"))),
            Err(SecretError::Read { .. })
        ));
        assert!(resolve("k", None, None).unwrap().is_none());
    }
}
