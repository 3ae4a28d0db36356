//! The attack list: every known JWT attack, the bad header forms and the path tricks. Each gets 401 or 403,
//! never a 5xx, and not one of them reaches the upstream.

use serde_json::json;
use tessera_token::{Algorithm, SigningKey};

use crate::harness::{API, Backend, Grant, World, b64, get};

fn hs256(key: &[u8], signing_input: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    b64(aws_lc_rs::hmac::sign(&key, signing_input.as_bytes()).as_ref())
}

#[tokio::test]
async fn attack_list_is_refused_and_never_reaches_the_upstream() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let kid = w.kid();
    let claims = w.claims();
    let (valid, _) = w.token(Grant::default());
    let at = |alg: &str| json!({"alg": alg, "typ": "at+jwt", "kid": kid});
    let body = b64(claims.to_string().as_bytes());

    // Token attacks.
    let mut tokens: Vec<(&str, String)> = Vec::new();
    tokens.push(("alg none", format!("{}.{body}.", b64(at("none").to_string().as_bytes()))));
    tokens.push(("alg none, capitalised", format!("{}.{body}.", b64(at("None").to_string().as_bytes()))));
    let jwks = w.server.state.keyring().jwks_json().to_owned();
    let hs_input = format!("{}.{body}", b64(at("HS256").to_string().as_bytes()));
    tokens.push((
        "HS256 keyed with the public JWKS",
        format!("{hs_input}.{}", hs256(jwks.as_bytes(), &hs_input)),
    ));
    tokens.push(("missing kid", w.sign_raw(&json!({"alg": "EdDSA", "typ": "at+jwt"}), &claims)));
    let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let forged_input = format!(
        "{}.{body}",
        b64(json!({"alg": "EdDSA", "typ": "at+jwt", "kid": stranger.kid()}).to_string().as_bytes())
    );
    tokens.push((
        "unknown kid",
        format!("{forged_input}.{}", b64(&stranger.sign(forged_input.as_bytes()).unwrap())),
    ));
    let forged_input = format!("{}.{body}", b64(at("EdDSA").to_string().as_bytes()));
    tokens.push((
        "our kid, attacker's key",
        format!("{forged_input}.{}", b64(&stranger.sign(forged_input.as_bytes()).unwrap())),
    ));
    let jku = format!("http://{}/jwks.json", w.upstream.addr);
    tokens.push((
        "jku header",
        w.sign_raw(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "jku": jku}), &claims),
    ));
    tokens.push((
        "x5u header",
        w.sign_raw(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "x5u": jku}), &claims),
    ));
    let jwk = stranger.verifying_key().to_jwk();
    tokens.push((
        "embedded jwk",
        w.sign_raw(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "jwk": jwk}), &claims),
    ));
    tokens.push((
        "crit header",
        w.sign_raw(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "crit": ["exp"], "exp": 1}), &claims),
    ));
    tokens.push(("ID token typ", w.sign_raw(&json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}), &claims)));
    tokens.push(("no typ", w.sign_raw(&json!({"alg": "EdDSA", "kid": kid}), &claims)));
    let ps = format!("{}.{body}.{}", b64(at("ES256").to_string().as_bytes()), b64(&[0u8; 64]));
    tokens.push(("ES256 psychic signature against an EdDSA kid", ps));
    let mut c = claims.clone();
    let now = tessera_server::now();
    c["exp"] = json!(now - 120);
    tokens.push(("expired", w.sign_raw(&at("EdDSA"), &c)));
    let mut c = claims.clone();
    c["nbf"] = json!(now + 600);
    tokens.push(("not yet valid", w.sign_raw(&at("EdDSA"), &c)));
    let mut c = claims.clone();
    c["iat"] = json!(now + 600);
    tokens.push(("issued in the future", w.sign_raw(&at("EdDSA"), &c)));
    let mut c = claims.clone();
    c["iat"] = json!(now - 3600);
    tokens.push(("too old", w.sign_raw(&at("EdDSA"), &c)));
    let mut c = claims.clone();
    c["iss"] = json!("https://evil.example");
    tokens.push(("wrong issuer", w.sign_raw(&at("EdDSA"), &c)));
    let mut c = claims.clone();
    c["aud"] = json!("https://billing.example");
    tokens.push(("another service's audience", w.sign_raw(&at("EdDSA"), &c)));
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove("jti");
    tokens.push(("missing jti", w.sign_raw(&at("EdDSA"), &c)));
    let dup_input = format!(
        "{}.{}",
        b64(at("EdDSA").to_string().as_bytes()),
        b64(claims
            .to_string()
            .replacen("\"sub\":\"u_alice\"", "\"sub\":\"u_alice\",\"sub\":\"admin\"", 1)
            .as_bytes())
    );
    let dup_sig = w.server.state.keyring().signer().sign(dup_input.as_bytes()).unwrap();
    tokens.push(("duplicate claim", format!("{dup_input}.{}", b64(&dup_sig))));
    let parts: Vec<&str> = valid.split('.').collect();
    let mut tampered_claims = claims.clone();
    tampered_claims["scope"] = json!("orders:read orders:write");
    tokens.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64(tampered_claims.to_string().as_bytes()), parts[2]),
    ));
    tokens.push(("signature stripped", format!("{}.{}.", parts[0], parts[1])));
    tokens.push(("four segments", format!("{valid}.{}", parts[2])));
    tokens.push(("oversized", format!("{}.{}.{}", parts[0], "A".repeat(9000), parts[2])));
    tokens.push(("padded base64", format!("{}=.{}.{}", parts[0], parts[1], parts[2])));

    for (name, token) in &tokens {
        let status = w.raw(&get("/orders/1", Some(token))).await;
        assert_eq!(status, 401, "{name}");
    }
    let json_serialization = format!(
        "GET /orders/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {{\"payload\":\"{}\"}}\r\nConnection: close\r\n\r\n",
        parts[1]
    );
    assert_eq!(w.raw(&json_serialization).await, 401, "JSON serialization");

    // Bad header forms.
    let header_forms = [
        ("no Authorization", get("/orders/1", None)),
        ("token in the query", format!("GET /orders/1?access_token={valid} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")),
        (
            "token in the query and the header",
            format!("GET /orders/1?access_token={valid} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "two Authorization headers",
            format!("GET /orders/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "token in the query, name percent-encoded",
            format!("GET /orders/1?%61ccess_token={valid} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "token in the query after a semicolon",
            format!("GET /orders/1?x=1;Access_Token={valid} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n\r\n"),
        ),
        ("two tokens in one header", get("/orders/1", Some(&format!("{valid} {valid}")))),
        ("comma-separated tokens", get("/orders/1", Some(&format!("{valid},{valid}")))),
        ("empty bearer", "GET /orders/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer\r\nConnection: close\r\n\r\n".to_owned()),
        ("double space", get("/orders/1", Some(&format!(" {valid}")))),
        ("Basic scheme", "GET /orders/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Basic d2ViOnNlY3JldA==\r\nConnection: close\r\n\r\n".to_owned()),
        (
            "token without a scheme",
            format!("GET /orders/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: {valid}\r\nConnection: close\r\n\r\n"),
        ),
    ];
    for (name, request) in &header_forms {
        assert_eq!(w.raw(request).await, 401, "{name}");
    }

    // Path tricks, with a genuine token that may read orders but is no admin.
    let paths = [
        "/orders/1/../../admin/users",
        "/orders/%2e%2e/admin/users",
        "/orders/%2E%2E/%2e%2E/admin/users",
        "/public/../admin/users",
        "/public/..%2fadmin/users",
        "/public/%2e%2e%2fadmin/users",
        "/public/..%5cadmin/users",
        "/public/..;/admin/users",
        "/admin;/users",
        "//admin//users",
        "/admin/users/",
        "/./admin/./users",
        "/%61dmin/users",
        "/ORDERS/1",
        "/orders/1%00",
        "/orders/1%2500",
        "/unlisted",
        "/",
    ];
    for path in paths {
        assert_eq!(w.raw(&get(path, Some(&valid))).await, 403, "{path}");
    }
    // Methods and scopes the policy does not grant.
    let write = format!(
        "POST /orders HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(w.raw(&write).await, 403, "POST /orders without orders:write");
    let delete = format!(
        "DELETE /orders/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(w.raw(&delete).await, 403, "DELETE is not listed");

    assert_eq!(
        w.upstream.count(),
        0,
        "no refused request reached the upstream: {:?}",
        w.upstream.seen.lock().unwrap().first()
    );
    // The control: the same token on an allowed route does reach it.
    assert_eq!(w.raw(&get("/orders/1", Some(&valid))).await, 200);
    assert_eq!(w.upstream.count(), 1);
    // And a lowercase scheme is still the bearer scheme (RFC 9110 §11.1: case-insensitive).
    let lower = format!(
        "GET /orders/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: bearer {valid}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(w.raw(&lower).await, 200);
    let _ = API;
    w.finish().await;
}

#[tokio::test]
async fn refusals_carry_rfc6750_challenges() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let http = reqwest::Client::new();
    let r = http.get(w.url("/orders/1")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"https://orders.example\"");
    let r = http.get(w.url("/orders/1")).bearer_auth("not.a.token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body = r.text().await.unwrap();
    assert!(body.contains("\"error\":\"invalid_token\""), "{body}");
    let (reader, _) = w.token(Grant::default());
    let r = http.post(w.url("/orders")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"orders:write\""),
        "{challenge}"
    );
    let (admin_reader, _) = w.token(Grant { roles: &["admin"], ..Grant::default() });
    let r = http.get(w.url("/admin/users")).bearer_auth(&admin_reader).send().await.unwrap();
    assert_eq!(r.status(), 200, "the admin role opens the admin routes");
    let r = http.get(w.url("/public/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a public route needs no token");
    w.finish().await;
}
