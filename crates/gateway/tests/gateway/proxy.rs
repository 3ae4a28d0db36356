//! The proxy itself: what the upstream sees, streaming in both directions, HTTP/2, upstream failures, its own
//! health and metrics, and a policy file that stops start-up.

use std::time::Duration;

use tessera_gateway::{FileConfig, Gateway};

use crate::harness::{Backend, Grant, Options, World, get};

#[tokio::test]
async fn upstream_sees_the_normalised_path_and_the_validated_identity_only() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let (token, jti) = w.token(Grant { roles: &["admin"], ..Grant::default() });
    let request = format!(
        "GET //admin//users/./7/?page=2 HTTP/1.1\r\nHost: orders.example\r\nAuthorization: Bearer {token}\r\n\
         X-Tessera-Sub: root\r\nX-Tessera-Roles: superuser\r\nX_Tessera_Roles: superuser\r\nX-Forwarded-For: 6.6.6.6\r\n\
         X-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin/drop\r\nX-Real-IP: 6.6.6.6\r\n\
         Connection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n"
    );
    assert_eq!(w.raw(&request).await, 200);
    let seen = w.upstream.last();
    assert_eq!(seen.path_and_query, "/admin/users/7?page=2");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.header("x-tessera-sub"), Some("u_alice"));
    assert_eq!(seen.header("x-tessera-roles"), Some("admin"));
    assert_eq!(seen.header("x-tessera-client-id"), Some("web"));
    assert_eq!(seen.header("x-tessera-scope"), Some("orders:read"));
    assert_eq!(seen.header("x-tessera-sid"), Some("fam_alice_1"));
    assert_eq!(seen.header("x-tessera-jti"), Some(jti.as_str()));
    assert_eq!(
        seen.headers.iter().filter(|(k, _)| k.starts_with("x-tessera-")).count(),
        6,
        "no client copy survives"
    );
    assert_eq!(seen.header("authorization"), None, "the token stays at the gateway");
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "an untrusted peer's X-Forwarded-For is replaced"
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("orders.example"));
    assert_eq!(seen.header("x-secret-hop"), None);
    assert_eq!(seen.header("x_tessera_roles"), None, "an underscore spelling is stripped too");
    assert_eq!(seen.header("x-http-method-override"), None);
    assert_eq!(seen.header("x-original-url"), None);
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(seen.header("host"), Some(w.upstream.addr.to_string().as_str()));
    // A public route gets no identity, and client-sent identity headers are still stripped.
    let public = "GET /public/a HTTP/1.1\r\nHost: gw\r\nX-Tessera-Sub: root\r\nConnection: close\r\n\r\n";
    assert_eq!(w.raw(public).await, 200);
    assert_eq!(w.upstream.last().header("x-tessera-sub"), None);
    w.finish().await;
}

#[tokio::test]
async fn bodies_stream_both_ways_over_http1_and_http2() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let (token, _) = w.token(Grant::default());
    // 8 MiB sent as a stream of chunks, echoed back as a stream.
    let chunk = vec![0x5au8; 64 * 1024];
    for http2 in [false, true] {
        let builder = reqwest::Client::builder();
        let http =
            if http2 { builder.http2_prior_knowledge() } else { builder.http1_only() }.build().unwrap();
        let piece = chunk.clone();
        let chunks = (0..128).map(move |_| Ok::<_, std::io::Error>(piece.clone()));
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let resp = http.post(w.url("/echo")).bearer_auth(&token).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "http2={http2}");
        assert_eq!(resp.version(), if http2 { reqwest::Version::HTTP_2 } else { reqwest::Version::HTTP_11 });
        let echoed = resp.bytes().await.unwrap();
        assert_eq!(echoed.len(), 128 * 64 * 1024, "http2={http2}");
        assert!(echoed.iter().all(|&b| b == 0x5a));
    }
    w.finish().await;
}

#[tokio::test]
async fn upstream_failures_are_502_and_timeouts_504() {
    let w = World::start_with(
        Backend::Sqlite,
        Options { upstream_timeout: Duration::from_millis(500), ..Options::default() },
    )
    .await
    .unwrap();
    let (token, _) = w.token(Grant::default());
    assert_eq!(w.raw(&get("/slow", Some(&token))).await, 504);
    // An upstream that is gone: a port with no listener.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = FileConfig {
        issuer: Some(w.server.issuer()),
        audience: Some(crate::harness::API.into()),
        upstream: Some(format!("http://{closed}")),
        listen: Some("127.0.0.1:0".into()),
        policy: Some("unused".into()),
        client_id: Some("unused".into()),
        ..Default::default()
    }
    .build(Some("unused".into()))
    .unwrap();
    config.upstream_timeout = Duration::from_secs(5);
    let gone = Gateway::with_guard(config, w.gateway.guard().clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tessera_gateway::serve(gone, listener, None, async move {
        let _ = stopped.await;
    }));
    assert_eq!(crate::harness::raw_status(addr, &get("/orders/1", Some(&token))).await, 502);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    // The gateway counted both.
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_gateway_upstream_errors_total{kind=\"timeout\"} 1"), "{metrics}");
    w.finish().await;
}

#[tokio::test]
async fn a_broken_request_body_is_the_clients_400_not_an_upstream_502() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let (token, _) = w.token(Grant::default());
    let head = format!(
        "POST /collect HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    // A whole chunked body reaches the upstream.
    assert_eq!(w.raw(&format!("{head}4\r\nabcd\r\n0\r\n\r\n")).await, 200);
    // A chunk size that is not hexadecimal is the client's own framing error.
    assert_eq!(w.raw(&format!("{head}4\r\nabcd\r\nzz\r\n")).await, 400);
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("tessera_gateway_upstream_errors_total"), "not an upstream failure: {metrics}");
    w.finish().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_are_the_gateways_own() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let (token, _) = w.token(Grant::default());
    assert_eq!(w.raw(&get("/orders/1", Some(&token))).await, 200);
    assert_eq!(w.raw(&get("/orders/1", None)).await, 401);
    let before = w.upstream.count();
    let health = reqwest::get(w.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(w.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("tessera_guard_decisions_total{outcome=\"granted\",reason=\"valid\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tessera_guard_decisions_total{outcome=\"rejected\",reason=\"missing_token\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tessera_guard_stream_connected 1"), "{metrics}");
    assert!(metrics.contains("tessera_gateway_responses_total{code=\"200\"}"), "{metrics}");
    assert_eq!(w.upstream.count(), before, "the gateway's own paths never go upstream");
    w.finish().await;
}

#[tokio::test]
async fn metrics_on_the_public_listener_are_for_loopback_clients_only() {
    let w = World::start_with(Backend::Sqlite, Options { trusted_proxies: true, ..Options::default() })
        .await
        .unwrap();
    assert_eq!(w.raw(&get("/metrics", None)).await, 200, "a loopback client reads them");
    assert_eq!(
        w.raw(&crate::harness::get_from("/metrics", None, "203.0.113.5")).await,
        403,
        "a client elsewhere, seen through the trusted proxy, does not"
    );
    assert_eq!(w.raw(&crate::harness::get_from("/healthz", None, "203.0.113.5")).await, 200);
    assert_eq!(w.upstream.count(), 0);
    w.finish().await;
}

#[tokio::test]
async fn bad_policy_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"deny\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/orders/../admin\"\n",
    )
    .unwrap();
    let config = FileConfig {
        issuer: Some("http://127.0.0.1:1".into()),
        audience: Some("https://orders.example".into()),
        upstream: Some("http://127.0.0.1:2".into()),
        listen: Some("127.0.0.1:0".into()),
        policy: Some(policy.clone()),
        client_id: Some("gw".into()),
        ..Default::default()
    }
    .build(Some("secret".into()))
    .unwrap();
    let err = Gateway::start(config).unwrap_err();
    assert_eq!(
        err,
        format!(
            "{} line 5: path \"/orders/../admin\" is not in normal form (no empty, `.` or `..` segments, no trailing /, no %, \\ or ;)",
            policy.display()
        )
    );
}
