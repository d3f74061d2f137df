//! Stream names: the stream-root-relative path that identifies a stream.
//!
//! The HTTP server maps `/v1/stream/{name}` to a [`StreamName`]; storage
//! backends key everything by it. Names are validated once, here, so that no
//! backend ever sees a path-traversal segment, a control character or an
//! unbounded key (the embedded log writes names into records, JetStream puts
//! them into subjects and KV keys).

use std::fmt;

/// Longest accepted name, in bytes. Long enough for deep hierarchies, short
/// enough that a name always fits a log record header page and a NATS subject.
pub const MAX_NAME_LEN: usize = 1024;

/// First segment reserved for protocol control APIs (`__ds/...`).
pub const RESERVED_SEGMENT: &str = "__ds";

/// A validated stream name such as `chats/42/tokens`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(std::sync::Arc<str>);

impl TryFrom<String> for StreamName {
    type Error = NameError;
    fn try_from(s: String) -> Result<StreamName, NameError> {
        StreamName::new(&s)
    }
}

impl From<StreamName> for String {
    fn from(n: StreamName) -> String {
        n.0.to_string()
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("stream name is empty")]
    Empty,
    #[error("stream name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("stream name has an empty, `.` or `..` segment")]
    BadSegment,
    #[error("stream name contains a control character")]
    ControlChar,
    #[error("stream names starting with `__ds` are reserved")]
    Reserved,
}

impl StreamName {
    /// Validates a stream-root-relative name (no leading slash).
    pub fn new(name: &str) -> Result<StreamName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlChar);
        }
        let mut first = true;
        for seg in name.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(NameError::BadSegment);
            }
            if first && seg == RESERVED_SEGMENT {
                return Err(NameError::Reserved);
            }
            first = false;
        }
        Ok(StreamName(std::sync::Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this name starts with `prefix` (plain string prefix, as the
    /// listing API and subscription backfill use it).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::borrow::Borrow<str> for StreamName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_hierarchies() {
        assert!(StreamName::new("a").is_ok());
        assert!(StreamName::new("chats/42/tokens").is_ok());
        assert!(StreamName::new("üñï-çødé").is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(StreamName::new(""), Err(NameError::Empty));
        assert_eq!(StreamName::new("a//b"), Err(NameError::BadSegment));
        assert_eq!(StreamName::new("a/../b"), Err(NameError::BadSegment));
        assert_eq!(StreamName::new("./b"), Err(NameError::BadSegment));
        assert_eq!(StreamName::new("/a"), Err(NameError::BadSegment));
        assert_eq!(StreamName::new("a/"), Err(NameError::BadSegment));
        assert_eq!(StreamName::new("a\nb"), Err(NameError::ControlChar));
        assert_eq!(StreamName::new("__ds/x"), Err(NameError::Reserved));
        assert!(StreamName::new("x/__ds").is_ok());
        assert_eq!(
            StreamName::new(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn valid_names_have_no_traversal(s in ".{0,64}") {
            if let Ok(n) = StreamName::new(&s) {
                prop_assert!(n.as_str().split('/').all(|seg| !seg.is_empty() && seg != ".." && seg != "."));
            }
        }
    }
}
