//! A single-use id cache in memory: which ids (DPoP proof ids, client assertion ids) have been taken, until
//! whatever they guard is too old to be accepted anyway. The guard keeps its proof ids here; the SQLite store
//! keeps every single-use id here (one process per database file) and writes them behind to disk.
//!
//! Sharded so that concurrent requests seldom contend on one lock. Bounded: past its capacity it refuses new
//! ids (fail closed) rather than forget ones it has seen, which would let them be replayed. Entries are keyed
//! by the first 8 bytes of SHA-256 over the namespace and the id (each length-prefixed): two distinct ids
//! collide with odds near 2^-64 per pair, and a collision only refuses a genuine one.

use std::collections::HashMap;
use std::sync::Mutex;

const SHARDS: usize = 16;

/// What the cache says about a proof id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: now remembered.
    Fresh,
    /// Seen before, still within its window.
    Replayed,
    /// The cache is full of live entries.
    Full,
}

#[derive(Default)]
struct Shard {
    /// id → Unix second after which the entry may go.
    entries: HashMap<u64, u64>,
    /// The earliest expiry in `entries`, so a sweep runs only when something can be removed.
    next_expiry: u64,
}

/// The cache. `Debug` shows its size only.
pub struct ReplayCache {
    shards: [Mutex<Shard>; SHARDS],
    per_shard: usize,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache").field("capacity", &(self.per_shard * SHARDS)).finish()
    }
}

impl ReplayCache {
    /// A cache holding at most about `capacity` live ids.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// Takes `id` in `namespace` (a DPoP key's thumbprint, a store scope), remembered until `until`, at
    /// `now`: [`Seen::Fresh`] the first time, and again once `until` has passed.
    pub fn record(&self, namespace: &[u8], id: &[u8], until: u64, now: u64) -> Seen {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [namespace, id] {
            ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
            ctx.update(part);
        }
        let digest = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        let id = u64::from_le_bytes(id);
        let index = usize::try_from(id % SHARDS as u64).unwrap_or(0);
        let Ok(mut shard) = self.shards[index].lock() else { return Seen::Full };
        if shard.next_expiry <= now && !shard.entries.is_empty() {
            shard.entries.retain(|_, expiry| *expiry > now);
            shard.next_expiry = shard.entries.values().copied().min().unwrap_or(u64::MAX);
        }
        match shard.entries.get(&id) {
            Some(&expiry) if expiry > now => return Seen::Replayed,
            _ => {}
        }
        if shard.entries.len() >= self.per_shard {
            return Seen::Full;
        }
        shard.entries.insert(id, until);
        shard.next_expiry = shard.next_expiry.min(until);
        Seen::Fresh
    }

    /// Entries held, live or not yet swept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.entries.len()).unwrap_or(0)).sum()
    }

    /// Whether no entry is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_fresh_once_until_it_expires() {
        let cache = ReplayCache::new(100);
        assert_eq!(cache.record(b"k", b"a", 160, 100), Seen::Fresh);
        assert_eq!(cache.record(b"k", b"a", 160, 159), Seen::Replayed);
        assert_eq!(cache.record(b"other", b"a", 160, 100), Seen::Fresh, "ids are per key");
        assert_eq!(cache.record(b"k", b"a", 160, 160), Seen::Fresh, "an entry goes at its expiry second");
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgets() {
        let cache = ReplayCache::new(SHARDS);
        let mut full = 0;
        for i in 0..200 {
            if cache.record(b"k", i.to_string().as_bytes(), 1000, 100) == Seen::Full {
                full += 1;
            }
        }
        assert!(full > 0);
        assert!(cache.len() <= SHARDS);
        // Every id that was taken is still refused.
        let fresh_again = (0..200)
            .filter(|i| cache.record(b"k", i.to_string().as_bytes(), 1000, 101) == Seen::Fresh)
            .count();
        assert_eq!(fresh_again, 0);
        // Once they expire there is room again.
        assert_eq!(cache.record(b"k", b"late", 2000, 1000), Seen::Fresh);
    }
}
