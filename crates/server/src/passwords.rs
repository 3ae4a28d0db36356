//! Password hashing with Argon2id at the OWASP parameters (19 MiB, 2 passes, 1 lane).
//!
//! Hashing costs tens of milliseconds of CPU, so it runs on the blocking pool under a semaphore: a flood of
//! logins waits its turn instead of starving the async workers that serve refreshes. A login for an unknown
//! user verifies against a dummy hash made at start with the same parameters, so it takes as long as a
//! wrong password and usernames cannot be discovered by timing.

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::crypto::random_bytes;

/// OWASP: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password (blocking: call from a blocking thread or the CLI).
///
/// # Errors
/// If no salt can be drawn or hashing fails; the message never contains the password.
pub fn hash_blocking(password: &str) -> Result<String, String> {
    let salt_bytes = random_bytes().map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt_bytes[..16]).map_err(|_| "cannot encode a salt".to_owned())?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| "password hashing failed".to_owned())
}

fn verify_blocking(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| argon2().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// The server's bounded password hasher.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    dummy: Arc<str>,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords").field("available", &self.permits.available_permits()).finish()
    }
}

impl Passwords {
    /// A hasher running at most `concurrency` hashes at once.
    ///
    /// # Errors
    /// If the dummy hash cannot be made.
    pub fn new(concurrency: usize) -> Result<Self, String> {
        let dummy_password =
            Zeroizing::new(tessera_token::b64::encode(&random_bytes().map_err(|e| e.to_string())?));
        let dummy = hash_blocking(&dummy_password)?;
        Ok(Passwords { permits: Arc::new(Semaphore::new(concurrency)), dummy: dummy.into() })
    }

    /// Hashes a new password.
    ///
    /// # Errors
    /// If hashing fails or the server is shutting down.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|_| "shutting down".to_owned())?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(|_| "password hashing failed".to_owned())?
    }

    /// Checks `password` against `phc`; with `None` (no such user) checks it against the dummy hash and
    /// answers `false`, taking the same time.
    pub async fn verify(&self, phc: Option<&str>, password: Zeroizing<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else { return false };
        let known = phc.is_some();
        let phc: String = phc.map_or_else(|| self.dummy.to_string(), str::to_owned);
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&phc, &password)).await.unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2id_hashes_verify_and_unknown_users_never_pass() {
        let p = Passwords::new(1).unwrap();
        let phc = p.hash(Zeroizing::new("correct horse".into())).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(p.verify(Some(&phc), Zeroizing::new("correct horse".into())).await);
        assert!(!p.verify(Some(&phc), Zeroizing::new("wrong".into())).await);
        assert!(!p.verify(None, Zeroizing::new("correct horse".into())).await);
        assert!(!p.verify(Some("not a hash"), Zeroizing::new("x".into())).await);
    }
}
