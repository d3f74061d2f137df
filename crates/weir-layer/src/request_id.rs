//! Request ids (correlation ids).
//!
//! One id per request, chosen in this order:
//! 1. the client's `X-Request-Id`, if it is 1–128 bytes of visible ASCII
//!    (anything else could smuggle newlines or escapes into logs, so it is
//!    ignored rather than refused — a bad id must not fail a good request);
//! 2. the trace id of a valid W3C `traceparent`, so logs and traces join;
//! 3. a fresh UUIDv7 in 32 lowercase hex digits — time-ordered (logs sort)
//!    and, having the shape of a W3C trace id, usable as one when the server
//!    starts a trace.
//!
//! The id goes into request extensions ([`RequestId`]), the request's
//! tracing span (so every log line of the request carries it), every
//! response's `X-Request-Id` and every problem body's `correlation_id`.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use rand::RngCore;

/// The request id header.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// The W3C trace-context header.
pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Longest accepted client-supplied id.
pub const MAX_LEN: usize = 128;

/// The id of one request.
#[derive(Clone)]
pub struct RequestId(Repr);

/// Most requests carry no id and get a generated one, which lives inline
/// (32 ASCII hex digits): making an id then costs no allocation. Ids taken
/// from the client are shared, so clones stay a reference count.
#[derive(Clone)]
enum Repr {
    Generated([u8; 32]),
    /// The client's own `X-Request-Id` value (checked by [`valid`]), kept
    /// as the header value it arrived as: taking it copies nothing, and
    /// echoing it on the response is a reference count rather than a
    /// fresh copy of the bytes.
    Header(http::HeaderValue),
    Given(Arc<str>),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always ASCII hex (see `uuid_v7`); the check cannot fail.
            Repr::Generated(b) => std::str::from_utf8(b).unwrap_or_default(),
            // Visible ASCII (checked on the way in); cannot fail either.
            Repr::Header(v) => std::str::from_utf8(v.as_bytes()).unwrap_or_default(),
            Repr::Given(s) => s,
        }
    }

    /// The id as an `X-Request-Id` value. A generated id is hex already:
    /// its bytes go in as they are, without the UTF-8 check of
    /// [`RequestId::as_str`].
    pub fn header_value(&self) -> Option<http::HeaderValue> {
        match &self.0 {
            Repr::Generated(b) => http::HeaderValue::from_bytes(b).ok(),
            Repr::Header(v) => Some(v.clone()),
            Repr::Given(s) => http::HeaderValue::from_str(s).ok(),
        }
    }

    /// A client-supplied id, if acceptable.
    pub fn parse(s: &str) -> Option<RequestId> {
        valid(s).then(|| RequestId(Repr::Given(Arc::from(s))))
    }

    /// A fresh UUIDv7 as 32 lowercase hex digits.
    pub fn generate() -> RequestId {
        RequestId(Repr::Generated(uuid_v7(
            crate::clock::Clock::now(&crate::clock::SystemClock).as_millis() as u64,
            (random_id_bits(), random_id_bits()),
        )))
    }

    /// The id for a request with these headers (see the module docs).
    pub fn from_headers(h: &http::HeaderMap) -> (RequestId, Option<TraceParent>) {
        RequestId::from_values(h.get(&X_REQUEST_ID), h.get(&TRACEPARENT))
    }

    /// [`RequestId::from_headers`] given the two headers' (first) values,
    /// for a caller that found them itself (see
    /// [`crate::http::LayerHeaders`]).
    pub(crate) fn from_values(
        request_id: Option<&http::HeaderValue>,
        traceparent: Option<&http::HeaderValue>,
    ) -> (RequestId, Option<TraceParent>) {
        let tp = traceparent
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        // `to_str` then `valid` on the bytes: `valid` admits a subset of
        // what `to_str` does, so checking the bytes alone is the same test.
        let id = request_id
            .filter(|v| valid_bytes(v.as_bytes()))
            .map(|v| RequestId(Repr::Header(v.clone())))
            .or_else(|| {
                tp.as_ref()
                    .map(|t| RequestId(Repr::Given(Arc::from(t.trace_id.as_str()))))
            })
            .unwrap_or_else(RequestId::generate);
        (id, tp)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &RequestId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RequestId {}

impl std::hash::Hash for RequestId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

fn valid(s: &str) -> bool {
    valid_bytes(s.as_bytes())
}

/// 1–[`MAX_LEN`] bytes of visible ASCII.
fn valid_bytes(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// A parsed W3C `traceparent` (kept in request extensions for the tracing
/// exporter to continue the caller's trace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    pub flags: u8,
}

impl TraceParent {
    /// Parses `version-traceid-parentid-flags` per W3C Trace Context §3.2:
    /// lowercase hex only, version `ff` and all-zero ids invalid; versions
    /// above `00` may append fields after the flags.
    pub fn parse(s: &str) -> Option<TraceParent> {
        let s = s.trim_matches(|c| c == ' ' || c == '\t');
        let mut parts = s.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || !hex(trace_id, 32) || !hex(parent_id, 16) {
            return None;
        }
        let version = u8::from_str_radix(version, 16).ok()?;
        if version == 0xff || (version == 0 && rest.is_some()) {
            return None;
        }
        // Future versions: flags is the first two characters of the 4th field.
        let flags = if version == 0 { flags } else { flags.get(..2)? };
        if !hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(TraceParent {
            version,
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }
}

thread_local! {
    /// The state behind [`random_id_bits`]: a wyrand stream per thread,
    /// seeded from the OS-seeded `thread_rng`.
    static ID_RNG: Cell<u64> = Cell::new(rand::thread_rng().next_u64());
}

/// 64 random bits for an id: a request id here, trace and span ids in the
/// service framework. An id needs to be unique and unguessable enough to
/// use as a trace id (W3C: random or pseudo-random), not secret — clients
/// may choose their own — and the ChaCha `thread_rng` cost ~350
/// instructions per id (a 16-byte fill and its share of block refills)
/// against ~10 for a wyrand step (Wang Yi's generator: passes BigCrush and
/// PractRand).
pub fn random_id_bits() -> u64 {
    ID_RNG.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// RFC 9562 UUIDv7: 48-bit Unix milliseconds, version 7, 74 random bits
/// (from `random`), variant `10`, written as 32 lowercase hex digits.
/// The two 64-bit halves are composed as words and written straight out.
fn uuid_v7(unix_ms: u64, random: (u64, u64)) -> [u8; 32] {
    // ms (48 bits) | version 7 (4) | 12 random bits.
    let hi = ((unix_ms & 0xffff_ffff_ffff) << 16) | 0x7000 | (random.0 & 0x0fff);
    // Variant `10` (2 bits) | 62 random bits.
    let lo = 0x8000_0000_0000_0000 | (random.1 & 0x3fff_ffff_ffff_ffff);
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&hex16(hi));
    out[16..].copy_from_slice(&hex16(lo));
    out
}

/// `v` as 16 lowercase hex digits, most significant first. Every request
/// without an id of its own gets a generated one, and a table lookup per
/// digit cost ~160 instructions per id; this is a dozen word operations:
/// each nibble is spread into a byte of its own, then all 16 are turned
/// into ASCII at once (`'0' + n`, plus `'a' - '0' - 10` where `n >= 10`).
fn hex16(v: u64) -> [u8; 16] {
    const LOW_NIBBLES: u128 = 0x000f_000f_000f_000f_000f_000f_000f_000f;
    const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    // Byte k of the byte-swapped value (the k-th most significant of `v`)
    // into the low byte of 16-bit lane k.
    let mut x = u128::from(v.swap_bytes());
    x = (x | (x << 32)) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    // Lane k: its high nibble in the low byte (first in memory), its low
    // nibble in the high byte.
    let n = ((x >> 4) & LOW_NIBBLES) | ((x & LOW_NIBBLES) << 8);
    // 1 in each byte whose nibble is 10 or more (no byte carries: n + 6
    // is at most 21).
    let letters = ((n + 6 * ONES) >> 4) & ONES;
    (n + 0x30 * ONES + 0x27 * letters).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&http::HeaderName, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert((*k).clone(), v.parse().unwrap());
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn client_id_wins_when_valid() {
        let (id, tp) =
            RequestId::from_headers(&headers(&[(&X_REQUEST_ID, "abc-123"), (&TRACEPARENT, TP)]));
        assert_eq!(id.as_str(), "abc-123");
        assert_eq!(tp.unwrap().trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn invalid_client_ids_are_replaced() {
        let long = "a".repeat(MAX_LEN + 1);
        for bad in ["", "has space", "tab\tx", long.as_str(), "é"] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(RequestId::parse(&"a".repeat(MAX_LEN)).is_some());
        let mut h = http::HeaderMap::new();
        h.insert(
            &X_REQUEST_ID,
            http::HeaderValue::from_bytes(b"bad\xffid").unwrap(),
        );
        let (id, _) = RequestId::from_headers(&h);
        assert_eq!(id.as_str().len(), 32);
    }

    #[test]
    fn traceparent_trace_id_is_second_choice() {
        let (id, _) = RequestId::from_headers(&headers(&[(&TRACEPARENT, TP)]));
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn traceparent_validation() {
        assert!(TraceParent::parse(TP).is_some());
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        let future =
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
                .unwrap();
        assert_eq!(future.version, 1);
        assert_eq!(future.flags, 1);
    }

    #[test]
    fn generated_ids_are_uuid_v7() {
        let a = RequestId::generate();
        let s = a.as_str();
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&s[12..13], "7", "version nibble");
        assert!(matches!(&s[16..17], "8" | "9" | "a" | "b"), "variant bits");
        assert_ne!(a, RequestId::generate());
        let id = uuid_v7(0x0123_4567_89ab, (u64::MAX, u64::MAX));
        assert_eq!(&id[..], b"0123456789ab7fffbfffffffffffffff");
        let id = uuid_v7(0x0123_4567_89ab, (0, 0));
        assert_eq!(&id[..], b"0123456789ab70008000000000000000");
        assert!(id.starts_with(b"0123456789ab7"));
        assert!(
            id.iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    /// The word-wise hex digits are the table's.
    #[test]
    fn hex16_is_lowercase_hex() {
        for v in [
            0,
            u64::MAX,
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
            0x8000_0000_0000_0001,
            random_id_bits(),
            random_id_bits(),
        ] {
            assert_eq!(hex16(v), *format!("{v:016x}").as_bytes(), "{v:#x}");
        }
    }

    #[test]
    fn generated_ids_do_not_repeat() {
        let ids: std::collections::HashSet<RequestId> =
            (0..10_000).map(|_| RequestId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    /// A client's id is echoed as the very value it sent (shared, not
    /// copied), and equals the same id parsed from a string.
    #[test]
    fn client_id_is_echoed_as_sent() {
        let (id, _) = RequestId::from_headers(&headers(&[(&X_REQUEST_ID, "client-7")]));
        assert!(matches!(id.0, Repr::Header(_)));
        assert_eq!(id.header_value().unwrap(), "client-7");
        assert_eq!(id, RequestId::parse("client-7").unwrap());
        let mut h = http::HeaderMap::new();
        h.insert(&X_REQUEST_ID, http::HeaderValue::from_static("tab\there"));
        assert_eq!(RequestId::from_headers(&h).0.as_str().len(), 32);
    }

    #[test]
    fn header_value_is_the_id() {
        let given = RequestId::parse("req-42").unwrap();
        for id in [RequestId::generate(), given] {
            assert_eq!(id.header_value().unwrap().to_str().unwrap(), id.as_str());
        }
    }
}
