//! Prometheus metrics: requests by endpoint and status, latency histograms, tokens issued by grant, refresh
//! reuse, login failures. Served as text at `/metrics`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabel {
    grant: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    sink: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

type LatencyFamily = Family<EndpointLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    tokens: Family<GrantLabel, Counter>,
    refresh_reuse: Counter,
    login_failures: Counter,
    password_checks: Counter,
    logins_throttled: Counter,
    audit_write_failures: Counter,
    detections: Family<RuleLabel, Counter>,
    responses: Family<ActionLabel, Counter>,
    guard_rejections: Family<ReasonLabel, Counter>,
    alert_attempts: Family<AttemptLabels, Counter>,
    alert_outbox_depth: Gauge,
    revocation_streams: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let tokens = Family::<GrantLabel, Counter>::default();
        let refresh_reuse = Counter::default();
        let login_failures = Counter::default();
        let password_checks = Counter::default();
        let logins_throttled = Counter::default();
        let audit_write_failures = Counter::default();
        let detections = Family::<RuleLabel, Counter>::default();
        let responses = Family::<ActionLabel, Counter>::default();
        let guard_rejections = Family::<ReasonLabel, Counter>::default();
        let alert_attempts = Family::<AttemptLabels, Counter>::default();
        let alert_outbox_depth = Gauge::default();
        let revocation_streams = Gauge::default();
        registry.register(
            "revocation_streams",
            "Guards following the revocation stream from this node now",
            revocation_streams.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Alert delivery attempts by sink and outcome (delivered, retry, failed)",
            alert_attempts.clone(),
        );
        registry.register(
            "alert_outbox_depth",
            "Alerts queued and not yet delivered, across every node",
            alert_outbox_depth.clone(),
        );
        registry.register("detections", "Detections raised by this node, by rule", detections.clone());
        registry.register("responses", "Automatic responses run by this node, by action", responses.clone());
        registry.register(
            "guard_rejections",
            "Requests refused at guards, by reason, as reported to this node",
            guard_rejections.clone(),
        );
        registry.register("http_requests", "HTTP requests by endpoint and status", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by endpoint",
            latency.clone(),
        );
        registry.register("tokens_issued", "Access tokens issued by grant type", tokens.clone());
        registry.register(
            "refresh_token_reuse",
            "Rotated refresh tokens presented again",
            refresh_reuse.clone(),
        );
        registry.register("login_failures", "Failed logins", login_failures.clone());
        registry.register(
            "password_checks",
            "Passwords checked against their hash at a sign-in",
            password_checks.clone(),
        );
        registry.register(
            "logins_throttled",
            "Sign-in attempts refused by the throttle before any password check",
            logins_throttled.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Requests refused because their audit event could not be written",
            audit_write_failures.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            tokens,
            refresh_reuse,
            login_failures,
            password_checks,
            logins_throttled,
            audit_write_failures,
            detections,
            responses,
            guard_rejections,
            alert_attempts,
            alert_outbox_depth,
            revocation_streams,
        }
    }

    /// Counts a guard's stream while the returned value lives.
    pub fn stream_opened(&self) -> StreamGauge {
        self.revocation_streams.inc();
        StreamGauge(self.revocation_streams.clone())
    }

    /// Counts one alert delivery attempt.
    pub fn alert_attempt(&self, sink: &str, outcome: &tessera_store::AlertOutcome) {
        let outcome = match outcome {
            tessera_store::AlertOutcome::Delivered => "delivered",
            tessera_store::AlertOutcome::Retry { .. } => "retry",
            tessera_store::AlertOutcome::Failed { .. } => "failed",
        };
        self.alert_attempts.get_or_create(&AttemptLabels { sink: sink.to_owned(), outcome }).inc();
    }

    /// Sets the outbox depth gauge.
    pub fn set_alert_depth(&self, depth: i64) {
        self.alert_outbox_depth.set(depth);
    }

    /// Counts one request.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.to_owned(), status }).inc();
        self.latency.get_or_create(&EndpointLabel { endpoint: endpoint.to_owned() }).observe(seconds);
    }

    /// Counts one access token issued by `grant`.
    pub fn token_issued(&self, grant: &'static str) {
        self.tokens.get_or_create(&GrantLabel { grant }).inc();
    }

    /// Counts one refresh-token reuse.
    pub fn refresh_reuse(&self) {
        self.refresh_reuse.inc();
    }

    /// Counts one request refused because the audit log could not be written.
    pub fn audit_write_failed(&self) {
        self.audit_write_failures.inc();
    }

    /// Counts one detection raised.
    pub fn detection(&self, rule: &str) {
        self.detections.get_or_create(&RuleLabel { rule: rule.to_owned() }).inc();
    }

    /// Counts one response run.
    pub fn response(&self, action: &str) {
        self.responses.get_or_create(&ActionLabel { action: action.to_owned() }).inc();
    }

    /// Counts `n` requests refused at a guard for `reason` (a stable snake_case name, checked at ingest).
    pub fn guard_rejections(&self, reason: &str, n: u64) {
        self.guard_rejections.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc_by(n);
    }

    /// Counts one failed login.
    pub fn login_failure(&self) {
        self.login_failures.inc();
    }

    /// Counts one password checked against its hash.
    pub fn password_check(&self) {
        self.password_checks.inc();
    }

    /// Counts one sign-in attempt refused by the throttle.
    pub fn login_throttled(&self) {
        self.logins_throttled.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// One guard's stream, counted in `tessera_revocation_streams` until dropped.
#[derive(Debug)]
pub struct StreamGauge(Gauge);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
