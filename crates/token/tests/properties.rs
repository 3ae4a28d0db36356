//! Properties: signing then verifying round-trips any claims, and any single flipped bit is refused.

use proptest::prelude::*;
use tessera_token::{
    AccessClaims, Algorithm, Audience, Rejection, UnixTime, Validation, validate_access_token,
};

use crate::common::{AUDIENCE, ISSUER, NOW, claims, forge, header_for, key, key_set, now, policy};

fn any_alg() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, backslashes and control characters that JSON must escape.
    prop::collection::vec(any::<char>(), 0..24).prop_map(|c| c.into_iter().collect())
}

prop_compose! {
    fn any_claims()(
        sub in text(), jti in text(), client_id in text(),
        scope in prop::option::of(text()), sid in prop::option::of(text()),
        roles in prop::collection::vec(text(), 0..4), amr in prop::collection::vec(text(), 0..3),
        age in 0u64..=900, ttl in 1u64..=900,
        extra in prop::collection::btree_map("[a-z]{1,3}_x", text(), 0..4),
    ) -> AccessClaims {
        let mut c = claims();
        c.sub = sub;
        c.jti = jti;
        c.client_id = client_id;
        c.scope = scope;
        c.sid = sid;
        c.roles = roles;
        c.amr = amr;
        c.iat = NOW - age;
        c.nbf = Some(NOW - age);
        c.exp = NOW + ttl;
        c.extra = extra.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        c
    }
}

/// Claim names we know, and some we do not, so that generated objects hit every branch of the parser.
fn claim_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select([&AccessClaims::REGISTERED[..], &["jkt"]].concat()).prop_map(String::from),
        "[a-z]{1,3}",
    ]
}

/// JWK member names, and some others.
fn jwk_member() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "kty", "crv", "x", "y", "n", "e", "d", "p", "q", "dp", "dq", "qi", "oth", "alg", "kid", "use",
        ])
        .prop_map(String::from),
        "[a-z]{1,3}",
    ]
}

/// Any JSON value, nested a few levels deep, over those names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (NOW - 2000..NOW + 2000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![Just(ISSUER.to_owned()), Just(AUDIENCE.to_owned()), "\\PC{0,8}"].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((claim_name(), inner), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sign_then_verify_round_trips_any_claims(alg in any_alg(), c in any_claims()) {
        let token = key(alg).sign_jwt("at+jwt", &c).unwrap();
        let policy = Validation::access_token(ISSUER, AUDIENCE);
        let back = validate_access_token(&token, &key_set(), &policy, UnixTime(NOW)).unwrap();
        prop_assert_eq!(back, c);
    }

    /// The stable-Rust counterpart of the `claims` fuzz target: any claims object, members possibly
    /// repeated, correctly signed, through the whole path. It never panics, and a repeated top-level member is
    /// never accepted: `duplicate_member`, or `invalid_claims` when an ill-typed member comes first.
    #[test]
    fn any_signed_claims_object_is_decided_without_panic(
        members in prop::collection::vec((claim_name(), json_value()), 0..12),
    ) {
        let body = members
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
            .collect::<Vec<_>>()
            .join(",");
        let k = key(Algorithm::EdDSA);
        let outcome = validate_access_token(&forge(k, &header_for(k), &format!("{{{body}}}")), &key_set(), &policy(), now());
        let mut names: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        let repeated = names.windows(2).any(|w| w[0] == w[1]);
        if repeated {
            prop_assert!(
                matches!(outcome, Err(Rejection::DuplicateMember | Rejection::InvalidClaims)),
                "{:?}",
                outcome
            );
        }
    }

    /// The stable-Rust counterpart of the `jwk` fuzz target: JWK-shaped objects and arbitrary text through
    /// every key import. It never panics, and nothing with a private member becomes a public key.
    #[test]
    fn any_text_as_a_key_is_decided_without_panic(
        members in prop::collection::vec((jwk_member(), json_value()), 0..8),
        text in "\\PC{0,120}",
    ) {
        let object = serde_json::Value::Object(members.into_iter().collect()).to_string();
        for input in [object.as_str(), text.as_str()] {
            let public = tessera_token::VerifyingKey::from_jwk(input, None);
            let _ = tessera_token::SigningKey::from_jwk(input, None);
            let _ = tessera_token::KeySet::from_jwks(&format!(r#"{{"keys":[{input}]}}"#));
            let _ = tessera_token::SigningKey::from_pkcs8_pem(input, Algorithm::ES256);
            let private = ["\"d\"", "\"p\"", "\"q\"", "\"dp\"", "\"dq\"", "\"qi\"", "\"oth\""];
            if private.iter().any(|m| input.contains(m)) {
                prop_assert!(public.is_err());
            }
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = validate_access_token(&s, &key_set(), &policy(), now());
    }
}

/// Exhaustive rather than sampled: every bit of a real token, for every algorithm.
#[test]
fn flipping_any_single_bit_is_refused() {
    let set = key_set();
    let mut c = claims();
    c.aud = Audience::one(AUDIENCE);
    for alg in Algorithm::ALL {
        let token = key(alg).sign_jwt("at+jwt", &c).unwrap();
        assert!(validate_access_token(&token, &set, &policy(), now()).is_ok());
        let bytes = token.as_bytes();
        let mut checked = 0;
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.to_vec();
            flipped[i / 8] ^= 1 << (i % 8);
            // A flip that breaks UTF-8 cannot even be presented as a token string.
            let Ok(s) = std::str::from_utf8(&flipped) else { continue };
            let outcome = validate_access_token(s, &set, &policy(), now());
            assert!(
                matches!(outcome, Err(r) if r != Rejection::TooLarge),
                "{alg}: bit {i} flipped was accepted"
            );
            checked += 1;
        }
        assert!(checked >= bytes.len() * 7, "{alg}: most flips are valid UTF-8 and were checked");
    }
}
