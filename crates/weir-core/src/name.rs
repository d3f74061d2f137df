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
        validate(name)?;
        Ok(StreamName(std::sync::Arc::from(name)))
    }

    /// `{prefix}/{name}` (e.g. a tenant's scope and the client's name):
    /// `name` is validated as [`StreamName::new`] validates it — so its
    /// first segment cannot be `__ds` — and the result is exactly what
    /// `StreamName::new` of the joined string accepts or refuses (the
    /// same error, `name`'s first), but each part is scanned once and the
    /// joined name is built once: the request path of every append under
    /// a tenant validated and allocated it twice.
    pub fn scoped(prefix: &str, name: &str) -> Result<StreamName, NameError> {
        validate(name)?;
        let len = prefix.len() + 1 + name.len();
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        // An empty prefix is an empty first segment of the whole.
        check_parts(prefix)?;
        // Joined on the stack (names are short), then copied once into
        // the shared string; a long one goes through a `String`.
        const STACK: usize = 256;
        if len <= STACK {
            let mut buf = [0u8; STACK];
            buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
            buf[prefix.len()] = b'/';
            buf[prefix.len() + 1..len].copy_from_slice(name.as_bytes());
            // Two valid strings and an ASCII slash: always UTF-8.
            if let Ok(joined) = std::str::from_utf8(&buf[..len]) {
                return Ok(StreamName(std::sync::Arc::from(joined)));
            }
        }
        let mut joined = String::with_capacity(len);
        joined.push_str(prefix);
        joined.push('/');
        joined.push_str(name);
        Ok(StreamName(std::sync::Arc::from(joined)))
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

/// Every check of [`StreamName::new`], in its order.
fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    check_parts(name)
}

/// The checks of [`validate`] after its length checks, in its order:
/// control characters, then segments (empty, `.`, `..`, a reserved first
/// one).
fn check_parts(name: &str) -> Result<(), NameError> {
    // `char::is_control` is U+0000–U+001F and U+007F–U+009F. The ASCII
    // ones are found by a branch-free fold over the bytes (vectorized; a
    // `chars()` scan decodes and branches per character); the rest only
    // exist in non-ASCII names, which take the `chars()` scan.
    let ascii_control = name
        .bytes()
        .fold(false, |bad, b| bad | (b < 0x20) | (b == 0x7f));
    if ascii_control
        || (!name.is_ascii() && name.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)))
    {
        return Err(NameError::ControlChar);
    }
    // Segments by a plain byte walk: `str::split` sets up a pattern
    // searcher per call, which cost more than the walk for the short names
    // (and tenant prefixes) every request validates.
    let bytes = name.as_bytes();
    let mut start = 0;
    for end in (0..bytes.len())
        .filter(|&i| bytes[i] == b'/')
        .chain([bytes.len()])
    {
        let seg = &bytes[start..end];
        if matches!(seg, b"" | b"." | b"..") {
            return Err(NameError::BadSegment);
        }
        if start == 0 && seg == RESERVED_SEGMENT.as_bytes() {
            return Err(NameError::Reserved);
        }
        start = end + 1;
    }
    Ok(())
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

    #[test]
    fn scoped_names() {
        assert_eq!(StreamName::scoped("t", "a/b").unwrap().as_str(), "t/a/b");
        assert_eq!(StreamName::scoped("t", "__ds/x"), Err(NameError::Reserved));
        assert_eq!(StreamName::scoped("", "a"), Err(NameError::BadSegment));
        assert_eq!(StreamName::scoped("__ds", "a"), Err(NameError::Reserved));
        // Past the stack buffer: the same name through a `String`.
        let long = "x".repeat(300);
        assert_eq!(
            StreamName::scoped("t", &long).unwrap().as_str(),
            format!("t/{long}")
        );
        assert_eq!(
            StreamName::scoped("t", &"x".repeat(MAX_NAME_LEN - 1)),
            Err(NameError::TooLong)
        );
    }

    proptest! {
        /// The byte scan finds exactly what `char::is_control` finds.
        #[test]
        fn control_chars_are_chars_is_control(s in "[\\u{0}-\\u{ff}a/]{0,16}") {
            prop_assert_eq!(
                matches!(check_parts(&s), Err(NameError::ControlChar)),
                s.chars().any(char::is_control)
            );
        }

        /// `scoped` answers what validating the name, then the joined
        /// name, answers.
        #[test]
        fn scoped_is_new_of_the_joined_name(
            p in "(__ds)?[a./\\u{85}]{0,6}",
            n in "(__ds)?[a./\\n]{0,6}",
        ) {
            let joined = StreamName::new(&n).and_then(|_| StreamName::new(&format!("{p}/{n}")));
            prop_assert_eq!(StreamName::scoped(&p, &n), joined);
        }

        /// `check_parts` answers what the naming rules answer, applied one
        /// by one in their order (control characters, then each segment).
        #[test]
        fn check_parts_is_the_rules_in_order(s in "(__ds)?[a./\\n\u{7f}\u{85}é_]{0,12}") {
            let expected = if s.chars().any(char::is_control) {
                Err(NameError::ControlChar)
            } else {
                s.split('/')
                    .enumerate()
                    .find_map(|(i, seg)| {
                        if matches!(seg, "" | "." | "..") {
                            Some(NameError::BadSegment)
                        } else if i == 0 && seg == RESERVED_SEGMENT {
                            Some(NameError::Reserved)
                        } else {
                            None
                        }
                    })
                    .map_or(Ok(()), Err)
            };
            prop_assert_eq!(check_parts(&s), expected);
        }

        #[test]
        fn valid_names_have_no_traversal(s in ".{0,64}") {
            if let Ok(n) = StreamName::new(&s) {
                prop_assert!(n.as_str().split('/').all(|seg| !seg.is_empty() && seg != ".." && seg != "."));
            }
        }
    }
}
