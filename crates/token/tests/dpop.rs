//! DPoP proofs (RFC 9449): proofs made by a third-party JOSE crate are accepted exactly when they match the
//! request, and every way of bending one is refused.

use serde_json::json;
use tessera_testkit::{DpopClient, hmac_proof};
use tessera_token::dpop::{
    Ath, NewProof, ProofKey, ProofPolicy, ProofRejection, ProofRequest, proof_header, verify_proof,
    verify_proof_with_key,
};
use tessera_token::{Algorithm, Rejection, UnixTime, b64};

use crate::common::{NOW, forge, key, key_set, now, policy};

const URL: &str = "https://id.tessera.test/token";
const TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.e30.c2ln";

fn request<'a>(method: &'a str, url: &'a str) -> ProofRequest<'a> {
    ProofRequest { method, url, access_token: None, nonces: &[] }
}

fn check(proof: &str, req: &ProofRequest<'_>) -> Result<tessera_token::DpopProof, ProofRejection> {
    verify_proof(proof, req, &ProofPolicy::default(), now())
}

#[test]
fn third_party_proofs_verify_for_every_algorithm() {
    for alg in ["EdDSA", "ES256", "RS256", "PS256"] {
        let client = DpopClient::new(alg).unwrap();
        let proof = client.proof("POST", URL, NOW, None, None).unwrap();
        let checked = check(&proof, &request("POST", URL)).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(checked.jkt, client.thumbprint().unwrap(), "{alg}: jkt is the RFC 7638 thumbprint");
        assert_eq!(checked.alg.as_str(), alg);
        assert_eq!(checked.iat, NOW);
    }
}

#[test]
fn proof_for_another_method_or_url_is_refused() {
    let client = DpopClient::new("ES256").unwrap();
    let proof = client.proof("POST", URL, NOW, None, None).unwrap();
    assert_eq!(check(&proof, &request("GET", URL)), Err(ProofRejection::MethodMismatch));
    assert_eq!(check(&proof, &request("post", URL)), Err(ProofRejection::MethodMismatch));
    for other in [
        "https://id.tessera.test/revoke",
        "http://id.tessera.test/token",
        "https://id.tessera.test:8443/token",
        "https://evil.test/token",
        "https://id.tessera.test/token/",
    ] {
        assert_eq!(check(&proof, &request("POST", other)), Err(ProofRejection::UrlMismatch), "{other}");
    }
    // The same URL in another spelling, or with a query, is the same resource.
    for same in [
        "HTTPS://ID.TESSERA.TEST:443/token",
        "https://id.tessera.test/token?x=1",
        "https://id.tessera.test/./token",
    ] {
        assert!(check(&proof, &request("POST", same)).is_ok(), "{same}");
    }
}

#[test]
fn a_proof_naming_no_http_url_is_refused_even_when_the_request_is_spelt_the_same() {
    let client = DpopClient::new("EdDSA").unwrap();
    for url in ["ftp://id.tessera.test/token", "https://user@id.tessera.test/token", "/token"] {
        let proof = client.proof("POST", url, NOW, None, None).unwrap();
        assert_eq!(check(&proof, &request("POST", url)), Err(ProofRejection::UrlMismatch), "{url}");
    }
}

#[test]
fn expired_and_future_proofs_are_refused() {
    let client = DpopClient::new("EdDSA").unwrap();
    let policy = ProofPolicy::default();
    let old = client.proof("POST", URL, NOW - policy.max_age_secs - 1, None, None).unwrap();
    assert_eq!(check(&old, &request("POST", URL)), Err(ProofRejection::TooOld));
    let edge = client.proof("POST", URL, NOW - policy.max_age_secs, None, None).unwrap();
    let accepted = check(&edge, &request("POST", URL)).unwrap();
    assert!(accepted.replay_until(&policy) > NOW, "a replay cache still holds a proof it would accept");
    let future = client.proof("POST", URL, NOW + policy.leeway_secs + 1, None, None).unwrap();
    assert_eq!(check(&future, &request("POST", URL)), Err(ProofRejection::IssuedInFuture));
}

#[test]
fn proof_iat_may_be_fractional_but_not_negative_or_text() {
    let client = DpopClient::new("ES256").unwrap();
    let with_iat = |iat: serde_json::Value| {
        client.sign(&json!({ "jti": "j-frac", "htm": "POST", "htu": URL, "iat": iat }), |_| {}).unwrap()
    };
    let checked = check(&with_iat(json!(NOW as f64 + 0.9)), &request("POST", URL)).unwrap();
    assert_eq!(checked.iat, NOW, "a JavaScript client's Date.now() / 1000, rounded down");
    for bad in [json!(-5), json!("1700000000"), json!(f64::MAX), json!(null)] {
        let refused = check(&with_iat(bad.clone()), &request("POST", URL));
        assert!(
            matches!(refused, Err(ProofRejection::InvalidClaims | ProofRejection::MissingClaim("iat"))),
            "{bad}: {refused:?}"
        );
    }
}

#[test]
fn hmac_and_none_proofs_are_refused() {
    let claims = json!({ "jti": "j1", "htm": "POST", "htu": URL, "iat": NOW });
    let hmac = hmac_proof(&claims).unwrap();
    assert_eq!(
        check(&hmac, &request("POST", URL)),
        Err(ProofRejection::Jws(Rejection::UnsupportedAlgorithm))
    );
    let client = DpopClient::new("EdDSA").unwrap();
    let jwk = client.public_jwk().unwrap();
    let header = json!({ "typ": "dpop+jwt", "alg": "none", "jwk": jwk }).to_string();
    let none = format!("{}.{}.", b64::encode(header.as_bytes()), b64::encode(claims.to_string().as_bytes()));
    assert_eq!(
        check(&none, &request("POST", URL)),
        Err(ProofRejection::Jws(Rejection::UnsupportedAlgorithm))
    );
}

#[test]
fn proof_whose_jwk_has_private_members_is_refused() {
    let signer = key(Algorithm::ES256);
    let private: serde_json::Value = serde_json::from_str(&signer.to_private_jwk().unwrap()).unwrap();
    let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": private }).to_string();
    let claims = json!({ "jti": "j1", "htm": "POST", "htu": URL, "iat": NOW }).to_string();
    let proof = forge(signer, &header, &claims);
    assert_eq!(check(&proof, &request("POST", URL)), Err(ProofRejection::PrivateJwk));
}

#[test]
fn proof_signed_by_another_key_than_its_jwk_is_refused() {
    let client = DpopClient::new("EdDSA").unwrap();
    let header =
        json!({ "typ": "dpop+jwt", "alg": "EdDSA", "jwk": client.public_jwk().unwrap() }).to_string();
    let claims = json!({ "jti": "j1", "htm": "POST", "htu": URL, "iat": NOW }).to_string();
    let proof = forge(key(Algorithm::EdDSA), &header, &claims);
    assert_eq!(check(&proof, &request("POST", URL)), Err(ProofRejection::Jws(Rejection::BadSignature)));
}

#[test]
fn header_must_be_a_dpop_header() {
    let client = DpopClient::new("ES256").unwrap();
    let claims = json!({ "jti": "j1", "htm": "POST", "htu": URL, "iat": NOW });
    let plain = client.sign(&claims, |h| h.typ = Some("JWT".into())).unwrap();
    assert_eq!(check(&plain, &request("POST", URL)), Err(ProofRejection::WrongType));
    let untyped = client.sign(&claims, |h| h.typ = None).unwrap();
    assert_eq!(check(&untyped, &request("POST", URL)), Err(ProofRejection::WrongType));
    let keyless = client.sign(&claims, |h| h.jwk = None).unwrap();
    assert_eq!(check(&keyless, &request("POST", URL)), Err(ProofRejection::MissingJwk));
    let url = client.sign(&claims, |h| h.jku = Some("https://evil.test/jwks".into())).unwrap();
    assert_eq!(check(&url, &request("POST", URL)), Err(ProofRejection::Jws(Rejection::KeyUrlHeader)));
    // A header `alg` that does not fit the embedded key's type.
    let header =
        json!({ "typ": "dpop+jwt", "alg": "EdDSA", "jwk": client.public_jwk().unwrap() }).to_string();
    let mismatched = forge(key(Algorithm::EdDSA), &header, &claims.to_string());
    assert_eq!(check(&mismatched, &request("POST", URL)), Err(ProofRejection::InvalidJwk));
}

#[test]
fn required_claims_are_enforced() {
    let client = DpopClient::new("EdDSA").unwrap();
    for (missing, claims) in [
        ("jti", json!({ "htm": "POST", "htu": URL, "iat": NOW })),
        ("jti", json!({ "jti": "", "htm": "POST", "htu": URL, "iat": NOW })),
        ("htm", json!({ "jti": "j", "htu": URL, "iat": NOW })),
        ("htu", json!({ "jti": "j", "htm": "POST", "iat": NOW })),
        ("iat", json!({ "jti": "j", "htm": "POST", "htu": URL })),
    ] {
        let proof = client.sign(&claims, |_| {}).unwrap();
        assert_eq!(
            check(&proof, &request("POST", URL)),
            Err(ProofRejection::MissingClaim(missing)),
            "{claims}"
        );
    }
    let long_jti = "x".repeat(300);
    let long =
        client.sign(&json!({ "jti": long_jti, "htm": "POST", "htu": URL, "iat": NOW }), |_| {}).unwrap();
    assert_eq!(check(&long, &request("POST", URL)), Err(ProofRejection::InvalidClaims));
}

#[test]
fn duplicate_claims_in_a_proof_are_refused() {
    let signer = key(Algorithm::EdDSA);
    let jwk = signer.verifying_key().to_bare_jwk();
    let header = json!({ "typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk }).to_string();
    let claims = format!(r#"{{"jti":"a","htm":"POST","htu":"{URL}","iat":{NOW},"htm":"GET"}}"#);
    let proof = forge(signer, &header, &claims);
    assert_eq!(check(&proof, &request("POST", URL)), Err(ProofRejection::Jws(Rejection::DuplicateMember)));
    // Members the proof check does not read are held to the same rule, at every depth.
    for extra in [r#""x":1,"x":2"#, r#""x":{"a":1,"a":2}"#, r#""x":[{"a":1,"a":2}]"#] {
        let claims = format!(r#"{{"jti":"a","htm":"POST","htu":"{URL}","iat":{NOW},{extra}}}"#);
        let proof = forge(key(Algorithm::EdDSA), &header, &claims);
        assert_eq!(
            check(&proof, &request("POST", URL)),
            Err(ProofRejection::Jws(Rejection::DuplicateMember)),
            "{extra}"
        );
    }
    let claims = format!(r#"{{"jti":"a","htm":"POST","htu":"{URL}","iat":{NOW},"x":{{"a":1}},"y":[1]}}"#);
    assert!(check(&forge(key(Algorithm::EdDSA), &header, &claims), &request("POST", URL)).is_ok());
}

#[test]
fn a_kept_proof_key_checks_only_proofs_with_the_same_header() {
    let client = DpopClient::new("ES256").unwrap();
    let first = client.proof("POST", URL, NOW, None, None).unwrap();
    let key = ProofKey::parse(proof_header(&first).unwrap()).unwrap();
    assert_eq!(key.jkt(), client.thumbprint().unwrap());
    let policy = ProofPolicy::default();
    let later = client.proof("POST", URL, NOW, None, None).unwrap();
    let checked = verify_proof_with_key(&later, &key, &request("POST", URL), &policy, now()).unwrap();
    assert_eq!(checked.jkt, key.jkt());
    // Another key's proof, or a header bent in any way, is not checked against the kept key.
    let other = DpopClient::new("ES256").unwrap().proof("POST", URL, NOW, None, None).unwrap();
    assert_eq!(
        verify_proof_with_key(&other, &key, &request("POST", URL), &policy, now()),
        Err(ProofRejection::Jws(Rejection::Malformed))
    );
    // The kept key still checks everything else.
    assert_eq!(
        verify_proof_with_key(&later, &key, &request("GET", URL), &policy, now()),
        Err(ProofRejection::MethodMismatch)
    );
    let hmac = hmac_proof(&json!({ "jti": "j1", "htm": "POST", "htu": URL, "iat": NOW })).unwrap();
    assert_eq!(
        ProofKey::parse(proof_header(&hmac).unwrap()).err(),
        Some(ProofRejection::Jws(Rejection::UnsupportedAlgorithm))
    );
}

#[test]
fn ath_must_match_the_access_token() {
    let client = DpopClient::new("ES256").unwrap();
    let with_token =
        ProofRequest { access_token: Some(Ath::of(TOKEN)), ..request("GET", "https://api.test/orders") };
    let good = client.proof("GET", "https://api.test/orders", NOW, Some(TOKEN), None).unwrap();
    assert!(check(&good, &with_token).is_ok());
    let other = client.proof("GET", "https://api.test/orders", NOW, Some("another.token.x"), None).unwrap();
    assert_eq!(check(&other, &with_token), Err(ProofRejection::AthMismatch));
    let none = client.proof("GET", "https://api.test/orders", NOW, None, None).unwrap();
    assert_eq!(check(&none, &with_token), Err(ProofRejection::MissingClaim("ath")));
}

#[test]
fn server_nonce_is_required_once_asked_for() {
    let client = DpopClient::new("EdDSA").unwrap();
    let nonces = ["n-current", "n-previous"];
    let req = ProofRequest { nonces: &nonces, ..request("POST", URL) };
    let without = client.proof("POST", URL, NOW, None, None).unwrap();
    assert_eq!(check(&without, &req), Err(ProofRejection::NonceRequired));
    let stale = client.proof("POST", URL, NOW, None, Some("n-ancient")).unwrap();
    assert_eq!(check(&stale, &req), Err(ProofRejection::NonceRequired));
    for nonce in nonces {
        let fresh = client.proof("POST", URL, NOW, None, Some(nonce)).unwrap();
        assert!(check(&fresh, &req).is_ok(), "{nonce}");
    }
}

#[test]
fn our_own_proofs_verify_and_bind_to_the_key_thumbprint() {
    for signer in crate::common::KEYS.iter() {
        let proof = signer
            .sign_dpop_proof(&NewProof {
                method: "GET",
                url: "https://api.test/orders",
                jti: "our-1",
                iat: NOW,
                access_token: Some(TOKEN),
                nonce: Some("n1"),
            })
            .unwrap();
        let req = ProofRequest {
            method: "GET",
            url: "https://api.test/orders",
            access_token: Some(Ath::of(TOKEN)),
            nonces: &["n1"],
        };
        let checked = check(&proof, &req).unwrap();
        assert_eq!(checked.jkt, signer.kid());
        assert_eq!(checked.jti, "our-1");
    }
}

#[test]
fn a_dpop_proof_is_never_an_access_token() {
    let signer = key(Algorithm::EdDSA);
    let proof = signer
        .sign_dpop_proof(&NewProof {
            method: "GET",
            url: URL,
            jti: "p",
            iat: NOW,
            access_token: None,
            nonce: None,
        })
        .unwrap();
    let err = tessera_token::validate_access_token(&proof, &key_set(), &policy(), now()).unwrap_err();
    assert_eq!(err, Rejection::EmbeddedKeyHeader);
    assert_eq!(
        verify_proof(&proof, &request("GET", URL), &ProofPolicy::default(), UnixTime(NOW)).unwrap().jti,
        "p"
    );
}
