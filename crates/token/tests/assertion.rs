//! Client assertions (RFC 7523, `private_key_jwt`): assertions signed by a third-party JOSE crate with a
//! registered key are accepted exactly when they name the client, address this server and expire soon.

use serde_json::{Value, json};
use tessera_testkit::{DpopClient, fresh_jti, hmac_jwt};
use tessera_token::assertion::{
    AssertionPolicy, AssertionRejection, ClientKeys, MAX_CLIENT_KEYS, claimed_client, verify_assertion,
};
use tessera_token::{KeyError, Rejection};

use crate::common::{NOW, now};

const ISSUER: &str = "https://id.tessera.test";
const TOKEN_ENDPOINT: &str = "https://id.tessera.test/token";
const CLIENT: &str = "billing-worker";

fn policy() -> AssertionPolicy<'static> {
    AssertionPolicy {
        client_id: CLIENT,
        audiences: &[ISSUER, TOKEN_ENDPOINT],
        max_lifetime_secs: 300,
        leeway_secs: 30,
    }
}

fn keys_of(client: &DpopClient) -> ClientKeys {
    ClientKeys::parse(&client.jwks("k1").unwrap().to_string()).unwrap()
}

fn claims() -> Value {
    json!({ "iss": CLIENT, "sub": CLIENT, "aud": ISSUER, "jti": fresh_jti(), "iat": NOW, "exp": NOW + 60 })
}

fn check(client: &DpopClient, claims: &Value) -> Result<tessera_token::ClientAssertion, AssertionRejection> {
    let assertion = client.sign_jwt(claims, "k1", |_| {}).unwrap();
    verify_assertion(&assertion, &keys_of(client), &policy(), now())
}

#[test]
fn third_party_assertions_verify_for_every_algorithm_and_both_audiences() {
    for alg in ["EdDSA", "ES256", "RS256", "PS256"] {
        let client = DpopClient::new(alg).unwrap();
        for aud in [ISSUER, TOKEN_ENDPOINT] {
            let assertion = client.client_assertion("k1", CLIENT, aud, NOW, 60).unwrap();
            let checked = verify_assertion(&assertion, &keys_of(&client), &policy(), now())
                .unwrap_or_else(|e| panic!("{alg} {aud}: {e}"));
            assert_eq!(checked.exp, NOW + 60);
            assert_eq!(checked.key_thumbprint, client.thumbprint().unwrap());
            assert_eq!(
                checked.replay_until(&policy()),
                NOW + 60 + 30 + 1,
                "remembered past its last valid second"
            );
        }
    }
}

#[test]
fn rsa_key_registered_without_alg_verifies_rs256_and_ps256() {
    for alg in ["RS256", "PS256"] {
        let client = DpopClient::new(alg).unwrap();
        let mut jwks = client.jwks("k1").unwrap();
        jwks["keys"][0].as_object_mut().unwrap().remove("alg");
        let keys = ClientKeys::parse(&jwks.to_string()).unwrap();
        assert_eq!(keys.thumbprints().len(), 1, "one key, listed once");
        let assertion = client.client_assertion("k1", CLIENT, ISSUER, NOW, 60).unwrap();
        assert!(verify_assertion(&assertion, &keys, &policy(), now()).is_ok(), "{alg}");
    }
}

#[test]
fn assertion_signed_by_an_unregistered_key_is_refused() {
    let client = DpopClient::new("ES256").unwrap();
    let impostor = DpopClient::new("ES256").unwrap();
    let forged = impostor.client_assertion("k1", CLIENT, ISSUER, NOW, 60).unwrap();
    assert_eq!(
        verify_assertion(&forged, &keys_of(&client), &policy(), now()),
        Err(AssertionRejection::Jws(Rejection::BadSignature))
    );
    // A key of another algorithm, or a kid the client never registered, matches no key at all.
    let other_alg =
        DpopClient::new("EdDSA").unwrap().client_assertion("k1", CLIENT, ISSUER, NOW, 60).unwrap();
    assert_eq!(
        verify_assertion(&other_alg, &keys_of(&client), &policy(), now()),
        Err(AssertionRejection::NoMatchingKey)
    );
    let unknown_kid = client.client_assertion("k2", CLIENT, ISSUER, NOW, 60).unwrap();
    assert_eq!(
        verify_assertion(&unknown_kid, &keys_of(&client), &policy(), now()),
        Err(AssertionRejection::NoMatchingKey)
    );
    // Without a kid, every registered key of the algorithm is tried.
    let no_kid = client.sign_jwt(&claims(), "k1", |h| h.kid = None).unwrap();
    assert!(verify_assertion(&no_kid, &keys_of(&client), &policy(), now()).is_ok());
}

#[test]
fn hmac_none_and_embedded_key_assertions_are_refused() {
    let client = DpopClient::new("ES256").unwrap();
    let keys = keys_of(&client);
    let hmac = hmac_jwt(&claims(), "k1", b"the client secret").unwrap();
    assert_eq!(
        verify_assertion(&hmac, &keys, &policy(), now()),
        Err(AssertionRejection::Jws(Rejection::UnsupportedAlgorithm))
    );
    let header = tessera_token::b64::encode(br#"{"alg":"none","kid":"k1"}"#);
    let body = tessera_token::b64::encode(claims().to_string().as_bytes());
    let none = format!("{header}.{body}.");
    assert_eq!(
        verify_assertion(&none, &keys, &policy(), now()),
        Err(AssertionRejection::Jws(Rejection::UnsupportedAlgorithm))
    );
    // A key carried in the assertion itself is no credential.
    let jwk = client.public_jwk().unwrap();
    let embedded =
        client.sign_jwt(&claims(), "k1", |h| h.jwk = Some(serde_json::from_value(jwk).unwrap())).unwrap();
    assert_eq!(
        verify_assertion(&embedded, &keys, &policy(), now()),
        Err(AssertionRejection::Jws(Rejection::EmbeddedKeyHeader))
    );
}

#[test]
fn assertion_for_another_client_or_audience_is_refused() {
    let client = DpopClient::new("EdDSA").unwrap();
    for (field, value) in [("iss", json!("someone-else")), ("sub", json!("someone-else"))] {
        let mut c = claims();
        c[field] = value;
        assert_eq!(check(&client, &c), Err(AssertionRejection::WrongClient), "{field}");
    }
    for aud in [
        json!("https://other-idp.example/token"),
        json!([ISSUER, "https://other-idp.example"]),
        json!([]),
        json!("https://id.tessera.test/introspect"),
    ] {
        let mut c = claims();
        c["aud"] = aud.clone();
        assert_eq!(check(&client, &c), Err(AssertionRejection::WrongAudience), "{aud}");
    }
    let mut both = claims();
    both["aud"] = json!([ISSUER, TOKEN_ENDPOINT]);
    assert!(check(&client, &both).is_ok(), "every audience is this server's");
}

#[test]
fn expired_long_lived_or_early_assertions_are_refused() {
    let client = DpopClient::new("EdDSA").unwrap();
    let cases = [
        (json!({ "iat": NOW - 400, "exp": NOW - 31 }), AssertionRejection::Expired),
        (json!({ "iat": NOW, "exp": NOW + 3600 }), AssertionRejection::LifetimeTooLong),
        (json!({ "iat": NOW - 200, "exp": NOW + 200 }), AssertionRejection::LifetimeTooLong),
        (json!({ "iat": null, "exp": NOW + 400 }), AssertionRejection::LifetimeTooLong),
        (json!({ "iat": NOW + 120, "exp": NOW + 180 }), AssertionRejection::IssuedInFuture),
        (json!({ "nbf": NOW + 120, "exp": NOW + 180 }), AssertionRejection::NotYetValid),
    ];
    for (times, want) in cases {
        let mut c = claims();
        for (k, v) in times.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        assert_eq!(check(&client, &c), Err(want), "{times}");
    }
    // Within the leeway, a slightly fast or slow client clock is fine.
    let mut skewed = claims();
    skewed["iat"] = json!(NOW + 20);
    skewed["exp"] = json!(NOW + 80);
    assert!(check(&client, &skewed).is_ok());
}

#[test]
fn assertion_times_may_be_fractional_but_not_negative_or_text() {
    let client = DpopClient::new("EdDSA").unwrap();
    let mut fractional = claims();
    fractional["iat"] = json!(NOW as f64 + 0.25);
    fractional["exp"] = json!((NOW + 60) as f64 + 0.75);
    let checked = check(&client, &fractional).unwrap();
    assert_eq!(checked.exp, NOW + 60, "rounded down");
    for bad in [json!(-1), json!(-0.5), json!("1700000000"), json!(1e300), json!(true)] {
        let mut c = claims();
        c["exp"] = bad.clone();
        assert_eq!(check(&client, &c), Err(AssertionRejection::InvalidClaims), "{bad}");
    }
}

#[test]
fn assertion_without_required_claims_is_refused() {
    let client = DpopClient::new("EdDSA").unwrap();
    for claim in ["iss", "sub", "aud", "exp", "jti"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        assert_eq!(check(&client, &c), Err(AssertionRejection::MissingClaim(claim)), "{claim}");
    }
    let mut long = claims();
    long["jti"] = json!("x".repeat(300));
    assert_eq!(check(&client, &long), Err(AssertionRejection::InvalidClaims));
    let mut typed = claims();
    typed["exp"] = json!("soon");
    assert_eq!(check(&client, &typed), Err(AssertionRejection::InvalidClaims));
}

#[test]
fn claimed_client_reads_sub_only_as_a_lookup_hint() {
    let client = DpopClient::new("EdDSA").unwrap();
    let assertion = client.client_assertion("k1", CLIENT, ISSUER, NOW, 60).unwrap();
    assert_eq!(claimed_client(&assertion).as_deref(), Some(CLIENT));
    assert_eq!(claimed_client("not.a.jwt"), None);
}

#[test]
fn registered_jwks_must_be_public_signing_keys_and_few() {
    let client = DpopClient::new("EdDSA").unwrap();
    let mut private = client.jwks("k1").unwrap();
    private["keys"][0]["d"] = json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    assert_eq!(ClientKeys::parse(&private.to_string()).err(), Some(KeyError::PrivateMaterialInPublicSet));
    assert!(ClientKeys::parse(r#"{"keys":[]}"#).is_err(), "no key");
    assert!(ClientKeys::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err(), "a shared secret");
    let one = client.public_jwk().unwrap();
    let many = json!({ "keys": vec![one; MAX_CLIENT_KEYS + 1] });
    assert!(ClientKeys::parse(&many.to_string()).is_err(), "too many keys");
    let encryption_only = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "use": "enc",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" }] });
    assert!(ClientKeys::parse(&encryption_only.to_string()).is_err(), "no signing key");
}
