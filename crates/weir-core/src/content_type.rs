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

/// Content types parsed once (lower case, no parameters).
fn common() -> &'static [ContentType] {
    static COMMON: std::sync::OnceLock<Vec<ContentType>> = std::sync::OnceLock::new();
    COMMON.get_or_init(|| {
        [
            DEFAULT_CONTENT_TYPE,
            "application/json",
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-ndjson",
        ]
        .into_iter()
        .map(|t| {
            let raw: std::sync::Arc<str> = t.into();
            let essence = t.split(';').next().unwrap_or(t).trim();
            ContentType {
                essence: if essence == t {
                    raw.clone()
                } else {
                    essence.into()
                },
                raw,
            }
        })
        .collect()
    })
}

impl ContentType {
    /// Parses a `Content-Type` header value. Returns `None` for values that
    /// are not `type/subtype[; params]`.
    pub fn parse(raw: &str) -> Option<ContentType> {
        let raw = raw.trim();
        // The usual types, exactly as clients send them, share one
        // allocation each: a type is parsed on every append.
        if let Some(known) = common().iter().find(|c| &*c.raw == raw) {
            return Some(known.clone());
        }
        let essence = raw.split(';').next().unwrap_or("").trim();
        let (ty, sub) = essence.split_once('/')?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !token(ty) || !token(sub) {
            return None;
        }
        let raw: std::sync::Arc<str> = raw.into();
        let essence: std::sync::Arc<str> =
            if essence == &*raw && !essence.bytes().any(|b| b.is_ascii_uppercase()) {
                raw.clone()
            } else {
                essence.to_ascii_lowercase().into()
            };
        Some(ContentType { raw, essence })
    }

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
    fn common_types_parse_like_any_other() {
        for t in [
            "application/octet-stream",
            "text/plain; charset=utf-8",
            "application/json",
        ] {
            let c = ContentType::parse(t).unwrap();
            assert_eq!(c.as_str(), t);
            assert_eq!(c.essence(), t.split(';').next().unwrap());
        }
        let c = ContentType::parse("  Text/Plain ").unwrap();
        assert_eq!((c.as_str(), c.essence()), ("Text/Plain", "text/plain"));
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
