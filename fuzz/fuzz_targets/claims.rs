//! Arbitrary bytes as the claims of a correctly signed token, so that every input reaches the claims
//! parser and `validate` (a mutated token would almost never get past the signature check).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tessera_token::{KeySet, SigningKey, UnixTime, UnverifiedJwt, Validation, b64};

/// RFC 8037 A.1: a published test key, so that runs are reproducible.
const JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

static KEY: LazyLock<Option<(SigningKey, KeySet, String)>> = LazyLock::new(|| {
    let key = SigningKey::from_jwk(JWK, None).ok()?;
    let keys: KeySet = [key.verifying_key().clone()].into_iter().collect();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt"}}"#, key.kid());
    Some((key, keys, b64::encode(header.as_bytes())))
});

fuzz_target!(|payload: &[u8]| {
    let Some((key, keys, header)) = KEY.as_ref() else { return };
    let input = format!("{header}.{}", b64::encode(payload));
    let Ok(signature) = key.sign(input.as_bytes()) else { return };
    let token = format!("{input}.{}", b64::encode(&signature));
    let policy = Validation::access_token("https://issuer.example", "orders");
    // No size limit here, so that large payloads reach the claims parser too.
    if let Ok(verified) = UnverifiedJwt::parse_with_limit(&token, usize::MAX).and_then(|t| t.verify(keys)) {
        let _ = verified.validate(&policy, UnixTime(1_700_000_000));
    }
});
