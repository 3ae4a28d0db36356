//! Incident response through the real server and gateways: a stolen refresh token and access token used
//! from another network, the automatic incident, `contain` (the library the `tessera incident` commands
//! call, writing to the store as the CLI does beside a running server), and what the timeline, the lineage
//! and the report then say.

use std::time::Duration;

use serde_json::Value;
use tessera_server::incident::{self, ContainOptions, Scope, Window};

use crate::detection::{Browser, add_web_app, web_sign_in};
use crate::harness::{Backend, Front, OTHER_API, Options, World, eventually, get_from};

const USER_NET: &str = "192.0.2.7";
const ATTACKER: &str = "198.51.100.23";

/// A refresh request from `source`: the status and the answer.
async fn refresh(w: &World, secret: &str, token: &str, source: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/token", w.server.issuer()))
        .basic_auth("webapp", Some(secret))
        .header("x-forwarded-for", source)
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
}

/// The one incident, once the detector opened it.
async fn incident_opened(w: &World) -> tessera_store::Incident {
    let store = &w.server.state.store;
    eventually(Duration::from_secs(10), || async {
        !store.list_incidents(None, 10).await.unwrap().is_empty()
    })
    .await
    .expect("the detection opened an incident");
    let mut all = store.list_incidents(None, 10).await.unwrap();
    assert_eq!(all.len(), 1, "one incident for one user");
    all.remove(0)
}

async fn stolen_token_is_contained_timelined_and_reported(backend: Backend) {
    let Some(w) = World::start_with(backend, Options { trusted_proxies: true, ..Options::default() }).await
    else {
        return;
    };
    w.server.add_user("u_alice", "alice", "correct horse battery").await;
    let secret = add_web_app(&w).await;
    let billing_secret = w.server.add_client("billing-gateway", &[OTHER_API]).await;
    let billing = Front::start(
        &w.server,
        &w.upstream,
        OTHER_API,
        "billing-gateway",
        &billing_secret,
        &Options { trusted_proxies: true, ..Options::default() },
    )
    .await;

    // Alice signs in and uses the orders service.
    let (access, stolen_refresh) = web_sign_in(&w, &secret, USER_NET).await;
    assert_eq!(w.raw(&get_from("/orders/1", Some(&access), USER_NET)).await, 200);
    // The attacker has copied both tokens: uses the access token, rotates the refresh token first, uses the
    // new access token, and tries it at billing.
    assert_eq!(w.raw(&get_from("/orders/2", Some(&access), ATTACKER)).await, 200);
    let (status, theirs) = refresh(&w, &secret, &stolen_refresh, ATTACKER).await;
    assert_eq!(status, 200, "the first presentation of a live refresh token rotates it");
    // And once more, so that the successor is spent too (a second presentation of the stolen token while
    // its successor is unused would be a retry, answered with that successor).
    let (status, theirs) = refresh(&w, &secret, theirs["refresh_token"].as_str().unwrap(), ATTACKER).await;
    assert_eq!(status, 200);
    let attacker_access = theirs["access_token"].as_str().unwrap().to_owned();
    assert_eq!(w.raw(&get_from("/orders/3", Some(&attacker_access), ATTACKER)).await, 200);
    assert_eq!(billing.raw(&get_from("/orders/1", Some(&attacker_access), ATTACKER)).await, 401);
    // Alice's app refreshes with the token it holds, which was rotated: theft, the family dies.
    let (status, _) = refresh(&w, &secret, &stolen_refresh, USER_NET).await;
    assert_eq!(status, 400, "reuse is refused");
    let opened = incident_opened(&w).await;
    assert_eq!((opened.subject.as_str(), opened.opened_by.as_str()), ("user:u_alice", "detector"));
    // Whichever high finding came first opened it; the reuse joins it.
    let store = w.server.state.store.as_ref();
    let joined = eventually(Duration::from_secs(10), || async {
        let actions = store.incident_actions(opened.id).await.unwrap();
        actions.iter().any(|a| a.action == "detection" && a.target.starts_with("refresh_token_reuse|"))
    })
    .await;
    assert!(joined.is_some(), "the reuse is recorded on the incident");
    // Alice signs in again meanwhile: a second, live session.
    let (second, _) = web_sign_in(&w, &secret, USER_NET).await;
    assert_eq!(w.raw(&get_from("/orders/4", Some(&second), USER_NET)).await, 200);
    // Let the guards report what they saw before containing.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let options =
        ContainOptions { block: vec![ATTACKER.into()], block_secs: 3600, ..ContainOptions::default() };
    let trusted = &w.server.state.config.trusted_proxy_nets();
    let done = incident::contain(store, trusted, opened.id, &options, "cli:responder", tessera_server::now())
        .await
        .unwrap();
    let steps: Vec<&str> = done.contained.taken.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(steps, ["revoke_sessions", "revoke_user", "force_password_reset", "block_source"]);
    // Every token of the user is refused at the gateway within a second, without waking anything.
    for token in [&access, &attacker_access, &second] {
        let took = eventually(Duration::from_secs(1), || async {
            w.raw(&get_from("/orders/9", Some(token), USER_NET)).await == 401
        })
        .await;
        assert!(took.is_some(), "a token of the contained user is refused within 1 s");
    }
    // Running it again is harmless: nothing new, the user's later sign-ins stay valid.
    let again =
        incident::contain(store, trusted, opened.id, &options, "cli:responder", tessera_server::now())
            .await
            .unwrap();
    assert!(again.contained.taken.is_empty());
    assert_eq!(again.contained.already.len(), 4);

    // The next sign-in must set a new password first.
    let mut browser = Browser::new();
    let page = browser.get(&format!("{}/login", w.server.issuer()), USER_NET).await;
    let html = page.text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let r = browser
        .http
        .post(format!("{}/login", w.server.issuer()))
        .header("x-forwarded-for", USER_NET)
        .header("cookie", browser.cookie_header())
        .form(&[
            ("csrf", csrf.as_str()),
            ("return", ""),
            ("username", "alice"),
            ("password", "correct horse battery"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Your password must be changed"), "a forced reset");
    assert!(store.user_by_id("u_alice").await.unwrap().unwrap().must_reset_password);

    // The timeline: exactly the scenario's events up to containment (guards report in batches, so within a
    // second the order is the log's: compared as a sorted list), then the detections, responses and the
    // containment itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = incident::timeline(store, &Scope::Incident(opened.id), Window::default()).await.unwrap();
    let contained_from = t
        .entries
        .iter()
        .filter(|e| e.actor.as_deref() == Some("cli:responder"))
        .map(|e| e.seq)
        .min()
        .unwrap();
    let mut seen: Vec<(String, Option<String>, Option<String>)> = t
        .entries
        .iter()
        .filter(|e| e.seq < contained_from)
        .filter(|e| !matches!(e.kind.as_str(), "detection_raised" | "response_taken"))
        .map(|e| (e.kind.clone(), e.reason.clone().or_else(|| e.route.clone()), e.ip.clone()))
        .collect();
    seen.sort();
    let ev = |kind: &str, what: Option<&str>, ip: &str| {
        (kind.to_owned(), what.map(str::to_owned), Some(ip.to_owned()))
    };
    let mut expected = vec![
        // The first sign-in, the theft, the reuse; then the second sign-in.
        ev("login_risk", Some("require_mfa"), USER_NET),
        ev("login_success", None, USER_NET),
        ev("token_issued", Some("authorization_code"), USER_NET),
        ev("token_used", Some("/orders/{id}"), USER_NET),
        ev("token_used", Some("/orders/{id}"), ATTACKER),
        ev("token_refreshed", Some("refresh_token"), ATTACKER),
        ev("token_refreshed", Some("refresh_token"), ATTACKER),
        ev("token_used", Some("/orders/{id}"), ATTACKER),
        ev("lateral_movement_attempt", Some("wrong_audience"), ATTACKER),
        ev("refresh_token_reuse", Some("refresh_token_reuse"), USER_NET),
        ev("login_risk", Some("require_mfa"), USER_NET),
        ev("login_success", None, USER_NET),
        ev("token_issued", Some("authorization_code"), USER_NET),
        ev("token_used", Some("/orders/{id}"), USER_NET),
    ];
    expected.sort();
    assert_eq!(seen, expected, "the scenario, event for event:\n{}", t.text());
    let rules: Vec<&str> = t
        .entries
        .iter()
        .filter(|e| e.kind == "detection_raised")
        .filter_map(|e| e.reason.as_deref())
        .collect();
    for rule in ["refresh_token_reuse", "token_used_from_two_networks"] {
        assert!(rules.contains(&rule), "{rule} is on the timeline:\n{}", t.text());
    }
    let containment: Vec<&str> = t
        .entries
        .iter()
        .filter(|e| e.actor.as_deref() == Some("cli:responder"))
        .filter_map(|e| e.reason.as_deref())
        .collect();
    assert_eq!(containment, ["revoke_sessions", "revoke_user", "force_password_reset", "block_source"]);
    assert!(t.entries.windows(2).all(|w| (w[0].at, w[0].seq) <= (w[1].at, w[1].seq)), "in time order");
    assert!(t.entries.iter().all(|e| e.sub.as_deref() == Some("u_alice")), "nobody else's events");
    let text = t.text();
    assert!(text.contains("token_used") && text.contains("ip=198.51.100.23"), "{text}");
    assert!(t.json()["entries"].as_array().unwrap().len() == t.entries.len());

    // The lineage: the fork at the stolen token; the attacker's rotation is the copy.
    let lineages = incident::lineages(store, opened.id).await.unwrap();
    let first = lineages.iter().find(|l| l.fork.is_some()).expect("a family with a fork");
    let fork = first.fork.as_ref().unwrap();
    assert_eq!(fork.copy.as_ref().unwrap().presentation.ip.as_deref(), Some(ATTACKER));
    assert_eq!(fork.legitimate.as_ref().unwrap().presentation.ip.as_deref(), Some(USER_NET));
    assert!(first.text().contains("<- copy"), "{}", first.text());

    // The report: the attacker reached the orders service and nothing else; billing refused them; nothing
    // after containment.
    let report = incident::report(store, opened.id).await.unwrap();
    let reached: Vec<(&str, &str)> =
        report.reached_by_copy.iter().map(|r| (r.service.as_str(), r.route.as_str())).collect();
    assert_eq!(reached, [("orders-gateway", "/orders/{id}")], "{}", report.markdown());
    assert_eq!(report.reached_by_copy[0].requests, 2);
    assert!(report.refused.iter().any(|r| r.service == "billing-gateway"));
    // Nothing of the copy's after containment. (Alice's own probes above, sent while the revocation was on
    // its way to the gateway, may be let through in that window and are reported as such.)
    assert!(report.reached_by_copy.iter().all(|r| r.after_containment == 0), "{}", report.markdown());
    let md = report.markdown();
    assert!(md.contains("The copy reached orders-gateway.") && md.contains("| orders-gateway |"), "{md}");
    assert!(!md.contains(&stolen_refresh) && !md.contains(&access), "no token in the report");
    let html = incident::html::report(&report);
    assert!(html.contains("<svg") && !html.contains("<script") && !html.contains("src="), "self-contained");
    billing.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn stolen_token_is_contained_timelined_and_reported_sqlite() {
    stolen_token_is_contained_timelined_and_reported(Backend::Sqlite).await;
}

#[tokio::test]
async fn stolen_token_is_contained_timelined_and_reported_postgres() {
    stolen_token_is_contained_timelined_and_reported(Backend::Postgres).await;
}
