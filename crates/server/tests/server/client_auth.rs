//! Client authentication with keys (RFC 7523 `private_key_jwt`): a client that registered a JWKS signs a
//! short-lived assertion per request; each assertion works once; its secret can be switched off. The
//! assertions are signed by `tessera-testkit` with the `jsonwebtoken` crate.

use serde_json::Value;
use tessera_store::Client;
use tessera_testkit::DpopClient;

use crate::common::{API, Server, http, service_client};

crate::on_both_backends!(
    private_key_jwt_assertion_gets_a_token_and_works_once,
    assertion_for_another_server_too_long_lived_or_by_another_key_is_refused,
    client_secret_is_refused_once_switched_off,
    discovery_lists_private_key_jwt_and_token_exchange,
);

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn now() -> u64 {
    u64::try_from(tessera_server::now()).unwrap()
}

/// Registers `worker`, a confidential client_credentials client with `key` and no secret.
async fn key_client(s: &Server, key: &DpopClient) {
    s.add_resource(API, &["orders:read"]).await;
    let client = Client { jwks: Some(key.jwks("k1").unwrap().to_string()), ..service_client("worker") };
    s.state.store.create_client(&client).await.unwrap();
}

/// POSTs `form` to `path`; returns the status and the JSON body.
async fn post(s: &Server, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = http().post(s.url(path)).form(form).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn with_assertion(s: &Server, assertion: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    post(s, "/token", &form).await
}

async fn private_key_jwt_assertion_gets_a_token_and_works_once(s: &Server) {
    let key = DpopClient::new("ES256").unwrap();
    key_client(s, &key).await;
    let assertion = key.client_assertion("k1", "worker", &s.base, now(), 60).unwrap();
    let (status, body) = with_assertion(s, &assertion, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let claims = s.jwks().await;
    let checked = tessera_token::validate_access_token(
        body["access_token"].as_str().unwrap(),
        &claims,
        &tessera_token::Validation::access_token(s.base.clone(), API),
        tessera_token::UnixTime(now()),
    )
    .unwrap();
    assert_eq!(checked.client_id, "worker");

    // The same assertion again, even a second later: a replay.
    let (status, body) = with_assertion(s, &assertion, &[]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));

    // A fresh one addressed to the token endpoint, naming the client in the body too, works.
    let token_endpoint = s.url("/token");
    let fresh = key.client_assertion("k1", "worker", &token_endpoint, now(), 60).unwrap();
    let (status, body) = with_assertion(s, &fresh, &[("client_id", "worker")]).await;
    assert_eq!(status, 200, "{body}");

    // Introspection accepts the same authentication.
    let again = key.client_assertion("k1", "worker", &s.base, now(), 60).unwrap();
    let token = body["access_token"].as_str().unwrap();
    let form = [("token", token), ("client_assertion_type", ASSERTION_TYPE), ("client_assertion", &again)];
    let (status, body) = post(s, "/introspect", &form).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)), "{body}");
}

async fn assertion_for_another_server_too_long_lived_or_by_another_key_is_refused(s: &Server) {
    let key = DpopClient::new("EdDSA").unwrap();
    key_client(s, &key).await;
    let refused = |(status, body): (u16, Value)| {
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
        assert_eq!(body["error_description"], "client authentication failed", "no detail on the wire");
    };
    let elsewhere =
        key.client_assertion("k1", "worker", "https://other-idp.example/token", now(), 60).unwrap();
    refused(with_assertion(s, &elsewhere, &[]).await);
    let long_lived = key.client_assertion("k1", "worker", &s.base, now(), 3600).unwrap();
    refused(with_assertion(s, &long_lived, &[]).await);
    let expired = key.client_assertion("k1", "worker", &s.base, now() - 600, 60).unwrap();
    refused(with_assertion(s, &expired, &[]).await);
    let impostor =
        DpopClient::new("EdDSA").unwrap().client_assertion("k1", "worker", &s.base, now(), 60).unwrap();
    refused(with_assertion(s, &impostor, &[]).await);
    // An assertion about one client presented for another.
    let genuine = key.client_assertion("k1", "worker", &s.base, now(), 60).unwrap();
    refused(with_assertion(s, &genuine, &[("client_id", "someone-else")]).await);
    // An unknown assertion type.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
        ("client_assertion", genuine.as_str()),
    ];
    refused(post(s, "/token", &form).await);
    // Two methods at once, or half of one.
    let (status, body) = with_assertion(s, &genuine, &[("client_secret", "tss_guess")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let form = [("grant_type", "client_credentials"), ("client_assertion", genuine.as_str())];
    let (status, body) = post(s, "/token", &form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    // None of the refused attempts spent the genuine assertion.
    assert_eq!(with_assertion(s, &genuine, &[]).await.0, 200);
}

async fn client_secret_is_refused_once_switched_off(s: &Server) {
    s.add_resource(API, &["orders:read"]).await;
    let secret = s.add_service_client("svc").await;
    let key = DpopClient::new("PS256").unwrap();
    let store = &s.state.store;
    assert!(store.set_client_jwks("svc", Some(&key.jwks("k1").unwrap().to_string())).await.unwrap());
    let by_secret = || async {
        let form = [("grant_type", "client_credentials")];
        let r =
            http().post(s.url("/token")).basic_auth("svc", Some(&secret)).form(&form).send().await.unwrap();
        r.status().as_u16()
    };
    assert_eq!(by_secret().await, 200, "secret and keys both work");
    assert!(store.set_client_secret("svc", None).await.unwrap());
    s.state.directory.sync().await.unwrap();
    assert_eq!(by_secret().await, 401, "the secret is switched off");
    // Naming a confidential client without any credential is never enough.
    let (status, _) = post(s, "/token", &[("grant_type", "client_credentials"), ("client_id", "svc")]).await;
    assert_eq!(status, 401);
    let assertion = key.client_assertion("k1", "svc", &s.base, now(), 60).unwrap();
    let (status, body) = with_assertion(s, &assertion, &[]).await;
    assert_eq!(status, 200, "{body}");
}

async fn discovery_lists_private_key_jwt_and_token_exchange(s: &Server) {
    let d: Value =
        http().get(s.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    for field in [
        "token_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
    ] {
        assert!(d[field].as_array().unwrap().contains(&"private_key_jwt".into()), "{field}: {d}");
    }
    assert_eq!(
        d["token_endpoint_auth_signing_alg_values_supported"],
        serde_json::json!(["EdDSA", "ES256", "RS256", "PS256"])
    );
    let grants = d["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&"urn:ietf:params:oauth:grant-type:token-exchange".into()), "{d}");
}

/// With server nonces on, the first request's `use_dpop_nonce` answer must not spend the assertion: the
/// client's retry (RFC 9449 §8) sends the same body again with a new proof.
async fn assertion_survives_a_dpop_nonce_retry(backend: crate::common::Backend) {
    let Some(s) = Server::start_with(backend, |c| c.dpop_nonce = true).await else { return };
    let key = DpopClient::new("ES256").unwrap();
    key_client(&s, &key).await;
    let assertion = key.client_assertion("k1", "worker", &s.base, now(), 60).unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
    ];
    let send = |proof: String| {
        let s = &s;
        async move {
            let r = http().post(s.url("/token")).header("DPoP", proof).form(&form).send().await.unwrap();
            let nonce = r.headers().get("dpop-nonce").map(|v| v.to_str().unwrap().to_owned());
            let status = r.status().as_u16();
            (status, nonce, r.json::<Value>().await.unwrap())
        }
    };
    let (status, nonce, body) = send(key.proof("POST", &s.url("/token"), now(), None, None).unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("use_dpop_nonce")), "{body}");
    let nonce = nonce.unwrap();
    let (status, _, body) =
        send(key.proof("POST", &s.url("/token"), now(), None, Some(&nonce)).unwrap()).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")), "{body}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_survives_a_dpop_nonce_retry_sqlite() {
    assertion_survives_a_dpop_nonce_retry(crate::common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_survives_a_dpop_nonce_retry_postgres() {
    assertion_survives_a_dpop_nonce_retry(crate::common::Backend::Postgres).await;
}
