//! Incident response: open an incident about a user, session, token or client; contain it (every session,
//! token and the password of its user, optionally second factors, a client and source addresses) in one
//! transaction; and read what happened: the timeline, a refresh family's lineage, and the report. The
//! `tessera incident` commands and the admin API both call these functions, on the same store.
//!
//! A revocation written here reaches every guard through the revocation stream: a server in the same
//! process is woken by the caller, another process (the CLI beside a running server) sees the new sequence
//! number at its next poll.

pub mod html;
pub mod lineage;
pub mod report;
pub mod timeline;

use std::collections::BTreeSet;
use std::fmt;

use tessera_core::{EventKind, SecretKind, net};
use tessera_store::{AuditQuery, Contained, Containment, Incident, NewIncident, Store, StoreError};
use zeroize::Zeroizing;

use self::lineage::Lineage;
use self::report::{Inputs, Report};
use self::timeline::Timeline;

/// Why an incident operation did not happen; the message names the input at fault, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentError {
    /// No such incident, user, session, token or client.
    NotFound(String),
    /// The request makes no sense (a closed incident, a bad address).
    Invalid(String),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for IncidentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncidentError::NotFound(what) | IncidentError::Invalid(what) => f.write_str(what),
            IncidentError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for IncidentError {}

impl From<StoreError> for IncidentError {
    fn from(e: StoreError) -> Self {
        IncidentError::Store(e)
    }
}

type Result<T> = std::result::Result<T, IncidentError>;

/// An incident and its actions as JSON (what `incident show --format json` prints and the admin API
/// answers): times as Unix seconds and as RFC 3339.
pub fn incident_json(i: &Incident, actions: &[tessera_store::IncidentAction]) -> serde_json::Value {
    let time = |at: Option<i64>| at.map(crate::rfc3339);
    serde_json::json!({
        "id": i.id,
        "subject": i.subject,
        "state": i.state,
        "user_id": i.user_id,
        "sid": i.sid,
        "jti": i.jti,
        "client_id": i.client_id,
        "reason": i.reason,
        "detection": i.detection,
        "opened_at": i.opened_at,
        "opened_time": crate::rfc3339(i.opened_at),
        "opened_by": i.opened_by,
        "contained_at": i.contained_at,
        "contained_time": time(i.contained_at),
        "closed_at": i.closed_at,
        "closed_time": time(i.closed_at),
        "closed_by": i.closed_by,
        "actions": actions.iter().map(|a| serde_json::json!({
            "seq": a.seq, "at": a.at, "time": crate::rfc3339(a.at), "actor": a.actor, "action": a.action,
            "target": a.target, "outcome": a.outcome,
        })).collect::<Vec<_>>(),
    })
}

/// What an incident is opened about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A user, by id or username.
    User(String),
    /// A session (refresh family) id.
    Session(String),
    /// An access token's `jti`.
    Token(String),
    /// A client id.
    Client(String),
}

/// The user, session, token and client an event on record names about `query`, newest first.
async fn seen(store: &dyn Store, query: AuditQuery) -> Result<Option<tessera_store::Event>> {
    let found = store.audit_events(&AuditQuery { newest: true, limit: 50, ..query }).await?;
    Ok(found.into_iter().rev().map(|r| r.event).find(|e| e.sub.is_some()))
}

/// Opens an incident about `target`, or finds the live one about the same user (one incident per user at a
/// time, however it was named): the incident, and whether this call opened it.
///
/// # Errors
/// [`IncidentError::NotFound`] if nothing is known of the target.
pub async fn open(
    store: &dyn Store,
    target: &Target,
    reason: Option<&str>,
    actor: &str,
    now: i64,
) -> Result<(Incident, bool)> {
    let mut new = NewIncident { opened_by: actor.to_owned(), ..NewIncident::default() };
    let named = match target {
        Target::User(u) => {
            let user = match store.user_by_id(u).await? {
                Some(user) => user,
                None => store
                    .user_by_name(u)
                    .await?
                    .ok_or_else(|| IncidentError::NotFound(format!("no user {u}")))?,
            };
            new.user_id = Some(user.id);
            format!("user {u}")
        }
        Target::Session(sid) => {
            new.sid = Some(sid.clone());
            new.user_id = match store.family(sid).await? {
                Some(family) => Some(family.user_id),
                // A session another issuer started, seen only by the guards: its events say whose it is.
                None => {
                    let query = AuditQuery {
                        sid: Some(sid.clone()),
                        newest: true,
                        limit: 50,
                        ..AuditQuery::default()
                    };
                    let found = store.audit_events(&query).await?;
                    if found.is_empty() {
                        return Err(IncidentError::NotFound(format!("no session {sid} on record")));
                    }
                    found.into_iter().rev().find_map(|r| r.event.sub)
                }
            };
            format!("session {sid}")
        }
        Target::Token(jti) => {
            let query = AuditQuery { jti: Some(jti.clone()), ..AuditQuery::default() };
            let Some(event) = seen(store, query).await? else {
                return Err(IncidentError::NotFound(format!("no token {jti} on record")));
            };
            new.jti = Some(jti.clone());
            new.sid = event.sid;
            new.user_id = event.sub;
            new.client_id = event.client_id;
            format!("token {jti}")
        }
        Target::Client(id) => {
            if store.client(id).await?.is_none() {
                return Err(IncidentError::NotFound(format!("no client {id}")));
            }
            new.client_id = Some(id.clone());
            format!("client {id}")
        }
    };
    new.subject = match (target, &new.user_id) {
        (Target::Client(id), _) => format!("client:{id}"),
        (_, Some(user)) => format!("user:{user}"),
        (Target::Session(sid), None) => format!("session:{sid}"),
        (Target::Token(jti), None) => format!("token:{jti}"),
        (Target::User(u), None) => format!("user:{u}"),
    };
    new.reason = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => r.chars().filter(|c| !c.is_control()).take(500).collect(),
        None => format!("opened by {actor} about {named}"),
    };
    let (incident, opened) = store.open_incident(&new, now).await?;
    if !opened {
        // Another name for what the live incident is already about: say so on its record.
        store.record_incident_action(incident.id, actor, "joined", &named, &new.reason, now).await?;
    }
    Ok((incident, opened))
}

/// Opens (or finds) the incident a detection belongs to: about its user when this store knows the user,
/// else about its session; `None` for a detection about a source address alone. With `record`, the
/// detection is recorded on the incident (the detector does so once per finding).
///
/// # Errors
/// The store's error.
pub async fn open_for_detection(
    store: &dyn Store,
    d: &tessera_core::detect::Detection,
    record: bool,
    now: i64,
) -> Result<Option<Incident>> {
    let user = match &d.sub {
        Some(sub) => store.user_by_id(sub).await?.map(|u| u.id),
        None => None,
    };
    let subject = match (&user, &d.sid) {
        (Some(user), _) => format!("user:{user}"),
        (None, Some(sid)) => format!("session:{sid}"),
        (None, None) => return Ok(None),
    };
    let new = NewIncident {
        subject,
        user_id: user,
        sid: d.sid.clone(),
        jti: d.jti.clone(),
        client_id: None,
        reason: d.explanation.clone(),
        detection: Some(d.key()),
        opened_by: "detector".into(),
    };
    let (incident, _) = store.open_incident(&new, now).await?;
    if record {
        let outcome = format!("{}: {}", d.severity.name(), d.explanation);
        store.record_incident_action(incident.id, "detector", "detection", &d.key(), &outcome, now).await?;
    }
    Ok(Some(incident))
}

/// What `contain` adds to the user's sessions, tokens and password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainOptions {
    /// Remove the user's second factors.
    pub reset_mfa: bool,
    /// Revoke this client and rotate its secret (a client incident's own client is always included).
    pub client: Option<String>,
    /// Block these addresses or networks.
    pub block: Vec<String>,
    /// For how long, seconds.
    pub block_secs: i64,
}

/// What `contain` did, and the client's new secret if this call rotated it (to be shown once).
pub struct ContainOutcome {
    /// The steps taken and skipped.
    pub contained: Contained,
    /// The new client secret.
    pub client_secret: Option<Zeroizing<String>>,
}

impl fmt::Debug for ContainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainOutcome")
            .field("contained", &self.contained)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Contains incident `id` (see [`Store::contain_incident`]). `trusted` are the proxies' networks, which may
/// never be blocked (blocking one would block everyone behind it).
///
/// # Errors
/// `NotFound` for an unknown incident or client, `Invalid` for a closed incident or a bad address.
pub async fn contain(
    store: &dyn Store,
    trusted: &[ipnet::IpNet],
    id: i64,
    options: &ContainOptions,
    actor: &str,
    now: i64,
) -> Result<ContainOutcome> {
    let incident = live(store, id).await?;
    let client_id =
        options.client.clone().or_else(|| incident.subject.strip_prefix("client:").map(str::to_owned));
    let mut secret = None;
    let client = match client_id {
        None => None,
        Some(cid) => {
            let found = store
                .client(&cid)
                .await?
                .ok_or_else(|| IncidentError::NotFound(format!("no client {cid}")))?;
            let rotated = store
                .incident_actions(id)
                .await?
                .iter()
                .any(|a| a.action == "rotate_client_secret" && a.target == format!("client:{cid}"));
            let hash = if found.kind == tessera_core::ClientKind::Confidential && !rotated {
                let fresh = crate::crypto::new_secret(SecretKind::ClientSecret)
                    .map_err(|e| IncidentError::Invalid(e.to_string()))?;
                let hash = fresh.hash();
                secret = Some(Zeroizing::new(fresh.expose().to_owned()));
                Some(hash)
            } else {
                None
            };
            Some((cid, hash))
        }
    };
    let mut block = Vec::new();
    for text in &options.block {
        let source = net::parse_source(text).ok_or_else(|| {
            IncidentError::Invalid(format!("--block-ip {text:?} is not an address or network"))
        })?;
        if crate::covers_a_proxy(trusted, &source) {
            return Err(IncidentError::Invalid(format!(
                "{source} is a trusted proxy: blocking it would block everyone behind it"
            )));
        }
        let until = now + options.block_secs.clamp(60, 30 * 86_400);
        block.push((source, until, crate::rfc3339(until)));
    }
    let how = Containment { actor: actor.to_owned(), reset_mfa: options.reset_mfa, client, block };
    let Some(contained) = store.contain_incident(id, &how, now).await? else {
        live(store, id).await?;
        return Err(IncidentError::Invalid(format!(
            "incident {id} changed while it was being contained; run it again"
        )));
    };
    let rotated_now = contained
        .taken
        .iter()
        .any(|a| a.action == "rotate_client_secret" && a.outcome.starts_with("rotated"));
    Ok(ContainOutcome { contained, client_secret: secret.filter(|_| rotated_now) })
}

/// The incident if it exists and is not closed.
async fn live(store: &dyn Store, id: i64) -> Result<Incident> {
    match store.incident(id).await? {
        None => Err(IncidentError::NotFound(format!("no incident {id}"))),
        Some(i) if i.closed_at.is_some() => Err(IncidentError::Invalid(format!("incident {id} is closed"))),
        Some(i) => Ok(i),
    }
}

/// An incident by number.
///
/// # Errors
/// `NotFound` if there is none.
pub async fn find(store: &dyn Store, id: i64) -> Result<Incident> {
    store.incident(id).await?.ok_or_else(|| IncidentError::NotFound(format!("no incident {id}")))
}

/// Closes a live incident.
///
/// # Errors
/// `NotFound` or `Invalid` (already closed).
pub async fn close(store: &dyn Store, id: i64, actor: &str, now: i64) -> Result<Incident> {
    live(store, id).await?;
    match store.close_incident(id, actor, now).await? {
        Some(i) => Ok(i),
        None => Err(IncidentError::Invalid(format!("incident {id} is closed"))),
    }
}

/// Whose events a timeline shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An incident's user (or client, session, token).
    Incident(i64),
    /// A user, by id or username.
    User(String),
    /// A session.
    Session(String),
    /// A token.
    Token(String),
    /// A source address.
    Ip(String),
}

/// Which part of a timeline to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// At or after.
    pub since: Option<i64>,
    /// Before.
    pub until: Option<i64>,
    /// At most this many events (the newest).
    pub limit: i64,
}

impl Default for Window {
    fn default() -> Self {
        Window { since: None, until: None, limit: 10_000 }
    }
}

/// The query and the title for a scope.
async fn scope_query(store: &dyn Store, scope: &Scope) -> Result<(AuditQuery, String)> {
    let q = AuditQuery::default();
    Ok(match scope {
        Scope::Incident(id) => {
            let i = find(store, *id).await?;
            let title = format!("incident {id} ({})", i.subject);
            let q = if let Some(user) = i.user_id {
                AuditQuery { sub: Some(user), ..q }
            } else if let Some(client) = i.client_id.filter(|_| i.subject.starts_with("client:")) {
                AuditQuery { client_id: Some(client), ..q }
            } else if let Some(sid) = i.sid {
                AuditQuery { sid: Some(sid), ..q }
            } else {
                AuditQuery { jti: i.jti, ..q }
            };
            (q, title)
        }
        Scope::User(u) => {
            let user = match store.user_by_id(u).await? {
                Some(user) => Some(user),
                None => store.user_by_name(u).await?,
            };
            match user {
                Some(user) => (
                    AuditQuery { sub: Some(user.id.clone()), ..q },
                    format!("user {} ({})", user.id, user.username),
                ),
                // A user another issuer knows, or one since deleted: their events may still be on record.
                None => (AuditQuery { sub: Some(u.clone()), ..q }, format!("user {u}")),
            }
        }
        Scope::Session(sid) => (AuditQuery { sid: Some(sid.clone()), ..q }, format!("session {sid}")),
        Scope::Token(jti) => (AuditQuery { jti: Some(jti.clone()), ..q }, format!("token {jti}")),
        Scope::Ip(ip) => {
            let canonical = ip
                .parse::<std::net::IpAddr>()
                .map_err(|_| IncidentError::Invalid(format!("--ip {ip:?} is not an address")))?;
            (AuditQuery { ip: Some(canonical.to_string()), ..q }, format!("address {canonical}"))
        }
    })
}

/// The timeline of a scope: its newest `window.limit` events in the window, oldest first.
///
/// # Errors
/// `NotFound` for an unknown incident, `Invalid` for a bad address, or the store's error.
pub async fn timeline(store: &dyn Store, scope: &Scope, window: Window) -> Result<Timeline> {
    let (query, title) = scope_query(store, scope).await?;
    let limit = window.limit.clamp(1, 1_000_000);
    let query =
        AuditQuery { since: window.since, until: window.until, newest: true, limit: limit + 1, ..query };
    let mut records = store.audit_events(&query).await?;
    let truncated = records.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    if truncated {
        records.remove(0);
    }
    Ok(Timeline::build(title, &records, truncated))
}

/// The lineage of one refresh family.
///
/// # Errors
/// `NotFound` if this server never issued the family.
pub async fn family_lineage(store: &dyn Store, sid: &str) -> Result<Lineage> {
    let family = store
        .family(sid)
        .await?
        .ok_or_else(|| IncidentError::NotFound(format!("no refresh family {sid}")))?;
    let kinds = [
        EventKind::TokenIssued,
        EventKind::TokenRefreshed,
        EventKind::RefreshTokenReuse,
        EventKind::TokenRejected,
    ];
    let query = AuditQuery {
        sid: Some(sid.to_owned()),
        kinds: kinds.iter().map(|k| k.name().to_owned()).collect(),
        limit: 100_000,
        ..AuditQuery::default()
    };
    let records = store.audit_events(&query).await?;
    Ok(Lineage::build(&family, &records))
}

/// The lineages of every refresh family an incident involves.
///
/// # Errors
/// `NotFound` for an unknown incident, or the store's error.
pub async fn lineages(store: &dyn Store, id: i64) -> Result<Vec<Lineage>> {
    let incident = find(store, id).await?;
    let timeline = timeline(store, &Scope::Incident(id), Window::default()).await?;
    lineages_of(store, &incident, &timeline).await
}

async fn lineages_of(store: &dyn Store, incident: &Incident, timeline: &Timeline) -> Result<Vec<Lineage>> {
    let mut out = Vec::new();
    for sid in report::involved_sessions(incident, &timeline.entries) {
        match family_lineage(store, &sid).await {
            Ok(l) => out.push(l),
            Err(IncidentError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// An incident's report.
///
/// # Errors
/// `NotFound` for an unknown incident, or the store's error.
pub async fn report(store: &dyn Store, id: i64) -> Result<Report> {
    let incident = find(store, id).await?;
    let timeline = timeline(store, &Scope::Incident(id), Window::default()).await?;
    let lineages = lineages_of(store, &incident, &timeline).await?;
    let reset_pending = match &incident.user_id {
        Some(user) => store.user_by_id(user).await?.map(|u| u.must_reset_password),
        None => None,
    };
    let mut confidential = BTreeSet::new();
    for l in &lineages {
        if store.client(&l.client_id).await?.is_some_and(|c| c.kind == tessera_core::ClientKind::Confidential)
        {
            confidential.insert(l.client_id.clone());
        }
    }
    let actions = store.incident_actions(id).await?;
    Ok(Report::build(Inputs {
        incident,
        actions,
        timeline,
        lineages,
        reset_pending,
        confidential_clients: confidential,
    }))
}
