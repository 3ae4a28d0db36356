//! What the guard costs a service per request, with 10,000 live revocations: a validated-token cache hit, a
//! miss (full validation), and, in the same run, the raw EdDSA verify of the same token for the ratio.
//!
//! The guard runs against a real in-process authorization server (SQLite in a temporary directory) that
//! holds the revocations and streams them to it.
//!
//! `cargo bench -p tessera-guard --bench guard`

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up fails loudly")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use tessera_core::RevocationKind;
use tessera_guard::{Guard, GuardConfig, Policy};
use tessera_server::issue::AccessGrant;
use tessera_store::NewRevocation;

const API: &str = "https://orders.example";
const POLICY: &str =
    "default = \"deny\"\n[[route]]\nmethod = \"GET\"\npath = \"/orders/{id}\"\nscopes = [\"orders:read\"]\n";

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (state, listener) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let config = tessera_server::Config {
            issuer,
            data_dir: dir.path().join("data"),
            ..tessera_server::Config::default()
        };
        let (state, _) = tessera_server::prepare(config).await.unwrap();
        (state, listener)
    });
    let issuer = state.config.issuer.clone();
    let secret = rt.block_on(async {
        let now = tessera_server::now();
        // 10,000 live revocations of every subject kind, none matching the benchmarked tokens.
        let kinds =
            [RevocationKind::Token, RevocationKind::Session, RevocationKind::User, RevocationKind::Client];
        for i in 0..10_000 {
            let kind = kinds[i % kinds.len()];
            let not_before = matches!(kind, RevocationKind::User | RevocationKind::Client).then_some(now);
            let entry = NewRevocation {
                kind,
                subject: format!("other-{i}"),
                not_before,
                expires_at: now + 900,
                reason: "bench".into(),
            };
            state.store.revoke(&entry, now).await.unwrap();
        }
        let resource = tessera_store::Resource {
            audience: API.into(),
            scopes: vec!["orders:read".into()],
            created_at: now,
        };
        state.store.create_resource(&resource).await.unwrap();
        let secret = tessera_server::crypto::new_secret(tessera_core::SecretKind::ClientSecret).unwrap();
        let client = tessera_store::Client {
            id: "orders-guard".into(),
            name: "orders-guard".into(),
            kind: tessera_core::ClientKind::Confidential,
            secret_hash: Some(secret.hash()),
            redirect_uris: vec![],
            grant_types: vec![tessera_core::GrantType::ClientCredentials],
            audiences: vec![API.into()],
            scopes: vec![],
            access_ttl: 300,
            refresh_idle_ttl: 3600,
            refresh_absolute_ttl: 86_400,
            first_party: true,
            disabled: false,
            created_at: now,
        };
        state.store.create_client(&client).await.unwrap();
        secret.expose().to_owned()
    });
    let server = rt.spawn(tessera_server::serve(Arc::clone(&state), listener, std::future::pending()));
    let mint = |i: usize| {
        let now = tessera_server::now();
        let grant = AccessGrant {
            sub: format!("0b9a3c52-4a8e-4f2d-9a57-{i:012}"),
            client_id: "web".into(),
            audience: API.into(),
            scope: "openid orders:read orders:write".into(),
            sid: Some(format!("fam_{i:022}")),
            roles: vec!["reader".into(), "support".into()],
            auth_time: Some(now),
            amr: vec!["pwd".into(), "otp".into()],
            ttl: 300,
        };
        tessera_server::issue::access_token(&state, grant, now).unwrap().token
    };
    let start = |capacity: usize| {
        let mut config = GuardConfig::new(issuer.clone(), API, "orders-guard", secret.clone());
        config.cache_capacity = capacity;
        config.report_interval = Duration::from_millis(500);
        rt.block_on(async {
            let guard = Guard::start(config, Policy::parse(POLICY).unwrap()).unwrap();
            assert!(guard.wait_ready(Duration::from_secs(30)).await);
            guard
        })
    };
    let cached = start(10_000);
    let uncached = start(1);
    assert!(cached.revocation_seq() >= 10_000, "the guard holds the 10,000 revocations");

    let token = mint(0);
    let uri: Uri = "/orders/42".parse().unwrap();
    let h = headers(&token);
    let peer = Some("127.0.0.1".parse().unwrap());
    rt.block_on(cached.check(&Method::GET, &uri, &h, peer)).unwrap();
    c.bench_function("guard/hit", |b| {
        b.iter(|| rt.block_on(cached.check(&Method::GET, black_box(&uri), black_box(&h), peer)).unwrap());
    });

    let pool: Vec<HeaderMap> = (0..64).map(|i| headers(&mint(i + 1))).collect();
    let mut next = 0usize;
    c.bench_function("guard/miss", |b| {
        b.iter(|| {
            next = (next + 1) % pool.len();
            rt.block_on(uncached.check(&Method::GET, black_box(&uri), black_box(&pool[next]), peer)).unwrap()
        });
    });

    let keys = state.keyring();
    let verifying = keys.signer().verifying_key().clone();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = tessera_token::b64::decode(sig).unwrap();
    c.bench_function("raw/eddsa_verify", |b| {
        b.iter(|| verifying.verify(black_box(input.as_bytes()), black_box(&sig)).unwrap());
    });
    server.abort();
}

criterion_group!(group, benches);
criterion_main!(group);
