//! `tessera block` and `tessera alerts`: the source blocks that responses and operators impose (pushed to
//! every guard like revocations), and the alert outbox.

use std::time::Duration;

use clap::Subcommand;
use tessera_core::{RevocationKind, net};
use tessera_store::NewRevocation;

use crate::admin::{ConfigArgs, admin_event, record, store_failure, with_store};
use crate::{Failure, emit};

#[derive(Debug, Subcommand)]
pub(crate) enum BlockCommand {
    /// Refuse every request from an address or network, at the server and every guard, for a time.
    Add {
        /// An address (203.0.113.7) or a network (203.0.113.0/24).
        source: String,
        /// How long: 30m, 1h, 7d (at most 30 days).
        #[arg(long = "for", value_name = "DURATION", default_value = "1h")]
        duration: String,
        /// Why, recorded with the block (a short snake_case word).
        #[arg(long, default_value = "admin_blocked")]
        reason: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// End a block early (a detection's or an operator's).
    Lift {
        /// The address or network, as it was blocked.
        source: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// List the blocks in force.
    List {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// List queued, delivered and given-up alerts, newest first.
    List {
        /// Only alerts in this state.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

fn source_arg(text: &str) -> Result<String, Failure> {
    net::parse_source(text)
        .ok_or_else(|| Failure::usage("the source must be an address or a CIDR, such as 203.0.113.0/24"))
}

/// The blocks in force among the live entries: each source's latest entry, if it blocks. Sequence order
/// decides, so a lift ends every earlier block of its source. (source, until, reason).
fn in_force(live: &[tessera_store::Revocation]) -> Vec<(String, i64, String)> {
    let mut blocks: Vec<(String, i64, String)> = Vec::new();
    for r in live.iter().filter(|r| r.kind == RevocationKind::Source) {
        blocks.retain(|(s, _, _)| *s != r.subject);
        if r.not_before.is_none() {
            blocks.push((r.subject.clone(), r.expires_at, r.reason.clone()));
        }
    }
    blocks
}

pub(crate) fn block(command: BlockCommand) -> Result<(), Failure> {
    match command {
        BlockCommand::Add { source, duration, reason, cfg } => {
            let source = source_arg(&source)?;
            let secs = humantime::parse_duration(&duration)
                .ok()
                .filter(|d| *d >= Duration::from_secs(60) && *d <= Duration::from_secs(30 * 86_400))
                .ok_or_else(|| Failure::usage("--for must be a duration between 1m and 30d, such as 1h"))?
                .as_secs();
            if reason.is_empty()
                || reason.len() > 64
                || !reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(Failure::usage("--reason must be a short snake_case word"));
            }
            with_store(&cfg, |store, _| async move {
                let now = tessera_server::now();
                let until = now + i64::try_from(secs).unwrap_or(i64::MAX);
                let entry = NewRevocation {
                    kind: RevocationKind::Source,
                    subject: source.clone(),
                    not_before: None,
                    expires_at: until,
                    reason: reason.clone(),
                };
                let seq = store.revoke(&entry, now).await.map_err(store_failure)?;
                let event = tessera_core::Event {
                    ip: Some(source.clone()),
                    detail: Some(
                        serde_json::json!({ "block": source, "until": until, "why": reason }).to_string(),
                    ),
                    ..admin_event("block_source")
                };
                record(&*store, event).await?;
                emit(&format!("{source} blocked until {} (revocation #{seq})", crate::audit::rfc3339(until)))
            })
        }
        BlockCommand::Lift { source, cfg } => {
            let source = source_arg(&source)?;
            with_store(&cfg, |store, _| async move {
                let now = tessera_server::now();
                let live = store.live_revocations(now).await.map_err(store_failure)?;
                // The lift is kept as long as the block it ends, so no guard's snapshot lacks it.
                let until = in_force(&live)
                    .into_iter()
                    .find(|(s, _, _)| *s == source)
                    .map(|(_, until, _)| until)
                    .ok_or_else(|| Failure::usage(format!("{source} is not blocked")))?;
                let entry = NewRevocation {
                    kind: RevocationKind::Source,
                    subject: source.clone(),
                    not_before: Some(now),
                    expires_at: until,
                    reason: "admin_lifted".into(),
                };
                let seq = store.revoke(&entry, now).await.map_err(store_failure)?;
                let event = tessera_core::Event { ip: Some(source.clone()), ..admin_event("lift_block") };
                record(&*store, event).await?;
                emit(&format!("{source} unblocked (revocation #{seq})"))
            })
        }
        BlockCommand::List { cfg } => with_store(&cfg, |store, _| async move {
            let now = tessera_server::now();
            let live = store.live_revocations(now).await.map_err(store_failure)?;
            let blocks = in_force(&live);
            if blocks.is_empty() {
                return emit("no source is blocked");
            }
            for (source, until, reason) in blocks {
                emit(&format!("{source}\tuntil {}\t{reason}", crate::audit::rfc3339(until)))?;
            }
            Ok(())
        }),
    }
}

pub(crate) fn alerts(command: AlertsCommand) -> Result<(), Failure> {
    let AlertsCommand::List { state, limit, cfg } = command;
    with_store(&cfg, |store, _| async move {
        let alerts =
            store.list_alerts(state.as_deref(), limit.clamp(1, 10_000)).await.map_err(store_failure)?;
        if alerts.is_empty() {
            return emit("no alerts");
        }
        for a in alerts {
            let when = match (a.state.as_str(), a.delivered_at) {
                ("delivered", Some(at)) => format!("delivered {}", crate::audit::rfc3339(at)),
                ("pending", _) => format!("next attempt {}", crate::audit::rfc3339(a.next_at)),
                _ => a.state.clone(),
            };
            let error = a.last_error.map(|e| format!("\tlast error: {e}")).unwrap_or_default();
            emit(&format!(
                "{}\t{}\t{}\t{}\tattempts {}\t{when}{error}",
                a.id,
                a.sink,
                a.detection,
                crate::audit::rfc3339(a.created_at),
                a.attempts
            ))?;
        }
        Ok(())
    })
}
