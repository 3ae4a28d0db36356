//! The guard's copy of the live revocation set, fed by the server's stream.
//!
//! Pure: entries go in, a token's identifiers and the time go in, a verdict comes out. An entry is dropped
//! once its `expires_at` has passed, because no token it could match is still valid then; so the set holds
//! about the revocation rate times the longest access-token lifetime, and a hard cap makes the guard refuse
//! service (fail closed) rather than grow without bound.

use std::collections::HashMap;
use std::net::IpAddr;

use tessera_core::net::SourceBlocks;

use serde::Deserialize;
use tessera_token::Origin;

/// One entry as the server streams it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    /// Sequence number (commit order).
    pub seq: i64,
    /// `token`, `session`, `user`, `client`, `key` or `source`.
    pub kind: String,
    /// The `jti`, `sid`, `sub`, `client_id`, `kid`, or the source's address or CIDR.
    pub subject: String,
    /// For users and clients: tokens issued at or before this time (Unix seconds) are revoked. For a
    /// source: set when the entry lifts the source's block instead of imposing one.
    #[serde(default)]
    pub not_before: Option<i64>,
    /// When the entry may be dropped.
    pub expires_at: i64,
}

/// The identifiers of a validated token that revocations can match.
#[derive(Debug, Clone, Copy)]
pub struct TokenIds<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// `sid`, if any.
    pub sid: Option<&'a str>,
    /// `sub`.
    pub sub: &'a str,
    /// `client_id`.
    pub client_id: &'a str,
    /// The signing key's `kid`.
    pub kid: &'a str,
    /// `iat`.
    pub iat: i64,
    /// For an exchanged token, the tokens it came from: their `jti`, client and key are checked too.
    pub origin: &'a [Origin],
}

/// Which kind of entry matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The token itself.
    Token,
    /// Its session.
    Session,
    /// Its user, for tokens issued before the not-before time.
    User,
    /// Its client, for tokens issued before the not-before time.
    Client,
    /// The key that signed it.
    Key,
    /// A token it was exchanged from, that token's client or its key.
    Origin,
}

impl Revoked {
    /// The stable reason name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Token => "revoked_token",
            Self::Session => "revoked_session",
            Self::User => "revoked_user",
            Self::Client => "revoked_client",
            Self::Key => "revoked_key",
            Self::Origin => "revoked_origin",
        }
    }
}

/// The live revocation set.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    tokens: HashMap<String, i64>,
    sessions: HashMap<String, i64>,
    keys: HashMap<String, i64>,
    /// subject → (not_before, expires_at); a later entry raises both.
    users: HashMap<String, (i64, i64)>,
    clients: HashMap<String, (i64, i64)>,
    /// Blocked sources (`block_source`).
    sources: SourceBlocks,
    seq: i64,
}

fn raise(map: &mut HashMap<String, i64>, subject: String, expires: i64) {
    let e = map.entry(subject).or_insert(expires);
    *e = (*e).max(expires);
}

fn raise_nb(map: &mut HashMap<String, (i64, i64)>, subject: String, nb: i64, expires: i64) {
    let e = map.entry(subject).or_insert((nb, expires));
    *e = (e.0.max(nb), e.1.max(expires));
}

impl RevocationSet {
    /// An empty set at sequence 0.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest sequence number applied.
    #[must_use]
    pub const fn seq(&self) -> i64 {
        self.seq
    }

    /// How many entries are held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tokens.len()
            + self.sessions.len()
            + self.keys.len()
            + self.users.len()
            + self.clients.len()
            + self.sources.len()
    }

    /// Whether no entry is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an entry (an unknown kind is ignored: it cannot match anything this guard checks) and advances
    /// the sequence number. Entries already expired at `now` are not kept.
    pub fn apply(&mut self, e: Entry, now: i64) {
        self.seq = self.seq.max(e.seq);
        if e.kind == "source" {
            self.apply_source(&e, now);
            return;
        }
        if e.expires_at <= now {
            return;
        }
        match e.kind.as_str() {
            "token" => raise(&mut self.tokens, e.subject, e.expires_at),
            "session" => raise(&mut self.sessions, e.subject, e.expires_at),
            "key" => raise(&mut self.keys, e.subject, e.expires_at),
            // A user or client entry without a not-before time revokes everything issued before its expiry.
            "user" => {
                raise_nb(&mut self.users, e.subject, e.not_before.unwrap_or(e.expires_at), e.expires_at)
            }
            "client" => {
                raise_nb(&mut self.clients, e.subject, e.not_before.unwrap_or(e.expires_at), e.expires_at)
            }
            _ => {}
        }
    }

    /// A source entry: the latest one for an address or network wins, so a lift (`not_before` set) ends an
    /// earlier block.
    fn apply_source(&mut self, e: &Entry, now: i64) {
        self.sources.apply(&e.subject, e.not_before.is_some(), e.expires_at, now);
    }

    /// Whether any source is blocked (a block may have ended but not yet been pruned).
    #[must_use]
    pub fn has_blocks(&self) -> bool {
        !self.sources.is_empty()
    }

    /// Whether requests from `peer` are blocked at `now`.
    #[must_use]
    pub fn blocks(&self, peer: IpAddr, now: i64) -> bool {
        self.sources.blocks(peer, now)
    }

    /// Replaces the whole set with a snapshot taken at `seq`.
    pub fn replace(&mut self, seq: i64, entries: Vec<Entry>, now: i64) {
        *self = Self::new();
        for e in entries {
            self.apply(e, now);
        }
        self.seq = self.seq.max(seq);
    }

    /// Raises the sequence number (after a resumed backlog was applied).
    pub fn advance_to(&mut self, seq: i64) {
        self.seq = self.seq.max(seq);
    }

    /// Which entry revokes the token, if any.
    #[must_use]
    pub fn check(&self, t: TokenIds<'_>, now: i64) -> Option<Revoked> {
        let live = |exp: &i64| *exp > now;
        if self.tokens.get(t.jti).is_some_and(live) {
            return Some(Revoked::Token);
        }
        if t.sid.and_then(|sid| self.sessions.get(sid)).is_some_and(live) {
            return Some(Revoked::Session);
        }
        if self.users.get(t.sub).is_some_and(|(nb, exp)| *exp > now && t.iat <= *nb) {
            return Some(Revoked::User);
        }
        if self.clients.get(t.client_id).is_some_and(|(nb, exp)| *exp > now && t.iat <= *nb) {
            return Some(Revoked::Client);
        }
        if self.keys.get(t.kid).is_some_and(live) {
            return Some(Revoked::Key);
        }
        let origin_revoked = |o: &Origin| {
            let iat = i64::try_from(o.iat).unwrap_or(i64::MAX);
            self.tokens.get(&o.jti).is_some_and(live)
                || self.clients.get(&o.client_id).is_some_and(|(nb, exp)| *exp > now && iat <= *nb)
                || self.keys.get(&o.kid).is_some_and(live)
        };
        t.origin.iter().any(origin_revoked).then_some(Revoked::Origin)
    }

    /// Drops entries that can no longer match a valid token; returns how many.
    pub fn prune(&mut self, now: i64) -> usize {
        let before = self.len();
        self.tokens.retain(|_, exp| *exp > now);
        self.sessions.retain(|_, exp| *exp > now);
        self.keys.retain(|_, exp| *exp > now);
        self.users.retain(|_, (_, exp)| *exp > now);
        self.clients.retain(|_, (_, exp)| *exp > now);
        self.sources.prune(now);
        before - self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn entry(seq: i64, kind: &str, subject: &str, not_before: Option<i64>) -> Entry {
        Entry { seq, kind: kind.into(), subject: subject.into(), not_before, expires_at: NOW + 900 }
    }

    fn ids() -> TokenIds<'static> {
        TokenIds {
            jti: "j1",
            sid: Some("s1"),
            sub: "alice",
            client_id: "web",
            kid: "k1",
            iat: NOW - 10,
            origin: &[],
        }
    }

    #[test]
    fn each_subject_kind_revokes_the_tokens_it_names() {
        for (kind, subject, nb, want) in [
            ("token", "j1", None, Revoked::Token),
            ("session", "s1", None, Revoked::Session),
            ("user", "alice", Some(NOW), Revoked::User),
            ("client", "web", Some(NOW), Revoked::Client),
            ("key", "k1", None, Revoked::Key),
        ] {
            let mut set = RevocationSet::new();
            set.apply(entry(1, kind, subject, nb), NOW);
            assert_eq!(set.check(ids(), NOW), Some(want), "{kind}");
            let mut other = RevocationSet::new();
            other.apply(entry(1, kind, "someone-else", nb), NOW);
            assert_eq!(other.check(ids(), NOW), None, "{kind}");
        }
    }

    #[test]
    fn exchanged_token_dies_with_the_token_client_or_key_it_came_from() {
        let origin = [Origin {
            jti: "j0".into(),
            client_id: "webapp".into(),
            iat: (NOW - 60) as u64,
            kid: "k0".into(),
        }];
        let exchanged = TokenIds { client_id: "svc-a", origin: &origin, ..ids() };
        for (kind, subject, nb) in
            [("token", "j0", None), ("client", "webapp", Some(NOW - 30)), ("key", "k0", None)]
        {
            let mut set = RevocationSet::new();
            set.apply(entry(1, kind, subject, nb), NOW);
            assert_eq!(set.check(exchanged, NOW), Some(Revoked::Origin), "{kind}");
            assert_eq!(set.check(ids(), NOW), None, "{kind}: a token without that origin is untouched");
        }
        // A client revocation older than the original token spares it.
        let mut set = RevocationSet::new();
        set.apply(entry(1, "client", "webapp", Some(NOW - 90)), NOW);
        assert_eq!(set.check(exchanged, NOW), None);
    }

    #[test]
    fn user_revocation_spares_tokens_issued_after_not_before() {
        let mut set = RevocationSet::new();
        set.apply(entry(1, "user", "alice", Some(NOW - 20)), NOW);
        assert_eq!(set.check(ids(), NOW), None);
        set.apply(entry(2, "user", "alice", Some(NOW - 5)), NOW);
        assert_eq!(set.check(ids(), NOW), Some(Revoked::User));
        // An older entry arriving later does not lower the bar.
        set.apply(entry(3, "user", "alice", Some(NOW - 30)), NOW);
        assert_eq!(set.check(ids(), NOW), Some(Revoked::User));
        assert_eq!(set.seq(), 3);
    }

    #[test]
    fn expired_entries_drop_out() {
        let mut set = RevocationSet::new();
        set.apply(entry(1, "token", "j1", None), NOW);
        set.apply(Entry { expires_at: NOW - 1, ..entry(2, "token", "j2", None) }, NOW);
        assert_eq!(set.len(), 1);
        assert_eq!(set.seq(), 2);
        assert_eq!(set.check(ids(), NOW + 900), None);
        assert_eq!(set.prune(NOW + 900), 1);
        assert!(set.is_empty());
    }

    #[test]
    fn source_entries_block_and_lift_in_sequence_order() {
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        let mut set = RevocationSet::new();
        set.apply(entry(1, "source", "203.0.113.0/24", None), NOW);
        assert!(set.blocks(peer, NOW) && set.has_blocks());
        assert_eq!(set.check(ids(), NOW), None, "a block matches requests, not tokens");
        set.apply(entry(2, "source", "203.0.113.0/24", Some(NOW)), NOW);
        assert!(!set.blocks(peer, NOW) && !set.has_blocks());
        assert_eq!(set.seq(), 2);
    }

    #[test]
    fn snapshot_replaces_everything() {
        let mut set = RevocationSet::new();
        set.apply(entry(1, "token", "j1", None), NOW);
        set.replace(9, vec![entry(7, "session", "s2", None)], NOW);
        assert_eq!(set.check(ids(), NOW), None);
        assert_eq!(set.seq(), 9);
        assert_eq!(set.len(), 1);
    }
}
