//! A cache of clients, resources and users in front of the store, so that the hot paths (client
//! authentication, client_credentials, refresh) do not read them from the database on every request.
//!
//! Staleness is bounded: every node polls the store's change counter every [`POLL`] and empties the cache
//! when it moved, and every change made by the management commands moves it in the same transaction. A
//! client disabled, a secret rotated or a user disabled therefore stops working everywhere within that
//! bound (the refresh families and revocations that such changes also write are never cached).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tessera_store::{Client, Resource, Store, StoreError, User};

/// How often the change counter is read.
pub const POLL: Duration = Duration::from_millis(250);

/// Entries per table before it is emptied (a flood of unknown ids cannot grow it without bound).
const MAX_ENTRIES: usize = 10_000;

/// One cached table: found records and known absences.
struct Table<V> {
    map: RwLock<HashMap<String, Option<V>>>,
}

impl<V: Clone> Table<V> {
    fn new() -> Self {
        Table { map: RwLock::new(HashMap::new()) }
    }

    fn get(&self, key: &str) -> Option<Option<V>> {
        self.map.read().ok()?.get(key).cloned()
    }

    /// Stores what was loaded under `generation`, unless the cache was emptied since.
    fn put(&self, key: &str, value: Option<V>, generation: u64, current: &AtomicU64) {
        if let Ok(mut map) = self.map.write() {
            if current.load(Ordering::Acquire) != generation {
                return;
            }
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(key.to_owned(), value);
        }
    }

    fn clear(&self) {
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
    }
}

/// The cache.
pub struct Directory {
    store: Arc<dyn Store>,
    generation: AtomicU64,
    seen: AtomicI64,
    clients: Table<Client>,
    resources: Table<Resource>,
    users: Table<User>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("generation", &self.generation.load(Ordering::Relaxed)).finish()
    }
}

macro_rules! cached {
    ($name:ident, $table:ident, $ty:ty, $load:ident) => {
        /// The record, from the cache or the store.
        ///
        /// # Errors
        /// A store failure (nothing is cached then).
        pub async fn $name(&self, key: &str) -> Result<Option<$ty>, StoreError> {
            if let Some(hit) = self.$table.get(key) {
                return Ok(hit);
            }
            let generation = self.generation.load(Ordering::Acquire);
            let value = self.store.$load(key).await?;
            self.$table.put(key, value.clone(), generation, &self.generation);
            Ok(value)
        }
    };
}

impl Directory {
    /// An empty cache in front of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Directory {
            store,
            generation: AtomicU64::new(0),
            seen: AtomicI64::new(i64::MIN),
            clients: Table::new(),
            resources: Table::new(),
            users: Table::new(),
        }
    }

    cached!(client, clients, Client, client);
    cached!(resource, resources, Resource, resource);
    cached!(user, users, User, user_by_id);

    /// Empties the cache now: this node just changed a record (the other nodes see the counter move).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.clients.clear();
        self.resources.clear();
        self.users.clear();
    }

    /// Reads the change counter and empties the cache if it moved. Called every [`POLL`].
    ///
    /// # Errors
    /// A store failure; the cache is emptied then too, so that a database outage cannot prolong staleness.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let seq = self.store.change_seq().await;
        let changed = match &seq {
            Ok(seq) => self.seen.swap(*seq, Ordering::AcqRel) != *seq,
            Err(_) => true,
        };
        if changed {
            self.invalidate();
        }
        seq.map(|_| ())
    }
}
