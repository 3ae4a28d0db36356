//! Automatic responses to detections: what each rule does when it fires (`[responses]` in the
//! configuration), and the actions themselves. Every action is idempotent, so a response run twice (a node
//! restarted mid-way, an operator repeating it) is harmless.

use serde::{Deserialize, Serialize};
use tessera_core::detect::{Detection, Rule};
use tessera_core::{RevocationKind, net};
use tessera_store::{NewRevocation, REVOCATION_HORIZON_SECS, StoreError};

use crate::AppState;
use crate::incident::{self, IncidentError};

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send the alert to every configured sink (the log always).
    Alert,
    /// Revoke the one access token, at the server and every guard.
    RevokeToken,
    /// Revoke the session (its refresh family and every access token of it) at the server and every guard.
    RevokeSession,
    /// Revoke every session and token of the user, and force a password reset at the next login.
    RevokeUser,
    /// The user's current sessions may not refresh: they must log in again (with MFA, once enrolled).
    RequireStepUp,
    /// Refuse every request from the source address, at the server and every guard, for
    /// `block_source_secs`.
    BlockSource,
    /// Open an incident about the user (or join the one open) and contain it, as `tessera incident contain`
    /// does: every session and token of the user revoked, and a password reset forced.
    Contain,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 7] = [
        Action::Alert,
        Action::RevokeToken,
        Action::RevokeSession,
        Action::RevokeUser,
        Action::RequireStepUp,
        Action::BlockSource,
        Action::Contain,
    ];

    /// The stable name, as `response_taken` records it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::RevokeToken => "revoke_token",
            Action::RevokeSession => "revoke_session",
            Action::RevokeUser => "revoke_user",
            Action::RequireStepUp => "require_step_up",
            Action::BlockSource => "block_source",
            Action::Contain => "contain",
        }
    }
}

/// The `[responses]` section: each rule's actions, and how long a block lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Responses {
    /// How long `block_source` blocks an address, seconds.
    pub block_source_secs: i64,
    /// `refresh_token_reuse`.
    pub refresh_token_reuse: Vec<Action>,
    /// `token_used_from_two_networks`.
    pub token_used_from_two_networks: Vec<Action>,
    /// `token_used_from_new_network`.
    pub token_used_from_new_network: Vec<Action>,
    /// `lateral_movement_probe`.
    pub lateral_movement_probe: Vec<Action>,
    /// `forged_token_burst`.
    pub forged_token_burst: Vec<Action>,
    /// `revoked_token_use`.
    pub revoked_token_use: Vec<Action>,
    /// `brute_force`.
    pub brute_force: Vec<Action>,
    /// `credential_stuffing`.
    pub credential_stuffing: Vec<Action>,
    /// `impossible_travel`.
    pub impossible_travel: Vec<Action>,
    /// `new_device`.
    pub new_device: Vec<Action>,
    /// `login_locked`.
    pub login_locked: Vec<Action>,
}

impl Default for Responses {
    /// Contain what is certain or targeted; tell someone about the rest.
    fn default() -> Self {
        Responses {
            block_source_secs: 3600,
            refresh_token_reuse: vec![Action::RevokeSession, Action::Alert],
            token_used_from_two_networks: vec![Action::Alert],
            token_used_from_new_network: vec![Action::Alert],
            lateral_movement_probe: vec![Action::RevokeSession, Action::Alert],
            forged_token_burst: vec![Action::BlockSource, Action::Alert],
            revoked_token_use: vec![Action::Alert],
            brute_force: vec![Action::Alert],
            credential_stuffing: vec![Action::Alert],
            impossible_travel: vec![Action::Alert],
            new_device: vec![Action::Alert],
            login_locked: vec![Action::Alert],
        }
    }
}

impl Responses {
    /// The actions configured for `rule`, in order.
    pub fn for_rule(&self, rule: Rule) -> &[Action] {
        match rule {
            Rule::RefreshTokenReuse => &self.refresh_token_reuse,
            Rule::TokenUsedFromTwoNetworks => &self.token_used_from_two_networks,
            Rule::TokenUsedFromNewNetwork => &self.token_used_from_new_network,
            Rule::LateralMovementProbe => &self.lateral_movement_probe,
            Rule::ForgedTokenBurst => &self.forged_token_burst,
            Rule::RevokedTokenUse => &self.revoked_token_use,
            Rule::BruteForce => &self.brute_force,
            Rule::CredentialStuffing => &self.credential_stuffing,
            Rule::ImpossibleTravel => &self.impossible_travel,
            Rule::NewDevice => &self.new_device,
            Rule::LoginLocked => &self.login_locked,
        }
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// The key at fault and why.
    pub fn check(&self) -> Result<(), String> {
        if !(60..=30 * 86_400).contains(&self.block_source_secs) {
            return Err("responses.block_source_secs: must be between 60 and 2592000 (30 days)".into());
        }
        for rule in Rule::ALL {
            let actions = self.for_rule(rule);
            if let Some(dup) = actions.iter().enumerate().find(|(i, a)| actions[..*i].contains(a)) {
                return Err(format!("responses.{rule}: {} is listed twice", dup.1.name()));
            }
        }
        Ok(())
    }
}

/// Runs one action for a detection; returns its outcome for `response_taken` (`revoked`, `skipped:…`,
/// `failed`, …). [`Action::Alert`] is the caller's (it needs every other outcome first).
pub async fn run(state: &AppState, action: Action, d: &Detection, now: i64) -> &'static str {
    let reason = format!("detection_{}", d.rule);
    let result = match action {
        Action::Alert => return "queued",
        Action::RevokeToken => match &d.jti {
            None => return "skipped:no_token",
            Some(jti) => revoke_entry(state, RevocationKind::Token, jti, None, &reason, now).await,
        },
        Action::RevokeSession => match &d.sid {
            None => return "skipped:no_session",
            Some(sid) => revoke_session(state, sid, &reason, now).await,
        },
        Action::RevokeUser => match &d.sub {
            None => return "skipped:no_user",
            Some(sub) => match state.store.user_by_id(sub).await {
                Ok(Some(_)) => state.store.revoke_user(sub, &reason, true, now).await.map(|_| "revoked"),
                // A user another issuer knows, or none: every guard still refuses their tokens.
                Ok(None) => revoke_entry(state, RevocationKind::User, sub, Some(now), &reason, now).await,
                Err(e) => Err(e),
            },
        },
        Action::RequireStepUp => match &d.sub {
            None => return "skipped:no_user",
            Some(sub) => state
                .store
                .require_step_up(sub, now)
                .await
                .map(|found| if found { "required" } else { "skipped:unknown_user" }),
        },
        Action::Contain => contain(state, d, now).await,
        Action::BlockSource => match d.ip.as_deref().and_then(net::parse_source) {
            None => return "skipped:no_source",
            Some(source) if state.never_blocks(&source) => return "skipped:trusted_proxy",
            Some(source) => {
                let until = now + state.config.responses.block_source_secs;
                let entry = NewRevocation {
                    kind: RevocationKind::Source,
                    subject: source,
                    not_before: None,
                    expires_at: until,
                    reason: reason.clone(),
                };
                state.store.revoke(&entry, now).await.map(|_| "blocked")
            }
        },
    };
    match result {
        Ok(outcome) => {
            // Only what the action changed: revocation entries go to the guards now; a user's flags
            // leave this node's cache now (other nodes see the change counter move).
            match action {
                Action::RevokeUser | Action::RequireStepUp | Action::Contain => state.directory.invalidate(),
                _ => {}
            }
            if action != Action::RequireStepUp {
                state.revocations.wake();
            }
            outcome
        }
        Err(e) => {
            tracing::error!(error = %e, action = action.name(), rule = d.rule, "detection response failed");
            "failed"
        }
    }
}

/// Contains the detection's incident (opening it if need be); `skipped:no_user` when the detection names
/// neither a user nor a session.
async fn contain(state: &AppState, d: &Detection, now: i64) -> Result<&'static str, StoreError> {
    let incident = match incident::open_for_detection(state.store.as_ref(), d, false, now).await {
        Ok(Some(incident)) => incident,
        Ok(None) => return Ok("skipped:no_user"),
        Err(IncidentError::Store(e)) => return Err(e),
        Err(e) => return Err(StoreError::Database(e.to_string())),
    };
    let trusted = &state.trusted_proxies;
    let options = incident::ContainOptions::default();
    match incident::contain(state.store.as_ref(), trusted, incident.id, &options, "detector", now).await {
        Ok(done) if done.contained.taken.is_empty() => Ok("already_contained"),
        Ok(_) => Ok("contained"),
        // Closed meanwhile: a responder decided; the next finding opens a new incident.
        Err(IncidentError::Invalid(_)) => Ok("skipped:incident_closed"),
        Err(IncidentError::Store(e)) => Err(e),
        Err(e) => Err(StoreError::Database(e.to_string())),
    }
}

/// One revocation entry, kept as long as a token it matches can be valid.
async fn revoke_entry(
    state: &AppState,
    kind: RevocationKind,
    subject: &str,
    not_before: Option<i64>,
    reason: &str,
    now: i64,
) -> Result<&'static str, StoreError> {
    let entry = NewRevocation {
        kind,
        subject: subject.to_owned(),
        not_before,
        expires_at: now + REVOCATION_HORIZON_SECS,
        reason: reason.to_owned(),
    };
    state.store.revoke(&entry, now).await?;
    Ok("revoked")
}

/// Revokes a session: its refresh family if this server knows it (which adds the session's revocation
/// entry), else the entry alone, so that every guard refuses the session's tokens either way.
async fn revoke_session(
    state: &AppState,
    sid: &str,
    reason: &str,
    now: i64,
) -> Result<&'static str, StoreError> {
    if state.store.revoke_family(sid, reason, now).await? {
        return Ok("revoked");
    }
    if state.store.family(sid).await?.is_some() {
        return Ok("already_revoked");
    }
    revoke_entry(state, RevocationKind::Session, sid, None, reason, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_contain_the_certain_and_targeted_and_alert_on_every_rule() {
        let r = Responses::default();
        assert_eq!(r.for_rule(Rule::RefreshTokenReuse), [Action::RevokeSession, Action::Alert]);
        assert_eq!(r.for_rule(Rule::LateralMovementProbe), [Action::RevokeSession, Action::Alert]);
        assert_eq!(r.for_rule(Rule::ForgedTokenBurst), [Action::BlockSource, Action::Alert]);
        for rule in Rule::ALL {
            assert!(r.for_rule(rule).contains(&Action::Alert), "{rule} alerts by default");
        }
        assert_eq!(r.check(), Ok(()));
        let twice = Responses { brute_force: vec![Action::Alert, Action::Alert], ..Responses::default() };
        assert_eq!(twice.check(), Err("responses.brute_force: alert is listed twice".into()));
    }

    #[test]
    fn action_names_match_their_configuration_spelling() {
        for a in Action::ALL {
            let spelt: Action = serde_json::from_value(serde_json::json!(a.name())).unwrap();
            assert_eq!(spelt, a);
        }
    }
}
