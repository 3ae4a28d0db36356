//! Login throttling: the pure decision whether one more password attempt may be checked against its hash.
//!
//! A counter is kept per account (the typed username, so an unknown name is throttled exactly like a real
//! one) and per source address. An attempt is *reserved* before the password hash is computed: reserving
//! counts it as a failure in advance and sets the earliest time of the next attempt, so a burst of
//! concurrent attempts is cut off after the first few, before any of them costs a hash. A success clears
//! the account's counter and gives the source its attempt back.
//!
//! After `free` failures each further attempt waits twice as long as the one before (`delay_base_secs`,
//! doubling, at most `delay_max_secs`); the `lock_after`-th failure locks the counter for `lock_secs`. A
//! counter untouched for `window_secs` (and not locked) starts again from zero.

use serde::{Deserialize, Serialize};

/// The thresholds of one kind of counter (per account, or per source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures allowed without any delay.
    pub free: u32,
    /// The failure that locks the counter (at least `free`).
    pub lock_after: u32,
}

/// The login throttle's configuration (`[login]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Failures of one account (typed username) allowed without any delay.
    pub account_free_failures: u32,
    /// The failure of one account that locks it.
    pub account_lock_failures: u32,
    /// Failures from one source address allowed without any delay.
    pub source_free_failures: u32,
    /// The failure from one source address that locks it.
    pub source_lock_failures: u32,
    /// The first delay after the free failures, seconds; it doubles with each further failure. 0: no delay.
    pub delay_base_secs: i64,
    /// The longest delay between two attempts, seconds.
    pub delay_max_secs: i64,
    /// How long a lock lasts, seconds.
    pub lock_secs: i64,
    /// A counter without a failure for this long (and not locked) starts again, seconds.
    pub window_secs: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            account_free_failures: 3,
            account_lock_failures: 10,
            source_free_failures: 20,
            source_lock_failures: 100,
            delay_base_secs: 1,
            delay_max_secs: 60,
            lock_secs: 900,
            window_secs: 900,
        }
    }
}

impl Policy {
    /// The per-account thresholds.
    pub fn account(&self) -> Limits {
        Limits { free: self.account_free_failures, lock_after: self.account_lock_failures }
    }

    /// The per-source thresholds.
    pub fn source(&self) -> Limits {
        Limits { free: self.source_free_failures, lock_after: self.source_lock_failures }
    }

    /// Checks the values; the error names the key.
    ///
    /// # Errors
    /// The first key whose value cannot work.
    pub fn check(&self) -> Result<(), String> {
        for (name, l) in [("account", self.account()), ("source", self.source())] {
            if l.lock_after == 0 || l.free > l.lock_after {
                return Err(format!(
                    "login.{name}_lock_failures: must be at least 1 and at least {name}_free_failures"
                ));
            }
        }
        for (key, value) in [
            ("delay_base_secs", self.delay_base_secs),
            ("delay_max_secs", self.delay_max_secs),
            ("lock_secs", self.lock_secs),
            ("window_secs", self.window_secs),
        ] {
            if !(0..=30 * 86_400).contains(&value) {
                return Err(format!("login.{key}: must be between 0 and 2592000"));
            }
        }
        if self.lock_secs == 0 || self.window_secs == 0 {
            return Err("login.lock_secs and login.window_secs must be at least 1".into());
        }
        Ok(())
    }

    /// The wait before the attempt after `failures` failures.
    fn delay(&self, limits: Limits, failures: u32) -> i64 {
        if failures < limits.free || self.delay_base_secs == 0 {
            return 0;
        }
        let doublings = (failures - limits.free).min(30);
        self.delay_base_secs.saturating_mul(1_i64 << doublings).min(self.delay_max_secs)
    }
}

/// One stored counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Failures counted (reserved attempts included).
    pub failures: u32,
    /// No attempt before this time.
    pub next_at: i64,
    /// Locked until this time (0: not locked).
    pub locked_until: i64,
    /// The last reserved attempt.
    pub last_at: i64,
}

/// Whether an attempt may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the password; store `counter` first. `locks` is true when this attempt, if it fails, is the one
    /// that locks the counter.
    Attempt {
        /// The counter to store.
        counter: Counter,
        /// A failure of this attempt locks the counter.
        locks: bool,
    },
    /// Refuse without checking the password.
    Refused {
        /// The earliest time another attempt may be made.
        retry_at: i64,
        /// The counter is locked (not only delayed).
        locked: bool,
    },
}

/// Reserves one attempt against `current` (none: no counter yet) at `now`.
pub fn reserve(policy: &Policy, limits: Limits, current: Option<Counter>, now: i64) -> Verdict {
    let current =
        current.filter(|c| c.locked_until > now || c.last_at > now - policy.window_secs).unwrap_or_default();
    if current.locked_until > now {
        return Verdict::Refused { retry_at: current.locked_until, locked: true };
    }
    if current.failures >= limits.lock_after {
        // The lock has passed: a fresh start, like a counter left alone for the window.
        return reserve(policy, limits, None, now);
    }
    if current.next_at > now {
        return Verdict::Refused { retry_at: current.next_at, locked: false };
    }
    let failures = current.failures + 1;
    let locks = failures >= limits.lock_after;
    let counter = Counter {
        failures,
        next_at: now + policy.delay(limits, failures),
        locked_until: if locks { now + policy.lock_secs } else { 0 },
        last_at: now,
    };
    Verdict::Attempt { counter, locks }
}

/// The counter after a successful attempt gave its reserved failure back (the source's counter; the
/// account's is cleared). `None`: nothing left to keep.
pub fn forgive(policy: &Policy, limits: Limits, current: Counter) -> Option<Counter> {
    let failures = current.failures.saturating_sub(1);
    (failures > 0).then(|| Counter {
        failures,
        next_at: current.last_at + policy.delay(limits, failures),
        locked_until: current.locked_until,
        last_at: current.last_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn attempt(p: &Policy, c: Option<Counter>, now: i64) -> Counter {
        match reserve(p, p.account(), c, now) {
            Verdict::Attempt { counter, .. } => counter,
            other => panic!("refused: {other:?}"),
        }
    }

    #[test]
    fn free_failures_then_doubling_delays_then_a_lock() {
        let p = Policy::default();
        let mut c = None;
        for _ in 0..2 {
            let n = attempt(&p, c, NOW);
            assert_eq!(n.next_at, NOW, "no delay for the free failures");
            c = Some(n);
        }
        // The third failure reaches `free`: the next attempt waits 1 s, then 2, 4, 8, …
        let mut at = NOW;
        let mut waits = Vec::new();
        for _ in 2..9 {
            let n = attempt(&p, c, at);
            waits.push(n.next_at - at);
            at = n.next_at;
            c = Some(n);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60]);
        match reserve(&p, p.account(), c, at) {
            Verdict::Attempt { counter, locks } => {
                assert!(locks, "the tenth failure locks");
                assert_eq!(counter.locked_until, at + 900);
                c = Some(counter);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reserve(&p, p.account(), c, at + 899),
            Verdict::Refused { retry_at: at + 900, locked: true }
        );
        // Once the lock has passed the account starts again.
        assert_eq!(attempt(&p, c, at + 900).failures, 1);
    }

    #[test]
    fn a_burst_at_one_instant_gets_only_the_free_attempts() {
        let p = Policy::default();
        let mut c = None;
        let mut allowed = 0;
        for _ in 0..200 {
            if let Verdict::Attempt { counter, .. } = reserve(&p, p.account(), c, NOW) {
                allowed += 1;
                c = Some(counter);
            }
        }
        assert_eq!(allowed, 3);
        assert_eq!(reserve(&p, p.account(), c, NOW), Verdict::Refused { retry_at: NOW + 1, locked: false });
    }

    #[test]
    fn a_quiet_window_forgets_failures_and_a_success_gives_one_back() {
        let p = Policy::default();
        let mut c = None;
        for _ in 0..3 {
            c = Some(attempt(&p, c, NOW));
        }
        assert_eq!(attempt(&p, c, NOW + 901).failures, 1, "forgotten after the window");
        let kept = forgive(&p, p.source(), c.unwrap()).unwrap();
        assert_eq!(kept.failures, 2);
        assert_eq!(forgive(&p, p.source(), Counter { failures: 1, ..Counter::default() }), None);
    }

    #[test]
    fn zero_delay_locks_after_exactly_lock_after_failures() {
        let p = Policy {
            delay_base_secs: 0,
            account_free_failures: 0,
            account_lock_failures: 3,
            ..Policy::default()
        };
        let mut c = None;
        let mut locks = Vec::new();
        for _ in 0..3 {
            match reserve(&p, p.account(), c, NOW) {
                Verdict::Attempt { counter, locks: l } => {
                    locks.push(l);
                    c = Some(counter);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(locks, [false, false, true]);
        assert!(matches!(reserve(&p, p.account(), c, NOW), Verdict::Refused { locked: true, .. }));
    }

    #[test]
    fn impossible_limits_are_refused_by_name() {
        let p = Policy { account_free_failures: 5, account_lock_failures: 2, ..Policy::default() };
        assert!(p.check().unwrap_err().starts_with("login.account"));
        assert!(Policy::default().check().is_ok());
    }
}
