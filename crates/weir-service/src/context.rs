//! The call context: deadline, trace context, correlation id, credentials.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use tokio::time::Instant;
use weir_layer::Principal;
use weir_layer::request_id::random_id_bits;

use crate::headers::names as h;

/// What travels with a call from hop to hop. Cheap to clone.
///
/// A handler receives the context of its request; passing it to the calls
/// it makes carries the remaining deadline, the trace, the correlation id
/// and the end user's token onward.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    deadline: Option<Instant>,
    trace: Option<TraceContext>,
    correlation: Correlation,
    token: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
    principal: Option<Arc<Principal>>,
}

impl Ctx {
    /// A root context without deadline (the client's default timeout applies).
    pub fn new() -> Ctx {
        Ctx::default()
    }

    /// A root context whose deadline is `timeout` from now.
    pub fn with_timeout(timeout: Duration) -> Ctx {
        Ctx::new().timeout(timeout)
    }

    /// Sets the deadline to `timeout` from now, or keeps the current one if
    /// it is sooner (a callee never gets more time than its caller has).
    pub fn timeout(mut self, timeout: Duration) -> Ctx {
        let d = Instant::now() + timeout;
        self.deadline = Some(self.deadline.map_or(d, |old| old.min(d)));
        self
    }

    /// Forwards this bearer token (a JWT) on every call.
    pub fn token(mut self, token: impl Into<Arc<str>>) -> Ctx {
        self.token = Some(token.into());
        self
    }

    pub fn correlation(mut self, id: impl Into<Arc<str>>) -> Ctx {
        self.correlation = Correlation::Explicit(id.into());
        self
    }

    pub fn tenant(mut self, tenant: impl Into<Arc<str>>) -> Ctx {
        self.tenant = Some(tenant.into());
        self
    }

    /// The verified caller (set by the auth middleware).
    pub fn with_principal(mut self, p: Principal) -> Ctx {
        self.tenant = Some(p.tenant.as_str().into());
        self.principal = Some(Arc::new(p));
        self
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub fn is_expired(&self) -> bool {
        self.deadline.is_some_and(|d| d <= Instant::now())
    }

    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// The correlation id: the one given to [`Ctx::correlation`] or
    /// received in `Weir-Correlation-Id`, else the trace id of the received
    /// `traceparent` (`None` on a root context without either).
    pub fn correlation_id(&self) -> Option<&str> {
        match &self.correlation {
            Correlation::None => None,
            Correlation::Explicit(c) => Some(c),
            Correlation::Trace(hex) => std::str::from_utf8(hex).ok(),
        }
    }

    pub fn bearer_token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_deref()
    }

    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The context of an incoming message: deadline from
    /// `Weir-Deadline-Ms`, trace from `traceparent`, correlation id, token.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Ctx {
        Ctx::from_headers_at(headers, Instant::now())
    }

    /// [`Ctx::from_headers`] with the local deadline counted from `now`.
    ///
    /// One pass over the headers the message carries (usually three or
    /// four) instead of a hashed lookup per header Weir knows: the lookups
    /// hashed each name with SipHash, which cost more than the parsing.
    pub fn from_headers_at(headers: Option<&HeaderMap>, now: Instant) -> Ctx {
        let mut ctx = Ctx::new();
        let Some(hm) = headers else {
            return ctx;
        };
        // The correlation header and the traceparent's trace-id digits, to
        // decide after the pass which one the correlation id comes from.
        let mut explicit: Option<&str> = None;
        let mut trace_hex: Option<&str> = None;
        // The first value of each header, as `HeaderMap::get` returns it.
        for (name, values) in hm.iter() {
            let Some(v) = values.first() else { continue };
            let v = v.as_str();
            match AsRef::<str>::as_ref(name) {
                crate::headers::DEADLINE_MS => {
                    ctx.deadline = v
                        .parse::<u64>()
                        .ok()
                        .map(|ms| now + Duration::from_millis(ms));
                }
                crate::headers::TRACEPARENT => {
                    ctx.trace = TraceContext::parse(v);
                    // A parsed traceparent has its lower-case trace id at 3..35.
                    trace_hex = ctx.trace.and_then(|_| v.trim().get(3..35));
                }
                crate::headers::CORRELATION_ID => explicit = Some(v),
                crate::headers::AUTHORIZATION => {
                    ctx.token = v.strip_prefix("Bearer ").map(|t| Arc::from(t.trim()));
                }
                crate::headers::TENANT => ctx.tenant = Some(Arc::from(v)),
                _ => {}
            }
        }
        // Weir sends `Weir-Correlation-Id` only when it differs from the
        // trace id; older peers always send it, and an equal one is kept as
        // derived so that it is not sent on again either.
        ctx.correlation = match (explicit, trace_hex) {
            (Some(c), Some(t)) if c != t => Correlation::Explicit(Arc::from(c)),
            (Some(c), None) => Correlation::Explicit(Arc::from(c)),
            (_, Some(t)) => {
                <[u8; 32]>::try_from(t.as_bytes()).map_or(Correlation::None, Correlation::Trace)
            }
            (None, None) => Correlation::None,
        };
        ctx
    }

    /// Writes the outgoing headers of a call made under this context: the
    /// remaining deadline, a child span of the trace (a new trace if none),
    /// the correlation id unless it is the trace id, token and tenant.
    pub fn write_headers(&self, hm: &mut HeaderMap, default_timeout: Duration) -> Duration {
        let remaining = self.remaining().unwrap_or(default_timeout);
        self.write_headers_with(hm, remaining);
        remaining
    }

    /// [`Ctx::write_headers`] with the time budget already computed (the
    /// client reads the clock once per call for the expiry check and this).
    pub(crate) fn write_headers_with(&self, hm: &mut HeaderMap, remaining: Duration) {
        let ms = u64::try_from(remaining.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        hm.insert(h::DEADLINE_MS, decimal(ms));
        let trace = match &self.trace {
            Some(t) => t.child(),
            None => TraceContext::root(),
        };
        // The correlation id travels only when it is not the trace id: the
        // receiver derives it from the traceparent otherwise (the child span
        // keeps the trace id). That is one header less to build, send, parse
        // and hash on every call: about 2k instructions a call by callgrind.
        if let Correlation::Explicit(c) = &self.correlation {
            hm.insert(h::CORRELATION_ID, &**c);
        }
        hm.insert(h::TRACEPARENT, trace.to_header());
        if let Some(t) = &self.token {
            let mut v = String::with_capacity(7 + t.len());
            v.push_str("Bearer ");
            v.push_str(t);
            hm.insert(h::AUTHORIZATION, v);
        }
        if let Some(t) = &self.tenant {
            hm.insert(h::TENANT, &**t);
        }
        if let Some(p) = &self.principal {
            hm.insert(h::PRINCIPAL, p.subject.as_str());
        }
    }
}

/// Where a context's correlation id comes from.
#[derive(Clone, Debug, Default)]
enum Correlation {
    /// A root context: the call's trace id will be the correlation id.
    #[default]
    None,
    /// Set by the caller, or received in `Weir-Correlation-Id`: sent on.
    Explicit(Arc<str>),
    /// The trace id of the received `traceparent` (lower-case hex digits,
    /// copied rather than formatted): not sent, every hop derives it.
    Trace([u8; 32]),
}

/// `v` in decimal, without the formatting machinery (every call writes one).
/// The digits go into the string in one copy: collecting them as `char`s
/// encoded each one and grew the string.
fn decimal(mut v: u64) -> String {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    String::from(std::str::from_utf8(&buf[i..]).unwrap_or_default())
}

/// W3C trace context (`traceparent` version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub parent_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace.
    pub fn root() -> TraceContext {
        let (hi, lo, span) = (random_id_bits(), random_id_bits(), random_id_bits());
        TraceContext {
            trace_id: (u128::from(hi) << 64 | u128::from(lo)).max(1),
            parent_id: span.max(1),
            sampled: true,
        }
    }

    /// A child span: same trace, new span id.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            parent_id: random_id_bits().max(1),
            ..*self
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
    pub fn parse(s: &str) -> Option<TraceContext> {
        let s = s.trim();
        // The usual form (version 00, 55 bytes) by position, without the
        // splitting iterator; anything else takes the general path below.
        if let (55, Some(b'-'), Some(b'-'), Some(b'-')) = (
            s.len(),
            s.as_bytes().get(2),
            s.as_bytes().get(35),
            s.as_bytes().get(52),
        ) && let (Some(t), Some(p), Some(f)) = (s.get(3..35), s.get(36..52), s.get(53..55))
            && s.starts_with("00-")
        {
            return TraceContext::from_parts(t, p, f);
        }
        let mut it = s.split('-');
        let (v, t, p, f) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if v.len() != 2 || v == "ff" || t.len() != 32 || p.len() != 16 || f.len() != 2 {
            return None;
        }
        if v == "00" && it.next().is_some() {
            return None;
        }
        TraceContext::from_parts(t, p, f)
    }

    /// The trace id, parent id and flags fields, already split.
    fn from_parts(t: &str, p: &str, f: &str) -> Option<TraceContext> {
        let trace_id = parse_hex_with(t, &LOWER_HEX_DIGIT)?;
        let parent_id = u64::try_from(parse_hex(p)?).ok()?;
        let flags = u8::try_from(parse_hex(f)?).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// `00-{trace-id}-{parent-id}-{flags}`, lower-case hex. Written by hand
    /// rather than through `format!`: it runs on every call and event, and
    /// the formatting machinery cost more than the rest of the header work.
    pub fn to_header(&self) -> String {
        // The whole value in one buffer, two digits per byte of the ids,
        // then one copy into the string.
        let mut b = *b"00-00000000000000000000000000000000-0000000000000000-01";
        hex_into(&mut b[3..35], &self.trace_id.to_be_bytes());
        hex_into(&mut b[36..52], &self.parent_id.to_be_bytes());
        if !self.sampled {
            b[54] = b'0';
        }
        String::from(std::str::from_utf8(&b).unwrap_or_default())
    }

    pub fn trace_id_hex(&self) -> String {
        let mut b = [0u8; 32];
        hex_into(&mut b, &self.trace_id.to_be_bytes());
        String::from(std::str::from_utf8(&b).unwrap_or_default())
    }
}

/// Hex digits only (no sign, unlike `from_str_radix`), at most 32 of them.
/// Runs for every incoming message with a `traceparent`.
fn parse_hex(s: &str) -> Option<u128> {
    parse_hex_with(s, &HEX_DIGIT)
}

/// [`parse_hex`] with a digit table (`LOWER_HEX_DIGIT` for trace ids, which
/// must be lower case: checked by the table, not by a second scan).
fn parse_hex_with(s: &str, table: &[u8; 256]) -> Option<u128> {
    let b = s.as_bytes();
    match b.len() {
        0 => None,
        1..=16 => hex_u64(b, table).map(u128::from),
        n @ 17..=32 => {
            let (hi, lo) = b.split_at(n - 16);
            Some(u128::from(hex_u64(hi, table)?) << 64 | u128::from(hex_u64(lo, table)?))
        }
        _ => None,
    }
}

/// The value of a hex digit, `INVALID` for any other byte.
const INVALID: u8 = 0xff;
const HEX_DIGIT: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
/// [`HEX_DIGIT`] without the upper-case letters.
const LOWER_HEX_DIGIT: [u8; 256] = {
    let mut t = HEX_DIGIT;
    let mut i = 0;
    while i < 6 {
        t[b'A' as usize + i] = INVALID;
        i += 1;
    }
    t
};

/// At most 16 hex digits (either case) as a `u64`: a table lookup per
/// digit, no 128-bit shifts (a traceparent is parsed on every message).
fn hex_u64(b: &[u8], table: &[u8; 256]) -> Option<u64> {
    // The ids of a traceparent are 16-digit halves: eight digits at a time.
    if let Ok(b16) = <&[u8; 16]>::try_from(b) {
        let lower_only = table[usize::from(b'A')] == INVALID;
        let (hi, lo) = b16.split_at(8);
        let hi = hex8(
            u64::from_le_bytes(<[u8; 8]>::try_from(hi).ok()?),
            lower_only,
        )?;
        let lo = hex8(
            u64::from_le_bytes(<[u8; 8]>::try_from(lo).ok()?),
            lower_only,
        )?;
        return Some(u64::from(hi) << 32 | u64::from(lo));
    }
    let mut acc = 0u64;
    let mut bad = 0u8;
    for &c in b.iter().take(16) {
        let d = table[usize::from(c)];
        bad |= d;
        acc = acc << 4 | u64::from(d & 0xf);
    }
    // Every valid digit is below 16; an invalid byte sets the high bits.
    (bad & 0xf0 == 0 && b.len() <= 16).then_some(acc)
}

/// Eight hex digits (first digit in the low byte, as loaded little-endian)
/// as a `u32`, all bytes at once: each byte is classified by adding a bias
/// that carries into its high bit exactly when it is at least the range's
/// first character (bytes are checked to be ASCII first, so no carry
/// crosses into the next byte), then the nibbles are packed pairwise.
/// About a third of the per-digit table loop, which ran 48 times per
/// received traceparent.
fn hex8(x: u64, lower_only: bool) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if x & HIGH != 0 {
        return None;
    }
    let at_least = |c: u8| x.wrapping_add(ONES * u64::from(0x80 - c)) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let mut letter = at_least(b'a') & !at_least(b'f' + 1);
    if !lower_only {
        letter |= at_least(b'A') & !at_least(b'F' + 1);
    }
    if digit | letter != HIGH {
        return None;
    }
    // '0'..'9' -> 0..9; 'a'/'A'.. -> 1.. + 9.
    let nib = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    let x = ((nib << 4) | (nib >> 8)) & 0x00ff_00ff_00ff_00ff;
    let x = ((x << 8) | (x >> 16)) & 0x0000_ffff_0000_ffff;
    let x = ((x << 16) | (x >> 32)) & 0x0000_0000_ffff_ffff;
    u32::try_from(x).ok()
}

/// Writes `bytes` as lower-case hex into `out` (two digits per byte).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_by_table() {
        assert_eq!(parse_hex("0"), Some(0));
        assert_eq!(parse_hex("fF"), Some(255));
        assert_eq!(
            parse_hex("ffffffffffffffffffffffffffffffff"),
            Some(u128::MAX)
        );
        assert_eq!(
            parse_hex("4bf92f3577b34da6a3ce929d0e0e4736"),
            Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
        assert_eq!(
            parse_hex("123456789abcdef01"),
            Some(0x1_2345_6789_abcd_ef01)
        );
        assert_eq!(parse_hex(""), None);
        assert_eq!(parse_hex("0g"), None);
        assert_eq!(parse_hex("/"), None);
        assert_eq!(parse_hex(":"), None);
        assert_eq!(parse_hex("000000000000000000000000000000000"), None);
        // Sixteen-digit halves go eight digits at a time: every byte value
        // in every position agrees with the per-digit table.
        for pos in 0..16 {
            for c in 0..=255u8 {
                let mut d = *b"0123456789abcdef";
                d[pos] = c;
                let per_digit = |table: &[u8; 256]| {
                    d.iter().try_fold(0u64, |acc, &c| {
                        let v = table[usize::from(c)];
                        (v < 16).then_some(acc << 4 | u64::from(v))
                    })
                };
                assert_eq!(hex_u64(&d, &HEX_DIGIT), per_digit(&HEX_DIGIT), "{pos} {c}");
                assert_eq!(
                    hex_u64(&d, &LOWER_HEX_DIGIT),
                    per_digit(&LOWER_HEX_DIGIT),
                    "{pos} {c}"
                );
            }
        }
        // Upper-case parent ids are read (only the trace id must be lower).
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01").unwrap();
        assert_eq!(
            t.to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let t = TraceContext::root();
        assert_eq!(TraceContext::parse(&t.to_header()), Some(t));
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert!(
            TraceContext::parse("00-00000000000000000000000000000000-0000000000000001-01")
                .is_none()
        );
        assert!(TraceContext::parse("00-abc-01").is_none());
        assert!(
            TraceContext::parse("00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .is_none()
        );
        assert!(
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01")
                .is_none()
        );
        // Version 00 takes no extra fields; other versions may add some.
        assert!(
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_none()
        );
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        assert!(
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa-ba902b7-01")
                .is_none()
        );
        assert!(
            TraceContext::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
                .is_none()
        );
        let ok =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(ok.sampled);
        assert_eq!(
            ok.to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(ok.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let small = TraceContext {
            trace_id: 1,
            parent_id: 0xa,
            sampled: false,
        };
        assert_eq!(
            small.to_header(),
            "00-00000000000000000000000000000001-000000000000000a-00"
        );
    }

    #[test]
    fn correlation_id_is_derived_from_the_trace_unless_explicit() {
        // A root call: no correlation header, the receiver uses the trace id.
        let mut hm = HeaderMap::new();
        Ctx::new().write_headers(&mut hm, Duration::from_secs(5));
        assert!(hm.get(h::CORRELATION_ID).is_none());
        let hop = Ctx::from_headers(Some(&hm));
        let trace_id = hop.trace().map(TraceContext::trace_id_hex);
        assert_eq!(hop.correlation_id(), trace_id.as_deref());
        // The next hop derives the same id, still without the header.
        let mut next = HeaderMap::new();
        hop.write_headers(&mut next, Duration::from_secs(5));
        assert!(next.get(h::CORRELATION_ID).is_none());
        assert_eq!(
            Ctx::from_headers(Some(&next)).correlation_id(),
            trace_id.as_deref()
        );
        // An explicit id travels.
        let mut hm = HeaderMap::new();
        Ctx::new()
            .correlation("order-1")
            .write_headers(&mut hm, Duration::from_secs(5));
        assert_eq!(hm.get(h::CORRELATION_ID).unwrap().as_str(), "order-1");
        assert_eq!(
            Ctx::from_headers(Some(&hm)).correlation_id(),
            Some("order-1")
        );
        // An older peer sends the trace id as the header too: accepted, and
        // not sent on again.
        let mut old = HeaderMap::new();
        old.insert(
            h::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        old.insert(h::CORRELATION_ID, "4bf92f3577b34da6a3ce929d0e0e4736");
        let hop = Ctx::from_headers(Some(&old));
        assert_eq!(
            hop.correlation_id(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut next = HeaderMap::new();
        hop.write_headers(&mut next, Duration::from_secs(5));
        assert!(next.get(h::CORRELATION_ID).is_none());
        // A correlation header without a (valid) traceparent is kept.
        let mut bare = HeaderMap::new();
        bare.insert(h::CORRELATION_ID, "req-7");
        bare.insert(h::TRACEPARENT, "garbage");
        assert_eq!(
            Ctx::from_headers(Some(&bare)).correlation_id(),
            Some("req-7")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_round_trips_through_headers() {
        let ctx = Ctx::with_timeout(Duration::from_millis(250)).token("abc");
        let mut hm = HeaderMap::new();
        ctx.write_headers(&mut hm, Duration::from_secs(5));
        assert_eq!(hm.get(h::DEADLINE_MS).unwrap().as_str(), "250");
        let back = Ctx::from_headers(Some(&hm));
        assert_eq!(back.remaining(), Some(Duration::from_millis(250)));
        assert_eq!(back.bearer_token(), Some("abc"));
        assert_eq!(
            back.correlation_id(),
            back.trace().map(|t| t.trace_id_hex()).as_deref()
        );
    }
}
