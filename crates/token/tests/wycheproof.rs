//! Every Wycheproof vector in `../shared/testdata/wycheproof`, through our own key import and verification.
//!
//! Valid vectors must verify and invalid ones must be refused. "Acceptable" vectors are refused: a strict
//! JWT verifier has no reason to accept a signature the vector authors call questionable (the one such vector,
//! RS256 tcId 8, omits the NULL parameter in the DigestInfo). The HMAC file proves that HS256 cannot be used
//! at all: every one of its vectors, valid or not, is refused before any key is looked up.

use std::path::PathBuf;

use serde_json::Value;
use tessera_token::{Algorithm, Rejection, UnverifiedJwt, VerifyingKey, b64};

fn dir() -> PathBuf {
    std::env::var_os("TESSERA_WYCHEPROOF_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/wycheproof"),
        PathBuf::from,
    )
}

fn load(file: &str) -> Value {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("Wycheproof vectors are required: {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Left-pads a big-endian coordinate to 32 bytes.
fn coord(hex_value: &str) -> String {
    let mut bytes = hex(hex_value);
    while bytes.len() > 32 && bytes[0] == 0 {
        bytes.remove(0);
    }
    let mut padded = vec![0u8; 32usize.saturating_sub(bytes.len())];
    padded.extend(bytes);
    b64::encode(&padded)
}

/// The group's public key as a JWK without the vectors' placeholder `kid` ("none").
fn group_jwk(group: &Value, field: &str) -> String {
    let mut jwk = match group.get(field) {
        Some(jwk) => jwk.clone(),
        None => {
            let pk = &group["publicKey"];
            serde_json::json!({
                "kty": "EC", "crv": "P-256",
                "x": coord(pk["wx"].as_str().unwrap()),
                "y": coord(pk["wy"].as_str().unwrap()),
            })
        }
    };
    jwk.as_object_mut().unwrap().remove("kid");
    jwk.to_string()
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    valid_accepted: usize,
    invalid_refused: usize,
    acceptable_refused: usize,
    refused_with_key: usize,
}

fn run(file: &str, alg: Algorithm, jwk_field: &str) -> Tally {
    let doc = load(file);
    let mut tally = Tally::default();
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let key = VerifyingKey::from_jwk(&group_jwk(group, jwk_field), Some(alg));
        for test in group["tests"].as_array().unwrap() {
            total += 1;
            let id = &test["tcId"];
            let result = test["result"].as_str().unwrap();
            let accepted = match &key {
                Ok(key) => {
                    let outcome =
                        key.verify(&hex(test["msg"].as_str().unwrap()), &hex(test["sig"].as_str().unwrap()));
                    if let Err(e) = outcome {
                        assert_eq!(e, Rejection::BadSignature, "{file} tcId {id}");
                    }
                    outcome.is_ok()
                }
                Err(_) => {
                    tally.refused_with_key += 1;
                    false
                }
            };
            match result {
                "valid" => {
                    assert!(accepted, "{file} tcId {id} ({}) must verify", test["comment"]);
                    tally.valid_accepted += 1;
                }
                "invalid" => {
                    assert!(!accepted, "{file} tcId {id} ({}) must be refused", test["comment"]);
                    tally.invalid_refused += 1;
                }
                "acceptable" => {
                    assert!(
                        !accepted,
                        "{file} tcId {id} ({}): we refuse acceptable vectors",
                        test["comment"]
                    );
                    tally.acceptable_refused += 1;
                }
                other => panic!("{file} tcId {id}: unknown result {other}"),
            }
        }
    }
    assert_eq!(total, doc["numberOfTests"].as_u64().unwrap() as usize, "{file}: every vector ran");
    tally
}

#[test]
fn wycheproof_ed25519_vectors() {
    let t = run("ed25519_test.json", Algorithm::EdDSA, "publicKeyJwk");
    assert_eq!((t.valid_accepted, t.invalid_refused, t.acceptable_refused), (88, 63, 0));
    assert_eq!(t.refused_with_key, 0, "every group's key imports");
}

#[test]
fn wycheproof_es256_p1363_vectors_including_psychic_signatures() {
    let t = run("ecdsa_secp256r1_sha256_p1363_test.json", Algorithm::ES256, "publicKeyJwk");
    assert_eq!((t.valid_accepted, t.invalid_refused, t.acceptable_refused), (173, 89, 0));
    assert_eq!(t.refused_with_key, 0, "every group's key imports");
}

#[test]
fn wycheproof_rs256_vectors() {
    let t = run("rsa_signature_2048_sha256_test.json", Algorithm::RS256, "keyJwk");
    assert_eq!((t.valid_accepted, t.invalid_refused, t.acceptable_refused), (9, 249, 1));
    assert_eq!(t.refused_with_key, 0, "every group's key imports");
}

#[test]
fn wycheproof_ps256_vectors() {
    let t = run("rsa_pss_2048_sha256_mgf1_32_test.json", Algorithm::PS256, "publicKeyJwk");
    assert_eq!((t.valid_accepted, t.invalid_refused, t.acceptable_refused), (63, 45, 0));
    assert_eq!(t.refused_with_key, 0, "every group's key imports");
}

#[test]
fn wycheproof_hmac_vectors_cannot_be_used_as_hs256_tokens() {
    let doc = load("hmac_sha256_test.json");
    let header = b64::encode(br#"{"alg":"HS256","kid":"hmac","typ":"at+jwt"}"#);
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        for test in group["tests"].as_array().unwrap() {
            total += 1;
            let token = format!(
                "{header}.{}.{}",
                b64::encode(&hex(test["msg"].as_str().unwrap())),
                b64::encode(&hex(test["tag"].as_str().unwrap()))
            );
            let err = UnverifiedJwt::parse(&token).unwrap_err();
            assert_eq!(err, Rejection::UnsupportedAlgorithm, "tcId {}", test["tcId"]);
        }
    }
    assert_eq!(total, doc["numberOfTests"].as_u64().unwrap() as usize);
}
