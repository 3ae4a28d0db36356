//! Detection scenarios driven through the real gateway and server: each shows the detection, its response
//! at the gateway and the server, the signed alert at a test webhook, and the audit trail.

use std::time::Duration;

use serde_json::Value;
use tessera_testkit::Receiver;

use crate::harness::{Backend, Grant, Options, World, eventually, get_from, signed};

const ATTACKER: &str = "203.0.113.66";
const BYSTANDER: &str = "198.51.100.5";

async fn world(webhook: &Receiver) -> World {
    let options =
        Options { trusted_proxies: true, webhook_url: Some(webhook.url.clone()), ..Options::default() };
    World::start_with(Backend::Sqlite, options).await.unwrap()
}

/// The first alert for `rule`, once it arrived.
async fn alert_for(webhook: &Receiver, rule: &str) -> tessera_testkit::Received {
    let got = webhook
        .wait_for(Duration::from_secs(10), |g| g.iter().any(|r| r.json()["detection"]["rule"] == rule))
        .await;
    got.into_iter()
        .find(|r| r.json()["detection"]["rule"] == rule)
        .unwrap_or_else(|| panic!("no {rule} alert"))
}

#[tokio::test]
async fn forged_token_burst_blocks_the_source_at_the_gateway_and_the_server_and_alerts() {
    let webhook = Receiver::start(200).await;
    let w = world(&webhook).await;
    let (token, _) = w.token(Grant::default());
    assert_eq!(w.raw(&get_from("/orders/1", Some(&token), ATTACKER)).await, 200, "before the burst");
    // Twenty tokens with broken signatures from one source within the minute.
    let (head, _) = token.rsplit_once('.').unwrap();
    for i in 0..20 {
        let forged = format!("{head}.{}", crate::harness::b64(format!("not a signature {i}").as_bytes()));
        assert_eq!(w.raw(&get_from("/orders/1", Some(&forged), ATTACKER)).await, 401);
    }
    // The block reaches the gateway: even a valid token is refused from that source, and only from it.
    let blocked = eventually(Duration::from_secs(5), || async {
        w.raw(&get_from("/orders/1", Some(&token), ATTACKER)).await == 403
    })
    .await;
    assert!(blocked.is_some(), "the source is blocked at the gateway");
    assert_eq!(w.raw(&get_from("/orders/1", Some(&token), BYSTANDER)).await, 200, "others go on");
    // And at the server's token endpoint.
    let token_url = format!("{}/token", w.server.issuer());
    let from = |source: &'static str| {
        reqwest::Client::new()
            .post(&token_url)
            .header("x-forwarded-for", source)
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    let refused = from(ATTACKER).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "access_denied");
    assert_eq!(from(BYSTANDER).await.unwrap().status(), 401, "a bystander gets the usual client error");

    let alert = alert_for(&webhook, "forged_token_burst").await;
    assert!(signed(&alert), "the alert is signed");
    let body = alert.json();
    assert_eq!(body["detection"]["ip"], ATTACKER);
    // The gateway reports refusals aggregated per reason and source; the explanation counts them all.
    assert!(!body["detection"]["evidence"].as_array().unwrap().is_empty());
    assert!(body["detection"]["explanation"].as_str().unwrap().contains("20"), "{body}");
    assert_eq!(body["responses"][0], serde_json::json!({ "action": "block_source", "result": "blocked" }));

    let store = &w.server.state.store;
    let raised = store.recent_events(Some("detection_raised"), 10).await.unwrap();
    let d = raised.iter().find(|e| e.reason.as_deref() == Some("forged_token_burst")).unwrap();
    assert_eq!(d.ip.as_deref(), Some(ATTACKER));
    let taken = store.recent_events(Some("response_taken"), 10).await.unwrap();
    let block = taken.iter().find(|e| e.reason.as_deref() == Some("block_source")).unwrap();
    assert_eq!((block.ip.as_deref(), block.outcome.as_deref()), (Some(ATTACKER), Some("blocked")));
    let reported = eventually(Duration::from_secs(5), || async {
        let refusals = store.recent_events(Some("token_rejected"), 50).await.unwrap();
        refusals
            .iter()
            .any(|e| e.reason.as_deref() == Some("blocked_source") && e.ip.as_deref() == Some(ATTACKER))
    })
    .await;
    assert!(reported.is_some(), "the gateway reports what it refused");
    w.finish().await;
}
