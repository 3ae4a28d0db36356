//! `tessera incident`: open an incident, contain it, read its timeline, lineage and report, list, show and
//! close incidents. The work is `tessera_server::incident`'s, on the configured store; a running server
//! picks up what `contain` revoked at its next poll of the revocation sequence and pushes it to every guard.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tessera_core::Event;
use tessera_server::incident::{self, ContainOptions, IncidentError, Scope, Target, Window, incident_json};
use tessera_store::{Incident, IncidentAction};

use crate::admin::{ConfigArgs, actor, admin_event, record, with_store};
use crate::audit::{parse_time, rfc3339};
use crate::{Failure, emit};

#[derive(Debug, Subcommand)]
pub(crate) enum IncidentCommand {
    /// Open an incident about a user, session, token or client (or join the one open about that user).
    Open {
        #[command(flatten)]
        target: TargetArgs,
        /// Why, in a few words (kept on the incident).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Revoke every session and token of the incident's user, force a password reset, and more on request;
    /// in one transaction, pushed to every guard. Running it again only does what is new.
    Contain {
        /// The incident's number.
        id: i64,
        /// Also remove the user's second factors (TOTP, passkeys, recovery codes), so that they enrol again.
        #[arg(long)]
        reset_mfa: bool,
        /// Also revoke every token of this client and rotate its secret (the new one is shown once).
        #[arg(long, value_name = "CLIENT_ID")]
        client: Option<String>,
        /// Also block this source address or network at the server and every guard (repeatable).
        #[arg(long = "block-ip", value_name = "ADDR")]
        block_ip: Vec<String>,
        /// How long a block lasts (1h, 7d) [default: the configured responses.block_source_secs].
        #[arg(long, value_name = "DURATION")]
        block_for: Option<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Everything that happened, in order: sign-ins, tokens, uses at each service, refusals, detections,
    /// responses and admin actions.
    Timeline {
        /// The incident's number (or use one of the flags below instead).
        id: Option<i64>,
        #[command(flatten)]
        scope: ScopeArgs,
        /// From this time on: RFC 3339, a date, Unix seconds, or an age (15m, 2h, 7d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Before this time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// At most this many events (the newest).
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TimelineFormat::Text)]
        format: TimelineFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Draw the refresh families of an incident (or one session) as trees: each rotation, the fork where a
    /// rotated token came back, and which side was the copy.
    Lineage {
        /// The incident's number (or use --session).
        id: Option<i64>,
        /// One refresh family (session) id.
        #[arg(long, value_name = "SID", conflicts_with = "id")]
        session: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlainFormat::Text)]
        format: PlainFormat,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// The incident report: summary, scope, root-cause hints, actions taken, what remains.
    Report {
        /// The incident's number.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
        format: ReportFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// List incidents, newest first.
    List {
        /// Only those in this state.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlainFormat::Text)]
        format: PlainFormat,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// One incident and every action taken on it.
    Show {
        /// The incident's number.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlainFormat::Text)]
        format: PlainFormat,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Close an incident (what was revoked stays revoked).
    Close {
        /// The incident's number.
        id: i64,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

/// Exactly one thing to open an incident about.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct TargetArgs {
    /// A user, by login name or id.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// A session (refresh family) id.
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// An access token, by its jti.
    #[arg(long, value_name = "JTI")]
    token: Option<String>,
    /// A client id.
    #[arg(long, value_name = "CLIENT_ID")]
    client: Option<String>,
}

/// At most one scope besides an incident number.
#[derive(Debug, Clone, Args)]
#[group(required = false, multiple = false)]
pub(crate) struct ScopeArgs {
    /// A user, by login name or id.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// A session id.
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// A token, by its jti.
    #[arg(long, value_name = "JTI")]
    token: Option<String>,
    /// A source IP address.
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TimelineFormat {
    Text,
    Json,
    Html,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlainFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    Markdown,
    Html,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum State {
    Open,
    Contained,
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Contained => "contained",
            State::Closed => "closed",
        }
    }
}

fn failure(e: IncidentError) -> Failure {
    match e {
        IncidentError::Store(e) => crate::admin::store_failure(e),
        other => Failure::usage(other.to_string()),
    }
}

/// Writes `text` to `output` (created, or replaced) or to standard output.
fn write_out(output: Option<&PathBuf>, text: &str) -> Result<(), Failure> {
    match output {
        None => emit(text.trim_end_matches('\n')),
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| Failure::usage(format!("cannot write {}: {}", path.display(), e.kind())))?;
            crate::note(&format!("wrote {}", path.display()));
            Ok(())
        }
    }
}

/// An incident as one line: number, state, subject, when, by whom, why.
pub(crate) fn incident_line(i: &Incident) -> String {
    format!(
        "{}\t{}\t{}\topened {} by {}\t{}",
        i.id,
        i.state,
        i.subject,
        rfc3339(i.opened_at),
        i.opened_by,
        i.reason.replace(['\t', '\n'], " ")
    )
}

fn action_line(a: &IncidentAction) -> String {
    format!("  {}  {}  {} {}: {}", rfc3339(a.at), a.actor, a.action, a.target, a.outcome)
}

pub(crate) fn run(cmd: IncidentCommand) -> Result<(), Failure> {
    match cmd {
        IncidentCommand::Open { target, reason, cfg } => with_store(&cfg, |store, _| async move {
            let target = match (target.user, target.session, target.token, target.client) {
                (Some(u), ..) => Target::User(u),
                (_, Some(s), ..) => Target::Session(s),
                (_, _, Some(t), _) => Target::Token(t),
                (.., Some(c)) => Target::Client(c),
                _ => return Err(Failure::usage("name a --user, --session, --token or --client")),
            };
            let now = tessera_server::now();
            let (i, opened) = incident::open(store.as_ref(), &target, reason.as_deref(), &actor(), now)
                .await
                .map_err(failure)?;
            if opened {
                let event = Event {
                    sub: i.user_id.clone(),
                    sid: i.sid.clone(),
                    client_id: i.client_id.clone(),
                    detail: Some(json!({ "incident": i.id, "subject": i.subject }).to_string()),
                    ..admin_event("incident_open")
                };
                record(store.as_ref(), event).await?;
                emit(&format!("incident {} opened about {}", i.id, i.subject))?;
                emit(&format!("next: tessera incident contain {}", i.id))
            } else {
                emit(&format!(
                    "incident {} is already open about {} ({}); this was added to it",
                    i.id, i.subject, i.state
                ))
            }
        }),
        IncidentCommand::Contain { id, reset_mfa, client, block_ip, block_for, cfg } => {
            with_store(&cfg, |store, config| async move {
                let block_secs = match block_for {
                    None => config.responses.block_source_secs,
                    Some(text) => humantime::parse_duration(&text)
                        .ok()
                        .and_then(|d| i64::try_from(d.as_secs()).ok())
                        .filter(|s| (60..=30 * 86_400).contains(s))
                        .ok_or_else(|| {
                            Failure::usage("--block-for must be a duration between 1m and 30d (1h, 7d)")
                        })?,
                };
                let options = ContainOptions { reset_mfa, client, block: block_ip, block_secs };
                let now = tessera_server::now();
                let done = incident::contain(
                    store.as_ref(),
                    &config.trusted_proxy_nets(),
                    id,
                    &options,
                    &actor(),
                    now,
                )
                .await
                .map_err(failure)?;
                let c = &done.contained;
                emit(&format!(
                    "incident {} contained at {}",
                    id,
                    c.incident.contained_at.map(rfc3339).unwrap_or_default()
                ))?;
                for a in &c.taken {
                    emit(&format!("  done     {} {}: {}", a.action, a.target, a.outcome))?;
                }
                for a in &c.already {
                    emit(&format!(
                        "  already  {} {}: {} (at {})",
                        a.action,
                        a.target,
                        a.outcome,
                        rfc3339(a.at)
                    ))?;
                }
                if c.taken.is_empty() {
                    emit("  nothing new to do")?;
                } else {
                    emit(&format!(
                        "  pushed to every guard with revocation sequence {} (a running server relays it within a second)",
                        c.revocation_seq
                    ))?;
                }
                if let Some(secret) = &done.client_secret {
                    emit(&format!(
                        "  new client secret (shown once; give it to the client's operator): {}",
                        secret.as_str()
                    ))?;
                }
                Ok(())
            })
        }
        IncidentCommand::Timeline { id, scope, since, until, limit, format, output, cfg } => {
            with_store(&cfg, |store, _| async move {
                let scope = match (id, scope.user, scope.session, scope.token, scope.ip) {
                    (Some(id), None, None, None, None) => Scope::Incident(id),
                    (None, Some(u), ..) => Scope::User(u),
                    (None, _, Some(s), ..) => Scope::Session(s),
                    (None, _, _, Some(t), _) => Scope::Token(t),
                    (None, .., Some(ip)) => Scope::Ip(ip),
                    (Some(_), ..) => {
                        return Err(Failure::usage(
                            "give an incident number or one of --user, --session, --token, --ip, not both",
                        ));
                    }
                    _ => {
                        return Err(Failure::usage(
                            "give an incident number or one of --user, --session, --token, --ip",
                        ));
                    }
                };
                let now = tessera_server::now();
                let window = Window {
                    since: since.map(|t| parse_time("--since", &t, now)).transpose()?,
                    until: until.map(|t| parse_time("--until", &t, now)).transpose()?,
                    limit,
                };
                let t = incident::timeline(store.as_ref(), &scope, window).await.map_err(failure)?;
                let text = match format {
                    TimelineFormat::Text => t.text(),
                    TimelineFormat::Json => format!("{:#}\n", t.json()),
                    TimelineFormat::Html => incident::html::timeline(&t),
                };
                write_out(output.as_ref(), &text)
            })
        }
        IncidentCommand::Lineage { id, session, format, cfg } => with_store(&cfg, |store, _| async move {
            let lineages = match (id, session) {
                (_, Some(sid)) => {
                    vec![incident::family_lineage(store.as_ref(), &sid).await.map_err(failure)?]
                }
                (Some(id), None) => incident::lineages(store.as_ref(), id).await.map_err(failure)?,
                (None, None) => return Err(Failure::usage("give an incident number or --session")),
            };
            match format {
                PlainFormat::Json => {
                    emit(&format!("{:#}", json!(lineages.iter().map(|l| l.json()).collect::<Vec<_>>())))
                }
                PlainFormat::Text if lineages.is_empty() => {
                    emit("no refresh family is involved in this incident")
                }
                PlainFormat::Text => {
                    let text: Vec<String> = lineages.iter().map(|l| l.text()).collect();
                    emit(text.join("\n").trim_end())
                }
            }
        }),
        IncidentCommand::Report { id, format, output, cfg } => with_store(&cfg, |store, _| async move {
            let report = incident::report(store.as_ref(), id).await.map_err(failure)?;
            let text = match format {
                ReportFormat::Markdown => report.markdown(),
                ReportFormat::Html => incident::html::report(&report),
            };
            write_out(output.as_ref(), &text)
        }),
        IncidentCommand::List { state, limit, format, cfg } => with_store(&cfg, |store, _| async move {
            let found = store
                .list_incidents(state.map(State::name), limit.clamp(1, 10_000))
                .await
                .map_err(crate::admin::store_failure)?;
            match format {
                PlainFormat::Json => emit(&format!(
                    "{:#}",
                    json!(found.iter().map(|i| incident_json(i, &[])).collect::<Vec<_>>())
                )),
                PlainFormat::Text if found.is_empty() => emit("no incidents"),
                PlainFormat::Text => {
                    for i in &found {
                        emit(&incident_line(i))?;
                    }
                    Ok(())
                }
            }
        }),
        IncidentCommand::Show { id, format, cfg } => with_store(&cfg, |store, _| async move {
            let i = incident::find(store.as_ref(), id).await.map_err(failure)?;
            let actions = store.incident_actions(id).await.map_err(crate::admin::store_failure)?;
            match format {
                PlainFormat::Json => emit(&format!("{:#}", incident_json(&i, &actions))),
                PlainFormat::Text => {
                    emit(&incident_line(&i))?;
                    if let Some(at) = i.contained_at {
                        emit(&format!("contained {}", rfc3339(at)))?;
                    }
                    if let (Some(at), Some(by)) = (i.closed_at, &i.closed_by) {
                        emit(&format!("closed {} by {by}", rfc3339(at)))?;
                    }
                    if actions.is_empty() {
                        return emit("no action taken yet");
                    }
                    emit("actions:")?;
                    for a in &actions {
                        emit(&action_line(a))?;
                    }
                    Ok(())
                }
            }
        }),
        IncidentCommand::Close { id, cfg } => with_store(&cfg, |store, _| async move {
            let i = incident::close(store.as_ref(), id, &actor(), tessera_server::now())
                .await
                .map_err(failure)?;
            let event = Event {
                sub: i.user_id.clone(),
                detail: Some(json!({ "incident": i.id }).to_string()),
                ..admin_event("incident_close")
            };
            record(store.as_ref(), event).await?;
            emit(&format!("incident {} closed", i.id))
        }),
    }
}
