//! A timeline: the audit events of one user, session, token, address or incident, in order, as a responder
//! reads them. Pure: built from audit records, rendered as terminal text or JSON (the HTML picture is in
//! `html.rs`). Requests a guard let through are merged while nothing else happens in between, so a token
//! used a thousand times on one route from one address is one line with its count.

use serde::Serialize;
use serde_json::{Value, json};
use tessera_core::EventKind;
use tessera_store::AuditRecord;

use crate::rfc3339;

/// What an entry is, for grouping and for the picture's lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Sign-ins, second factors, sign-outs, password changes.
    Login,
    /// Tokens issued, refreshed, exchanged, revoked.
    Token,
    /// Requests a guard let through.
    Use,
    /// Refusals: at a guard, at the server, reuse and lateral movement.
    Rejection,
    /// Detections raised.
    Detection,
    /// Automatic responses.
    Response,
    /// What an operator did.
    Admin,
    /// Everything else (keys, retention).
    Other,
}

impl Category {
    /// Every category, in the picture's lane order.
    pub const ALL: [Category; 8] = [
        Category::Login,
        Category::Token,
        Category::Use,
        Category::Rejection,
        Category::Detection,
        Category::Response,
        Category::Admin,
        Category::Other,
    ];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Category::Login => "login",
            Category::Token => "token",
            Category::Use => "use",
            Category::Rejection => "rejection",
            Category::Detection => "detection",
            Category::Response => "response",
            Category::Admin => "admin",
            Category::Other => "other",
        }
    }

    /// The category of an event kind.
    pub fn of(kind: &str) -> Category {
        use EventKind as K;
        match EventKind::from_name(kind) {
            Some(
                K::LoginSuccess
                | K::LoginFailure
                | K::LoginLocked
                | K::LoginRisk
                | K::MfaSuccess
                | K::MfaFailure
                | K::Logout
                | K::PasswordChanged,
            ) => Category::Login,
            Some(K::TokenIssued | K::TokenRefreshed | K::TokenExchanged | K::TokenRevoked) => Category::Token,
            Some(K::TokenUsed) => Category::Use,
            Some(K::TokenRejected | K::RefreshTokenReuse | K::CodeReuse | K::LateralMovementAttempt) => {
                Category::Rejection
            }
            Some(K::DetectionRaised) => Category::Detection,
            Some(K::ResponseTaken) => Category::Response,
            Some(K::AdminAction) => Category::Admin,
            Some(K::KeyRotated | K::AuditPruned) | None => Category::Other,
        }
    }
}

/// One line of a timeline: an event, or several identical uses merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The first event's number in the audit chain.
    pub seq: i64,
    /// When it began (for merged uses, the first request).
    pub at: i64,
    /// When it ended (the last request; `at` for a single event).
    pub last_at: i64,
    /// The event kind.
    pub kind: String,
    /// Its category.
    pub category: Category,
    /// How many requests (uses) or events this line stands for.
    pub count: u64,
    /// Source address.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// The browser's device (hash prefix of its cookie), for sign-ins and token requests.
    pub device: Option<String>,
    /// The methods a sign-in used (`pwd`, `otp`, `hwk`, `mfa`).
    pub mfa: Option<String>,
    /// User.
    pub sub: Option<String>,
    /// Session.
    pub sid: Option<String>,
    /// Token id (or a refresh token's hash prefix).
    pub jti: Option<String>,
    /// Client.
    pub client_id: Option<String>,
    /// The token's audience.
    pub audience: Option<String>,
    /// The service that reported it.
    pub service: Option<String>,
    /// The route at that service.
    pub route: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Reason (a stable name: a grant, a rejection, a rule, an action).
    pub reason: Option<String>,
    /// Who did it.
    pub actor: Option<String>,
    /// A detection's explanation, or an action's result.
    pub note: Option<String>,
}

impl Entry {
    /// An entry for one audit record.
    pub fn from_record(r: &AuditRecord) -> Entry {
        let e = &r.event;
        let detail: Value =
            e.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(Value::Null);
        let text = |key: &str| detail.get(key).and_then(Value::as_str).map(str::to_owned);
        let (count, at) = if e.kind == EventKind::TokenUsed.name()
            || e.kind == EventKind::TokenRejected.name()
        {
            let count = detail.get("count").and_then(Value::as_u64).unwrap_or(1).max(1);
            let first = detail.get("first_at").and_then(Value::as_i64).filter(|f| *f <= e.at).unwrap_or(e.at);
            (count, first)
        } else {
            (1, e.at)
        };
        let mfa = detail
            .get("amr")
            .and_then(Value::as_array)
            .map(|methods| methods.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("+"));
        let note = match Category::of(&e.kind) {
            Category::Detection => text("explanation"),
            Category::Admin | Category::Response => text("result"),
            _ => None,
        };
        Entry {
            seq: r.seq,
            at,
            last_at: e.at,
            kind: e.kind.clone(),
            category: Category::of(&e.kind),
            count,
            ip: e.ip.clone(),
            user_agent: e.user_agent.clone(),
            device: text("device"),
            mfa,
            sub: e.sub.clone(),
            sid: e.sid.clone(),
            jti: e.jti.clone(),
            client_id: e.client_id.clone(),
            audience: e.audience.clone(),
            service: e.service.clone(),
            route: e.route.clone(),
            outcome: e.outcome.clone(),
            reason: e.reason.clone(),
            actor: e.actor.clone(),
            note,
        }
    }

    /// Whether `next` is the same use (token, service, route, source, outcome) and can be merged into this one.
    fn same_use(&self, next: &Entry) -> bool {
        self.category == Category::Use
            && next.kind == self.kind
            && (next.jti.as_ref(), next.service.as_ref(), next.route.as_ref(), next.ip.as_ref())
                == (self.jti.as_ref(), self.service.as_ref(), self.route.as_ref(), self.ip.as_ref())
    }
}

/// A timeline: its title, its entries in order, and whether older events were left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// What it is the timeline of (`user u_1 (alice)`, `incident 3`, …).
    pub title: String,
    /// The entries, oldest first.
    pub entries: Vec<Entry>,
    /// How many audit events they stand for.
    pub events: usize,
    /// Older events exist that were not read (the limit was reached).
    pub truncated: bool,
}

impl Timeline {
    /// Builds a timeline from audit records, in time order (events a guard reported arrive in batches, so
    /// chain order is not time order; within a second, chain order decides), merging uses of one token on
    /// one route from one source while no other entry comes between them.
    pub fn build(title: String, records: &[AuditRecord], truncated: bool) -> Timeline {
        let mut all: Vec<Entry> = records.iter().map(Entry::from_record).collect();
        all.sort_by_key(|e| (e.at, e.seq));
        let mut entries: Vec<Entry> = Vec::new();
        for entry in all {
            match entries.last_mut() {
                Some(last) if last.same_use(&entry) => {
                    last.count += entry.count;
                    last.last_at = last.last_at.max(entry.last_at);
                    last.at = last.at.min(entry.at);
                }
                _ => entries.push(entry),
            }
        }
        Timeline { title, entries, events: records.len(), truncated }
    }

    /// The timeline as terminal text: a heading, then one line per entry.
    pub fn text(&self) -> String {
        let mut out = format!("Timeline of {}: {} events", self.title, self.events);
        if let (Some(first), Some(last)) = (self.entries.first(), self.entries.last()) {
            out.push_str(&format!(", {} to {}", rfc3339(first.at), rfc3339(last.last_at)));
        }
        if self.truncated {
            out.push_str(" (older events left out: narrow it with --since)");
        }
        out.push('\n');
        for e in &self.entries {
            out.push_str(&line(e));
            out.push('\n');
        }
        out
    }

    /// The timeline as one JSON document.
    pub fn json(&self) -> Value {
        json!({
            "title": self.title,
            "events": self.events,
            "truncated": self.truncated,
            "entries": self.entries.iter().map(entry_json).collect::<Vec<_>>(),
        })
    }
}

/// A value as a terminal may show it: a plain word as it is, anything else quoted with escapes (an attacker
/// chooses user agents and routes; they must not move the cursor or forge a line).
pub fn shown(value: &str) -> String {
    let plain =
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/@{}-+=,*".contains(&b));
    if plain { value.to_owned() } else { format!("{value:?}") }
}

/// One entry as a terminal line: time, category, kind (with its count), then the fields that are set.
pub fn line(e: &Entry) -> String {
    let kind = if e.count > 1 { format!("{} x{}", e.kind, e.count) } else { e.kind.clone() };
    let out = format!("{}  {:<9}  {:<28} {}", rfc3339(e.at), e.category.name(), kind, details(e));
    out.trim_end().to_owned()
}

/// An entry's fields that are set, as `name=value` words.
pub fn details(e: &Entry) -> String {
    let mut out = String::new();
    if e.last_at > e.at {
        out.push_str(&format!(" until={}", rfc3339(e.last_at)));
    }
    let fields = [
        ("reason", &e.reason),
        ("outcome", &e.outcome),
        ("service", &e.service),
        ("route", &e.route),
        ("ip", &e.ip),
        ("ua", &e.user_agent),
        ("device", &e.device),
        ("mfa", &e.mfa),
        ("client", &e.client_id),
        ("aud", &e.audience),
        ("sid", &e.sid),
        ("jti", &e.jti),
        ("actor", &e.actor),
        ("note", &e.note),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            out.push_str(&format!(" {name}={}", shown(v)));
        }
    }
    out.trim_start().to_owned()
}

fn entry_json(e: &Entry) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("time".into(), json!(rfc3339(e.at)));
        map.retain(|_, value| !value.is_null());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::lineage::Lineage;
    use tessera_store::{Event, Family};

    const T0: i64 = 1_795_000_000;

    fn record(seq: i64, at: i64, kind: &str, ip: &str, fill: impl FnOnce(&mut Event)) -> AuditRecord {
        let mut event = Event {
            at,
            kind: kind.into(),
            ip: Some(ip.into()),
            sub: Some("u_alice".into()),
            ..Event::default()
        };
        fill(&mut event);
        AuditRecord { seq, event, prev_hash: None, hash: None }
    }

    /// A stolen session, written as the server and a guard record it (the guard's batch arrives late).
    fn scenario() -> Vec<AuditRecord> {
        let user = "192.0.2.7";
        let thief = "198.51.100.23";
        let session = |e: &mut Event| {
            e.sid = Some("fam-1".into());
            e.client_id = Some("webapp".into());
        };
        vec![
            record(1, T0, "login_success", user, |e| {
                e.user_agent = Some("Mozilla/5.0 (X11; Linux)".into());
                e.detail = Some(r#"{"device":"3f2a9c01","amr":["pwd","otp","mfa"]}"#.into());
            }),
            record(2, T0 + 1, "token_issued", user, |e| {
                session(e);
                e.jti = Some("at-1".into());
                e.reason = Some("authorization_code".into());
                e.audience = Some("https://orders.example".into());
                e.user_agent = Some("webapp/2.1".into());
                e.detail = Some(r#"{"refresh_token":"aaaa0001","jkt":null,"device":null}"#.into());
            }),
            record(3, T0 + 40, "token_refreshed", thief, |e| {
                session(e);
                e.jti = Some("at-2".into());
                e.reason = Some("refresh_token".into());
                e.user_agent = Some("curl/8.5\u{1b}[2J".into());
                e.detail = Some(r#"{"presented":"aaaa0001","refresh_token":"bbbb0002"}"#.into());
            }),
            // The guard's batch: two uses merged, then the thief's.
            record(4, T0 + 12, "token_used", user, |e| {
                session(e);
                e.jti = Some("at-1".into());
                e.service = Some("orders-gateway".into());
                e.route = Some("GET /orders/{id}".into());
                e.outcome = Some("allowed".into());
                e.detail = Some(format!(r#"{{"count":3,"first_at":{}}}"#, T0 + 10));
            }),
            record(5, T0 + 20, "token_used", user, |e| {
                session(e);
                e.jti = Some("at-1".into());
                e.service = Some("orders-gateway".into());
                e.route = Some("GET /orders/{id}".into());
                e.outcome = Some("allowed".into());
                e.detail = Some(format!(r#"{{"count":2,"first_at":{}}}"#, T0 + 15));
            }),
            record(6, T0 + 30, "token_used", thief, |e| {
                session(e);
                e.jti = Some("at-1".into());
                e.service = Some("orders-gateway".into());
                e.route = Some("GET /orders/{id}".into());
                e.outcome = Some("allowed".into());
                e.detail = Some(format!(r#"{{"count":1,"first_at":{}}}"#, T0 + 30));
            }),
            record(7, T0 + 50, "refresh_token_reuse", user, |e| {
                session(e);
                e.jti = Some("sha256:aaaa0001".into());
                e.reason = Some("refresh_token_reuse".into());
                e.user_agent = Some("webapp/2.1".into());
            }),
            record(8, T0 + 51, "detection_raised", user, |e| {
                session(e);
                e.reason = Some("refresh_token_reuse".into());
                e.outcome = Some("critical".into());
                e.detail = Some(r#"{"explanation":"A rotated refresh token came back."}"#.into());
            }),
            record(9, T0 + 51, "response_taken", user, |e| {
                session(e);
                e.reason = Some("revoke_session".into());
                e.outcome = Some("revoked".into());
                e.actor = Some("detector".into());
                e.detail = Some(r#"{"result":"revoked"}"#.into());
            }),
            record(10, T0 + 90, "admin_action", "127.0.0.1", |e| {
                e.ip = None;
                e.reason = Some("revoke_user".into());
                e.outcome = Some("success".into());
                e.actor = Some("cli:responder".into());
                e.detail = Some(r#"{"incident":1,"result":"every token issued before now refused"}"#.into());
            }),
        ]
    }

    /// Compares `actual` with the golden file `name`; `TESSERA_BLESS=1` rewrites the file instead.
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
        if std::env::var_os("TESSERA_BLESS").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(actual, expected, "{name} differs from its golden file (TESSERA_BLESS=1 rewrites it)");
    }

    #[test]
    fn timeline_text_and_json_match_their_golden_files() {
        let t = Timeline::build("user u_alice (alice)".into(), &scenario(), false);
        golden("timeline.txt", &t.text());
        golden("timeline.json", &format!("{:#}\n", t.json()));
        // What the files hold, in words: time order, the two identical uses merged with their count, the
        // terminal escape in the user agent made inert.
        assert_eq!(t.events, 10);
        assert_eq!(t.entries.len(), 9);
        let merged = t.entries.iter().find(|e| e.count == 5).unwrap();
        assert_eq!((merged.at, merged.last_at), (T0 + 10, T0 + 20));
        assert!(!t.text().contains('\u{1b}'));
        assert!(t.entries.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn lineage_names_the_copy_by_its_network_and_user_agent() {
        let family = Family {
            id: "fam-1".into(),
            client_id: "webapp".into(),
            user_id: "u_alice".into(),
            scope: "orders:read".into(),
            audience: None,
            auth_time: T0,
            amr: vec!["pwd".into()],
            login_session: None,
            code_hash: None,
            created_at: T0,
            expires_at: T0 + 86_400,
            revoked_at: Some(T0 + 50),
            dpop_jkt: None,
        };
        let records: Vec<AuditRecord> = scenario()
            .into_iter()
            .filter(|r| {
                matches!(r.event.kind.as_str(), "token_issued" | "token_refreshed" | "refresh_token_reuse")
            })
            .collect();
        let l = Lineage::build(&family, &records);
        golden("lineage.txt", &l.text());
        let fork = l.fork.as_ref().unwrap();
        assert_eq!(fork.token, "aaaa0001");
        assert_eq!(fork.copy.as_ref().unwrap().presentation.ip.as_deref(), Some("198.51.100.23"));
        assert_eq!(fork.legitimate.as_ref().unwrap().presentation.ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(fork.copy_first_at, T0 + 40);
    }
}
