//! The example service end to end: a real Tessera server issues a token by `client_credentials`, and the
//! service behind the guard serves it, or refuses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::sync::Arc;
use std::time::Duration;

use tessera_core::{ClientKind, GrantType, SecretKind};
use tessera_guard::{Guard, GuardConfig, Policy};
use tessera_server::Config;
use tessera_store::{Client, Resource};

const API: &str = "https://orders.example";

/// A confidential client for API; `serves` makes it the service's own (its guard's) client.
async fn add_client(state: &tessera_server::AppState, id: &str, scopes: &[&str], serves: bool) -> String {
    let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
    let client = Client {
        id: id.into(),
        name: id.into(),
        kind: ClientKind::Confidential,
        secret_hash: Some(secret.hash()),
        redirect_uris: vec![],
        grant_types: vec![GrantType::ClientCredentials],
        audiences: vec![API.into()],
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        access_ttl: 300,
        refresh_idle_ttl: 3600,
        refresh_absolute_ttl: 86_400,
        first_party: true,
        disabled: false,
        created_at: tessera_server::now(),
        require_dpop: false,
        jwks: None,
        exchange_audiences: Vec::new(),
        serves: if serves { vec![API.into()] } else { Vec::new() },
        mfa: tessera_core::mfa::MfaPolicy::default(),
    };
    state.store.create_client(&client).await.unwrap();
    secret.expose().to_owned()
}

#[tokio::test]
async fn orders_service_serves_its_callers_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let config = Config { issuer: issuer.clone(), data_dir: dir.path().join("data"), ..Config::default() };
    let (state, _) = tessera_server::prepare(config).await.unwrap();
    let resource = Resource {
        audience: API.into(),
        scopes: vec!["orders:read".into(), "orders:write".into()],
        created_at: tessera_server::now(),
    };
    state.store.create_resource(&resource).await.unwrap();
    let service_secret = add_client(&state, "orders-service", &[], true).await;
    let reader_secret = add_client(&state, "reporting", &["orders:read"], false).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tessera_server::serve(Arc::clone(&state), listener, async move {
        let _ = stopped.await;
    }));

    let policy =
        Policy::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policy.toml"))).unwrap();
    let guard = Guard::start(GuardConfig::new(issuer.clone(), API, "orders-service", service_secret), policy)
        .unwrap();
    assert!(guard.wait_ready(Duration::from_secs(10)).await);
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", app_listener.local_addr().unwrap());
    let app =
        tessera_example_orders::app(&guard).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let service = tokio::spawn(async move {
        let _ = axum::serve(app_listener, app).await;
    });

    // The reporting client gets a token the usual way.
    let http = reqwest::Client::new();
    // client_credentials for orders:read as `reporting`, with a DPoP proof when one is given.
    let get_token = |proof: Option<String>| {
        let mut request = http
            .post(format!("{issuer}/token"))
            .basic_auth("reporting", Some(&reader_secret))
            .form(&[("grant_type", "client_credentials"), ("resource", API), ("scope", "orders:read")]);
        if let Some(proof) = proof {
            request = request.header("DPoP", proof);
        }
        async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let token = get_token(None).await;
    let token = token["access_token"].as_str().unwrap().to_owned();

    let order: serde_json::Value =
        http.get(format!("{base}/orders/42")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(order["order"], "42");
    assert_eq!(order["read_by"], "reporting");
    assert_eq!(order["client"], "reporting");

    let missing = http.get(format!("{base}/orders/42")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.headers().contains_key("www-authenticate"));
    let write = http.post(format!("{base}/orders")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(write.status(), 403, "orders:read does not allow creating orders");
    let trailing = http.get(format!("{base}/orders/42/")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(trailing.status(), 403, "a path not in normal form is refused, not rerouted");
    let unlisted = http.get(format!("{base}/admin")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(unlisted.status(), 403, "unlisted routes are denied");
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // The same service mounted under /api in a larger app: the guard layer sees /orders/42, the client
    // addressed /api/orders/42, and its DPoP proof names the URL it addressed.
    let nested_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nested_base = format!("http://{}", nested_listener.local_addr().unwrap());
    let nested = axum::Router::new()
        .nest("/api", tessera_example_orders::app(&guard))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let nested_service = tokio::spawn(async move {
        let _ = axum::serve(nested_listener, nested).await;
    });
    let key = tessera_testkit::DpopClient::new("ES256").unwrap();
    let now = || u64::try_from(tessera_server::now()).unwrap();
    let proof = key.proof("POST", &format!("{issuer}/token"), now(), None, None).unwrap();
    let bound = get_token(Some(proof)).await;
    assert_eq!(bound["token_type"], "DPoP", "{bound}");
    let bound = bound["access_token"].as_str().unwrap().to_owned();
    let call = |url: String, proof_url: &str| {
        let proof = key.proof("GET", proof_url, now(), Some(&bound), None).unwrap();
        http.get(url).header("authorization", format!("DPoP {bound}")).header("DPoP", proof).send()
    };
    let r = call(format!("{nested_base}/api/orders/7"), &format!("{API}/api/orders/7")).await.unwrap();
    assert_eq!(r.status(), 200, "the proof names the URL the client used");
    let r = call(format!("{nested_base}/api/orders/7"), &format!("{API}/orders/7")).await.unwrap();
    assert_eq!(r.status(), 401, "a proof for the path without the prefix is for another URL");
    nested_service.abort();

    // Revoking the client at the server reaches the service's guard.
    state.store.revoke_client("reporting", "test", tessera_server::now()).await.unwrap();
    let mut refused = false;
    for _ in 0..500 {
        let r = http.get(format!("{base}/orders/42")).bearer_auth(&token).send().await.unwrap();
        if r.status() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(refused, "the revoked client's token is refused within a second");

    service.abort();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
