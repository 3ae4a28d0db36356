//! A refresh family's lineage: every refresh token of one session as a tree (each rotation a child, with
//! the address, user agent, device and DPoP key that presented it), the fork where a rotated token came
//! back, and which side of the fork was the legitimate client and which the copy, judged by evidence.
//!
//! Pure: built from the family's audit events (`token_issued`, `token_refreshed`, `refresh_token_reuse`,
//! `token_rejected`), which name refresh tokens only by a hash prefix.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};
use tessera_core::detect::network;
use tessera_store::{AuditRecord, Family};

use crate::incident::timeline::shown;
use crate::rfc3339;

/// One request that presented (or received) a refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Presentation {
    /// Its event's number.
    pub seq: i64,
    /// When.
    pub at: i64,
    /// What came of it: `issued`, `rotated`, `retry`, `reused`, `refused:<reason>`.
    pub outcome: String,
    /// Source address.
    pub ip: Option<String>,
    /// That address's network (/24, /48).
    pub network: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// The browser's device (cookie hash prefix), if the request carried one.
    pub device: Option<String>,
    /// The DPoP key's thumbprint, if the request proved one.
    pub jkt: Option<String>,
}

/// One refresh token of the family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The token's hash prefix.
    pub token: String,
    /// 0 for the first, then one more per rotation.
    pub generation: u32,
    /// The request it was issued to (`None` if that event is gone).
    pub received: Option<Presentation>,
    /// Every later presentation of it, in order: the rotation, retries, reuse, refusals.
    pub presented: Vec<Presentation>,
    /// The tokens it was rotated into (indexes into [`Lineage::nodes`]).
    pub children: Vec<usize>,
}

/// One piece of evidence on one side of a fork: compared with the request the token was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// `network`, `user_agent`, `device` or `dpop_key`.
    pub what: &'static str,
    /// The value on this side.
    pub value: Option<String>,
    /// Whether it matches the request the token was issued to (`None`: not known on both).
    pub matches: Option<bool>,
}

/// One side of a fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Branch {
    /// The presentation that took this side.
    pub presentation: Presentation,
    /// The evidence, item by item.
    pub evidence: Vec<Evidence>,
    /// Matches minus mismatches.
    pub score: i32,
}

/// Where a rotated token was presented again, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fork {
    /// The token presented twice.
    pub token: String,
    /// The side judged legitimate (`None` when the evidence does not decide).
    pub legitimate: Option<Branch>,
    /// The side judged the copy (`None` when the evidence does not decide).
    pub copy: Option<Branch>,
    /// Both sides, when the evidence does not decide.
    pub undecided: Vec<Branch>,
    /// When the copy was first seen (the earlier side's time when undecided).
    pub copy_first_at: i64,
}

/// A family's lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lineage {
    /// The family (session) id.
    pub family: String,
    /// Its client.
    pub client_id: String,
    /// Its user.
    pub user_id: String,
    /// When it was revoked.
    pub revoked: Option<i64>,
    /// The DPoP key the family is bound to.
    pub bound_key: Option<String>,
    /// The tokens; the roots are those no rotation created.
    pub nodes: Vec<Node>,
    /// The first fork, if a rotated token came back.
    pub fork: Option<Fork>,
}

fn presentation(r: &AuditRecord, outcome: &str, detail: &Value) -> Presentation {
    let e = &r.event;
    let text = |k: &str| detail.get(k).and_then(Value::as_str).map(str::to_owned);
    Presentation {
        seq: r.seq,
        at: e.at,
        outcome: outcome.to_owned(),
        ip: e.ip.clone(),
        network: e.ip.as_deref().and_then(network),
        user_agent: e.user_agent.clone(),
        device: text("device"),
        jkt: text("jkt"),
    }
}

impl Lineage {
    /// Builds the lineage of `family` from its events in chain order.
    pub fn build(family: &Family, records: &[AuditRecord]) -> Lineage {
        let mut nodes: Vec<Node> = Vec::new();
        let mut by_token: HashMap<String, usize> = HashMap::new();
        let mut node_of = |token: &str, generation: u32, nodes: &mut Vec<Node>| -> usize {
            *by_token.entry(token.to_owned()).or_insert_with(|| {
                nodes.push(Node {
                    token: token.to_owned(),
                    generation,
                    received: None,
                    presented: Vec::new(),
                    children: Vec::new(),
                });
                nodes.len() - 1
            })
        };
        for r in records {
            let e = &r.event;
            let detail: Value =
                e.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(Value::Null);
            let issued = detail.get("refresh_token").and_then(Value::as_str);
            let spent = detail.get("presented").and_then(Value::as_str);
            let hashed = e.jti.as_deref().and_then(|j| j.strip_prefix("sha256:"));
            match e.kind.as_str() {
                "token_issued" => {
                    if let Some(token) = issued {
                        let i = node_of(token, 0, &mut nodes);
                        nodes[i].received = Some(presentation(r, "issued", &detail));
                    }
                }
                "token_refreshed" => {
                    let Some(parent) = spent else { continue };
                    let p = node_of(parent, 0, &mut nodes);
                    let retry = e.reason.as_deref() == Some("refresh_token_retry");
                    nodes[p].presented.push(presentation(
                        r,
                        if retry { "retry" } else { "rotated" },
                        &detail,
                    ));
                    if let (Some(child), false) = (issued, retry) {
                        let generation = nodes[p].generation + 1;
                        let c = node_of(child, generation, &mut nodes);
                        nodes[c].generation = generation;
                        nodes[c].received = Some(presentation(r, "rotated", &detail));
                        if !nodes[p].children.contains(&c) {
                            nodes[p].children.push(c);
                        }
                    }
                }
                "refresh_token_reuse" => {
                    if let Some(token) = hashed {
                        let i = node_of(token, 0, &mut nodes);
                        nodes[i].presented.push(presentation(r, "reused", &detail));
                    }
                }
                "token_rejected" => {
                    if let Some(token) = hashed {
                        let i = node_of(token, 0, &mut nodes);
                        let outcome = format!("refused:{}", e.reason.as_deref().unwrap_or("unknown"));
                        nodes[i].presented.push(presentation(r, &outcome, &detail));
                    }
                }
                _ => {}
            }
        }
        let fork = nodes.iter().find_map(judge);
        Lineage {
            family: family.id.clone(),
            client_id: family.client_id.clone(),
            user_id: family.user_id.clone(),
            revoked: family.revoked_at,
            bound_key: family.dpop_jkt.clone(),
            nodes,
            fork,
        }
    }

    /// The indexes of the tokens no rotation created, in order.
    pub fn roots(&self) -> Vec<usize> {
        let children: Vec<usize> = self.nodes.iter().flat_map(|n| n.children.iter().copied()).collect();
        (0..self.nodes.len()).filter(|i| !children.contains(i)).collect()
    }

    /// The lineage as a terminal tree, then the fork's verdict and its evidence.
    pub fn text(&self) -> String {
        let mut out = format!(
            "Refresh family {} of user {} at client {}",
            shown(&self.family),
            shown(&self.user_id),
            shown(&self.client_id)
        );
        if let Some(key) = &self.bound_key {
            out.push_str(&format!(", bound to DPoP key {}", shown(key)));
        }
        match &self.revoked {
            Some(at) => out.push_str(&format!(", revoked {}\n", rfc3339(*at))),
            None => out.push_str(", live\n"),
        }
        let roots = self.roots();
        for (n, root) in roots.iter().enumerate() {
            self.draw(*root, "", n + 1 == roots.len(), &mut out);
        }
        match &self.fork {
            None => out.push_str("No fork: no rotated token was presented again.\n"),
            Some(fork) => {
                out.push_str(&format!("Fork at {}: a rotated token was presented again.\n", fork.token));
                for (label, branch) in [("legitimate", &fork.legitimate), ("copy", &fork.copy)] {
                    if let Some(b) = branch {
                        out.push_str(&format!("  {label:<10} {}\n", branch_line(b)));
                    }
                }
                for b in &fork.undecided {
                    out.push_str(&format!("  undecided  {}\n", branch_line(b)));
                }
            }
        }
        out
    }

    fn draw(&self, i: usize, prefix: &str, last: bool, out: &mut String) {
        let node = &self.nodes[i];
        let (branch, next) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
        let role = self.fork.as_ref().and_then(|f| {
            let mine = |b: &Option<Branch>| {
                b.as_ref()
                    .is_some_and(|b| node.received.as_ref().is_some_and(|r| r.seq == b.presentation.seq))
            };
            if mine(&f.legitimate) {
                Some("  <- legitimate")
            } else if mine(&f.copy) {
                Some("  <- copy")
            } else {
                None
            }
        });
        let received = node.received.as_ref().map_or_else(
            || "issued (event not kept)".to_owned(),
            |p| format!("{} {}", if p.outcome == "issued" { "issued" } else { "rotated" }, who(p)),
        );
        out.push_str(&format!(
            "{prefix}{branch}{} gen {}: {received}{}\n",
            node.token,
            node.generation,
            role.unwrap_or("")
        ));
        let inner = format!("{prefix}{next}");
        let extra: Vec<&Presentation> = node.presented.iter().filter(|p| p.outcome != "rotated").collect();
        let total = extra.len() + node.children.len();
        let mut drawn = 0;
        for p in extra {
            drawn += 1;
            let b = if drawn == total { "└─ " } else { "├─ " };
            let fork = self.fork.as_ref().is_some_and(|f| f.token == node.token) && p.outcome == "reused";
            let verdict = self.fork.as_ref().filter(|_| fork).map_or("", |f| {
                let is = |b: &Option<Branch>| b.as_ref().is_some_and(|b| b.presentation.seq == p.seq);
                if is(&f.legitimate) {
                    "  <- FORK, legitimate"
                } else if is(&f.copy) {
                    "  <- FORK, copy"
                } else {
                    "  <- FORK"
                }
            });
            out.push_str(&format!("{inner}{b}x presented again: {} {}{verdict}\n", p.outcome, who(p)));
        }
        for child in &node.children {
            drawn += 1;
            self.draw(*child, &inner, drawn == total, out);
        }
    }

    /// The lineage as JSON.
    pub fn json(&self) -> Value {
        json!({
            "family": self.family,
            "client_id": self.client_id,
            "user_id": self.user_id,
            "revoked": self.revoked.map(|at| json!({ "at": at, "time": rfc3339(at) })),
            "bound_key": self.bound_key,
            "roots": self.roots(),
            "nodes": self.nodes,
            "fork": self.fork,
        })
    }
}

/// Who presented: time, address and network, user agent, device and key.
fn who(p: &Presentation) -> String {
    let mut out = rfc3339(p.at);
    if let Some(ip) = &p.ip {
        out.push_str(&format!(" from {}", shown(ip)));
        if let Some(net) = &p.network {
            out.push_str(&format!(" ({})", shown(net)));
        }
    }
    if let Some(ua) = &p.user_agent {
        out.push_str(&format!(" ua={}", shown(ua)));
    }
    if let Some(device) = &p.device {
        out.push_str(&format!(" device={}", shown(device)));
    }
    if let Some(key) = &p.jkt {
        out.push_str(&format!(" key={}", shown(key)));
    }
    out
}

fn branch_line(b: &Branch) -> String {
    let mut out = format!("{} {}:", b.presentation.outcome, who(&b.presentation));
    for e in &b.evidence {
        let verdict = match e.matches {
            Some(true) => "same as when the token was issued",
            Some(false) => "differs from when the token was issued",
            None => "not known",
        };
        out.push_str(&format!(" {} {verdict};", e.what));
    }
    out.pop();
    out
}

/// The evidence of `side` against `reference` (the request the token was issued to).
fn evidence(side: &Presentation, reference: Option<&Presentation>) -> Branch {
    let pairs: [(&'static str, Option<&String>, Option<&String>); 4] = [
        ("network", side.network.as_ref(), reference.and_then(|r| r.network.as_ref())),
        ("user_agent", side.user_agent.as_ref(), reference.and_then(|r| r.user_agent.as_ref())),
        ("device", side.device.as_ref(), reference.and_then(|r| r.device.as_ref())),
        ("dpop_key", side.jkt.as_ref(), reference.and_then(|r| r.jkt.as_ref())),
    ];
    let mut score = 0;
    let evidence = pairs
        .into_iter()
        .map(|(what, mine, theirs)| {
            let matches = match (mine, theirs) {
                (Some(a), Some(b)) => Some(a == b),
                // A key or device the token was issued with and that this side lacks is a mismatch.
                (None, Some(_)) if matches!(what, "device" | "dpop_key") => Some(false),
                _ => None,
            };
            score += match matches {
                Some(true) => 1,
                Some(false) => -1,
                None => 0,
            };
            Evidence { what, value: mine.cloned(), matches }
        })
        .collect();
    Branch { presentation: side.clone(), evidence, score }
}

/// The fork at `node`, if its rotation was followed by a reuse: each side judged against the request the
/// token was issued to.
fn judge(node: &Node) -> Option<Fork> {
    let rotation = node.presented.iter().find(|p| p.outcome == "rotated")?;
    let reuse = node.presented.iter().find(|p| p.outcome == "reused")?;
    let reference = node.received.as_ref();
    let (a, b) = (evidence(rotation, reference), evidence(reuse, reference));
    let copy_first = |copy: &Branch| copy.presentation.at;
    Some(match a.score.cmp(&b.score) {
        std::cmp::Ordering::Greater => Fork {
            token: node.token.clone(),
            copy_first_at: copy_first(&b),
            legitimate: Some(a),
            copy: Some(b),
            undecided: vec![],
        },
        std::cmp::Ordering::Less => Fork {
            token: node.token.clone(),
            copy_first_at: copy_first(&a),
            legitimate: Some(b),
            copy: Some(a),
            undecided: vec![],
        },
        std::cmp::Ordering::Equal => Fork {
            token: node.token.clone(),
            copy_first_at: rotation.at.min(reuse.at),
            legitimate: None,
            copy: None,
            undecided: vec![a, b],
        },
    })
}
