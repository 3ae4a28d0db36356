//! The checked keys of DPoP proofs, by the proof's header segment, shared by the server and the guard.
//!
//! A client signs every proof with one key, so its proofs share one header: the header's JSON, the key's
//! import and its thumbprint are paid once per key, not once per request, and each request still pays the
//! signature check and its claims. Only keys of proofs that verified are kept, so filling the cache takes a
//! private key per entry; the least recently used go first.

use std::sync::Arc;

use tessera_token::UnixTime;
use tessera_token::dpop::{
    DpopProof, ProofKey, ProofPolicy, ProofRejection, ProofRequest, proof_header, verify_proof_with_key,
};

/// How many client keys are kept parsed.
pub const PROOF_KEY_CAPACITY: usize = 4096;

/// The cache. `Debug` shows its size only.
pub struct ProofKeys(quick_cache::sync::Cache<Box<str>, Arc<ProofKey>>);

impl std::fmt::Debug for ProofKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofKeys").field("len", &self.0.len()).finish()
    }
}

impl Default for ProofKeys {
    fn default() -> Self {
        Self(quick_cache::sync::Cache::new(PROOF_KEY_CAPACITY))
    }
}

impl ProofKeys {
    /// Checks `proof` against `request` at `now`, as [`tessera_token::dpop::verify_proof`] does, with its
    /// header's key taken from the cache when a proof with that header has verified before.
    ///
    /// # Errors
    /// The [`ProofRejection`] naming the first problem found.
    pub fn verify(
        &self,
        proof: &str,
        request: &ProofRequest<'_>,
        policy: &ProofPolicy,
        now: UnixTime,
    ) -> Result<DpopProof, ProofRejection> {
        let header = proof_header(proof)?;
        if let Some(key) = self.0.get(header) {
            return verify_proof_with_key(proof, &key, request, policy, now);
        }
        let key = ProofKey::parse(header)?;
        let checked = verify_proof_with_key(proof, &key, request, policy, now)?;
        self.0.insert(header.into(), Arc::new(key));
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use tessera_token::dpop::NewProof;
    use tessera_token::{Algorithm, SigningKey};

    use super::*;

    const URL: &str = "https://auth.example/token";
    const NOW: u64 = 1_800_000_000;

    fn proof(key: &SigningKey, jti: &str) -> String {
        let new = NewProof { method: "POST", url: URL, jti, iat: NOW, access_token: None, nonce: None };
        key.sign_dpop_proof(&new).unwrap()
    }

    #[test]
    fn a_cached_key_still_needs_a_good_signature_over_each_proof() {
        let keys = ProofKeys::default();
        let request = ProofRequest { method: "POST", url: URL, access_token: None, nonces: &[] };
        let policy = ProofPolicy::default();
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let first = proof(&key, "one");
        assert_eq!(keys.verify(&first, &request, &policy, UnixTime(NOW)).unwrap().jti, "one");
        assert_eq!(keys.0.len(), 1, "the key is kept once a proof by it verified");

        // The same header with another proof's claims and this one's signature.
        let second = proof(&key, "two");
        let mut parts = second.split('.');
        let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
        let forged = format!("{header}.{claims}.{}", first.rsplit('.').next().unwrap());
        assert!(keys.verify(&forged, &request, &policy, UnixTime(NOW)).is_err());
        assert_eq!(keys.verify(&second, &request, &policy, UnixTime(NOW)).unwrap().jti, "two");

        // A proof that fails is not a reason to keep its key.
        let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let late = proof(&stranger, "three");
        let too_late = UnixTime(NOW + 3600);
        assert!(keys.verify(&late, &request, &policy, too_late).is_err());
        assert_eq!(keys.0.len(), 1);
    }
}
