//! An incident's report: the summary, the scope (every service and route the compromised sessions'
//! tokens reached since the first suspicious event, and whether anything happened after containment),
//! root-cause hints (where and when the copy first appeared, and from which client), the actions taken, and
//! what remains to do. Pure: built from the incident, its actions, the user's timeline and the lineages of
//! the sessions involved; rendered as Markdown here and as HTML in `html.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tessera_core::detect::network;
use tessera_store::{Incident, IncidentAction};

use crate::incident::lineage::Lineage;
use crate::incident::timeline::{Category, Entry, Timeline};
use crate::rfc3339;

/// Requests on one route of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reach {
    /// The service (the guard's client).
    pub service: String,
    /// The audience of the tokens.
    pub audience: String,
    /// The route.
    pub route: String,
    /// How many requests.
    pub requests: u64,
    /// From which addresses.
    pub sources: BTreeSet<String>,
    /// First and last request.
    pub first_at: i64,
    /// Last request.
    pub last_at: i64,
    /// Requests after the incident was contained (must be 0).
    pub after_containment: u64,
    /// Why refused (for refused attempts).
    pub reason: Option<String>,
}

/// The facts a report states; [`Report::markdown`] and `html::report` only render them.
#[derive(Debug, Clone)]
pub struct Report {
    /// The incident.
    pub incident: Incident,
    /// What was done on it.
    pub actions: Vec<IncidentAction>,
    /// The sessions whose tokens were compromised.
    pub sessions: Vec<String>,
    /// Each session's network when it was issued.
    pub origins: BTreeMap<String, String>,
    /// The first suspicious event.
    pub first_suspicious: Option<Entry>,
    /// Services and routes reached from outside the sessions' own networks (by the copy).
    pub reached_by_copy: Vec<Reach>,
    /// Services and routes reached from the sessions' own networks since the first suspicious event.
    pub reached_by_owner: Vec<Reach>,
    /// Refused attempts with the sessions' tokens since the first suspicious event.
    pub refused: Vec<Reach>,
    /// Detections.
    pub detections: Vec<Entry>,
    /// The lineages of the sessions' refresh families.
    pub lineages: Vec<Lineage>,
    /// Whether the user still has to reset the password (`None`: unknown user).
    pub reset_pending: Option<bool>,
    /// When the password was changed after containment.
    pub password_changed_at: Option<i64>,
    /// What remains to do.
    pub remaining: Vec<String>,
    /// The timeline the report was drawn from.
    pub timeline: Timeline,
}

/// What the report needs besides the incident's own record.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The incident.
    pub incident: Incident,
    /// Its actions.
    pub actions: Vec<IncidentAction>,
    /// The timeline of its user (or client).
    pub timeline: Timeline,
    /// The lineages of the sessions named by the incident and its evidence.
    pub lineages: Vec<Lineage>,
    /// Whether the user must still reset the password.
    pub reset_pending: Option<bool>,
    /// Whether the session's client is confidential (has a secret that could have leaked too).
    pub confidential_clients: BTreeSet<String>,
}

fn is_suspicious_kind(e: &Entry) -> bool {
    matches!(e.category, Category::Rejection | Category::Detection)
}

/// The sessions an incident involves: the one it names, the one its token belongs to, and every one a
/// detection, a reuse, a probe or a refusal named among `entries`.
pub fn involved_sessions(incident: &Incident, entries: &[Entry]) -> BTreeSet<String> {
    let mut sessions: BTreeSet<String> = incident.sid.iter().cloned().collect();
    if let Some(jti) = &incident.jti {
        sessions.extend(entries.iter().filter(|e| e.jti.as_ref() == Some(jti)).filter_map(|e| e.sid.clone()));
    }
    sessions.extend(entries.iter().filter(|e| is_suspicious_kind(e)).filter_map(|e| e.sid.clone()));
    sessions
}

impl Report {
    /// Works out the scope, the hints and what remains.
    pub fn build(inputs: Inputs) -> Report {
        let Inputs { incident, actions, timeline, lineages, reset_pending, confidential_clients } = inputs;
        let entries = &timeline.entries;
        // The sessions involved: the incident's own, and any a detection, reuse or probe named.
        let mut sessions = involved_sessions(&incident, entries);
        sessions.extend(lineages.iter().map(|l| l.family.clone()));
        // Each session's own network: where its first token was issued.
        let mut origins = BTreeMap::new();
        for sid in &sessions {
            let first = entries
                .iter()
                .filter(|e| e.sid.as_ref() == Some(sid))
                .find(|e| e.kind == "token_issued")
                .or_else(|| entries.iter().find(|e| e.sid.as_ref() == Some(sid)));
            if let Some(net) = first.and_then(|e| e.ip.as_deref()).and_then(network) {
                origins.insert(sid.clone(), net);
            }
        }
        let in_scope = |e: &Entry| e.sid.as_ref().is_some_and(|s| sessions.contains(s));
        let foreign = |e: &Entry| {
            let own = e.sid.as_ref().and_then(|s| origins.get(s));
            match (e.ip.as_deref().and_then(network), own) {
                (Some(net), Some(own)) => &net != own,
                _ => false,
            }
        };
        let first_suspicious = entries
            .iter()
            .filter(|e| in_scope(e))
            .filter(|e| {
                is_suspicious_kind(e) || (matches!(e.category, Category::Use | Category::Token) && foreign(e))
            })
            .min_by_key(|e| (e.at, e.seq))
            .cloned();
        let since = first_suspicious.as_ref().map_or(i64::MAX, |e| e.at);
        let contained = incident.contained_at.unwrap_or(i64::MAX);
        let mut by_copy: BTreeMap<(String, String, String), Reach> = BTreeMap::new();
        let mut by_owner = by_copy.clone();
        let mut refused: BTreeMap<(String, String, String), Reach> = BTreeMap::new();
        for e in entries.iter().filter(|e| in_scope(e) && e.last_at >= since) {
            let target = match e.category {
                Category::Use if foreign(e) => &mut by_copy,
                Category::Use => &mut by_owner,
                Category::Rejection if e.service.is_some() => &mut refused,
                _ => continue,
            };
            let key = (
                e.service.clone().unwrap_or_default(),
                e.route.clone().unwrap_or_else(|| "-".into()),
                e.reason.clone().unwrap_or_default(),
            );
            let reach = target.entry(key).or_insert_with(|| Reach {
                service: e.service.clone().unwrap_or_default(),
                audience: e.audience.clone().unwrap_or_default(),
                route: e.route.clone().unwrap_or_else(|| "-".into()),
                requests: 0,
                sources: BTreeSet::new(),
                first_at: e.at,
                last_at: e.last_at,
                after_containment: 0,
                reason: (e.category == Category::Rejection).then(|| e.reason.clone().unwrap_or_default()),
            });
            reach.requests += e.count;
            reach.sources.extend(e.ip.clone());
            reach.first_at = reach.first_at.min(e.at);
            reach.last_at = reach.last_at.max(e.last_at);
            if e.category == Category::Use && e.last_at > contained {
                reach.after_containment += e.count;
            }
        }
        let detections: Vec<Entry> =
            entries.iter().filter(|e| e.category == Category::Detection).cloned().collect();
        let password_changed_at = entries
            .iter()
            .filter(|e| e.kind == "password_changed" && incident.contained_at.is_some_and(|c| e.at >= c))
            .map(|e| e.at)
            .next();
        let mut report = Report {
            incident,
            actions,
            sessions: sessions.into_iter().collect(),
            origins,
            first_suspicious,
            reached_by_copy: by_copy.into_values().collect(),
            reached_by_owner: by_owner.into_values().collect(),
            refused: refused.into_values().collect(),
            detections,
            lineages,
            reset_pending,
            password_changed_at,
            remaining: Vec::new(),
            timeline,
        };
        report.remaining = report.remaining_steps(&confidential_clients);
        report
    }

    fn done(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a.action == action)
    }

    fn remaining_steps(&self, confidential: &BTreeSet<String>) -> Vec<String> {
        let id = self.incident.id;
        let mut todo = Vec::new();
        let after: u64 =
            self.reached_by_copy.iter().chain(&self.reached_by_owner).map(|r| r.after_containment).sum();
        if after > 0 {
            todo.push(format!(
                "URGENT: {after} requests were let through after containment; check that every guard follows the \
                 revocation stream (`tessera_guard_revocation_lag_seconds`) and contain again."
            ));
        }
        if self.incident.state == "open" {
            todo.push(format!("Contain it: `tessera incident contain {id}` (add `--reset-mfa`, `--client`, `--block-ip` as the evidence warrants)."));
        }
        match (self.reset_pending, self.password_changed_at) {
            (Some(true), _) => todo.push("The user has not reset the password yet: it is required at the next sign-in; tell them through a channel the attacker cannot read.".into()),
            (_, Some(at)) => todo.push(format!("Done: the user set a new password at {}.", rfc3339(at))),
            _ => {}
        }
        if self.incident.user_id.is_some() && !self.done("reset_mfa") {
            todo.push(format!(
                "If the second factor may be exposed too (a TOTP seed on the same device), have the user enrol again: `tessera incident contain {id} --reset-mfa`."
            ));
        }
        let services: BTreeSet<&str> = self.reached_by_copy.iter().map(|r| r.service.as_str()).collect();
        if !services.is_empty() {
            todo.push(format!(
                "Look for the breach in the logs of {}: what the copy read or changed on the routes listed under Scope.",
                services.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        for client in self.lineages.iter().map(|l| &l.client_id).collect::<BTreeSet<_>>() {
            if confidential.contains(client) && !self.done("rotate_client_secret") {
                todo.push(format!("If client {client}'s host may be compromised, rotate its secret: `tessera incident contain {id} --client {client}`."));
            }
        }
        todo.push(format!(
            "Find where the token leaked (see Root cause), fix it, then close: `tessera incident close {id}`."
        ));
        todo
    }

    /// The root-cause hints, as sentences.
    pub fn hints(&self) -> Vec<String> {
        let mut hints = Vec::new();
        if let Some(first) = &self.first_suspicious {
            let mut s = format!("The first suspicious event is {} at {}", first.kind, rfc3339(first.at));
            if let Some(ip) = &first.ip {
                s.push_str(&format!(" from {ip}"));
                if let Some(own) = first.sid.as_ref().and_then(|sid| self.origins.get(sid)) {
                    s.push_str(&format!(" (the session was issued to network {own})"));
                }
            }
            if let Some(ua) = &first.user_agent {
                s.push_str(&format!(", user agent {ua:?}"));
            }
            if let Some(service) = &first.service {
                s.push_str(&format!(", at {service}"));
            }
            s.push('.');
            hints.push(s);
        }
        for l in &self.lineages {
            if let Some(fork) = &l.fork {
                let mut s = format!(
                    "Refresh token {} of session {} (client {}) was presented by two parties",
                    fork.token, l.family, l.client_id
                );
                match (&fork.legitimate, &fork.copy) {
                    (Some(good), Some(copy)) => s.push_str(&format!(
                        ": the legitimate client at {} from {}, and the copy at {} from {}. The copy first appeared at {}.",
                        rfc3339(good.presentation.at),
                        good.presentation.ip.as_deref().unwrap_or("?"),
                        rfc3339(copy.presentation.at),
                        copy.presentation.ip.as_deref().unwrap_or("?"),
                        rfc3339(fork.copy_first_at),
                    )),
                    _ => s.push_str("; the evidence does not tell which one was the legitimate client."),
                }
                hints.push(s);
            }
            if let Some(root) = l.roots().first().and_then(|r| l.nodes[*r].received.as_ref()) {
                hints.push(format!(
                    "Session {} was issued to client {} at {} from {}{}: the copy came from this client, its host, or \
                     what stands between them (storage, logs, proxies, error reports) after that time.",
                    l.family,
                    l.client_id,
                    rfc3339(root.at),
                    root.ip.as_deref().unwrap_or("?"),
                    root.user_agent.as_deref().map(|ua| format!(" ({ua})")).unwrap_or_default(),
                ));
            }
        }
        if hints.is_empty() {
            hints.push("No suspicious use is on record for this incident's sessions.".into());
        }
        hints
    }

    /// One paragraph.
    pub fn summary(&self) -> String {
        let i = &self.incident;
        let mut s = format!(
            "Incident {} about {} was opened at {} by {}: {}.",
            i.id,
            i.subject,
            rfc3339(i.opened_at),
            i.opened_by,
            i.reason.trim_end_matches('.')
        );
        if !self.detections.is_empty() {
            let rules: BTreeSet<&str> = self.detections.iter().filter_map(|d| d.reason.as_deref()).collect();
            s.push_str(&format!(" Detections: {}.", rules.into_iter().collect::<Vec<_>>().join(", ")));
        }
        let services: BTreeSet<&str> = self.reached_by_copy.iter().map(|r| r.service.as_str()).collect();
        if services.is_empty() {
            s.push_str(" The copy reached no service.");
        } else {
            s.push_str(&format!(
                " The copy reached {}.",
                services.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        match i.contained_at {
            Some(at) => {
                let after: u64 = self
                    .reached_by_copy
                    .iter()
                    .chain(&self.reached_by_owner)
                    .map(|r| r.after_containment)
                    .sum();
                s.push_str(&format!(
                    " Contained at {}; {after} requests were let through after that.",
                    rfc3339(at)
                ));
            }
            None => s.push_str(" Not contained yet."),
        }
        if let Some(at) = i.closed_at {
            s.push_str(&format!(" Closed at {}.", rfc3339(at)));
        }
        s
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let i = &self.incident;
        let mut md = format!("# Incident {}: {}\n\n", i.id, md_text(&i.subject));
        md.push_str(&format!(
            "State: **{}**. Opened {} by {}.\n\n",
            i.state,
            rfc3339(i.opened_at),
            md_text(&i.opened_by)
        ));
        md.push_str("## Summary\n\n");
        md.push_str(&md_text(&self.summary()));
        md.push_str("\n\n## Scope\n\n");
        md.push_str(&format!(
            "Sessions involved: {}.\n\n",
            if self.sessions.is_empty() {
                "none on record".to_owned()
            } else {
                self.sessions.iter().map(|s| format!("`{}`", md_text(s))).collect::<Vec<_>>().join(", ")
            }
        ));
        match &self.first_suspicious {
            Some(e) => md.push_str(&format!(
                "Since the first suspicious event ({} at {}):\n\n",
                e.kind,
                rfc3339(e.at)
            )),
            None => md.push_str("No suspicious event is on record.\n\n"),
        }
        for (title, rows) in [
            ("Reached by the copy (from outside the session's network)", &self.reached_by_copy),
            ("Reached from the session's own network", &self.reached_by_owner),
            ("Refused", &self.refused),
        ] {
            md.push_str(&format!("### {title}\n\n"));
            if rows.is_empty() {
                md.push_str("None.\n\n");
                continue;
            }
            md.push_str("| Service | Audience | Route | Requests | Sources | First | Last | After containment |\n|---|---|---|---|---|---|---|---|\n");
            for r in rows {
                let route = match &r.reason {
                    Some(why) => format!("{} ({why})", r.route),
                    None => r.route.clone(),
                };
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    md_cell(&r.service),
                    md_cell(&r.audience),
                    md_cell(&route),
                    r.requests,
                    md_cell(&r.sources.iter().cloned().collect::<Vec<_>>().join(", ")),
                    rfc3339(r.first_at),
                    rfc3339(r.last_at),
                    r.after_containment
                ));
            }
            md.push('\n');
        }
        let after: u64 =
            self.reached_by_copy.iter().chain(&self.reached_by_owner).map(|r| r.after_containment).sum();
        match i.contained_at {
            Some(_) if after == 0 => md.push_str("Nothing was reached after containment.\n\n"),
            Some(_) => md.push_str(&format!("**{after} requests were let through after containment.**\n\n")),
            None => md.push_str("The incident is not contained.\n\n"),
        }
        md.push_str("## Root cause\n\n");
        for hint in self.hints() {
            md.push_str(&format!("- {}\n", md_text(&hint)));
        }
        for l in &self.lineages {
            md.push_str(&format!(
                "\nLineage of session `{}`:\n\n```\n{}```\n",
                md_text(&l.family),
                l.text().replace('`', "'")
            ));
        }
        md.push_str("\n## Actions taken\n\n");
        if self.actions.is_empty() {
            md.push_str("None.\n");
        } else {
            md.push_str("| Time | Who | Action | Target | Result |\n|---|---|---|---|---|\n");
            for a in &self.actions {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    rfc3339(a.at),
                    md_cell(&a.actor),
                    md_cell(&a.action),
                    md_cell(&a.target),
                    md_cell(&a.outcome)
                ));
            }
        }
        md.push_str("\n## What remains\n\n");
        for step in &self.remaining {
            md.push_str(&format!("- [ ] {}\n", md_text(step)));
        }
        md
    }
}

/// Text an attacker may have chosen (a user agent, a route), made inert in Markdown: no HTML, no links.
fn md_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '[' | ']' => format!("\\{c}"),
            _ => c.to_string(),
        })
        .collect()
}

fn md_cell(s: &str) -> String {
    md_text(s).replace('|', "\\|").replace('\n', " ")
}
