//! Properties: signing then verifying round-trips any claims, and any single flipped bit is refused.

use proptest::prelude::*;
use tessera_token::{
    AccessClaims, Algorithm, Audience, Rejection, UnixTime, Validation, validate_access_token,
};

use crate::common::{AUDIENCE, ISSUER, NOW, claims, key, key_set, now, policy};

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sign_then_verify_round_trips_any_claims(alg in any_alg(), c in any_claims()) {
        let token = key(alg).sign_jwt("at+jwt", &c).unwrap();
        let policy = Validation::access_token(ISSUER, AUDIENCE);
        let back = validate_access_token(&token, &key_set(), &policy, UnixTime(NOW)).unwrap();
        prop_assert_eq!(back, c);
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
