//! Import arbitrary bytes as a public JWK, a private JWK, a JWKS and a PKCS#8 PEM key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_token::{Algorithm, KeySet, SigningKey, VerifyingKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = VerifyingKey::from_jwk(text, None);
    let _ = SigningKey::from_jwk(text, None);
    let _ = KeySet::from_jwks(text);
    let _ = SigningKey::from_pkcs8_pem(text, Algorithm::ES256);
});
