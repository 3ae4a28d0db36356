//! Several server nodes for the bench: starting them on one database, what each process spent on the CPU
//! (from `/proc`), the machine's description, the JSON report and the SVG charts (plotters).

use std::path::Path;
use std::process::Stdio;

use plotters::prelude::*;

/// A `tessera serve` child process; killed when dropped.
pub(crate) struct Node {
    pub(crate) addr: String,
    pub(crate) pid: u32,
    _child: tokio::process::Child,
}

/// What every node is started with.
pub(crate) struct NodeConfig<'a> {
    pub(crate) server: &'a Path,
    pub(crate) dir: &'a Path,
    pub(crate) issuer: &'a str,
    pub(crate) master: &'a str,
    pub(crate) database_url: &'a str,
    /// Extra environment (the alert webhook of `detection_delay`).
    pub(crate) env: Vec<(String, String)>,
}

impl Node {
    /// Starts a node listening on `port`; returns once it says where it listens.
    pub(crate) async fn start(config: &NodeConfig<'_>, port: u16) -> Result<Node, String> {
        let mut child = tokio::process::Command::new(config.server)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--issuer", config.issuer])
            .current_dir(config.dir)
            .env("TESSERA_MASTER_KEY", config.master)
            .env("TESSERA_DATABASE_URL", config.database_url)
            // The nodes' logs go to this process's stderr: errors only, unless `TESSERA_BENCH_LOG_LEVEL` asks
            // for more (to see where time goes).
            .env(
                "TESSERA_LOG_LEVEL",
                std::env::var("TESSERA_BENCH_LOG_LEVEL").unwrap_or_else(|_| "error".into()),
            )
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", config.server.display()))?;
        let pid = child.id().ok_or("the server exited at once")?;
        let addr = crate::listening_address(&mut child, "tessera: listening on ").await?;
        Ok(Node { addr, pid, _child: child })
    }
}

impl Node {
    /// SIGTERM, then waits (at most 60 s) for the process to exit.
    pub(crate) async fn terminate(mut self) -> Result<(), String> {
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("cannot signal node {}", self.pid));
        }
        match tokio::time::timeout(std::time::Duration::from_secs(60), self._child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!("node {} did not stop within 60 s", self.pid)),
        }
    }
}

/// Rolling restart under load: `connections` clients ask for client_credentials tokens through a
/// health-checking balancer (every 100 ms `/readyz` on each node; a client leaves a node that is not ready),
/// while each node in turn is sent SIGTERM, waited for, started again on its port and waited for. Returns the
/// outcome (every failed request is an error) and how long the restarts took.
pub(crate) async fn rolling_restart(
    nodes: &mut Vec<Node>,
    config: &NodeConfig<'_>,
    basic: &str,
    connections: usize,
) -> Result<(crate::Outcome, std::time::Duration), String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let addrs: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.addr.clone()).collect());
    let ready: Arc<Vec<AtomicBool>> = Arc::new(addrs.iter().map(|_| AtomicBool::new(true)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let health = {
        let (addrs, ready, done) = (Arc::clone(&addrs), Arc::clone(&ready), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                for (i, addr) in addrs.iter().enumerate() {
                    let probe = async {
                        let mut conn = crate::Conn::open(addr).await?;
                        conn.get("/readyz", None).await
                    };
                    let up = matches!(
                        tokio::time::timeout(Duration::from_millis(500), probe).await,
                        Ok(Ok((200, _)))
                    );
                    ready[i].store(up, Ordering::Release);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    #[allow(clippy::disallowed_methods, reason = "a load generator measures wall-clock latency")]
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (addrs, ready, done) = (Arc::clone(&addrs), Arc::clone(&ready), Arc::clone(&done));
        let basic = basic.to_owned();
        tasks.push(tokio::spawn(async move {
            let pick = |from: usize| {
                (0..addrs.len()).map(|k| (from + k) % addrs.len()).find(|&i| ready[i].load(Ordering::Acquire))
            };
            let mut at = c % addrs.len();
            let mut conn: Option<crate::Conn> = None;
            let (mut latencies, mut errors) = (Vec::with_capacity(100_000), 0u64);
            while !done.load(Ordering::Acquire) {
                if !ready[at].load(Ordering::Acquire) {
                    conn = None;
                    match pick(at + 1) {
                        Some(next) => at = next,
                        None => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                if conn.is_none() {
                    conn = crate::Conn::open(&addrs[at]).await.ok();
                }
                let Some(open) = conn.as_mut() else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                #[allow(clippy::disallowed_methods, reason = "a load generator measures wall-clock latency")]
                let t0 = std::time::Instant::now();
                let failure = match open
                    .post("/token", Some(&basic), "grant_type=client_credentials".into())
                    .await
                {
                    Ok((200, _)) => {
                        latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                        continue;
                    }
                    Ok((status, body)) => format!("answered {status}: {}", String::from_utf8_lossy(&body)),
                    Err(e) => {
                        conn = None;
                        format!("failed: {e}")
                    }
                };
                errors += 1;
                // The first two failures of each client say what went wrong.
                if errors < 3 {
                    #[allow(clippy::print_stderr, reason = "what failed, for whoever runs the bench")]
                    {
                        eprintln!("rolling_restart: {} {failure}", addrs[at]);
                    }
                }
            }
            Ok::<_, String>((latencies, errors))
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    #[allow(clippy::disallowed_methods, reason = "the restarts are timed on the wall clock")]
    let restarts = std::time::Instant::now();
    for i in 0..nodes.len() {
        let port =
            nodes[i].addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).ok_or("a node's port")?;
        nodes.remove(i).terminate().await?;
        nodes.insert(i, Node::start(config, port).await?);
        while !ready[i].load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let restart_time = restarts.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Release);
    let outcome = crate::Outcome::gather(tasks, || started.elapsed()).await?;
    let _ = health.await;
    Ok((outcome, restart_time))
}

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`, 100 on every Linux we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system, in ticks) a process has used, from `/proc/PID/stat`; 0 if unreadable.
fn ticks(stat: &str) -> u64 {
    // Fields after the command name (which may hold spaces, so split after its closing parenthesis).
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the state.
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn process_ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| ticks(&s)).unwrap_or(0)
}

/// CPU time of every process called `postgres` (the database's backends), in ticks.
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .map(|stat| ticks(&stat))
        .sum()
}

/// CPU readings of the nodes, the database and this process at one moment.
#[derive(Clone)]
pub(crate) struct CpuSample {
    nodes: Vec<u64>,
    postgres: u64,
    bench: u64,
}

impl CpuSample {
    pub(crate) fn take(nodes: &[Node]) -> CpuSample {
        CpuSample {
            nodes: nodes.iter().map(|n| process_ticks(&n.pid.to_string())).collect(),
            postgres: postgres_ticks(),
            bench: process_ticks("self"),
        }
    }

    /// Each process's CPU use since `earlier` over `seconds`, in percent of one core: the nodes', then the
    /// database's and the load generator's.
    pub(crate) fn since(&self, earlier: &CpuSample, seconds: f64) -> (Vec<f64>, f64, f64) {
        let pct = |now: u64, then: u64| now.saturating_sub(then) as f64 / TICKS_PER_SEC / seconds * 100.0;
        let nodes = self.nodes.iter().zip(&earlier.nodes).map(|(n, e)| pct(*n, *e)).collect();
        (nodes, pct(self.postgres, earlier.postgres), pct(self.bench, earlier.bench))
    }
}

/// The machine, as `docs/benchmarks.md` describes it: CPU model, cores, memory, kernel.
pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
        .unwrap_or("unknown")
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    serde_json::json!({ "cpu": model, "cores": cores, "memory_gib": memory_gib, "kernel": kernel })
}

/// One point of the latency-against-load curve.
pub(crate) struct CurvePoint {
    pub(crate) connections: usize,
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

fn chart_error(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// Draws p50 and p99 latency against achieved requests/s, one series per node count.
pub(crate) fn latency_chart(
    path: &Path,
    title: &str,
    curves: &[(usize, Vec<CurvePoint>)],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let max_rate = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.rate)).fold(1.0, f64::max) * 1.1;
    let max_ms = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.p99_ms)).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max_rate, 0.0..max_ms)
        .map_err(chart_error)?;
    chart.configure_mesh().x_desc("requests/s").y_desc("latency (ms)").draw().map_err(chart_error)?;
    let colours = [BLUE, RED, GREEN, MAGENTA];
    for (i, (nodes, curve)) in curves.iter().enumerate() {
        let colour = colours[i % colours.len()];
        for (name, pick, style) in [
            ("p50", (|p: &CurvePoint| p.p50_ms) as fn(&CurvePoint) -> f64, colour.stroke_width(2)),
            ("p99", |p: &CurvePoint| p.p99_ms, colour.mix(0.5).stroke_width(2)),
        ] {
            let points: Vec<(f64, f64)> = curve.iter().map(|p| (p.rate, pick(p))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(chart_error)?
                .label(format!("{nodes} node{} {name}", if *nodes == 1 { "" } else { "s" }))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 3, style.filled())))
                .map_err(chart_error)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)
}

/// Draws the distribution of revocation delays (ms) as a histogram.
pub(crate) fn delay_chart(path: &Path, title: &str, delays_ms: &[f64]) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let max = delays_ms.iter().copied().fold(1.0, f64::max);
    // Buckets of a fiftieth of the largest delay, at least 0.1 ms.
    let width = (max / 50.0).max(0.1);
    let buckets = (max / width).ceil() as usize + 1;
    let mut counts = vec![0u32; buckets];
    for d in delays_ms {
        let i = ((d / width) as usize).min(buckets - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..(buckets as f64 * width), 0u32..top + top / 10 + 1)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("delay from the revoke answer to the first refusal (ms)")
        .y_desc("revocations")
        .draw()
        .map_err(chart_error)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &n)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width, n)], BLUE.mix(0.6).filled())
        }))
        .map_err(chart_error)?;
    root.present().map_err(chart_error)
}

#[cfg(test)]
mod tests {
    use super::ticks;

    #[test]
    fn cpu_ticks_are_user_plus_system_even_with_spaces_in_the_name() {
        let stat = "4242 (tokio runtime) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 8 0 100 0 0";
        assert_eq!(ticks(stat), 175);
        assert_eq!(ticks("garbage"), 0);
    }
}
