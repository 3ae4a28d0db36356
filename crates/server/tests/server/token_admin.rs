//! Revocation (RFC 7009), introspection (RFC 7662), userinfo, password changes and key rotation.

use std::time::Duration;

use oauth2::{TokenIntrospectionResponse as _, TokenResponse as _};
use serde_json::Value;
use tessera_core::{ClientKind, GrantType};
use tessera_server::keyring::{self, RotationMode};
use tessera_token::Algorithm;

use crate::browser_flow::{setup, tokens};
use crate::common::{API, Server, http};

crate::on_both_backends!(
    revocation_follows_rfc_7009,
    introspection_follows_rfc_7662,
    userinfo_needs_a_valid_bearer_token_with_openid,
    password_change_revokes_every_session,
    key_rotation_publishes_then_signs_and_emergency_revokes,
);

async fn introspect(s: &Server, id: &str, secret: &str, token: &str) -> Value {
    http()
        .post(s.url("/introspect"))
        .basic_auth(id, Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Revokes as spa, the way the oauth2 crate would (it refuses a plain-http revocation URL, as RFC 7009
/// asks; the test server is on loopback http).
async fn revoke(s: &Server, token: &str, hint: Option<&str>) {
    let mut form = vec![("token", token), ("client_id", "spa")];
    if let Some(hint) = hint {
        form.push(("token_type_hint", hint));
    }
    let r = http().post(s.url("/revoke")).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn revocation_follows_rfc_7009(s: &Server) {
    let client = setup(s).await;
    let api = s.add_resource_server("api").await;
    s.add_client("other", ClientKind::Public, &[GrantType::AuthorizationCode], &[API], &["openid"], true)
        .await;
    let t = tokens(s, &client).await;
    // Another client cannot revoke spa's tokens (and hears 200 all the same).
    let r = http()
        .post(s.url("/revoke"))
        .form(&[("token", t.refresh_token().unwrap().secret().as_str()), ("client_id", "other")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(client.exchange_refresh_token(t.refresh_token().unwrap()).request_async(&http()).await.is_ok());

    // An access token: its jti is revoked.
    let t = tokens(s, &client).await;
    assert_eq!(introspect(s, "api", &api, t.access_token().secret()).await["active"], true);
    revoke(s, t.access_token().secret(), Some("access_token")).await;
    assert_eq!(
        introspect(s, "api", &api, t.access_token().secret()).await,
        serde_json::json!({"active": false})
    );

    // A refresh token: its family dies.
    revoke(s, t.refresh_token().unwrap().secret(), Some("refresh_token")).await;
    assert!(client.exchange_refresh_token(t.refresh_token().unwrap()).request_async(&http()).await.is_err());

    // Unknown tokens answer 200.
    revoke(s, "not-a-token", None).await;
    revoke(s, "tsr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", Some("refresh_token")).await;
    let r = http().post(s.url("/revoke")).form(&[("client_id", "spa")]).send().await.unwrap();
    assert_eq!(r.status(), 400, "the token parameter is required");
}

async fn introspection_follows_rfc_7662(s: &Server) {
    let client = setup(s).await;
    let api = s.add_resource_server("api").await;
    s.add_resource("https://billing.example", &["bills:read"]).await;
    let billing = s
        .add_client(
            "billing",
            ClientKind::Confidential,
            &[GrantType::ClientCredentials],
            &["https://billing.example"],
            &["bills:read"],
            true,
        )
        .await
        .unwrap();
    let t = tokens(s, &client).await;
    let body = introspect(s, "api", &api, t.access_token().secret()).await;
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "u_alice");
    assert_eq!(body["client_id"], "spa");
    assert_eq!(body["aud"], serde_json::json!([API]));
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["sid"].is_string() && body["jti"].is_string() && body["exp"].is_i64());
    // A resource server for another audience learns nothing.
    assert_eq!(
        introspect(s, "billing", &billing, t.access_token().secret()).await,
        serde_json::json!({"active": false})
    );
    for garbage in ["", "x", "eyJhbGciOiJub25lIn0.e30.", "tsr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let body = introspect(s, "api", &api, garbage).await;
        assert!(body == serde_json::json!({"active": false}) || body["error"] == "invalid_request", "{body}");
    }
    // Client authentication is required, and public clients cannot introspect.
    let r = http()
        .post(s.url("/introspect"))
        .form(&[("token", t.access_token().secret().as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .post(s.url("/introspect"))
        .form(&[("token", t.access_token().secret().as_str()), ("client_id", "spa")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The oauth2 crate's introspection client reads the answer.
    let as_api = s.oauth("api", Some(&api));
    let answer = as_api.introspect(t.access_token()).request_async(&http()).await.unwrap();
    assert!(answer.active());
    assert_eq!(answer.sub(), Some("u_alice"));
}

async fn userinfo_needs_a_valid_bearer_token_with_openid(s: &Server) {
    setup(s).await;
    let api = s.add_resource_server("api").await;
    let r = http().get(s.url("/userinfo")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tessera\"");
    let r = http().get(s.url("/userinfo")).bearer_auth("garbage").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    let r = http().get(s.url("/userinfo")).header("authorization", "Basic eDp5").send().await.unwrap();
    assert_eq!(r.status(), 400, "RFC 6750 §3.1: a malformed request is invalid_request, 400");
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("invalid_request"));
    let cc = s.oauth("api", Some(&api)).exchange_client_credentials().request_async(&http()).await.unwrap();
    let r = http().get(s.url("/userinfo")).bearer_auth(cc.access_token().secret()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
}

async fn password_change_revokes_every_session(s: &Server) {
    let client = setup(s).await;
    let api = s.add_resource_server("api").await;
    let a = tokens(s, &client).await;
    let b = tokens(s, &client).await;
    let hash = tessera_server::passwords::hash_blocking("a brand new password").unwrap();
    s.state.store.set_password("u_alice", &hash, tessera_server::now()).await.unwrap().unwrap();
    for t in [&a, &b] {
        assert_eq!(introspect(s, "api", &api, t.access_token().secret()).await["active"], false);
        assert!(
            client.exchange_refresh_token(t.refresh_token().unwrap()).request_async(&http()).await.is_err()
        );
    }
}

async fn key_rotation_publishes_then_signs_and_emergency_revokes(s: &Server) {
    let client = setup(s).await;
    let api = s.add_resource_server("api").await;
    let old_kid = s.state.keyring().signer().kid().to_owned();
    let before = tokens(s, &client).await;
    let store = &*s.state.store;
    let next = keyring::rotate(
        store,
        &s.state.kek,
        Algorithm::ES256,
        RotationMode::Scheduled,
        tessera_server::now(),
    )
    .await
    .unwrap();
    wait_for(|| async { s.jwks().await.len() == 2 }).await;
    assert_eq!(s.state.keyring().signer().kid(), old_kid, "a scheduled key is published before it signs");
    store.activate_key(&next.kid, tessera_server::now()).await.unwrap();
    wait_for(|| async { s.state.keyring().signer().kid() == next.kid }).await;
    let after = tokens(s, &client).await;
    assert_eq!(
        introspect(s, "api", &api, before.access_token().secret()).await["active"],
        true,
        "retired keys still verify"
    );
    assert_eq!(introspect(s, "api", &api, after.access_token().secret()).await["active"], true);
    // Emergency: the ES256 key is revoked at once; its tokens stop working, new ones use the new key.
    let fresh = keyring::rotate(
        store,
        &s.state.kek,
        Algorithm::EdDSA,
        RotationMode::Emergency,
        tessera_server::now(),
    )
    .await
    .unwrap();
    assert_eq!(
        introspect(s, "api", &api, after.access_token().secret()).await,
        serde_json::json!({"active": false})
    );
    wait_for(|| async { s.state.keyring().signer().kid() == fresh.kid }).await;
    assert!(s.jwks().await.get(&next.kid).is_none(), "a revoked key is withdrawn from the JWKS");
}

async fn wait_for<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met within 10 s");
}
