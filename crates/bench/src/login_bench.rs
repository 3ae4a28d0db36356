//! The `login` scenario: a whole sign-in, as a browser and its app make it. The login form's POST (the
//! password checked by Argon2id at the server's real cost, the risk assessment and the audit events), the
//! authorization request again with the new session (a code back to the app), and the code exchanged for
//! tokens with PKCE. One sign-in is three requests on one connection; its latency is the three together.
//!
//! Each connection signs in its own user: the login throttle reserves an attempt on the account before the
//! hash is checked, so many sign-ins at once to one account are (rightly) cut off as a flood.

use bytes::Bytes;

use crate::Conn;

/// The bench user's password; its hash is made with the server's own Argon2id parameters.
pub(crate) const PASSWORD: &str = "bench: correct horse battery staple";
/// The public client's registered redirect URI.
pub(crate) const REDIRECT: &str = "https://app.example/cb";
/// Sign-ins in flight at once, at most: Argon2id runs on the server's bounded pool, so more connections
/// only queue there and lengthen the latency without adding throughput.
pub(crate) const LOGIN_CONNECTIONS: usize = 16;

/// Users `bench-login-0` … for `n` browsers, with a real hash at the server's Argon2id cost (one hash,
/// made once: each check costs the same).
pub(crate) async fn users(store: &dyn tessera_store::Store, n: usize) -> Result<(), String> {
    let hash = tessera_server::passwords::hash_blocking(PASSWORD)?;
    for i in 0..n {
        let user = tessera_store::User {
            id: format!("u_login_{i}"),
            username: format!("bench-login-{i}"),
            password_hash: hash.clone(),
            roles: vec![],
            disabled: false,
            created_at: crate::now(),
            password_changed_at: crate::now(),
            must_reset_password: false,
            step_up_after: None,
            email: None,
        };
        // A second `login` scenario in one run finds them there already.
        match store.create_user(&user).await {
            Ok(()) | Err(tessera_store::StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// One browser's sign-ins: its CSRF cookie, the authorization request it returns to, its PKCE verifier,
/// and the device cookie the server gave it (kept, as a returning browser keeps it).
pub(crate) struct Login {
    csrf: String,
    username: String,
    query: String,
    verifier: String,
    device: Option<String>,
}

impl Login {
    /// A browser for connection `i`.
    pub(crate) fn new(i: usize) -> Login {
        // The form's CSRF check compares the field with the cookie (22 characters, as the server makes them).
        let csrf = format!("{:0>22}", format!("benchcsrf{i}"));
        let verifier = format!("bench-pkce-verifier-{i:0>8}-long-enough-for-rfc-7636");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        let challenge = tessera_token::b64::encode(digest.as_ref());
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", "app")
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("scope", "read")
            .append_pair("resource", crate::AUDIENCE)
            .append_pair("state", "bench")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        Login { csrf, username: format!("bench-login-{i}"), query, verifier, device: None }
    }

    /// One sign-in: `Ok((200, token response))` when it went through; otherwise the status of the step that
    /// failed.
    pub(crate) async fn once(&mut self, conn: &mut Conn) -> Result<(u16, Bytes), String> {
        let mut cookies = format!("tessera_csrf={}", self.csrf);
        if let Some(device) = &self.device {
            cookies.push_str(&format!("; tessera_device={device}"));
        }
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", &self.csrf)
            .append_pair("return", &self.query)
            .append_pair("username", &self.username)
            .append_pair("password", PASSWORD)
            .finish();
        let (status, headers, body) = conn.exchange("POST", "/login", &cookies, form).await?;
        if status != 303 {
            return Ok((status, body));
        }
        let mut session = None;
        for value in headers.get_all(http::header::SET_COOKIE) {
            let pair = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default();
            match pair.split_once('=') {
                Some(("tessera_session", v)) => session = Some(v.to_owned()),
                Some(("tessera_device", v)) => self.device = Some(v.to_owned()),
                _ => {}
            }
        }
        let (Some(session), Some(back)) = (session, location(&headers)) else {
            return Err("the sign-in's 303 carried no session cookie or no location".into());
        };
        cookies.push_str(&format!("; tessera_session={session}"));
        let (status, headers, body) = conn.exchange("GET", &back, &cookies, String::new()).await?;
        let code = location(&headers).and_then(|to| {
            let query = to.strip_prefix(REDIRECT)?.strip_prefix('?')?.to_owned();
            form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "code").map(|(_, v)| v.into_owned())
        });
        let Some(code) = code.filter(|_| status == 302 || status == 303) else {
            return Ok((status, body));
        };
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("client_id", "app")
            .append_pair("code", &code)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("code_verifier", &self.verifier)
            .finish();
        conn.post("/token", None, form).await
    }
}

fn location(headers: &http::HeaderMap) -> Option<String> {
    headers.get(http::header::LOCATION)?.to_str().ok().map(str::to_owned)
}
