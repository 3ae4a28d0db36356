//! The browser flow: `/authorize` (with PKCE S256, exact redirect URIs, RFC 9207 `iss`, RFC 8707 `resource`),
//! the login form, the consent screen, and `/logout` (RP-initiated logout).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tessera_core::flow::{self, FlowError};
use tessera_core::mfa::MfaPolicy;
use tessera_core::risk::Decision;
use tessera_core::{GrantType, SecretKind};
use tessera_store::{AuthCode, Client, Event, LoginSession, User};
use tessera_token::{KeySet, UnverifiedJwt};
use zeroize::Zeroizing;

use crate::crypto::new_secret;
use crate::oauth::Params;
use crate::web::{self, escape, page};
use crate::{AppState, RequestMeta, mfa, now, throttle};

/// A checked authorization request.
struct AuthzRequest {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
    scope: String,
    audience: Option<String>,
    nonce: Option<String>,
    challenge: String,
    /// RFC 9449 §10: the code may be redeemed only with a DPoP proof by this key.
    dpop_jkt: Option<String>,
    prompt: Vec<String>,
    max_age: Option<i64>,
    /// OIDC `acr_values`: space-separated, in order of preference.
    acr_values: Option<String>,
}

/// Why an authorization request fails: before the redirect URI is trusted, an error page; after, an error
/// sent back to the client.
enum AuthzError {
    Page(&'static str),
    Redirect { redirect_uri: String, state: Option<String>, error: &'static str, description: &'static str },
}

impl AuthzError {
    fn into_response(self, state: &AppState) -> Response {
        match self {
            AuthzError::Page(message) => {
                page(StatusCode::BAD_REQUEST, "Request refused", &format!("<p>{}</p>", escape(message)))
            }
            AuthzError::Redirect { redirect_uri, state: st, error, description } => redirect_to_client(
                &redirect_uri,
                &[
                    ("error", error),
                    ("error_description", description),
                    ("state", st.as_deref().unwrap_or("")),
                ],
                &state.config.issuer,
            ),
        }
    }
}

/// `302` to the client's redirect URI with `params` (empty values dropped) and the RFC 9207 `iss`.
fn redirect_to_client(redirect_uri: &str, params: &[(&str, &str)], issuer: &str) -> Response {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(k, v);
    }
    query.append_pair("iss", issuer);
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!("{redirect_uri}{separator}{}", query.finish());
    match HeaderValue::from_str(&location) {
        Ok(location) => (
            StatusCode::FOUND,
            [(header::LOCATION, location), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        )
            .into_response(),
        Err(_) => page(StatusCode::BAD_REQUEST, "Request refused", "<p>The redirect URI cannot be used.</p>"),
    }
}

async fn check_request(state: &AppState, params: &Params) -> Result<AuthzRequest, AuthzError> {
    let client_id = params.get("client_id").ok_or(AuthzError::Page("The request names no client."))?;
    let client = match state.directory.client(client_id).await {
        Ok(Some(c)) if !c.disabled => c,
        Ok(_) => return Err(AuthzError::Page("The client is unknown or disabled.")),
        Err(e) => {
            tracing::warn!(error = %e, "authorize: store failure");
            return Err(AuthzError::Page("The service is temporarily unavailable. Try again later."));
        }
    };
    let redirect_uri =
        params.get("redirect_uri").ok_or(AuthzError::Page("The request has no redirect URI."))?;
    if !flow::redirect_uri_matches(&client.redirect_uris, redirect_uri) {
        return Err(AuthzError::Page("The redirect URI is not registered for this client."));
    }
    let st = params.get("state").map(str::to_owned);
    let fail = |error, description| AuthzError::Redirect {
        redirect_uri: redirect_uri.to_owned(),
        state: st.clone(),
        error,
        description,
    };
    if params.get("response_type") != Some("code") {
        return Err(fail("unsupported_response_type", "only response_type=code is supported"));
    }
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(fail("unauthorized_client", "this client may not use the authorization code grant"));
    }
    if params.get("request").is_some() || params.get("request_uri").is_some() {
        return Err(fail("request_not_supported", "request objects are not supported"));
    }
    let challenge = params
        .get("code_challenge")
        .ok_or_else(|| fail("invalid_request", "PKCE code_challenge is required"))?;
    if params.get("code_challenge_method") != Some("S256") || !flow::is_s256_challenge(challenge) {
        return Err(fail(
            "invalid_request",
            "code_challenge_method must be S256 with a 43-character challenge",
        ));
    }
    let dpop_jkt = params.get("dpop_jkt");
    if dpop_jkt.is_some_and(|jkt| !flow::is_thumbprint(jkt)) {
        return Err(fail("invalid_request", "dpop_jkt must be a base64url SHA-256 JWK thumbprint"));
    }
    let requested = params.all("resource");
    let audience =
        if requested.is_empty() && client.audiences.len() != 1 {
            None
        } else {
            Some(flow::select_audience(&requested, &client.audiences).map_err(|_| {
                fail("invalid_target", "the requested resource is not allowed for this client")
            })?)
        };
    let resource_scopes = match &audience {
        Some(aud) => match state.directory.resource(aud).await {
            Ok(Some(r)) => Some(r.scopes),
            Ok(None) => return Err(fail("invalid_target", "the requested resource is not registered")),
            Err(_) => return Err(fail("temporarily_unavailable", "try again later")),
        },
        None => None,
    };
    let scope = flow::grant_user_scope(params.get("scope"), &client.scopes, resource_scopes.as_deref())
        .map_err(|e| match e {
            FlowError::InvalidScope | FlowError::InvalidTarget => {
                fail("invalid_scope", "the requested scope is not allowed")
            }
        })?;
    let prompt: Vec<String> =
        params.get("prompt").unwrap_or("").split(' ').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    let max_age = match params.get("max_age") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(seconds) if seconds >= 0 => Some(seconds),
            _ => return Err(fail("invalid_request", "max_age must be a non-negative integer")),
        },
    };
    Ok(AuthzRequest {
        max_age,
        redirect_uri: redirect_uri.to_owned(),
        state: st.clone(),
        scope,
        audience,
        nonce: params.get("nonce").map(str::to_owned),
        challenge: challenge.to_owned(),
        dpop_jkt: dpop_jkt.map(str::to_owned),
        prompt,
        acr_values: params.get("acr_values").map(str::to_owned),
        client,
    })
}

/// Reads and checks an authorization request's query string; the error is the response to send.
async fn parse_request(state: &AppState, query: &str) -> Result<AuthzRequest, Box<Response>> {
    let params = Params::parse(query.as_bytes()).map_err(|_| {
        Box::new(page(StatusCode::BAD_REQUEST, "Request refused", "<p>A parameter was repeated.</p>"))
    })?;
    check_request(state, &params).await.map_err(|e| Box::new(e.into_response(state)))
}

/// The query string without `prompt` and `max_age`, to return to after a login (which has just satisfied
/// them: `prompt=login` is asked only once, and a fresh login meets any `max_age`).
fn without_prompt(query: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "prompt" && k != "max_age") {
        out.append_pair(&k, &v);
    }
    out.finish()
}

/// `GET /authorize`.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let request = match parse_request(&state, &query).await {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let now = now();
    let session = web::current_session(&state, &headers, now).await;
    let force_login = request.prompt.iter().any(|p| p == "login");
    let too_old = |s: &LoginSession| request.max_age.is_some_and(|max| now - s.auth_time > max);
    match session {
        Some((session, user)) if !force_login && !too_old(&session) => {
            // A session without a second factor, for a request that needs one: step up first.
            let has_mfa = session.amr.iter().any(|m| m == "mfa");
            if !has_mfa {
                let policy = request.client.mfa;
                if tessera_core::mfa::needs_second_factor(policy, request.acr_values.as_deref(), false) {
                    if request.prompt.iter().any(|p| p == "none") {
                        return AuthzError::Redirect {
                            redirect_uri: request.redirect_uri,
                            state: request.state,
                            error: "interaction_required",
                            description: "a second factor is required",
                        }
                        .into_response(&state);
                    }
                    return mfa::step_up(&state, &headers, &session, &without_prompt(&query), now).await;
                }
            }
            proceed(&state, &headers, &request, &session, &user, &query, now).await
        }
        _ if request.prompt.iter().any(|p| p == "none") => AuthzError::Redirect {
            redirect_uri: request.redirect_uri,
            state: request.state,
            error: "login_required",
            description: "the user is not signed in",
        }
        .into_response(&state),
        _ => {
            let (csrf, set) = web::csrf_token(&state, &headers);
            web::with_cookie(web::login_form(&csrf, &without_prompt(&query), None, StatusCode::OK), set)
        }
    }
}

/// With a signed-in user: a code for first-party clients, the consent screen for the others (and for
/// `prompt=consent`); with `prompt=none`, `consent_required` instead of a screen.
async fn proceed(
    state: &AppState,
    headers: &HeaderMap,
    request: &AuthzRequest,
    session: &LoginSession,
    user: &User,
    query: &str,
    now: i64,
) -> Response {
    let ask = !request.client.first_party || request.prompt.iter().any(|p| p == "consent");
    if !ask {
        return issue_code(state, request, session, now).await;
    }
    if request.prompt.iter().any(|p| p == "none") {
        return AuthzError::Redirect {
            redirect_uri: request.redirect_uri.clone(),
            state: request.state.clone(),
            error: "consent_required",
            description: "the user must consent",
        }
        .into_response(state);
    }
    let (csrf, set) = web::csrf_token(state, headers);
    let scopes: String = request.scope.split(' ').map(|s| format!("<li>{}</li>", escape(s))).collect();
    let body = format!(
        "<p>Signed in as <b>{user}</b>.</p><p><b>{client}</b> asks for:</p><ul>{scopes}</ul>\
         <form method=\"post\" action=\"/authorize\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        user = escape(&user.username),
        client = escape(&request.client.name),
        csrf = escape(&csrf),
        request = escape(&without_prompt(query)),
    );
    web::with_cookie(page(StatusCode::OK, "Allow access?", &body), set)
}

/// `POST /authorize`: the consent decision.
pub async fn consent(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(form) = Params::parse(&body) else {
        return page(StatusCode::BAD_REQUEST, "Request refused", "<p>A parameter was repeated.</p>");
    };
    if !web::csrf_ok(&state, &headers, form.get("csrf")) {
        return page(
            StatusCode::BAD_REQUEST,
            "Request refused",
            "<p>The form expired. Go back and try again.</p>",
        );
    }
    let query = form.get("request").unwrap_or("").to_owned();
    let request = match parse_request(&state, &query).await {
        Ok(r) => r,
        Err(response) => return *response,
    };
    let now = now();
    let Some((session, _user)) = web::current_session(&state, &headers, now).await else {
        let (csrf, set) = web::csrf_token(&state, &headers);
        return web::with_cookie(web::login_form(&csrf, &query, None, StatusCode::OK), set);
    };
    if form.get("decision") == Some("allow") {
        issue_code(&state, &request, &session, now).await
    } else {
        AuthzError::Redirect {
            redirect_uri: request.redirect_uri,
            state: request.state,
            error: "access_denied",
            description: "the user denied the request",
        }
        .into_response(&state)
    }
}

async fn issue_code(state: &AppState, request: &AuthzRequest, session: &LoginSession, now: i64) -> Response {
    let unavailable = || AuthzError::Redirect {
        redirect_uri: request.redirect_uri.clone(),
        state: request.state.clone(),
        error: "temporarily_unavailable",
        description: "try again later",
    };
    let Ok(code) = new_secret(SecretKind::AuthorizationCode) else {
        return unavailable().into_response(state);
    };
    let record = AuthCode {
        hash: code.hash(),
        client_id: request.client.id.clone(),
        user_id: session.user_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.challenge.clone(),
        scope: request.scope.clone(),
        audience: request.audience.clone(),
        nonce: request.nonce.clone(),
        login_session: Some(session.hash),
        auth_time: session.auth_time,
        amr: session.amr.clone(),
        created_at: now,
        expires_at: now + state.config.code_ttl,
        dpop_jkt: request.dpop_jkt.clone(),
    };
    if let Err(e) = state.store.insert_code(&record).await {
        tracing::warn!(error = %e, "cannot store authorization code");
        return unavailable().into_response(state);
    }
    redirect_to_client(
        &request.redirect_uri,
        &[("code", code.expose()), ("state", request.state.as_deref().unwrap_or(""))],
        &state.config.issuer,
    )
}

/// `GET /login`: the form, or who is signed in.
pub async fn login_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (csrf, set) = web::csrf_token(&state, &headers);
    let response = match web::current_session(&state, &headers, now()).await {
        Some((_, user)) => page(
            StatusCode::OK,
            "Signed in",
            &format!(
                "<p>Signed in as <b>{}</b>.</p><form method=\"post\" action=\"/logout\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
                escape(&user.username),
                escape(&csrf)
            ),
        ),
        None => web::login_form(&csrf, "", None, StatusCode::OK),
    };
    web::with_cookie(response, set)
}

/// `POST /login`: checks the credentials; on success sets the session cookie and returns to the
/// authorization request (or the signed-in page).
pub async fn login(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body).unwrap_or_default();
    let return_to = form.get("return").unwrap_or("").to_owned();
    let (csrf, set) = web::csrf_token(&state, &headers);
    if !web::csrf_ok(&state, &headers, form.get("csrf")) {
        let response = web::login_form(
            &csrf,
            &return_to,
            Some("The form expired. Please sign in again."),
            StatusCode::BAD_REQUEST,
        );
        return web::with_cookie(response, set);
    }
    let username = form.get("username").unwrap_or("").to_owned();
    let password = Zeroizing::new(form.get("password").unwrap_or("").to_owned());
    let now = now();
    let unavailable = || {
        let response = web::login_form(
            &csrf,
            &return_to,
            Some("Sign-in is unavailable. Try again later."),
            StatusCode::SERVICE_UNAVAILABLE,
        );
        web::with_cookie(response, set.clone())
    };
    let user = match state.store.user_by_name(&username).await {
        Ok(user) => user,
        Err(e) => {
            tracing::warn!(error = %e, "login: store failure");
            return unavailable();
        }
    };
    // The name typed, as a keyed pseudonym: enough to count the accounts one source tries (credential
    // stuffing), never a password typed into the wrong field.
    let pseudonym = serde_json::json!({ "username_pseudonym": state.kek.pseudonym(&username) });
    let failure = |reason: &str, detail: serde_json::Value| Event {
        kind: "login_failure".into(),
        sub: user.as_ref().map(|u| u.id.clone()),
        reason: Some(reason.into()),
        outcome: Some("failure".into()),
        detail: Some(with_place(&state, &meta, detail).to_string()),
        ..meta.event(now)
    };
    // The throttle decides before the password costs a hash, and in the same way whether the account
    // exists or not.
    let keys = throttle::Keys::new(&state, &username, meta.ip.as_deref());
    let (account_locks, source_locks) = match throttle::admit(&state, &keys, now).await {
        Ok(throttle::Gate::Check { account_locks, source_locks }) => (account_locks, source_locks),
        Ok(throttle::Gate::Refused { retry_at }) => {
            state.metrics.login_failure();
            state.metrics.login_throttled();
            state.event(failure("throttled", pseudonym.clone())).await;
            return throttled(&csrf, &return_to, retry_at - now, set);
        }
        Err(e) => {
            tracing::warn!(error = %e, "login: throttle unavailable");
            return unavailable();
        }
    };
    state.metrics.password_check();
    let verified = state.passwords.verify(user.as_ref().map(|u| u.password_hash.as_str()), password).await;
    let mut failures = (0, 0);
    if verified {
        failures = throttle::failures(&state, &keys, now).await;
        throttle::passed(&state, &keys).await;
    }
    let user = match user.clone() {
        Some(user) if verified && !user.disabled => user,
        other => {
            state.metrics.login_failure();
            let reason = match &other {
                None => "unknown_user",
                Some(u) if u.disabled => "user_disabled",
                Some(_) => "wrong_password",
            };
            state.event(failure(reason, pseudonym.clone())).await;
            if !verified {
                record_locks(&state, failure("", pseudonym.clone()), (account_locks, source_locks), now)
                    .await;
            }
            let response =
                web::login_form(&csrf, &return_to, Some("Invalid username or password."), StatusCode::OK);
            return web::with_cookie(response, set);
        }
    };
    // The password is right: a second factor next, when the user has one or the client asks for one.
    let factors = match mfa::factors(&state, &user.id).await {
        Ok(factors) => factors,
        Err(e) => {
            tracing::warn!(error = %e, "login: store failure");
            return unavailable();
        }
    };
    let has_factor = factors.any();
    // The sign-in's risk, from its device, network, place and the user's history: the decision and its
    // reasons go to the audit log; the user sees only what they must do.
    let device = web::device(&state, &headers).map(|(hash, _)| hash);
    let login = Event {
        kind: "login_success".into(),
        sub: Some(user.id.clone()),
        detail: Some(with_place(&state, &meta, serde_json::json!({ "device": device })).to_string()),
        ..meta.event(now)
    };
    let assessment = match crate::risk::assess(&state, &meta, &user, &login, failures).await {
        Ok(assessment) => assessment,
        Err(e) => {
            tracing::warn!(error = %e, "login: store failure");
            return unavailable();
        }
    };
    let risky = assessment.decision == Decision::RequireMfa;
    let (policy, acr_values) = requested_mfa(&state, &return_to).await;
    let needs = tessera_core::mfa::needs_second_factor(policy, acr_values.as_deref(), risky);
    let risk_detail = serde_json::json!({
        "score": assessment.score,
        "reasons": assessment.reasons,
        // Risk asked for a second factor the user has not enrolled: the sign-in goes on with the password.
        "mfa_unavailable": risky && !has_factor,
    });
    state
        .event(Event {
            kind: "login_risk".into(),
            sub: Some(user.id.clone()),
            reason: Some(assessment.decision.name().into()),
            detail: Some(risk_detail.to_string()),
            ..meta.event(now)
        })
        .await;
    if assessment.decision == Decision::Deny {
        state.metrics.login_failure();
        state.event(failure("risk_denied", pseudonym.clone())).await;
        let message = "This sign-in was refused. If it was you, contact your administrator.";
        return web::with_cookie(
            web::login_form(&csrf, &return_to, Some(message), StatusCode::FORBIDDEN),
            set,
        );
    }
    if user.must_reset_password {
        // A forced reset: every factor the user has, then a new password, then the session. Only someone
        // who knows the password (and whose sign-in risk did not deny it) learns that it must change.
        if has_factor {
            return web::with_cookie(
                mfa::ask(&state, &csrf, &user.id, &return_to, (true, factors), now),
                set,
            );
        }
        let next =
            mfa::Challenge { u: user.id.clone(), r: return_to, t: now, p: true, a: vec!["pwd".into()] };
        return web::with_cookie(crate::password::new_password_form(&state, &csrf, &next, None), set);
    }
    if needs && has_factor {
        return web::with_cookie(mfa::ask(&state, &csrf, &user.id, &return_to, (false, factors), now), set);
    }
    // Without a factor where one is required, the user signs in with the password and enrols one before
    // the authorization request goes on (`authorize` sends them to the account page).
    let response = signed_in(&state, &meta, &headers, &user, vec!["pwd".into()], &return_to, now).await;
    web::with_cookie(response, set)
}

/// What the authorization request a sign-in returns to asks of the second factor: its client's MFA policy
/// and its `acr_values`. A sign-in with nothing to return to, or for an unknown client, asks nothing more.
pub(crate) async fn requested_mfa(state: &AppState, return_to: &str) -> (MfaPolicy, Option<String>) {
    let params = Params::parse(return_to.as_bytes()).unwrap_or_default();
    let policy = match params.get("client_id") {
        Some(id) => match state.directory.client(id).await {
            Ok(Some(client)) => client.mfa,
            _ => MfaPolicy::Off,
        },
        None => MfaPolicy::Off,
    };
    (policy, params.get("acr_values").map(str::to_owned))
}

/// Opens a login session for `user`, authenticated by `amr`, records the sign-in (`login_success`, with the
/// browser's device and the place), and sends the browser back to the authorization request (or the
/// signed-in page) with the session and device cookies.
pub(crate) async fn signed_in(
    state: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    user: &User,
    amr: Vec<String>,
    return_to: &str,
    now: i64,
) -> Response {
    let Some(cookie) = open_session(state, user, amr.clone(), now).await else {
        return web::unavailable();
    };
    // The browser's device, the methods and the sign-in's place: what `new_device`, `impossible_travel`
    // and risk scoring (a step-up shown since a detection asked for one) compare.
    let (device, device_cookie) = web::device(state, headers).unzip();
    let detail = with_place(state, meta, serde_json::json!({ "device": device, "amr": amr }));
    state
        .event(Event {
            kind: "login_success".into(),
            sub: Some(user.id.clone()),
            detail: Some(detail.to_string()),
            ..meta.event(now)
        })
        .await;
    web::with_cookie(web::with_cookie(back_to(return_to), Some(cookie)), device_cookie)
}

/// Stores a new login session for `user`; the `Set-Cookie` that carries it.
pub(crate) async fn open_session(
    state: &AppState,
    user: &User,
    amr: Vec<String>,
    now: i64,
) -> Option<HeaderValue> {
    let secret = new_secret(SecretKind::LoginSession).ok()?;
    let session = LoginSession {
        hash: secret.hash(),
        user_id: user.id.clone(),
        auth_time: now,
        amr,
        created_at: now,
        expires_at: now + state.config.login_session_ttl,
        revoked_at: None,
    };
    if let Err(e) = state.store.create_login_session(&session).await {
        tracing::warn!(error = %e, "cannot store login session");
        return None;
    }
    Some(web::set_cookie(state, web::session_cookie(state), secret.expose(), state.config.login_session_ttl))
}

/// `303` back to the authorization request `return_to` (a query string, never a URL: only ever our own
/// authorization endpoint), or to the signed-in page.
pub(crate) fn back_to(return_to: &str) -> Response {
    let location = if return_to.is_empty() { "/login".to_owned() } else { format!("/authorize?{return_to}") };
    let mut response =
        (StatusCode::SEE_OTHER, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))])
            .into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Records a `login_locked` event for each counter (`(account, source)`) that the failed attempt `failed`
/// (its `login_failure` event) locked.
pub(crate) async fn record_locks(state: &AppState, failed: Event, locked: (bool, bool), now: i64) {
    let policy = &state.config.login;
    for (locks, scope, failures) in [
        (locked.0, "account", policy.account_lock_failures),
        (locked.1, "source", policy.source_lock_failures),
    ] {
        if !locks {
            continue;
        }
        let mut detail: serde_json::Value =
            failed.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
        detail["failures"] = failures.into();
        detail["until"] = (now + policy.lock_secs).into();
        state
            .event(Event {
                kind: "login_locked".into(),
                reason: Some(scope.into()),
                outcome: Some("locked".into()),
                detail: Some(detail.to_string()),
                ..failed.clone()
            })
            .await;
    }
}

/// The login form refusing an attempt the throttle stopped: 429 with `Retry-After`. The same words whether
/// the account exists, is merely slowed down or is locked.
fn throttled(csrf: &str, return_to: &str, wait: i64, set: Option<HeaderValue>) -> Response {
    let message = throttled_message(wait);
    let response = web::login_form(csrf, return_to, Some(&message), StatusCode::TOO_MANY_REQUESTS);
    web::with_cookie(with_retry_after(response, wait), set)
}

/// "Too many failed sign-ins. Try again in …".
pub(crate) fn throttled_message(wait: i64) -> String {
    let wait = wait.max(1);
    let when = if wait < 120 { format!("{wait} seconds") } else { format!("{} minutes", (wait + 59) / 60) };
    format!("Too many failed sign-ins. Try again in {when}.")
}

/// Adds `Retry-After: wait` (at least 1 s).
pub(crate) fn with_retry_after(mut response: Response, wait: i64) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.max(1)));
    response
}

/// `detail` with the request's place (`geo`), when a GeoIP database knows the source.
fn with_place(state: &AppState, meta: &RequestMeta, mut detail: serde_json::Value) -> serde_json::Value {
    use tessera_core::geo::Locator as _;
    let place = state
        .geo
        .as_ref()
        .zip(meta.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .and_then(|(geo, ip)| geo.locate(ip));
    if let (Some(place), Some(map)) = (place, detail.as_object_mut()) {
        map.insert("geo".into(), serde_json::to_value(place).unwrap_or_default());
    }
    detail
}

/// What an `id_token_hint` tells about the session to end: its subject, session and client.
struct Hint {
    sub: String,
    sid: Option<String>,
    client_id: Option<String>,
}

fn read_hint(state: &AppState, keys: &KeySet, token: &str) -> Option<Hint> {
    // An expired ID token is still a valid hint (OIDC RP-Initiated Logout §2); its signature and issuer
    // must be ours, and it must be an ID token (`typ` JWT), not an access token.
    let verified = UnverifiedJwt::parse(token).ok()?.verify(keys).ok()?;
    if verified.header().typ.as_deref() != Some("JWT") {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(verified.payload()).ok()?;
    if claims.get("iss")?.as_str()? != state.config.issuer {
        return None;
    }
    Some(Hint {
        sub: claims.get("sub")?.as_str()?.to_owned(),
        sid: claims.get("sid").and_then(|v| v.as_str()).map(str::to_owned),
        client_id: claims.get("aud").and_then(|v| v.as_str()).map(str::to_owned),
    })
}

/// `GET /logout`: with a valid `id_token_hint` of the signed-in user, signs out at once; otherwise asks for
/// confirmation (a CSRF-protected form), so that a link cannot sign anyone out.
pub async fn logout_page(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let keyring = state.keyring();
    let hint = params.get("id_token_hint").and_then(|t| read_hint(&state, keyring.published(), t));
    let signed_in = web::current_session(&state, &headers, now()).await.map(|(_, user)| user.id);
    if let Some(hint) = hint
        && signed_in.as_deref() == Some(hint.sub.as_str())
    {
        return sign_out(&state, &meta, &headers, &params, Some(hint)).await;
    }
    let (csrf, set) = web::csrf_token(&state, &headers);
    let keep = |name: &str| {
        params
            .get(name)
            .map(|v| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(v)))
            .unwrap_or_default()
    };
    let body = format!(
        "<p>Sign out of Tessera?</p><form method=\"post\" action=\"/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{}{}{}{}<button type=\"submit\">Sign out</button></form>",
        escape(&csrf),
        keep("client_id"),
        keep("post_logout_redirect_uri"),
        keep("state"),
        keep("id_token_hint"),
    );
    web::with_cookie(page(StatusCode::OK, "Sign out", &body), set)
}

/// `POST /logout`: the confirmed sign-out.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::parse(&body).unwrap_or_default();
    if !web::csrf_ok(&state, &headers, params.get("csrf")) {
        return page(
            StatusCode::BAD_REQUEST,
            "Request refused",
            "<p>The form expired. Go back and try again.</p>",
        );
    }
    let keyring = state.keyring();
    let hint = params.get("id_token_hint").and_then(|t| read_hint(&state, keyring.published(), t));
    sign_out(&state, &meta, &headers, &params, hint).await
}

async fn sign_out(
    state: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    params: &Params,
    hint: Option<Hint>,
) -> Response {
    let now = now();
    let mut user_id = None;
    if let Some((session, user)) = web::current_session(state, headers, now).await {
        if let Err(e) = state.store.end_login_session(&session.hash, "logout", now).await {
            tracing::warn!(error = %e, "cannot end login session");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "<p>Sign-out failed. Try again later.</p>",
            );
        }
        user_id = Some(user.id);
    }
    // The hint's session is revoked only if it belongs to the user signing out here: a hint alone (an old
    // ID token found anywhere) must not end someone else's session.
    if let (Some(sid), Some(user_id)) = (hint.as_ref().and_then(|h| h.sid.as_deref()), user_id.as_deref())
        && matches!(state.store.family(sid).await, Ok(Some(family)) if family.user_id == user_id)
        && let Err(e) = state.store.revoke_family(sid, "logout", now).await
    {
        tracing::warn!(error = %e, "cannot revoke session on logout");
    }
    state.revocations.wake();
    state
        .event(Event {
            kind: "logout".into(),
            sub: user_id,
            sid: hint.as_ref().and_then(|h| h.sid.clone()),
            ..meta.event(now)
        })
        .await;
    let clear = web::set_cookie(state, web::session_cookie(state), "", 0);
    let client_id = params.get("client_id").map(str::to_owned).or_else(|| hint.and_then(|h| h.client_id));
    if let (Some(target), Some(client_id)) = (params.get("post_logout_redirect_uri"), client_id)
        && let Ok(Some(client)) = state.directory.client(&client_id).await
        && client.redirect_uris.iter().any(|r| r == target)
    {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(st) = params.get("state") {
            query.append_pair("state", st);
        }
        let query = query.finish();
        let location = if query.is_empty() {
            target.to_owned()
        } else {
            format!("{target}{}{query}", if target.contains('?') { '&' } else { '?' })
        };
        if let Ok(location) = HeaderValue::from_str(&location) {
            let response = (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
            return web::with_cookie(response, Some(clear));
        }
    }
    web::with_cookie(page(StatusCode::OK, "Signed out", "<p>You are signed out.</p>"), Some(clear))
}
