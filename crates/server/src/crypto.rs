//! The key-encryption key (KEK), sealing of private signing keys, and the server's random source.
//!
//! The KEK is 32 bytes, from `TESSERA_MASTER_KEY` (base64url) or from `master.key` in the data directory,
//! created 0600 on first start. Two subkeys are derived from it with HKDF-SHA256, one per purpose: an
//! AES-256-GCM key that seals private signing keys (the kid is the additional data, so a sealed key cannot be
//! moved to another row), and the HMAC key that derives refresh-token successors. Every server node sharing a
//! database must share the KEK.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tessera_core::secret::{SECRET_BYTES, SuccessorKey};
use tessera_core::{OpaqueSecret, SecretKind};
use tessera_token::b64;
use zeroize::Zeroizing;

/// Name of the KEK file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Where the KEK came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekSource {
    /// `master_key` / `TESSERA_MASTER_KEY`.
    Configured,
    /// The existing file in the data directory.
    File,
    /// A new file, created just now.
    Created,
}

/// A failure to load, create or use the KEK. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekError(pub String);

impl fmt::Display for KekError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KekError {}

/// The key-encryption key's two working subkeys.
pub struct Kek {
    seal: LessSafeKey,
    successor: SuccessorKey,
    nonce: hmac::Key,
    pseudonym: hmac::Key,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(..)")
    }
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Kek {
    /// Derives the subkeys from 32 bytes of master key.
    ///
    /// # Errors
    /// Only if the crypto library refuses a 32-byte key (it does not).
    pub fn from_master(master: &[u8; 32]) -> Result<Self, KekError> {
        let failed = |_| KekError("cannot derive keys from the master key".into());
        let prk = Salt::new(HKDF_SHA256, b"tessera kek v1").extract(master);
        let mut seal_bytes = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"seal private signing keys"], Len(32))
            .and_then(|okm| okm.fill(&mut *seal_bytes))
            .map_err(failed)?;
        let mut successor_bytes = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"refresh successor"], Len(32))
            .and_then(|okm| okm.fill(&mut *successor_bytes))
            .map_err(failed)?;
        let mut nonce_bytes = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"dpop nonce"], Len(32)).and_then(|okm| okm.fill(&mut *nonce_bytes)).map_err(failed)?;
        let mut pseudonym_bytes = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"audit pseudonyms"], Len(32))
            .and_then(|okm| okm.fill(&mut *pseudonym_bytes))
            .map_err(failed)?;
        let seal = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*seal_bytes).map_err(failed)?);
        let nonce = hmac::Key::new(hmac::HMAC_SHA256, &*nonce_bytes);
        let pseudonym = hmac::Key::new(hmac::HMAC_SHA256, &*pseudonym_bytes);
        Ok(Kek { seal, successor: SuccessorKey::new(&successor_bytes), nonce, pseudonym })
    }

    /// The KEK from `configured` (base64url of 32 bytes) if non-empty, else from `data_dir/master.key`,
    /// creating that file (0600) if it does not exist.
    ///
    /// # Errors
    /// A malformed configured key, an unreadable or malformed file, or a file that cannot be created.
    pub fn load_or_create(configured: &str, data_dir: &Path) -> Result<(Kek, KekSource), KekError> {
        if !configured.is_empty() {
            let bytes = decode_master(configured.trim())
                .ok_or_else(|| KekError("master_key must be base64url of exactly 32 bytes".into()))?;
            return Ok((Kek::from_master(&bytes)?, KekSource::Configured));
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                let bytes = decode_master(text.trim()).ok_or_else(|| {
                    KekError(format!("{} must hold base64url of exactly 32 bytes", path.display()))
                })?;
                Ok((Kek::from_master(&bytes)?, KekSource::File))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = Zeroizing::new(random_bytes()?);
                write_private_file(&path, &Zeroizing::new(b64::encode(&*bytes)))?;
                Ok((Kek::from_master(&bytes)?, KekSource::Created))
            }
            Err(e) => Err(KekError(format!("cannot read {}: {}", path.display(), e.kind()))),
        }
    }

    /// Seals `plaintext` (a PKCS#8 document) for the row of `kid`: nonce ‖ ciphertext ‖ tag.
    ///
    /// # Errors
    /// If no random nonce can be drawn or sealing fails.
    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| KekError("no randomness for a nonce".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut body,
            )
            .map_err(|_| KekError("sealing failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`Kek::seal`] sealed for `kid`.
    ///
    /// # Errors
    /// If the data was sealed under another KEK, for another kid, or altered.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let wrong =
            || KekError(format!("key {kid} cannot be opened: it was sealed under another master key"));
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(wrong());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain_len =
            self.seal.open_in_place(nonce, Aad::from(kid.as_bytes()), &mut body).map_err(|_| wrong())?.len();
        body.truncate(plain_len);
        Ok(body)
    }

    /// The key that derives refresh-token successors.
    pub fn successor_key(&self) -> &SuccessorKey {
        &self.successor
    }

    /// A stand-in for text the audit log must be able to compare but never show (a login name typed for
    /// an unknown account may be a password typed into the wrong field): 12 hex digits of an HMAC under a
    /// key derived from the master key, so the log alone cannot be searched for guesses. The same on every
    /// node with the same master key.
    pub fn pseudonym(&self, text: &str) -> String {
        let tag = hmac::sign(&self.pseudonym, text.as_bytes());
        tag.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key DPoP nonces are derived with: every node with the same master key makes the same nonces.
    pub fn nonce_key(&self) -> &hmac::Key {
        &self.nonce
    }
}

fn decode_master(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let raw = Zeroizing::new(b64::decode(text).ok()?);
    let mut out = Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return None;
    }
    out.copy_from_slice(&raw);
    Some(out)
}

/// 32 random bytes from the operating system.
///
/// # Errors
/// If the system random source fails.
pub fn random_bytes() -> Result<[u8; SECRET_BYTES], KekError> {
    let mut out = [0u8; SECRET_BYTES];
    SystemRandom::new().fill(&mut out).map_err(|_| KekError("the system random source failed".into()))?;
    Ok(out)
}

/// A new opaque secret of `kind`.
///
/// # Errors
/// If the system random source fails.
pub fn new_secret(kind: SecretKind) -> Result<OpaqueSecret, KekError> {
    let bytes = Zeroizing::new(random_bytes()?);
    Ok(OpaqueSecret::from_random(kind, &bytes))
}

/// A random identifier: 16 bytes, base64url (22 characters). For ids, `jti`s and `sid`s, not for secrets.
///
/// # Errors
/// If the system random source fails.
pub fn random_id() -> Result<String, KekError> {
    let mut out = [0u8; 16];
    SystemRandom::new().fill(&mut out).map_err(|_| KekError("the system random source failed".into()))?;
    Ok(b64::encode(&out))
}

/// An identifier that sorts by time: the second `now` in 5 big-endian bytes, then 11 random bytes,
/// base64url (22 characters). For `jti`s and `sid`s, which every audit event indexes: ids made in the same
/// few seconds share a prefix, so their index entries land on a few pages instead of one random page each
/// (measured: a third of the cost of writing an event). 88 random bits keep ids unique, and the time they
/// reveal is the token's own `iat`. Not for secrets.
///
/// # Errors
/// If the system random source fails.
pub fn sortable_id(now: i64) -> Result<String, KekError> {
    let mut out = [0u8; 16];
    out[..5].copy_from_slice(&u64::try_from(now).unwrap_or(0).to_be_bytes()[3..]);
    SystemRandom::new()
        .fill(&mut out[5..])
        .map_err(|_| KekError("the system random source failed".into()))?;
    Ok(b64::encode(&out))
}

/// Writes a new file readable only by its owner; refuses to overwrite.
///
/// # Errors
/// If the file exists or cannot be written.
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), KekError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| KekError(format!("cannot create {}: {}", path.display(), e.kind())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KekError(format!("cannot write {}: {}", path.display(), e.kind())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_under_the_same_master_and_kid() {
        let kek = Kek::from_master(&[1; 32]).unwrap();
        let sealed = kek.seal("kid-1", b"pkcs8 bytes").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"pkcs8"));
        assert_eq!(&**kek.open("kid-1", &sealed).unwrap(), b"pkcs8 bytes");
        assert!(kek.open("kid-2", &sealed).is_err(), "moved to another row");
        assert!(Kek::from_master(&[2; 32]).unwrap().open("kid-1", &sealed).is_err(), "other master");
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(kek.open("kid-1", &flipped).is_err(), "altered");
        assert!(kek.open("kid-1", &sealed[..10]).is_err(), "truncated");
    }

    #[test]
    fn master_key_file_is_created_private_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, source) = Kek::load_or_create("", dir.path()).unwrap();
        assert_eq!(source, KekSource::Created);
        let path = dir.path().join(MASTER_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (b, source) = Kek::load_or_create("", dir.path()).unwrap();
        assert_eq!(source, KekSource::File);
        let sealed = a.seal("k", b"x").unwrap();
        assert_eq!(&**b.open("k", &sealed).unwrap(), b"x");
    }

    #[test]
    fn a_configured_master_key_must_be_32_bytes_and_is_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let e = Kek::load_or_create("c2hvcnQ", dir.path()).unwrap_err();
        assert!(!e.0.contains("c2hvcnQ"));
        let good = b64::encode(&[7; 32]);
        let (_, source) = Kek::load_or_create(&good, dir.path()).unwrap();
        assert_eq!(source, KekSource::Configured);
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
    }
}
