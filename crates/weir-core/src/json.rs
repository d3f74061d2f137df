//! JSON mode framing (PROTOCOL.md §9.1).
//!
//! A POST body to an `application/json` stream is validated and split into
//! messages: a top-level array is flattened one level, anything else is one
//! message. Messages are stored as the exact bytes the client sent for each
//! value (no re-serialisation), and reads wrap them in one JSON array.
//!
//! Two defences the reference server lacks: the body must be valid UTF-8
//! (checked before parsing, so invalid bytes inside strings cannot slip
//! through), and nesting depth is bounded (checked by a linear scan before the
//! recursive parser runs), so a hostile body gets a `400`, never a `500`.

use bytes::Bytes;
use serde_json::value::RawValue;

/// Deepest accepted nesting of arrays/objects in one body.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why a JSON body was refused (all `400 Bad Request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("body is nested deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("body is not valid JSON: {0}")]
    Invalid(String),
    #[error("an empty JSON array appends nothing")]
    EmptyArray,
}

/// Splits a JSON body into messages. `allow_empty_array` is true for `PUT`
/// (an empty initial array creates an empty stream) and false for `POST`.
pub fn split_messages(body: &Bytes, allow_empty_array: bool) -> Result<Vec<Bytes>, JsonError> {
    let text = std::str::from_utf8(body).map_err(|_| JsonError::NotUtf8)?;
    check_depth(text.as_bytes())?;
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| JsonError::Invalid(e.to_string()))?;
        if items.is_empty() && !allow_empty_array {
            return Err(JsonError::EmptyArray);
        }
        Ok(items
            .into_iter()
            .map(|raw| slice_of(body, text, raw.get()))
            .collect())
    } else {
        let raw: &RawValue =
            serde_json::from_str(text).map_err(|e| JsonError::Invalid(e.to_string()))?;
        Ok(vec![slice_of(body, text, raw.get())])
    }
}

/// Zero-copy: the message is a sub-slice of the request body.
fn slice_of(body: &Bytes, text: &str, part: &str) -> Bytes {
    let start = part.as_ptr() as usize - text.as_ptr() as usize;
    body.slice(start..start + part.len())
}

/// Rejects bodies nested deeper than [`MAX_JSON_DEPTH`]. Linear, no recursion;
/// strings are skipped so brackets inside them do not count.
fn check_depth(b: &[u8]) -> Result<(), JsonError> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &c in b {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(JsonError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `[m1,m2,...]` for a read response.
pub fn wrap_array<'a>(messages: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(s: &str) -> Result<Vec<String>, JsonError> {
        split_messages(&Bytes::copy_from_slice(s.as_bytes()), false).map(|v| {
            v.into_iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn flattening_rules() {
        assert_eq!(
            split(r#"{"event": "created"}"#).unwrap(),
            vec![r#"{"event": "created"}"#]
        );
        assert_eq!(
            split(r#"[{"a":1}, {"b":2}]"#).unwrap(),
            vec![r#"{"a":1}"#, r#"{"b":2}"#]
        );
        assert_eq!(split("[[1,2], [3,4]]").unwrap(), vec!["[1,2]", "[3,4]"]);
        assert_eq!(split("[[[1,2,3]]]").unwrap(), vec!["[[1,2,3]]"]);
        assert_eq!(split(" 42 ").unwrap(), vec!["42"]);
        assert_eq!(split(r#""s""#).unwrap(), vec![r#""s""#]);
        assert_eq!(split("[]"), Err(JsonError::EmptyArray));
        assert!(
            split_messages(&Bytes::from_static(b"[]"), true)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(matches!(split("{"), Err(JsonError::Invalid(_))));
        assert!(matches!(split(""), Err(JsonError::Invalid(_))));
        assert!(matches!(split("[1,]"), Err(JsonError::Invalid(_))));
        assert!(matches!(split("1 2"), Err(JsonError::Invalid(_))));
        assert_eq!(
            split_messages(&Bytes::from_static(b"\"\xff\xfe\""), false),
            Err(JsonError::NotUtf8)
        );
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(split(&deep), Err(JsonError::TooDeep));
        let ok_depth = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
        assert!(split(&ok_depth).is_ok());
        // Brackets inside strings do not count.
        let s = format!("\"{}\"", "[".repeat(1000));
        assert!(split(&s).is_ok());
    }

    #[test]
    fn wraps() {
        let mut out = Vec::new();
        wrap_array([&b"1"[..], b"{}"], &mut out);
        assert_eq!(out, b"[1,{}]");
        out.clear();
        wrap_array(std::iter::empty(), &mut out);
        assert_eq!(out, b"[]");
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(serde_json::Value::from),
            ".{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Wrapping the split messages of a non-empty array gives back the
        /// same JSON value; a non-array value round-trips as a one-element array.
        #[test]
        fn split_then_wrap_roundtrips(v in arb_json()) {
            let body = Bytes::from(serde_json::to_vec(&v).unwrap());
            match split_messages(&body, false) {
                Ok(msgs) => {
                    let mut out = Vec::new();
                    wrap_array(msgs.iter().map(|m| &m[..]), &mut out);
                    let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
                    let expected = match v { serde_json::Value::Array(a) => serde_json::Value::Array(a), other => serde_json::Value::Array(vec![other]) };
                    prop_assert_eq!(back, expected);
                }
                Err(JsonError::EmptyArray) => prop_assert_eq!(v, serde_json::Value::Array(vec![])),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = split_messages(&Bytes::from(b), false);
        }
    }
}
