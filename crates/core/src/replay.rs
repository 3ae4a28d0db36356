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
    /// This namespace (one DPoP key) holds its whole share of the cache: its new ids are refused until some
    /// expire, and other namespaces are not affected.
    NamespaceFull,
}

#[derive(Default)]
struct Shard {
    /// id → (Unix second after which the entry may go, its namespace's hash).
    entries: HashMap<u64, (u64, u64)>,
    /// The earliest expiry in `entries`, so a sweep runs only when something can be removed.
    next_expiry: u64,
}

/// Live entries per namespace hash, in shards chosen by that hash.
type NamespaceCounts = [Mutex<HashMap<u64, usize>>; SHARDS];

/// The cache. `Debug` shows its size only.
pub struct ReplayCache {
    shards: [Mutex<Shard>; SHARDS],
    per_shard: usize,
    /// Live entries per namespace hash, sharded by that hash; `None` when namespaces are not capped.
    per_namespace: Option<(usize, NamespaceCounts)>,
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
            per_namespace: None,
        }
    }

    /// A cache holding at most about `capacity` live ids, of which one namespace holds at most
    /// `per_namespace`: one client key cannot fill the cache and make it refuse everyone.
    #[must_use]
    pub fn with_namespace_cap(capacity: usize, per_namespace: usize) -> Self {
        Self {
            per_namespace: Some((per_namespace.max(1), std::array::from_fn(|_| Mutex::new(HashMap::new())))),
            ..Self::new(capacity)
        }
    }

    fn namespace_counts(&self, ns: u64) -> Option<(usize, &Mutex<HashMap<u64, usize>>)> {
        let (cap, shards) = self.per_namespace.as_ref()?;
        Some((*cap, &shards[usize::try_from(ns % SHARDS as u64).unwrap_or(0)]))
    }

    /// Lowers the namespace counts for entries swept out.
    fn release(&self, swept: impl Iterator<Item = u64>) {
        for ns in swept {
            if let Some((_, counts)) = self.namespace_counts(ns)
                && let Ok(mut counts) = counts.lock()
                && let Some(n) = counts.get_mut(&ns)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&ns);
                }
            }
        }
    }

    /// Takes `id` in `namespace` (a DPoP key's thumbprint, a store scope), remembered until `until`, at
    /// `now`: [`Seen::Fresh`] the first time, and again once `until` has passed.
    pub fn record(&self, namespace: &[u8], id: &[u8], until: u64, now: u64) -> Seen {
        // The namespace's own hash is needed only to count its entries.
        let ns = match self.per_namespace {
            Some(_) => prefix(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, namespace)),
            None => 0,
        };
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [namespace, id] {
            ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
            ctx.update(part);
        }
        let id = prefix(&ctx.finish());
        let index = usize::try_from(id % SHARDS as u64).unwrap_or(0);
        let Ok(mut shard) = self.shards[index].lock() else { return Seen::Full };
        if shard.next_expiry <= now && !shard.entries.is_empty() {
            let mut swept = Vec::new();
            shard.entries.retain(|_, (expiry, ns)| {
                let live = *expiry > now;
                if !live {
                    swept.push(*ns);
                }
                live
            });
            shard.next_expiry = shard.entries.values().map(|(expiry, _)| *expiry).min().unwrap_or(u64::MAX);
            self.release(swept.into_iter());
        }
        let replaced = match shard.entries.get(&id) {
            Some(&(expiry, _)) if expiry > now => return Seen::Replayed,
            Some(_) => true,
            None => false,
        };
        if !replaced && shard.entries.len() >= self.per_shard {
            return Seen::Full;
        }
        // An expired entry being replaced keeps its place in its namespace's count.
        if !replaced && let Some((cap, counts)) = self.namespace_counts(ns) {
            let Ok(mut counts) = counts.lock() else { return Seen::Full };
            let n = counts.entry(ns).or_insert(0);
            if *n >= cap {
                return Seen::NamespaceFull;
            }
            *n += 1;
        }
        shard.entries.insert(id, (until, ns));
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

/// The first 8 bytes of a digest, as a map key.
fn prefix(digest: &aws_lc_rs::digest::Digest) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(out)
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

    #[test]
    fn one_namespace_cannot_fill_the_cache_for_the_others() {
        let cache = ReplayCache::with_namespace_cap(10_000, 5);
        let taken =
            (0..20).filter(|i| cache.record(b"greedy", i.to_string().as_bytes(), 160, 100) == Seen::Fresh);
        assert_eq!(taken.count(), 5);
        assert_eq!(cache.record(b"greedy", b"more", 160, 100), Seen::NamespaceFull);
        assert_eq!(cache.record(b"greedy", b"0", 160, 100), Seen::Replayed, "a taken id is still a replay");
        assert_eq!(cache.record(b"polite", b"0", 160, 100), Seen::Fresh, "other keys are unaffected");
        // Once the greedy key's ids expire and are swept, it has room again.
        for i in 0..64 {
            cache.record(b"sweeper", i.to_string().as_bytes(), 1000, 200);
        }
        assert_eq!(cache.record(b"greedy", b"later", 260, 200), Seen::Fresh);
    }
}
