//! One test per known JWT attack. Each must be refused with the expected reason.

use aws_lc_rs::hmac;
use tessera_token::{Algorithm, Rejection, UnverifiedJwt, b64, validate_access_token};

use crate::common::{NOW, claims, claims_json, forge, header_for, key, key_set, now, policy};

fn check(token: &str) -> Result<tessera_token::AccessClaims, Rejection> {
    validate_access_token(token, &key_set(), &policy(), now())
}

fn reason(token: &str) -> Rejection {
    check(token).expect_err("the token must be refused")
}

#[test]
fn genuine_token_is_accepted_for_every_algorithm() {
    for alg in Algorithm::ALL {
        let token = key(alg).sign_jwt("at+jwt", &claims()).unwrap();
        assert_eq!(check(&token).unwrap(), claims(), "{alg}");
    }
}

#[test]
fn alg_none_in_any_casing_is_unsupported() {
    let body = b64::encode(claims_json().as_bytes());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64::encode(format!(r#"{{"alg":"{alg}","typ":"at+jwt"}}"#).as_bytes());
        assert_eq!(reason(&format!("{header}.{body}.")), Rejection::UnsupportedAlgorithm, "{alg}");
        // Even with a kid of a trusted key and some signature bytes.
        let kid = key(Algorithm::EdDSA).kid();
        let header = b64::encode(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"at+jwt"}}"#).as_bytes());
        assert_eq!(reason(&format!("{header}.{body}.AAAA")), Rejection::UnsupportedAlgorithm, "{alg}");
    }
}

/// The classic key-confusion attack: HMAC the token with the RSA public key as the secret, hoping the
/// verifier takes `alg` from the header and the public key as the HMAC key.
#[test]
fn hs256_keyed_with_the_public_key_is_unsupported() {
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let victim = key(alg);
        let jwk = victim.verifying_key().to_jwk().to_string();
        let der = victim.verifying_key().to_spki_der().unwrap();
        let pem = victim.verifying_key().to_spki_pem().unwrap();
        for (form, secret) in [("PEM", pem.as_bytes()), ("DER", &der[..]), ("JWK", jwk.as_bytes())] {
            let header = format!(r#"{{"alg":"HS256","kid":"{}","typ":"at+jwt"}}"#, victim.kid());
            let input =
                format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(claims_json().as_bytes()));
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
            let token = format!("{input}.{}", b64::encode(tag.as_ref()));
            assert_eq!(reason(&token), Rejection::UnsupportedAlgorithm, "{alg} public key as {form}");
        }
    }
}

#[test]
fn stripped_signature_is_refused() {
    for alg in Algorithm::ALL {
        let token = key(alg).sign_jwt("at+jwt", &claims()).unwrap();
        let stripped = &token[..=token.rfind('.').unwrap()];
        assert_eq!(reason(stripped), Rejection::BadSignature, "{alg}");
    }
}

#[test]
fn zeroed_signature_is_refused() {
    for alg in Algorithm::ALL {
        let token = key(alg).sign_jwt("at+jwt", &claims()).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let zeros = vec![0u8; b64::decode(sig).unwrap().len()];
        assert_eq!(reason(&format!("{input}.{}", b64::encode(&zeros))), Rejection::BadSignature, "{alg}");
    }
}

/// CVE-2022-21449: r = s = 0, and r = s = n, must never verify.
#[test]
fn psychic_es256_signatures_are_refused() {
    let k = key(Algorithm::ES256);
    let token = k.sign_jwt("at+jwt", &claims()).unwrap();
    let (input, _) = token.rsplit_once('.').unwrap();
    let n = b64::decode("_____wAAAAD__________7zm-q2nF56E87nKwvxjJVE").unwrap();
    assert_eq!(n.len(), 32);
    for (name, r, s) in
        [("zero", vec![0u8; 32], vec![0u8; 32]), ("n", n.clone(), n.clone()), ("r=0", vec![0u8; 32], n)]
    {
        let sig = [r, s].concat();
        assert_eq!(reason(&format!("{input}.{}", b64::encode(&sig))), Rejection::BadSignature, "{name}");
    }
}

#[test]
fn der_encoded_es256_signature_is_refused() {
    let k = key(Algorithm::ES256);
    let token = k.sign_jwt("at+jwt", &claims()).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let raw = b64::decode(sig).unwrap();
    let int = |b: &[u8]| {
        let mut v = b.to_vec();
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        [vec![0x02, v.len() as u8], v].concat()
    };
    let body = [int(&raw[..32]), int(&raw[32..])].concat();
    let der = [vec![0x30, body.len() as u8], body].concat();
    assert_eq!(reason(&format!("{input}.{}", b64::encode(&der))), Rejection::BadSignature);
}

#[test]
fn tampered_payload_is_refused() {
    for alg in Algorithm::ALL {
        let token = key(alg).sign_jwt("at+jwt", &claims()).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut admin = claims();
        admin.roles = vec!["admin".into()];
        parts[1] = b64::encode(serde_json::to_string(&admin).unwrap().as_bytes());
        assert_eq!(reason(&parts.join(".")), Rejection::BadSignature, "{alg}");
    }
}

#[test]
fn unknown_or_missing_kid_is_refused() {
    let k = key(Algorithm::EdDSA);
    let other = tessera_token::SigningKey::generate(Algorithm::EdDSA).unwrap();
    let token = other.sign_jwt("at+jwt", &claims()).unwrap();
    assert_eq!(reason(&token), Rejection::UnknownKid);
    let no_kid = forge(k, r#"{"alg":"EdDSA","typ":"at+jwt"}"#, &claims_json());
    assert_eq!(reason(&no_kid), Rejection::MissingKid);
}

#[test]
fn header_alg_that_differs_from_the_key_is_refused() {
    // Signed by the RS256 key, but the header claims PS256 (same key type, different algorithm).
    let rs = key(Algorithm::RS256);
    let header = format!(r#"{{"alg":"PS256","kid":"{}","typ":"at+jwt"}}"#, rs.kid());
    assert_eq!(reason(&forge(rs, &header, &claims_json())), Rejection::AlgorithmMismatch);
    // An ES256 kid with an EdDSA header.
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt"}}"#, key(Algorithm::ES256).kid());
    assert_eq!(reason(&forge(key(Algorithm::EdDSA), &header, &claims_json())), Rejection::AlgorithmMismatch);
}

#[test]
fn typ_confusion_is_refused() {
    let k = key(Algorithm::EdDSA);
    for typ in ["JWT", "jwt", "dpop+jwt", "application/jwt"] {
        let token = k.sign_jwt(typ, &claims()).unwrap();
        assert_eq!(reason(&token), Rejection::WrongType, "{typ}");
    }
    let untyped = forge(k, &format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, k.kid()), &claims_json());
    assert_eq!(reason(&untyped), Rejection::WrongType);
}

#[test]
fn crit_header_is_refused() {
    let k = key(Algorithm::EdDSA);
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","crit":["exp"],"exp":1}}"#, k.kid());
    assert_eq!(reason(&forge(k, &header, &claims_json())), Rejection::CritHeader);
}

/// The attacker signs with their own key and embeds it, hoping the verifier trusts the header's key.
#[test]
fn embedded_jwk_header_is_refused() {
    let attacker = tessera_token::SigningKey::generate(Algorithm::EdDSA).unwrap();
    let jwk = attacker.verifying_key().to_jwk();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","jwk":{jwk}}}"#, attacker.kid());
    assert_eq!(reason(&forge(&attacker, &header, &claims_json())), Rejection::EmbeddedKeyHeader);
    let x5c = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","x5c":["MIIB"]}}"#, attacker.kid());
    assert_eq!(reason(&forge(&attacker, &x5c, &claims_json())), Rejection::EmbeddedKeyHeader);
}

#[test]
fn jku_and_x5u_headers_are_refused() {
    let k = key(Algorithm::EdDSA);
    for member in ["jku", "x5u"] {
        let header = format!(
            r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","{member}":"https://attacker.example/keys"}}"#,
            k.kid()
        );
        assert_eq!(reason(&forge(k, &header, &claims_json())), Rejection::KeyUrlHeader, "{member}");
    }
}

#[test]
fn json_serialization_is_refused() {
    let token = key(Algorithm::EdDSA).sign_jwt("at+jwt", &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let general = format!(
        r#"{{"payload":"{}","signatures":[{{"protected":"{}","signature":"{}"}}]}}"#,
        parts[1], parts[0], parts[2]
    );
    let flattened =
        format!(r#"{{"payload":"{}","protected":"{}","signature":"{}"}}"#, parts[1], parts[0], parts[2]);
    assert_eq!(reason(&general), Rejection::JsonSerialization);
    assert_eq!(reason(&flattened), Rejection::JsonSerialization);
    assert_eq!(reason(&format!("  {flattened}")), Rejection::JsonSerialization);
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    let k = key(Algorithm::EdDSA);
    let padding = "a".repeat(100 * 1024);
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","pad":"{padding}"}}"#, k.kid());
    assert_eq!(reason(&forge(k, &header, &claims_json())), Rejection::TooLarge);
}

#[test]
fn deeply_nested_header_is_refused_without_overflow() {
    let k = key(Algorithm::EdDSA);
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","x":{deep}}}"#, k.kid());
    let token = forge(k, &header, &claims_json());
    // Refused by size at the default limit ...
    assert_eq!(reason(&token), Rejection::TooLarge);
    // ... and by the JSON depth limit when the size limit is raised.
    assert_eq!(UnverifiedJwt::parse_with_limit(&token, 1 << 20).unwrap_err(), Rejection::InvalidHeader);
}

#[test]
fn non_base64url_characters_are_refused() {
    let token = key(Algorithm::EdDSA).sign_jwt("at+jwt", &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    for segment in 0..3 {
        for bad in ["+", "/", "=", " ", "%", "\u{e9}"] {
            // Replace one character, so the segment's length stays valid and only the alphabet is wrong.
            let mut p: Vec<String> = parts.iter().map(|s| (*s).to_owned()).collect();
            p[segment].replace_range(4..5, bad);
            assert_eq!(reason(&p.join(".")), Rejection::InvalidBase64, "segment {segment}, {bad:?}");
        }
    }
    // Padding at the end of a segment.
    assert_eq!(reason(&format!("{token}==")), Rejection::InvalidBase64);
}

#[test]
fn wrong_segment_counts_are_malformed() {
    let token = key(Algorithm::EdDSA).sign_jwt("at+jwt", &claims()).unwrap();
    let (first, _) = token.split_once('.').unwrap();
    assert_eq!(reason(&format!("{token}.AAAA")), Rejection::Malformed, "four segments");
    assert_eq!(reason(&format!("{token}.AAAA.AAAA")), Rejection::Malformed, "five segments (JWE)");
    assert_eq!(reason(&token[..token.rfind('.').unwrap()]), Rejection::Malformed, "two segments");
    assert_eq!(reason(first), Rejection::Malformed, "one segment");
    assert_eq!(reason(""), Rejection::Malformed, "empty");
}

#[test]
fn duplicate_members_are_refused() {
    let k = key(Algorithm::EdDSA);
    let dup_header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","typ":"at+jwt"}}"#, k.kid());
    assert_eq!(reason(&forge(k, &dup_header, &claims_json())), Rejection::DuplicateMember);
    let json = claims_json();
    for dup in
        [r#","sub":"admin"}"#, r#","aud":"billing"}"#, r#","x":1,"x":2}"#, r#","cnf":{"jkt":"a","jkt":"b"}}"#]
    {
        let claims = format!("{}{dup}", &json[..json.len() - 1]);
        assert_eq!(reason(&forge(k, &header_for(k), &claims)), Rejection::DuplicateMember, "{dup}");
    }
}

fn with(edit: impl FnOnce(&mut tessera_token::AccessClaims)) -> String {
    let mut c = claims();
    edit(&mut c);
    key(Algorithm::EdDSA).sign_jwt("at+jwt", &c).unwrap()
}

#[test]
fn expired_token_is_refused() {
    assert_eq!(reason(&with(|c| c.exp = NOW - 31)), Rejection::Expired);
    // Within the 30 s leeway it still passes; exactly at exp + leeway it does not.
    assert!(check(&with(|c| c.exp = NOW - 29)).is_ok());
    assert_eq!(reason(&with(|c| c.exp = NOW - 30)), Rejection::Expired);
}

#[test]
fn future_nbf_is_refused() {
    assert_eq!(reason(&with(|c| c.nbf = Some(NOW + 31))), Rejection::NotYetValid);
    assert!(check(&with(|c| c.nbf = Some(NOW + 30))).is_ok());
}

#[test]
fn future_iat_is_refused() {
    assert_eq!(reason(&with(|c| c.iat = NOW + 31)), Rejection::IssuedInFuture);
    assert!(check(&with(|c| c.iat = NOW + 30)).is_ok(), "within the leeway");
}

#[test]
fn token_older_than_max_age_is_refused_even_if_unexpired() {
    assert_eq!(
        reason(&with(|c| {
            c.iat = NOW - 901;
            c.exp = NOW + 3600;
        })),
        Rejection::TooOld
    );
    assert!(check(&with(|c| c.iat = NOW - 900)).is_ok(), "exactly the maximum age");
}

#[test]
fn blank_expected_issuer_or_audience_matches_nothing() {
    let token = with(|c| {
        c.iss = String::new();
        c.aud = tessera_token::Audience::one("");
    });
    let blank_iss = tessera_token::Validation::access_token("", crate::common::AUDIENCE);
    assert_eq!(validate_access_token(&token, &key_set(), &blank_iss, now()), Err(Rejection::WrongIssuer));
    let token = with(|c| c.aud = tessera_token::Audience::one(""));
    let blank_aud = tessera_token::Validation::access_token(crate::common::ISSUER, "");
    assert_eq!(validate_access_token(&token, &key_set(), &blank_aud, now()), Err(Rejection::WrongAudience));
}

#[test]
fn debug_output_of_a_parsed_token_does_not_contain_the_token() {
    let token = key(Algorithm::EdDSA).sign_jwt("at+jwt", &claims()).unwrap();
    let parsed = UnverifiedJwt::parse(&token).unwrap();
    let debug = format!("{parsed:?}");
    for part in token.split('.') {
        assert!(!debug.contains(&part[..16]), "{debug}");
    }
    let verified = parsed.verify(&key_set()).unwrap();
    let debug = format!("{verified:?}");
    assert!(!debug.contains("user-42") && !debug.contains(&token[..16]), "{debug}");
}

#[test]
fn wrong_issuer_is_refused() {
    assert_eq!(reason(&with(|c| c.iss = "https://evil.example".into())), Rejection::WrongIssuer);
    // Exact match: no prefix, case or trailing-slash leniency.
    assert_eq!(reason(&with(|c| c.iss = crate::common::ISSUER.to_uppercase())), Rejection::WrongIssuer);
    assert_eq!(
        reason(&with(|c| c.iss = format!("{}.evil.example", crate::common::ISSUER))),
        Rejection::WrongIssuer
    );
    assert_eq!(reason(&with(|c| c.iss = "https://id.tessera".into())), Rejection::WrongIssuer);
    assert_eq!(reason(&with(|c| c.iss = format!("{}/", crate::common::ISSUER))), Rejection::WrongIssuer);
}

/// A genuine token for another service must be useless here (lateral movement).
#[test]
fn token_for_another_audience_is_refused() {
    assert_eq!(reason(&with(|c| c.aud = tessera_token::Audience::one("billing"))), Rejection::WrongAudience);
    assert_eq!(reason(&with(|c| c.aud = tessera_token::Audience(vec![]))), Rejection::WrongAudience);
    let multi = with(|c| c.aud = tessera_token::Audience(vec!["billing".into(), "orders".into()]));
    assert!(check(&multi).is_ok(), "aud must contain ours");
}

#[test]
fn missing_required_claims_are_refused_by_name() {
    let k = key(Algorithm::EdDSA);
    for claim in ["exp", "iss", "sub", "aud", "iat", "jti", "client_id"] {
        let mut v: serde_json::Value = serde_json::from_str(&claims_json()).unwrap();
        v.as_object_mut().unwrap().remove(claim);
        let token = forge(k, &header_for(k), &v.to_string());
        assert_eq!(
            reason(&token),
            Rejection::MissingClaim(match claim {
                "exp" => "exp",
                "iss" => "iss",
                "sub" => "sub",
                "aud" => "aud",
                "iat" => "iat",
                "jti" => "jti",
                _ => "client_id",
            })
        );
    }
}

#[test]
fn malformed_claims_are_refused() {
    let k = key(Algorithm::EdDSA);
    for body in [
        "[]",
        "null",
        "\"x\"",
        "{",
        r#"{"exp":"soon"}"#,
        r#"{"exp":1.5e9}"#,
        r#"{"exp":1700000000.5}"#,
        r#"{"exp":-1}"#,
        r#"{"sub":null}"#,
    ] {
        let token = forge(k, &header_for(k), body);
        assert_eq!(reason(&token), Rejection::InvalidClaims, "{body}");
    }
}

#[test]
fn rejection_names_are_stable_snake_case_and_unique() {
    let names: Vec<&str> = Rejection::ALL.iter().map(|r| r.name()).collect();
    // These names are audit-event reasons: renaming one breaks every SIEM query that uses it.
    assert_eq!(
        names,
        [
            "token_too_large",
            "json_serialization",
            "malformed_token",
            "invalid_base64",
            "invalid_header",
            "duplicate_member",
            "unsupported_algorithm",
            "crit_header",
            "embedded_key_header",
            "key_url_header",
            "missing_kid",
            "unknown_kid",
            "algorithm_mismatch",
            "bad_signature",
            "wrong_typ",
            "invalid_claims",
            "missing_claim",
            "wrong_issuer",
            "wrong_audience",
            "expired",
            "not_yet_valid",
            "issued_in_future",
            "too_old",
        ]
    );
    for name in &names {
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
}
