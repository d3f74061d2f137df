//! Live-read cursors (PROTOCOL.md §10.1): interval numbers that make CDN
//! cache keys move forward in time and never go backwards.

/// Cursor epoch: 2024-10-09T00:00:00Z in Unix milliseconds.
pub const CURSOR_EPOCH_MS: i64 = 1_728_432_000_000;
/// Interval length.
pub const CURSOR_INTERVAL_MS: i64 = 20_000;

/// The cursor for a live response at `now_ms`, given the client's echoed
/// cursor. If the client is already at or past the current interval, the
/// answer jumps ahead by `jitter_secs` (1–3600 s, chosen by the caller) so it
/// is strictly greater than what the client sent.
pub fn next_cursor(now_ms: i64, client: Option<&str>, jitter_secs: u64) -> u64 {
    let current =
        u64::try_from((now_ms - CURSOR_EPOCH_MS).max(0) / CURSOR_INTERVAL_MS).unwrap_or(0);
    match client.and_then(|c| c.parse::<u64>().ok()) {
        Some(c) if c >= current => {
            let jitter_intervals =
                (jitter_secs.clamp(1, 3600) * 1000).div_ceil(CURSOR_INTERVAL_MS as u64);
            c.saturating_add(jitter_intervals.max(1))
        }
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn interval_number() {
        assert_eq!(next_cursor(CURSOR_EPOCH_MS, None, 1), 0);
        assert_eq!(next_cursor(CURSOR_EPOCH_MS + 40_000, None, 1), 2);
        assert_eq!(next_cursor(CURSOR_EPOCH_MS + 40_000, Some("1"), 1), 2);
        assert_eq!(next_cursor(CURSOR_EPOCH_MS + 40_000, Some("garbage"), 1), 2);
    }

    proptest! {
        #[test]
        fn never_goes_back(now in CURSOR_EPOCH_MS..CURSOR_EPOCH_MS + 10_000_000_000, client in 0u64..1_000_000, jitter in 0u64..5000) {
            let c = next_cursor(now, Some(&client.to_string()), jitter);
            let current = u64::try_from((now - CURSOR_EPOCH_MS) / CURSOR_INTERVAL_MS).unwrap();
            prop_assert!(c >= current);
            if client >= current { prop_assert!(c > client); }
        }
    }
}
