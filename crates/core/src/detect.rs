//! Detection rules: pure functions over the recent audit events and `now`, each finding theft or probing
//! with a name, a severity and a plain-English explanation, and the events that prove it.
//!
//! The caller (the server's detector) feeds the events of the last [`Thresholds::window_secs`], raises each
//! detection once (by [`Detection::key`]) and runs the configured response. Nothing here reads a clock or the
//! store. The login rules (`impossible_travel`, `new_device`) run on one sign-in and the user's earlier ones
//! ([`login_anomalies`]), since a user's history is longer than the window; the server records each
//! sign-in's place (from the operator's GeoIP databases) and device in its event, so they need no lookup.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::audit::{Event, EventKind};
use crate::geo::{Locator, Place, distance_km};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Likely misuse.
    Medium,
    /// Misuse.
    High,
    /// Certain theft.
    Critical,
}

impl Severity {
    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The rules, each with one stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// A rotated refresh token was presented again.
    RefreshTokenReuse,
    /// One access token or session used from two networks at the same time.
    TokenUsedFromTwoNetworks,
    /// A token used from a network other than the one it was issued to.
    TokenUsedFromNewNetwork,
    /// One session's tokens presented to audiences they were not issued for.
    LateralMovementProbe,
    /// Many signature, algorithm or format rejections from one source.
    ForgedTokenBurst,
    /// A revoked token still being presented.
    RevokedTokenUse,
    /// Many failed logins on one account.
    BruteForce,
    /// Failed logins across many accounts from one source.
    CredentialStuffing,
    /// Two sign-ins of one user farther apart than anyone can travel in the time between them.
    ImpossibleTravel,
    /// A sign-in from a device the user has not signed in from before.
    NewDevice,
    /// Sign-in for an account, or from a source, was locked after too many failures.
    LoginLocked,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 11] = [
        Rule::RefreshTokenReuse,
        Rule::TokenUsedFromTwoNetworks,
        Rule::TokenUsedFromNewNetwork,
        Rule::LateralMovementProbe,
        Rule::ForgedTokenBurst,
        Rule::RevokedTokenUse,
        Rule::BruteForce,
        Rule::CredentialStuffing,
        Rule::ImpossibleTravel,
        Rule::NewDevice,
        Rule::LoginLocked,
    ];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::RefreshTokenReuse => "refresh_token_reuse",
            Rule::TokenUsedFromTwoNetworks => "token_used_from_two_networks",
            Rule::TokenUsedFromNewNetwork => "token_used_from_new_network",
            Rule::LateralMovementProbe => "lateral_movement_probe",
            Rule::ForgedTokenBurst => "forged_token_burst",
            Rule::RevokedTokenUse => "revoked_token_use",
            Rule::BruteForce => "brute_force",
            Rule::CredentialStuffing => "credential_stuffing",
            Rule::ImpossibleTravel => "impossible_travel",
            Rule::NewDevice => "new_device",
            Rule::LoginLocked => "login_locked",
        }
    }

    /// How bad a finding of this rule is.
    pub fn severity(self) -> Severity {
        match self {
            Rule::RefreshTokenReuse => Severity::Critical,
            Rule::TokenUsedFromTwoNetworks
            | Rule::LateralMovementProbe
            | Rule::ForgedTokenBurst
            | Rule::BruteForce
            | Rule::CredentialStuffing
            | Rule::ImpossibleTravel => Severity::High,
            Rule::RevokedTokenUse | Rule::LoginLocked => Severity::Medium,
            Rule::TokenUsedFromNewNetwork | Rule::NewDevice => Severity::Low,
        }
    }

    /// The rule with this name.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The thresholds of the rules (configuration; every field has a default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// How far back the rules look, seconds (at least the longest access-token lifetime).
    pub window_secs: i64,
    /// Uses of one token or session from two networks within this many seconds are "at the same time".
    pub two_networks_secs: i64,
    /// Forged or malformed tokens from one source that make a burst…
    pub forged_burst_count: u64,
    /// …within this many seconds.
    pub forged_burst_secs: i64,
    /// Foreign audiences one session's tokens may be shown to before it is a probe.
    pub lateral_probe_audiences: usize,
    /// Presentations of a revoked token that raise `revoked_token_use`.
    pub revoked_use_count: u64,
    /// Failed logins on one account that make brute force…
    pub brute_force_failures: u64,
    /// …or accounts failed from one source that make credential stuffing…
    pub stuffing_accounts: usize,
    /// …within this many seconds.
    pub login_failure_secs: i64,
    /// Sign-ins farther apart than this speed allows are impossible travel, km/h (an airliner does about 900).
    pub travel_kmh: u64,
    /// …when they are at least this far apart, beyond both places' accuracy radii, km (GeoIP places a mobile
    /// network's users hundreds of kilometres off).
    pub travel_min_km: u64,
    /// How far back a user's sign-ins count as their history (travel, known devices), days.
    pub login_history_days: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            window_secs: 900,
            two_networks_secs: 300,
            forged_burst_count: 20,
            forged_burst_secs: 60,
            lateral_probe_audiences: 1,
            revoked_use_count: 1,
            brute_force_failures: 10,
            stuffing_accounts: 10,
            login_failure_secs: 300,
            travel_kmh: 1000,
            travel_min_km: 500,
            login_history_days: 90,
        }
    }
}

/// What a detection is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Subject {
    /// A session (`sid`).
    Session(String),
    /// An access token (`jti`).
    Token(String),
    /// A user (`sub`).
    User(String),
    /// A source address.
    Source(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Session(id) => write!(f, "session {id}"),
            Subject::Token(id) => write!(f, "token {id}"),
            Subject::User(id) => write!(f, "user {id}"),
            Subject::Source(ip) => write!(f, "source {ip}"),
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The rule's name.
    pub rule: &'static str,
    /// How bad.
    pub severity: Severity,
    /// What it is about.
    pub subject: Subject,
    /// The session, user and token involved, where known (for responses).
    pub sid: Option<String>,
    /// The user.
    pub sub: Option<String>,
    /// The token.
    pub jti: Option<String>,
    /// The source address, where one is to blame.
    pub ip: Option<String>,
    /// What happened, in plain English.
    pub explanation: String,
    /// The events that show it (their numbers in the audit chain).
    pub evidence: Vec<i64>,
    /// The latest of those events.
    pub last_at: i64,
}

impl Detection {
    /// Raised once per key: the rule and its subject.
    pub fn key(&self) -> String {
        let subject = match &self.subject {
            Subject::Session(id) => format!("sid:{id}"),
            Subject::Token(id) => format!("jti:{id}"),
            Subject::User(id) => format!("sub:{id}"),
            Subject::Source(ip) => format!("ip:{ip}"),
        };
        format!("{}|{subject}", self.rule)
    }
}

/// The network an address belongs to: its /24 for IPv4, its /48 for IPv6 (an IPv4-mapped address counts as
/// IPv4). `None` for text that is not an address.
pub fn network(ip: &str) -> Option<String> {
    let addr: IpAddr = ip.parse().ok()?;
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Some(match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    })
}

/// The network of an address as the rules see it: its autonomous system (`AS64500`) when an ASN database
/// knows it, else its /24 or /48 ([`network`]).
pub fn network_in(ip: &str, geo: Option<&dyn Locator>) -> Option<String> {
    if let (Some(geo), Ok(addr)) = (geo, ip.parse::<IpAddr>())
        && let Some(asn) = geo.locate(crate::net::canonical(addr)).and_then(|p| p.asn)
    {
        return Some(format!("AS{asn}"));
    }
    network(ip)
}

/// Rejection reasons that mean the token was not made by us (or was damaged on purpose).
const FORGED_REASONS: [&str; 14] = [
    "malformed_token",
    "invalid_base64",
    "invalid_header",
    "duplicate_member",
    "unsupported_algorithm",
    "crit_header",
    "embedded_key_header",
    "key_url_header",
    "missing_kid",
    "unknown_kid",
    "algorithm_mismatch",
    "bad_signature",
    "json_serialization",
    "token_too_large",
];

/// One member of an event's JSON detail.
fn detail(e: &Event, member: &str) -> Option<serde_json::Value> {
    let mut detail = serde_json::from_str::<serde_json::Value>(e.detail.as_deref()?).ok()?;
    detail.get_mut(member).map(serde_json::Value::take)
}

/// How many requests an event stands for: guards aggregate (`detail.count`), the server does not.
fn count(e: &Event) -> u64 {
    detail(e, "count").and_then(|v| v.as_u64()).unwrap_or(1)
}

/// Whether an issuance event says its token is DPoP-bound.
fn dpop_bound(e: &Event) -> bool {
    detail(e, "dpop").and_then(|v| v.as_bool()).unwrap_or(false)
}

fn is(e: &Event, kind: EventKind) -> bool {
    e.kind == kind.name()
}

/// Runs the window's rules over `events` (the audit chain's `(seq, event)` pairs, oldest first) as of `now`.
/// Events older than the window are ignored. Detections come in rule order, then by subject. With `geo`
/// (an ASN database), a network is an autonomous system rather than a prefix.
pub fn detect(
    events: &[(i64, Event)],
    now: i64,
    t: &Thresholds,
    geo: Option<&dyn Locator>,
) -> Vec<Detection> {
    let events: Vec<&(i64, Event)> = events.iter().collect();
    detect_refs(&events, now, t, geo)
}

/// [`detect`] over borrowed events: what the server's detector calls with the part of its window a round
/// touched, without copying it.
pub fn detect_refs(
    events: &[&(i64, Event)],
    now: i64,
    t: &Thresholds,
    geo: Option<&dyn Locator>,
) -> Vec<Detection> {
    let recent: Vec<&(i64, Event)> =
        events.iter().copied().filter(|(_, e)| e.at > now - t.window_secs).collect();
    let mut out = Vec::new();
    refresh_token_reuse(&recent, &mut out);
    networks(&recent, t, geo, &mut out);
    lateral_movement_probe(&recent, t, &mut out);
    forged_token_burst(&recent, now, t, &mut out);
    revoked_token_use(&recent, t, &mut out);
    login_failures(&recent, now, t, &mut out);
    login_locked(&recent, &mut out);
    out
}

fn refresh_token_reuse(events: &[&(i64, Event)], out: &mut Vec<Detection>) {
    let mut by_session: BTreeMap<String, Vec<&(i64, Event)>> = BTreeMap::new();
    for pair in events.iter().filter(|(_, e)| is(e, EventKind::RefreshTokenReuse)) {
        let key = pair.1.sid.clone().or_else(|| pair.1.jti.clone()).unwrap_or_default();
        by_session.entry(key).or_default().push(pair);
    }
    for (sid, found) in by_session {
        let first = &found[0].1;
        out.push(Detection {
            rule: Rule::RefreshTokenReuse.name(),
            severity: Rule::RefreshTokenReuse.severity(),
            subject: Subject::Session(sid.clone()),
            sid: first.sid.clone(),
            sub: first.sub.clone(),
            jti: None,
            ip: first.ip.clone(),
            explanation: format!(
                "A refresh token of session {sid} (client {}) was presented again after it had been rotated{}: \
                 two parties hold that session's refresh tokens, so one of them stole it.",
                first.client_id.as_deref().unwrap_or("unknown"),
                first.ip.as_deref().map(|ip| format!(", from {ip}")).unwrap_or_default(),
            ),
            evidence: found.iter().map(|(seq, _)| *seq).collect(),
            last_at: found.iter().map(|(_, e)| e.at).max().unwrap_or(0),
        });
    }
}

/// `token_used_from_two_networks` and `token_used_from_new_network`.
fn networks(events: &[&(i64, Event)], t: &Thresholds, geo: Option<&dyn Locator>, out: &mut Vec<Detection>) {
    // Each address is looked up once per run.
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut network = |ip: &str| -> Option<String> {
        if let Some(found) = seen.get(ip) {
            return found.clone();
        }
        let found = network_in(ip, geo);
        seen.insert(ip.to_owned(), found.clone());
        found
    };
    // What each token was issued as: its network, its session and user, and whether it is DPoP-bound.
    let mut issued: BTreeMap<&str, &(i64, Event)> = BTreeMap::new();
    for pair in events.iter().copied() {
        let e = &pair.1;
        let issuance = is(e, EventKind::TokenIssued) || is(e, EventKind::TokenRefreshed);
        if let (true, Some(jti)) = (issuance, e.jti.as_deref()) {
            issued.insert(jti, pair);
        }
    }
    let bound = |jti: &str| issued.get(jti).is_some_and(|(_, e)| dpop_bound(e));
    // Uses grouped by session (or by token, for tokens without one).
    let mut uses: BTreeMap<Subject, Vec<Use<'_>>> = BTreeMap::new();
    for pair in events.iter().copied() {
        let e = &pair.1;
        if !is(e, EventKind::TokenUsed) {
            continue;
        }
        let (Some(jti), Some(net)) = (e.jti.as_deref(), e.ip.as_deref().and_then(&mut network)) else {
            continue;
        };
        if bound(jti) {
            // A DPoP-bound token works only with its key: a change of network is its holder moving.
            continue;
        }
        let subject = match &e.sid {
            Some(sid) => Subject::Session(sid.clone()),
            None => Subject::Token(jti.to_owned()),
        };
        uses.entry(subject).or_default().push((pair, net));
    }
    // The networks each session (or sessionless token) was issued tokens to.
    let mut issued_to: BTreeMap<Subject, BTreeSet<String>> = BTreeMap::new();
    for (_, e) in issued.values() {
        let subject = match (&e.sid, &e.jti) {
            (Some(sid), _) => Subject::Session(sid.clone()),
            (None, Some(jti)) => Subject::Token(jti.clone()),
            (None, None) => continue,
        };
        if let Some(net) = e.ip.as_deref().and_then(&mut network) {
            issued_to.entry(subject).or_default().insert(net);
        }
    }
    for (subject, used) in &mut uses {
        // Cached: a span reads the event's JSON detail, once per event rather than once per comparison.
        used.sort_by_cached_key(|(pair, _)| span(&pair.1));
        let first = &used[0].0.1;
        if let Some((a, b)) = at_once(used, t.two_networks_secs) {
            out.push(Detection {
                rule: Rule::TokenUsedFromTwoNetworks.name(),
                severity: Rule::TokenUsedFromTwoNetworks.severity(),
                subject: subject.clone(),
                sid: first.sid.clone(),
                sub: first.sub.clone(),
                jti: b.0.1.jti.clone(),
                ip: b.0.1.ip.clone(),
                explanation: format!(
                    "The bearer tokens of {subject} were used from {} and {} at the same time (within {} s of \
                     each other, back and forth). A bearer token works for whoever holds it; one of these is a copy.",
                    a.1, b.1, t.two_networks_secs,
                ),
                evidence: vec![a.0.0, b.0.0],
                last_at: a.0.1.at.max(b.0.1.at),
            });
            continue;
        }
        // A new network: one this session was never issued a token to (a client that moves and refreshes
        // is issued one there).
        let known = issued_to.get(subject);
        let moved = used.iter().find(|(u, net)| {
            u.1.jti.as_deref().is_some_and(|jti| issued.contains_key(jti))
                && known.is_some_and(|k| !k.contains(net))
        });
        if let Some((u, net)) = moved {
            let origin = known.map(|k| k.iter().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default();
            let issued_seq = u.1.jti.as_deref().and_then(|j| issued.get(j)).map(|(seq, _)| *seq);
            out.push(Detection {
                rule: Rule::TokenUsedFromNewNetwork.name(),
                severity: Rule::TokenUsedFromNewNetwork.severity(),
                subject: subject.clone(),
                sid: first.sid.clone(),
                sub: first.sub.clone(),
                jti: u.1.jti.clone(),
                ip: u.1.ip.clone(),
                explanation: format!(
                    "A bearer token of {subject}, issued to {origin}, was used from {net}, where the session \
                     was never issued a token. Often a laptop changing networks; sometimes a token copied elsewhere."
                ),
                evidence: issued_seq.into_iter().chain([u.0]).collect(),
                last_at: u.1.at,
            });
        }
    }
}

/// A use of a token: the numbered event and the network it came from.
type Use<'a> = (&'a (i64, Event), String);

/// When a use event's requests happened: guards report the first and last of an aggregate.
fn span(e: &Event) -> (i64, i64) {
    let first = detail(e, "first_at").and_then(|v| v.as_i64()).unwrap_or(e.at);
    (first.min(e.at), e.at)
}

/// Two uses from different networks "at the same time": their spans overlap, or the uses go from one
/// network to another and back within `secs` (a move goes one way only).
fn at_once<'a>(used: &'a [Use<'a>], secs: i64) -> Option<(&'a Use<'a>, &'a Use<'a>)> {
    for (i, a) in used.iter().enumerate() {
        let (a_first, a_last) = span(&a.0.1);
        for b in &used[i + 1..] {
            let (b_first, b_last) = span(&b.0.1);
            if b_first > a_last + secs {
                break;
            }
            if b.1 == a.1 {
                continue;
            }
            if b_first <= a_last && a_first <= b_last {
                return Some((a, b));
            }
            // Back again: a later use from a's network within the window.
            let back = used.iter().skip_while(|u| !std::ptr::eq(*u, b)).skip(1).find(|c| c.1 == a.1);
            if back.is_some_and(|c| span(&c.0.1).0 <= a_last + secs) {
                return Some((a, b));
            }
        }
    }
    None
}

fn lateral_movement_probe(events: &[&(i64, Event)], t: &Thresholds, out: &mut Vec<Detection>) {
    let mut by_session: BTreeMap<Subject, Vec<&(i64, Event)>> = BTreeMap::new();
    for pair in events.iter().copied().filter(|(_, e)| is(e, EventKind::LateralMovementAttempt)) {
        let e = &pair.1;
        let subject = match (&e.sid, &e.jti) {
            (Some(sid), _) => Subject::Session(sid.clone()),
            (None, Some(jti)) => Subject::Token(jti.clone()),
            (None, None) => continue,
        };
        by_session.entry(subject).or_default().push(pair);
    }
    for (subject, found) in by_session {
        let targets: BTreeSet<&str> = found.iter().filter_map(|(_, e)| e.audience.as_deref()).collect();
        if targets.len() < t.lateral_probe_audiences.max(1) {
            continue;
        }
        let first = &found[0].1;
        let list: Vec<&str> = targets.iter().copied().collect();
        out.push(Detection {
            rule: Rule::LateralMovementProbe.name(),
            severity: Rule::LateralMovementProbe.severity(),
            subject: subject.clone(),
            sid: first.sid.clone(),
            sub: first.sub.clone(),
            jti: first.jti.clone(),
            ip: first.ip.clone(),
            explanation: format!(
                "Tokens of {subject} (client {}) were presented to {} they were not issued for: {}. A token is \
                 sent only to its own audience; someone is trying it elsewhere.",
                first.client_id.as_deref().unwrap_or("unknown"),
                if list.len() == 1 { "a service" } else { "services" },
                list.join(", "),
            ),
            evidence: found.iter().map(|(seq, _)| *seq).collect(),
            last_at: found.iter().map(|(_, e)| e.at).max().unwrap_or(0),
        });
    }
}

fn forged_token_burst(events: &[&(i64, Event)], now: i64, t: &Thresholds, out: &mut Vec<Detection>) {
    let mut by_source: BTreeMap<&str, Vec<&(i64, Event)>> = BTreeMap::new();
    for pair in events.iter().copied() {
        let e = &pair.1;
        let forged = is(e, EventKind::TokenRejected)
            && e.reason.as_deref().is_some_and(|r| FORGED_REASONS.contains(&r))
            && e.at > now - t.forged_burst_secs;
        if let (true, Some(ip)) = (forged, e.ip.as_deref()) {
            by_source.entry(ip).or_default().push(pair);
        }
    }
    for (ip, found) in by_source {
        let total: u64 = found.iter().map(|(_, e)| count(e)).sum();
        if total < t.forged_burst_count {
            continue;
        }
        let reasons: BTreeSet<&str> = found.iter().filter_map(|(_, e)| e.reason.as_deref()).collect();
        out.push(Detection {
            rule: Rule::ForgedTokenBurst.name(),
            severity: Rule::ForgedTokenBurst.severity(),
            subject: Subject::Source(ip.to_owned()),
            sid: None,
            sub: None,
            jti: None,
            ip: Some(ip.to_owned()),
            explanation: format!(
                "{total} forged or malformed tokens came from {ip} within {} s ({}): someone is trying to get \
                 past the signature check.",
                t.forged_burst_secs,
                reasons.into_iter().collect::<Vec<_>>().join(", ")
            ),
            evidence: found.iter().map(|(seq, _)| *seq).collect(),
            last_at: found.iter().map(|(_, e)| e.at).max().unwrap_or(0),
        });
    }
}

fn revoked_token_use(events: &[&(i64, Event)], t: &Thresholds, out: &mut Vec<Detection>) {
    let mut by_token: BTreeMap<&str, Vec<&(i64, Event)>> = BTreeMap::new();
    for pair in events.iter().copied() {
        let e = &pair.1;
        let revoked =
            is(e, EventKind::TokenRejected) && e.reason.as_deref().is_some_and(|r| r.starts_with("revoked_"));
        if let (true, Some(jti)) = (revoked, e.jti.as_deref()) {
            by_token.entry(jti).or_default().push(pair);
        }
    }
    for (jti, found) in by_token {
        let total: u64 = found.iter().map(|(_, e)| count(e)).sum();
        if total < t.revoked_use_count.max(1) {
            continue;
        }
        let first = &found[0].1;
        let sources: BTreeSet<&str> = found.iter().filter_map(|(_, e)| e.ip.as_deref()).collect();
        out.push(Detection {
            rule: Rule::RevokedTokenUse.name(),
            severity: Rule::RevokedTokenUse.severity(),
            subject: Subject::Token(jti.to_owned()),
            sid: first.sid.clone(),
            sub: first.sub.clone(),
            jti: Some(jti.to_owned()),
            ip: first.ip.clone(),
            explanation: format!(
                "Token {jti} was presented {total} time(s) after it was revoked ({}), from {}. Whoever sends \
                 it holds a copy made before the revocation.",
                first.reason.as_deref().unwrap_or("revoked"),
                if sources.is_empty() {
                    "an unknown source".to_owned()
                } else {
                    sources.into_iter().collect::<Vec<_>>().join(", ")
                },
            ),
            evidence: found.iter().map(|(seq, _)| *seq).collect(),
            last_at: found.iter().map(|(_, e)| e.at).max().unwrap_or(0),
        });
    }
}

/// The account a failed login was for: the user id, or the hash of the name typed for an unknown user.
fn account(e: &Event) -> Option<String> {
    e.sub.clone().or_else(|| Some(format!("name:{}", detail(e, "username_pseudonym")?.as_str()?)))
}

/// The keys under which the rules here group an event with others, for a caller that keeps a window and
/// runs the rules only over the events related to new ones: session and token for token events (reuse,
/// networks, lateral movement, revoked use); the source for rejections and failed sign-ins (forged-token
/// bursts, credential stuffing); the account for sign-ins (brute force). Nothing else: a key every event of
/// a busy source or client shares (its address, its `sub`) would relate the whole window to every new event.
pub fn group_keys(e: &Event) -> Vec<String> {
    let login =
        is(e, EventKind::LoginFailure) || is(e, EventKind::LoginSuccess) || is(e, EventKind::LoginLocked);
    let mut out = Vec::with_capacity(3);
    if !login {
        for (prefix, value) in [("sid", &e.sid), ("jti", &e.jti)] {
            if let Some(v) = value {
                out.push(format!("{prefix}:{v}"));
            }
        }
    }
    if (is(e, EventKind::TokenRejected) || is(e, EventKind::LoginFailure))
        && let Some(ip) = &e.ip
    {
        out.push(format!("ip:{ip}"));
    }
    if login && let Some(account) = account(e) {
        out.push(format!("account:{account}"));
    }
    out
}

/// `login_locked`: one finding per lock, for the account (or the source) that the throttle locked.
fn login_locked(events: &[&(i64, Event)], out: &mut Vec<Detection>) {
    for (seq, e) in events.iter().copied().filter(|(_, e)| is(e, EventKind::LoginLocked)) {
        let until = detail(e, "until").and_then(|v| v.as_i64()).unwrap_or(e.at);
        let failures = detail(e, "failures").and_then(|v| v.as_i64()).unwrap_or(0);
        let source = e.ip.as_deref().unwrap_or("an unknown source");
        let (subject, what) = match (e.reason.as_deref(), &e.sub, account(e)) {
            (Some("source"), _, _) => (Subject::Source(source.to_owned()), format!("Sign-in from {source}")),
            (_, Some(sub), _) => (Subject::User(sub.clone()), format!("Sign-in to user {sub}")),
            (_, None, Some(name)) => {
                (Subject::User(name), "Sign-in to an account name that does not exist".to_owned())
            }
            (_, None, None) => continue,
        };
        out.push(Detection {
            rule: Rule::LoginLocked.name(),
            severity: Rule::LoginLocked.severity(),
            subject,
            sid: None,
            sub: e.sub.clone(),
            jti: None,
            ip: e.ip.clone(),
            explanation: format!(
                "{what} is locked for {} after {failures} failed attempts (the last from {source}): someone \
                 is guessing passwords. The lock lifts by itself; the real owner may be locked out meanwhile.",
                minutes(until - e.at),
            ),
            evidence: vec![*seq],
            last_at: e.at,
        });
    }
}

/// `brute_force` (one account) and `credential_stuffing` (one source, many accounts).
fn login_failures(events: &[&(i64, Event)], now: i64, t: &Thresholds, out: &mut Vec<Detection>) {
    let failures: Vec<&(i64, Event)> = events
        .iter()
        .copied()
        .filter(|(_, e)| is(e, EventKind::LoginFailure) && e.at > now - t.login_failure_secs)
        .collect();
    let mut by_account: BTreeMap<String, Vec<&(i64, Event)>> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, Vec<&(i64, Event)>> = BTreeMap::new();
    for pair in &failures {
        if let Some(account) = account(&pair.1) {
            by_account.entry(account).or_default().push(pair);
        }
        if let Some(ip) = pair.1.ip.as_deref() {
            by_source.entry(ip).or_default().push(pair);
        }
    }
    for (account, found) in by_account {
        if (found.len() as u64) < t.brute_force_failures {
            continue;
        }
        let sources: BTreeSet<&str> = found.iter().filter_map(|(_, e)| e.ip.as_deref()).collect();
        let user = found[0].1.sub.clone();
        out.push(Detection {
            rule: Rule::BruteForce.name(),
            severity: Rule::BruteForce.severity(),
            subject: Subject::User(user.clone().unwrap_or_else(|| account.clone())),
            sid: None,
            sub: user,
            jti: None,
            ip: (sources.len() == 1).then(|| sources.iter().next().map(|s| (*s).to_owned())).flatten(),
            explanation: format!(
                "{} failed logins on one account within {} s, from {} source(s): someone is guessing its password.",
                found.len(),
                t.login_failure_secs,
                sources.len()
            ),
            evidence: found.iter().map(|(seq, _)| *seq).collect(),
            last_at: found.iter().map(|(_, e)| e.at).max().unwrap_or(0),
        });
    }
    for (ip, found) in by_source {
        let accounts: BTreeSet<String> = found.iter().filter_map(|(_, e)| account(e)).collect();
        if accounts.len() < t.stuffing_accounts {
            continue;
        }
        out.push(Detection {
            rule: Rule::CredentialStuffing.name(),
            severity: Rule::CredentialStuffing.severity(),
            subject: Subject::Source(ip.to_owned()),
            sid: None,
            sub: None,
            jti: None,
            ip: Some(ip.to_owned()),
            explanation: format!(
                "{ip} failed to log in to {} different accounts within {} s: a list of stolen passwords is being tried.",
                accounts.len(),
                t.login_failure_secs
            ),
            evidence: found.iter().map(|(seq, _)| *seq).collect(),
            last_at: found.iter().map(|(_, e)| e.at).max().unwrap_or(0),
        });
    }
}

/// Where a sign-in event says it came from (`detail.geo`, written by the server when GeoIP is configured).
pub fn place(e: &Event) -> Option<Place> {
    serde_json::from_value(detail(e, "geo")?).ok()
}

/// The device a sign-in event names (`detail.device`: a hash of the browser's device cookie).
fn device(e: &Event) -> Option<String> {
    detail(e, "device")?.as_str().map(str::to_owned)
}

/// A place and address for an explanation: `Berlin, DE (192.0.2.7)`.
fn whence(place: &Place, e: &Event) -> String {
    format!("{} ({})", place.label(), e.ip.as_deref().unwrap_or("unknown address"))
}

/// The login rules, `impossible_travel` and `new_device`, for one successful sign-in (`login`) against the
/// same user's earlier ones (`history`: `login_success` events of the last
/// [`Thresholds::login_history_days`], any order; the sign-in itself and later ones are skipped).
///
/// - `impossible_travel`: the previous sign-in with coordinates is farther away, beyond both places'
///   accuracy radii, than [`Thresholds::travel_min_km`] and than [`Thresholds::travel_kmh`] allows in the
///   time between.
/// - `new_device`: the sign-in's device is none of those the user signed in from before. A user with no
///   recorded device yet (a first sign-in, or history from before devices were recorded) has nothing to
///   compare with, and raises nothing.
pub fn login_anomalies(login: &(i64, Event), history: &[(i64, Event)], t: &Thresholds) -> Vec<Detection> {
    let (seq, e) = login;
    let mut out = Vec::new();
    let Some(sub) = e.sub.clone().filter(|_| is(e, EventKind::LoginSuccess)) else { return out };
    let cutoff = e.at - t.login_history_days.max(0).saturating_mul(86_400);
    let mut earlier: Vec<&(i64, Event)> = history
        .iter()
        .filter(|(s, h)| {
            *s < *seq && h.at >= cutoff && h.sub.as_deref() == Some(&sub) && is(h, EventKind::LoginSuccess)
        })
        .collect();
    earlier.sort_by_key(|(s, _)| *s);
    let here = place(e).unwrap_or_default();
    let detection = |rule: Rule, explanation: String, evidence: Vec<i64>| Detection {
        rule: rule.name(),
        severity: rule.severity(),
        subject: Subject::User(sub.clone()),
        sid: None,
        sub: Some(sub.clone()),
        jti: None,
        ip: e.ip.clone(),
        explanation,
        evidence,
        last_at: e.at,
    };
    // The latest earlier sign-in with coordinates, and where it was.
    let before = earlier.iter().rev().find_map(|pair| {
        let there = place(&pair.1)?;
        let coordinates = there.coordinates()?;
        Some((*pair, there, coordinates))
    });
    if let (Some(((prev_seq, prev), prev_place, there)), Some(now_at)) = (before, here.coordinates()) {
        let radii = f64::from(prev_place.accuracy_km.unwrap_or(0)) + f64::from(here.accuracy_km.unwrap_or(0));
        let km = (distance_km(there, now_at) - radii).max(0.0);
        let hours = ((e.at - prev.at).max(1) as f64) / 3600.0;
        let kmh = km / hours;
        if km >= t.travel_min_km as f64 && kmh > t.travel_kmh as f64 {
            out.push(detection(
                Rule::ImpossibleTravel,
                format!(
                    "User {sub} signed in from {} {} after signing in from {}: {:.0} km apart, {:.0} km/h, \
                     faster than anyone travels. One of the two sign-ins is someone else with the password.",
                    whence(&here, e),
                    minutes(e.at - prev.at),
                    whence(&prev_place, prev),
                    km,
                    kmh,
                ),
                vec![*prev_seq, *seq],
            ));
        }
    }
    let known: BTreeSet<String> = earlier.iter().filter_map(|(_, h)| device(h)).collect();
    if let Some(current) = device(e)
        && !known.is_empty()
        && !known.contains(&current)
    {
        let network = here.asn.map(|asn| match &here.as_org {
            Some(org) => format!(", network AS{asn} ({org})"),
            None => format!(", network AS{asn}"),
        });
        out.push(detection(
            Rule::NewDevice,
            format!(
                "User {sub} signed in from a device not seen in the last {} days, in {}{}. The user's other \
                 sign-ins used {} known device(s). A new browser or phone, or someone else with the password.",
                t.login_history_days,
                whence(&here, e),
                network.unwrap_or_default(),
                known.len(),
            ),
            vec![*seq],
        ));
    }
    out
}

/// `25 min`, `3 h 5 min`.
fn minutes(secs: i64) -> String {
    let m = secs.max(0) / 60;
    if m < 60 { format!("{m} min") } else { format!("{} h {} min", m / 60, m % 60) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn ev(kind: EventKind, at: i64) -> Event {
        Event::new(kind, at)
    }

    fn issued(jti: &str, sid: Option<&str>, ip: &str, dpop: bool, at: i64) -> Event {
        Event {
            jti: Some(jti.into()),
            sid: sid.map(Into::into),
            sub: Some("u-alice".into()),
            client_id: Some("web".into()),
            ip: Some(ip.into()),
            detail: Some(format!(r#"{{"scope":"orders:read","dpop":{dpop}}}"#)),
            ..ev(EventKind::TokenIssued, at)
        }
    }

    /// A guard's aggregate: `count` requests from `ip` between `first` and `last`.
    fn used(jti: &str, sid: Option<&str>, ip: &str, first: i64, last: i64) -> Event {
        Event {
            jti: Some(jti.into()),
            sid: sid.map(Into::into),
            sub: Some("u-alice".into()),
            ip: Some(ip.into()),
            service: Some("orders-gw".into()),
            detail: Some(format!(r#"{{"count":3,"first_at":{first}}}"#)),
            ..ev(EventKind::TokenUsed, last)
        }
    }

    fn run(events: Vec<Event>) -> Vec<Detection> {
        let numbered: Vec<(i64, Event)> =
            events.into_iter().enumerate().map(|(i, e)| (i as i64 + 1, e)).collect();
        detect(&numbered, NOW, &Thresholds::default(), None)
    }

    fn rules(found: &[Detection]) -> Vec<&'static str> {
        found.iter().map(|d| d.rule).collect()
    }

    #[test]
    fn names_and_severities_are_stable() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_name(rule.name()), Some(rule));
        }
        assert_eq!(Rule::RefreshTokenReuse.severity(), Severity::Critical);
        assert_eq!(Rule::TokenUsedFromNewNetwork.severity(), Severity::Low);
    }

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        assert_eq!(network("192.0.2.77").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(network("::ffff:192.0.2.77").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(network("2001:db8:abcd:12::1").as_deref(), Some("2001:db8:abcd::/48"));
        assert_eq!(network("not an address"), None);
    }

    #[test]
    fn refresh_token_reuse_is_certain_theft() {
        let reuse = Event {
            sid: Some("s1".into()),
            sub: Some("u-alice".into()),
            client_id: Some("spa".into()),
            ip: Some("203.0.113.9".into()),
            ..ev(EventKind::RefreshTokenReuse, NOW - 5)
        };
        let found = run(vec![ev(EventKind::LoginSuccess, NOW - 60), reuse]);
        assert_eq!(rules(&found), ["refresh_token_reuse"]);
        let d = &found[0];
        assert_eq!(
            (d.severity, d.subject.clone(), d.evidence.clone()),
            (Severity::Critical, Subject::Session("s1".into()), vec![2])
        );
        assert_eq!(d.key(), "refresh_token_reuse|sid:s1");
        assert!(
            d.explanation.contains("presented again after it had been rotated")
                && d.explanation.contains("203.0.113.9")
        );
    }

    #[test]
    fn bearer_token_used_from_two_networks_at_once_is_raised() {
        let found = run(vec![
            issued("j1", Some("s1"), "192.0.2.10", false, NOW - 100),
            used("j1", Some("s1"), "192.0.2.10", NOW - 90, NOW - 30),
            used("j1", Some("s1"), "198.51.100.7", NOW - 60, NOW - 50),
        ]);
        assert_eq!(rules(&found), ["token_used_from_two_networks"]);
        assert_eq!(found[0].evidence, [2, 3]);
        assert_eq!(found[0].ip.as_deref(), Some("198.51.100.7"));
        assert!(
            found[0].explanation.contains("192.0.2.0/24") && found[0].explanation.contains("198.51.100.0/24")
        );
    }

    #[test]
    fn back_and_forth_between_networks_is_at_once() {
        let found = run(vec![
            issued("j1", None, "192.0.2.10", false, NOW - 200),
            used("j1", None, "192.0.2.10", NOW - 190, NOW - 180),
            used("j1", None, "198.51.100.7", NOW - 170, NOW - 160),
            used("j1", None, "192.0.2.10", NOW - 150, NOW - 140),
        ]);
        assert_eq!(rules(&found), ["token_used_from_two_networks"]);
        assert_eq!(found[0].subject, Subject::Token("j1".into()));
    }

    #[test]
    fn dpop_client_changing_networks_raises_nothing() {
        let found = run(vec![
            issued("j1", Some("s1"), "192.0.2.10", true, NOW - 100),
            used("j1", Some("s1"), "192.0.2.10", NOW - 90, NOW - 30),
            used("j1", Some("s1"), "198.51.100.7", NOW - 60, NOW - 50),
            used("j1", Some("s1"), "192.0.2.10", NOW - 40, NOW - 20),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn network_change_then_refresh_and_normal_use_raises_nothing() {
        let found = run(vec![
            issued("j1", Some("s1"), "192.0.2.10", false, NOW - 600),
            used("j1", Some("s1"), "192.0.2.10", NOW - 590, NOW - 500),
            // The laptop moves, refreshes on the new network, and goes on.
            issued("j2", Some("s1"), "198.51.100.7", false, NOW - 300),
            used("j2", Some("s1"), "198.51.100.7", NOW - 290, NOW - 10),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn one_user_on_two_tabs_raises_nothing() {
        let found = run(vec![
            issued("j1", Some("s1"), "192.0.2.10", false, NOW - 100),
            used("j1", Some("s1"), "192.0.2.10", NOW - 90, NOW - 10),
            used("j1", Some("s1"), "192.0.2.11", NOW - 80, NOW - 5),
            Event { sid: Some("s1".into()), ..ev(EventKind::TokenRefreshed, NOW - 50) },
            Event { sid: Some("s1".into()), ..ev(EventKind::TokenRefreshed, NOW - 49) },
        ]);
        assert!(found.is_empty(), "same /24, refreshes inside the retry window: {found:?}");
    }

    #[test]
    fn token_used_where_the_session_never_was_is_a_new_network() {
        let found = run(vec![
            issued("j1", Some("s1"), "192.0.2.10", false, NOW - 600),
            used("j1", Some("s1"), "192.0.2.10", NOW - 590, NOW - 580),
            used("j1", Some("s1"), "203.0.113.50", NOW - 100, NOW - 90),
        ]);
        assert_eq!(rules(&found), ["token_used_from_new_network"]);
        assert_eq!(found[0].severity, Severity::Low);
        assert_eq!(found[0].evidence, [1, 3]);
    }

    #[test]
    fn lateral_movement_probe_names_the_services() {
        let attempt = |aud: &str, at| Event {
            sid: Some("s1".into()),
            sub: Some("u-alice".into()),
            jti: Some("j1".into()),
            client_id: Some("web".into()),
            audience: Some(aud.into()),
            ..ev(EventKind::LateralMovementAttempt, at)
        };
        let found =
            run(vec![attempt("https://billing.example", NOW - 20), attempt("https://hr.example", NOW - 10)]);
        assert_eq!(rules(&found), ["lateral_movement_probe"]);
        assert!(found[0].explanation.contains("https://billing.example, https://hr.example"));
        assert_eq!(found[0].sid.as_deref(), Some("s1"));
    }

    #[test]
    fn forged_token_burst_counts_aggregated_rejections_per_source() {
        let rejected = |reason: &str, n: u64, at| Event {
            ip: Some("203.0.113.66".into()),
            reason: Some(reason.into()),
            detail: Some(format!(r#"{{"count":{n}}}"#)),
            ..ev(EventKind::TokenRejected, at)
        };
        let below = run(vec![rejected("bad_signature", 10, NOW - 10), rejected("expired", 50, NOW - 10)]);
        assert!(below.is_empty(), "expired tokens are not forged: {below:?}");
        let burst =
            run(vec![rejected("bad_signature", 12, NOW - 10), rejected("unsupported_algorithm", 8, NOW - 5)]);
        assert_eq!(rules(&burst), ["forged_token_burst"]);
        assert_eq!(burst[0].subject, Subject::Source("203.0.113.66".into()));
        let old = run(vec![rejected("bad_signature", 30, NOW - 120)]);
        assert!(old.is_empty(), "outside the burst window: {old:?}");
    }

    #[test]
    fn revoked_token_still_presented_is_raised() {
        let found = run(vec![Event {
            jti: Some("j9".into()),
            sid: Some("s9".into()),
            ip: Some("198.51.100.7".into()),
            reason: Some("revoked_session".into()),
            detail: Some(r#"{"count":4}"#.into()),
            ..ev(EventKind::TokenRejected, NOW - 30)
        }]);
        assert_eq!(rules(&found), ["revoked_token_use"]);
        assert!(found[0].explanation.contains("4 time(s)") && found[0].explanation.contains("198.51.100.7"));
    }

    #[test]
    fn brute_force_and_credential_stuffing_at_their_thresholds() {
        let failure = |sub: Option<&str>, name: &str, ip: &str, at| Event {
            sub: sub.map(Into::into),
            ip: Some(ip.into()),
            reason: Some("wrong_password".into()),
            detail: Some(format!(r#"{{"username_pseudonym":"{name}"}}"#)),
            ..ev(EventKind::LoginFailure, at)
        };
        let nine: Vec<Event> =
            (0..9).map(|i| failure(Some("u-bob"), "b0b", "192.0.2.1", NOW - 100 + i)).collect();
        assert!(run(nine.clone()).is_empty(), "one short of the threshold");
        let mut ten = nine;
        ten.push(failure(Some("u-bob"), "b0b", "192.0.2.2", NOW - 1));
        let found = run(ten);
        assert_eq!(rules(&found), ["brute_force"]);
        assert_eq!(found[0].subject, Subject::User("u-bob".into()));
        assert_eq!(found[0].ip, None, "two sources: none to block");
        // Ten accounts (known or not) from one source.
        let stuffing: Vec<Event> = (0..10)
            .map(|i| {
                let sub = (i % 2 == 0).then(|| format!("u-{i}"));
                failure(sub.as_deref(), &format!("h{i}"), "203.0.113.99", NOW - 50 + i)
            })
            .collect();
        let found = run(stuffing);
        assert_eq!(rules(&found), ["credential_stuffing"]);
        assert_eq!(found[0].ip.as_deref(), Some("203.0.113.99"));
        // Old failures have aged out.
        let old: Vec<Event> =
            (0..20).map(|i| failure(Some("u-bob"), "b0b", "192.0.2.1", NOW - 400 + i)).collect();
        assert!(run(old).is_empty());
    }

    /// An ASN database: the documentation ranges the fixture databases use.
    struct Asns;

    impl Locator for Asns {
        fn locate(&self, ip: IpAddr) -> Option<Place> {
            let asn = match ip.to_string().rsplit_once('.')?.0 {
                "192.0.2" | "203.0.113" => 64500,
                "198.51.100" => 64501,
                _ => return None,
            };
            Some(Place { asn: Some(asn), ..Place::default() })
        }
    }

    #[test]
    fn with_an_asn_database_a_network_is_an_autonomous_system() {
        assert_eq!(network_in("203.0.113.4", Some(&Asns)).as_deref(), Some("AS64500"));
        assert_eq!(network_in("::ffff:198.51.100.4", Some(&Asns)).as_deref(), Some("AS64501"));
        assert_eq!(
            network_in("10.1.2.3", Some(&Asns)).as_deref(),
            Some("10.1.2.0/24"),
            "unknown: its prefix"
        );
        let events: Vec<(i64, Event)> = vec![
            issued("j1", Some("s1"), "192.0.2.10", false, NOW - 100),
            used("j1", Some("s1"), "192.0.2.10", NOW - 90, NOW - 30),
            used("j1", Some("s1"), "203.0.113.7", NOW - 60, NOW - 50),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as i64 + 1, e))
        .collect();
        let t = Thresholds::default();
        assert_eq!(
            rules(&detect(&events, NOW, &t, None)),
            ["token_used_from_two_networks"],
            "two /24s without the database"
        );
        assert!(
            detect(&events, NOW, &t, Some(&Asns)).is_empty(),
            "one carrier's two prefixes are one network"
        );
    }

    fn berlin() -> Place {
        Place {
            country: Some("DE".into()),
            city: Some("Berlin".into()),
            latitude: Some(52.52),
            longitude: Some(13.405),
            accuracy_km: Some(20),
            asn: Some(64500),
            as_org: Some("Example Carrier DE".into()),
        }
    }

    fn sydney() -> Place {
        Place {
            country: Some("AU".into()),
            city: Some("Sydney".into()),
            latitude: Some(-33.8688),
            longitude: Some(151.2093),
            accuracy_km: Some(20),
            asn: Some(64501),
            as_org: None,
        }
    }

    fn signed_in(ip: &str, place: &Place, device: &str, at: i64) -> Event {
        let detail = serde_json::json!({ "geo": place, "device": device });
        Event {
            sub: Some("u-alice".into()),
            ip: Some(ip.into()),
            detail: Some(detail.to_string()),
            ..ev(EventKind::LoginSuccess, at)
        }
    }

    #[test]
    fn impossible_travel_is_raised_for_berlin_then_sydney_within_an_hour() {
        let t = Thresholds::default();
        let history = vec![(10, signed_in("192.0.2.7", &berlin(), "d1", NOW - 3600))];
        let login = (11, signed_in("198.51.100.9", &sydney(), "d1", NOW - 1800));
        let found = login_anomalies(&login, &history, &t);
        assert_eq!(rules(&found), ["impossible_travel"]);
        let d = &found[0];
        assert_eq!(
            (d.severity, d.subject.clone(), d.evidence.clone(), d.ip.as_deref()),
            (Severity::High, Subject::User("u-alice".into()), vec![10, 11], Some("198.51.100.9"))
        );
        assert!(
            d.explanation.contains("Sydney, AU (198.51.100.9)")
                && d.explanation.contains("Berlin, DE (192.0.2.7)")
                && d.explanation.contains("30 min"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn a_long_flight_and_a_short_hop_are_not_impossible_travel() {
        let t = Thresholds::default();
        // Berlin to Sydney in 20 hours: about 800 km/h, a flight.
        let history = vec![(10, signed_in("192.0.2.7", &berlin(), "d1", NOW - 20 * 3600))];
        let login = (11, signed_in("198.51.100.9", &sydney(), "d1", NOW));
        assert!(login_anomalies(&login, &history, &t).is_empty());
        // Berlin to Potsdam a minute later: fast, but within the databases' error.
        let potsdam =
            Place { city: Some("Potsdam".into()), latitude: Some(52.39), longitude: Some(13.06), ..berlin() };
        let history = vec![(10, signed_in("192.0.2.7", &berlin(), "d1", NOW - 60))];
        let login = (11, signed_in("203.0.113.9", &potsdam, "d1", NOW));
        assert!(login_anomalies(&login, &history, &t).is_empty());
        // A place without coordinates (an ASN database only) has nothing to measure.
        let history =
            vec![(10, signed_in("192.0.2.7", &Place { asn: Some(1), ..Place::default() }, "d1", NOW - 60))];
        let login = (11, signed_in("198.51.100.9", &sydney(), "d1", NOW));
        assert!(login_anomalies(&login, &history, &t).is_empty());
    }

    #[test]
    fn impossible_travel_compares_with_the_latest_earlier_sign_in_only() {
        let t = Thresholds::default();
        // Sydney a day ago, Berlin an hour ago, Berlin now: the travel happened, at a possible speed.
        let history = vec![
            (5, signed_in("198.51.100.9", &sydney(), "d1", NOW - 86_400)),
            (6, signed_in("192.0.2.7", &berlin(), "d1", NOW - 3600)),
            // A later sign-in (from the history query's race with this one) is not "before".
            (9, signed_in("198.51.100.9", &sydney(), "d1", NOW + 10)),
        ];
        let login = (7, signed_in("192.0.2.8", &berlin(), "d1", NOW));
        assert!(login_anomalies(&login, &history, &t).is_empty());
    }

    #[test]
    fn new_device_is_raised_only_against_known_devices() {
        let t = Thresholds::default();
        let history = vec![
            (1, signed_in("192.0.2.7", &berlin(), "d1", NOW - 7 * 86_400)),
            (2, signed_in("192.0.2.7", &berlin(), "d2", NOW - 86_400)),
        ];
        let found = login_anomalies(&(3, signed_in("192.0.2.9", &berlin(), "d3", NOW)), &history, &t);
        assert_eq!(rules(&found), ["new_device"]);
        assert_eq!((found[0].severity, found[0].evidence.clone()), (Severity::Low, vec![3]));
        assert!(
            found[0].explanation.contains("Berlin, DE (192.0.2.9), network AS64500 (Example Carrier DE)")
                && found[0].explanation.contains("2 known device(s)"),
            "{}",
            found[0].explanation
        );
        assert!(login_anomalies(&(3, signed_in("192.0.2.9", &berlin(), "d2", NOW)), &history, &t).is_empty());
        // The first sign-in ever, and a history from before devices were recorded, have nothing to compare.
        assert!(login_anomalies(&(3, signed_in("192.0.2.9", &berlin(), "d3", NOW)), &[], &t).is_empty());
        let old = vec![(1, Event { sub: Some("u-alice".into()), ..ev(EventKind::LoginSuccess, NOW - 60) })];
        assert!(login_anomalies(&(3, signed_in("192.0.2.9", &berlin(), "d3", NOW)), &old, &t).is_empty());
        // A device seen only before the history's horizon is new again.
        let stale = vec![(1, signed_in("192.0.2.7", &berlin(), "d1", NOW - 91 * 86_400)), history[1].clone()];
        let found = login_anomalies(&(3, signed_in("192.0.2.9", &berlin(), "d1", NOW)), &stale, &t);
        assert_eq!(rules(&found), ["new_device"]);
    }

    #[test]
    fn another_users_history_and_failed_sign_ins_do_not_count() {
        let t = Thresholds::default();
        let bob = Event { sub: Some("u-bob".into()), ..signed_in("192.0.2.7", &berlin(), "d9", NOW - 600) };
        let failed = Event {
            kind: EventKind::LoginFailure.name().into(),
            ..signed_in("192.0.2.7", &berlin(), "d8", NOW - 500)
        };
        let history = vec![(1, bob), (2, failed)];
        assert!(
            login_anomalies(&(3, signed_in("198.51.100.9", &sydney(), "d3", NOW)), &history, &t).is_empty()
        );
        let failure = (
            4,
            Event {
                kind: EventKind::LoginFailure.name().into(),
                ..signed_in("198.51.100.9", &sydney(), "d3", NOW)
            },
        );
        let history = vec![(1, signed_in("192.0.2.7", &berlin(), "d1", NOW - 60))];
        assert!(login_anomalies(&failure, &history, &t).is_empty(), "only a successful sign-in is judged");
    }
}
