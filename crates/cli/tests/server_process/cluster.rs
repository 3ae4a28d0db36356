//! Two `tessera serve` processes on one PostgreSQL database behind a load balancer (a [`Relay`]), and two
//! gateways following them: a revocation through one node refused at the gateway on the other, a detection
//! fed by both nodes raised and alerted once, a node killed with `kill -9` (its gateway moves to the other
//! node, nothing revoked comes back, its alert is still delivered), and the database cut off and restored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{ClientKind, GrantType, SecretKind};
use tessera_gateway::{FileConfig, Gateway, GatewayConfig};
use tessera_guard::{Guard, GuardConfig, Policy};
use tessera_store::{Client, Resource};
use tessera_testkit::{Receiver, Relay};
use tokio::time::Instant;

use super::{MASTER_KEY, ServerProcess, admin, client};

const API: &str = "https://orders.example";
const WEBHOOK_SECRET: &str = "whsec-0123456789abcdef0123456789abcdef";
const POLICY: &str = "default = \"deny\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/orders/{id}\"\nscopes = [\"orders:read\"]\n";

/// The test database's URL, or `None` (and a line saying the test was skipped).
fn database_url() -> Option<String> {
    let url = std::env::var("TESSERA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        #[allow(clippy::print_stderr, reason = "a skipped test says so")]
        {
            eprintln!("skipped: TESSERA_TEST_DATABASE_URL is not set");
        }
    }
    url
}

/// A fresh schema for this test; the URL that uses it.
async fn schema(url: &str, name: &str) -> (String, String) {
    let schema = format!("tessera_{name}_{}", std::process::id());
    admin(url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await;
    let scoped = format!("{url}{}options[search_path]={schema}", if url.contains('?') { '&' } else { '?' });
    (schema, scoped)
}

fn addr(server: &ServerProcess) -> SocketAddr {
    server.addr.parse().unwrap()
}

/// Two `tessera serve` processes started with `env`, behind a balancer whose URL is their issuer (backend 0
/// is node A, backend 1 node B); the directory they were started in.
async fn two_nodes(env: &[(&str, &str)]) -> (Relay, ServerProcess, ServerProcess, tempfile::TempDir) {
    let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let lb = Relay::start(vec![placeholder, placeholder]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = ServerProcess::start(dir.path(), env, &["--issuer", &lb.url()]);
    let b = ServerProcess::start(dir.path(), env, &["--issuer", &lb.url()]);
    lb.set_backend(0, addr(&a));
    lb.set_backend(1, addr(&b));
    (lb, a, b, dir)
}

/// A confidential client with a secret; returns the secret. `serves`: a gateway's client.
async fn add_client(store: &dyn tessera_store::Store, id: &str, serves: bool) -> String {
    let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
    let client = Client {
        id: id.into(),
        name: id.into(),
        kind: ClientKind::Confidential,
        secret_hash: Some(secret.hash()),
        redirect_uris: vec![],
        grant_types: vec![GrantType::ClientCredentials],
        audiences: vec![API.into()],
        scopes: vec!["orders:read".into()],
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
    store.create_client(&client).await.unwrap();
    secret.expose().to_owned()
}

/// The orders resource, the gateways' client `gw` and the token client `batch`; their secrets.
async fn register(store: &dyn tessera_store::Store) -> (String, String) {
    let resource = Resource {
        audience: API.into(),
        scopes: vec!["orders:read".into()],
        created_at: tessera_server::now(),
    };
    store.create_resource(&resource).await.unwrap();
    (add_client(store, "gw", true).await, add_client(store, "batch", false).await)
}

/// A gateway in this process, for [`API`], in front of `upstream`, reaching the server through `issuer`
/// (the load balancer); believes `X-Forwarded-For` from loopback. Stops when dropped.
struct Gw {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Gw {
    async fn start(issuer: &str, secret: &str, upstream: &str) -> Gw {
        Gw::start_with(issuer, secret, upstream, Duration::from_secs(60)).await
    }

    /// [`Gw::start`], with the guard refreshing its JWKS every `jwks_refresh`.
    async fn start_with(issuer: &str, secret: &str, upstream: &str, jwks_refresh: Duration) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let file = FileConfig {
            issuer: Some(issuer.into()),
            audience: Some(API.into()),
            upstream: Some(upstream.into()),
            listen: Some(addr.to_string()),
            policy: Some(policy.clone()),
            client_id: Some("gw".into()),
            trusted_proxies: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        };
        let config: GatewayConfig = file.build(Some(secret.to_owned())).unwrap();
        let mut guard_config = GuardConfig::new(issuer.to_owned(), API, "gw", secret.to_owned());
        guard_config.report_interval = Duration::from_millis(100);
        guard_config.jwks_refresh = jwks_refresh;
        let guard = Guard::start(guard_config, Policy::load(&policy).unwrap()).unwrap();
        assert!(guard.wait_ready(Duration::from_secs(10)).await, "the gateway's guard became ready");
        let gateway: Arc<Gateway> = Gateway::with_guard(config, guard);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tessera_gateway::serve(gateway, listener, None, async move {
            let _ = stopped.await;
        }));
        Gw { addr, stop: Some(stop), _dir: dir }
    }

    /// `GET /orders/1` with `token`, as a client at `source`; the status.
    async fn get(&self, token: &str, source: &str) -> u16 {
        client()
            .get(format!("http://{}/orders/1", self.addr))
            .bearer_auth(token)
            .header("x-forwarded-for", source)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// Waits (at most `limit`) until `token` is refused with 401; how long that took.
    async fn refuses_within(&self, token: &str, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.get(token, "192.0.2.10").await == 401 {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The service behind the gateways: `200 ok` to any request (one per connection). Its base URL.
async fn upstream() -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = conn.write_all(answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A client_credentials request for `batch` through `base` as a client at `source`; the answer.
async fn ask_token(base: &str, secret: &str, source: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/token"))
        .basic_auth("batch", Some(secret))
        .header("x-forwarded-for", source)
        .form(&[("grant_type", "client_credentials"), ("resource", API), ("scope", "orders:read")])
        .send()
        .await
        .unwrap()
}

/// A client_credentials token for `batch`, asked through `base` as a client at `source`.
async fn token(base: &str, secret: &str, source: &str) -> String {
    let r = ask_token(base, secret, source).await;
    assert_eq!(r.status(), 200);
    r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

/// RFC 7009 revocation of `token` at `base`.
async fn revoke(base: &str, secret: &str, token: &str) {
    let r = client()
        .post(format!("{base}/revoke"))
        .basic_auth("batch", Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The node's `tessera_revocation_streams` gauge: guards following its stream.
async fn streams(server: &ServerProcess) -> u64 {
    let text = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tessera_revocation_streams "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (at most 20 s) until `server` has `n` guards following it.
async fn wait_streams(server: &ServerProcess, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while streams(server).await != n {
        assert!(Instant::now() < deadline, "{} guards never followed {}", n, server.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Member `name` of a JWT's header (`part` 0) or claims (`part` 1), read without verification: the tests only
/// name and compare it.
fn jwt_member(token: &str, part: usize, name: &str) -> String {
    use base64::Engine as _;
    let segment = token.split('.').nth(part).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).unwrap())
            .unwrap();
    json[name].as_str().unwrap().to_owned()
}

/// The `jti` of a JWT.
fn jti(token: &str) -> String {
    jwt_member(token, 1, "jti")
}

/// The alerts for rule `two_networks` about token `jti`.
fn alerts_about(got: &[tessera_testkit::Received], jti: &str) -> Vec<tessera_testkit::Received> {
    got.iter()
        .filter(|r| {
            let d = r.json()["detection"].clone();
            d["rule"] == "token_used_from_two_networks" && d["jti"] == jti
        })
        .cloned()
        .collect()
}

/// One token used through gateway 1 (node A) from one network and through gateway 2 (node B) from another.
async fn use_from_two_networks(g1: &Gw, g2: &Gw, token: &str) {
    for (gw, source) in [(g1, "192.0.2.10"), (g2, "198.51.100.20"), (g1, "192.0.2.10")] {
        assert_eq!(gw.get(token, source).await, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_through_one_node_is_refused_at_the_other_nodes_gateway_and_survives_its_kill_9() {
    let Some(url) = database_url() else { return };
    let (schema, scoped) = schema(&url, "cluster").await;
    let webhook = Receiver::start(200).await;
    let upstream_base = upstream().await;
    let env = [
        ("TESSERA_MASTER_KEY", MASTER_KEY),
        ("TESSERA_DATABASE_URL", scoped.as_str()),
        ("TESSERA_TRUSTED_PROXIES", "127.0.0.1"),
        ("TESSERA_ALERTS_WEBHOOK_URL", webhook.url.as_str()),
        ("TESSERA_ALERTS_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    let (lb, a, b, _dir) = two_nodes(&env).await;
    let issuer = lb.url();
    let store = tessera_store::open(&scoped).await.unwrap();
    let (gw_secret, secret) = register(&*store).await;

    // Gateway 1 follows node A, gateway 2 node B (the balancer sends each new connection to its preference).
    lb.prefer(0);
    let g1 = Gw::start(&issuer, &gw_secret, &upstream_base).await;
    wait_streams(&a, 1).await;
    lb.prefer(1);
    let g2 = Gw::start(&issuer, &gw_secret, &upstream_base).await;
    wait_streams(&b, 1).await;
    assert_eq!(streams(&a).await, 1, "gateway 2 follows node B only");

    // A token revoked through node A is refused at gateway 2, which hears only node B.
    let stolen = token(&issuer, &secret, "192.0.2.10").await;
    use_from_two_networks(&g1, &g2, &stolen).await;
    revoke(&a.url(""), &secret, &stolen).await;
    let delay = g2.refuses_within(&stolen, Duration::from_secs(1)).await;
    assert!(delay.is_some(), "node A's revocation refused at node B's gateway within 1 s");
    assert_eq!(g1.get(&stolen, "192.0.2.10").await, 401);

    // The detection saw uses reported to both nodes, and was raised and alerted once.
    let got = webhook.wait_for(Duration::from_secs(10), |g| !alerts_about(g, &jti(&stolen)).is_empty()).await;
    assert_eq!(alerts_about(&got, &jti(&stolen)).len(), 1, "alerted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alerts_about(&webhook.got(), &jti(&stolen)).len(), 1, "alerted once, not once per node");
    let raised = store.recent_events(Some("detection_raised"), 50).await.unwrap();
    let once = raised
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("token_used_from_two_networks") && e.jti == Some(jti(&stolen))
        })
        .count();
    assert_eq!(once, 1, "raised once");

    // A second copied token; its alert is left hanging at the receiver, then node B dies.
    webhook.answer(0);
    let second = token(&issuer, &secret, "192.0.2.10").await;
    use_from_two_networks(&g1, &g2, &second).await;
    let hanging =
        webhook.wait_for(Duration::from_secs(10), |g| !alerts_about(g, &jti(&second)).is_empty()).await;
    let alert_id = alerts_about(&hanging, &jti(&second))[0].header("tessera-alert-id");
    let survivor = token(&issuer, &secret, "192.0.2.10").await;
    assert_eq!(g2.get(&survivor, "192.0.2.10").await, 200);
    b.signal("-KILL");
    let _ = b.wait();
    webhook.answer(200);

    // Gateway 2 follows node A now; nothing revoked came back meanwhile, and a new revocation reaches it.
    assert_eq!(g2.get(&stolen, "192.0.2.10").await, 401, "revoked stays revoked while its node is gone");
    wait_streams(&a, 2).await;
    assert_eq!(g2.get(&stolen, "192.0.2.10").await, 401, "revoked stays revoked after the move");
    assert_eq!(g2.get(&survivor, "192.0.2.10").await, 200);
    revoke(&issuer, &secret, &survivor).await;
    assert!(
        g2.refuses_within(&survivor, Duration::from_secs(1)).await.is_some(),
        "a revocation after the move"
    );

    // Whichever node held the hanging alert, it is delivered: by node A's retry, or after node B's lease ends.
    let got = webhook
        .wait_for(Duration::from_secs(45), |g| {
            alerts_about(g, &jti(&second)).iter().any(|r| r.answered == 200)
        })
        .await;
    let delivered: Vec<_> =
        alerts_about(&got, &jti(&second)).into_iter().filter(|r| r.answered == 200).collect();
    assert_eq!(delivered.len(), 1, "the alert in flight is not lost");
    assert_eq!(delivered[0].header("tessera-alert-id"), alert_id, "the same alert");
    assert!(delivered[0].signed_with(WEBHOOK_SECRET));

    drop((g1, g2, a));
    admin(&url, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_keeps_gateways_validating_and_recovers_without_a_restart() {
    let Some(url) = database_url() else { return };
    let (schema, scoped) = schema(&url, "outage").await;
    // The node reaches PostgreSQL through a relay that the test cuts.
    let at = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let database: SocketAddr = tokio::net::lookup_host(at).await.unwrap().next().unwrap();
    let path = Relay::start(vec![database]).await;
    let relayed = scoped.replacen(at, &path.addr.to_string(), 1);
    let upstream_base = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("TESSERA_MASTER_KEY", MASTER_KEY), ("TESSERA_DATABASE_URL", relayed.as_str())];
    let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let front = Relay::start(vec![placeholder]).await;
    let issuer = front.url();
    let node = ServerProcess::start(dir.path(), &env, &["--issuer", &issuer]);
    front.set_backend(0, addr(&node));
    let store = tessera_store::open(&scoped).await.unwrap();
    let (gw_secret, secret) = register(&*store).await;
    let gw = Gw::start(&issuer, &gw_secret, &upstream_base).await;
    let held = token(&issuer, &secret, "192.0.2.10").await;
    assert_eq!(gw.get(&held, "192.0.2.10").await, 200);

    path.cut();
    let r = ask_token(&issuer, &secret, "192.0.2.10").await;
    assert_eq!(r.status(), 503, "the token endpoint says: try again later");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(!body.to_string().contains("PostgreSQL") && !body.to_string().contains("127.0.0.1"));
    let ready = client().get(node.url("/readyz")).send().await.unwrap().status().as_u16();
    assert_eq!(ready, 503, "the load balancer takes the node out");
    assert_eq!(client().get(node.url("/healthz")).send().await.unwrap().status(), 200, "alive all the same");
    assert_eq!(gw.get(&held, "192.0.2.10").await, 200, "the gateway validates from its caches");

    path.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = ask_token(&issuer, &secret, "192.0.2.10").await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503, "never a 500 while the database comes back");
        assert!(Instant::now() < deadline, "the node recovered without a restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client().get(node.url("/readyz")).send().await.unwrap().status(), 200);
    revoke(&issuer, &secret, &held).await;
    assert!(
        gw.refuses_within(&held, Duration::from_secs(1)).await.is_some(),
        "revocations flow again: the node's follower and listener came back"
    );

    drop((gw, node));
    admin(&url, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// The `kid` in a JWT's header.
fn kid(token: &str) -> String {
    jwt_member(token, 0, "kid")
}

/// Whether `server` publishes the key `kid` in its JWKS.
async fn publishes(server: &ServerProcess, kid: &str) -> bool {
    let jwks: serde_json::Value =
        client().get(server.url("/jwks.json")).send().await.unwrap().json().await.unwrap();
    jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_published_by_every_node_before_either_node_signs_with_it() {
    let Some(url) = database_url() else { return };
    let (schema, scoped) = schema(&url, "rotation").await;
    let upstream_base = upstream().await;
    let env = [
        ("TESSERA_MASTER_KEY", MASTER_KEY),
        ("TESSERA_DATABASE_URL", scoped.as_str()),
        ("TESSERA_KEY_PUBLISH_DELAY", "3"),
    ];
    let (lb, a, b, dir) = two_nodes(&env).await;
    let issuer = lb.url();
    let store = tessera_store::open(&scoped).await.unwrap();
    let (gw_secret, secret) = register(&*store).await;
    // Guards refresh their JWKS within the publish delay (here every second within 3 s; by default every
    // 60 s within 300 s), so the new key is in their cache before the first token it signs arrives.
    lb.prefer(1);
    let gw = Gw::start_with(&issuer, &gw_secret, &upstream_base, Duration::from_secs(1)).await;
    wait_streams(&b, 1).await;
    let before = token(&a.url(""), &secret, "192.0.2.10").await;
    let old = kid(&before);
    assert_eq!(kid(&token(&b.url(""), &secret, "192.0.2.10").await), old, "one key signs on both nodes");

    // An operator schedules a rotation from the command line, at neither node.
    let (code, out, err) = super::run(dir.path(), &env, &["keys", "rotate"], "");
    assert_eq!(code, 0, "keys rotate: {out}{err}");
    let next = store.list_keys().await.unwrap().into_iter().find(|k| k.state.as_str() == "next").unwrap().kid;
    assert!(out.contains(&next), "the command names the new key: {out}");

    // Both nodes publish it within a second, and until both do, neither signs with it.
    let started = Instant::now();
    loop {
        let signed =
            [token(&a.url(""), &secret, "192.0.2.10").await, token(&b.url(""), &secret, "192.0.2.10").await];
        let everywhere = publishes(&a, &next).await && publishes(&b, &next).await;
        if !everywhere {
            assert!(
                signed.iter().all(|t| kid(t) == old),
                "a node signed with a key not yet published everywhere"
            );
        }
        if everywhere {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "every node published the new key within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // After the publish delay, both nodes sign with it, and node B's gateway admits what they sign.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut switched = [false, false];
    while switched != [true, true] {
        for (i, node) in [&a, &b].into_iter().enumerate() {
            let t = token(&node.url(""), &secret, "192.0.2.10").await;
            if kid(&t) == next {
                switched[i] = true;
                assert_eq!(gw.get(&t, "192.0.2.10").await, 200, "a token signed by the new key passes");
            } else {
                assert_eq!(kid(&t), old, "only the old key or the new one signs");
            }
        }
        assert!(Instant::now() < deadline, "both nodes sign with the new key after the publish delay");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let current: Vec<_> =
        store.list_keys().await.unwrap().into_iter().filter(|k| k.state.as_str() == "current").collect();
    assert_eq!(current.len(), 1, "one key is current");
    assert_eq!(current[0].kid, next);
    assert_eq!(
        gw.get(&before, "192.0.2.10").await,
        200,
        "what the old key signed stays valid until it expires"
    );

    drop((gw, a, b));
    admin(&url, &format!("DROP SCHEMA {schema} CASCADE")).await;
}
