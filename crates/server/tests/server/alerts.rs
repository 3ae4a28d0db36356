//! Alerts leave the server: a detection reaches a test webhook (with a valid signature) and a test SET
//! receiver (with tokens that verify against the issuer's keys), and survives a receiver outage.

use std::time::Duration;

use oauth2::TokenResponse as _;
use serde_json::Value;
use tessera_server::alerts::{CAEP_SESSION_REVOKED, DETECTION_EVENT};
use tessera_store::AuditQuery;
use tessera_testkit::{Received, Receiver};
use tessera_token::UnverifiedJwt;

use crate::browser_flow::{setup, tokens};
use crate::common::{Backend, Server, http};

const SECRET: &str = "whsec-0123456789abcdef0123456789abcdef";

/// Each test once per backend, with its receivers started first.
macro_rules! alert_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(crate::common::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(crate::common::Backend::Postgres).await }
            )*
        }
    };
}

alert_tests!(
    refresh_reuse_alert_reaches_the_webhook_signed_and_the_set_receiver_verifiable,
    alert_survives_a_webhook_outage
);

async fn start(backend: Backend, webhook: &Receiver, set: Option<&Receiver>) -> Option<Server> {
    let webhook = webhook.url.clone();
    let set = set.map(|r| r.url.clone()).unwrap_or_default();
    Server::start_with(backend, move |c| {
        c.alerts.webhook_url = webhook;
        c.alerts.webhook_secret = SECRET.into();
        c.alerts.set_url = set;
        c.refresh_retry_window = 0;
    })
    .await
}

/// Signs in, refreshes, and presents the rotated token again: refresh-token reuse.
async fn reuse_a_refresh_token(s: &Server) {
    let client = setup(s).await;
    let first = tokens(s, &client).await;
    let r0 = first.refresh_token().unwrap().clone();
    client.exchange_refresh_token(&r0).request_async(&http()).await.unwrap();
    let r = http()
        .post(s.url("/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", r0.secret()), ("client_id", "spa")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

async fn refresh_reuse_alert_reaches_the_webhook_signed_and_the_set_receiver_verifiable(backend: Backend) {
    let webhook = Receiver::start(200).await;
    let set = Receiver::start(202).await;
    let Some(s) = start(backend, &webhook, Some(&set)).await else { return };
    reuse_a_refresh_token(&s).await;

    let got = webhook.wait_for(Duration::from_secs(10), |g| !g.is_empty()).await;
    assert_eq!(got.len(), 1, "one alert, delivered once");
    let alert = &got[0];
    assert!(alert.signed_with(SECRET), "signed with the configured secret");
    assert!(!alert.signed_with("another secret that is long enough......"), "and only with it");
    assert_eq!(alert.header("content-type"), "application/json");
    let body = alert.json();
    assert_eq!(alert.header("tessera-alert-id"), body["id"].as_str().unwrap());
    let detection = &body["detection"];
    assert_eq!(detection["rule"], "refresh_token_reuse");
    assert_eq!(detection["severity"], "critical");
    assert!(detection["explanation"].as_str().unwrap().contains("presented again"));
    assert_eq!(body["responses_complete"], true);
    let responses = body["responses"].as_array().unwrap();
    assert_eq!(responses[0]["action"], "revoke_session");
    // The token endpoint already killed the family when the token came back; the response confirms it.
    assert_eq!(responses[0]["result"], "already_revoked");
    assert_eq!(responses[1]["action"], "alert");
    // The evidence names audit events, and the reuse itself is one of them.
    let evidence: Vec<i64> =
        detection["evidence"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let mut kinds = Vec::new();
    for seq in &evidence {
        let q = AuditQuery { after_seq: seq - 1, limit: 1, ..AuditQuery::default() };
        kinds.push(s.state.store.audit_events(&q).await.unwrap()[0].event.kind.clone());
    }
    assert!(kinds.iter().any(|k| k == "refresh_token_reuse"), "{kinds:?}");

    // Two SETs: the detection and the CAEP session revocation, each verifiable with the issuer's JWKS.
    let sets = set.wait_for(Duration::from_secs(10), |g| g.len() >= 2).await;
    assert_eq!(sets.len(), 2);
    let jwks = s.jwks().await;
    let mut types = Vec::new();
    for r in &sets {
        assert_eq!(r.header("content-type"), "application/secevent+jwt");
        let text = std::str::from_utf8(&r.body).unwrap();
        let verified = UnverifiedJwt::parse(text).unwrap().verify(&jwks).unwrap();
        assert_eq!(verified.header().typ.as_deref(), Some("secevent+jwt"));
        let claims: Value = serde_json::from_slice(verified.payload()).unwrap();
        assert_eq!(claims["iss"], s.state.config.issuer.as_str());
        assert_eq!(claims["aud"], set.url.as_str());
        assert_eq!(claims["txn"], detection["key"]);
        assert!(claims.get("exp").is_none(), "a SET is not an access token");
        let events = claims["events"].as_object().unwrap();
        assert_eq!(events.len(), 1, "one event per SET");
        let (kind, event) = events.iter().next().unwrap();
        if kind == CAEP_SESSION_REVOKED {
            assert_eq!(claims["sub_id"]["format"], "complex");
            assert_eq!(claims["sub_id"]["session"]["id"], detection["sid"]);
            assert_eq!(claims["sub_id"]["user"]["sub"], detection["sub"]);
            assert_eq!(event["initiating_entity"], "policy");
        } else {
            assert_eq!(kind, DETECTION_EVENT);
            assert_eq!(event["detection"]["rule"], "refresh_token_reuse");
        }
        types.push(kind.clone());
    }
    types.sort();
    assert_eq!(types, [CAEP_SESSION_REVOKED, DETECTION_EVENT]);

    // The audit trail links the detection to its alerts and its responses.
    let raised = s.state.store.recent_events(Some("detection_raised"), 5).await.unwrap();
    let detail: Value = serde_json::from_str(raised[0].detail.as_deref().unwrap()).unwrap();
    let ids: Vec<&str> =
        detail["alerts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&body["id"].as_str().unwrap()));
    let taken = s.state.store.recent_events(Some("response_taken"), 5).await.unwrap();
    let alert_response = taken.iter().find(|e| e.reason.as_deref() == Some("alert")).unwrap();
    assert_eq!(alert_response.outcome.as_deref(), Some("queued"));

    // Delivered rows are marked so, and the depth gauge comes back to zero.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
        if m.contains("tessera_alert_outbox_depth 0") || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("tessera_alert_outbox_depth 0"), "{metrics}");
    assert!(
        metrics.contains("tessera_alert_deliveries_total{sink=\"webhook\",outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    let delivered = s.state.store.list_alerts(Some("delivered"), 10).await.unwrap();
    assert_eq!(delivered.len(), 3);
    s.finish().await;
}

async fn alert_survives_a_webhook_outage(backend: Backend) {
    let webhook = Receiver::start(503).await;
    let Some(s) = start(backend, &webhook, None).await else { return };
    reuse_a_refresh_token(&s).await;
    // Refused twice (1 s, then 2 s of backoff), then the receiver recovers.
    let failed = webhook.wait_for(Duration::from_secs(15), |g| g.len() >= 2).await;
    assert_eq!(failed.len(), 2);
    let pending = s.state.store.list_alerts(Some("pending"), 10).await.unwrap();
    assert_eq!(pending.len(), 1, "still queued while the receiver is down");
    assert_eq!(pending[0].last_error.as_deref(), Some("status 503"));
    webhook.answer(200);
    let got = webhook.wait_for(Duration::from_secs(15), |g| g.iter().any(|r| r.answered == 200)).await;
    let ok: Vec<&Received> = got.iter().filter(|r| r.answered == 200).collect();
    assert_eq!(ok.len(), 1, "delivered once it could be");
    assert!(ok[0].signed_with(SECRET));
    let ids: std::collections::HashSet<String> = got.iter().map(|r| r.header("tessera-alert-id")).collect();
    assert_eq!(ids.len(), 1, "every attempt is the same alert, so the receiver can deduplicate");
    // The outcome is recorded right after the receiver answers (on a busy machine, give it a few seconds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let delivered = loop {
        let delivered = s.state.store.list_alerts(Some("delivered"), 10).await.unwrap();
        if !delivered.is_empty() || tokio::time::Instant::now() >= deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].attempts >= 3, "{}", delivered[0].attempts);
    s.finish().await;
}
