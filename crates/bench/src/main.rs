//! `tessera-bench`: load scenarios against a real `tessera serve` process on loopback, from this second
//! process, with a fixed duration and connection count. Prints requests/s and p50/p99 latency per scenario,
//! as a Markdown table for `docs/benchmarks.md`.
//!
//! Scenarios: `client_credentials`, `client_credentials_dpop` (the same with a fresh EdDSA DPoP proof per
//! request, made before the clock starts), `refresh` (each connection rotates its own refresh chain),
//! `login` (a whole sign-in: the login form with the real Argon2id check, the authorization request, the
//! code for tokens; at most 16 connections), `introspect`, `jwks`. Each connection is one keep-alive
//! HTTP/1.1 connection sending one request at a time.
//!
//! `ingest`, not in the default set, posts guards' usage batches (1,000 `token_used` events each, from 8
//! connections) to `/guard/events`; events/s is its requests/s times 1,000.
//!
//! Two more, not in the default set, measure the guard and gateway: `revocation_delay` (an in-process guard
//! follows the server's stream; each of `--revocations` tokens is revoked through RFC 7009 and the time from
//! the revoke call's answer to the guard's first refusal is recorded) and `gateway` (a `tessera gateway`
//! child process in front of a minimal upstream in this process: maximum throughput direct and through the
//! gateway, then latency at a fixed rate of half the gateway's maximum, direct and through the gateway; all
//! of it once with one token, every request a cache hit, and once with a distinct token per request, every
//! request a cache miss that verifies the signature).
//!
//! `gateway_reporting`, not in the default set, compares the gateway's CPU per request (from `/proc`) with
//! usage reporting on and off, at `--gateway-rate` over 1,000 distinct tokens, two rounds each.
//!
//! Several nodes (`--nodes 2`, PostgreSQL): connections are spread over the nodes; `refresh_scaling` runs the
//! refresh scenario on the first node alone and then on all of them, with each process's CPU (nodes,
//! PostgreSQL, this generator); `refresh_curve` measures refresh latency at 1, 8, 32 and 128 connections (on
//! one node and on all); `revocation_delay` revokes through the first node while its guard follows the last;
//! `rolling_restart` asks for tokens through a health-checking balancer while each node in turn gets SIGTERM
//! and is started again, and counts failed requests. `--json FILE` writes every figure, the machine and the
//! command; `--charts DIR` draws latency against load and the revocation-delay distribution as SVG.
//!
//! `detection_delay`, not in the default set, times theft to response: `--detections` refresh-token
//! reuses, one every `--detection-gap-ms`, each timed from the reuse to its alert at a webhook in this
//! process (the server is started with that webhook configured). `detection_delay_under_ingest` does the
//! same while guards post usage at full speed (the `ingest` load, with each session on one network, so the
//! load itself raises nothing).

mod cluster;
mod detection_bench;
mod guard_bench;
mod login_bench;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tessera_core::{ClientKind, GrantType, OpaqueSecret, SecretKind};
use tessera_store::{Client, Family, RefreshRecord, Resource, Store, User};

/// Load scenarios for the authorization server.
#[derive(Debug, Parser)]
struct Args {
    /// The `tessera` binary to run [default: target/release/tessera].
    #[arg(long, default_value = "target/release/tessera")]
    server: PathBuf,
    /// PostgreSQL URL; without it, SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Scenarios to run (repeatable) [default: the four server scenarios].
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Revocations measured by `revocation_delay`.
    #[arg(long, default_value_t = 1000)]
    revocations: usize,
    /// Thefts measured by `detection_delay`.
    #[arg(long, default_value_t = 200)]
    detections: usize,
    /// Milliseconds between two thefts in `detection_delay`.
    #[arg(long, default_value_t = 100)]
    detection_gap_ms: u64,
    /// Requests per second in all, spread evenly over the connections, for the load scenarios; without
    /// it, each connection sends its next request as soon as the last is answered. At a fixed rate, two
    /// scenarios' server CPU per request compares work done per request, not how busy the server was.
    #[arg(long)]
    rate: Option<f64>,
    /// Requests per second in `gateway_reporting`.
    #[arg(long, default_value_t = 2000.0)]
    gateway_rate: f64,
    /// CPUs to confine the gateway child to (`taskset -c` syntax, e.g. `1`); run the bench itself under
    /// `taskset` on the others, so that the gateway's added latency is not the generator's.
    #[arg(long)]
    gateway_cpus: Option<String>,
    /// Server nodes to start on the database (more than one needs `--database-url`). Load is spread over
    /// them connection by connection; guards follow the last node and revocations go through the first.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Write every result, the machine and the command as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the SVG charts (`latency-vs-load.svg`, `revocation-delay.svg`) into this directory.
    #[arg(long)]
    charts: Option<PathBuf>,
}

const AUDIENCE: &str = "https://bench.example";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "the bench's one error line")]
            {
                eprintln!("error: {e}");
            }
            std::process::ExitCode::from(2)
        }
    }
}

fn now() -> i64 {
    tessera_server::now()
}

async fn run(args: Args) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let master = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let database_url = args.database_url.clone().unwrap_or_default();
    let server = std::fs::canonicalize(&args.server)
        .map_err(|e| format!("cannot find {}: {}", args.server.display(), e.kind()))?;
    if args.nodes == 0 || (args.nodes > 1 && database_url.is_empty()) {
        return Err("--nodes: 1 on SQLite; more need --database-url (PostgreSQL)".into());
    }
    // The issuer must be the address guards reach, so pick the ports first. Guards follow the last node;
    // revocations go through the first, so with two nodes `revocation_delay` crosses nodes.
    let mut ports = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        ports.push((listener.local_addr().map_err(|e| e.to_string())?.port(), listener));
    }
    let ports: Vec<u16> = ports.into_iter().map(|(port, _)| port).collect();
    let issuer = format!("http://127.0.0.1:{}", ports[args.nodes - 1]);
    // Alerts come to this process only when a scenario times them.
    let mut webhook = match args.scenarios.iter().any(|s| s.starts_with("detection_delay")) {
        true => Some(detection_bench::Webhook::start().await?),
        false => None,
    };
    // A node told to stop fails readiness at once and serves on for a second (`rolling_restart`).
    let mut env = vec![("TESSERA_DRAIN_SECS".to_owned(), "1".to_owned())];
    if let Some(hook) = &webhook {
        env.push(("TESSERA_ALERTS_WEBHOOK_URL".to_owned(), hook.url.clone()));
        env.push(("TESSERA_ALERTS_WEBHOOK_SECRET".to_owned(), detection_bench::WEBHOOK_SECRET.to_owned()));
    }
    let node_config = cluster::NodeConfig {
        server: &server,
        dir: dir.path(),
        issuer: &issuer,
        master: &master,
        database_url: &database_url,
        env,
    };
    let mut nodes = Vec::with_capacity(args.nodes);
    for port in &ports {
        nodes.push(cluster::Node::start(&node_config, *port).await?);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let addr = addrs[0].clone();
    let store_url = if database_url.is_empty() {
        format!("sqlite://{}", dir.path().join("tessera-data/tessera.db").display())
    } else {
        database_url.clone()
    };
    let store = tessera_store::open(&store_url).await.map_err(|e| e.to_string())?;
    let secret = setup(&*store).await?;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("bench:{}", secret.expose()))
    );
    let all = ["client_credentials", "client_credentials_dpop", "refresh", "login", "introspect", "jwks"];
    let scenarios: Vec<String> = if args.scenarios.is_empty() {
        all.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scenarios.clone()
    };
    let mut out = vec![
        format!(
            "backend: {}, nodes: {}, connections: {}, duration: {} s",
            store.backend(),
            args.nodes,
            args.connections,
            args.duration
        ),
        "| scenario | nodes | requests/s | p50 ms | p99 ms | max ms | errors | server CPU µs/request |"
            .to_owned(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
    ];
    let mut report = Report::default();
    for scenario in &scenarios {
        let plan: Vec<Plan> = match scenario.as_str() {
            "client_credentials" => (0..args.connections)
                .map(|_| Plan::Fixed {
                    path: "/token",
                    auth: Some(basic.clone()),
                    body: "grant_type=client_credentials".into(),
                })
                .collect(),
            "login" => {
                let browsers = args.connections.min(login_bench::LOGIN_CONNECTIONS);
                login_bench::users(&*store, browsers).await?;
                (0..browsers).map(|i| Plan::Login(Box::new(login_bench::Login::new(i)))).collect()
            }
            "refresh" => families(&*store, args.connections)
                .await?
                .into_iter()
                .map(|(_, t)| Plan::Refresh { token: t })
                .collect(),
            "introspect" => {
                let token = fetch_token(&addr, &basic).await?;
                (0..args.connections)
                    .map(|_| Plan::Fixed {
                        path: "/introspect",
                        auth: Some(basic.clone()),
                        body: format!("token={token}"),
                    })
                    .collect()
            }
            "jwks" => (0..args.connections).map(|_| Plan::Get { path: "/jwks.json", auth: None }).collect(),
            "ingest" => {
                // Guards post usage in batches of up to 1,000 events; a few guards, each a connection.
                ingest_plans(args.connections, &basic, false)?
            }
            "client_credentials_dpop" => {
                // Proofs are made before the clock starts, so the generator spends no CPU on them; enough for
                // the whole run at 15,000 requests/s (above any rate measured here), since a connection stops
                // when its proofs run out, and a run cut short would be compared with a full bearer run.
                let total = (15_000 * args.duration).max(40_000);
                let per_connection = usize::try_from(total).unwrap_or(40_000) / args.connections.max(1);
                let key = tessera_token::SigningKey::generate(tessera_token::Algorithm::EdDSA)
                    .map_err(|e| e.to_string())?;
                let url = format!("{issuer}/token");
                let iat = u64::try_from(now()).unwrap_or(0) + 5;
                let mut plans = Vec::new();
                for c in 0..args.connections {
                    let proofs = (0..per_connection)
                        .map(|i| {
                            let jti = format!("bench-{c}-{i}");
                            let proof = tessera_token::NewProof {
                                method: "POST",
                                url: &url,
                                jti: &jti,
                                iat,
                                access_token: None,
                                nonce: None,
                            };
                            key.sign_dpop_proof(&proof).map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    plans.push(Plan::Dpop { auth: basic.clone(), proofs });
                }
                plans
            }
            "detection_delay" => {
                let hook = webhook.as_mut().ok_or("no webhook")?;
                let thefts = families(&*store, args.detections).await?;
                let gap = Duration::from_millis(args.detection_gap_ms);
                out.push(detection_bench::detection_delay(&addr, hook, thefts, gap).await?);
                continue;
            }
            "detection_delay_under_ingest" => {
                let hook = webhook.as_mut().ok_or("no webhook")?;
                let thefts = families(&*store, args.detections).await?;
                let gap = Duration::from_millis(args.detection_gap_ms);
                let plans = ingest_plans(args.connections, &basic, true)?;
                // The ingest load starts a second before the first theft and runs until the last alert (or
                // its deadline) is in; a fixed span would end early, since every theft is slower under load.
                let targets = vec![addr.clone()];
                let ingest =
                    tokio::spawn(async move { load(&targets, plans, Duration::from_secs(3600)).await });
                tokio::time::sleep(Duration::from_secs(1)).await;
                let before = store.audit_state().await.map_err(|e| e.to_string())?.head_seq;
                #[allow(clippy::disallowed_methods, reason = "a load generator measures wall-clock time")]
                let started = std::time::Instant::now();
                let line = detection_bench::detection_delay(&addr, hook, thefts, gap).await;
                let took = started.elapsed().as_secs_f64();
                ingest.abort();
                let line = line?;
                let after = store.audit_state().await.map_err(|e| e.to_string())?.head_seq;
                out.push(format!("{line} (under ingest)"));
                out.push(format!(
                    "  audit events written meanwhile: {:.0}/s over {took:.1} s (the guards' batches and everything else)",
                    (after - before) as f64 / took
                ));
                continue;
            }
            "revocation_delay" => {
                let (line, delays) =
                    guard_bench::revocation_delay(&issuer, &addr, &basic, secret.expose(), args.revocations)
                        .await?;
                out.push(line);
                report.revocation_delays_ms = delays;
                continue;
            }
            "rolling_restart" => {
                if nodes.len() < 2 {
                    return Err("rolling_restart needs --nodes 2 or more".into());
                }
                let (mut outcome, took) =
                    cluster::rolling_restart(&mut nodes, &node_config, &basic, args.connections).await?;
                out.push(outcome.row("client_credentials during a rolling restart", args.nodes));
                out.push(format!(
                    "  every node restarted in turn within {:.1} s; failed requests: {}",
                    took.as_secs_f64(),
                    outcome.errors
                ));
                let mut row = outcome.json("rolling_restart", args.nodes);
                row["restart_secs"] = serde_json::json!(took.as_secs_f64());
                report.rows.push(row);
                continue;
            }
            "refresh_scaling" => {
                out.extend(refresh_scaling(&*store, &nodes, &args, &mut report).await?);
                continue;
            }
            "refresh_curve" => {
                // With several nodes, the curve on the first node alone too, for comparison.
                let duration = Duration::from_secs(args.duration);
                let mut spreads = vec![addrs.clone()];
                if addrs.len() > 1 {
                    spreads.insert(0, vec![addrs[0].clone()]);
                }
                for targets in spreads {
                    let mut curve = Vec::new();
                    for connections in CURVE_CONNECTIONS {
                        let plans = refresh_plans(&*store, connections).await?;
                        let mut outcome = load(&targets, plans, duration).await?;
                        out.push(outcome.row(&format!("refresh, {connections} connections"), targets.len()));
                        report
                            .rows
                            .push(outcome.json(&format!("refresh_curve_{connections}"), targets.len()));
                        curve.push(cluster::CurvePoint {
                            connections,
                            rate: outcome.rate(),
                            p50_ms: outcome.percentile_ms(0.50),
                            p99_ms: outcome.percentile_ms(0.99),
                        });
                    }
                    report.curves.push((targets.len(), curve));
                }
                continue;
            }
            "gateway_reporting" => {
                let mut tokens = Vec::with_capacity(GATEWAY_TOKENS);
                for _ in 0..GATEWAY_TOKENS {
                    tokens.push(fetch_token(&addr, &basic).await?);
                }
                let gw = guard_bench::GatewayRun {
                    server: &server,
                    issuer: &issuer,
                    secret: secret.expose(),
                    token: &tokens[0],
                    cpus: args.gateway_cpus.as_deref(),
                };
                let duration = Duration::from_secs(args.duration);
                out.extend(gw.reporting(&tokens, args.connections, args.gateway_rate, duration).await?);
                continue;
            }
            "gateway" => {
                let token = fetch_token(&addr, &basic).await?;
                let gw = guard_bench::GatewayRun {
                    server: &server,
                    issuer: &issuer,
                    secret: secret.expose(),
                    token: &token,
                    cpus: args.gateway_cpus.as_deref(),
                };
                let duration = Duration::from_secs(args.duration);
                let fetch = guard_bench::Fetch { addrs: &addrs, basic: &basic };
                out.extend(gw.run(args.connections, duration, &fetch, &mut report.rows, args.nodes).await?);
                continue;
            }
            other => return Err(format!("unknown scenario {other}")),
        };
        let before = cluster::CpuSample::take(&nodes);
        let mut result = load_at(&addrs, plan, Duration::from_secs(args.duration), args.rate).await?;
        let cpu = cluster::CpuSample::take(&nodes).since(&before, result.seconds);
        // The nodes' CPU time (user and system, every thread; 10 ms ticks) over the requests answered: what
        // one request costs the server, whatever the generator beside it takes.
        let cpu_us = cpu.0.iter().sum::<f64>() / 100.0 * result.seconds * 1e6
            / (result.latencies_us.len().max(1) as f64);
        out.push(format!("{} {cpu_us:.1} |", result.row(scenario, args.nodes)));
        let mut row = result.json(scenario, args.nodes);
        row["cpu_percent"] = cpu_json(&cpu);
        row["server_cpu_us_per_request"] = serde_json::json!(cpu_us);
        report.rows.push(row);
    }
    #[allow(clippy::print_stdout, reason = "the bench's report")]
    {
        println!("{}", out.join("\n"));
    }
    report.write(&args, store.backend())?;
    drop(nodes);
    Ok(())
}

/// Connection counts of `refresh_curve`.
const CURVE_CONNECTIONS: [usize; 4] = [1, 8, 32, 128];

/// Everything the run measured, for `--json` and `--charts`.
#[derive(Default)]
struct Report {
    rows: Vec<serde_json::Value>,
    revocation_delays_ms: Vec<f64>,
    curves: Vec<(usize, Vec<cluster::CurvePoint>)>,
}

impl Report {
    fn write(&self, args: &Args, backend: &str) -> Result<(), String> {
        if let Some(path) = &args.json {
            let mut delays = self.revocation_delays_ms.clone();
            delays.sort_by(f64::total_cmp);
            let pick = |p: f64| rank(delays.len(), p).map(|i| delays[i]);
            let json = serde_json::json!({
                "command": std::env::args().collect::<Vec<_>>().join(" "),
                "machine": cluster::machine(),
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
                "backend": backend,
                "nodes": args.nodes,
                "connections": args.connections,
                "duration_secs": args.duration,
                "results": self.rows,
                "revocation_delay_ms": {
                    "count": delays.len(),
                    "p50": pick(0.50),
                    "p99": pick(0.99),
                    "max": delays.last(),
                    "all": delays,
                },
                "latency_against_load": self.curves.iter().map(|(nodes, points)| serde_json::json!({
                    "nodes": nodes,
                    "points": points.iter().map(|p| serde_json::json!({
                        "connections": p.connections,
                        "requests_per_sec": p.rate,
                        "p50_ms": p.p50_ms,
                        "p99_ms": p.p99_ms,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
            std::fs::write(path, text)
                .map_err(|e| format!("cannot write {}: {}", path.display(), e.kind()))?;
        }
        if let Some(dir) = &args.charts {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {}", dir.display(), e.kind()))?;
            if !self.curves.is_empty() {
                let title = format!("Refresh: latency against load ({backend})");
                cluster::latency_chart(&dir.join("latency-vs-load.svg"), &title, &self.curves)?;
            }
            if !self.revocation_delays_ms.is_empty() {
                let title = if args.nodes > 1 {
                    format!(
                        "Revocation delay across nodes ({backend}, {} revocations)",
                        self.revocation_delays_ms.len()
                    )
                } else {
                    format!("Revocation delay ({backend}, {} revocations)", self.revocation_delays_ms.len())
                };
                cluster::delay_chart(&dir.join("revocation-delay.svg"), &title, &self.revocation_delays_ms)?;
            }
        }
        Ok(())
    }
}

fn cpu_json((nodes, postgres, bench): &(Vec<f64>, f64, f64)) -> serde_json::Value {
    let round = |v: f64| (v * 10.0).round() / 10.0;
    serde_json::json!({
        "nodes": nodes.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        "postgres": round(*postgres),
        "load_generator": round(*bench),
    })
}

/// `connections` fresh refresh chains, one per connection.
async fn refresh_plans(store: &dyn Store, connections: usize) -> Result<Vec<Plan>, String> {
    Ok(families(store, connections).await?.into_iter().map(|(_, t)| Plan::Refresh { token: t }).collect())
}

/// Refresh throughput with every connection on the first node, then spread over all of them, in one run;
/// with each process's CPU, which shows what caps the second figure on a small machine.
async fn refresh_scaling(
    store: &dyn Store,
    nodes: &[cluster::Node],
    args: &Args,
    report: &mut Report,
) -> Result<Vec<String>, String> {
    if nodes.len() < 2 {
        return Err("refresh_scaling needs --nodes 2 or more".into());
    }
    let duration = Duration::from_secs(args.duration);
    let all: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let mut lines = Vec::new();
    let mut rates = Vec::new();
    for targets in [vec![all[0].clone()], all.clone()] {
        let plans = refresh_plans(store, args.connections).await?;
        let before = cluster::CpuSample::take(nodes);
        let mut outcome = load(&targets, plans, duration).await?;
        let cpu = cluster::CpuSample::take(nodes).since(&before, outcome.seconds);
        let name = format!("refresh on {} of {} nodes", targets.len(), nodes.len());
        lines.push(outcome.row(&name, targets.len()));
        lines.push(format!(
            "  CPU (% of one core): nodes {:?}, postgres {:.0}, load generator {:.0}",
            cpu.0.iter().map(|v| v.round()).collect::<Vec<_>>(),
            cpu.1,
            cpu.2
        ));
        let mut row = outcome.json("refresh_scaling", targets.len());
        row["cpu_percent"] = cpu_json(&cpu);
        report.rows.push(row);
        rates.push(outcome.rate());
    }
    lines.push(format!("  2 nodes / 1 node: {:.2}x", rates[1] / rates[0].max(1.0)));
    Ok(lines)
}

/// Distinct tokens `gateway_reporting` cycles through.
const GATEWAY_TOKENS: usize = 1000;

/// Connections (guards) of the `ingest` scenario.
const INGEST_GUARDS: usize = 8;
/// Events per `ingest` request: the most a guard sends at once.
pub(crate) const INGEST_BATCH: usize = 1000;

/// The `ingest` load: a few guards (up to [`INGEST_GUARDS`]), each a connection posting its batch of
/// [`usage_batch`] over and over.
fn ingest_plans(connections: usize, basic: &str, benign: bool) -> Result<Vec<Plan>, String> {
    (0..connections.clamp(1, INGEST_GUARDS))
        .map(|g| {
            Ok(Plan::Fixed {
                path: "/guard/events",
                auth: Some(basic.to_owned()),
                body: usage_batch(g, benign)?,
            })
        })
        .collect()
}

/// A guard's batch of usage events: distinct tokens, sessions and sources, as a busy service reports them.
/// Token and session ids are made as the server makes them (`sortable_id`: they begin with their second).
/// With `benign`, each session's events come from one network (a /24), so they raise no detection; without,
/// many sessions are seen from two networks, as in the first `ingest` measurements.
fn usage_batch(guard: usize, benign: bool) -> Result<String, String> {
    let at = now();
    let sessions: Vec<String> = (0..700)
        .map(|_| tessera_server::crypto::sortable_id(at - 600).map_err(|e| e.0))
        .collect::<Result<_, _>>()?;
    let events: Vec<serde_json::Value> = (0..INGEST_BATCH)
        .map(|i| {
            let jti = tessera_server::crypto::sortable_id(at - 60).map_err(|e| e.0)?;
            Ok(serde_json::json!({
                "kind": "token_used",
                "count": 3,
                "first_at": at - 5,
                "last_at": at,
                "ip": format!("10.{}.{}.{}", guard, if benign { (i % sessions.len()) / 256 } else { i / 256 }, i % 256),
                "route": "GET /orders/{id}",
                "sub": format!("u{}", i % 500),
                "sid": sessions[i % sessions.len()],
                "client_id": "app",
                "jti": jti,
            }))
        })
        .collect::<Result<_, String>>()?;
    Ok(serde_json::json!({ "audience": AUDIENCE, "events": events }).to_string())
}

async fn setup(store: &dyn Store) -> Result<OpaqueSecret, String> {
    let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).map_err(|e| e.0)?;
    let resource = Resource { audience: AUDIENCE.into(), scopes: vec!["read".into()], created_at: now() };
    store.create_resource(&resource).await.map_err(|e| e.to_string())?;
    let client = |id: &str, kind, grants: Vec<GrantType>, secret_hash| Client {
        id: id.into(),
        name: id.into(),
        kind,
        secret_hash,
        redirect_uris: vec!["https://app.example/cb".into()],
        grant_types: grants,
        audiences: vec![AUDIENCE.into()],
        scopes: vec!["read".into()],
        access_ttl: 300,
        refresh_idle_ttl: 3600,
        refresh_absolute_ttl: 86_400,
        first_party: true,
        disabled: false,
        created_at: now(),
        require_dpop: false,
        jwks: None,
        exchange_audiences: Vec::new(),
        serves: Vec::new(),
        mfa: tessera_core::mfa::MfaPolicy::default(),
    };
    // The bench client is also the resource server of its audience, so it may post usage (`ingest`).
    let bench = Client {
        serves: vec![AUDIENCE.into()],
        ..client("bench", ClientKind::Confidential, vec![GrantType::ClientCredentials], Some(secret.hash()))
    };
    store.create_client(&bench).await.map_err(|e| e.to_string())?;
    let app =
        client("app", ClientKind::Public, vec![GrantType::AuthorizationCode, GrantType::RefreshToken], None);
    store.create_client(&app).await.map_err(|e| e.to_string())?;
    let user = User {
        id: "u_bench".into(),
        username: "bench".into(),
        password_hash: "$argon2id$unused".into(),
        roles: vec![],
        disabled: false,
        created_at: now(),
        password_changed_at: now(),
        must_reset_password: false,
        step_up_after: None,
        email: None,
    };
    store.create_user(&user).await.map_err(|e| e.to_string())?;
    Ok(secret)
}

/// `n` refresh families; returns each family's id and first token.
async fn families(store: &dyn Store, n: usize) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let secret = tessera_server::crypto::new_secret(SecretKind::RefreshToken).map_err(|e| e.0)?;
        let id = tessera_server::crypto::random_id().map_err(|e| e.0)?;
        let family = Family {
            id: id.clone(),
            client_id: "app".into(),
            user_id: "u_bench".into(),
            scope: "read".into(),
            audience: Some(AUDIENCE.into()),
            auth_time: now(),
            amr: vec!["pwd".into()],
            login_session: None,
            code_hash: None,
            created_at: now(),
            expires_at: now() + 86_400,
            revoked_at: None,
            dpop_jkt: None,
        };
        let first = RefreshRecord {
            hash: secret.hash(),
            family_id: id,
            generation: 0,
            scope: "read".into(),
            created_at: now(),
            expires_at: now() + 3600,
            rotated_at: None,
            successor: None,
        };
        store.create_family(&family, Some(&first)).await.map_err(|e| e.to_string())?;
        out.push((family.id.clone(), secret.expose().to_owned()));
    }
    Ok(out)
}

/// What one connection sends, over and over.
pub(crate) enum Plan {
    Fixed {
        path: &'static str,
        auth: Option<String>,
        body: String,
    },
    Refresh {
        token: String,
    },
    Get {
        path: &'static str,
        auth: Option<String>,
    },
    /// client_credentials with a fresh DPoP proof per request, from this list.
    Dpop {
        auth: String,
        proofs: Vec<String>,
    },
    /// A GET of `path` with each of these `Authorization` values once, until they run out.
    EachOnce {
        path: &'static str,
        auths: Vec<String>,
    },
    /// A whole sign-in, over and over, as one browser.
    Login(Box<login_bench::Login>),
}

/// The index of the `p` percentile (nearest rank) in `n` sorted values; `None` when there are none.
pub(crate) fn rank(n: usize, p: f64) -> Option<usize> {
    (n > 0).then(|| ((n as f64 * p).ceil() as usize).clamp(1, n) - 1)
}

pub(crate) struct Outcome {
    latencies_us: Vec<u32>,
    errors: u64,
    seconds: f64,
}

/// What one connection's task returns: its latencies in µs and its error count.
pub(crate) type ConnResult = Result<(Vec<u32>, u64), String>;

impl Outcome {
    /// Waits for every connection's task and merges what they measured over `elapsed`.
    pub(crate) async fn gather(
        tasks: Vec<tokio::task::JoinHandle<ConnResult>>,
        elapsed: impl Fn() -> Duration,
    ) -> Result<Outcome, String> {
        let mut outcome = Outcome { latencies_us: Vec::new(), errors: 0, seconds: 0.0 };
        for task in tasks {
            let (latencies, errors) = task.await.map_err(|e| e.to_string())??;
            outcome.latencies_us.extend(latencies);
            outcome.errors += errors;
        }
        outcome.seconds = elapsed().as_secs_f64();
        Ok(outcome)
    }

    pub(crate) fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        rank(self.latencies_us.len(), p).map_or(0.0, |i| f64::from(self.latencies_us[i]) / 1000.0)
    }

    pub(crate) fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds
    }

    fn row(&mut self, scenario: &str, nodes: usize) -> String {
        let (p50, p99, max) = (self.percentile_ms(0.50), self.percentile_ms(0.99), self.percentile_ms(1.0));
        format!(
            "| {scenario} | {nodes} | {:.0} | {p50:.2} | {p99:.2} | {max:.2} | {} |",
            self.rate(),
            self.errors
        )
    }

    fn json(&mut self, scenario: &str, nodes: usize) -> serde_json::Value {
        serde_json::json!({
            "scenario": scenario,
            "nodes": nodes,
            "requests": self.latencies_us.len(),
            "requests_per_sec": self.rate(),
            "p50_ms": self.percentile_ms(0.50),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.percentile_ms(1.0),
            "errors": self.errors,
        })
    }
}

pub(crate) async fn fetch_token(addr: &str, basic: &str) -> Result<String, String> {
    let mut conn = Conn::open(addr).await?;
    client_credentials(&mut conn, basic).await
}

/// One access token from the client_credentials grant on `conn`.
async fn client_credentials(conn: &mut Conn, basic: &str) -> Result<String, String> {
    let (status, body) = conn.post("/token", Some(basic), "grant_type=client_credentials".into()).await?;
    if status != 200 {
        return Err(format!("client_credentials answered {status}"));
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    json["access_token"].as_str().map(str::to_owned).ok_or_else(|| "no access_token".to_owned())
}

/// Reads a child's stdout until the line that begins with `announce` (`tessera: listening on `, or the
/// gateway's); returns the address that follows it, and keeps reading the rest so the child never blocks on
/// a full pipe.
pub(crate) async fn listening_address(
    child: &mut tokio::process::Child,
    announce: &str,
) -> Result<String, String> {
    use tokio::io::AsyncBufReadExt as _;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next_line().await.map_err(|e| e.to_string())?.ok_or("the child exited")?;
        if let Some(rest) = line.strip_prefix(announce) {
            break rest.split(' ').next().unwrap_or_default().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addr)
}

/// Connections [`fetch_tokens`] asks on at once.
const FETCHERS: usize = 16;

/// `n` distinct access tokens from the client_credentials grant, asked for on [`FETCHERS`] connections
/// spread over `addrs`.
pub(crate) async fn fetch_tokens(addrs: &[String], basic: &str, n: usize) -> Result<Vec<String>, String> {
    let per = n.div_ceil(FETCHERS);
    let mut tasks = Vec::with_capacity(FETCHERS);
    for i in 0..FETCHERS {
        let (addr, basic) = (addrs[i % addrs.len()].clone(), basic.to_owned());
        let count = per.min(n.saturating_sub(i * per));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut tokens = Vec::with_capacity(count);
            for _ in 0..count {
                tokens.push(client_credentials(&mut conn, &basic).await?);
            }
            Ok::<_, String>(tokens)
        }));
    }
    let mut tokens = Vec::with_capacity(n);
    for task in tasks {
        tokens.extend(task.await.map_err(|e| e.to_string())??);
    }
    Ok(tokens)
}

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub(crate) async fn open(addr: &str) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Conn { sender, host: addr.to_owned() })
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
        self.send_full(request).await.map(|(status, _, body)| (status, body))
    }

    async fn send_full(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(u16, http::HeaderMap, Bytes), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self.sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, parts.headers, body))
    }

    /// A browser's request: `method` on `path` with a `Cookie` header and, when not empty, a form body;
    /// the answer's status, headers and body.
    pub(crate) async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        cookies: &str,
        form: String,
    ) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let mut builder = Request::builder().method(method).uri(path).header("host", &self.host);
        builder = builder.header("cookie", cookies);
        if !form.is_empty() {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
        }
        let request = builder.body(Full::new(Bytes::from(form))).map_err(|e| e.to_string())?;
        self.send_full(request).await
    }

    pub(crate) async fn post(
        &mut self,
        path: &str,
        auth: Option<&str>,
        body: String,
    ) -> Result<(u16, Bytes), String> {
        let mut builder = Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        self.send(request).await
    }

    async fn post_with_proof(
        &mut self,
        path: &str,
        auth: &str,
        proof: &str,
        body: String,
    ) -> Result<(u16, Bytes), String> {
        let request = Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", auth)
            .header("dpop", proof)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.send(request).await
    }

    pub(crate) async fn get(&mut self, path: &str, auth: Option<&str>) -> Result<(u16, Bytes), String> {
        let mut builder = Request::get(path).header("host", &self.host);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        let request = builder.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        self.send(request).await
    }
}

/// Runs every plan on its own connection for `duration`; connection `i` goes to `addrs[i % addrs.len()]`
/// (a round-robin balancer's spread).
pub(crate) async fn load(addrs: &[String], plans: Vec<Plan>, duration: Duration) -> Result<Outcome, String> {
    load_at(addrs, plans, duration, None).await
}

/// [`load`], at `rate` requests per second in all when given: each connection sends on a fixed schedule
/// (a tick missed while a request was under way is skipped, not made up in a burst).
pub(crate) async fn load_at(
    addrs: &[String],
    plans: Vec<Plan>,
    duration: Duration,
    rate: Option<f64>,
) -> Result<Outcome, String> {
    let connections = plans.len().max(1);
    let period = rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(connections as f64 / r));
    #[allow(clippy::disallowed_methods, reason = "a load generator measures wall-clock latency")]
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    // The run's first failure is printed: what went wrong, for whoever runs the bench.
    let told = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (i, mut plan) in plans.into_iter().enumerate() {
        let addr = addrs[i % addrs.len()].clone();
        let told = std::sync::Arc::clone(&told);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let mut refresh_token = match &plan {
                Plan::Refresh { token } => token.clone(),
                _ => String::new(),
            };
            // What a plan sends once each (DPoP proofs, `Authorization` values), taken from the end.
            let mut once = match &mut plan {
                Plan::Dpop { proofs: values, .. } | Plan::EachOnce { auths: values, .. } => {
                    std::mem::take(values)
                }
                _ => Vec::new(),
            };
            let mut pace = period.map(|period| {
                // Connections start spread over one period, not all at once.
                let offset = period.mul_f64(i as f64 / connections as f64);
                let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                ticks
            });
            while started.elapsed() < duration {
                if let Some(ticks) = &mut pace {
                    ticks.tick().await;
                }
                #[allow(clippy::disallowed_methods, reason = "a load generator measures wall-clock latency")]
                let t0 = std::time::Instant::now();
                let answer = match &mut plan {
                    Plan::Fixed { path, auth, body } => conn.post(path, auth.as_deref(), body.clone()).await,
                    Plan::Get { path, auth } => conn.get(path, auth.as_deref()).await,
                    Plan::Dpop { auth, .. } => match once.pop() {
                        Some(proof) => {
                            let body = "grant_type=client_credentials".to_owned();
                            conn.post_with_proof("/token", auth, &proof, body).await
                        }
                        None => break,
                    },
                    Plan::EachOnce { path, .. } => match once.pop() {
                        Some(auth) => conn.get(path, Some(&auth)).await,
                        None => break,
                    },
                    Plan::Login(login) => login.once(&mut conn).await,
                    Plan::Refresh { .. } => {
                        let body =
                            format!("grant_type=refresh_token&client_id=app&refresh_token={refresh_token}");
                        conn.post("/token", None, body).await
                    }
                };
                let micros = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                match answer {
                    // Usage batches are accepted, not answered with a body.
                    Ok((202, _)) => latencies.push(micros),
                    Ok((200, body)) => {
                        if matches!(plan, Plan::Refresh { .. }) {
                            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            match json["refresh_token"].as_str() {
                                Some(next) => refresh_token = next.to_owned(),
                                None => errors += 1,
                            }
                        }
                        latencies.push(micros);
                    }
                    Ok((status, body)) => {
                        errors += 1;
                        if !told.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                            #[allow(clippy::print_stderr, reason = "what failed, for whoever runs the bench")]
                            {
                                eprintln!("first failure at {addr}: answered {status}: {text}");
                            }
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        conn = Conn::open(&addr).await?;
                    }
                }
            }
            Ok::<_, String>((latencies, errors))
        }));
    }
    Outcome::gather(tasks, || started.elapsed()).await
}

#[cfg(test)]
mod rank_tests {
    use super::rank;

    #[test]
    fn percentiles_are_nearest_rank_and_empty_has_none() {
        assert_eq!(rank(0, 0.5), None);
        assert_eq!(rank(1, 0.5), Some(0));
        assert_eq!(rank(100, 0.5), Some(49));
        assert_eq!(rank(100, 0.99), Some(98));
        assert_eq!(rank(100, 1.0), Some(99));
    }
}
