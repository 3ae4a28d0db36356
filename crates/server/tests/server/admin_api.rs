//! The admin API: the incident operations over HTTP, only for an admin token (audience `tessera-admin`, role
//! `admin`), with RFC 6750 answers for anything else and JSON errors that say what was wrong.

use serde_json::{Value, json};
use tessera_server::issue::AccessGrant;

use crate::common::Server;

/// An access token for `user` with `roles`, for `audience`.
fn token(s: &Server, user: &str, roles: &[&str], audience: &str) -> String {
    let now = tessera_server::now();
    let grant = AccessGrant {
        sub: user.into(),
        client_id: "admin-console".into(),
        audience: audience.into(),
        scope: "admin".into(),
        sid: Some(format!("sid-{user}")),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        auth_time: Some(now),
        amr: vec!["pwd".into(), "otp".into(), "mfa".into()],
        ttl: 300,
        jkt: None,
        act: None,
        origin: Vec::new(),
    };
    tessera_server::issue::access_token(&s.state, grant, now).unwrap().token
}

async fn call(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, reqwest::header::HeaderMap) {
    let http = reqwest::Client::new();
    let mut r = match method {
        "POST" => http.post(s.url(path)),
        _ => http.get(s.url(path)),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_owned());
    }
    let answer = r.send().await.unwrap();
    let (status, headers) = (answer.status().as_u16(), answer.headers().clone());
    (status, answer.text().await.unwrap(), headers)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

async fn only_an_admin_token_opens_contains_reads_and_closes_incidents(s: &Server) {
    assert!(
        s.state.store.resource("tessera-admin").await.unwrap().is_some(),
        "the admin audience is registered"
    );
    s.add_user("root", &["admin"]).await;
    let alice = s.add_user("alice", &[]).await;
    let admin = token(s, "u_root", &["admin"], "tessera-admin");

    // Anything but an admin token for the admin audience is refused, as RFC 6750 says.
    let (status, _, headers) = call(s, "GET", "/admin/incidents", None, None).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let elsewhere = token(s, "u_root", &["admin"], &s.state.config.issuer);
    let (status, _, headers) = call(s, "GET", "/admin/incidents", Some(&elsewhere), None).await;
    assert_eq!(status, 401, "a token for another audience");
    assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    let not_admin = token(s, &alice.id, &[], "tessera-admin");
    let (status, _, headers) =
        call(s, "POST", "/admin/incidents", Some(&not_admin), Some(r#"{"user":"alice"}"#)).await;
    assert_eq!(status, 403, "the role is required");
    assert!(headers["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    assert!(s.state.store.list_incidents(None, 10).await.unwrap().is_empty(), "nothing was opened");

    // Bad requests get a JSON error saying what was wrong.
    for (body, status, says) in [
        (r#"{"user":"nobody"}"#, 404, "no user nobody"),
        (r#"{"user":"alice","client":"web"}"#, 400, "exactly one"),
        (r#"{"user":"alice","colour":"red"}"#, 400, "unknown or mistyped field"),
        ("not json", 400, "not a JSON object"),
    ] {
        let (got, text, _) = call(s, "POST", "/admin/incidents", Some(&admin), Some(body)).await;
        assert_eq!(got, status, "{body}: {text}");
        assert!(json(&text)["error_description"].as_str().unwrap().contains(says), "{text}");
    }

    let (status, text, _) =
        call(s, "POST", "/admin/incidents", Some(&admin), Some(r#"{"user":"alice","reason":"phished"}"#))
            .await;
    assert_eq!(status, 201, "{text}");
    let id = json(&text)["id"].as_i64().unwrap();
    let (status, text, _) =
        call(s, "POST", "/admin/incidents", Some(&admin), Some(r#"{"user":"u_alice"}"#)).await;
    assert_eq!((status, json(&text)["id"].as_i64()), (200, Some(id)), "the live incident, joined");

    let (status, text, _) = call(
        s,
        "POST",
        &format!("/admin/incidents/{id}/contain"),
        Some(&admin),
        Some(r#"{"block_ip":["203.0.113.9"]}"#),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let done = json(&text);
    let taken: Vec<&str> =
        done["taken"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(taken, ["revoke_sessions", "revoke_user", "force_password_reset", "block_source"]);
    assert_eq!(done["incident"]["state"], "contained");
    assert!(s.state.store.user_by_id(&alice.id).await.unwrap().unwrap().must_reset_password);
    let (_, text, _) = call(s, "POST", &format!("/admin/incidents/{id}/contain"), Some(&admin), None).await;
    assert!(json(&text)["taken"].as_array().unwrap().is_empty(), "a repeat does nothing new");
    let (status, _, _) = call(s, "POST", "/admin/incidents/99/contain", Some(&admin), None).await;
    assert_eq!(status, 404);

    let (status, text, _) = call(s, "GET", &format!("/admin/incidents/{id}"), Some(&admin), None).await;
    assert_eq!(status, 200);
    let shown = json(&text);
    assert!(shown["actions"].as_array().unwrap().iter().all(|a| a["actor"] == "admin:u_root"), "{shown}");
    let (_, text, _) = call(s, "GET", "/admin/incidents?state=contained", Some(&admin), None).await;
    assert_eq!(json(&text)["incidents"][0]["id"], json!(id));
    let (status, _, _) = call(s, "GET", "/admin/incidents?state=lost", Some(&admin), None).await;
    assert_eq!(status, 400);

    let (status, text, _) =
        call(s, "GET", &format!("/admin/incidents/{id}/timeline"), Some(&admin), None).await;
    assert_eq!(status, 200);
    let reasons: Vec<String> = json(&text)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    assert!(
        reasons.contains(&"incident_open".to_owned()) && reasons.contains(&"revoke_user".to_owned()),
        "{reasons:?}"
    );
    let (status, text, headers) =
        call(s, "GET", &format!("/admin/incidents/{id}/timeline?format=html"), Some(&admin), None).await;
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "text/html; charset=utf-8"));
    assert!(text.contains("<svg"));
    let (status, _, _) =
        call(s, "GET", &format!("/admin/incidents/{id}/timeline?colour=red"), Some(&admin), None).await;
    assert_eq!(status, 400);
    let (status, text, _) =
        call(s, "GET", "/admin/timeline?user=alice&format=text", Some(&admin), None).await;
    assert_eq!(status, 200);
    assert!(text.starts_with("Timeline of user u_alice (alice)"), "{text}");
    let (status, text, _) =
        call(s, "GET", &format!("/admin/incidents/{id}/report"), Some(&admin), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("## What remains") && text.contains("block_source"), "{text}");
    let (status, text, _) =
        call(s, "GET", &format!("/admin/incidents/{id}/lineage"), Some(&admin), None).await;
    assert_eq!((status, json(&text)["families"].as_array().map(Vec::len)), (200, Some(0)));

    let (status, text, _) =
        call(s, "POST", &format!("/admin/incidents/{id}/close"), Some(&admin), None).await;
    assert_eq!((status, json(&text)["state"].as_str()), (200, Some("closed")));
    let (status, text, _) =
        call(s, "POST", &format!("/admin/incidents/{id}/close"), Some(&admin), None).await;
    assert_eq!(status, 400);
    assert_eq!(json(&text)["error"], "invalid_request");
}

crate::on_both_backends!(only_an_admin_token_opens_contains_reads_and_closes_incidents);
