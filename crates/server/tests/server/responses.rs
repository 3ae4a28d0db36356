//! What detection responses leave behind for the user: a forced password reset stops the next sign-in
//! until a new password is set, and a step-up requirement stops the session's refreshes.

use oauth2::TokenResponse as _;
use serde_json::Value;

use crate::browser_flow::{setup, tokens};
use crate::common::{Browser, PASSWORD, Server, hidden, http};

crate::on_both_backends!(
    forced_password_reset_refuses_sign_in_until_a_new_password_is_set,
    step_up_requirement_refuses_the_sessions_refresh
);

/// Posts the login form with `password`; returns the status and the page.
async fn log_in(s: &Server, password: &str) -> (u16, String) {
    let browser = Browser::default();
    let html = browser.get(&s.url("/login")).await.text().await.unwrap();
    let csrf = hidden(&html, "csrf");
    let r = browser
        .post(
            &s.url("/login"),
            &[("csrf", &csrf), ("return", ""), ("username", "alice"), ("password", password)],
        )
        .await;
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn forced_password_reset_refuses_sign_in_until_a_new_password_is_set(s: &Server) {
    let alice = s.add_user("alice", &[]).await;
    assert_eq!(log_in(s, PASSWORD).await.0, 303, "signs in before");
    s.state.store.revoke_user(&alice.id, "detection_brute_force", true, tessera_server::now()).await.unwrap();
    s.state.directory.invalidate();
    let (_, wrong) = log_in(s, "not the password").await;
    assert!(
        wrong.contains("Invalid username or password") && !wrong.contains("must be changed"),
        "only the password's holder learns it must change"
    );
    // The right password leads to the set-new-password form, and no session yet.
    let browser = Browser::default();
    let html = browser.get(&s.url("/login")).await.text().await.unwrap();
    let csrf = hidden(&html, "csrf");
    let form = [("csrf", csrf.as_str()), ("return", ""), ("username", "alice"), ("password", PASSWORD)];
    let r = browser.post(&s.url("/login"), &form).await;
    assert_eq!(r.status(), 200);
    assert!(browser.last_set_cookies.lock().unwrap().iter().all(|c| !c.starts_with("tessera_session=")));
    let page = r.text().await.unwrap();
    assert!(page.contains("must be changed") && page.contains("autocomplete=\"new-password\""), "{page}");
    let set = |new: &'static str, again: &'static str| {
        let csrf = csrf.clone();
        let browser = &browser;
        async move {
            let form = [("csrf", csrf.as_str()), ("new_password", new), ("new_password_again", again)];
            browser.post(&s.url("/login/password"), &form).await
        }
    };
    let short = set("too short", "too short").await.text().await.unwrap();
    assert!(short.contains("at least 15 characters"), "{short}");
    let differ = set("a brand new passphrase", "a brand new passphrasf").await.text().await.unwrap();
    assert!(differ.contains("differ"), "{differ}");
    let done = set("a brand new passphrase", "a brand new passphrase").await;
    assert_eq!(done.status(), 303, "the new password, then the session");
    let changed = s.state.store.recent_events(Some("password_changed"), 5).await.unwrap();
    assert_eq!(changed[0].reason.as_deref(), Some("forced_reset"));
    assert!(!s.state.store.user_by_id(&alice.id).await.unwrap().unwrap().must_reset_password);
    assert_eq!(log_in(s, PASSWORD).await.0, 200, "the old password is gone");
    assert_eq!(log_in(s, "a brand new passphrase").await.0, 303, "a new password clears the reset");
}

async fn step_up_requirement_refuses_the_sessions_refresh(s: &Server) {
    let client = setup(s).await;
    let first = tokens(s, &client).await;
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    s.state.store.require_step_up(&alice.id, tessera_server::now()).await.unwrap();
    s.state.directory.invalidate();
    let r = http()
        .post(s.url("/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", first.refresh_token().unwrap().secret()),
            ("client_id", "spa"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "the session must sign in again");
    let rejected = s.state.store.recent_events(Some("token_rejected"), 5).await.unwrap();
    assert_eq!(rejected[0].reason.as_deref(), Some("step_up_required"));
}
