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
    alert_where(webhook, rule, None).await
}

/// The first alert for `rule` (blaming `ip`, if given), once it arrived.
async fn alert_where(webhook: &Receiver, rule: &str, ip: Option<&str>) -> tessera_testkit::Received {
    let wanted = |r: &tessera_testkit::Received| {
        let d = r.json()["detection"].clone();
        d["rule"] == rule && ip.is_none_or(|ip| d["ip"] == ip)
    };
    let got = webhook.wait_for(Duration::from_secs(10), |g| g.iter().any(wanted)).await;
    got.into_iter().find(wanted).unwrap_or_else(|| panic!("no {rule} alert"))
}

/// Twenty copies of `token` with broken signatures from [`ATTACKER`] within the minute: a forged-token burst.
async fn forged_burst(w: &World, token: &str) {
    let (head, _) = token.rsplit_once('.').unwrap();
    for i in 0..20 {
        let forged = format!("{head}.{}", crate::harness::b64(format!("not a signature {i}").as_bytes()));
        assert_eq!(w.raw(&get_from("/orders/1", Some(&forged), ATTACKER)).await, 401);
    }
}

#[tokio::test]
async fn forged_token_burst_blocks_the_source_at_the_gateway_and_the_server_and_alerts() {
    let webhook = Receiver::start(200).await;
    let w = world(&webhook).await;
    let (token, _) = w.token(Grant::default());
    assert_eq!(w.raw(&get_from("/orders/1", Some(&token), ATTACKER)).await, 200, "before the burst");
    forged_burst(&w, &token).await;
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

/// A token request by `client_id` from `source`, with a DPoP proof if given; the answer's JSON (it must be
/// 200).
pub(crate) async fn token_at(
    w: &World,
    (client_id, secret): (&str, &str),
    form: &[(&str, &str)],
    source: &str,
    proof: Option<String>,
) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{}/token", w.server.issuer()))
        .basic_auth(client_id, Some(secret))
        .header("x-forwarded-for", source);
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let r = request.form(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// The gateway's audience for client_credentials.
const CLIENT_CREDENTIALS: [(&str, &str); 2] =
    [("grant_type", "client_credentials"), ("resource", crate::harness::API)];

/// A client_credentials token for the gateway's audience, issued to a client at `source`.
async fn issued_at(w: &World, client_id: &str, secret: &str, source: &str) -> String {
    let body = token_at(w, (client_id, secret), &CLIENT_CREDENTIALS, source, None).await;
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn copied_and_revoked_bearer_tokens_are_detected_from_their_use_at_the_gateway_and_alerted() {
    let webhook = Receiver::start(200).await;
    let w = world(&webhook).await;
    let secret = w.server.add_client("batch-job", &[crate::harness::API]).await;
    // Copied: one token used from two networks back and forth.
    let copied = issued_at(&w, "batch-job", &secret, "192.0.2.10").await;
    for source in ["192.0.2.10", "198.51.100.20", "192.0.2.10"] {
        assert_eq!(w.raw(&get_from("/orders/1", Some(&copied), source)).await, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Moved: a token used only from a network it was never issued to.
    let moved = issued_at(&w, "batch-job", &secret, "192.0.2.10").await;
    assert_eq!(w.raw(&get_from("/orders/1", Some(&moved), "203.0.113.40")).await, 200);
    // Revoked: still presented after its revocation reached the gateway.
    let revoked = issued_at(&w, "batch-job", &secret, "192.0.2.10").await;
    let r = reqwest::Client::new()
        .post(format!("{}/revoke", w.server.issuer()))
        .basic_auth("batch-job", Some(&secret))
        .form(&[("token", revoked.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refused = eventually(Duration::from_secs(5), || async {
        w.raw(&get_from("/orders/1", Some(&revoked), "192.0.2.10")).await == 401
    })
    .await;
    assert!(refused.is_some(), "the revocation reached the gateway");

    for (rule, severity, ip) in [
        ("token_used_from_two_networks", "high", None),
        ("token_used_from_new_network", "low", Some("203.0.113.40")),
        ("revoked_token_use", "medium", Some("192.0.2.10")),
    ] {
        let alert = alert_where(&webhook, rule, ip).await;
        assert!(signed(&alert), "{rule}: signed");
        let body = alert.json();
        assert_eq!(body["detection"]["severity"], severity, "{rule}");
        if let Some(ip) = ip {
            assert_eq!(body["detection"]["ip"], ip, "{rule}");
        }
        assert_eq!(
            body["responses"],
            serde_json::json!([{ "action": "alert", "result": "queued" }]),
            "{rule}"
        );
        assert!(!body["detection"]["evidence"].as_array().unwrap().is_empty(), "{rule}");
    }
    let store = &w.server.state.store;
    let raised = store.recent_events(Some("detection_raised"), 20).await.unwrap();
    let rules: Vec<&str> = raised.iter().filter_map(|e| e.reason.as_deref()).collect();
    for rule in ["token_used_from_two_networks", "revoked_token_use"] {
        assert_eq!(rules.iter().filter(|r| **r == rule).count(), 1, "{rule} raised once: {rules:?}");
    }
    // The copied token's first hop, reported before its way back, can look like a move too (low severity);
    // the moved token is raised once either way.
    let moved_raised = raised
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("token_used_from_new_network")
                && e.ip.as_deref() == Some("203.0.113.40")
        })
        .count();
    assert_eq!(moved_raised, 1, "{rules:?}");
    let issued = store.recent_events(Some("token_issued"), 10).await.unwrap();
    assert!(
        issued.iter().all(|e| e.ip.as_deref() == Some("192.0.2.10")),
        "issuance records the client's address"
    );
    w.finish().await;
}

/// One failed sign-in from `source` through the login form (CSRF cookie and field included).
async fn failed_login(w: &World, username: &str, source: &str) {
    let http = reqwest::Client::new();
    let login = format!("{}/login", w.server.issuer());
    let page = http.get(&login).header("x-forwarded-for", source).send().await.unwrap();
    let cookies: Vec<String> = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect();
    let html = String::from_utf8(page.bytes().await.unwrap().to_vec()).unwrap();
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).unwrap() + marker.len();
    let csrf = &html[start..start + html[start..].find('"').unwrap()];
    let r = http
        .post(&login)
        .header("x-forwarded-for", source)
        .header("cookie", cookies.join("; "))
        .form(&[("csrf", csrf), ("return", ""), ("username", username), ("password", "not the password")])
        .send()
        .await
        .unwrap();
    // The form again with an error; after three failures of one account, the throttle's 429 (recorded as
    // a failure all the same).
    assert!([200, 429].contains(&r.status().as_u16()), "the form again, with an error: {}", r.status());
}

#[tokio::test]
async fn brute_force_and_credential_stuffing_run_their_configured_responses() {
    use tessera_server::response::{Action, Responses};
    let webhook = Receiver::start(200).await;
    let responses = Responses {
        brute_force: vec![Action::RequireStepUp, Action::Alert],
        credential_stuffing: vec![Action::BlockSource, Action::Alert],
        ..Responses::default()
    };
    let options = Options {
        trusted_proxies: true,
        webhook_url: Some(webhook.url.clone()),
        responses: Some(responses),
        ..Options::default()
    };
    let w = World::start_with(Backend::Sqlite, options).await.unwrap();
    w.server.add_user("u_alice", "alice", "the real password").await;
    // Ten wrong passwords for alice from one source; one each for ten names from another.
    for _ in 0..10 {
        failed_login(&w, "alice", "192.0.2.77").await;
    }
    for n in 0..10 {
        failed_login(&w, &format!("user{n}"), ATTACKER).await;
    }
    let brute = alert_for(&webhook, "brute_force").await;
    assert!(signed(&brute));
    assert_eq!(brute.json()["detection"]["sub"], "u_alice");
    assert_eq!(
        brute.json()["responses"][0],
        serde_json::json!({ "action": "require_step_up", "result": "required" })
    );
    let stuffing = alert_for(&webhook, "credential_stuffing").await;
    assert!(signed(&stuffing));
    assert_eq!(stuffing.json()["detection"]["ip"], ATTACKER);
    assert_eq!(
        stuffing.json()["responses"][0],
        serde_json::json!({ "action": "block_source", "result": "blocked" })
    );
    let store = &w.server.state.store;
    assert!(
        store.user_by_id("u_alice").await.unwrap().unwrap().step_up_after.is_some(),
        "alice must sign in again"
    );
    // The stuffing source can no longer reach the login form; the other source can.
    let login = format!("{}/login", w.server.issuer());
    let from =
        |source: &'static str| reqwest::Client::new().get(&login).header("x-forwarded-for", source).send();
    let blocked =
        eventually(Duration::from_secs(2), || async { from(ATTACKER).await.unwrap().status() == 403 }).await;
    assert!(blocked.is_some(), "blocked at the server");
    assert_eq!(from("192.0.2.77").await.unwrap().status(), 200);
    let taken = store.recent_events(Some("response_taken"), 10).await.unwrap();
    let actions: Vec<&str> = taken.iter().filter_map(|e| e.reason.as_deref()).collect();
    for action in ["require_step_up", "block_source", "alert"] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
    w.finish().await;
}

/// A browser: its own cookies, no redirects followed (the sign-in's cookies come with its 303), every
/// request from `source` (through the trusted proxy).
pub(crate) struct Browser {
    pub(crate) http: reqwest::Client,
    pub(crate) cookies: std::collections::BTreeMap<String, String>,
}

impl Browser {
    pub(crate) fn new() -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, cookies: std::collections::BTreeMap::new() }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.insert(name.to_owned(), value.to_owned());
        }
    }

    pub(crate) fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub(crate) async fn get(&mut self, url: &str, source: &str) -> reqwest::Response {
        let r = self
            .http
            .get(url)
            .header("x-forwarded-for", source)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }

    /// Signs in on the login form `page` shows (its `return` kept) from `source`; the answer is the 303.
    async fn submit_login(
        &mut self,
        w: &World,
        page: reqwest::Response,
        username: &str,
        password: &str,
        source: &str,
    ) -> reqwest::Response {
        let html = page.text().await.unwrap();
        // A hidden field's value; the plain sign-in page has no `return`.
        let field = |name: &str| {
            let marker = format!("name=\"{name}\" value=\"");
            let Some(at) = html.find(&marker) else { return String::new() };
            let start = at + marker.len();
            html[start..start + html[start..].find('"').unwrap()].replace("&amp;", "&")
        };
        let (csrf, ret) = (field("csrf"), field("return"));
        let r = self
            .http
            .post(format!("{}/login", w.server.issuer()))
            .header("x-forwarded-for", source)
            .header("cookie", self.cookie_header())
            .form(&[
                ("csrf", csrf.as_str()),
                ("return", ret.as_str()),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "signed in");
        self.keep(&r);
        assert!(self.cookies.contains_key("tessera_device"), "the browser keeps a device cookie");
        r
    }

    /// Signs in through the login form from `source`; the device cookie is kept.
    async fn sign_in(&mut self, w: &World, username: &str, password: &str, source: &str) {
        let page = self.get(&format!("{}/login", w.server.issuer()), source).await;
        self.submit_login(w, page, username, password, source).await;
    }
}

const BERLIN: &str = "192.0.2.7";
const POTSDAM: &str = "203.0.113.9";
const SYDNEY: &str = "198.51.100.9";

#[tokio::test]
async fn sign_ins_from_a_new_device_and_from_the_other_side_of_the_world_raise_new_device_and_impossible_travel()
 {
    let webhook = Receiver::start(200).await;
    let options = Options {
        trusted_proxies: true,
        webhook_url: Some(webhook.url.clone()),
        geoip: true,
        ..Options::default()
    };
    let w = World::start_with(Backend::Sqlite, options).await.unwrap();
    w.server.add_user("u_alice", "alice", "correct horse battery").await;
    // Alice's laptop, twice from Berlin: her first sign-in and a known device raise nothing.
    let mut laptop = Browser::new();
    laptop.sign_in(&w, "alice", "correct horse battery", BERLIN).await;
    laptop.sign_in(&w, "alice", "correct horse battery", BERLIN).await;
    // A new browser, in Potsdam (next door, the same carrier): a new device, not travel.
    let mut other = Browser::new();
    other.sign_in(&w, "alice", "correct horse battery", POTSDAM).await;
    let new_device = alert_for(&webhook, "new_device").await;
    assert!(signed(&new_device));
    let d = &new_device.json()["detection"];
    assert_eq!(
        (d["sub"].as_str(), d["ip"].as_str(), d["severity"].as_str()),
        (Some("u_alice"), Some(POTSDAM), Some("low"))
    );
    let explanation = d["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("Potsdam, DE (203.0.113.9), network AS64500 (Example Carrier DE)"),
        "{explanation}"
    );
    // Seconds later the same browser signs in from Sydney.
    other.sign_in(&w, "alice", "correct horse battery", SYDNEY).await;
    let travel = alert_for(&webhook, "impossible_travel").await;
    assert!(signed(&travel));
    let d = &travel.json()["detection"];
    assert_eq!((d["ip"].as_str(), d["severity"].as_str()), (Some(SYDNEY), Some("high")));
    let explanation = d["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("Sydney, AU (198.51.100.9)")
            && explanation.contains("Potsdam, DE (203.0.113.9)"),
        "{explanation}"
    );
    assert_eq!(d["evidence"].as_array().map(Vec::len), Some(2), "the two sign-ins");
    // Each raised once; the Berlin sign-ins raised nothing.
    let alerts = webhook.got();
    let count = |rule: &str| alerts.iter().filter(|r| r.json()["detection"]["rule"] == rule).count();
    assert_eq!((count("new_device"), count("impossible_travel"), alerts.len()), (1, 1, 2));
    // The audit trail: each sign-in's place and device, and the detections with their responses.
    let store = &w.server.state.store;
    let logins = store.recent_events(Some("login_success"), 10).await.unwrap();
    let places: Vec<String> = logins
        .iter()
        .map(|e| {
            let detail: Value = serde_json::from_str(e.detail.as_deref().unwrap()).unwrap();
            assert!(detail["device"].as_str().is_some_and(|d| d.len() >= 8), "a device hash: {detail}");
            detail["geo"]["city"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut sorted = places.clone();
    sorted.sort();
    assert_eq!(sorted, ["Berlin", "Berlin", "Potsdam", "Sydney"]);
    let raised = store.recent_events(Some("detection_raised"), 10).await.unwrap();
    let rules: Vec<&str> = raised.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(rules.contains(&"new_device") && rules.contains(&"impossible_travel"), "{rules:?}");
    let taken = store.recent_events(Some("response_taken"), 10).await.unwrap();
    assert_eq!(taken.iter().filter(|e| e.reason.as_deref() == Some("alert")).count(), 2);
    w.finish().await;
}

const HOME: &str = "192.0.2.10";
const CAFE: &str = "198.51.100.20";
const REDIRECT: &str = "https://app.example/callback";

/// A web application's confidential client: authorization code with PKCE, refresh tokens.
pub(crate) async fn add_web_app(w: &World) -> String {
    use tessera_core::GrantType;
    let secret = tessera_server::crypto::new_secret(tessera_core::SecretKind::ClientSecret).unwrap();
    let client = tessera_store::Client {
        secret_hash: Some(secret.hash()),
        redirect_uris: vec![REDIRECT.into()],
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        serves: Vec::new(),
        mfa: tessera_core::mfa::MfaPolicy::default(),
        ..crate::harness::service_client("webapp", &[crate::harness::API])
    };
    w.server.state.store.create_client(&client).await.unwrap();
    secret.expose().to_owned()
}

/// POSTs a token request as the web app from `source`; the answer's JSON.
async fn token_request(w: &World, secret: &str, form: &[(&str, &str)], source: &str) -> Value {
    token_at(w, ("webapp", secret), form, source, None).await
}

/// Alice signs in to the web app from `source` (authorization code with PKCE): its access and refresh token.
pub(crate) async fn web_sign_in(w: &World, secret: &str, source: &str) -> (String, String) {
    let verifier = "a-code-verifier-long-enough-for-rfc-7636-4-1-0123456789";
    let challenge = tessera_testkit::ath(verifier);
    let authorize = reqwest::Url::parse_with_params(
        &format!("{}/authorize", w.server.issuer()),
        [
            ("response_type", "code"),
            ("client_id", "webapp"),
            ("redirect_uri", REDIRECT),
            ("scope", "orders:read"),
            ("resource", crate::harness::API),
            ("state", "st"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();
    let mut browser = Browser::new();
    let page = browser.get(authorize.as_str(), source).await;
    assert_eq!(page.status(), 200, "the login form");
    let back = browser.submit_login(w, page, "alice", "correct horse battery", source).await;
    let to = back.headers()["location"].to_str().unwrap().to_owned();
    let r = browser.get(&format!("{}{to}", w.server.issuer()), source).await;
    assert_eq!(r.status(), 302, "back to the app with a code");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let code = reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let body = token_request(
        w,
        secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
        source,
    )
    .await;
    (body["access_token"].as_str().unwrap().to_owned(), body["refresh_token"].as_str().unwrap().to_owned())
}

/// A GET through the gateway with `Authorization: DPoP` and a fresh proof, from `source`.
async fn dpop_get(w: &World, key: &tessera_testkit::DpopClient, token: &str, source: &str) -> u16 {
    let url = w.url("/orders/1");
    let iat = u64::try_from(tessera_server::now()).unwrap();
    let proof = key.proof("GET", &url, iat, Some(token), None).unwrap();
    let r = reqwest::Client::new()
        .get(&url)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .header("x-forwarded-for", source)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test]
async fn benign_traffic_raises_nothing_two_tabs_a_move_and_a_dpop_client_changing_networks() {
    let webhook = Receiver::start(200).await;
    let w = world(&webhook).await;
    w.server.add_user("u_alice", "alice", "correct horse battery").await;
    let secret = add_web_app(&w).await;

    // Two tabs: one session, both tabs refresh with the same refresh token at once, inside the retry
    // window, and both use what they got.
    let (access, refresh) = web_sign_in(&w, &secret, HOME).await;
    assert_eq!(w.raw(&get_from("/orders/1", Some(&access), HOME)).await, 200);
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
    let (tab1, tab2) =
        tokio::join!(token_request(&w, &secret, &form, HOME), token_request(&w, &secret, &form, HOME));
    assert_eq!(tab1["refresh_token"], tab2["refresh_token"], "one successor for both tabs");
    for tab in [&tab1, &tab2] {
        let token = tab["access_token"].as_str().unwrap();
        assert_eq!(w.raw(&get_from("/orders/1", Some(token), HOME)).await, 200);
    }

    // A move: the laptop goes from home to a café (which takes longer than the second events are
    // timed to), refreshes there, and goes on.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refresh = tab1["refresh_token"].as_str().unwrap();
    let moved =
        token_request(&w, &secret, &[("grant_type", "refresh_token"), ("refresh_token", refresh)], CAFE)
            .await;
    let token = moved["access_token"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(w.raw(&get_from("/orders/1", Some(token), CAFE)).await, 200);
    }

    // A DPoP client changing networks back and forth: its token works only with its key.
    let job_secret = w.server.add_client("dpop-job", &[crate::harness::API]).await;
    let key = tessera_testkit::DpopClient::new("ES256").unwrap();
    let token_url = format!("{}/token", w.server.issuer());
    let iat = u64::try_from(tessera_server::now()).unwrap();
    let proof = key.proof("POST", &token_url, iat, None, None).unwrap();
    let body = token_at(&w, ("dpop-job", &job_secret), &CLIENT_CREDENTIALS, "192.0.2.30", Some(proof)).await;
    assert_eq!(body["token_type"], "DPoP");
    let bound = body["access_token"].as_str().unwrap();
    for source in ["192.0.2.30", "198.51.100.30", "192.0.2.30", "198.51.100.30"] {
        assert_eq!(dpop_get(&w, &key, bound, source).await, 200, "{source}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A sentinel: a forged-token burst from elsewhere. Events are read in order, so once its alert is
    // in, every use above has been judged.
    forged_burst(&w, &access).await;
    alert_for(&webhook, "forged_token_burst").await;
    let rules: Vec<String> = webhook
        .got()
        .iter()
        .map(|r| r.json()["detection"]["rule"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(rules, ["forged_token_burst"], "only the sentinel");
    let store = &w.server.state.store;
    let raised = store.recent_events(Some("detection_raised"), 20).await.unwrap();
    let raised: Vec<&str> = raised.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert_eq!(raised, ["forged_token_burst"]);
    let reuse = store.recent_events(Some("refresh_token_reuse"), 5).await.unwrap();
    assert!(reuse.is_empty(), "the two tabs' refreshes are a retry, not a reuse");
    let used = store.recent_events(Some("token_used"), 50).await.unwrap();
    let sources: std::collections::BTreeSet<&str> = used.iter().filter_map(|e| e.ip.as_deref()).collect();
    for source in [HOME, CAFE, "192.0.2.30", "198.51.100.30"] {
        assert!(sources.contains(source), "the gateway reported the uses from {source}: {sources:?}");
    }
    w.finish().await;
}
