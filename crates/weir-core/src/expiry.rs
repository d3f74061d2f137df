//! Stream lifetime: `Stream-TTL` (sliding) and `Stream-Expires-At` (absolute).
//!
//! Times are plain Unix milliseconds so that the rules stay pure and testable
//! and every backend can persist them as integers.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest TTL accepted, in seconds (100 years). Anything larger is surely a
/// mistake and would overflow millisecond arithmetic in some clients.
pub const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

/// When a stream stops existing on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Expiry {
    /// Lives until deleted.
    #[default]
    Never,
    /// Expires after this many seconds without a read or write.
    Ttl { secs: u64 },
    /// Expires at this Unix time in milliseconds.
    At { unix_ms: i64 },
}

/// Why a lifetime header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error(
        "Stream-TTL must be a non-negative decimal integer without sign, leading zeros or fraction"
    )]
    BadTtl,
    #[error("Stream-TTL is larger than {MAX_TTL_SECS} seconds")]
    TtlTooLarge,
    #[error("Stream-Expires-At must be an RFC 3339 timestamp")]
    BadExpiresAt,
    #[error("Stream-TTL and Stream-Expires-At are mutually exclusive")]
    Both,
}

impl Expiry {
    /// Builds the lifetime from the two optional header values.
    pub fn from_headers(
        ttl: Option<&str>,
        expires_at: Option<&str>,
    ) -> Result<Expiry, ExpiryError> {
        match (ttl, expires_at) {
            (Some(_), Some(_)) => Err(ExpiryError::Both),
            (Some(t), None) => parse_ttl(t).map(|secs| Expiry::Ttl { secs }),
            (None, Some(e)) => parse_expires_at(e).map(|unix_ms| Expiry::At { unix_ms }),
            (None, None) => Ok(Expiry::Never),
        }
    }

    /// The moment this stream expires, given when it was last read or
    /// written. `None` means never.
    pub fn deadline_ms(&self, last_access_ms: i64) -> Option<i64> {
        match *self {
            Expiry::Never => None,
            Expiry::Ttl { secs } => Some(
                last_access_ms
                    .saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)),
            ),
            Expiry::At { unix_ms } => Some(unix_ms),
        }
    }

    /// Whether the stream has expired at `now_ms`.
    pub fn is_expired(&self, last_access_ms: i64, now_ms: i64) -> bool {
        self.deadline_ms(last_access_ms)
            .is_some_and(|d| now_ms >= d)
    }

    /// Whether reads and writes push the deadline out.
    pub fn is_sliding(&self) -> bool {
        matches!(self, Expiry::Ttl { .. })
    }

    /// The lifetime a fork gets (PROTOCOL.md §4.2 table): its own request if
    /// it made one, otherwise the source's TTL value or absolute deadline.
    pub fn for_fork(requested: Expiry, source: Expiry) -> Expiry {
        match requested {
            Expiry::Never => source,
            own => own,
        }
    }

    /// `Stream-Expires-At` header value.
    pub fn format_expires_at(unix_ms: i64) -> String {
        let nanos = i128::from(unix_ms) * 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }
}

/// Parses `Stream-TTL`: `0` or a decimal integer without leading zeros.
pub fn parse_ttl(s: &str) -> Result<u64, ExpiryError> {
    let b = s.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return Err(ExpiryError::BadTtl);
    }
    let v: u64 = s.parse().map_err(|_| ExpiryError::TtlTooLarge)?;
    if v > MAX_TTL_SECS {
        return Err(ExpiryError::TtlTooLarge);
    }
    Ok(v)
}

/// Parses `Stream-Expires-At` (RFC 3339) into Unix milliseconds.
pub fn parse_expires_at(s: &str) -> Result<i64, ExpiryError> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|_| ExpiryError::BadExpiresAt)?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| ExpiryError::BadExpiresAt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ttl_syntax() {
        assert_eq!(parse_ttl("0"), Ok(0));
        assert_eq!(parse_ttl("3600"), Ok(3600));
        for bad in [
            "", "-1", "+3600", "03600", "3600.0", "3.6e3", "abc", " 1", "1 ",
        ] {
            assert_eq!(parse_ttl(bad), Err(ExpiryError::BadTtl), "{bad}");
        }
        assert_eq!(
            parse_ttl("99999999999999999999999"),
            Err(ExpiryError::TtlTooLarge)
        );
    }

    #[test]
    fn expires_at_syntax() {
        assert_eq!(parse_expires_at("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(parse_expires_at("1970-01-01T01:00:01+01:00"), Ok(1000));
        assert_eq!(parse_expires_at("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert!(parse_expires_at("not-a-date").is_err());
        assert!(parse_expires_at("2024-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn both_is_an_error() {
        assert_eq!(
            Expiry::from_headers(Some("1"), Some("1970-01-01T00:00:01Z")),
            Err(ExpiryError::Both)
        );
    }

    #[test]
    fn sliding_and_absolute() {
        let ttl = Expiry::Ttl { secs: 10 };
        assert!(!ttl.is_expired(0, 9_999));
        assert!(ttl.is_expired(0, 10_000));
        let at = Expiry::At { unix_ms: 5 };
        assert!(at.is_expired(1_000_000, 5));
        assert!(!Expiry::Never.is_expired(0, i64::MAX));
    }

    #[test]
    fn fork_table() {
        let ttl = Expiry::Ttl { secs: 5 };
        let at = Expiry::At { unix_ms: 9 };
        assert_eq!(
            Expiry::for_fork(Expiry::Never, Expiry::Never),
            Expiry::Never
        );
        assert_eq!(Expiry::for_fork(ttl, Expiry::Never), ttl);
        assert_eq!(Expiry::for_fork(Expiry::Never, ttl), ttl);
        assert_eq!(Expiry::for_fork(Expiry::Never, at), at);
        assert_eq!(Expiry::for_fork(ttl, at), ttl);
        assert_eq!(Expiry::for_fork(at, ttl), at);
    }

    proptest! {
        #[test]
        fn ttl_roundtrip(v in 0u64..=MAX_TTL_SECS) {
            prop_assert_eq!(parse_ttl(&v.to_string()), Ok(v));
        }

        #[test]
        fn ttl_never_panics(s in ".*") {
            let _ = parse_ttl(&s);
        }

        #[test]
        fn expires_at_format_roundtrip(ms in 0i64..4_000_000_000_000) {
            let s = Expiry::format_expires_at(ms);
            prop_assert_eq!(parse_expires_at(&s), Ok(ms));
        }
    }
}
