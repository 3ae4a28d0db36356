//! DPoP at the authorization server (RFC 9449): bound tokens, bound refresh families, replay, nonces, and
//! userinfo. Proofs are made by `tessera-testkit`, which signs with the `jsonwebtoken` crate.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tessera_testkit::{DpopClient, hmac_proof};

use crate::browser_flow::{authorize, authorize_with, setup};
use crate::common::{API, Backend, Browser, Server, http};

crate::on_both_backends!(
    dpop_code_exchange_binds_the_access_token_and_the_refresh_family,
    stolen_dpop_refresh_token_is_useless_without_the_key,
    stolen_dpop_access_token_is_useless_without_the_key_at_userinfo,
    replayed_or_misdirected_proofs_are_refused_at_the_token_endpoint,
    client_that_requires_dpop_gets_no_bearer_tokens,
    introspection_reports_the_key_binding,
    public_family_started_without_dpop_is_bound_by_its_first_proof,
    code_requested_with_dpop_jkt_is_redeemable_only_with_that_key,
);

fn now() -> u64 {
    u64::try_from(tessera_server::now()).unwrap()
}

/// The claims of a JWT, read without checking it (the tests check the binding, not the signature).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// POSTs a token request with an optional DPoP proof; returns status, headers and body.
async fn token_request(s: &Server, form: &[(&str, &str)], proof: Option<&str>) -> (u16, HeaderMap, Value) {
    let mut request = http().post(s.url("/token")).form(form);
    if let Some(proof) = proof {
        request = request.header("DPoP", proof);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap())
}

fn token_proof(s: &Server, key: &DpopClient) -> String {
    key.proof("POST", &s.url("/token"), now(), None, None).unwrap()
}

/// Logs alice in through the public client `spa` and redeems the code with a proof by `key`.
async fn bound_tokens(s: &Server, key: &DpopClient) -> Value {
    let client = setup(s).await;
    let browser = Browser::default();
    let (q, verifier, _) = authorize(s, &browser, &client, "openid orders:read").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", q["code"].as_str()),
        ("redirect_uri", crate::common::REDIRECT),
        ("code_verifier", verifier.secret().as_str()),
        ("client_id", "spa"),
    ];
    let (status, _, body) = token_request(s, &form, Some(&token_proof(s, key))).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn refresh_with(s: &Server, refresh_token: &str, proof: Option<&str>) -> (u16, Value) {
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", "spa")];
    let (status, _, body) = token_request(s, &form, proof).await;
    (status, body)
}

async fn dpop_code_exchange_binds_the_access_token_and_the_refresh_family(s: &Server) {
    let key = DpopClient::new("ES256").unwrap();
    let body = bound_tokens(s, &key).await;
    assert_eq!(body["token_type"], "DPoP");
    let jkt = key.thumbprint().unwrap();
    assert_eq!(claims(body["access_token"].as_str().unwrap())["cnf"]["jkt"], jkt.as_str());
    // Rotation with a proof by the same key keeps the binding.
    let proof = token_proof(s, &key);
    let (status, next) = refresh_with(s, body["refresh_token"].as_str().unwrap(), Some(&proof)).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["token_type"], "DPoP");
    assert_eq!(claims(next["access_token"].as_str().unwrap())["cnf"]["jkt"], jkt.as_str());
    let discovery: Value =
        http().get(s.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        discovery["dpop_signing_alg_values_supported"],
        serde_json::json!(["EdDSA", "ES256", "RS256", "PS256"])
    );
}

async fn stolen_dpop_refresh_token_is_useless_without_the_key(s: &Server) {
    let key = DpopClient::new("EdDSA").unwrap();
    let body = bound_tokens(s, &key).await;
    let stolen = body["refresh_token"].as_str().unwrap();
    // The thief has no proof at all.
    let (status, answer) = refresh_with(s, stolen, None).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_dpop_proof")));
    // The thief proves a key of their own.
    let thief = DpopClient::new("EdDSA").unwrap();
    let (status, answer) = refresh_with(s, stolen, Some(&token_proof(s, &thief))).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")));
    let events = s.state.store.recent_events(Some("token_rejected"), 10).await.unwrap();
    assert!(events.iter().all(|e| e.reason.as_deref() == Some("dpop_key_mismatch")));
    assert_eq!(events.len(), 2);
    // The owner, with the key, still rotates: the attempts did not spend the token.
    let (status, _) = refresh_with(s, stolen, Some(&token_proof(s, &key))).await;
    assert_eq!(status, 200);
}

/// GET /userinfo with `Authorization: DPoP <token>` and `proof`.
async fn userinfo_dpop(s: &Server, token: &str, proof: &str) -> reqwest::Response {
    let request = http().get(s.url("/userinfo")).header("authorization", format!("DPoP {token}"));
    request.header("dpop", proof).send().await.unwrap()
}

async fn stolen_dpop_access_token_is_useless_without_the_key_at_userinfo(s: &Server) {
    let key = DpopClient::new("ES256").unwrap();
    let body = bound_tokens(s, &key).await;
    let token = body["access_token"].as_str().unwrap();
    let userinfo = s.url("/userinfo");
    // As a bearer token: refused, and the challenge offers DPoP.
    let r = http().get(&userinfo).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenges: Vec<&str> =
        r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(challenges.iter().any(|c| c.starts_with("DPoP ") && c.contains("algs=")), "{challenges:?}");
    // With the DPoP scheme but the thief's key.
    let thief = DpopClient::new("ES256").unwrap();
    let proof = thief.proof("GET", &userinfo, now(), Some(token), None).unwrap();
    assert_eq!(userinfo_dpop(s, token, &proof).await.status(), 401);
    // With the owner's key, but a proof for another method.
    let proof = key.proof("POST", &userinfo, now(), Some(token), None).unwrap();
    assert_eq!(userinfo_dpop(s, token, &proof).await.status(), 401);
    // The owner, properly: accepted once, and the same proof again is a replay.
    let proof = key.proof("GET", &userinfo, now(), Some(token), None).unwrap();
    assert_eq!(userinfo_dpop(s, token, &proof).await.status(), 200);
    let r = userinfo_dpop(s, token, &proof).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().is_ok());
}

async fn replayed_or_misdirected_proofs_are_refused_at_the_token_endpoint(s: &Server) {
    s.add_resource(API, &["orders:read"]).await;
    let secret = s.add_service_client("svc").await;
    let form =
        [("grant_type", "client_credentials"), ("client_id", "svc"), ("client_secret", secret.as_str())];
    let key = DpopClient::new("PS256").unwrap();
    let proof = token_proof(s, &key);
    let (status, _, body) = token_request(s, &form, Some(&proof)).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    let (status, _, body) = token_request(s, &form, Some(&proof)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "a replay");
    // The server keeps this key's checked header now: a proof with that header still needs a good signature
    // over its own claims.
    let fresh = token_proof(s, &key);
    let (header, rest) = fresh.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let other_claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"jti": "forged", "htm": "POST", "htu": s.url("/token"), "iat": now()}).to_string(),
    );
    let mut flipped = signature.as_bytes().to_vec();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [
        format!("{header}.{other_claims}.{signature}"),
        format!("{header}.{}.{flipped}", &rest[..rest.find('.').unwrap()]),
    ] {
        let (status, _, body) = token_request(s, &form, Some(&bad)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "a cached key's forgery"
        );
    }
    let (status, _, body) = token_request(s, &form, Some(&fresh)).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "the genuine proof: {body}");
    for bad in [
        key.proof("GET", &s.url("/token"), now(), None, None).unwrap(),
        key.proof("POST", &s.url("/revoke"), now(), None, None).unwrap(),
        key.proof("POST", &s.url("/token"), now() - 3600, None, None).unwrap(),
        key.proof("POST", &s.url("/token"), now() + 3600, None, None).unwrap(),
        hmac_proof(&serde_json::json!({"jti": "h1", "htm": "POST", "htu": s.url("/token"), "iat": now()}))
            .unwrap(),
        "not a proof".to_owned(),
    ] {
        let (status, _, body) = token_request(s, &form, Some(&bad)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{bad}");
    }
}

async fn client_that_requires_dpop_gets_no_bearer_tokens(s: &Server) {
    s.add_resource(API, &["orders:read"]).await;
    let secret = s.add_dpop_service_client("strict").await;
    let form =
        [("grant_type", "client_credentials"), ("client_id", "strict"), ("client_secret", secret.as_str())];
    let (status, _, body) = token_request(s, &form, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")));
    let key = DpopClient::new("EdDSA").unwrap();
    let (status, _, body) = token_request(s, &form, Some(&token_proof(s, &key))).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")));
    assert_eq!(claims(body["access_token"].as_str().unwrap())["aud"], API);
}

async fn public_family_started_without_dpop_is_bound_by_its_first_proof(s: &Server) {
    let client = setup(s).await;
    let plain = crate::browser_flow::tokens(s, &client).await;
    let first = oauth2::TokenResponse::refresh_token(&plain).unwrap().secret().clone();
    let key = DpopClient::new("EdDSA").unwrap();
    let (status, body) = refresh_with(s, &first, Some(&token_proof(s, &key))).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    let next = body["refresh_token"].as_str().unwrap();
    // From now on the family needs that key.
    let (status, answer) = refresh_with(s, next, None).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_dpop_proof")));
    let thief = DpopClient::new("EdDSA").unwrap();
    let (status, _) = refresh_with(s, next, Some(&token_proof(s, &thief))).await;
    assert_eq!(status, 400);
    let (status, _) = refresh_with(s, next, Some(&token_proof(s, &key))).await;
    assert_eq!(status, 200);
}

async fn code_requested_with_dpop_jkt_is_redeemable_only_with_that_key(s: &Server) {
    let client = setup(s).await;
    let browser = Browser::default();
    let key = DpopClient::new("EdDSA").unwrap();
    let jkt = key.thumbprint().unwrap();
    let redeem = |code: String, verifier: oauth2::PkceCodeVerifier, proof: Option<String>| async move {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", crate::common::REDIRECT),
            ("code_verifier", verifier.secret().as_str()),
            ("client_id", "spa"),
        ];
        let (status, _, body) = token_request(s, &form, proof.as_deref()).await;
        (status, body)
    };
    let extra = [("dpop_jkt", jkt.as_str())];
    // Without a proof, and with a thief's key: refused.
    let (q, verifier, _) = authorize_with(s, &browser, &client, "openid orders:read", &extra).await;
    let (status, body) = redeem(q["code"].clone(), verifier, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    let thief = DpopClient::new("EdDSA").unwrap();
    let (q, verifier, _) = authorize_with(s, &browser, &client, "openid orders:read", &extra).await;
    let (status, body) = redeem(q["code"].clone(), verifier, Some(token_proof(s, &thief))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    // With the key named in the request: DPoP-bound tokens.
    let (q, verifier, _) = authorize_with(s, &browser, &client, "openid orders:read", &extra).await;
    let (status, body) = redeem(q["code"].clone(), verifier, Some(token_proof(s, &key))).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    assert_eq!(claims(body["access_token"].as_str().unwrap())["cnf"]["jkt"], jkt.as_str());
    // A dpop_jkt that is no thumbprint is refused at the authorization endpoint, back to the client.
    let (q, _, _) = authorize_with(s, &browser, &client, "openid", &[("dpop_jkt", "not-a-thumbprint")]).await;
    assert_eq!(q["error"], "invalid_request");
}

async fn introspection_reports_the_key_binding(s: &Server) {
    s.add_resource(API, &["orders:read"]).await;
    let secret = s.add_service_client("svc").await;
    let form =
        [("grant_type", "client_credentials"), ("client_id", "svc"), ("client_secret", secret.as_str())];
    let key = DpopClient::new("EdDSA").unwrap();
    let (_, _, body) = token_request(s, &form, Some(&token_proof(s, &key))).await;
    let token = body["access_token"].as_str().unwrap();
    let r = http()
        .post(s.url("/introspect"))
        .basic_auth("svc", Some(&secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["active"], true);
    assert_eq!(info["token_type"], "DPoP");
    assert_eq!(info["cnf"]["jkt"], key.thumbprint().unwrap().as_str());
}

async fn server_nonce_is_demanded_then_accepted(backend: Backend) {
    let Some(s) = Server::start_with(backend, |c| c.dpop_nonce = true).await else { return };
    s.add_resource(API, &["orders:read"]).await;
    let secret = s.add_service_client("svc").await;
    let form =
        [("grant_type", "client_credentials"), ("client_id", "svc"), ("client_secret", secret.as_str())];
    let key = DpopClient::new("ES256").unwrap();
    let (status, headers, body) = token_request(&s, &form, Some(&token_proof(&s, &key))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("use_dpop_nonce")));
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_owned();
    let proof = key.proof("POST", &s.url("/token"), now(), None, Some(&nonce)).unwrap();
    let (status, headers, body) = token_request(&s, &form, Some(&proof)).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    assert!(headers.contains_key("dpop-nonce"), "every answer carries the current nonce");
    let proof = key.proof("POST", &s.url("/token"), now(), None, Some("made-up")).unwrap();
    let (status, _, body) = token_request(&s, &form, Some(&proof)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("use_dpop_nonce")));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_nonce_is_demanded_then_accepted_sqlite() {
    server_nonce_is_demanded_then_accepted(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_nonce_is_demanded_then_accepted_postgres() {
    server_nonce_is_demanded_then_accepted(Backend::Postgres).await;
}
