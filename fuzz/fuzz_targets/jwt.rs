//! Parse, verify and validate arbitrary bytes as an access token, against one fixed key per algorithm.
//! Any panic, abort or sanitizer report is a bug; every input must end in `Ok` or a `Rejection`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tessera_token::{KeySet, UnixTime, UnverifiedJwt, Validation, VerifyingKey};

/// Public keys with fixed values, so that runs are reproducible (RFC 8037 A.2 and RFC 7515 A.3).
const JWKS: [&str; 2] = [
    r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
    r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#,
];

static KEYS: LazyLock<KeySet> =
    LazyLock::new(|| JWKS.iter().filter_map(|jwk| VerifyingKey::from_jwk(jwk, None).ok()).collect());

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let policy = Validation::access_token("https://issuer.example", "orders");
    if let Ok(unverified) = UnverifiedJwt::parse(token) {
        let _ = unverified.header();
        if let Ok(verified) = unverified.verify(&KEYS) {
            let _ = verified.validate(&policy, UnixTime(1_700_000_000));
        }
    }
});
