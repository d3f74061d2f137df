//! Content types: how a stream's bytes are framed and encoded on the wire.
//!
//! The protocol compares content types case-insensitively and, in practice,
//! clients attach parameters (`application/json; charset=utf-8`). Weir keeps
//! the type exactly as the creator sent it (it is echoed on every read) and
//! compares the lower-cased media type without parameters.

/// A stream's content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentType {
    raw: std::sync::Arc<str>,
    essence: std::sync::Arc<str>,
}

/// The default when a `PUT` carries no `Content-Type`.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

impl ContentType {
    /// Parses a `Content-Type` header value. Returns `None` for values that
    /// are not `type/subtype[; params]`.
    pub fn parse(raw: &str) -> Option<ContentType> {
        let raw = raw.trim();
        let essence = raw
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let (ty, sub) = essence.split_once('/')?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !token(ty) || !token(sub) {
            return None;
        }
        Some(ContentType {
            raw: raw.into(),
            essence: essence.into(),
        })
    }

    /// The default content type.
    pub fn default_type() -> ContentType {
        ContentType {
            raw: DEFAULT_CONTENT_TYPE.into(),
            essence: DEFAULT_CONTENT_TYPE.into(),
        }
    }

    /// The value as the creator sent it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Lower-cased `type/subtype` without parameters.
    pub fn essence(&self) -> &str {
        &self.essence
    }

    /// Whether two content types name the same media type.
    pub fn matches(&self, other: &ContentType) -> bool {
        self.essence == other.essence
    }

    /// JSON mode (message boundaries, array flattening) applies.
    pub fn is_json(&self) -> bool {
        &*self.essence == "application/json"
    }

    /// SSE data events carry text as is (otherwise they are base64).
    pub fn is_text_like(&self) -> bool {
        self.is_json() || self.essence.starts_with("text/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_case_insensitively_without_params() {
        let a = ContentType::parse("application/json").unwrap();
        let b = ContentType::parse("APPLICATION/JSON; charset=utf-8").unwrap();
        assert!(a.matches(&b));
        assert!(b.is_json());
        assert_eq!(b.as_str(), "APPLICATION/JSON; charset=utf-8");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "json", "/json", "text/", "te xt/plain", "a/b/c"] {
            assert!(ContentType::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn text_like() {
        assert!(ContentType::parse("text/plain").unwrap().is_text_like());
        assert!(
            !ContentType::parse("application/x-protobuf")
                .unwrap()
                .is_text_like()
        );
    }
}
