//! Risk-based authentication at work: gathers what is known of a sign-in whose password was right (the
//! user's earlier sign-ins from the audit log, the browser's device, the network, the throttle's counters,
//! the place, blocks and step-up requests) and scores it with [`tessera_core::risk::assess`].

use tessera_core::EventKind;
use tessera_core::detect::{self, Rule};
use tessera_core::risk::{self, Assessment, LoginContext};
use tessera_store::{AuditQuery, Event, StoreError, User};

use crate::{AppState, RequestMeta};

/// Earlier sign-ins read for one assessment (the newest first).
const MAX_HISTORY: i64 = 1_000;

/// Scores a sign-in of `user` whose would-be `login_success` event is `login` (with its device and place
/// in `detail`), with `failures` still counted on the account and the source before this attempt.
///
/// # Errors
/// If the user's history cannot be read.
pub async fn assess(
    state: &AppState,
    meta: &RequestMeta,
    user: &User,
    login: &Event,
    failures: (u32, u32),
) -> Result<Assessment, StoreError> {
    let t = &state.config.detection;
    let query = AuditQuery {
        sub: Some(user.id.clone()),
        kinds: vec![EventKind::LoginSuccess.name().to_owned()],
        since: Some(login.at - t.login_history_days.max(0).saturating_mul(86_400)),
        until: Some(login.at + 1),
        newest: true,
        limit: MAX_HISTORY,
        ..AuditQuery::default()
    };
    let history: Vec<(i64, Event)> =
        state.store.audit_events(&query).await?.into_iter().map(|r| (r.seq, r.event)).collect();
    let detail = |e: &Event| -> serde_json::Value {
        e.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default()
    };
    let device = |e: &Event| detail(e).get("device").and_then(|d| d.as_str()).map(str::to_owned);
    let known_devices: Vec<String> = history.iter().filter_map(|(_, h)| device(h)).collect();
    let geo = state.geo.as_ref().map(|g| g as &dyn tessera_core::geo::Locator);
    let network = |e: &Event| e.ip.as_deref().and_then(|ip| detect::network_in(ip, geo));
    let here = network(login);
    let new_device = device(login).is_some_and(|d| !known_devices.contains(&d));
    let new_network = here.is_some() && !history.iter().any(|(_, h)| network(h) == here);
    // The would-be sign-in, after every one recorded: the same judgement the detector makes afterwards.
    let anomalies = detect::login_anomalies(&(i64::MAX, login.clone()), &history, t);
    let impossible_travel = anomalies.iter().any(|d| d.rule == Rule::ImpossibleTravel.name());
    let step_up_required = user.step_up_after.is_some_and(|asked| {
        !history.iter().any(|(_, h)| {
            h.at >= asked
                && detail(h)
                    .get("amr")
                    .and_then(|a| a.as_array())
                    .is_some_and(|a| a.iter().any(|m| m == "mfa"))
        })
    });
    let context = LoginContext {
        new_device,
        new_network,
        account_failures: failures.0,
        source_failures: failures.1,
        impossible_travel,
        blocked_source: meta
            .ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .is_some_and(|ip| state.revocations.blocks(ip)),
        step_up_required,
    };
    Ok(risk::assess(&context, &state.config.risk))
}
