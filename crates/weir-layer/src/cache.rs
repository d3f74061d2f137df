//! A bounded, sharded map whose entries expire at a per-entry deadline.
//!
//! Used for verified tokens (expire at the token's `exp`) and API-key
//! lookups (expire after the revocation-propagation bound). Bounded because
//! every entry can be created by a client: when a shard is full, expired
//! entries go first, then arbitrary ones (`HashMap` iteration order is
//! randomly seeded, so an attacker cannot steer which). Losing an entry only
//! costs a re-verification, never correctness.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::time::Duration;

use parking_lot::Mutex;

const SHARDS: usize = 16;

#[derive(Debug)]
pub struct TtlCache<K, V> {
    shards: Vec<Mutex<HashMap<K, (V, Duration)>>>,
    per_shard: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// A cache of at most `capacity` entries (0 disables caching).
    pub fn new(capacity: usize) -> TtlCache<K, V> {
        TtlCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, k: &K) -> &Mutex<HashMap<K, (V, Duration)>> {
        let i = (self.hasher.hash_one(k) as usize) % SHARDS;
        &self.shards[i]
    }

    /// The value if present and `now < expires`.
    pub fn get(&self, k: &K, now: Duration) -> Option<V> {
        let mut shard = self.shard(k).lock();
        match shard.get(k) {
            Some((v, exp)) if now < *exp => Some(v.clone()),
            Some(_) => {
                shard.remove(k);
                None
            }
            None => None,
        }
    }

    /// Stores `v` until `expires`.
    pub fn insert(&self, k: K, v: V, expires: Duration, now: Duration) {
        if self.per_shard == 0 || expires <= now {
            return;
        }
        let mut shard = self.shard(&k).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&k) {
            shard.retain(|_, (_, exp)| now < *exp);
            if shard.len() >= self.per_shard {
                // Evict about 1/8 of the shard so the purge cost amortizes.
                let n = (self.per_shard / 8).max(1);
                let victims: Vec<K> = shard.keys().take(n).cloned().collect();
                for victim in victims {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(k, (v, expires));
    }

    pub fn remove(&self, k: &K) {
        self.shard(k).lock().remove(k);
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bounded, sharded memo keyed by byte strings a client sends
/// (credentials, taken straight from a header), whose entries expire at a
/// per-entry deadline.
///
/// The hot path of authentication: a lookup hashes the bytes once and
/// neither allocates nor copies them; the map is keyed by that hash, and a
/// hit compares the stored bytes in constant time, so two inputs sharing a
/// hash only ever cost a miss — never a false hit.
///
/// Because of that compare the hash only has to spread keys, not resist
/// attackers, and it is a randomly seeded foldhash rather than SipHash
/// (~60 instructions instead of ~390 for an API key under callgrind, paid
/// by every authenticated request). An attacker who learned the seed could
/// aim collisions only with inputs that get *stored*, and only verified
/// credentials are stored (memoized after verification), which a client
/// cannot choose byte by byte: a colliding forgery is a miss that goes to
/// the full verification it would have gone to anyway.
///
/// Bounded like [`TtlCache`] (every entry can be created by a client);
/// losing an entry only costs a re-verification.
#[derive(Debug)]
pub struct BytesMemo<V> {
    shards: Vec<Mutex<MemoShard<V>>>,
    per_shard: usize,
    hasher: foldhash::quality::RandomState,
}

/// Keyed hash of the bytes → the entry holding them.
type MemoShard<V> = HashMap<u64, MemoEntry<V>, BuildHasherDefault<Prehashed>>;

#[derive(Debug)]
struct MemoEntry<V> {
    key: Box<[u8]>,
    value: V,
    expires: Duration,
}

/// The hasher of maps whose keys already are keyed hash values (the
/// memo here, the local rate limiter's GCRA store): hashing them again would
/// only cost time. A `u64` key is its own hash (callers shard by bits the
/// map does not use).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only integer keys are hashed; fold anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl<V: Clone> BytesMemo<V> {
    /// A memo of at most `capacity` entries (0 disables it).
    pub fn new(capacity: usize) -> BytesMemo<V> {
        BytesMemo {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn slot(&self, key: &[u8]) -> (u64, &Mutex<MemoShard<V>>) {
        let h = self.hasher.hash_one(key);
        // The map uses the low bits and the top seven; shard by others.
        (h, &self.shards[((h >> 32) as usize) % SHARDS])
    }

    /// The value stored for exactly these bytes, if `now < expires`.
    pub fn get(&self, key: &[u8], now: Duration) -> Option<V> {
        let (h, shard) = self.slot(key);
        let mut shard = shard.lock();
        let e = shard.get(&h)?;
        if !constant_time_eq(&e.key, key) {
            return None;
        }
        if now < e.expires {
            return Some(e.value.clone());
        }
        shard.remove(&h);
        None
    }

    /// Stores `v` for these bytes until `expires` (replacing whatever
    /// shared their hash).
    pub fn insert(&self, key: &[u8], v: V, expires: Duration, now: Duration) {
        if self.per_shard == 0 || expires <= now {
            return;
        }
        let (h, shard) = self.slot(key);
        let mut shard = shard.lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&h) {
            shard.retain(|_, e| now < e.expires);
            if shard.len() >= self.per_shard {
                // Evict about 1/8 of the shard so the purge cost amortizes
                // (iteration order follows keyed hashes: not steerable).
                let n = (self.per_shard / 8).max(1);
                let victims: Vec<u64> = shard.keys().take(n).copied().collect();
                for victim in victims {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            h,
            MemoEntry {
                key: key.into(),
                value: v,
                expires,
            },
        );
    }

    /// Keeps only the entries whose value passes `keep` (revocation).
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for s in &self.shards {
            s.lock().retain(|_, e| keep(&e.value));
        }
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Equality whose time depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_matches_exact_bytes_expires_and_stays_bounded() {
        let m = BytesMemo::new(160);
        let t0 = Duration::from_secs(100);
        m.insert(b"wk_a", 1u32, t0 + Duration::from_secs(5), t0);
        assert_eq!(m.get(b"wk_a", t0), Some(1));
        assert_eq!(m.get(b"wk_b", t0), None);
        assert_eq!(m.get(b"wk_a\0", t0), None);
        assert_eq!(m.get(b"wk_a", t0 + Duration::from_secs(5)), None);
        assert!(m.is_empty(), "an expired entry is dropped when met");
        m.insert(b"x", 7, t0 + Duration::from_secs(5), t0);
        m.insert(b"y", 8, t0 + Duration::from_secs(5), t0);
        m.retain(|v| *v != 7);
        assert_eq!((m.get(b"x", t0), m.get(b"y", t0)), (None, Some(8)));
        for i in 0..100_000u32 {
            m.insert(&i.to_le_bytes(), 0, t0 + Duration::from_secs(60), t0);
        }
        assert!(m.len() <= 160, "{}", m.len());
        let zero = BytesMemo::new(0);
        zero.insert(b"k", 1u8, t0 + Duration::from_secs(1), t0);
        assert!(zero.is_empty());
    }

    #[test]
    fn expires_and_stays_bounded() {
        let c = TtlCache::new(160);
        let t0 = Duration::from_secs(100);
        c.insert(1u32, "a", t0 + Duration::from_secs(5), t0);
        assert_eq!(c.get(&1, t0), Some("a"));
        assert_eq!(c.get(&1, t0 + Duration::from_secs(5)), None);
        for i in 0..100_000u32 {
            c.insert(i, "x", t0 + Duration::from_secs(60), t0);
        }
        assert!(c.len() <= 160, "{}", c.len());
        let zero = TtlCache::new(0);
        zero.insert(1u32, 1u8, t0 + Duration::from_secs(1), t0);
        assert!(zero.is_empty());
    }
}
