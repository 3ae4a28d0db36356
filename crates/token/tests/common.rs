//! Helpers shared by the token tests: fixed time, fixed claims, and a raw token builder for attacks.

use std::sync::LazyLock;

use tessera_token::{AccessClaims, Algorithm, Audience, KeySet, SigningKey, UnixTime, Validation, b64};

pub const ISSUER: &str = "https://id.tessera.test";
pub const AUDIENCE: &str = "orders";
/// The fixed "now" of every test: 2023-11-14T22:13:20Z.
pub const NOW: u64 = 1_700_000_000;

pub fn now() -> UnixTime {
    UnixTime(NOW)
}

pub fn policy() -> Validation {
    Validation::access_token(ISSUER, AUDIENCE)
}

/// Valid claims issued a minute ago, expiring in four.
pub fn claims() -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        sub: "user-42".into(),
        aud: Audience::one(AUDIENCE),
        exp: NOW + 240,
        iat: NOW - 60,
        nbf: Some(NOW - 60),
        jti: "jti-0001".into(),
        client_id: "web-app".into(),
        scope: Some("orders:read orders:write".into()),
        sid: Some("sid-7".into()),
        roles: vec!["clerk".into()],
        auth_time: Some(NOW - 120),
        amr: vec!["pwd".into(), "otp".into()],
        acr: None,
        cnf: None,
        act: None,
        origin: Vec::new(),
        extra: serde_json::Map::new(),
    }
}

/// One key per algorithm, generated once per test run (RSA generation is slow).
pub static KEYS: LazyLock<Vec<SigningKey>> =
    LazyLock::new(|| Algorithm::ALL.iter().map(|&alg| SigningKey::generate(alg).unwrap()).collect());

pub fn key(alg: Algorithm) -> &'static SigningKey {
    KEYS.iter().find(|k| k.alg() == alg).unwrap()
}

/// The public key set holding every test key.
pub fn key_set() -> KeySet {
    KEYS.iter().map(|k| k.verifying_key().clone()).collect()
}

/// A compact token with exactly these header and claims bytes, signed by `key` over the signing input.
pub fn forge(key: &SigningKey, header: &str, claims: &str) -> String {
    let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(claims.as_bytes()));
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64::encode(&sig))
}

/// The header Tessera itself writes for `key`.
pub fn header_for(key: &SigningKey) -> String {
    format!(r#"{{"alg":"{}","kid":"{}","typ":"at+jwt"}}"#, key.alg(), key.kid())
}

/// The default claims as JSON.
pub fn claims_json() -> String {
    serde_json::to_string(&claims()).unwrap()
}
