//! The in-process GCRA store with a hard memory bound.
//!
//! Keys are hashed to 64 bits with one randomly keyed SipHash (fixed-size
//! entries whatever the key length, and no attacker-chosen collisions), so
//! an entry costs the same ~17 bytes for a short IP as for a long JWT
//! subject. 64 bits are enough: the store never holds more than `max_keys`
//! (10⁵ by default), so the chance that two live keys share a hash — and
//! with it a limit — is about `max_keys² / 2⁶⁵` (≈ 3·10⁻¹⁰), and the random
//! key leaves a client no way to aim for one. A second SipHash for 128 bits
//! cost ~300 instructions per request for nothing measurable.
//!
//! Each of 64 shards holds at most `max_keys / 64` entries. When a
//! shard is full, keys whose TAT has passed are dropped first — they are
//! fully replenished, so forgetting them changes nothing; if the shard is
//! still full, the ⅛ of keys closest to replenishment go (the least state
//! lost). Memory therefore stays bounded under any key spray; the price of a
//! spray is that some of its victims' limits reset early, never that memory
//! grows. [`LocalBackend::sweep`] drops replenished keys periodically so an
//! idle node gives its memory back.
//!
//! Why not the `governor` crate: its keyed store evicts only replenished
//! keys (`retain_recent`), so a burst of distinct keys within one emission
//! interval grows it without bound; it also cannot report the remaining
//! quota and reset time the `RateLimit` header needs without extra
//! middleware state, and its arithmetic would differ from the Redis script's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::gcra::{self, Decision, Limit};
use crate::cache::Prehashed;
use crate::clock::SharedClock;
use crate::principal::Principal;
use crate::thread_memo;

const SHARDS: usize = 64;

/// Per-entry bytes of a `HashMap<u64, u64>` slot (key, value, control byte).
const ENTRY_BYTES: usize = 8 + 8 + 1;

/// A shard: keyed-hash → TAT. The keys already are keyed SipHash values,
/// so the map uses them as they are instead of hashing them again.
type Shard = HashMap<u64, u64, BuildHasherDefault<Prehashed>>;

#[derive(Debug)]
pub struct LocalBackend {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
    clock: SharedClock,
    /// Unique per store in this process: names the hash key in
    /// [`LocalBackend::hash_for_principal`]'s per-thread memo (another
    /// store, even one at the same address after a reload, has another
    /// hash key).
    id: u64,
}

/// Rules whose keyed hash a thread remembers per principal.
const MEMO_RULES: usize = 4;

/// The keyed hashes of one principal's keys, per rule, as the last request
/// on this thread computed them. Holding the principal keeps its address
/// from being reused by another while it is remembered.
struct PrincipalHashes {
    store: u64,
    principal: Arc<Principal>,
    hashes: [Option<u64>; MEMO_RULES],
}

thread_local! {
    static LAST_PRINCIPAL: RefCell<Option<PrincipalHashes>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl LocalBackend {
    /// A store of at most `max_keys` keys (rounded up to a multiple of 64).
    pub fn new(max_keys: usize, clock: SharedClock) -> LocalBackend {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        LocalBackend {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard::with_capacity_and_hasher(
                        per_shard.min(1024),
                        Default::default(),
                    ))
                })
                .collect(),
            per_shard,
            hasher: RandomState::new(),
            clock,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The keyed hash of what `feed` writes (for a `str` key: its bytes
    /// then `0xff`, as `str`'s `Hash` writes them).
    pub(crate) fn hash_fed(&self, feed: impl FnOnce(&mut DefaultHasher)) -> u64 {
        let mut h = self.hasher.build_hasher();
        feed(&mut h);
        std::hash::Hasher::finish(&h)
    }

    fn now_us(&self) -> u64 {
        self.clock.now().as_micros().min(u128::from(u64::MAX)) as u64
    }

    /// Checks `key` against `limit`.
    pub fn check(&self, key: &str, limit: &Limit, cost: u64) -> Decision {
        self.check_with(|h| std::hash::Hash::hash(key, h), limit, cost)
    }

    /// [`LocalBackend::check`] for a key given as the bytes `feed` hashes,
    /// so a caller whose key is made of parts need not join them into a
    /// string first (the rate limiter's per-request path).
    pub(crate) fn check_with(
        &self,
        feed: impl FnOnce(&mut DefaultHasher),
        limit: &Limit,
        cost: u64,
    ) -> Decision {
        self.check_hashed(self.hash_fed(feed), limit, cost)
    }

    /// The keyed hash of rule `rule`'s key for `principal` (what `feed`
    /// writes, which must depend on nothing but the two), remembered per
    /// thread for the last principal seen. `rule` indexes the rules of the
    /// one limiter that owns this store, fixed for its life (a reload
    /// builds a new limiter, with a new store).
    ///
    /// A steady client sends request after request as the same principal
    /// (the credential memos hand out one shared `Arc` per verified
    /// credential), and hashing its key — SipHash over `{rule}:key:{id}`,
    /// gathered from parts — was the largest single cost of a local
    /// check. The memo holds the principal, so a pointer compare
    /// identifies it: its address cannot be reused while held.
    pub(crate) fn hash_for_principal(
        &self,
        principal: &Arc<Principal>,
        rule: usize,
        feed: impl FnOnce(&mut DefaultHasher),
    ) -> u64 {
        if rule >= MEMO_RULES {
            return self.hash_fed(feed);
        }
        let mine = |l: &PrincipalHashes| l.store == self.id && Arc::ptr_eq(&l.principal, principal);
        let remembered =
            thread_memo::read(
                &LAST_PRINCIPAL,
                |l| if mine(l) { l.hashes[rule] } else { None },
            );
        if let Some(h) = remembered {
            return h;
        }
        let h = self.hash_fed(feed);
        thread_memo::update(&LAST_PRINCIPAL, |last| match last {
            Some(l) if mine(l) => l.hashes[rule] = Some(h),
            _ => {
                let mut hashes = [None; MEMO_RULES];
                hashes[rule] = Some(h);
                *last = Some(PrincipalHashes {
                    store: self.id,
                    principal: principal.clone(),
                    hashes,
                });
            }
        });
        h
    }

    /// [`LocalBackend::check`] for a key's keyed hash.
    pub(crate) fn check_hashed(&self, h: u64, limit: &Limit, cost: u64) -> Decision {
        let now = self.now_us();
        // The shard by bits 32..38; the map's buckets use the low bits and
        // its control bytes the top seven, so the three stay independent.
        let mut shard = self.shards[((h >> 32) as usize) % SHARDS].lock();
        let full = shard.len() >= self.per_shard;
        match shard.entry(h) {
            Entry::Occupied(mut e) => {
                let (decision, new_tat) = gcra::check(Some(*e.get()), now, limit, cost);
                if let Some(t) = new_tat {
                    e.insert(t);
                }
                decision
            }
            Entry::Vacant(e) => {
                let (decision, new_tat) = gcra::check(None, now, limit, cost);
                if let Some(t) = new_tat {
                    if full {
                        evict(&mut shard, now, self.per_shard);
                        shard.insert(h, t);
                    } else {
                        e.insert(t);
                    }
                }
                decision
            }
        }
    }

    /// Drops every replenished key; returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.now_us();
        self.shards
            .iter()
            .map(|s| {
                let mut s = s.lock();
                let before = s.len();
                s.retain(|_, tat| *tat > now);
                if s.capacity() > 4 * s.len().max(256) {
                    s.shrink_to_fit();
                }
                before - s.len()
            })
            .sum()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this store will ever hold.
    pub fn max_keys(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Bytes allocated for entries (table capacity × slot size): what the
    /// memory bound is about.
    pub fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().capacity() * ENTRY_BYTES)
            .sum()
    }
}

fn evict(shard: &mut Shard, now: u64, per_shard: usize) {
    shard.retain(|_, tat| *tat > now);
    if shard.len() < per_shard {
        return;
    }
    let n = (per_shard / 8).max(1);
    let mut tats: Vec<u64> = shard.values().copied().collect();
    let (_, cutoff, _) = tats.select_nth_unstable(n - 1);
    let cutoff = *cutoff;
    let mut removed = 0;
    shard.retain(|_, tat| {
        if removed < n && *tat <= cutoff {
            removed += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    #[test]
    fn limits_per_key() {
        let clock = ManualClock::new();
        let b = LocalBackend::new(1000, clock.clone());
        let l = Limit::per_second(2);
        assert!(b.check("a", &l, 1).allowed);
        assert!(b.check("a", &l, 1).allowed);
        assert!(!b.check("a", &l, 1).allowed);
        assert!(b.check("b", &l, 1).allowed);
        clock.advance(Duration::from_millis(500));
        assert!(b.check("a", &l, 1).allowed);
        clock.advance(Duration::from_secs(5));
        assert_eq!(b.sweep(), 2);
        assert!(b.is_empty());
    }

    /// The per-thread memo answers exactly what hashing answers, for each
    /// principal, rule and store, however requests interleave.
    #[test]
    fn principal_hash_memo_is_the_hash() {
        let clock = ManualClock::new();
        let a = LocalBackend::new(1000, clock.clone());
        let b = LocalBackend::new(1000, clock.clone());
        let p1 = Arc::new(Principal::new("one", "t"));
        let p2 = Arc::new(Principal::new("two", "t"));
        let feed = |p: &Principal, rule: usize| {
            let key = format!("r{rule}:sub:{}/{}", p.tenant, p.subject);
            move |h: &mut DefaultHasher| std::hash::Hash::hash(key.as_str(), h)
        };
        let steps = [
            (&a, &p1, 0),
            (&a, &p1, 0),
            (&a, &p1, 1),
            (&a, &p2, 1),
            (&a, &p1, 0),
            (&b, &p1, 0),
            (&a, &p1, 0),
            (&a, &p1, MEMO_RULES + 1),
        ];
        for (store, p, rule) in steps {
            let expected = store.hash_fed(feed(p, rule));
            assert_eq!(store.hash_for_principal(p, rule, feed(p, rule)), expected);
        }
        // Two stores hash the same key differently (their own random keys).
        assert_ne!(a.hash_fed(feed(&p1, 0)), b.hash_fed(feed(&p1, 0)));
    }

    #[test]
    fn eviction_prefers_replenished_then_oldest() {
        let clock = ManualClock::new();
        let b = LocalBackend::new(64, clock.clone()); // one key per shard
        let l = Limit::per_second(1);
        for i in 0..10_000 {
            b.check(&format!("k{i}"), &l, 1);
        }
        assert!(b.len() <= 64);
    }
}
