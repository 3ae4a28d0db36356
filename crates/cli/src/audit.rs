//! `tessera audit`: read, search, export and verify the audit log, a hash chain in the server's database.
//!
//! Text output quotes and escapes every value that is not a plain word, so a user agent or route an attacker
//! chose cannot put control characters on a responder's terminal. JSON lines carry each event's number and
//! chain links, so a SIEM copy can be checked against the database later.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use tessera_core::EventKind;
use tessera_server::incident::timeline::shown;
pub(crate) use tessera_server::rfc3339;
use tessera_store::{AUDIT_PAGE, AuditQuery, AuditRecord, Store, verify_audit_chain};

use crate::admin::{ConfigArgs, store_failure, with_store};
use crate::{Failure, emit};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain from its latest checkpoint to its head; names the first broken link.
    Verify {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Print the newest events, oldest first; with --follow, go on printing new ones until interrupted.
    Tail {
        /// How many events.
        #[arg(short = 'n', long, default_value_t = 20, value_name = "N")]
        lines: i64,
        /// Keep printing events as they are written.
        #[arg(short, long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Find events by user, session, token, client, IP, kind and time range, oldest first.
    Search {
        #[command(flatten)]
        filters: Filters,
        /// At most this many events (the oldest matches; narrow with --since to see later ones).
        #[arg(long, default_value_t = 1000, value_name = "N")]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Write events as JSON lines (one event per line, with its chain links) for a SIEM.
    Export {
        /// The export format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        #[command(flatten)]
        filters: Filters,
        /// Write to this file (created, mode 0600) instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Remove events older than the configured retention now (the server does this by itself every hour).
    Prune {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

/// How `tail` and `search` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One line per event, for a terminal.
    Text,
    /// One JSON object per line, as `export` writes them.
    Json,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// JSON lines.
    Jsonl,
}

/// Which events: every filter given must match.
#[derive(Debug, Clone, Args)]
pub(crate) struct Filters {
    /// A user, by login name or id (`sub`).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// A session (`sid`).
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// A token, by its `jti`.
    #[arg(long, value_name = "JTI")]
    token: Option<String>,
    /// A client id.
    #[arg(long, value_name = "CLIENT_ID")]
    client: Option<String>,
    /// A source IP address.
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,
    /// An event kind (repeatable): token_issued, login_failure, refresh_token_reuse, …
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// From this time on: RFC 3339 (2026-11-23T08:00:00Z), a date, Unix seconds, or an age (15m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

fn now_secs() -> i64 {
    tessera_server::now()
}

/// Reads a time: Unix seconds, RFC 3339, a date (midnight UTC), or an age before `now`. The message names the
/// flag, not the value (a value typed in the wrong place may be a secret).
pub(crate) fn parse_time(flag: &str, text: &str, now: i64) -> Result<i64, Failure> {
    let text = text.trim();
    let bad = || {
        Failure::usage(format!(
            "cannot read the time given to {flag}: use RFC 3339 (2026-11-23T08:00:00Z), a date (2026-11-23), \
             Unix seconds, or an age (15m, 2h, 7d)"
        ))
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        return parse_time(flag, &format!("{text}T00:00:00Z"), now);
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| bad())?.as_secs();
        return i64::try_from(secs).map_err(|_| bad());
    }
    if let Ok(age) = humantime::parse_duration(text) {
        return i64::try_from(age.as_secs()).map(|age| now - age).map_err(|_| bad());
    }
    Err(bad())
}

impl Filters {
    /// The store query these filters make; a login name is looked up to its id.
    async fn query(&self, store: &dyn Store, now: i64) -> Result<AuditQuery, Failure> {
        for kind in &self.kinds {
            if EventKind::from_name(kind).is_none() {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                return Err(Failure::usage(format!("unknown --kind; the kinds are {}", known.join(", "))));
            }
        }
        let sub = match &self.user {
            None => None,
            Some(user) => match store.user_by_name(user).await.map_err(store_failure)? {
                Some(found) => Some(found.id),
                // Not a login name: an id, possibly of a user since deleted.
                None => Some(user.clone()),
            },
        };
        let since = self.since.as_deref().map(|t| parse_time("--since", t, now)).transpose()?;
        let until = self.until.as_deref().map(|t| parse_time("--until", t, now)).transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(Failure::usage("--since must be before --until"));
        }
        if let Some(ip) = &self.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(Failure::usage("--ip must be an IP address"));
        }
        Ok(AuditQuery {
            sub,
            sid: self.session.clone(),
            jti: self.token.clone(),
            client_id: self.client.clone(),
            ip: self.ip.clone(),
            kinds: self.kinds.clone(),
            since,
            until,
            ..AuditQuery::default()
        })
    }
}

/// One event as a terminal line.
fn text_line(r: &AuditRecord) -> String {
    let e = &r.event;
    let mut line = format!("{}  #{}  {}", rfc3339(e.at), r.seq, shown(&e.kind));
    let fields = [
        ("outcome", &e.outcome),
        ("reason", &e.reason),
        ("sub", &e.sub),
        ("sid", &e.sid),
        ("jti", &e.jti),
        ("client", &e.client_id),
        ("aud", &e.audience),
        ("service", &e.service),
        ("route", &e.route),
        ("ip", &e.ip),
        ("actor", &e.actor),
        ("ua", &e.user_agent),
        ("detail", &e.detail),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            line.push_str(&format!(" {name}={}", shown(v)));
        }
    }
    line
}

/// One event as a JSON object: absent fields left out, `detail` as JSON when it is.
fn json_line(r: &AuditRecord) -> String {
    let e = &r.event;
    let mut object = Map::new();
    object.insert("seq".into(), json!(r.seq));
    object.insert("time".into(), json!(rfc3339(e.at)));
    object.insert("at".into(), json!(e.at));
    object.insert("kind".into(), json!(e.kind));
    let fields = [
        ("ip", &e.ip),
        ("user_agent", &e.user_agent),
        ("sub", &e.sub),
        ("sid", &e.sid),
        ("jti", &e.jti),
        ("client_id", &e.client_id),
        ("audience", &e.audience),
        ("service", &e.service),
        ("route", &e.route),
        ("outcome", &e.outcome),
        ("reason", &e.reason),
        ("actor", &e.actor),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            object.insert(name.into(), json!(v));
        }
    }
    if let Some(detail) = &e.detail {
        let value = serde_json::from_str::<Value>(detail).unwrap_or_else(|_| json!(detail));
        object.insert("detail".into(), value);
    }
    if let Some(prev) = r.prev_hash {
        object.insert("prev_hash".into(), json!(prev.hex()));
    }
    if let Some(hash) = r.hash {
        object.insert("hash".into(), json!(hash.hex()));
    }
    Value::Object(object).to_string()
}

fn render(r: &AuditRecord, format: Format) -> String {
    match format {
        Format::Text => text_line(r),
        Format::Json => json_line(r),
    }
}

/// Writes lines; a reader that went away (`| head`) ends the command quietly.
struct Out {
    sink: std::io::BufWriter<Box<dyn std::io::Write>>,
    closed: bool,
}

impl Out {
    fn stdout() -> Self {
        Out { sink: std::io::BufWriter::new(Box::new(std::io::stdout())), closed: false }
    }

    fn file(path: &PathBuf) -> Result<Self, Failure> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|e| Failure::usage(format!("cannot create {}: {}", path.display(), e.kind())))?;
        Ok(Out { sink: std::io::BufWriter::new(Box::new(file)), closed: false })
    }

    fn line(&mut self, text: &str) -> Result<(), Failure> {
        if self.closed {
            return Ok(());
        }
        match writeln!(self.sink, "{text}") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(Failure::usage(format!("cannot write: {}", e.kind()))),
        }
    }

    fn flush(&mut self) -> Result<(), Failure> {
        match self.sink.flush() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(Failure::usage(format!("cannot write: {}", e.kind()))),
        }
    }
}

/// How often `tail --follow` looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

pub(crate) fn run(cmd: AuditCommand) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Verify { cfg } => with_store(&cfg, |store, _| async move {
            match verify_audit_chain(&*store).await.map_err(store_failure)? {
                Ok((state, summary)) => emit(&format!(
                    "audit chain intact: {} events checked, from checkpoint {} ({}, {}) to event {}; head hash {}",
                    summary.checked,
                    state.checkpoint_seq,
                    state.checkpoint_reason,
                    rfc3339(state.checkpoint_at),
                    summary.head_seq,
                    summary.head_hash.hex()
                )),
                Err(broken) => Err(Failure {
                    code: 1,
                    message: format!("audit chain broken at event {}: {broken}", broken.seq()),
                }),
            }
        }),
        AuditCommand::Tail { lines, follow, format, cfg } => {
            if !(1..=100_000).contains(&lines) {
                return Err(Failure::usage("-n must be between 1 and 100000"));
            }
            with_store(&cfg, |store, _| async move {
                let mut out = Out::stdout();
                let newest = AuditQuery { newest: true, limit: lines, ..AuditQuery::default() };
                let mut last = store.audit_state().await.map_err(store_failure)?.checkpoint_seq;
                for r in store.audit_events(&newest).await.map_err(store_failure)? {
                    out.line(&render(&r, format))?;
                    last = r.seq;
                }
                out.flush()?;
                while follow && !out.closed {
                    let next = AuditQuery { after_seq: last, limit: AUDIT_PAGE, ..AuditQuery::default() };
                    let page = store.audit_events(&next).await.map_err(store_failure)?;
                    for r in &page {
                        out.line(&render(r, format))?;
                        last = r.seq;
                    }
                    out.flush()?;
                    if page.is_empty() {
                        tokio::time::sleep(FOLLOW_POLL).await;
                    }
                }
                Ok(())
            })
        }
        AuditCommand::Search { filters, limit, format, cfg } => {
            if !(1..=1_000_000).contains(&limit) {
                return Err(Failure::usage("--limit must be between 1 and 1000000"));
            }
            with_store(&cfg, |store, _| async move {
                let query = AuditQuery { limit, ..filters.query(&*store, now_secs()).await? };
                let found = store.audit_events(&query).await.map_err(store_failure)?;
                let mut out = Out::stdout();
                for r in &found {
                    out.line(&render(r, format))?;
                }
                out.flush()?;
                if found.len() as i64 == limit && format == Format::Text {
                    crate::note(&format!(
                        "showing the first {limit} matches; narrow the search or raise --limit to see more"
                    ));
                }
                Ok(())
            })
        }
        AuditCommand::Export { format: ExportFormat::Jsonl, filters, output, cfg } => {
            with_store(&cfg, |store, _| async move {
                let mut query = filters.query(&*store, now_secs()).await?;
                query.limit = AUDIT_PAGE;
                let mut out = match &output {
                    Some(path) => Out::file(path)?,
                    None => Out::stdout(),
                };
                let mut written: u64 = 0;
                loop {
                    let page = store.audit_events(&query).await.map_err(store_failure)?;
                    let Some(last) = page.last() else { break };
                    query.after_seq = last.seq;
                    for r in &page {
                        out.line(&json_line(r))?;
                    }
                    written += page.len() as u64;
                    if out.closed {
                        break;
                    }
                }
                out.flush()?;
                if let Some(path) = output {
                    emit(&format!("exported {written} events to {}", path.display()))?;
                }
                Ok(())
            })
        }
        AuditCommand::Prune { cfg } => with_store(&cfg, |store, config| async move {
            if config.audit_retention_days == 0 {
                return emit("audit_retention_days is 0: events are kept forever; nothing pruned");
            }
            let now = now_secs();
            let removed = tessera_server::prune_audit(&*store, config.audit_retention_days, now)
                .await
                .map_err(store_failure)?;
            emit(&format!(
                "removed {removed} events older than {} days; the chain verifies from the new checkpoint",
                config.audit_retention_days
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::Event;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn times_are_read_in_every_documented_form() {
        assert_eq!(parse_time("--since", "1800000000", NOW).unwrap(), NOW);
        assert_eq!(parse_time("--since", "2027-01-15T08:00:00Z", NOW).unwrap(), NOW);
        assert_eq!(parse_time("--since", "2h", NOW).unwrap(), NOW - 7200);
        assert_eq!(parse_time("--since", "7d", NOW).unwrap(), NOW - 7 * 86_400);
        assert_eq!(parse_time("--since", "1970-01-02", NOW).unwrap(), 86_400);
        let err = parse_time("--until", "tsr_secret-looking-value", NOW).unwrap_err();
        assert!(err.message.contains("--until") && !err.message.contains("tsr_"), "{}", err.message);
    }

    #[test]
    fn text_lines_escape_what_an_attacker_chose() {
        let record = AuditRecord {
            seq: 7,
            event: Event {
                user_agent: Some("evil\u{1b}[2J\nforged line".into()),
                route: Some("GET /orders/{id}".into()),
                client_id: Some("web".into()),
                ..Event::new(EventKind::TokenRejected, NOW)
            },
            prev_hash: None,
            hash: None,
        };
        let line = text_line(&record);
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line}");
        assert!(line.contains(r#"ua="evil\u{1b}[2J\nforged line""#), "{line}");
        assert!(line.contains(r#"route="GET /orders/{id}""#) && line.contains(" client=web"), "{line}");
        assert!(line.starts_with("2027-01-15T08:00:00Z  #7  token_rejected"), "{line}");
        let json: Value = serde_json::from_str(&json_line(&record)).unwrap();
        assert_eq!(json["user_agent"], "evil\u{1b}[2J\nforged line", "JSON keeps the value, escaped by JSON");
        assert!(json.get("sub").is_none(), "absent fields are left out");
    }
}
