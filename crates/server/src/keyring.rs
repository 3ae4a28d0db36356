//! Signing keys at rest and in use: creation, sealing under the KEK, import, rotation, and the in-memory
//! [`Keyring`] (the one key that signs, the set that is published) that the server reloads when the store's
//! keys change.
//!
//! Lifecycle (DESIGN §3): `next` (published, not signing) → `current` (signing) → `retired` (published until
//! its last token has expired) → deleted. A scheduled rotation creates a `next` key; the server promotes it
//! once it has been published for `key_publish_delay`, so every guard's cached JWKS already holds it when the
//! first token it signed arrives. An emergency rotation makes the new key current at once and revokes the old
//! one everywhere.

use std::fmt;

use tessera_core::{KeyState, RevocationKind};
use tessera_store::{KeyRecord, NewRevocation, REVOCATION_HORIZON_SECS, Store, StoreError, Time};
use tessera_token::{Algorithm, KeySet, SigningKey, VerifyingKey};

use crate::crypto::Kek;

/// A key-management failure: one line, naming a kid at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringError {
    /// The store failed.
    Store(StoreError),
    /// The keys themselves are unusable (no current key, a key that cannot be opened).
    Keys(String),
}

impl fmt::Display for KeyringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyringError::Store(e) => e.fmt(f),
            KeyringError::Keys(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for KeyringError {}

impl From<StoreError> for KeyringError {
    fn from(e: StoreError) -> Self {
        KeyringError::Store(e)
    }
}

fn keys_error(e: impl fmt::Display) -> KeyringError {
    KeyringError::Keys(e.to_string())
}

/// The keys a server uses right now.
pub struct Keyring {
    signer: SigningKey,
    published: KeySet,
    jwks: String,
    fingerprint: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("signer", &self.signer.kid())
            .field("published", &self.published.len())
            .finish()
    }
}

impl Keyring {
    /// Loads the current key (opened with the KEK) and every published key.
    ///
    /// # Errors
    /// No current key, a key sealed under another master key, or a store failure.
    pub async fn load(store: &dyn Store, kek: &Kek) -> Result<Keyring, KeyringError> {
        let records = store.list_keys().await?;
        let current = records
            .iter()
            .find(|k| k.state == KeyState::Current)
            .ok_or_else(|| KeyringError::Keys("there is no current signing key".into()))?;
        let signer = open_signing_key(kek, current)?;
        let mut published = KeySet::new();
        for record in records.iter().filter(|k| is_published(k.state)) {
            let alg = record.alg.parse::<Algorithm>().map_err(keys_error)?;
            let key = VerifyingKey::from_jwk(&record.public_jwk, Some(alg)).map_err(keys_error)?;
            published.try_insert(key).map_err(keys_error)?;
        }
        Ok(Keyring {
            signer,
            jwks: published.to_jwks().to_string(),
            published,
            fingerprint: fingerprint(&records),
        })
    }

    /// The key that signs new tokens.
    pub fn signer(&self) -> &SigningKey {
        &self.signer
    }

    /// Every published key (next, current, retired).
    pub fn published(&self) -> &KeySet {
        &self.published
    }

    /// The JWKS document, serialised once.
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// Whether the store's keys still match what this keyring was loaded from.
    pub fn is_current_for(&self, records: &[KeyRecord]) -> bool {
        self.fingerprint == fingerprint(records)
    }
}

fn is_published(state: KeyState) -> bool {
    matches!(state, KeyState::Next | KeyState::Current | KeyState::Retired)
}

fn fingerprint(records: &[KeyRecord]) -> String {
    records.iter().map(|k| format!("{}:{};", k.kid, k.state)).collect()
}

fn open_signing_key(kek: &Kek, record: &KeyRecord) -> Result<SigningKey, KeyringError> {
    let alg = record.alg.parse::<Algorithm>().map_err(keys_error)?;
    let der = kek.open(&record.kid, &record.private_sealed).map_err(keys_error)?;
    SigningKey::from_pkcs8_der(&der, alg).map_err(keys_error)
}

/// Seals `key` and stores it in `state`.
///
/// # Errors
/// A key that cannot be exported or sealed, or a store failure (a duplicate kid is a conflict).
pub async fn store_key(
    store: &dyn Store,
    kek: &Kek,
    key: &SigningKey,
    state: KeyState,
    now: Time,
) -> Result<KeyRecord, KeyringError> {
    let record = sealed_record(kek, key, state, now)?;
    store.insert_key(&record).await?;
    Ok(record)
}

/// `key` as a stored record in `state`, its private part sealed under the KEK.
fn sealed_record(kek: &Kek, key: &SigningKey, state: KeyState, now: Time) -> Result<KeyRecord, KeyringError> {
    let der = key.to_pkcs8_der().map_err(keys_error)?;
    Ok(KeyRecord {
        kid: key.kid().to_owned(),
        alg: key.alg().to_string(),
        state,
        public_jwk: key.verifying_key().to_jwk().to_string(),
        private_sealed: kek.seal(key.kid(), &der).map_err(keys_error)?,
        created_at: now,
        activated_at: (state == KeyState::Current).then_some(now),
        retired_at: None,
    })
}

/// On first start: creates a current key of `alg` if there is none. Returns its kid if it created one.
///
/// # Errors
/// Key generation or store failure.
pub async fn ensure_signing_key(
    store: &dyn Store,
    kek: &Kek,
    alg: Algorithm,
    now: Time,
) -> Result<Option<String>, KeyringError> {
    if store.list_keys().await?.iter().any(|k| k.state == KeyState::Current) {
        return Ok(None);
    }
    let key = SigningKey::generate(alg).map_err(keys_error)?;
    let record = store_key(store, kek, &key, KeyState::Current, now).await?;
    Ok(Some(record.kid))
}

/// How a rotation should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationMode {
    /// Publish a `next` key; the server switches to it after `key_publish_delay`.
    Scheduled,
    /// Publish and switch at once; the old key is retired (its tokens stay valid).
    Immediate,
    /// Switch at once and revoke the old key at every guard: for a compromised key.
    Emergency,
}

/// Rotates to a new key of `alg`. Returns the new key's record.
///
/// # Errors
/// Key generation or store failure.
pub async fn rotate(
    store: &dyn Store,
    kek: &Kek,
    alg: Algorithm,
    mode: RotationMode,
    now: Time,
) -> Result<KeyRecord, KeyringError> {
    let key = SigningKey::generate(alg).map_err(keys_error)?;
    install(store, kek, &key, mode, now).await
}

/// Imports an existing private key and makes it current at once (the old current key is retired).
///
/// # Errors
/// A key that is already stored, or a store failure.
pub async fn import(
    store: &dyn Store,
    kek: &Kek,
    key: &SigningKey,
    now: Time,
) -> Result<KeyRecord, KeyringError> {
    install(store, kek, key, RotationMode::Immediate, now).await
}

async fn install(
    store: &dyn Store,
    kek: &Kek,
    key: &SigningKey,
    mode: RotationMode,
    now: Time,
) -> Result<KeyRecord, KeyringError> {
    let old: Vec<String> = store
        .list_keys()
        .await?
        .into_iter()
        .filter(|k| k.state == KeyState::Current)
        .map(|k| k.kid)
        .collect();
    let mut record = store_key(store, kek, key, KeyState::Next, now).await.map_err(|e| match e {
        KeyringError::Store(StoreError::Conflict(_)) => {
            KeyringError::Keys(format!("key {} is already stored", key.kid()))
        }
        other => other,
    })?;
    if mode == RotationMode::Scheduled {
        return Ok(record);
    }
    store.activate_key(&record.kid, now).await?;
    record.state = KeyState::Current;
    record.activated_at = Some(now);
    if mode == RotationMode::Emergency {
        for kid in old {
            revoke_key(store, &kid, "emergency_rotation", now).await?;
        }
    }
    Ok(record)
}

/// Withdraws a key: no longer published, and revoked at every guard (every token it signed stops working).
///
/// # Errors
/// A store failure. `Ok(false)` if there is no such key.
pub async fn revoke_key(store: &dyn Store, kid: &str, reason: &str, now: Time) -> Result<bool, KeyringError> {
    if !store.set_key_state(kid, KeyState::Revoked, now).await? {
        return Ok(false);
    }
    let entry = NewRevocation {
        kind: RevocationKind::Key,
        subject: kid.to_owned(),
        not_before: None,
        expires_at: now + REVOCATION_HORIZON_SECS,
        reason: reason.to_owned(),
    };
    store.revoke(&entry, now).await?;
    Ok(true)
}

/// Publishes a new `next` key of `alg` if the current key has signed for `every` seconds and no `next` key
/// is waiting. Returns the new key's record if this call published it (`None` if nothing was due, or another
/// node published one first).
///
/// # Errors
/// Key generation or store failure.
pub async fn rotate_if_due(
    store: &dyn Store,
    kek: &Kek,
    alg: Algorithm,
    every: i64,
    now: Time,
) -> Result<Option<KeyRecord>, KeyringError> {
    let keys = store.list_keys().await?;
    let due = keys
        .iter()
        .find(|k| k.state == KeyState::Current)
        .is_some_and(|k| k.activated_at.unwrap_or(k.created_at) + every <= now);
    if !due || keys.iter().any(|k| k.state == KeyState::Next) {
        return Ok(None);
    }
    let key = SigningKey::generate(alg).map_err(keys_error)?;
    let record = sealed_record(kek, &key, KeyState::Next, now)?;
    Ok(store.schedule_key(&record).await?.then_some(record))
}

/// The server's periodic key housekeeping: promotes a `next` key published for at least `publish_delay`,
/// and deletes retired and revoked keys once no token they signed can still be valid.
///
/// # Errors
/// A store failure.
pub async fn housekeeping(store: &dyn Store, publish_delay: i64, now: Time) -> Result<(), KeyringError> {
    let keys = store.list_keys().await?;
    if let Some(next) =
        keys.iter().filter(|k| k.state == KeyState::Next).find(|k| k.created_at + publish_delay <= now)
    {
        store.activate_key(&next.kid, now).await?;
    }
    for key in keys.iter().filter(|k| matches!(k.state, KeyState::Retired | KeyState::Revoked)) {
        if key.retired_at.is_some_and(|at| at + REVOCATION_HORIZON_SECS <= now) {
            store.delete_key(&key.kid).await?;
        }
    }
    Ok(())
}
