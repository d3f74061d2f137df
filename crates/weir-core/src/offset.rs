//! Offsets: the opaque, lexicographically sortable positions of a stream.
//!
//! Weir mints offsets as `IIIIIIIIIIIIIIII_PPPPPPPPPPPPPPPP`: two fixed-width
//! 16-digit decimal numbers. `P` is the byte position in the stream's logical
//! offset space; `I` is the *incarnation id* of the stream that owns that
//! position. Incarnation ids come from one server-wide counter, so
//!
//! * a stream re-created at a deleted stream's URL mints offsets that sort
//!   after every offset of the old incarnation and can never be confused with
//!   them (the conformance suite expects re-creation to succeed; the spec
//!   would rather it did not — see ARCHITECTURE.md), and
//! * a fork (created after its source, so with a larger id) keeps the
//!   source's offsets for inherited positions and mints larger ones for its
//!   own data: reads stitch the two without translating offsets.
//!
//! Fixed width makes byte-wise comparison equal numeric comparison, which is
//! what the protocol's "lexicographically sortable" promise needs. The width
//! also keeps offsets short (33 bytes) and free of URL-reserved characters.

use std::fmt;

/// Number of decimal digits in each half of an offset.
const HALF: usize = 16;
/// Total length of a formatted offset.
pub const OFFSET_LEN: usize = HALF * 2 + 1;
/// Largest value a 16-digit half can hold.
pub const MAX_HALF: u64 = 9_999_999_999_999_999;

/// A concrete stream offset (never one of the sentinels `-1` / `now`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Offset {
    /// Incarnation id of the stream that minted this position.
    pub id: u64,
    /// Byte position in the stream's offset space.
    pub pos: u64,
}

/// Where a read starts, as the `offset` query parameter says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1` or no parameter: the beginning of the stream.
    Start,
    /// `now`: the tail at the time the request is processed.
    Now,
    /// A server-minted offset.
    At(Offset),
}

/// Why an offset string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    #[error("offset is empty")]
    Empty,
    #[error("offset must be `-1`, `now` or a 33-character server-minted token")]
    Malformed,
}

impl Offset {
    /// Builds an offset; both halves must fit 16 decimal digits.
    pub fn new(id: u64, pos: u64) -> Offset {
        Offset { id, pos }
    }

    /// Parses a server-minted offset token (not a sentinel).
    pub fn parse(s: &str) -> Result<Offset, OffsetError> {
        if s.is_empty() {
            return Err(OffsetError::Empty);
        }
        let b = s.as_bytes();
        if b.len() != OFFSET_LEN || b[HALF] != b'_' {
            return Err(OffsetError::Malformed);
        }
        let id = parse_half(&b[..HALF]).ok_or(OffsetError::Malformed)?;
        let pos = parse_half(&b[HALF + 1..]).ok_or(OffsetError::Malformed)?;
        Ok(Offset { id, pos })
    }
}

fn parse_half(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    Some(v)
}

impl fmt::Display for Offset {
    /// `{id:016}_{pos:016}`, written by hand: an offset is formatted for
    /// every append's `Stream-Next-Offset`, and the padded `write!` showed
    /// in per-append instruction counts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 41];
        let mut n = put_padded(&mut buf, 0, self.id);
        buf[n] = b'_';
        n = put_padded(&mut buf, n + 1, self.pos);
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

/// Writes `v` in decimal, zero-padded to at least 16 digits, at `at`;
/// returns the end.
fn put_padded(buf: &mut [u8; 41], at: usize, mut v: u64) -> usize {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while v > 0 {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = i.min(digits.len() - 16);
    let len = digits.len() - start;
    buf[at..at + len].copy_from_slice(&digits[start..]);
    at + len
}

impl ReadFrom {
    /// Parses the `offset` query parameter value (absent is handled by the
    /// caller as [`ReadFrom::Start`]).
    pub fn parse(s: &str) -> Result<ReadFrom, OffsetError> {
        match s {
            "-1" => Ok(ReadFrom::Start),
            "now" => Ok(ReadFrom::Now),
            _ => Offset::parse(s).map(ReadFrom::At),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_pads_to_sixteen_digits() {
        for (id, pos) in [
            (0, 0),
            (1, 42),
            (9_999_999_999_999_999, 10_000_000_000_000_000),
            (u64::MAX, 7),
        ] {
            let o = Offset { id, pos };
            assert_eq!(o.to_string(), format!("{id:016}_{pos:016}"));
        }
    }

    #[test]
    fn formats_fixed_width() {
        let o = Offset::new(1, 42);
        assert_eq!(o.to_string(), "0000000000000001_0000000000000042");
        assert_eq!(Offset::parse(&o.to_string()), Ok(o));
    }

    #[test]
    fn sentinels() {
        assert_eq!(ReadFrom::parse("-1"), Ok(ReadFrom::Start));
        assert_eq!(ReadFrom::parse("now"), Ok(ReadFrom::Now));
        assert_eq!(ReadFrom::parse(""), Err(OffsetError::Empty));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "0,1",
            "0 1",
            "../x",
            "0000000000000001_000000000000004",
            "0000000000000001-0000000000000042",
            "000000000000000a_0000000000000042",
            "0000000000000001_0000000000000042\n",
            "+000000000000001_0000000000000042",
            "-2",
            "NOW",
        ] {
            assert!(ReadFrom::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn roundtrip(id in 0..=MAX_HALF, pos in 0..=MAX_HALF) {
            let o = Offset::new(id, pos);
            prop_assert_eq!(Offset::parse(&o.to_string()), Ok(o));
        }

        #[test]
        fn string_order_is_numeric_order(a in (0..=MAX_HALF, 0..=MAX_HALF), b in (0..=MAX_HALF, 0..=MAX_HALF)) {
            let (oa, ob) = (Offset::new(a.0, a.1), Offset::new(b.0, b.1));
            prop_assert_eq!(oa.cmp(&ob), oa.to_string().cmp(&ob.to_string()));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".*") {
            let _ = ReadFrom::parse(&s);
        }
    }
}
