//! Login security through the real login form: throttling that holds under concurrency, the temporary
//! lock with its event and alert, and throttling that looks the same for unknown accounts.

use std::sync::Arc;

use tessera_server::Config;

use crate::common::{Backend, Browser, PASSWORD, Server, hidden};

/// Instantiates each test (taking a `Backend`) once per backend.
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::common::Backend::Postgres).await;
                }
            )*
        }
    };
}

per_backend!(
    two_hundred_parallel_wrong_passwords_reach_the_hash_at_most_lock_threshold_times,
    lock_refuses_even_the_right_password_and_raises_login_locked_with_an_alert,
    an_unknown_account_is_throttled_and_locked_exactly_like_a_real_one,
    a_source_is_locked_across_accounts,
    a_correct_password_clears_the_accounts_failures,
);

/// A browser with the login form's CSRF token.
async fn login_browser(s: &Server) -> (Browser, String) {
    let browser = Browser::default();
    let html = browser.get(&s.url("/login")).await.text().await.unwrap();
    let csrf = hidden(&html, "csrf");
    (browser, csrf)
}

/// Posts the login form; the status, `Retry-After` and page.
async fn attempt(
    s: &Server,
    browser: &Browser,
    csrf: &str,
    user: &str,
    password: &str,
) -> (u16, Option<i64>, String) {
    let r = browser
        .post(&s.url("/login"), &[("csrf", csrf), ("return", ""), ("username", user), ("password", password)])
        .await;
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    (r.status().as_u16(), retry, r.text().await.unwrap())
}

/// The value of a counter in `/metrics`.
async fn metric(s: &Server, name: &str) -> u64 {
    let text = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Waits until a `detection_raised` event of `rule` is recorded; its explanation.
async fn detection(s: &Server, rule: &str) -> String {
    for _ in 0..100 {
        let raised = s.state.store.recent_events(Some("detection_raised"), 50).await.unwrap();
        if let Some(e) = raised.iter().find(|e| e.reason.as_deref() == Some(rule)) {
            return e.detail.clone().unwrap_or_default();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no {rule} detection");
}

/// No delays, three failures lock the account for 15 minutes, and the source's limit out of the way.
fn three_strikes(c: &mut Config) {
    c.login.delay_base_secs = 0;
    c.login.account_free_failures = 0;
    c.login.account_lock_failures = 3;
    c.login.source_free_failures = 1000;
    c.login.source_lock_failures = 1000;
}

/// 200 wrong passwords posted at once for `user`; the number of each status.
async fn burst(s: &Server, user: &str) -> (usize, usize) {
    let (browser, csrf) = login_browser(s).await;
    let browser = Arc::new(browser);
    let mut tasks = Vec::new();
    for n in 0..200 {
        let (browser, csrf, url) = (Arc::clone(&browser), csrf.clone(), s.url("/login"));
        let user = user.to_owned();
        tasks.push(tokio::spawn(async move {
            let password = format!("wrong password {n}");
            let form =
                [("csrf", csrf.as_str()), ("return", ""), ("username", &user), ("password", &password)];
            browser.post(&url, &form).await.status().as_u16()
        }));
    }
    let (mut checked, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            200 => checked += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (checked, refused)
}

async fn two_hundred_parallel_wrong_passwords_reach_the_hash_at_most_lock_threshold_times(backend: Backend) {
    let Some(s) = Server::start_with(backend, |c| {
        // A first delay long enough that no attempt of this test outlives it, however slow the machine.
        c.login.delay_base_secs = 300;
        c.login.delay_max_secs = 600;
        c.login.source_free_failures = 1000;
        c.login.source_lock_failures = 1000;
    })
    .await
    else {
        return;
    };
    s.add_user("alice", &[]).await;
    let lock = u64::from(s.state.config.login.account_lock_failures);
    let (checked, refused) = burst(&s, "alice").await;
    let hashed = metric(&s, "tessera_password_checks_total").await;
    assert!(hashed <= lock, "{hashed} passwords checked against the hash; at most {lock} may be");
    assert_eq!(hashed, checked as u64, "every answered attempt was checked, every other refused");
    assert_eq!(refused, 200 - checked);
    assert!(refused >= 190, "{refused} refused");
    assert_eq!(metric(&s, "tessera_logins_throttled_total").await, refused as u64);
    // The right password is refused too while the account waits: the burst bought the attacker nothing.
    let (browser, csrf) = login_browser(&s).await;
    let (status, retry, page) = attempt(&s, &browser, &csrf, "alice", PASSWORD).await;
    assert_eq!(status, 429);
    assert!(retry.unwrap() > 200, "{retry:?}");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
    let throttled = s.state.store.recent_events(Some("login_failure"), 300).await.unwrap();
    assert_eq!(throttled.iter().filter(|e| e.reason.as_deref() == Some("throttled")).count(), refused + 1);
    s.finish().await;
}

async fn lock_refuses_even_the_right_password_and_raises_login_locked_with_an_alert(backend: Backend) {
    let Some(s) = Server::start_with(backend, three_strikes).await else { return };
    let alice = s.add_user("alice", &[]).await;
    let (browser, csrf) = login_browser(&s).await;
    for _ in 0..3 {
        assert_eq!(attempt(&s, &browser, &csrf, "alice", "not it").await.0, 200);
    }
    let (status, retry, page) = attempt(&s, &browser, &csrf, "alice", PASSWORD).await;
    assert_eq!(status, 429, "locked: the right password is not even checked");
    let retry = retry.unwrap();
    assert!((890..=900).contains(&retry), "Retry-After {retry}");
    assert!(page.contains("Try again in 15 minutes"), "{page}");
    assert_eq!(metric(&s, "tessera_password_checks_total").await, 3);
    let locked = s.state.store.recent_events(Some("login_locked"), 5).await.unwrap();
    assert_eq!(locked.len(), 1, "one lock, one event");
    assert_eq!(
        (locked[0].sub.as_deref(), locked[0].reason.as_deref()),
        (Some(alice.id.as_str()), Some("account"))
    );
    let explanation = detection(&s, "login_locked").await;
    assert!(explanation.contains("after 3 failed attempts"), "{explanation}");
    // The responses are written just after the detection: wait for them as for the detection.
    let alerted = |e: &tessera_store::Event| {
        e.reason.as_deref() == Some("alert")
            && e.detail.as_deref().is_some_and(|d| d.contains("\"rule\":\"login_locked\""))
    };
    let mut responses = Vec::new();
    for _ in 0..100 {
        responses = s.state.store.recent_events(Some("response_taken"), 10).await.unwrap();
        if responses.iter().any(alerted) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(responses.iter().any(alerted), "the lock is alerted: {responses:?}");
    s.finish().await;
}

async fn an_unknown_account_is_throttled_and_locked_exactly_like_a_real_one(backend: Backend) {
    let Some(s) = Server::start_with(backend, three_strikes).await else { return };
    s.add_user("alice", &[]).await;
    let mut answers = Vec::new();
    for user in ["alice", "mallory"] {
        let (browser, csrf) = login_browser(&s).await;
        let mut seen = Vec::new();
        for password in ["guess one", "guess two", "guess three", "guess four"] {
            let (status, retry, page) = attempt(&s, &browser, &csrf, user, password).await;
            seen.push((status, retry.map(|r| r > 850), page.replace(user, "").replace(&csrf, "")));
        }
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1], "an unknown name must look exactly like a real one");
    assert_eq!(answers[0].iter().map(|(status, ..)| *status).collect::<Vec<_>>(), [200, 200, 200, 429]);
    let locked = s.state.store.recent_events(Some("login_locked"), 5).await.unwrap();
    assert_eq!(locked.len(), 2);
    assert!(locked.iter().any(|e| e.sub.is_none()), "the unknown name's lock has no user");
    s.finish().await;
}

async fn a_source_is_locked_across_accounts(backend: Backend) {
    let Some(s) = Server::start_with(backend, |c| {
        c.login.delay_base_secs = 0;
        c.login.source_free_failures = 0;
        c.login.source_lock_failures = 5;
    })
    .await
    else {
        return;
    };
    s.add_user("alice", &[]).await;
    let (browser, csrf) = login_browser(&s).await;
    for n in 0..5 {
        assert_eq!(attempt(&s, &browser, &csrf, &format!("user{n}"), "guess").await.0, 200);
    }
    let (status, ..) = attempt(&s, &browser, &csrf, "alice", PASSWORD).await;
    assert_eq!(status, 429, "the source is locked, whichever account it tries next");
    let locked = s.state.store.recent_events(Some("login_locked"), 5).await.unwrap();
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0].reason.as_deref(), Some("source"));
    assert_eq!(locked[0].ip.as_deref(), Some("127.0.0.1"));
    let explanation = detection(&s, "login_locked").await;
    assert!(explanation.contains("Sign-in from 127.0.0.1"), "{explanation}");
    s.finish().await;
}

async fn a_correct_password_clears_the_accounts_failures(backend: Backend) {
    let Some(s) = Server::start_with(backend, three_strikes).await else { return };
    s.add_user("alice", &[]).await;
    for _ in 0..3 {
        let (browser, csrf) = login_browser(&s).await;
        for _ in 0..2 {
            assert_eq!(attempt(&s, &browser, &csrf, "alice", "typo").await.0, 200);
        }
        assert_eq!(
            attempt(&s, &browser, &csrf, "alice", PASSWORD).await.0,
            303,
            "signed in; failures forgotten"
        );
    }
    assert!(s.state.store.recent_events(Some("login_locked"), 5).await.unwrap().is_empty());
    s.finish().await;
}
