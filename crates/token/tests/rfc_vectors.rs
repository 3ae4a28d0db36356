//! The signing examples of RFC 7515 Appendix A.3 (ES256) and RFC 8037 Appendix A.4 (Ed25519).

use tessera_token::{Algorithm, KeySet, Rejection, SigningKey, UnverifiedJwt, VerifyingKey, b64};

const RFC7515_A3_JWK: &str = r#"{"kty":"EC","crv":"P-256",
    "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    "d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#;
const RFC7515_A3_JWS: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

const RFC8037_A4_JWK: &str = r#"{"kty":"OKP","crv":"Ed25519",
    "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
    "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
const RFC8037_A4_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

fn split(jws: &str) -> (&str, Vec<u8>) {
    let (input, sig) = jws.rsplit_once('.').unwrap();
    (input, b64::decode(sig).unwrap())
}

#[test]
fn rfc7515_a3_es256_example_verifies() {
    let key = SigningKey::from_jwk(RFC7515_A3_JWK, None).unwrap();
    assert_eq!(key.alg(), Algorithm::ES256);
    let (input, sig) = split(RFC7515_A3_JWS);
    assert_eq!(sig.len(), 64, "JWS ES256 signatures are the fixed r||s form");
    key.verifying_key().verify(input.as_bytes(), &sig).unwrap();

    // ECDSA is randomized: our own signature over the same input differs but verifies with the RFC key.
    let ours = key.sign(input.as_bytes()).unwrap();
    assert_eq!(ours.len(), 64);
    assert_ne!(ours, sig);
    key.verifying_key().verify(input.as_bytes(), &ours).unwrap();

    // The full path parses the header but refuses the example: it has no kid.
    let unverified = UnverifiedJwt::parse(RFC7515_A3_JWS).unwrap();
    assert_eq!(unverified.header().alg, Algorithm::ES256);
    let keys: KeySet = [key.verifying_key().clone()].into_iter().collect();
    assert_eq!(unverified.verify(&keys).unwrap_err(), Rejection::MissingKid);
}

#[test]
fn rfc7515_a3_signature_with_one_bit_changed_is_refused() {
    let key = VerifyingKey::from_jwk(
        r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#,
        None,
    )
    .unwrap();
    let (input, mut sig) = split(RFC7515_A3_JWS);
    sig[63] ^= 1;
    assert_eq!(key.verify(input.as_bytes(), &sig), Err(Rejection::BadSignature));
}

#[test]
fn rfc8037_a4_ed25519_example_signs_byte_for_byte() {
    let key = SigningKey::from_jwk(RFC8037_A4_JWK, None).unwrap();
    assert_eq!(key.alg(), Algorithm::EdDSA);
    // RFC 8037 A.3: the thumbprint of this key, which is our kid.
    assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    let (input, expected) = split(RFC8037_A4_JWS);
    // Ed25519 is deterministic: we must produce exactly the RFC's signature.
    assert_eq!(key.sign(input.as_bytes()).unwrap(), expected);
    key.verifying_key().verify(input.as_bytes(), &expected).unwrap();
}
