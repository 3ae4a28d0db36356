//! Forgotten passwords through the real forms and a local SMTP sink: a single-use, 15-minute link by
//! email, the same answer whether the account exists, at most one link a minute, and a notice of the change.

use tessera_testkit::SmtpSink;

use crate::browser_flow::setup;
use crate::common::{Backend, Browser, PASSWORD, Server, hidden};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_link_by_email_sets_a_new_password_once_and_the_change_is_notified_sqlite() {
    reset_link_by_email_sets_a_new_password_once_and_the_change_is_notified(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_link_by_email_sets_a_new_password_once_and_the_change_is_notified_postgres() {
    reset_link_by_email_sets_a_new_password_once_and_the_change_is_notified(Backend::Postgres).await;
}

/// Asks for a link for `username`; the page.
async fn ask(s: &Server, username: &str) -> String {
    let browser = Browser::default();
    let form = browser.get(&s.url("/password/forgot")).await.text().await.unwrap();
    let csrf = hidden(&form, "csrf");
    let r = browser.post(&s.url("/password/forgot"), &[("csrf", &csrf), ("username", username)]).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Signs in with `password`; the status.
async fn sign_in(s: &Server, password: &str) -> u16 {
    let browser = Browser::default();
    let form = browser.get(&s.url("/login")).await.text().await.unwrap();
    let csrf = hidden(&form, "csrf");
    let fields = [("csrf", csrf.as_str()), ("return", ""), ("username", "alice"), ("password", password)];
    browser.post(&s.url("/login"), &fields).await.status().as_u16()
}

async fn reset_link_by_email_sets_a_new_password_once_and_the_change_is_notified(backend: Backend) {
    let sink = SmtpSink::start().await;
    let smtp = sink.url.clone();
    let Some(s) = Server::start_with(backend, move |c| {
        c.notify.smtp_url = smtp;
        c.notify.from = "Tessera <no-reply@example.com>".into();
    })
    .await
    else {
        return;
    };
    setup(&s).await;
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    assert!(s.state.store.set_user_email(&alice.id, Some("alice@example.com")).await.unwrap());
    s.state.directory.invalidate();

    let known = ask(&s, "alice").await;
    let unknown = ask(&s, "nobody").await;
    assert_eq!(
        known.replace(&hidden(&known, "csrf"), ""),
        unknown.replace(&hidden(&unknown, "csrf"), ""),
        "the answer does not say whether the account exists"
    );
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "one link, to alice only");
    assert_eq!(
        (mails[0].from.as_str(), mails[0].to.as_slice()),
        ("no-reply@example.com", &["alice@example.com".to_owned()][..])
    );
    let text = mails[0].text();
    let start = text.find(&format!("{}/password/reset?token=", s.base)).expect("a link in the mail");
    let link: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    assert!(link.contains("token=tsp_"), "{link}");
    ask(&s, "alice").await;
    assert_eq!(sink.mails().len(), 1, "at most one link a minute");

    // Opening the link spends nothing; the form sets the password once.
    let browser = Browser::default();
    let form = browser.get(&link).await;
    assert_eq!(
        form.headers()["referrer-policy"],
        "no-referrer",
        "the link's secret stays out of any Referer"
    );
    let form = form.text().await.unwrap();
    let token = hidden(&form, "token");
    let csrf = hidden(&form, "csrf");
    let set = |new: &'static str| {
        let (csrf, token, browser) = (csrf.clone(), token.clone(), &browser);
        let url = s.url("/password/reset");
        async move {
            let fields = [
                ("csrf", csrf.as_str()),
                ("token", token.as_str()),
                ("new_password", new),
                ("new_password_again", new),
            ];
            browser.post(&url, &fields).await
        }
    };
    assert!(set("short").await.text().await.unwrap().contains("at least 15 characters"), "the rules apply");
    let done = set("a brand new passphrase").await.text().await.unwrap();
    assert!(done.contains("Your new password is set"), "{done}");
    assert_eq!(set("another new passphrase").await.status(), 400, "a link works once");
    assert_eq!(browser.get(&link).await.status(), 400);
    assert_eq!(sign_in(&s, PASSWORD).await, 200, "the old password is gone");
    assert_eq!(sign_in(&s, "a brand new passphrase").await, 303);
    // The change is notified.
    let mails = sink.mails();
    assert_eq!(mails.len(), 2);
    assert!(
        mails[1].text().contains("Subject: Your password was changed")
            && mails[1].text().contains("Every session of yours was signed out"),
        "{}",
        mails[1].text()
    );
    let events = s.state.store.recent_events(Some("password_changed"), 5).await.unwrap();
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert_eq!(reasons, ["reset_link", "reset_link_sent"]);
    assert!(
        events.iter().all(|e| !e.detail.as_deref().unwrap_or("").contains("tsp_")),
        "the link never reaches the log"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_requests_from_one_source_are_slowed_whatever_the_account_sqlite() {
    reset_requests_from_one_source_are_slowed_whatever_the_account(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_requests_from_one_source_are_slowed_whatever_the_account_postgres() {
    reset_requests_from_one_source_are_slowed_whatever_the_account(Backend::Postgres).await;
}

/// One network asking for links to many accounts (a mail flood, or probing) is charged like failed
/// sign-ins: its free requests, then `429` with `Retry-After`, whichever names it asks for.
async fn reset_requests_from_one_source_are_slowed_whatever_the_account(backend: Backend) {
    let Some(s) = Server::start_with(backend, |c| {
        c.login.source_free_failures = 5;
        c.login.delay_base_secs = 300;
        c.login.delay_max_secs = 600;
    })
    .await
    else {
        return;
    };
    for n in 0..5 {
        let page = ask(&s, &format!("user{n}")).await;
        assert!(page.contains("If the account exists"), "request {n} is answered as usual");
    }
    let browser = Browser::default();
    let form = browser.get(&s.url("/password/forgot")).await.text().await.unwrap();
    let csrf = hidden(&form, "csrf");
    let r = browser.post(&s.url("/password/forgot"), &[("csrf", &csrf), ("username", "alice")]).await;
    assert_eq!(r.status(), 429, "the sixth request from the same source waits");
    let wait: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((250..=300).contains(&wait), "Retry-After {wait}");
    assert!(r.text().await.unwrap().contains("Too many requests from your network"));
}
