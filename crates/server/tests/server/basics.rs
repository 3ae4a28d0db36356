//! Discovery, JWKS, health, metrics, and the client_credentials grant.

use oauth2::{Scope, TokenResponse as _};
use serde_json::Value;
use tessera_core::{ClientKind, GrantType};
use tessera_token::{UnixTime, Validation, validate_access_token};

use crate::common::{API, Server, http};

crate::on_both_backends!(
    discovery_advertises_every_endpoint_and_only_s256,
    jwks_is_public_only_and_cacheable,
    health_readiness_and_metrics_answer,
    client_credentials_token_is_audience_bound_and_verifies,
    client_credentials_refuses_what_it_must,
    token_endpoint_answers_garbage_with_rfc_6749_errors_never_5xx,
    no_token_is_issued_when_the_audit_log_cannot_record_it,
);

async fn discovery_advertises_every_endpoint_and_only_s256(s: &Server) {
    for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
        let doc: Value = reqwest::get(s.url(path)).await.unwrap().json().await.unwrap();
        assert_eq!(doc["issuer"], s.base);
        for (key, p) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("jwks_uri", "/jwks.json"),
            ("userinfo_endpoint", "/userinfo"),
            ("end_session_endpoint", "/logout"),
            ("revocation_endpoint", "/revoke"),
            ("introspection_endpoint", "/introspect"),
        ] {
            assert_eq!(doc[key], s.url(p), "{key}");
        }
        assert_eq!(doc["code_challenge_methods_supported"], serde_json::json!(["S256"]));
        assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
        assert_eq!(doc["id_token_signing_alg_values_supported"], serde_json::json!(["EdDSA"]));
    }
}

async fn jwks_is_public_only_and_cacheable(s: &Server) {
    let r = reqwest::get(s.url("/jwks.json")).await.unwrap();
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let jwks: Value = r.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].get("d").is_none(), "no private member");
    assert_eq!(keys[0]["kid"], s.state.keyring().signer().kid());
}

async fn health_readiness_and_metrics_answer(s: &Server) {
    assert_eq!(reqwest::get(s.url("/healthz")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(s.url("/readyz")).await.unwrap().status(), 200);
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("tessera_http_requests_total{endpoint=\"/readyz\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tessera_http_request_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("tessera_refresh_token_reuse_total 0"));
    assert!(metrics.contains("tessera_login_failures_total 0"));
}

async fn client_credentials_token_is_audience_bound_and_verifies(s: &Server) {
    s.add_resource(API, &["orders:read", "orders:write"]).await;
    let secret = s.add_service_client("svc").await;
    let client = s.oauth("svc", Some(&secret));
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("orders:read".into()))
        .add_extra_param("resource", API)
        .request_async(&http())
        .await
        .unwrap();
    assert!(token.refresh_token().is_none(), "client_credentials never gets a refresh token");
    assert_eq!(token.expires_in().unwrap().as_secs(), 300);
    let keys = s.jwks().await;
    let now = UnixTime(u64::try_from(tessera_server::now()).unwrap());
    let claims = validate_access_token(
        token.access_token().secret(),
        &keys,
        &Validation::access_token(&s.base, API),
        now,
    )
    .unwrap();
    assert_eq!((claims.sub.as_str(), claims.client_id.as_str()), ("svc", "svc"));
    assert_eq!(claims.scope.as_deref(), Some("orders:read"));
    assert!(claims.sid.is_none());
    assert_eq!(claims.exp - claims.iat, 300);
    let elsewhere = Validation::access_token(&s.base, "https://billing.example");
    assert!(validate_access_token(token.access_token().secret(), &keys, &elsewhere, now).is_err());
    // Without `resource`, the client's only audience is used.
    let token = client.exchange_client_credentials().request_async(&http()).await.unwrap();
    assert!(
        validate_access_token(
            token.access_token().secret(),
            &keys,
            &Validation::access_token(&s.base, API),
            now
        )
        .is_ok()
    );
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_tokens_issued_total{grant=\"client_credentials\"} 2"), "{metrics}");
}

async fn post_token(
    s: &Server,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http().post(s.url("/token")).form(form);
    if let Some((id, secret)) = auth {
        req = req.basic_auth(id, Some(secret));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

async fn client_credentials_refuses_what_it_must(s: &Server) {
    s.add_resource(API, &["orders:read"]).await;
    s.add_resource("https://billing.example", &["bills:read"]).await;
    let secret = s.add_service_client("svc").await;
    let web = s
        .add_client(
            "web",
            ClientKind::Confidential,
            &[GrantType::AuthorizationCode],
            &[API],
            &["orders:read"],
            true,
        )
        .await
        .unwrap();
    s.add_client("spa", ClientKind::Public, &[GrantType::ClientCredentials], &[API], &["orders:read"], true)
        .await;
    let cc = [("grant_type", "client_credentials")];

    let (status, body, headers) = post_token(s, Some(("svc", "tss_wrong")), &cc).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let (status, body, _) = post_token(s, Some(("nobody", &secret)), &cc).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let (status, body, _) =
        post_token(s, None, &[("grant_type", "client_credentials"), ("client_id", "spa")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "public clients have no secret"
    );
    let (status, body, _) = post_token(s, Some(("web", &web)), &cc).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")), "grant not allowed");
    let target = [("grant_type", "client_credentials"), ("resource", "https://billing.example")];
    let (status, body, _) = post_token(s, Some(("svc", &secret)), &target).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")));
    let scoped = [("grant_type", "client_credentials"), ("scope", "orders:write")];
    let (status, body, _) = post_token(s, Some(("svc", &secret)), &scoped).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));
    // client_secret_post works too; both methods at once do not.
    let post =
        [("grant_type", "client_credentials"), ("client_id", "svc"), ("client_secret", secret.as_str())];
    let (status, _, headers) = post_token(s, None, &post).await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    let (status, body, _) = post_token(s, Some(("svc", &secret)), &post).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    // A disabled client is refused within the directory cache's staleness bound (250 ms).
    s.state.store.set_client_disabled("svc", true).await.unwrap();
    let mut refused_after = None;
    for attempt in 0..20 {
        let (status, body, _) = post_token(s, Some(("svc", &secret)), &cc).await;
        if status == 401 {
            assert_eq!(body["error"], "invalid_client");
            refused_after = Some(attempt);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let attempts = refused_after.expect("the disabled client was still served after a second");
    assert!(attempts <= 10, "refused only after {attempts} tries of 50 ms");
}

async fn token_endpoint_answers_garbage_with_rfc_6749_errors_never_5xx(s: &Server) {
    let bodies: [(&str, &[u8]); 10] = [
        // NUL, which PostgreSQL cannot store in text: refused before any lookup.
        ("application/x-www-form-urlencoded", b"grant_type=client_credentials&client_id=%00"),
        (
            "application/x-www-form-urlencoded",
            b"grant_type=refresh_token&refresh_token=tsr_x&client_id=a%00b",
        ),
        ("application/x-www-form-urlencoded", b""),
        ("application/x-www-form-urlencoded", b"grant_type=password&username=a&password=b"),
        ("application/x-www-form-urlencoded", b"grant_type=client_credentials&grant_type=client_credentials"),
        ("application/x-www-form-urlencoded", b"grant_type=refresh_token&refresh_token=%ff%fe&client_id=x"),
        ("application/x-www-form-urlencoded", b"\xff\xfe\x00=\x01"),
        ("application/json", b"{\"grant_type\":\"client_credentials\"}"),
        ("text/plain", b"grant_type=client_credentials"),
        ("application/x-www-form-urlencoded", b"grant_type=authorization_code&code=tsc_x&client_id=nobody"),
    ];
    for (content_type, body) in bodies {
        let r = http()
            .post(s.url("/token"))
            .header("content-type", content_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{status} for {body:?}");
        let json: Value = r.json().await.unwrap();
        let error = json["error"].as_str().unwrap();
        assert!(
            ["invalid_request", "invalid_client", "unsupported_grant_type", "invalid_grant"].contains(&error),
            "{error}"
        );
    }
    let huge = vec![b'a'; 100 * 1024];
    let r = http()
        .post(s.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

/// Runs SQL on the server's own database, as an operator with database access could.
async fn database_sql(s: &Server, sql: &str) {
    use sqlx::Connection;
    if s.state.config.database_url.is_empty() {
        let path = s.state.config.data_dir.join("tessera.db");
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(&s.state.config.database_url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
}

async fn no_token_is_issued_when_the_audit_log_cannot_record_it(s: &Server) {
    s.add_resource(API, &["orders:read"]).await;
    let secret = s.add_service_client("svc").await;
    let ask = || {
        http()
            .post(s.url("/token"))
            .basic_auth("svc", Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    assert_eq!(ask().await.unwrap().status(), 200);
    // The audit log refuses every write (a full disk, a broken table): the token endpoint hands nothing out.
    let sqlite = s.state.config.database_url.is_empty();
    if sqlite {
        database_sql(
            s,
            "CREATE TRIGGER audit_down BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
        .await;
    } else {
        database_sql(
            s,
            "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$; \
             CREATE TRIGGER audit_down BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION audit_down();",
        )
        .await;
    }
    let refused = ask().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body.get("access_token").is_none());
    assert!(!body.to_string().contains("disk full"), "no internal error text on the wire: {body}");
    database_sql(s, if sqlite { "DROP TRIGGER audit_down" } else { "DROP TRIGGER audit_down ON events" })
        .await;
    assert_eq!(ask().await.unwrap().status(), 200, "issuing again once the log can be written");
    let issued = s.state.store.recent_events(Some("token_issued"), 10).await.unwrap();
    assert_eq!(issued.len(), 2, "exactly the tokens handed out are recorded");
    assert!(tessera_store::verify_audit_chain(&*s.state.store).await.unwrap().is_ok(), "the chain is whole");
}

#[tokio::test]
async fn a_stopping_server_fails_readiness_while_it_drains_and_still_serves() {
    let mut s = Server::start_with(crate::common::Backend::Sqlite, |c| c.drain_secs = 2).await.unwrap();
    let fresh = || reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    assert_eq!(fresh().get(s.url("/readyz")).send().await.unwrap().status(), 200);
    s.begin_stop();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while fresh().get(s.url("/readyz")).send().await.unwrap().status() != 503 {
        assert!(tokio::time::Instant::now() < deadline, "readiness fails as soon as the stop begins");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The balancer takes the node out meanwhile; whatever still arrives is served.
    assert_eq!(fresh().get(s.url("/jwks.json")).send().await.unwrap().status(), 200);
    assert_eq!(fresh().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.finish().await;
}

#[tokio::test]
async fn metrics_are_refused_to_clients_outside_metrics_allow() {
    let s = Server::start_with(crate::common::Backend::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let from = |ip: &'static str| http.get(s.url("/metrics")).header("x-forwarded-for", ip).send();
    assert_eq!(reqwest::get(s.url("/metrics")).await.unwrap().status(), 200, "loopback reads them");
    let refused = from("203.0.113.9").await.unwrap();
    assert_eq!(refused.status(), 403, "a client behind the proxy does not");
    assert!(!refused.text().await.unwrap().contains("tessera_"), "and sees no figure");
    s.finish().await;
    let s = Server::start_with(crate::common::Backend::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.metrics_allow = vec!["203.0.113.0/24".into()];
    })
    .await
    .unwrap();
    let scraper = reqwest::Client::new().get(s.url("/metrics")).header("x-forwarded-for", "203.0.113.9");
    assert_eq!(scraper.send().await.unwrap().status(), 200, "a configured scraper reads them");
    s.finish().await;
}
