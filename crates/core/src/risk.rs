//! Risk-based authentication: a pure score over what is known of a sign-in whose password was right, and
//! the decision it leads to (allow, ask for a second factor, or deny), with the reasons.
//!
//! The signals are the ones the detection rules use, judged before the session exists rather than after:
//! a device and a network the user has not signed in from, recent failures on the account and from the
//! source, impossible travel since the last sign-in, a blocked source, and a step-up a detection asked for.

use serde::{Deserialize, Serialize};

/// What is known of one sign-in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginContext {
    /// The browser's device cookie is none the user signed in with before (within the history kept; a
    /// first sign-in's device is new too).
    pub new_device: bool,
    /// The source's network is none the user signed in from before (a first sign-in's is new too).
    pub new_network: bool,
    /// Failed attempts on the account before this one, still counted by the throttle.
    pub account_failures: u32,
    /// Failed attempts from the source before this one, still counted by the throttle.
    pub source_failures: u32,
    /// Farther from the last sign-in than anyone can travel in the time between.
    pub impossible_travel: bool,
    /// The source is blocked (`block_source`).
    pub blocked_source: bool,
    /// A detection asked this user for a second factor (`require_step_up`), and none was shown since.
    pub step_up_required: bool,
}

/// The weights and thresholds (`[risk]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// A score at or above this asks for a second factor.
    pub mfa_at: u32,
    /// A score at or above this refuses the sign-in.
    pub deny_at: u32,
    /// Points for a new device.
    pub new_device: u32,
    /// Points for a new network.
    pub new_network: u32,
    /// Failures on the account that count as "recent failures".
    pub account_failures: u32,
    /// Failures from the source that count as "recent failures".
    pub source_failures: u32,
    /// Points for recent failures (on the account or from the source).
    pub failures: u32,
    /// Points for impossible travel.
    pub impossible_travel: u32,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            mfa_at: 40,
            deny_at: 100,
            new_device: 40,
            new_network: 20,
            account_failures: 3,
            source_failures: 10,
            failures: 20,
            impossible_travel: 70,
        }
    }
}

impl RiskConfig {
    /// Checks the thresholds.
    ///
    /// # Errors
    /// The key whose value cannot work.
    pub fn check(&self) -> Result<(), String> {
        if self.mfa_at == 0 || self.deny_at < self.mfa_at {
            return Err("risk: mfa_at must be at least 1 and deny_at at least mfa_at".into());
        }
        if self.account_failures == 0 || self.source_failures == 0 {
            return Err("risk: account_failures and source_failures must be at least 1".into());
        }
        Ok(())
    }
}

/// What to do with the sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on with what the client's policy asks.
    Allow,
    /// Ask for a second factor.
    RequireMfa,
    /// Refuse.
    Deny,
}

impl Decision {
    /// The stable name, for the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::RequireMfa => "require_mfa",
            Decision::Deny => "deny",
        }
    }
}

/// A scored sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The sum of the signals' points.
    pub score: u32,
    /// The decision.
    pub decision: Decision,
    /// The signals that scored, by stable name.
    pub reasons: Vec<&'static str>,
}

/// Scores `login`. A blocked source is refused whatever the score; a step-up asked by a detection needs a
/// second factor whatever the score.
pub fn assess(login: &LoginContext, c: &RiskConfig) -> Assessment {
    let mut score = 0_u32;
    let mut reasons = Vec::new();
    let mut add = |hit: bool, points: u32, reason: &'static str| {
        if hit {
            score = score.saturating_add(points);
            reasons.push(reason);
        }
    };
    add(login.new_device, c.new_device, "new_device");
    add(login.new_network, c.new_network, "new_network");
    add(
        login.account_failures >= c.account_failures || login.source_failures >= c.source_failures,
        c.failures,
        "recent_failures",
    );
    add(login.impossible_travel, c.impossible_travel, "impossible_travel");
    let decision = if login.blocked_source {
        reasons.push("blocked_source");
        Decision::Deny
    } else if score >= c.deny_at {
        Decision::Deny
    } else if score >= c.mfa_at || login.step_up_required {
        if login.step_up_required {
            reasons.push("step_up_required");
        }
        Decision::RequireMfa
    } else {
        Decision::Allow
    };
    Assessment { score, decision, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn familiar() -> LoginContext {
        LoginContext::default()
    }

    #[test]
    fn a_familiar_sign_in_is_allowed_and_a_new_device_asks_for_a_second_factor() {
        let c = RiskConfig::default();
        assert_eq!(assess(&familiar(), &c).decision, Decision::Allow);
        let network = assess(&LoginContext { new_network: true, ..familiar() }, &c);
        assert_eq!((network.score, network.decision), (20, Decision::Allow), "a new network alone is travel");
        let device = assess(&LoginContext { new_device: true, ..familiar() }, &c);
        assert_eq!((device.score, device.decision), (40, Decision::RequireMfa));
        let both = assess(&LoginContext { new_device: true, new_network: true, ..familiar() }, &c);
        assert_eq!((both.score, both.decision), (60, Decision::RequireMfa));
        assert_eq!(both.reasons, ["new_device", "new_network"]);
    }

    #[test]
    fn impossible_travel_from_a_new_device_is_denied_and_blocked_sources_always() {
        let c = RiskConfig::default();
        let travel = assess(&LoginContext { impossible_travel: true, ..familiar() }, &c);
        assert_eq!(travel.decision, Decision::RequireMfa);
        let worse = assess(&LoginContext { impossible_travel: true, new_device: true, ..familiar() }, &c);
        assert_eq!((worse.score, worse.decision), (110, Decision::Deny));
        let blocked = assess(&LoginContext { blocked_source: true, ..familiar() }, &c);
        assert_eq!((blocked.decision, blocked.reasons.as_slice()), (Decision::Deny, &["blocked_source"][..]));
    }

    #[test]
    fn recent_failures_count_once_and_a_step_up_always_asks() {
        let c = RiskConfig::default();
        let failures = LoginContext { account_failures: 3, source_failures: 50, ..familiar() };
        assert_eq!(assess(&failures, &c).score, 20);
        let below = LoginContext { account_failures: 2, source_failures: 9, ..familiar() };
        assert_eq!(assess(&below, &c).score, 0);
        let step_up = assess(&LoginContext { step_up_required: true, ..familiar() }, &c);
        assert_eq!(
            (step_up.decision, step_up.reasons.as_slice()),
            (Decision::RequireMfa, &["step_up_required"][..])
        );
        assert!(RiskConfig { deny_at: 10, ..c }.check().is_err());
    }
}
