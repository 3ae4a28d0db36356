//! Refresh-token rotation: one successor per token, retries inside the window, reuse kills the family.

use std::sync::Arc;

use oauth2::{RefreshToken, Scope, TokenResponse as _};
use serde_json::Value;
use tessera_core::{ClientKind, GrantType};

use crate::browser_flow::{setup, tokens};
use crate::common::{API, Server, http};

crate::on_both_backends!(
    refresh_rotates_on_every_use,
    refresh_reuse_revokes_family,
    refresh_retry_inside_the_window_returns_the_same_successor,
    refresh_scope_narrows_per_access_token_and_the_token_is_bound_to_its_client,
    fifty_concurrent_refreshes_yield_one_successor,
    refresh_reuse_is_detected_and_answered_within_a_second,
);

async fn refresh(s: &Server, token: &str, client_id: &str) -> (u16, Value) {
    let r = http()
        .post(s.url("/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token), ("client_id", client_id)])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn refresh_rotates_on_every_use(s: &Server) {
    let client = setup(s).await;
    let first = tokens(s, &client).await;
    let r0 = first.refresh_token().unwrap().clone();
    let second = client.exchange_refresh_token(&r0).request_async(&http()).await.unwrap();
    let r1 = second.refresh_token().unwrap().clone();
    assert_ne!(r0.secret(), r1.secret());
    let third = client.exchange_refresh_token(&r1).request_async(&http()).await.unwrap();
    assert_ne!(third.refresh_token().unwrap().secret(), r1.secret());
    assert_ne!(third.access_token().secret(), second.access_token().secret());
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_tokens_issued_total{grant=\"refresh_token\"} 2"), "{metrics}");
    // Every issuance is on the audit log by the time the client has its tokens, by jti, never the token.
    let jwks = s.jwks().await;
    let jti = |token: &str| {
        let policy = tessera_token::Validation::access_token(&s.state.config.issuer, API);
        let now = tessera_token::UnixTime(tessera_server::now() as u64);
        tessera_token::validate_access_token(token, &jwks, &policy, now).unwrap().jti
    };
    let issued = s.state.store.recent_events(Some("token_issued"), 10).await.unwrap();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].jti.as_deref(), Some(jti(first.access_token().secret()).as_str()));
    assert_eq!(issued[0].reason.as_deref(), Some("authorization_code"));
    let refreshed = s.state.store.recent_events(Some("token_refreshed"), 10).await.unwrap();
    assert_eq!(refreshed.len(), 2);
    assert_eq!(refreshed[0].jti.as_deref(), Some(jti(third.access_token().secret()).as_str()));
    for e in issued.iter().chain(&refreshed) {
        assert_eq!(e.client_id.as_deref(), Some("spa"));
        assert_eq!(e.audience.as_deref(), Some(API));
        assert_eq!(e.sid, issued[0].sid, "one session");
        assert!(e.sid.is_some() && e.sub.is_some() && e.ip.is_some());
        let detail = e.detail.as_deref().unwrap();
        // The refresh token issued, by an 8-hex-digit hash prefix only (what a lineage needs).
        let prefix: serde_json::Value = serde_json::from_str(detail).unwrap();
        let prefix = prefix["refresh_token"].as_str().unwrap();
        assert!(prefix.len() == 8 && prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{detail}");
        assert!(!detail.contains("tsr_") && !detail.contains("eyJ"), "no token in the log: {detail}");
    }
}

async fn refresh_reuse_revokes_family(s: &Server) {
    let client = setup(s).await;
    let first = tokens(s, &client).await;
    let r0 = first.refresh_token().unwrap().clone();
    let r1 = client
        .exchange_refresh_token(&r0)
        .request_async(&http())
        .await
        .unwrap()
        .refresh_token()
        .unwrap()
        .clone();
    let latest = client.exchange_refresh_token(&r1).request_async(&http()).await.unwrap();
    // r0 comes back after its successor was used: theft.
    let (status, body) = refresh(s, r0.secret(), "spa").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    // The whole family is dead: the newest refresh token and its access token too.
    let (status, _) = refresh(s, latest.refresh_token().unwrap().secret(), "spa").await;
    assert_eq!(status, 400);
    let r = http().get(s.url("/userinfo")).bearer_auth(latest.access_token().secret()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let events = s.state.store.recent_events(Some("refresh_token_reuse"), 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sub.as_deref(), Some("u_alice"));
    assert_eq!(events[0].client_id.as_deref(), Some("spa"));
    assert!(events[0].jti.as_deref().unwrap().starts_with("sha256:"), "a hash prefix, never the token");
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_refresh_token_reuse_total 1"), "{metrics}");
}

async fn refresh_retry_inside_the_window_returns_the_same_successor(s: &Server) {
    let client = setup(s).await;
    let first = tokens(s, &client).await;
    let r0 = first.refresh_token().unwrap().clone();
    let a = client.exchange_refresh_token(&r0).request_async(&http()).await.unwrap();
    let b = client.exchange_refresh_token(&r0).request_async(&http()).await.unwrap();
    assert_eq!(a.refresh_token().unwrap().secret(), b.refresh_token().unwrap().secret());
    // The family lives on: the successor rotates normally.
    assert!(client.exchange_refresh_token(a.refresh_token().unwrap()).request_async(&http()).await.is_ok());
    assert!(s.state.store.recent_events(Some("refresh_token_reuse"), 10).await.unwrap().is_empty());
}

async fn refresh_scope_narrows_per_access_token_and_the_token_is_bound_to_its_client(s: &Server) {
    let client = setup(s).await;
    s.add_client(
        "other",
        ClientKind::Public,
        &[GrantType::AuthorizationCode, GrantType::RefreshToken],
        &[API],
        &["openid"],
        true,
    )
    .await;
    let first = tokens(s, &client).await;
    let r0 = first.refresh_token().unwrap().clone();
    let widened = client
        .exchange_refresh_token(&r0)
        .add_scope(Scope::new("orders:write".into()))
        .request_async(&http())
        .await;
    assert!(widened.is_err(), "scope can only narrow");
    // Another client presenting the token gets nothing, and the token still works for its own client.
    let (status, body) = refresh(s, r0.secret(), "other").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    let narrowed = client
        .exchange_refresh_token(&r0)
        .add_scope(Scope::new("orders:read".into()))
        .request_async(&http())
        .await
        .unwrap();
    assert_eq!(narrowed.scopes().unwrap().iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["orders:read"]);
    // RFC 6749 §6: the successor keeps the original scope; only that access token was narrowed.
    let again = client
        .exchange_refresh_token(narrowed.refresh_token().unwrap())
        .request_async(&http())
        .await
        .unwrap();
    let scopes: Vec<String> = again.scopes().unwrap().iter().map(|s| s.to_string()).collect();
    assert_eq!(scopes, ["openid", "orders:read", "profile"]);
    assert!(
        client
            .exchange_refresh_token(&RefreshToken::new("tsr_not-a-token".into()))
            .request_async(&http())
            .await
            .is_err()
    );
}

async fn fifty_concurrent_refreshes_yield_one_successor(s: &Server) {
    let client = setup(s).await;
    let first = tokens(s, &client).await;
    let r0 = first.refresh_token().unwrap().secret().clone();
    let base = Arc::new(s.url("/token"));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (base, r0) = (Arc::clone(&base), r0.clone());
        tasks.push(tokio::spawn(async move {
            let r = http()
                .post(base.as_str())
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", r0.as_str()),
                    ("client_id", "spa"),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut successors = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        successors.insert(body["refresh_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(successors.len(), 1, "every retry gets the one successor");
    let successor = successors.into_iter().next().unwrap();
    let (_, family) =
        s.state.store.refresh_token(&tessera_core::TokenHash::of(&successor)).await.unwrap().unwrap();
    assert!(family.revoked_at.is_none());
    let (status, _) = refresh(s, &successor, "spa").await;
    assert_eq!(status, 200);
    // Now r0's successor is spent; r0 once more is reuse and kills the family.
    let (status, _) = refresh(s, &r0, "spa").await;
    assert_eq!(status, 400);
    assert!(s.state.store.family(&family.id).await.unwrap().unwrap().revoked_at.is_some());
}

/// Waits up to `secs` for at least `n` events of `kind`.
async fn events_within(s: &Server, kind: &str, n: usize, secs: u64) -> Vec<tessera_store::Event> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let found = s.state.store.recent_events(Some(kind), 10).await.unwrap();
        if found.len() >= n || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn refresh_reuse_is_detected_and_answered_within_a_second(s: &Server) {
    let client = setup(s).await;
    let first = tokens(s, &client).await;
    let r0 = first.refresh_token().unwrap().clone();
    let second = client.exchange_refresh_token(&r0).request_async(&http()).await.unwrap();
    // The successor is used, so r0 coming back is reuse, not a retry.
    client.exchange_refresh_token(second.refresh_token().unwrap()).request_async(&http()).await.unwrap();
    let reused_at = tokio::time::Instant::now();
    assert_eq!(refresh(s, r0.secret(), "spa").await.0, 400);
    let raised = events_within(s, "detection_raised", 1, 2).await;
    assert_eq!(raised.len(), 1, "raised once");
    // Two actions: the session revoked, then the alert.
    let responses = events_within(s, "response_taken", 2, 2).await;
    // The detector polls every 250 ms; 2 s leaves room for a loaded CI machine.
    assert!(reused_at.elapsed() < std::time::Duration::from_secs(2), "{:?}", reused_at.elapsed());
    let d = &raised[0];
    assert_eq!((d.reason.as_deref(), d.outcome.as_deref()), (Some("refresh_token_reuse"), Some("critical")));
    let detail: Value = serde_json::from_str(d.detail.as_deref().unwrap()).unwrap();
    assert!(detail["explanation"].as_str().unwrap().contains("presented again after it had been rotated"));
    assert!(!detail["evidence"].as_array().unwrap().is_empty(), "names the events that prove it");
    let actions: Vec<_> = responses.iter().map(|r| r.reason.as_deref().unwrap()).collect();
    assert!(actions.contains(&"revoke_session") && actions.contains(&"alert"), "{actions:?}");
    for r in &responses {
        assert_eq!(r.sid, d.sid, "the response names the session it acted on");
        assert!(r.detail.as_deref().unwrap().contains("refresh_token_reuse|sid:"), "linked to its detection");
    }
    // The responses run beside the record of the detection, but the log keeps cause before effect.
    let query = tessera_store::AuditQuery {
        kinds: vec!["detection_raised".into(), "response_taken".into()],
        limit: 10,
        ..tessera_store::AuditQuery::default()
    };
    let order: Vec<String> =
        s.state.store.audit_events(&query).await.unwrap().into_iter().map(|r| r.event.kind).collect();
    assert_eq!(order, ["detection_raised", "response_taken", "response_taken"]);
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_detections_total{rule=\"refresh_token_reuse\"} 1"), "{metrics}");
    assert!(metrics.contains("tessera_responses_total{action=\"revoke_session\"} 1"), "{metrics}");
    // The rounds that follow raise nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(s.state.store.recent_events(Some("detection_raised"), 10).await.unwrap().len(), 1);
}
