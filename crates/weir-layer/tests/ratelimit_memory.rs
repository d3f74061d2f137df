//! The local limiter's memory stays bounded under a million distinct keys.
//! No timing assertions: the clock is frozen, so no key ever replenishes and
//! only the hard capacity bound can keep memory flat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write;

use weir_layer::clock::ManualClock;
use weir_layer::ratelimit::Limit;
use weir_layer::ratelimit::local::LocalBackend;

#[test]
fn a_million_distinct_keys_stay_within_the_bound() {
    let clock = ManualClock::new();
    let max_keys = 10_000;
    let b = LocalBackend::new(max_keys, clock);
    let limit = Limit::per_second(1);
    let mut key = String::new();
    let mut peak_bytes = 0;
    for i in 0..1_000_000u32 {
        key.clear();
        let _ = write!(key, "ip:10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        // Every key is new, so every first request passes: the bound is kept
        // by forgetting old keys, never by refusing new ones.
        assert!(b.check(&key, &limit, 1).allowed);
        if i % 100_000 == 0 {
            assert!(b.len() <= b.max_keys());
            peak_bytes = peak_bytes.max(b.allocated_bytes());
        }
    }
    assert!(b.max_keys() <= max_keys + 64);
    assert!(b.len() <= b.max_keys(), "{} keys", b.len());
    assert!(
        b.len() >= b.max_keys() / 2,
        "the store is used, not emptied"
    );
    peak_bytes = peak_bytes.max(b.allocated_bytes());
    // Fixed-size entries: the tables never grow past a small multiple of
    // the bound (hash tables keep ≤ 50% spare capacity after growth).
    assert!(
        peak_bytes <= 4 * b.max_keys() * 25,
        "allocated {peak_bytes} bytes for {} keys",
        b.max_keys()
    );
    // A key seen recently is still limited (its state survived the spray
    // unless evicted as one of the oldest).
    key.clear();
    key.push_str("ip:10.15.66.63"); // i = 999_999
    assert!(!b.check(&key, &limit, 1).allowed);
}
