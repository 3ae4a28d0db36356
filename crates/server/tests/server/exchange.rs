//! Token exchange (RFC 8693): a service trades the user's token it received for a narrower token to the
//! next service, within its exchange policy; the new token keeps the user and the session, names the service
//! in `act`, and lives no longer than the token it came from.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tessera_core::{GrantType, RevocationKind, SecretKind};
use tessera_server::issue::AccessGrant;
use tessera_store::{Client, NewRevocation};
use tessera_testkit::DpopClient;
use tessera_token::{UnixTime, Validation};

use crate::common::{API, Server, http, service_client};

crate::on_both_backends!(
    exchange_narrows_to_the_target_and_names_the_actor,
    exchange_refuses_escalation_and_targets_outside_the_policy,
    exchanged_token_lives_no_longer_than_its_subject_and_dies_with_the_session,
    exchange_with_a_dpop_proof_binds_the_new_token_to_the_callers_key,
    exchanged_tokens_die_with_the_token_and_client_they_came_from,
);

const BILLING: &str = "https://billing.example";
const SERVICE: &str = "orders-svc";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn now() -> i64 {
    tessera_server::now()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A confidential client that serves API (it receives the users' tokens for it) and may exchange tokens for
/// `exchange_audiences`; returns its secret.
async fn add_exchanger(s: &Server, id: &str, grants: &[GrantType], exchange_audiences: &[&str]) -> String {
    let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
    let client = Client {
        secret_hash: Some(secret.hash()),
        grant_types: grants.to_vec(),
        scopes: vec!["orders:read".into(), "invoices:read".into(), "invoices:write".into()],
        exchange_audiences: exchange_audiences.iter().map(|a| (*a).to_owned()).collect(),
        serves: vec![API.into()],
        mfa: tessera_core::mfa::MfaPolicy::default(),
        ..service_client(id)
    };
    s.state.store.create_client(&client).await.unwrap();
    secret.expose().to_owned()
}

/// Resources, the user alice, and the orders service allowed to exchange for billing; returns its secret.
async fn setup(s: &Server) -> String {
    s.add_resource(API, &["orders:read", "invoices:read"]).await;
    s.add_resource(BILLING, &["invoices:read", "invoices:write"]).await;
    s.add_user("alice", &["reader"]).await;
    add_exchanger(s, SERVICE, &[GrantType::TokenExchange], &[BILLING]).await
}

/// Alice's access token for `audience`, as the web app `spa` got it, in session `sid`.
fn user_token(s: &Server, audience: &str, scope: &str, sid: &str, ttl: i64) -> String {
    user_token_bound(s, audience, scope, sid, ttl, None)
}

/// Like [`user_token`], bound to the DPoP key `jkt` when given.
fn user_token_bound(
    s: &Server,
    audience: &str,
    scope: &str,
    sid: &str,
    ttl: i64,
    jkt: Option<String>,
) -> String {
    let minted = tessera_server::issue::access_token(
        &s.state,
        AccessGrant {
            sub: "u_alice".into(),
            client_id: "spa".into(),
            audience: audience.into(),
            scope: scope.into(),
            sid: Some(sid.into()),
            roles: vec!["reader".into()],
            auth_time: Some(now() - 30),
            amr: vec!["pwd".into(), "otp".into()],
            ttl,
            jkt,
            act: None,
            origin: Vec::new(),
        },
        now(),
    )
    .unwrap();
    minted.token
}

/// Sends a token-exchange request as `client`; returns the status and the JSON body.
async fn exchange_as(
    s: &Server,
    client: &str,
    secret: &str,
    form: &[(&str, &str)],
    proof: Option<&str>,
) -> (u16, Value) {
    let mut full = vec![("grant_type", EXCHANGE)];
    full.extend_from_slice(form);
    let mut request = http().post(s.url("/token")).basic_auth(client, Some(secret)).form(&full);
    if let Some(proof) = proof {
        request = request.header("DPoP", proof);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn subject_form<'a>(token: &'a str, resource: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("subject_token", token), ("subject_token_type", ACCESS_TOKEN), ("resource", resource)]
}

async fn exchange_narrows_to_the_target_and_names_the_actor(s: &Server) {
    let secret = setup(s).await;
    let subject = user_token(s, API, "orders:read invoices:read", "sess-1", 300);
    let mut form = subject_form(&subject, BILLING);
    form.push(("scope", "invoices:read"));
    let (status, body) = exchange_as(s, SERVICE, &secret, &form, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none(), "an exchange never yields a refresh token");
    let token = body["access_token"].as_str().unwrap();
    // A relying party at billing validates it like any token for its audience.
    let policy = Validation::access_token(s.base.clone(), BILLING);
    let now_u = UnixTime(u64::try_from(now()).unwrap());
    let checked = tessera_token::validate_access_token(token, &s.jwks().await, &policy, now_u).unwrap();
    assert_eq!(checked.sub, "u_alice");
    assert_eq!(checked.sid.as_deref(), Some("sess-1"));
    assert_eq!(checked.scope.as_deref(), Some("invoices:read"));
    assert_eq!(checked.client_id, SERVICE);
    assert_eq!(checked.roles, ["reader"]);
    assert_eq!(checked.amr, ["pwd", "otp"]);
    let act = checked.act.unwrap();
    assert_eq!((act.sub.as_deref(), act.client_id.as_deref()), (Some(SERVICE), Some(SERVICE)));
    assert!(checked.exp <= claims(&subject)["exp"].as_u64().unwrap());

    // With no scope asked for: everything the subject token, the service and billing all allow.
    let (status, body) = exchange_as(s, SERVICE, &secret, &subject_form(&subject, BILLING), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "invoices:read");
    // The `audience` parameter names the target as well as `resource`.
    let form =
        [("subject_token", subject.as_str()), ("subject_token_type", ACCESS_TOKEN), ("audience", BILLING)];
    assert_eq!(exchange_as(s, SERVICE, &secret, &form, None).await.0, 200);

    // Asking for a JWT gets the same token, named as asked.
    let mut form = subject_form(&subject, BILLING);
    form.push(("requested_token_type", "urn:ietf:params:oauth:token-type:jwt"));
    let (status, body) = exchange_as(s, SERVICE, &secret, &form, None).await;
    assert_eq!(
        (status, body["issued_token_type"].as_str()),
        (200, Some("urn:ietf:params:oauth:token-type:jwt"))
    );
    // Introspection shows who acts for the user.
    let r = http()
        .post(s.url("/introspect"))
        .basic_auth(SERVICE, Some(&secret))
        .form(&[("token", body["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    let introspected: Value = r.json().await.unwrap();
    assert_eq!(introspected["act"]["sub"], SERVICE, "{introspected}");

    let events = s.state.store.recent_events(Some("token_exchanged"), 10).await.unwrap();
    assert_eq!(events.len(), 4, "every exchange is recorded");
    assert_eq!(events[0].client_id.as_deref(), Some(SERVICE));
    assert_eq!(events[0].audience.as_deref(), Some(BILLING));
    assert_eq!(events[0].sid.as_deref(), Some("sess-1"));
}

async fn exchange_refuses_escalation_and_targets_outside_the_policy(s: &Server) {
    let secret = setup(s).await;
    let error =
        |(status, body): (u16, Value)| (status, body["error"].as_str().unwrap_or_default().to_owned());
    let narrow = user_token(s, API, "orders:read", "sess-2", 300);

    // A scope the user's token does not hold, even one billing defines and the service may ask for.
    let mut form = subject_form(&narrow, BILLING);
    form.push(("scope", "invoices:read"));
    assert_eq!(error(exchange_as(s, SERVICE, &secret, &form, None).await), (400, "invalid_scope".into()));
    // Nothing in common at all.
    let form = subject_form(&narrow, BILLING);
    assert_eq!(error(exchange_as(s, SERVICE, &secret, &form, None).await), (400, "invalid_scope".into()));

    // A target outside the service's policy, even one it could otherwise use.
    let wide = user_token(s, API, "orders:read invoices:read", "sess-2", 300);
    let form = subject_form(&wide, API);
    assert_eq!(error(exchange_as(s, SERVICE, &secret, &form, None).await), (400, "invalid_target".into()));
    let form = [
        ("subject_token", wide.as_str()),
        ("subject_token_type", ACCESS_TOKEN),
        ("resource", BILLING),
        ("audience", API),
    ];
    assert_eq!(error(exchange_as(s, SERVICE, &secret, &form, None).await), (400, "invalid_target".into()));
    let form = [
        ("subject_token", wide.as_str()),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", BILLING),
        ("audience", API),
    ];
    assert_eq!(error(exchange_as(s, SERVICE, &secret, &form, None).await), (400, "invalid_target".into()));

    // The default policy is none.
    let bare = add_exchanger(s, "no-policy", &[GrantType::TokenExchange], &[]).await;
    let form = subject_form(&wide, BILLING);
    assert_eq!(error(exchange_as(s, "no-policy", &bare, &form, None).await), (400, "invalid_target".into()));
    // A client without the grant.
    let other = add_exchanger(s, "no-grant", &[GrantType::ClientCredentials], &[BILLING]).await;
    assert_eq!(
        error(exchange_as(s, "no-grant", &other, &form, None).await),
        (400, "unauthorized_client".into())
    );

    // A token that was not sent to this service: a billing token cannot be laundered through it.
    let billing_token = user_token(s, BILLING, "invoices:read", "sess-2", 300);
    let form = subject_form(&billing_token, BILLING);
    assert_eq!(error(exchange_as(s, SERVICE, &secret, &form, None).await), (400, "invalid_request".into()));
    // A client that may call the orders API, but does not serve it, never receives its users' tokens: it can
    // neither exchange nor introspect them.
    let caller_secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
    let caller = Client {
        secret_hash: Some(caller_secret.hash()),
        grant_types: vec![GrantType::ClientCredentials, GrantType::TokenExchange],
        scopes: vec!["invoices:read".into()],
        exchange_audiences: vec![BILLING.into()],
        ..service_client("caller")
    };
    assert_eq!(caller.audiences, [API], "it may get tokens for the orders API");
    s.state.store.create_client(&caller).await.unwrap();
    let caller_secret = caller_secret.expose().to_owned();
    let form = subject_form(&wide, BILLING);
    assert_eq!(
        error(exchange_as(s, "caller", &caller_secret, &form, None).await),
        (400, "invalid_request".into())
    );
    assert!(!active(s, "caller", &caller_secret, &wide).await, "nor introspect them");
    assert!(active(s, SERVICE, &secret, &wide).await, "the service that serves the API can");

    // Not a token of ours, the wrong token type, or a token without its type.
    for form in [
        subject_form("eyJhbGciOiJFZERTQSJ9.e30.c2ln", BILLING),
        vec![
            ("subject_token", wide.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:refresh_token"),
            ("resource", BILLING),
        ],
        vec![("subject_token", wide.as_str()), ("resource", BILLING)],
    ] {
        assert_eq!(
            error(exchange_as(s, SERVICE, &secret, &form, None).await),
            (400, "invalid_request".into())
        );
    }
    // An actor token must be the calling service's own.
    let mut form = subject_form(&wide, BILLING);
    form.extend([("actor_token", narrow.as_str()), ("actor_token_type", ACCESS_TOKEN)]);
    assert_eq!(error(exchange_as(s, SERVICE, &secret, &form, None).await), (400, "invalid_request".into()));
    // A wrong secret is a client authentication failure, whatever the rest.
    let form = subject_form(&wide, BILLING);
    assert_eq!(
        error(exchange_as(s, SERVICE, "tss_wrong", &form, None).await),
        (401, "invalid_client".into())
    );
}

async fn exchanged_token_lives_no_longer_than_its_subject_and_dies_with_the_session(s: &Server) {
    let secret = setup(s).await;
    let subject = user_token(s, API, "invoices:read", "sess-3", 40);
    let (status, body) = exchange_as(s, SERVICE, &secret, &subject_form(&subject, BILLING), None).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&token)["exp"], claims(&subject)["exp"], "capped at the subject token's expiry");
    assert!(body["expires_in"].as_i64().unwrap() <= 40);

    let introspect = |token: String| {
        let secret = secret.clone();
        async move {
            let r = http()
                .post(s.url("/introspect"))
                .basic_auth(SERVICE, Some(&secret))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["active"].as_bool().unwrap()
        }
    };
    assert!(introspect(token.clone()).await);
    let entry = NewRevocation {
        kind: RevocationKind::Session,
        subject: "sess-3".into(),
        not_before: None,
        expires_at: now() + tessera_store::REVOCATION_HORIZON_SECS,
        reason: "test".into(),
    };
    s.state.store.revoke(&entry, now()).await.unwrap();
    assert!(!introspect(token).await, "revoking the user's session kills the exchanged token");
    let (status, body) = exchange_as(s, SERVICE, &secret, &subject_form(&subject, BILLING), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "a revoked token buys nothing"
    );
}

/// Introspects `token` as `client`: whether it is active.
async fn active(s: &Server, client: &str, secret: &str, token: &str) -> bool {
    let r = http()
        .post(s.url("/introspect"))
        .basic_auth(client, Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["active"].as_bool().unwrap()
}

async fn exchanged_tokens_die_with_the_token_and_client_they_came_from(s: &Server) {
    const LEDGER: &str = "https://ledger.example";
    let secret = setup(s).await;
    s.add_resource(LEDGER, &["invoices:read"]).await;
    // Billing receives tokens for itself and may pass them on to the ledger, or to itself again.
    let billing_secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
    let billing = Client {
        secret_hash: Some(billing_secret.hash()),
        grant_types: vec![GrantType::TokenExchange],
        audiences: Vec::new(),
        serves: vec![BILLING.into()],
        mfa: tessera_core::mfa::MfaPolicy::default(),
        scopes: vec!["invoices:read".into()],
        exchange_audiences: vec![LEDGER.into(), BILLING.into()],
        ..service_client("billing-svc")
    };
    s.state.store.create_client(&billing).await.unwrap();
    let billing_secret = billing_secret.expose().to_owned();
    let revoke = |kind, subject: String| {
        let entry = NewRevocation {
            kind,
            subject,
            not_before: Some(now()),
            expires_at: now() + tessera_store::REVOCATION_HORIZON_SECS,
            reason: "test".into(),
        };
        async move { s.state.store.revoke(&entry, now()).await.unwrap() }
    };
    // spa's token → orders-svc's token for billing → billing-svc's token for the ledger.
    let chain = |sid: &'static str| {
        let secret = secret.clone();
        let billing_secret = billing_secret.clone();
        async move {
            let user = user_token(s, API, "invoices:read", sid, 300);
            let (status, body) = exchange_as(s, SERVICE, &secret, &subject_form(&user, BILLING), None).await;
            assert_eq!(status, 200, "{body}");
            let first = body["access_token"].as_str().unwrap().to_owned();
            let form = subject_form(&first, LEDGER);
            let (status, body) = exchange_as(s, "billing-svc", &billing_secret, &form, None).await;
            assert_eq!(status, 200, "{body}");
            (user, first, body["access_token"].as_str().unwrap().to_owned())
        }
    };

    let (user, first, second) = chain("sess-5").await;
    let origin = claims(&second)["origin"].clone();
    assert_eq!(origin[0]["jti"], claims(&user)["jti"], "{origin}");
    assert_eq!(
        (origin[0]["client_id"].as_str(), origin[1]["client_id"].as_str()),
        (Some("spa"), Some(SERVICE))
    );
    assert!(
        active(s, SERVICE, &secret, &first).await && active(s, "billing-svc", &billing_secret, &second).await
    );
    revoke(RevocationKind::Token, claims(&user)["jti"].as_str().unwrap().to_owned()).await;
    assert!(!active(s, SERVICE, &secret, &first).await, "revoking the user's token kills the exchanged one");
    assert!(!active(s, "billing-svc", &billing_secret, &second).await, "and the one exchanged from that");

    let (_, first, second) = chain("sess-6").await;
    revoke(RevocationKind::Token, claims(&first)["jti"].as_str().unwrap().to_owned()).await;
    assert!(
        !active(s, "billing-svc", &billing_secret, &second).await,
        "revoking a middle link kills the rest"
    );

    // A chain has at most MAX_EXCHANGE_DEPTH exchanges.
    let user = user_token(s, API, "invoices:read", "sess-8", 300);
    let (status, body) = exchange_as(s, SERVICE, &secret, &subject_form(&user, BILLING), None).await;
    assert_eq!(status, 200, "{body}");
    let mut token = body["access_token"].as_str().unwrap().to_owned();
    for _ in 1..tessera_server::exchange::MAX_EXCHANGE_DEPTH {
        let form = subject_form(&token, BILLING);
        let (status, body) = exchange_as(s, "billing-svc", &billing_secret, &form, None).await;
        assert_eq!(status, 200, "{body}");
        token = body["access_token"].as_str().unwrap().to_owned();
    }
    let form = subject_form(&token, BILLING);
    let (status, body) = exchange_as(s, "billing-svc", &billing_secret, &form, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "one exchange too many");

    let (_, first, second) = chain("sess-7").await;
    revoke(RevocationKind::Client, "spa".into()).await;
    assert!(
        !active(s, SERVICE, &secret, &first).await,
        "revoking the user's client kills the exchanged token"
    );
    assert!(!active(s, "billing-svc", &billing_secret, &second).await);
}

async fn exchange_with_a_dpop_proof_binds_the_new_token_to_the_callers_key(s: &Server) {
    let secret = setup(s).await;
    let key = DpopClient::new("ES256").unwrap();
    // A DPoP-bound user token never becomes a bearer token through an exchange.
    let user_key = DpopClient::new("EdDSA").unwrap();
    let bound =
        user_token_bound(s, API, "invoices:read", "sess-4", 300, Some(user_key.thumbprint().unwrap()));
    let (status, body) = exchange_as(s, SERVICE, &secret, &subject_form(&bound, BILLING), None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    let proof = key.proof("POST", &s.url("/token"), u64::try_from(now()).unwrap(), None, None).unwrap();
    let (status, body) = exchange_as(s, SERVICE, &secret, &subject_form(&bound, BILLING), Some(&proof)).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");

    let subject = user_token(s, API, "invoices:read", "sess-4", 300);
    let proof = key.proof("POST", &s.url("/token"), u64::try_from(now()).unwrap(), None, None).unwrap();
    let (status, body) =
        exchange_as(s, SERVICE, &secret, &subject_form(&subject, BILLING), Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let bound = claims(body["access_token"].as_str().unwrap());
    assert_eq!(bound["cnf"]["jkt"], key.thumbprint().unwrap().as_str());
}
