//! What the guard costs a service per request, with 10,000 live revocations: a validated-token cache hit, a
//! miss (full validation), and, in the same run, the raw EdDSA verify of the same token for the ratio.
//!
//! The guard runs against a real in-process authorization server (SQLite in a temporary directory) that
//! holds the revocations and streams them to it.
//!
//! `check` completes without awaiting when the token's key is known, so it is polled once
//! (`now_or_never`): no executor cost is counted. After Criterion's figures, the bench prints the miss/verify
//! ratio measured in alternating batches (as the token crate's `ratio` bench does), which the machine's
//! drift cannot skew.
//!
//! `cargo bench -p tessera-guard --bench guard`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark fails loudly and prints"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderValue, Method, Uri};
use tessera_core::RevocationKind;
use tessera_guard::{Guard, GuardConfig, Policy};
use tessera_server::issue::AccessGrant;
use tessera_store::NewRevocation;
use tessera_token::{Algorithm, NewProof, SigningKey};

const API: &str = "https://orders.example";
const POLICY: &str =
    "default = \"deny\"\n[[route]]\nmethod = \"GET\"\npath = \"/orders/{id}\"\nscopes = [\"orders:read\"]\n";

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `iters` calls of `f`, in nanoseconds per call.
#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn batch(iters: u32, f: &mut dyn FnMut()) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

/// Alternating ~2 ms batches of `ours` and `raw`; the median per-round ratio and median times.
fn paired(rounds: usize, ours: &mut dyn FnMut(), raw: &mut dyn FnMut()) -> (f64, f64, f64) {
    let probe = batch(10, raw);
    let iters = ((2_000_000.0 / probe) as u32).clamp(1, 10_000);
    let (mut ratios, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = batch(iters, ours);
            (x, batch(iters, raw))
        } else {
            let y = batch(iters, raw);
            (batch(iters, ours), y)
        };
        ratios.push(x / y);
        a.push(x);
        b.push(y);
    }
    (median(&mut ratios), median(&mut a), median(&mut b))
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
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
            require_dpop: false,
            jwks: None,
            exchange_audiences: Vec::new(),
            serves: vec![API.into()],
            mfa: tessera_core::mfa::MfaPolicy::default(),
        };
        state.store.create_client(&client).await.unwrap();
        secret.expose().to_owned()
    });
    let server = rt.spawn(tessera_server::serve(Arc::clone(&state), listener, std::future::pending()));
    let mint_bound = |i: usize, jkt: Option<String>| {
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
            jkt,
            act: None,
            origin: Vec::new(),
        };
        tessera_server::issue::access_token(&state, grant, now).unwrap().token
    };
    let mint = |i: usize| mint_bound(i, None);
    let start_with = |capacity: usize, report_usage: bool| {
        let mut config = GuardConfig::new(issuer.clone(), API, "orders-guard", secret.clone());
        config.cache_capacity = capacity;
        config.report_usage = report_usage;
        config.report_interval = Duration::from_millis(500);
        // The DPoP runs send hundreds of thousands of proofs from one client key within a proof's lifetime,
        // far past the per-key share of the replay cache that bounds what one key may fill.
        config.dpop_replay_per_key = config.dpop_replay_capacity;
        rt.block_on(async {
            let guard = Guard::start(config, Policy::parse(POLICY).unwrap()).unwrap();
            assert!(guard.wait_ready(Duration::from_secs(30)).await);
            guard
        })
    };
    let start = |capacity: usize| start_with(capacity, true);
    let cached = start(10_000);
    let uncached = start(1);
    assert!(cached.revocation_seq() >= 10_000, "the guard holds the 10,000 revocations");

    let token = mint(0);
    let uri: Uri = "/orders/42".parse().unwrap();
    let h = headers(&token);
    let peer = Some("127.0.0.1".parse().unwrap());
    let _rt = rt.enter();
    let check =
        |g: &Guard, h: &HeaderMap| g.check(&Method::GET, black_box(&uri), black_box(h), peer).now_or_never();
    check(&cached, &h).expect("completes at once").unwrap();
    c.bench_function("guard/hit", |b| b.iter(|| check(&cached, &h).unwrap().unwrap()));

    // Usage reporting's share of a hit: the same hits over 1,000 distinct tokens (1,000 aggregates in the
    // reporter, flushed every 500 ms), with reporting on and off.
    let silent = start_with(10_000, false);
    let many: Vec<HeaderMap> = (0..1000).map(|i| headers(&mint(i + 1000))).collect();
    for h in &many {
        check(&cached, h).unwrap().unwrap();
        check(&silent, h).unwrap().unwrap();
    }
    for (name, guard) in
        [("guard/hit_1000_tokens_reporting", &cached), ("guard/hit_1000_tokens_no_report", &silent)]
    {
        let mut next = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 1) % many.len();
                check(guard, &many[next]).unwrap().unwrap()
            });
        });
    }

    let pool: Vec<HeaderMap> = (0..64).map(|i| headers(&mint(i + 1))).collect();
    let mut next = 0usize;
    c.bench_function("guard/miss", |b| {
        b.iter(|| {
            next = (next + 1) % pool.len();
            check(&uncached, &pool[next]).unwrap().unwrap()
        });
    });

    let keys = state.keyring();
    let verifying = keys.signer().verifying_key().clone();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = tessera_token::b64::decode(sig).unwrap();
    c.bench_function("raw/eddsa_verify", |b| {
        b.iter(|| verifying.verify(black_box(input.as_bytes()), black_box(&sig)).unwrap());
    });
    let (ratio, miss, raw) = paired(
        200,
        &mut || {
            next = (next + 1) % pool.len();
            check(&uncached, &pool[next]).unwrap().unwrap();
        },
        &mut || verifying.verify(black_box(input.as_bytes()), black_box(&sig)).unwrap(),
    );
    println!(
        "paired: guard miss {:.1} µs, raw EdDSA verify {:.1} µs, ratio {ratio:.3}x",
        miss / 1000.0,
        raw / 1000.0
    );

    // DPoP: the same cached token, bound to a client key, with a fresh proof per request (made outside the
    // timing). The guard checks the proof (one EdDSA verify) and records its id.
    let client_key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let bound = mint_bound(1000, Some(client_key.kid().to_owned()));
    let url = format!("{API}/orders/42");
    let mut serial = 0u64;
    let mut dpop_headers = || {
        serial += 1;
        let jti = format!("bench-{serial}");
        let iat = u64::try_from(tessera_server::now()).unwrap();
        let proof =
            NewProof { method: "GET", url: &url, jti: &jti, iat, access_token: Some(&bound), nonce: None };
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("DPoP {bound}")).unwrap());
        h.insert("dpop", HeaderValue::from_str(&client_key.sign_dpop_proof(&proof).unwrap()).unwrap());
        h
    };
    check(&cached, &dpop_headers()).expect("completes at once").unwrap();
    c.bench_function("guard/hit_dpop", |b| {
        b.iter_batched(&mut dpop_headers, |h| check(&cached, &h).unwrap().unwrap(), BatchSize::SmallInput);
    });
    let pool: Vec<HeaderMap> = (0..40_000).map(|_| dpop_headers()).collect();
    let mut used = pool.iter();
    let (dpop_ratio, dpop_hit, raw) = paired(
        100,
        &mut || {
            let h = used.next().expect("enough proofs");
            check(&cached, h).unwrap().unwrap();
        },
        &mut || verifying.verify(black_box(input.as_bytes()), black_box(&sig)).unwrap(),
    );
    // The same proofs' own signatures, verified on their own with the client's key: what "one extra
    // signature verification" costs on these inputs, with the same memory traffic as the guard's run.
    let proof_key = client_key.verifying_key().clone();
    let signatures: Vec<(String, Vec<u8>)> = pool
        .iter()
        .map(|h| {
            let proof = h["dpop"].to_str().unwrap();
            let (input, sig) = proof.rsplit_once('.').unwrap();
            (input.to_owned(), tessera_token::b64::decode(sig).unwrap())
        })
        .collect();
    let mut at = 0usize;
    let used = &mut pool.iter().skip(30_000);
    let (proof_ratio, dpop_hit_2, proof_verify) = paired(
        40,
        &mut || {
            let h = used.next().expect("enough proofs");
            check(&cached, h).unwrap().unwrap();
        },
        &mut || {
            at = (at + 1) % signatures.len();
            let (input, sig) = &signatures[at];
            proof_key.verify(black_box(input.as_bytes()), black_box(sig)).unwrap();
        },
    );
    let (_, bearer_hit, _) = paired(
        20,
        &mut || {
            check(&cached, &h).unwrap().unwrap();
        },
        &mut || verifying.verify(black_box(input.as_bytes()), black_box(&sig)).unwrap(),
    );
    println!(
        "paired: DPoP hit {:.1} µs = {dpop_ratio:.3}x one EdDSA verify ({:.1} µs); bearer hit {:.2} µs; DPoP adds {:.1} µs = {:.3}x one verify",
        dpop_hit / 1000.0,
        raw / 1000.0,
        bearer_hit / 1000.0,
        (dpop_hit - bearer_hit) / 1000.0,
        (dpop_hit - bearer_hit) / raw
    );
    println!(
        "paired: DPoP hit {:.1} µs = {proof_ratio:.3}x one verify of the proofs' own signatures ({:.1} µs); DPoP adds {:.1} µs = {:.3}x that verify",
        dpop_hit_2 / 1000.0,
        proof_verify / 1000.0,
        (dpop_hit_2 - bearer_hit) / 1000.0,
        (dpop_hit_2 - bearer_hit) / proof_verify
    );
    server.abort();
}
