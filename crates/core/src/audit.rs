//! The audit log's vocabulary and its hash chain: the event kinds and their stable names, the event record,
//! how each event's hash covers its contents and the hash of the event before it, and the verifier that
//! walks a chain and names the first broken link.
//!
//! Pure: the store assigns sequence numbers and keeps the rows; this module only says what a row must hash
//! to. Editing, removing or reordering any event after a checkpoint changes a hash that a later event (or
//! the chain's recorded head) still holds, and the verifier reports the first place that happens.

use std::fmt;

use aws_lc_rs::digest;
use serde::Serialize;

/// The kinds of event, each with one stable `snake_case` name (what the log stores and `--kind` takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A password login succeeded.
    LoginSuccess,
    /// A password login failed (wrong password, unknown or disabled user).
    LoginFailure,
    /// Sign-in for an account or from a source was locked after too many failures.
    LoginLocked,
    /// A sign-in whose password was right was scored: the decision and its reasons.
    LoginRisk,
    /// A second factor was accepted.
    MfaSuccess,
    /// A second factor was refused.
    MfaFailure,
    /// A browser session ended at `/logout`.
    Logout,
    /// An access token (and possibly a refresh token) was issued.
    TokenIssued,
    /// A refresh token was rotated into a new one.
    TokenRefreshed,
    /// A token was exchanged for a narrower one (RFC 8693).
    TokenExchanged,
    /// A token, session, user or client was revoked.
    TokenRevoked,
    /// A token or grant was refused at the server or at a guard, with the reason.
    TokenRejected,
    /// A rotated refresh token was presented again: its family is revoked.
    RefreshTokenReuse,
    /// A spent authorization code was presented again: its tokens are revoked.
    CodeReuse,
    /// Requests a guard let through, aggregated per token, route and source over a short window.
    TokenUsed,
    /// A genuine token for one service was presented at another.
    LateralMovementAttempt,
    /// A user's password was set or changed.
    PasswordChanged,
    /// A signing key was created, activated, retired, revoked or imported.
    KeyRotated,
    /// A detection rule fired.
    DetectionRaised,
    /// An automatic response ran.
    ResponseTaken,
    /// An operator changed something (`actor` says who).
    AdminAction,
    /// Events older than the retention were removed behind a checkpoint.
    AuditPruned,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: [EventKind; 22] = [
        EventKind::LoginSuccess,
        EventKind::LoginFailure,
        EventKind::LoginLocked,
        EventKind::LoginRisk,
        EventKind::MfaSuccess,
        EventKind::MfaFailure,
        EventKind::Logout,
        EventKind::TokenIssued,
        EventKind::TokenRefreshed,
        EventKind::TokenExchanged,
        EventKind::TokenRevoked,
        EventKind::TokenRejected,
        EventKind::RefreshTokenReuse,
        EventKind::CodeReuse,
        EventKind::TokenUsed,
        EventKind::LateralMovementAttempt,
        EventKind::PasswordChanged,
        EventKind::KeyRotated,
        EventKind::DetectionRaised,
        EventKind::ResponseTaken,
        EventKind::AdminAction,
        EventKind::AuditPruned,
    ];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::LoginSuccess => "login_success",
            EventKind::LoginFailure => "login_failure",
            EventKind::LoginLocked => "login_locked",
            EventKind::LoginRisk => "login_risk",
            EventKind::MfaSuccess => "mfa_success",
            EventKind::MfaFailure => "mfa_failure",
            EventKind::Logout => "logout",
            EventKind::TokenIssued => "token_issued",
            EventKind::TokenRefreshed => "token_refreshed",
            EventKind::TokenExchanged => "token_exchanged",
            EventKind::TokenRevoked => "token_revoked",
            EventKind::TokenRejected => "token_rejected",
            EventKind::RefreshTokenReuse => "refresh_token_reuse",
            EventKind::CodeReuse => "code_reuse",
            EventKind::TokenUsed => "token_used",
            EventKind::LateralMovementAttempt => "lateral_movement_attempt",
            EventKind::PasswordChanged => "password_changed",
            EventKind::KeyRotated => "key_rotated",
            EventKind::DetectionRaised => "detection_raised",
            EventKind::ResponseTaken => "response_taken",
            EventKind::AdminAction => "admin_action",
            EventKind::AuditPruned => "audit_pruned",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<EventKind> for String {
    fn from(kind: EventKind) -> Self {
        kind.name().to_owned()
    }
}

/// One security event. Tokens appear only as a `jti` or a hash prefix, never in full; nothing here is a
/// secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Event {
    /// When, in Unix seconds.
    pub at: i64,
    /// The kind's stable name ([`EventKind::name`]).
    pub kind: String,
    /// Source IP.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Subject (user id, or client id for a client's own tokens).
    pub sub: Option<String>,
    /// Session (refresh family).
    pub sid: Option<String>,
    /// Token id, or a token hash prefix.
    pub jti: Option<String>,
    /// Client.
    pub client_id: Option<String>,
    /// The token's audience.
    pub audience: Option<String>,
    /// The service (resource server client) that reported or was reached.
    pub service: Option<String>,
    /// The route at that service (method and path pattern).
    pub route: Option<String>,
    /// `success`, `failure`, `refused`, …
    pub outcome: Option<String>,
    /// Reason (a stable name).
    pub reason: Option<String>,
    /// Who did it, for admin actions (`cli:alice`).
    pub actor: Option<String>,
    /// Extra detail as JSON text, never a secret.
    pub detail: Option<String>,
}

impl Event {
    /// An event of `kind` at `at`, with no other field.
    pub fn new(kind: EventKind, at: i64) -> Self {
        Event { at, kind: kind.into(), ..Event::default() }
    }

    /// This event's hash as event number `seq` following `prev`.
    ///
    /// SHA-256 over a domain label, `prev`, `seq` and `at` (big-endian), then every text field in a fixed
    /// order, each as absent (one 0 byte) or present (a 1 byte, its length as 4 big-endian bytes, its
    /// UTF-8). The encoding is unambiguous: no two different events hash the same input.
    pub fn chain_hash(&self, seq: i64, prev: &ChainHash) -> ChainHash {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"tessera-audit-v1\n");
        ctx.update(&prev.0);
        ctx.update(&seq.to_be_bytes());
        ctx.update(&self.at.to_be_bytes());
        let fields = [
            Some(&self.kind),
            self.ip.as_ref(),
            self.user_agent.as_ref(),
            self.sub.as_ref(),
            self.sid.as_ref(),
            self.jti.as_ref(),
            self.client_id.as_ref(),
            self.audience.as_ref(),
            self.service.as_ref(),
            self.route.as_ref(),
            self.outcome.as_ref(),
            self.reason.as_ref(),
            self.actor.as_ref(),
            self.detail.as_ref(),
        ];
        for field in fields {
            match field {
                None => ctx.update(&[0]),
                Some(text) => {
                    ctx.update(&[1]);
                    // A field longer than 4 GiB cannot reach here (the store's rows are far smaller); the
                    // saturated length would still keep the encoding prefix-free with the bytes that follow.
                    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
                    ctx.update(&len.to_be_bytes());
                    ctx.update(text.as_bytes());
                }
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        ChainHash(out)
    }
}

/// A link of the audit chain: the SHA-256 an event hashes to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// What the first event of a chain follows.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Reads a stored hash; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(ChainHash(bytes.try_into().ok()?))
    }

    /// The hash in lowercase hex.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.short())
    }
}

impl Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

/// Where the first broken link is, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// An event's contents no longer hash to the hash stored with it: it was edited.
    Altered {
        /// The event.
        seq: i64,
    },
    /// An event does not name its predecessor's hash: the predecessor was replaced, or this event moved.
    Unlinked {
        /// The event.
        seq: i64,
    },
    /// The numbers jump: the events between were removed.
    Missing {
        /// The first missing event.
        from: i64,
        /// The last missing event.
        to: i64,
    },
    /// An event after the checkpoint has no hash at all.
    Unsealed {
        /// The event.
        seq: i64,
    },
    /// The chain ends before (or differs from) the head the store recorded: events were removed from
    /// the end, or the last one was replaced.
    Truncated {
        /// The last event found.
        last: i64,
        /// The last event the head records.
        head: i64,
    },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBreak::Altered { seq } => {
                write!(f, "event {seq} does not match its hash: it was changed after it was written")
            }
            ChainBreak::Unlinked { seq } => write!(
                f,
                "event {seq} does not link to the event before it: that event was replaced or this one moved"
            ),
            ChainBreak::Missing { from, to } if from == to => write!(f, "event {from} is missing"),
            ChainBreak::Missing { from, to } => write!(f, "events {from} to {to} are missing"),
            ChainBreak::Unsealed { seq } => write!(f, "event {seq} has no hash"),
            ChainBreak::Truncated { last, head } if last == head => {
                write!(f, "the last event ({last}) is not the one the chain's head recorded")
            }
            ChainBreak::Truncated { last, head } => {
                write!(
                    f,
                    "the chain ends at event {last} but its head records event {head}: events were removed"
                )
            }
        }
    }
}

impl ChainBreak {
    /// The event the break is at (the first one that fails).
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Altered { seq } | ChainBreak::Unlinked { seq } | ChainBreak::Unsealed { seq } => *seq,
            ChainBreak::Missing { from, .. } => *from,
            ChainBreak::Truncated { last, .. } => *last + 1,
        }
    }
}

/// Walks a chain in sequence order from a checkpoint, one stored event at a time.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    last_seq: i64,
    last_hash: ChainHash,
    checked: u64,
}

impl ChainVerifier {
    /// Starts after the checkpoint: event `through_seq` (already pruned, or before the chain began) hashed
    /// to `hash`.
    pub fn from_checkpoint(through_seq: i64, hash: ChainHash) -> Self {
        ChainVerifier { last_seq: through_seq, last_hash: hash, checked: 0 }
    }

    /// Checks the next stored event: its number follows, it names the previous hash, and its contents hash
    /// to what is stored.
    ///
    /// # Errors
    /// The first broken link.
    pub fn check(
        &mut self,
        seq: i64,
        event: &Event,
        prev: Option<ChainHash>,
        hash: Option<ChainHash>,
    ) -> Result<(), ChainBreak> {
        if seq <= self.last_seq {
            // Rows come in ascending order; a repeat cannot happen with a primary key.
            return Err(ChainBreak::Unlinked { seq });
        }
        if seq != self.last_seq + 1 {
            return Err(ChainBreak::Missing { from: self.last_seq + 1, to: seq - 1 });
        }
        let (Some(prev), Some(hash)) = (prev, hash) else {
            return Err(ChainBreak::Unsealed { seq });
        };
        if event.chain_hash(seq, &prev) != hash {
            return Err(ChainBreak::Altered { seq });
        }
        if prev != self.last_hash {
            return Err(ChainBreak::Unlinked { seq });
        }
        self.last_seq = seq;
        self.last_hash = hash;
        self.checked += 1;
        Ok(())
    }

    /// Ends the walk against the head the store recorded (the last event's number and hash).
    ///
    /// # Errors
    /// [`ChainBreak::Truncated`] if the last event checked is not the head.
    pub fn finish(self, head_seq: i64, head_hash: ChainHash) -> Result<ChainSummary, ChainBreak> {
        if self.last_seq != head_seq || self.last_hash != head_hash {
            return Err(ChainBreak::Truncated { last: self.last_seq, head: head_seq });
        }
        Ok(ChainSummary { checked: self.checked, head_seq, head_hash })
    }
}

/// A chain that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// Events checked.
    pub checked: u64,
    /// The last event.
    pub head_seq: i64,
    /// Its hash.
    pub head_hash: ChainHash,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> Event {
        Event {
            sub: Some(format!("user{n}")),
            jti: Some(format!("jti{n}")),
            ..Event::new(EventKind::TokenIssued, 1_700_000_000 + n)
        }
    }

    /// A chain of `n` events after checkpoint 10: (seq, event, prev, hash).
    fn chain(n: i64) -> Vec<(i64, Event, ChainHash, ChainHash)> {
        let mut prev = ChainHash([7; 32]);
        (11..11 + n)
            .map(|seq| {
                let e = event(seq);
                let hash = e.chain_hash(seq, &prev);
                let row = (seq, e, prev, hash);
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(
        rows: &[(i64, Event, ChainHash, ChainHash)],
        head: (i64, ChainHash),
    ) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::from_checkpoint(10, ChainHash([7; 32]));
        for (seq, e, prev, hash) in rows {
            v.check(*seq, e, Some(*prev), Some(*hash))?;
        }
        Ok(v.finish(head.0, head.1)?.checked)
    }

    #[test]
    fn kind_names_are_stable_and_unique() {
        let names: std::collections::HashSet<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
            assert!(kind.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(EventKind::RefreshTokenReuse.name(), "refresh_token_reuse");
        assert_eq!(EventKind::from_name("Token_Issued"), None);
    }

    #[test]
    fn hash_is_fixed_for_known_input() {
        // Pinned (and computed independently from the documented encoding, in Python's hashlib): a change to
        // the encoding would orphan every stored chain.
        let e = event(1);
        assert_eq!(
            e.chain_hash(1, &ChainHash::GENESIS).hex(),
            "5946b8753880801c132ad1de63c852a186d5a9ef5426e4bb4b9b73d01f6e5e34"
        );
    }

    #[test]
    fn every_field_and_position_changes_the_hash() {
        let base = event(1);
        let h = base.chain_hash(5, &ChainHash::GENESIS);
        assert_ne!(base.chain_hash(6, &ChainHash::GENESIS), h);
        assert_ne!(base.chain_hash(5, &ChainHash([1; 32])), h);
        // Moving text from one field to the next, or from absent to empty, changes it too.
        let moved = Event { sub: None, sid: Some("user1".into()), ..base.clone() };
        assert_ne!(moved.chain_hash(5, &ChainHash::GENESIS), h);
        let empty = Event { ip: Some(String::new()), ..base.clone() };
        assert_ne!(empty.chain_hash(5, &ChainHash::GENESIS), h);
        let split = Event { sub: Some("user".into()), jti: Some("1jti1".into()), ..base.clone() };
        assert_ne!(split.chain_hash(5, &ChainHash::GENESIS), h);
    }

    #[test]
    fn intact_chain_verifies_to_its_head() {
        let rows = chain(5);
        let head = (rows[4].0, rows[4].3);
        assert_eq!(verify(&rows, head), Ok(5));
        // An empty chain verifies when the head is the checkpoint.
        assert_eq!(verify(&[], (10, ChainHash([7; 32]))), Ok(0));
    }

    #[test]
    fn edited_event_is_named() {
        let mut rows = chain(5);
        let head = (rows[4].0, rows[4].3);
        rows[2].1.sub = Some("mallory".into());
        assert_eq!(verify(&rows, head), Err(ChainBreak::Altered { seq: 13 }));
    }

    #[test]
    fn rehashed_edit_breaks_the_next_link() {
        let mut rows = chain(5);
        let head = (rows[4].0, rows[4].3);
        rows[2].1.sub = Some("mallory".into());
        rows[2].3 = rows[2].1.chain_hash(13, &rows[2].2);
        assert_eq!(verify(&rows, head), Err(ChainBreak::Unlinked { seq: 14 }));
    }

    #[test]
    fn removed_events_are_named() {
        let mut rows = chain(5);
        let head = (rows[4].0, rows[4].3);
        rows.drain(1..3);
        assert_eq!(verify(&rows, head), Err(ChainBreak::Missing { from: 12, to: 13 }));
        let err = ChainBreak::Missing { from: 12, to: 13 };
        assert_eq!(err.to_string(), "events 12 to 13 are missing");
        assert_eq!(err.seq(), 12);
    }

    #[test]
    fn truncated_tail_is_caught_by_the_head() {
        let mut rows = chain(5);
        let head = (rows[4].0, rows[4].3);
        rows.truncate(3);
        assert_eq!(verify(&rows, head), Err(ChainBreak::Truncated { last: 13, head: 15 }));
    }

    #[test]
    fn unsealed_event_after_checkpoint_is_a_break() {
        let rows = chain(1);
        let mut v = ChainVerifier::from_checkpoint(10, ChainHash([7; 32]));
        assert_eq!(v.check(11, &rows[0].1, None, None), Err(ChainBreak::Unsealed { seq: 11 }));
    }
}
