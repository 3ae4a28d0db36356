//! The guard and gateway scenarios: revocation delay, and gateway overhead.

use std::convert::Infallible;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tessera_guard::{Guard, GuardConfig, Policy};

use crate::{AUDIENCE, Conn, Outcome, Plan, load};

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall-clock time")]
fn instant() -> std::time::Instant {
    std::time::Instant::now()
}

fn percentile_us(sorted: &[u64], p: f64) -> u64 {
    crate::rank(sorted.len(), p).map_or(0, |i| sorted[i])
}

/// Revokes `n` tokens one after another through RFC 7009 and times, for each, the gap between the revoke
/// call's answer and the in-process guard's first refusal.
pub(crate) async fn revocation_delay(
    issuer: &str,
    addr: &str,
    basic: &str,
    secret: &str,
    n: usize,
) -> Result<(String, Vec<f64>), String> {
    let policy = Policy::parse("default = \"authenticated\"\n").map_err(|e| e.to_string())?;
    let guard = Guard::start(GuardConfig::new(issuer, AUDIENCE, "bench", secret), policy)
        .map_err(|e| e.to_string())?;
    if !guard.wait_ready(Duration::from_secs(10)).await {
        return Err("the guard did not become ready".into());
    }
    let mut conn = Conn::open(addr).await?;
    let uri: http::Uri = "/orders/1".parse().map_err(|_| "uri")?;
    let mut delays = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, body) = conn.post("/token", Some(basic), "grant_type=client_credentials".into()).await?;
        if status != 200 {
            return Err(format!("client_credentials answered {status}"));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let token = json["access_token"].as_str().ok_or("no access_token")?.to_owned();
        let mut headers = http::HeaderMap::new();
        let value = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "header")?;
        headers.insert(http::header::AUTHORIZATION, value);
        if guard.check(&http::Method::GET, &uri, &headers, None).await.is_err() {
            return Err("a fresh token was refused".into());
        }
        let (status, _) = conn.post("/revoke", Some(basic), format!("token={token}")).await?;
        if status != 200 {
            return Err(format!("revocation answered {status}"));
        }
        let t0 = instant();
        loop {
            match guard.check(&http::Method::GET, &uri, &headers, None).await {
                Err(denial) if denial.reason() == "revoked_token" => break,
                Err(denial) => return Err(format!("refused for {}, not the revocation", denial.reason())),
                Ok(_) => {}
            }
            if t0.elapsed() > Duration::from_secs(5) {
                return Err("a revocation took more than 5 s to arrive".into());
            }
            tokio::task::yield_now().await;
        }
        delays.push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    delays.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let line = format!(
        "\nrevocation delay over {n} revocations (RFC 7009 answer at {addr} → first refusal at a guard \
         following {issuer}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile_us(&delays, 0.50)),
        ms(percentile_us(&delays, 0.99)),
        ms(delays.last().copied().unwrap_or(0)),
    );
    Ok((line, delays.into_iter().map(ms).collect()))
}

/// The gateway scenario's inputs.
pub(crate) struct GatewayRun<'a> {
    pub(crate) server: &'a Path,
    pub(crate) issuer: &'a str,
    pub(crate) secret: &'a str,
    pub(crate) token: &'a str,
    /// CPUs the gateway is confined to (`taskset -c`), so that it does not share a core with the load
    /// generator and the upstream (start the bench itself under `taskset` on the others).
    pub(crate) cpus: Option<&'a str>,
}

/// A minimal upstream: 200 `ok` to everything, over HTTP/1.1.
async fn upstream() -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?.to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Load at a fixed total `rate` for `duration`, spread over `connections` connections, each cycling
/// through `auths` (the `Authorization` values) from its own offset with a stride of `connections`, so that
/// with as many values as requests no value is sent twice; latency is timed from each request's send.
async fn load_at_rate(
    addr: &str,
    auths: &std::sync::Arc<Vec<String>>,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> Result<Outcome, String> {
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (addr, auths) = (addr.to_owned(), std::sync::Arc::clone(auths));
        let offset = interval.mul_f64(i as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut next = started + offset;
            let mut which = i;
            while next.duration_since(started) < duration {
                tokio::time::sleep_until(next).await;
                next += interval;
                which = (which + connections) % auths.len().max(1);
                let auth = auths.get(which).map(String::as_str);
                let t0 = instant();
                match conn.get("/orders/1", auth).await {
                    Ok((200, _)) => {
                        latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX))
                    }
                    Ok(_) | Err(_) => errors += 1,
                }
            }
            Ok::<_, String>((latencies, errors))
        }));
    }
    Outcome::gather(tasks, || started.elapsed()).await
}

/// Where the gateway scenario gets more tokens: the server nodes and the bench client's credentials.
pub(crate) struct Fetch<'a> {
    pub(crate) addrs: &'a [String],
    pub(crate) basic: &'a str,
}

/// Distinct tokens for the gateway's cache-miss run at its maximum: it ends when they are used up.
const MISS_TOKENS: usize = 30_000;

/// A `tessera gateway` child process, ready.
struct GatewayChild {
    child: tokio::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl GatewayChild {
    /// The CPU time the process has used so far (user and system, every thread), from `/proc`.
    fn cpu(&self) -> Result<Duration, String> {
        let pid = self.child.id().ok_or("the gateway exited")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
        // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("unreadable /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks =
            |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("unreadable /proc stat");
        // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
        Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
    }
}

impl GatewayRun<'_> {
    /// Starts a gateway in front of `up`, with or without usage reporting, and waits until it is ready.
    async fn spawn(&self, up: &str, report_usage: bool) -> Result<GatewayChild, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, "default = \"authenticated\"\n").map_err(|e| e.to_string())?;
        let mut command = match self.cpus {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.args(["-c", cpus]).arg(self.server);
                c
            }
            None => tokio::process::Command::new(self.server),
        };
        command.args(["gateway", "--issuer", self.issuer, "--audience", AUDIENCE, "--client-id", "bench"]);
        if !report_usage {
            command.arg("--no-usage-report");
        }
        let mut child = command
            .args(["--upstream", &format!("http://{up}"), "--listen", "127.0.0.1:0"])
            .arg("--policy")
            .arg(&policy)
            .env("TESSERA_GATEWAY_CLIENT_SECRET", self.secret)
            .env("TESSERA_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the gateway: {e}"))?;
        let gw = crate::listening_address(&mut child, "tessera gateway: listening on ").await?;
        let mut probe = Conn::open(&gw).await?;
        let ready = instant();
        while probe.get("/readyz", None).await?.0 != 200 {
            if ready.elapsed() > Duration::from_secs(10) {
                return Err("the gateway did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(GatewayChild { child, addr: gw, _dir: dir })
    }

    /// Gateway CPU per request with usage reporting on and off, at a fixed `rate`, over `tokens` distinct
    /// tokens (each a separate aggregate in the reporter), alternating twice.
    pub(crate) async fn reporting(
        &self,
        tokens: &[String],
        connections: usize,
        rate: f64,
        duration: Duration,
    ) -> Result<Vec<String>, String> {
        let up = upstream().await?;
        let auths = std::sync::Arc::new(tokens.iter().map(|t| format!("Bearer {t}")).collect::<Vec<_>>());
        let mut lines = vec![
            String::new(),
            format!(
                "gateway CPU per request, usage reporting on and off ({} distinct tokens, {rate:.0} requests/s, \
                 {connections} connections, {} s per run)",
                tokens.len(),
                duration.as_secs()
            ),
            "| run | reporting | requests | gateway CPU s | CPU µs/request | p50 ms | p99 ms | errors |"
                .to_owned(),
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |".to_owned(),
        ];
        let mut per_request = [Vec::new(), Vec::new()];
        for (round, report) in [(1, true), (1, false), (2, true), (2, false)] {
            let gw = self.spawn(&up, report).await?;
            // Warm the token cache and connections first: the steady state is what is compared.
            let _ = load_at_rate(&gw.addr, &auths, connections, rate, Duration::from_secs(1)).await?;
            let before = gw.cpu()?;
            let mut o = load_at_rate(&gw.addr, &auths, connections, rate, duration).await?;
            let cpu = gw.cpu()?.saturating_sub(before);
            let requests = o.latencies_us.len().max(1);
            let us = cpu.as_secs_f64() * 1e6 / requests as f64;
            per_request[usize::from(!report)].push(us);
            lines.push(format!(
                "| {round} | {} | {requests} | {:.2} | {us:.1} | {:.3} | {:.3} | {} |",
                if report { "on" } else { "off" },
                cpu.as_secs_f64(),
                o.percentile_ms(0.50),
                o.percentile_ms(0.99),
                o.errors
            ));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (on, off) = (mean(&per_request[0]), mean(&per_request[1]));
        lines.push(format!(
            "reporting adds {:.1} µs of gateway CPU per request ({on:.1} against {off:.1}): {:+.1}%",
            on - off,
            (on / off - 1.0) * 100.0
        ));
        Ok(lines)
    }

    /// Starts the gateway and measures, with cache hits (one token) and with cache misses (a distinct token
    /// per request); returns the report's lines and adds a JSON row per run to `rows`.
    pub(crate) async fn run(
        &self,
        connections: usize,
        duration: Duration,
        fetch: &Fetch<'_>,
        rows: &mut Vec<serde_json::Value>,
        nodes: usize,
    ) -> Result<Vec<String>, String> {
        let up = upstream().await?;
        let GatewayChild { mut child, addr: gw, _dir } = self.spawn(&up, true).await?;
        let auth = format!("Bearer {}", self.token);
        let plans = |n: usize| -> Vec<Plan> {
            (0..n).map(|_| Plan::Get { path: "/orders/1", auth: Some(auth.clone()) }).collect()
        };
        let mut runs: Vec<(String, &'static str, Outcome)> = Vec::new();
        // Cache hits: one token, verified once.
        let direct_max = load(std::slice::from_ref(&up), plans(connections), duration).await?;
        let gateway_max = load(std::slice::from_ref(&gw), plans(connections), duration).await?;
        let rate = (gateway_max.rate() / 2.0).max(1.0);
        let auths = std::sync::Arc::new(vec![auth.clone()]);
        let direct = load_at_rate(&up, &auths, connections, rate, duration).await?;
        let through = load_at_rate(&gw, &auths, connections, rate, duration).await?;
        runs.push(("direct, max".into(), "gateway_direct_max", direct_max));
        runs.push(("through the gateway, cache hits, max".into(), "gateway_hits_max", gateway_max));
        runs.push((format!("direct, fixed {rate:.0}/s"), "gateway_direct_fixed", direct));
        runs.push((
            format!("through the gateway, cache hits, fixed {rate:.0}/s"),
            "gateway_hits_fixed",
            through,
        ));
        // Cache misses: every request a token the gateway has never seen, so each one's signature is
        // verified; the tokens are fetched before each run's clock starts.
        let bearer =
            |tokens: Vec<String>| tokens.into_iter().map(|t| format!("Bearer {t}")).collect::<Vec<_>>();
        let fresh = bearer(crate::fetch_tokens(fetch.addrs, fetch.basic, MISS_TOKENS).await?);
        let per = fresh.len().div_ceil(connections.max(1));
        let each: Vec<Plan> = fresh
            .chunks(per.max(1))
            .map(|c| Plan::EachOnce { path: "/orders/1", auths: c.to_vec() })
            .collect();
        let miss_max = load(std::slice::from_ref(&gw), each, duration).await?;
        let miss_rate = (miss_max.rate() / 2.0).max(1.0);
        let needed = (miss_rate * duration.as_secs_f64()).ceil() as usize + connections;
        let fresh = std::sync::Arc::new(bearer(crate::fetch_tokens(fetch.addrs, fetch.basic, needed).await?));
        let miss_fixed = load_at_rate(&gw, &fresh, connections, miss_rate, duration).await?;
        runs.push(("through the gateway, cache misses, max".into(), "gateway_misses_max", miss_max));
        runs.push((
            format!("through the gateway, cache misses, fixed {miss_rate:.0}/s"),
            "gateway_misses_fixed",
            miss_fixed,
        ));
        let _ = child.start_kill();
        let mut lines = vec![
            String::new(),
            format!("gateway overhead ({connections} connections, {} s per run)", duration.as_secs()),
            "| run | requests/s | p50 ms | p99 ms | max ms | errors |".to_owned(),
            "| --- | ---: | ---: | ---: | ---: | ---: |".to_owned(),
        ];
        for (name, key, outcome) in &mut runs {
            lines.push(format!(
                "| {name} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
                outcome.rate(),
                outcome.percentile_ms(0.50),
                outcome.percentile_ms(0.99),
                outcome.percentile_ms(1.0),
                outcome.errors
            ));
            rows.push(outcome.json(key, nodes));
        }
        // Runs 2 and 3: the upstream directly and through the gateway, at the same fixed rate.
        let p = |o: &mut Outcome| (o.percentile_ms(0.50), o.percentile_ms(0.99));
        let ((d50, d99), (g50, g99)) = (p(&mut runs[2].2), p(&mut runs[3].2));
        lines.push(format!(
            "added by the gateway (cache hits, at {rate:.0}/s): p50 {:.3} ms, p99 {:.3} ms",
            g50 - d50,
            g99 - d99
        ));
        Ok(lines)
    }
}
