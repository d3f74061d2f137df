//! A bounded, sharded map whose entries expire at a per-entry deadline.
//!
//! Used for verified tokens (expire at the token's `exp`) and API-key
//! lookups (expire after the revocation-propagation bound). Bounded because
//! every entry can be created by a client: when a shard is full, expired
//! entries go first, then arbitrary ones (`HashMap` iteration order is
//! randomly seeded, so an attacker cannot steer which). Losing an entry only
//! costs a re-verification, never correctness.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
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

#[cfg(test)]
mod tests {
    use super::*;

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
