//! Key generation, import, export, thumbprints, and keeping private material private.

use aws_lc_rs::digest;
use tessera_token::{Algorithm, KeyError, KeySet, SigningKey, VerifyingKey, b64};

use crate::common::key;

const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

#[test]
fn every_algorithm_generates_a_working_key() {
    for alg in Algorithm::ALL {
        let k = key(alg);
        assert_eq!(k.alg(), alg);
        let sig = k.sign(b"message").unwrap();
        k.verifying_key().verify(b"message", &sig).unwrap();
        assert!(k.verifying_key().verify(b"messagf", &sig).is_err(), "{alg}");
    }
}

#[test]
fn private_jwk_round_trips_with_the_same_kid() {
    for alg in Algorithm::ALL {
        let k = key(alg);
        let jwk = k.to_private_jwk().unwrap();
        let back = SigningKey::from_jwk(&jwk, None).unwrap();
        assert_eq!((back.alg(), back.kid()), (alg, k.kid()));
        let sig = back.sign(b"hello").unwrap();
        k.verifying_key().verify(b"hello", &sig).unwrap();
    }
}

#[test]
fn pkcs8_pem_round_trips_and_binds_the_given_algorithm() {
    for alg in Algorithm::ALL {
        let k = key(alg);
        let pem = k.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = SigningKey::from_pkcs8_pem(&pem, alg).unwrap();
        assert_eq!(back.kid(), k.kid());
    }
    // An RSA PEM can be bound to PS256 instead: the same key, a different algorithm, the same thumbprint.
    let pem = key(Algorithm::RS256).to_pkcs8_pem().unwrap();
    assert_eq!(SigningKey::from_pkcs8_pem(&pem, Algorithm::PS256).unwrap().alg(), Algorithm::PS256);
    // The wrong key type for the algorithm is refused.
    let ec = key(Algorithm::ES256).to_pkcs8_pem().unwrap();
    assert!(SigningKey::from_pkcs8_pem(&ec, Algorithm::EdDSA).is_err());
    assert!(SigningKey::from_pkcs8_pem(&ec, Algorithm::RS256).is_err());
    assert_eq!(
        SigningKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
            Algorithm::ES256
        )
        .unwrap_err(),
        KeyError::InvalidEncoding
    );
}

/// An independent RFC 7638 computation: the required members, sorted, no whitespace, SHA-256.
#[test]
fn kid_is_the_rfc7638_thumbprint() {
    for alg in Algorithm::ALL {
        let k = key(alg);
        let jwk = k.verifying_key().to_jwk();
        let required: &[&str] = match alg {
            Algorithm::EdDSA => &["crv", "kty", "x"],
            Algorithm::ES256 => &["crv", "kty", "x", "y"],
            _ => &["e", "kty", "n"],
        };
        let canonical = format!(
            "{{{}}}",
            required
                .iter()
                .map(|m| format!("\"{m}\":\"{}\"", jwk[m].as_str().unwrap()))
                .collect::<Vec<_>>()
                .join(",")
        );
        let expected = b64::encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref());
        assert_eq!(k.kid(), expected, "{alg}");
        assert_eq!(jwk["kid"], expected);
    }
}

#[test]
fn public_jwks_never_contains_private_members() {
    let set: KeySet = Algorithm::ALL.iter().map(|&a| key(a).verifying_key().clone()).collect();
    let jwks = set.to_jwks();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    for jwk in keys {
        for member in PRIVATE_MEMBERS {
            assert!(jwk.get(member).is_none(), "{member} leaked in {jwk}");
        }
        assert_eq!(jwk["use"], "sig");
    }
    // And it reads back as the same set.
    let back = KeySet::from_jwks(&jwks.to_string()).unwrap();
    for k in set.iter() {
        assert_eq!(back.get(k.kid()).unwrap().alg(), k.alg());
    }
}

#[test]
fn a_jwks_with_private_members_is_refused() {
    let private = key(Algorithm::ES256).to_private_jwk().unwrap();
    let jwks = format!(r#"{{"keys":[{}]}}"#, &*private);
    assert_eq!(KeySet::from_jwks(&jwks).unwrap_err(), KeyError::PrivateMaterialInPublicSet);
    assert_eq!(VerifyingKey::from_jwk(&private, None).unwrap_err(), KeyError::PrivateMaterialInPublicSet);
}

#[test]
fn debug_output_never_shows_private_material() {
    for alg in Algorithm::ALL {
        let k = key(alg);
        let debug = format!("{k:?}");
        assert!(debug.contains("[REDACTED]"), "{debug}");
        let jwk: serde_json::Value = serde_json::from_str(&k.to_private_jwk().unwrap()).unwrap();
        for member in PRIVATE_MEMBERS {
            if let Some(secret) = jwk.get(member).and_then(|v| v.as_str()) {
                assert!(!debug.contains(secret), "{alg}: {member} in Debug");
                // Even a fragment of the secret must not appear.
                assert!(!debug.contains(&secret[..12]), "{alg}: part of {member} in Debug");
            }
        }
    }
}

#[test]
fn jwk_with_a_kid_other_than_its_thumbprint_is_refused() {
    let mut jwk = key(Algorithm::EdDSA).verifying_key().to_jwk();
    jwk["kid"] = "2010-12-29".into();
    assert_eq!(VerifyingKey::from_jwk(&jwk.to_string(), None).unwrap_err(), KeyError::KidMismatch);
}

#[test]
fn rsa_jwk_needs_an_algorithm_and_keeps_it() {
    let mut jwk = key(Algorithm::RS256).verifying_key().to_jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    assert_eq!(VerifyingKey::from_jwk(&jwk.to_string(), None).unwrap_err(), KeyError::AlgorithmRequired);
    assert_eq!(
        VerifyingKey::from_jwk(&jwk.to_string(), Some(Algorithm::PS256)).unwrap().alg(),
        Algorithm::PS256
    );
    jwk["alg"] = "RS256".into();
    assert_eq!(
        VerifyingKey::from_jwk(&jwk.to_string(), Some(Algorithm::PS256)).unwrap_err(),
        KeyError::AlgorithmMismatch
    );
}

#[test]
fn unsupported_or_mismatched_jwks_are_refused() {
    let cases = [
        (r#"{"kty":"oct","k":"c2VjcmV0"}"#, "symmetric key"),
        (r#"{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}"#, "P-384"),
        (r#"{"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#, "X25519"),
        (
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"HS256"}"#,
            "HS256",
        ),
        (
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"none"}"#,
            "none",
        ),
        (
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"ES256"}"#,
            "alg vs kty",
        ),
        (
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"enc"}"#,
            "enc",
        ),
        (r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#, "short x"),
        (r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=="}"#, "padded"),
        // A point that is not on P-256.
        (
            r#"{"kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE"}"#,
            "off-curve",
        ),
        // A 1024-bit modulus.
        (
            &format!(r#"{{"kty":"RSA","alg":"RS256","e":"AQAB","n":"{}"}}"#, b64::encode(&[0xc5; 128])),
            "RSA-1024",
        ),
        // 256 bytes, but the top bit clear: 2047 bits. And 8193 bits.
        (
            &format!(
                r#"{{"kty":"RSA","alg":"RS256","e":"AQAB","n":"{}"}}"#,
                b64::encode(&[&[0x7f][..], &[0xc5; 255]].concat())
            ),
            "RSA-2047",
        ),
        (
            &format!(
                r#"{{"kty":"RSA","alg":"RS256","e":"AQAB","n":"{}"}}"#,
                b64::encode(&[&[0x01][..], &[0xc5; 1024]].concat())
            ),
            "RSA-8193",
        ),
        ("[]", "not an object"),
    ];
    for (jwk, what) in cases.iter().map(|(j, w)| (j.to_string(), w)) {
        assert!(VerifyingKey::from_jwk(&jwk, None).is_err(), "{what} must be refused");
    }
}

#[test]
fn jwk_with_a_repeated_member_is_refused() {
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let jwk = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","x":"{x}"}}"#);
    assert!(matches!(VerifyingKey::from_jwk(&jwk, None), Err(KeyError::InvalidJwk(_))));
    let once = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}"#);
    assert!(VerifyingKey::from_jwk(&once, None).is_ok());
}

#[test]
fn jwks_with_two_keys_under_one_kid_is_refused() {
    // One RSA modulus published for RS256 and PS256 has one thumbprint: which would verify is ambiguous.
    let rs = key(Algorithm::RS256).verifying_key().to_jwk();
    let mut ps = rs.clone();
    ps["alg"] = "PS256".into();
    let jwks = serde_json::json!({ "keys": [rs, ps] }).to_string();
    assert_eq!(KeySet::from_jwks(&jwks).unwrap_err(), KeyError::DuplicateKid);
}

#[test]
fn key_errors_stay_on_one_line_and_quote_only_public_values() {
    let cases = [
        r#"{"kty":"X
Y","x":"a"}"#,
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"a
b"}"#,
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"HS
256"}"#,
    ];
    for jwk in cases {
        let message = VerifyingKey::from_jwk(jwk, None).unwrap_err().to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    let long = format!(r#"{{"kty":"{}"}}"#, "K".repeat(10_000));
    assert!(VerifyingKey::from_jwk(&long, None).unwrap_err().to_string().len() < 100);
}

#[test]
fn private_jwk_whose_parts_disagree_is_refused() {
    // RFC 7515 A.3's public point with another key's private scalar.
    let other = key(Algorithm::ES256).to_private_jwk().unwrap();
    let d = serde_json::from_str::<serde_json::Value>(&other).unwrap()["d"].clone();
    let jwk = format!(
        r#"{{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":{d}}}"#
    );
    assert!(SigningKey::from_jwk(&jwk, None).is_err());
    // An RSA JWK missing its CRT members.
    let mut rsa: serde_json::Value =
        serde_json::from_str(&key(Algorithm::RS256).to_private_jwk().unwrap()).unwrap();
    rsa.as_object_mut().unwrap().remove("qi");
    assert!(SigningKey::from_jwk(&rsa.to_string(), None).is_err());
}

#[test]
fn spki_export_round_trips_through_pem() {
    for alg in Algorithm::ALL {
        let vk = key(alg).verifying_key();
        let pem = vk.to_spki_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{alg}");
        assert!(!vk.to_spki_der().unwrap().is_empty());
    }
}
