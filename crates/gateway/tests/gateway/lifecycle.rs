//! Revocation propagation for every subject, reconnection across a server restart, staleness, JWKS rotation,
//! lateral movement and usage events.

use std::time::Duration;

use tessera_core::RevocationKind;
use tessera_server::keyring::{self, RotationMode};
use tessera_store::NewRevocation;
use tessera_token::Algorithm;

use crate::harness::{API, Backend, Grant, OTHER_API, Options, World, eventually, get};

async fn revoke(w: &World, kind: RevocationKind, subject: &str) {
    let now = tessera_server::now();
    let entry = NewRevocation {
        kind,
        subject: subject.into(),
        not_before: None,
        expires_at: now + tessera_store::REVOCATION_HORIZON_SECS,
        reason: "test".into(),
    };
    w.server.state.store.revoke(&entry, now).await.unwrap();
}

/// Waits for the first refused request after a revocation; returns the delay.
async fn refused_within(w: &World, token: &str, limit: Duration) -> Duration {
    eventually(limit, || async { w.raw(&get("/orders/1", Some(token))).await == 401 })
        .await
        .unwrap_or_else(|| panic!("not refused within {limit:?}"))
}

async fn propagation_for_every_subject(backend: Backend) {
    let Some(w) = World::start(backend).await else { return };
    let limit = Duration::from_secs(1);
    let store = &w.server.state.store;

    let (by_jti, jti) = w.token(Grant { sub: "u_1", sid: Some("s_1"), client_id: "c_1", ..Grant::default() });
    assert_eq!(w.raw(&get("/orders/1", Some(&by_jti))).await, 200);
    revoke(&w, RevocationKind::Token, &jti).await;
    refused_within(&w, &by_jti, limit).await;

    let (by_sid, _) = w.token(Grant { sub: "u_2", sid: Some("s_2"), client_id: "c_2", ..Grant::default() });
    let (same_session, _) =
        w.token(Grant { sub: "u_2", sid: Some("s_2"), client_id: "c_2", ..Grant::default() });
    assert_eq!(w.raw(&get("/orders/1", Some(&by_sid))).await, 200);
    revoke(&w, RevocationKind::Session, "s_2").await;
    refused_within(&w, &by_sid, limit).await;
    assert_eq!(w.raw(&get("/orders/1", Some(&same_session))).await, 401, "every token of the session");

    let (by_sub, _) = w.token(Grant { sub: "u_3", sid: Some("s_3"), client_id: "c_3", ..Grant::default() });
    assert_eq!(w.raw(&get("/orders/1", Some(&by_sub))).await, 200);
    store.revoke_user("u_3", "test", false, tessera_server::now()).await.unwrap();
    refused_within(&w, &by_sub, limit).await;

    let (by_client, _) = w.token(Grant { sub: "c_4", sid: None, client_id: "c_4", ..Grant::default() });
    assert_eq!(w.raw(&get("/orders/1", Some(&by_client))).await, 200);
    store.revoke_client("c_4", "test", tessera_server::now()).await.unwrap();
    refused_within(&w, &by_client, limit).await;

    // Unrelated tokens are untouched by all of the above.
    let (bystander, _) =
        w.token(Grant { sub: "u_5", sid: Some("s_5"), client_id: "c_5", ..Grant::default() });
    assert_eq!(w.raw(&get("/orders/1", Some(&bystander))).await, 200);

    // A key revoked by an emergency rotation stops validating at once.
    let old_kid = w.kid();
    keyring::rotate(
        store.as_ref(),
        &w.server.state.kek,
        Algorithm::EdDSA,
        RotationMode::Emergency,
        tessera_server::now(),
    )
    .await
    .unwrap();
    refused_within(&w, &bystander, limit).await;
    let seq = store.revocation_seq().await.unwrap();
    eventually(limit, || async { w.gateway.guard().revocation_seq() == seq })
        .await
        .expect("every entry applied");
    let _ = old_kid;
    w.finish().await;
}

#[tokio::test]
async fn revocation_of_jti_sid_sub_client_and_kid_reaches_the_gateway_within_a_second_sqlite() {
    propagation_for_every_subject(Backend::Sqlite).await;
}

#[tokio::test]
async fn revocation_of_jti_sid_sub_client_and_kid_reaches_the_gateway_within_a_second_postgres() {
    propagation_for_every_subject(Backend::Postgres).await;
}

#[tokio::test]
async fn guard_resumes_across_a_server_restart_without_missing_an_entry() {
    let mut w = World::start(Backend::Sqlite).await.unwrap();
    let (before, before_jti) = w.token(Grant { sub: "u_b", ..Grant::default() });
    let (during, during_jti) = w.token(Grant { sub: "u_d", ..Grant::default() });
    let (after, _) = w.token(Grant { sub: "u_a", ..Grant::default() });
    revoke(&w, RevocationKind::Token, &before_jti).await;
    refused_within(&w, &before, Duration::from_secs(1)).await;
    assert_eq!(w.raw(&get("/orders/1", Some(&during))).await, 200);

    w.server.stop().await;
    // Revoked while the server is down (as `tessera revoke` would, straight into the database).
    revoke(&w, RevocationKind::Token, &during_jti).await;
    w.server.restart().await;

    let took = refused_within(&w, &during, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(10));
    assert_eq!(
        w.raw(&get("/orders/1", Some(&before))).await,
        401,
        "an entry from before the restart is kept"
    );
    assert_eq!(w.raw(&get("/orders/1", Some(&after))).await, 200);
    let seq = w.server.state.store.revocation_seq().await.unwrap();
    assert_eq!(w.gateway.guard().revocation_seq(), seq);
    w.finish().await;
}

#[tokio::test]
async fn stale_revocation_state_answers_503() {
    let mut w = World::start_with(
        Backend::Sqlite,
        Options { staleness: Duration::from_secs(2), ..Options::default() },
    )
    .await
    .unwrap();
    let (token, _) = w.token(Grant::default());
    w.server.stop().await;
    let stale =
        eventually(Duration::from_secs(10), || async { w.raw(&get("/orders/1", Some(&token))).await == 503 })
            .await;
    assert!(stale.is_some(), "503 once nothing was heard within the staleness bound");
    let ready = reqwest::get(w.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(w.raw(&get("/public/x", None)).await, 200, "public routes need no revocation state");
    w.server.restart().await;
    let fresh =
        eventually(Duration::from_secs(10), || async { w.raw(&get("/orders/1", Some(&token))).await == 200 })
            .await;
    assert!(fresh.is_some(), "service resumes once the stream is back");
    w.finish().await;
}

#[tokio::test]
async fn jwks_rotation_new_kid_is_picked_up_and_retired_key_keeps_working_until_removed() {
    let options = Options { jwks_refresh: Some(Duration::from_millis(300)), ..Options::default() };
    let w = World::start_with(Backend::Sqlite, options).await.unwrap();
    let (old_token, _) = w.token(Grant::default());
    let old_kid = w.kid();
    let state = &w.server.state;
    keyring::rotate(
        state.store.as_ref(),
        &state.kek,
        Algorithm::EdDSA,
        RotationMode::Immediate,
        tessera_server::now(),
    )
    .await
    .unwrap();
    let switched = eventually(Duration::from_secs(10), || async { w.kid() != old_kid }).await;
    assert!(switched.is_some(), "the server switched keys");
    let (new_token, _) = w.token(Grant { sub: "u_new", ..Grant::default() });
    assert_eq!(
        w.raw(&get("/orders/1", Some(&new_token))).await,
        200,
        "the new kid is fetched on first sight"
    );
    assert_eq!(w.raw(&get("/orders/1", Some(&old_token))).await, 200, "the retired key still validates");
    // Once no token it signed can still be valid, housekeeping deletes the retired key; the server stops
    // publishing it, and the guard drops it at its next JWKS refresh.
    let later = tessera_server::now() + tessera_store::REVOCATION_HORIZON_SECS + 1;
    keyring::housekeeping(state.store.as_ref(), state.config.key_publish_delay, later).await.unwrap();
    assert!(state.store.list_keys().await.unwrap().iter().all(|k| k.kid != old_kid), "the key is deleted");
    let dropped = eventually(Duration::from_secs(10), || async {
        w.raw(&get("/orders/1", Some(&old_token))).await == 401
    })
    .await;
    assert!(dropped.is_some(), "a token signed by the removed key is refused");
    assert_eq!(w.raw(&get("/orders/1", Some(&new_token))).await, 200, "the current key still validates");
    w.finish().await;
}

#[tokio::test]
async fn lateral_movement_is_refused_and_recorded_with_sid_sub_and_client_id() {
    let webhook = tessera_testkit::Receiver::start(200).await;
    let options = Options { webhook_url: Some(webhook.url.clone()), ..Options::default() };
    let w = World::start_with(Backend::Sqlite, options).await.unwrap();
    // The same session's token for this service works, until the probe below is detected.
    let (own, _) = w.token(Grant { sub: "u_mallory", sid: Some("s_m"), ..Grant::default() });
    assert_eq!(w.raw(&get("/orders/1", Some(&own))).await, 200);
    let (billing, jti) = w.token(Grant {
        audience: OTHER_API,
        scope: "billing:read",
        sub: "u_mallory",
        sid: Some("s_m"),
        client_id: "billing-app",
        ..Grant::default()
    });
    assert_eq!(w.raw(&get("/orders/1", Some(&billing))).await, 401);
    assert_eq!(w.upstream.count(), 1, "only the session's own token reached the upstream");
    let store = &w.server.state.store;
    let found = eventually(Duration::from_secs(5), || async {
        !store.recent_events(Some("lateral_movement_attempt"), 10).await.unwrap().is_empty()
    })
    .await;
    assert!(found.is_some(), "the event reached the server");
    let events = store.recent_events(Some("lateral_movement_attempt"), 10).await.unwrap();
    let e = &events[0];
    assert_eq!(e.sub.as_deref(), Some("u_mallory"));
    assert_eq!(e.sid.as_deref(), Some("s_m"));
    assert_eq!(e.client_id.as_deref(), Some("billing-app"));
    assert_eq!(e.jti.as_deref(), Some(jti.as_str()));
    assert_eq!(e.audience.as_deref(), Some(API), "recorded against the service it was tried at");
    assert_eq!(e.ip.as_deref(), Some("127.0.0.1"));
    let detail = e.detail.as_deref().unwrap();
    assert!(detail.contains(OTHER_API), "the token's own audience is kept: {detail}");
    assert!(e.route.as_deref().is_some_and(|r| r.contains("/orders/{id}")), "{:?}", e.route);
    assert_eq!(e.outcome.as_deref(), Some("refused"));
    assert!(e.service.is_some(), "the reporting service is recorded");
    // The detector raises lateral_movement_probe and revokes the session: its other tokens stop working.
    let raised = eventually(Duration::from_secs(5), || async {
        !store.recent_events(Some("detection_raised"), 10).await.unwrap().is_empty()
    })
    .await;
    assert!(raised.is_some(), "lateral_movement_probe raised");
    let raised = store.recent_events(Some("detection_raised"), 10).await.unwrap();
    let probe = raised.iter().find(|d| d.reason.as_deref() == Some("lateral_movement_probe")).unwrap();
    assert_eq!(probe.sid.as_deref(), Some("s_m"));
    assert!(probe.detail.as_deref().unwrap().contains(API), "names the service it was tried at");
    let refused =
        eventually(Duration::from_secs(2), || async { w.raw(&get("/orders/1", Some(&own))).await == 401 })
            .await;
    assert!(refused.is_some(), "the session's own token is refused once the probe is answered");
    // The response's own record follows the revocation it describes.
    let recorded = eventually(Duration::from_secs(2), || async {
        let responses = store.recent_events(Some("response_taken"), 10).await.unwrap();
        responses.iter().any(|r| r.reason.as_deref() == Some("revoke_session"))
    })
    .await;
    assert!(recorded.is_some(), "the revocation is recorded as a response_taken event");
    // The signed alert names the session, the services it was tried at, and what was done.
    let got = webhook.wait_for(Duration::from_secs(10), |g| !g.is_empty()).await;
    let alert = got.first().expect("the alert arrived");
    assert!(crate::harness::signed(alert), "signed with the webhook secret");
    let body = alert.json();
    assert_eq!(body["detection"]["rule"], "lateral_movement_probe");
    assert_eq!(body["detection"]["sid"], "s_m");
    assert_eq!(body["detection"]["severity"], "high");
    assert!(body["detection"]["explanation"].as_str().unwrap().contains(API), "{body}");
    assert_eq!(body["responses"][0]["action"], "revoke_session");
    assert_eq!(body["responses"][1], serde_json::json!({ "action": "alert", "result": "queued" }));
    w.finish().await;
}

#[tokio::test]
async fn usage_is_counted_per_token_and_route_and_stored() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let (token, jti) = w.token(Grant::default());
    for _ in 0..3 {
        assert_eq!(w.raw(&get("/orders/1", Some(&token))).await, 200);
    }
    assert_eq!(w.raw(&get("/orders/1", Some("x.y.z"))).await, 401);
    let store = &w.server.state.store;
    let found = eventually(Duration::from_secs(5), || async {
        let used = store.recent_events(Some("token_used"), 10).await.unwrap();
        let rejected = store.recent_events(Some("token_rejected"), 10).await.unwrap();
        !used.is_empty() && !rejected.is_empty()
    })
    .await;
    assert!(found.is_some(), "usage events arrived");
    let used = store.recent_events(Some("token_used"), 10).await.unwrap();
    let total: u64 = used
        .iter()
        .filter(|e| e.jti.as_deref() == Some(jti.as_str()))
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e.detail.as_deref().unwrap()).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 3, "three uses of one token on one route");
    let rejected = store.recent_events(Some("token_rejected"), 10).await.unwrap();
    assert_eq!(rejected[0].reason.as_deref(), Some("invalid_base64"));
    w.finish().await;
}
