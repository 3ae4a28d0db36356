//! The detector: follows the audit log, runs the detection rules (`tessera_core::detect`) over a sliding
//! window of recent events, raises each finding once across every node, records it, runs its responses
//! (`[responses]`), and queues its alerts.
//!
//! Each round reads the events written since the last one, then runs the rules only over the window's
//! events that share a session, token, user or source with the new ones, so a quiet log costs nothing and a
//! busy one costs in proportion to what changed. With a GeoIP database configured, each new sign-in is also
//! judged against the user's sign-ins of the last `login_history_days` (`impossible_travel`, `new_device`),
//! read from the audit log by user. A finding is raised by the node that first takes its key in
//! the store's `detections` table (shared on PostgreSQL), so two nodes never both respond; the
//! claim queues the finding's alerts in the same transaction, so a node that dies right after it still
//! alerts.
//!
//! A fast lane runs beside it, on its own task: it reads only the kinds that are findings on their own
//! ([`CERTAIN`]: a reused refresh token, a locked account) and raises them at once. Under a flood of usage
//! events from busy guards a windowed round can take seconds, and certain theft must not wait behind it;
//! whichever lane raises a finding first takes its key, and the other finds it taken.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde_json::json;
use tessera_core::detect::{self, Detection, Rule, Severity, Thresholds};
use tessera_core::geo::Locator;
use tessera_core::{Event, EventKind, TokenHash};
use tessera_store::{AuditQuery, StoreError};

use crate::response::{self, Action};
use crate::{AppState, alerts, incident};

/// How often the detector reads new events: a response runs within about this long of its event.
pub const POLL: Duration = Duration::from_millis(250);
/// The most events kept in the window; past it the oldest go first (and a warning says so).
const MAX_WINDOW: usize = 500_000;
/// The most events read in one round.
const MAX_ROUND: i64 = 50_000;
/// The most earlier sign-ins a new one is compared with.
const MAX_HISTORY: i64 = 1_000;

/// The kinds the rules read; everything else is skipped.
const WATCHED: [EventKind; 9] = [
    EventKind::RefreshTokenReuse,
    EventKind::LoginLocked,
    EventKind::TokenIssued,
    EventKind::TokenRefreshed,
    EventKind::TokenUsed,
    EventKind::TokenRejected,
    EventKind::LateralMovementAttempt,
    EventKind::LoginFailure,
    EventKind::LoginSuccess,
];

/// The kinds that are a finding on their own, whatever else the window holds.
const CERTAIN: [EventKind; 2] = [EventKind::RefreshTokenReuse, EventKind::LoginLocked];

/// The fast lane's place in the log.
#[derive(Debug)]
struct FastLane {
    after: i64,
}

impl FastLane {
    /// Raises the findings of the [`CERTAIN`] events written since the last call.
    async fn round(&mut self, state: &AppState, thresholds: &Thresholds, now: i64) -> Result<(), StoreError> {
        // Every event up to the head is committed when the head is read: the lane can move past them all.
        let head = state.store.audit_state().await?.head_seq;
        if head <= self.after {
            return Ok(());
        }
        let query = AuditQuery {
            after_seq: self.after,
            kinds: CERTAIN.iter().map(|k| k.name().to_owned()).collect(),
            limit: MAX_ROUND,
            ..AuditQuery::default()
        };
        let found = state.store.audit_events(&query).await?;
        let full = i64::try_from(found.len()).unwrap_or(i64::MAX) >= MAX_ROUND;
        let last = found.last().map_or(self.after, |r| r.seq);
        let events: Vec<(i64, Event)> = found.into_iter().map(|r| (r.seq, r.event)).collect();
        let until = now + thresholds.window_secs;
        for finding in detect::detect(&events, now, thresholds, None) {
            raise(state, &finding, until, now).await?;
        }
        // Only once all are raised: a failed round is read again, and what it did raise is then found taken.
        self.after = if full { last } else { last.max(head) };
        Ok(())
    }
}

/// The detector's memory: where it is in the log, and the recent events the rules look at.
#[derive(Debug)]
pub struct Detector {
    after: i64,
    /// The window's events, in sequence order.
    window: VecDeque<(i64, Event)>,
    /// For each key (session, token, user, source) the window's events that carry it, in sequence order:
    /// a round finds the events related to what is new without walking the whole window.
    index: HashMap<String, VecDeque<i64>>,
    thresholds: Thresholds,
    trimmed: bool,
    /// Keys this node already raised or saw taken, until when: no store round trip for a finding that the
    /// next events only confirm.
    known: HashMap<String, i64>,
}

impl Detector {
    /// Starts at the head of the log, with the window filled from the events of the last
    /// `thresholds.window_secs`.
    ///
    /// # Errors
    /// The store's error.
    pub async fn start(state: &AppState, thresholds: Thresholds, now: i64) -> Result<Self, StoreError> {
        let head = state.store.audit_state().await?.head_seq;
        let query = AuditQuery {
            since: Some(now - thresholds.window_secs),
            kinds: WATCHED.iter().map(|k| k.name().to_owned()).collect(),
            newest: true,
            limit: i64::try_from(MAX_WINDOW).unwrap_or(i64::MAX),
            ..AuditQuery::default()
        };
        let recent = state.store.audit_events(&query).await?;
        let mut detector = Detector {
            after: head,
            window: VecDeque::new(),
            index: HashMap::new(),
            thresholds,
            trimmed: false,
            known: HashMap::new(),
        };
        for r in recent.into_iter().filter(|r| r.seq <= head) {
            detector.push(r.seq, r.event);
        }
        Ok(detector)
    }

    fn push(&mut self, seq: i64, event: Event) {
        for key in detect::group_keys(&event) {
            self.index.entry(key).or_default().push_back(seq);
        }
        self.window.push_back((seq, event));
    }

    fn pop_front(&mut self) {
        let Some((seq, event)) = self.window.pop_front() else { return };
        for key in detect::group_keys(&event) {
            if let Some(seqs) = self.index.get_mut(&key) {
                while seqs.front().is_some_and(|s| *s <= seq) {
                    seqs.pop_front();
                }
                if seqs.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
    }

    /// The window's events that carry any of `keys`, in sequence order.
    fn related(&self, keys: &HashSet<String>) -> Vec<&(i64, Event)> {
        let seqs: std::collections::BTreeSet<i64> =
            keys.iter().filter_map(|k| self.index.get(k)).flatten().copied().collect();
        seqs.into_iter()
            .filter_map(|seq| {
                let at = self.window.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
                self.window.get(at)
            })
            .collect()
    }

    /// Takes `new` events into the window, lets the oldest go, and runs the rules over the window's events
    /// related to the new ones. Returns the findings and the new sign-ins (for the GeoIP rules).
    fn absorb(
        &mut self,
        new: Vec<tessera_store::AuditRecord>,
        now: i64,
        geo: Option<&dyn Locator>,
    ) -> (Vec<Detection>, Vec<(i64, Event)>) {
        let mut touched: HashSet<String> = HashSet::new();
        let mut logins = Vec::new();
        for r in new {
            if geo.is_some() && r.event.kind == EventKind::LoginSuccess.name() {
                logins.push((r.seq, r.event.clone()));
            }
            if WATCHED.iter().any(|k| k.name() == r.event.kind) {
                touched.extend(detect::group_keys(&r.event));
                self.push(r.seq, r.event);
            }
        }
        while self.window.front().is_some_and(|(_, e)| e.at <= now - self.thresholds.window_secs)
            || self.window.len() > MAX_WINDOW
        {
            if self.window.len() > MAX_WINDOW && !self.trimmed {
                self.trimmed = true;
                tracing::warn!(
                    max = MAX_WINDOW,
                    "detection window full: the oldest events are dropped early"
                );
            }
            self.pop_front();
        }
        if touched.is_empty() {
            return (Vec::new(), logins);
        }
        let found = detect::detect_refs(&self.related(&touched), now, &self.thresholds, geo);
        (found, logins)
    }

    /// Reads the new events, runs the rules where they changed something, and raises what is new. Returns
    /// the detections raised by this node.
    ///
    /// # Errors
    /// The store's error; the events are read again next round.
    pub async fn round(&mut self, state: &AppState, now: i64) -> Result<Vec<Detection>, StoreError> {
        let query = AuditQuery { after_seq: self.after, limit: MAX_ROUND, ..AuditQuery::default() };
        let new = state.store.audit_events(&query).await?;
        let Some(last) = new.last() else { return Ok(Vec::new()) };
        self.after = last.seq;
        let geo: Option<&dyn Locator> = state.geo.as_ref().map(|g| g as &dyn Locator);
        // The window's upkeep and the rules are CPU work that grows with the window: under a flood of
        // guards' usage, hundreds of milliseconds. Done off the runtime's workers, so that it holds up
        // neither requests nor the store's writers (whose open transactions would wait on it).
        let (findings, logins) = off_workers(|| self.absorb(new, now, geo));
        let mut raised = Vec::new();
        self.known.retain(|_, until| *until > now);
        for found in findings {
            self.raise_once(state, found, now, &mut raised).await?;
        }
        for login in &logins {
            for found in self.login_rules(state, login).await? {
                self.raise_once(state, found, now, &mut raised).await?;
            }
        }
        Ok(raised)
    }

    /// Raises `found` unless this node or another already did: once per key, across nodes and restarts,
    /// for as long as its evidence is in the window.
    async fn raise_once(
        &mut self,
        state: &AppState,
        found: Detection,
        now: i64,
        raised: &mut Vec<Detection>,
    ) -> Result<(), StoreError> {
        let until = now + self.thresholds.window_secs;
        if self.known.insert(found.key(), until).is_some() {
            return Ok(());
        }
        if raise(state, &found, until, now).await? {
            raised.push(found);
        }
        Ok(())
    }

    /// `impossible_travel` and `new_device` for one sign-in, against the user's earlier sign-ins.
    async fn login_rules(
        &self,
        state: &AppState,
        login: &(i64, Event),
    ) -> Result<Vec<Detection>, StoreError> {
        let Some(sub) = login.1.sub.clone() else { return Ok(Vec::new()) };
        let query = AuditQuery {
            sub: Some(sub),
            kinds: vec![EventKind::LoginSuccess.name().to_owned()],
            since: Some(login.1.at - self.thresholds.login_history_days.max(0).saturating_mul(86_400)),
            until: Some(login.1.at + 1),
            newest: true,
            limit: MAX_HISTORY,
            ..AuditQuery::default()
        };
        let history: Vec<(i64, Event)> =
            state.store.audit_events(&query).await?.into_iter().map(|r| (r.seq, r.event)).collect();
        Ok(detect::login_anomalies(login, &history, &self.thresholds))
    }
}

/// Runs CPU-heavy `work` without holding up the runtime's other tasks: on a multi-threaded runtime the
/// worker first hands its queue to another thread (`block_in_place`); a single-threaded runtime (tests) runs
/// it in place.
fn off_workers<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// An event of `kind` about what `d` found: its user, session, token and source.
fn about(d: &Detection, kind: EventKind, now: i64) -> Event {
    Event {
        sub: d.sub.clone(),
        sid: d.sid.clone(),
        jti: d.jti.clone(),
        ip: d.ip.clone(),
        ..Event::new(kind, now)
    }
}

/// Claims a finding (once across nodes) with its alerts queued on hold, records it, runs its responses
/// (each its own `response_taken` event), then releases the alerts with the outcomes. `false` if another
/// node or an earlier round already raised it.
///
/// After the claim, the writes that do not depend on each other run at once: the responses (containment
/// first) do not wait for the `detection_raised` event or for the incident, and what the responses did goes
/// to the incident, the audit log (one append) and the alerts together. Under a busy store every write
/// waits its turn, and a theft's containment must not queue behind its own record-keeping.
async fn raise(state: &AppState, d: &Detection, until: i64, now: i64) -> Result<bool, StoreError> {
    let rule = Rule::from_name(d.rule).unwrap_or(Rule::RefreshTokenReuse);
    let actions = state.config.responses.for_rule(rule);
    let (alerts, queued) =
        alerts::plan(state, d, actions, now, || crate::crypto::sortable_id(now).map_err(|e| e.to_string()))
            .map_err(StoreError::Unavailable)?;
    if !state.store.raise_detection(&TokenHash::of(&d.key()), d.rule, until, &alerts, now).await? {
        return Ok(false);
    }
    state.metrics.detection(d.rule);
    let detail = json!({
        "key": d.key(),
        "severity": d.severity.name(),
        "subject": d.subject,
        "explanation": d.explanation,
        "evidence": d.evidence,
        "actions": actions.iter().map(|a| a.name()).collect::<Vec<_>>(),
        "alerts": alerts.iter().map(|a| json!({ "id": a.id, "sink": a.sink })).collect::<Vec<_>>(),
    });
    let recorded = state.event(Event {
        reason: Some(d.rule.to_owned()),
        outcome: Some(d.severity.name().to_owned()),
        detail: Some(detail.to_string()),
        ..about(d, EventKind::DetectionRaised, now)
    });
    // A finding of high severity or worse about a user or session is an incident: opened (or joined) now,
    // so that its responses are recorded on it.
    let opened = async {
        if d.severity < Severity::High && !actions.contains(&Action::Contain) {
            return None;
        }
        match incident::open_for_detection(state.store.as_ref(), d, true, now).await {
            Ok(found) => found.map(|i| i.id),
            Err(e) => {
                tracing::error!(error = %e, rule = d.rule, "cannot open the incident for a detection");
                None
            }
        }
    };
    // Containment first, the alert last: it reports what the others did.
    let responses = async {
        let mut taken = Vec::with_capacity(actions.len());
        for action in actions.iter().filter(|a| **a != Action::Alert) {
            let outcome = response::run(state, *action, d, now).await;
            taken.push(alerts::Taken { action: action.name(), result: outcome });
        }
        taken
    };
    // Biased: the `detection_raised` event is queued on the audit writer (its first poll) before any event a
    // response writes, so the log keeps cause before effect.
    let ((), incident, mut taken) = tokio::join!(biased; recorded, opened, responses);
    if actions.contains(&Action::Alert) {
        tracing::warn!(
            rule = d.rule,
            severity = d.severity.name(),
            subject = %d.subject,
            evidence = ?d.evidence,
            responses = ?taken,
            "detection: {}",
            d.explanation
        );
        let result = if queued.is_empty() { "sent:log" } else { "queued" };
        taken.push(alerts::Taken { action: Action::Alert.name(), result });
    }
    let on_incident = async {
        let Some(id) = incident else { return };
        let target = d.key();
        for t in &taken {
            if let Err(e) =
                state.store.record_incident_action(id, "detector", t.action, &target, t.result, now).await
            {
                tracing::error!(error = %e, incident = id, "cannot record a response on its incident");
            }
        }
    };
    let events: Vec<Event> = taken
        .iter()
        .map(|t| {
            let detail = json!({ "detection": d.key(), "rule": d.rule, "result": t.result });
            Event {
                reason: Some(t.action.to_owned()),
                outcome: Some(t.result.to_owned()),
                actor: Some("detector".into()),
                detail: Some(detail.to_string()),
                ..about(d, EventKind::ResponseTaken, now)
            }
        })
        .collect();
    let released = async {
        if !queued.is_empty() {
            alerts::release(state, &queued, d, &taken, now).await;
        }
    };
    tokio::join!(on_incident, state.events(&events), released);
    for t in &taken {
        state.metrics.response(t.action);
    }
    Ok(true)
}

/// Runs the detector until `stop`: a round every [`POLL`].
pub async fn run(state: std::sync::Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let thresholds = state.config.detection.clone();
    let mut detector = loop {
        match Detector::start(&state, thresholds.clone(), crate::now()).await {
            Ok(d) => break d,
            Err(e) => {
                tracing::warn!(error = %e, "detector cannot read the audit log; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let mut lane = FastLane { after: detector.after };
    let fast_state = std::sync::Arc::clone(&state);
    let mut fast_stop = stop.clone();
    let fast = tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = fast_stop.changed() => return,
            }
            if let Err(e) = lane.round(&fast_state, &thresholds, crate::now()).await {
                tracing::warn!(error = %e, "detector fast lane round failed");
            }
        }
    });
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = detector.round(&state, crate::now()).await {
            tracing::warn!(error = %e, "detector round failed");
        }
    }
    let _ = fast.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(sid: &str, ip: &str, at: i64) -> Event {
        Event { sid: Some(sid.into()), ip: Some(ip.into()), ..Event::new(EventKind::TokenUsed, at) }
    }

    fn rejected(ip: &str, at: i64) -> Event {
        Event {
            ip: Some(ip.into()),
            reason: Some("bad_signature".into()),
            ..Event::new(EventKind::TokenRejected, at)
        }
    }

    fn empty() -> Detector {
        Detector {
            after: 0,
            window: VecDeque::new(),
            index: HashMap::new(),
            thresholds: Thresholds::default(),
            trimmed: false,
            known: HashMap::new(),
        }
    }

    fn seqs(found: Vec<&(i64, Event)>) -> Vec<i64> {
        found.into_iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn window_index_finds_related_events_and_forgets_what_leaves() {
        let mut d = empty();
        d.push(1, used("s1", "192.0.2.1", 100));
        d.push(2, rejected("192.0.2.1", 101));
        d.push(3, used("s3", "198.51.100.1", 102));
        let touched: HashSet<String> = ["sid:s1".to_owned()].into();
        assert_eq!(seqs(d.related(&touched)), [1]);
        let touched: HashSet<String> = ["ip:192.0.2.1".to_owned(), "sid:s3".to_owned()].into();
        assert_eq!(seqs(d.related(&touched)), [2, 3], "in sequence order, each once");
        d.pop_front();
        assert_eq!(seqs(d.related(&touched)), [2, 3]);
        assert!(!d.index.contains_key("sid:s1"), "a key with no event left is dropped");
        d.pop_front();
        d.pop_front();
        assert!(d.index.is_empty() && d.window.is_empty());
    }

    #[test]
    fn a_busy_client_or_source_does_not_pull_the_whole_window_into_a_round() {
        let mut d = empty();
        // A machine client asking for a token again and again: one address, one `sub`, a token each time.
        let issued = |jti: String, at| Event {
            jti: Some(jti),
            sub: Some("app".into()),
            client_id: Some("app".into()),
            ip: Some("127.0.0.1".into()),
            ..Event::new(EventKind::TokenIssued, at)
        };
        for seq in 1..=1000 {
            d.push(seq, issued(format!("t{seq}"), 100));
        }
        let new = issued("t1001".into(), 101);
        let touched: HashSet<String> = detect::group_keys(&new).into_iter().collect();
        d.push(1001, new);
        assert_eq!(seqs(d.related(&touched)), [1001], "only the new token's own events");
    }

    #[test]
    fn failed_sign_ins_are_related_by_source_and_by_account_even_for_unknown_names() {
        let failed = |ip: &str, sub: Option<&str>, name: &str| Event {
            ip: Some(ip.into()),
            sub: sub.map(str::to_owned),
            detail: Some(serde_json::json!({ "username_pseudonym": name }).to_string()),
            ..Event::new(EventKind::LoginFailure, 100)
        };
        let mut d = empty();
        d.push(1, failed("192.0.2.1", None, "p-alice"));
        d.push(2, failed("198.51.100.7", None, "p-alice"));
        d.push(3, failed("192.0.2.1", Some("u-bob"), "p-bob"));
        let from_one_source: HashSet<String> =
            detect::group_keys(&failed("192.0.2.1", None, "p-carol")).into_iter().collect();
        assert_eq!(
            seqs(d.related(&from_one_source)),
            [1, 3],
            "credential stuffing: one source, many accounts"
        );
        let one_name: HashSet<String> =
            detect::group_keys(&failed("203.0.113.9", None, "p-alice")).into_iter().collect();
        assert_eq!(seqs(d.related(&one_name)), [1, 2], "brute force on one name from many sources");
    }
}
