//! Token exchange across two gateways (RFC 8693): the orders service trades the user's token for a narrower
//! one to call billing. Billing's gateway accepts the exchanged token and refuses the user's original one
//! (lateral movement); a scope the user never had cannot be obtained; revoking the user's session kills the
//! exchanged token at billing within a second.

use std::time::Duration;

use serde_json::Value;
use tessera_core::{GrantType, RevocationKind, SecretKind};
use tessera_store::{Client, NewRevocation};

use crate::harness::{
    API, Backend, Front, Grant, OTHER_API, Options, World, eventually, get, service_client,
};

const SERVICE: &str = "orders-svc";
const BILLING_GATEWAY: &str = "billing-gateway";
const BILLING_POLICY: &str = r#"
default = "deny"

[[route]]
method = "GET"
path = "/invoices/{id}"
scopes = ["billing:read"]
"#;

/// The orders service's own client, allowed to exchange tokens for billing; returns its secret.
async fn add_service(w: &World) -> String {
    let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
    let client = Client {
        secret_hash: Some(secret.hash()),
        grant_types: vec![GrantType::TokenExchange],
        scopes: vec!["orders:read".into(), "billing:read".into()],
        exchange_audiences: vec![OTHER_API.into()],
        ..service_client(SERVICE, &[API])
    };
    w.server.state.store.create_client(&client).await.unwrap();
    w.server.add_user("u_alice", "alice", "correct horse battery").await;
    secret.expose().to_owned()
}

/// The orders service asks for a billing token with `subject`; returns the status and the JSON body.
async fn exchange(w: &World, secret: &str, subject: &str, scope: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", subject),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("resource", OTHER_API),
        ("scope", scope),
    ];
    let r = reqwest::Client::new()
        .post(format!("{}/token", w.server.issuer()))
        .basic_auth(SERVICE, Some(secret))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().await.unwrap()).unwrap())
}

/// Billing's gateway, in front of the same upstream, following the same server.
async fn start_billing(w: &World) -> Front {
    let gateway_secret = w.server.add_client(BILLING_GATEWAY, &[OTHER_API]).await;
    let options = Options { policy: BILLING_POLICY, ..Options::default() };
    Front::start(&w.server, &w.upstream, OTHER_API, BILLING_GATEWAY, &gateway_secret, &options).await
}

/// Revokes `subject` for tokens issued up to now.
async fn revoke(w: &World, kind: RevocationKind, subject: &str) {
    let now = tessera_server::now();
    let entry = NewRevocation {
        kind,
        subject: subject.into(),
        not_before: Some(now),
        expires_at: now + tessera_store::REVOCATION_HORIZON_SECS,
        reason: "test".into(),
    };
    w.server.state.store.revoke(&entry, now).await.unwrap();
}

/// Whether billing refuses `token` within a second.
async fn refused_within_a_second(billing: &Front, token: &str) -> bool {
    eventually(Duration::from_secs(1), || async {
        billing.raw(&get("/invoices/9", Some(token))).await == 401
    })
    .await
    .is_some()
}

#[tokio::test]
async fn exchanged_token_works_at_the_next_service_and_the_original_does_not() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let secret = add_service(&w).await;
    let billing = start_billing(&w).await;

    // Alice's token, as the orders service received it.
    let (user_token, _) = w.token(Grant { scope: "orders:read billing:read", ..Grant::default() });
    assert_eq!(w.raw(&get("/orders/1", Some(&user_token))).await, 200);

    let (status, body) = exchange(&w, &secret, &user_token, "billing:read").await;
    assert_eq!(status, 200, "{body}");
    let exchanged = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(billing.raw(&get("/invoices/9", Some(&exchanged))).await, 200, "billing accepts it");
    let seen = w.upstream.last();
    assert_eq!(
        (seen.path_and_query.as_str(), seen.header("x-tessera-sub")),
        ("/invoices/9", Some("u_alice"))
    );

    // The user's own token at billing is lateral movement, and the exchanged one is no good at orders.
    assert_eq!(billing.raw(&get("/invoices/9", Some(&user_token))).await, 401);
    assert_eq!(w.raw(&get("/orders/1", Some(&exchanged))).await, 401);
    let store = &w.server.state.store;
    let reported = eventually(Duration::from_secs(5), || async {
        let events = store.recent_events(Some("lateral_movement_attempt"), 10).await.unwrap();
        events.iter().any(|e| e.audience.as_deref() == Some(API) || e.client_id.as_deref() == Some("web"))
    })
    .await;
    assert!(reported.is_some(), "billing's guard reports the original token as lateral movement");

    // Revoking alice's session kills the exchanged token at billing within a second.
    revoke(&w, RevocationKind::Session, "fam_alice_1").await;
    assert!(refused_within_a_second(&billing, &exchanged).await, "the exchanged token dies with the session");

    billing.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn exchanged_token_dies_at_the_next_service_with_the_original_token_or_client() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let secret = add_service(&w).await;
    let billing = start_billing(&w).await;
    let store = &w.server.state.store;

    // The user's token itself is revoked (RFC 7009 by the web app, or an admin): the exchanged one dies.
    let (user_token, jti) = w.token(Grant { scope: "billing:read", ..Grant::default() });
    let (status, body) = exchange(&w, &secret, &user_token, "billing:read").await;
    assert_eq!(status, 200, "{body}");
    let exchanged = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(billing.raw(&get("/invoices/9", Some(&exchanged))).await, 200);
    revoke(&w, RevocationKind::Token, &jti).await;
    assert!(
        refused_within_a_second(&billing, &exchanged).await,
        "the original token's revocation reaches billing"
    );

    // The user's client is revoked: every token exchanged from its tokens dies with them.
    let (user_token, _) =
        w.token(Grant { scope: "billing:read", sid: Some("fam_alice_2"), ..Grant::default() });
    let (status, body) = exchange(&w, &secret, &user_token, "billing:read").await;
    assert_eq!(status, 200, "{body}");
    let exchanged = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(billing.raw(&get("/invoices/9", Some(&exchanged))).await, 200);
    revoke(&w, RevocationKind::Client, "web").await;
    assert!(
        refused_within_a_second(&billing, &exchanged).await,
        "the original client's revocation reaches billing"
    );
    let reported = eventually(Duration::from_secs(5), || async {
        let rejected = store.recent_events(Some("token_rejected"), 50).await.unwrap();
        rejected.iter().any(|e| e.reason.as_deref() == Some("revoked_origin"))
    })
    .await;
    assert!(reported.is_some(), "billing's guard reports why: the token it came from was revoked");

    billing.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn exchange_cannot_add_a_scope_the_user_never_had() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let secret = add_service(&w).await;
    let (orders_only, _) = w.token(Grant { scope: "orders:read", ..Grant::default() });
    let (status, body) = exchange(&w, &secret, &orders_only, "billing:read").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");
    w.finish().await;
}
