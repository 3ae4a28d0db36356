//! `tessera user` and `tessera revoke`: accounts, passwords and revocation, against the server's database.
//!
//! Passwords are read from a terminal prompt without echo, or as one line of standard input when it is not a
//! terminal; never from an argument, where shell history and `ps` would keep them.

use std::io::{BufRead as _, IsTerminal as _};

use clap::{Args, Subcommand};
use tessera_core::RevocationKind;
use tessera_store::{NewRevocation, REVOCATION_HORIZON_SECS, Store, StoreError, User};
use zeroize::Zeroizing;

use tessera_core::{Event, EventKind};

use crate::admin::{ConfigArgs, admin_event, record, store_failure, with_store};
use crate::{Failure, emit};

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user; the password is read from a prompt or standard input.
    Add {
        /// The login name.
        username: String,
        /// A role for the user's tokens (repeatable).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// The address reset links and notices go to.
        #[arg(long, value_name = "ADDRESS")]
        email: Option<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Set the address a user's reset links and notices go to; none given: remove it.
    SetEmail {
        /// The login name.
        username: String,
        /// The address.
        email: Option<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Show one user.
    Show {
        /// The login name.
        username: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Disable a user and revoke every session and token of theirs.
    Disable {
        /// The login name.
        username: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Enable a disabled user.
    Enable {
        /// The login name.
        username: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Set a new password (read from a prompt or standard input); every session of the user is revoked.
    SetPassword {
        /// The login name.
        username: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Manage a user's second factors.
    Mfa {
        #[command(subcommand)]
        cmd: MfaCommand,
    },
    /// Show a user's roles, or replace them with the roles given.
    Roles {
        /// The login name.
        username: String,
        /// The new roles; none given: print the current roles.
        roles: Vec<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

/// `tessera user mfa …`.
#[derive(Debug, Subcommand)]
pub(crate) enum MfaCommand {
    /// Remove every second factor of a user (authenticator app and recovery codes), for a user who lost
    /// them; the user signs in with the password alone until enrolling again (or must enrol at once where a
    /// client requires MFA).
    Reset {
        /// The login name.
        username: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

/// What to revoke: exactly one subject.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct RevokeTarget {
    /// An access token, by its `jti`.
    #[arg(long, value_name = "JTI")]
    token: Option<String>,
    /// A session (refresh family), by its `sid`: its refresh tokens and access tokens.
    #[arg(long, value_name = "SID")]
    session: Option<String>,
    /// Every session and token of a user, by login name.
    #[arg(long, value_name = "USERNAME")]
    user: Option<String>,
    /// Every token issued to a client.
    #[arg(long, value_name = "CLIENT_ID")]
    client: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    target: RevokeTarget,
    /// Why, recorded with the revocation (a short snake_case word).
    #[arg(long, default_value = "admin_revoked")]
    reason: String,
    #[command(flatten)]
    cfg: ConfigArgs,
}

/// Reads a password: a no-echo prompt on a terminal, else one line of stdin.
fn read_password(prompt: &str) -> Result<Zeroizing<String>, Failure> {
    let password = if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(
            rpassword::prompt_password(prompt)
                .map_err(|e| Failure::usage(format!("cannot read the password: {}", e.kind())))?,
        );
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat: ")
                .map_err(|e| Failure::usage(format!("cannot read the password: {}", e.kind())))?,
        );
        if *first != *again {
            return Err(Failure::usage("the passwords differ"));
        }
        first
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("cannot read the password from stdin: {}", e.kind())))?;
        Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    Ok(password)
}

/// Checks a new password against the configured rules (length, the user's name, the breached list), then
/// hashes it.
async fn checked_hash(
    config: &tessera_server::Config,
    username: &str,
    password: &str,
) -> Result<String, Failure> {
    let rules = tessera_server::passwords::Rules::new(&config.passwords).map_err(Failure::usage)?;
    rules.check(username, password).await.map_err(Failure::usage)?;
    tessera_server::passwords::hash_blocking(password).map_err(Failure::usage)
}

async fn find(store: &dyn Store, username: &str) -> Result<User, Failure> {
    store
        .user_by_name(username)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| Failure::usage(format!("no user {username}")))
}

fn describe(u: &User) -> String {
    [
        format!("username: {}", u.username),
        format!("id (sub): {}", u.id),
        format!("state: {}", if u.disabled { "disabled" } else { "enabled" }),
        format!("must reset password: {}", if u.must_reset_password { "yes" } else { "no" }),
        format!("roles: {}", u.roles.join(" ")),
        format!("email: {}", u.email.as_deref().unwrap_or("")),
        format!("created_at: {}", u.created_at),
        format!("password_changed_at: {}", u.password_changed_at),
    ]
    .join("\n")
}

fn valid_email(email: Option<&str>) -> Result<(), Failure> {
    let ok = email.is_none_or(|e| {
        e.len() <= 254
            && e.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
            && !e.chars().any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
    });
    if ok { Ok(()) } else { Err(Failure::usage("--email must be an address such as alice@example.com")) }
}

fn valid_username(name: &str) -> Result<(), Failure> {
    let ok =
        !name.is_empty() && name.len() <= 128 && !name.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok { Ok(()) } else { Err(Failure::usage("a username is 1-128 characters without spaces")) }
}

pub(crate) fn user(cmd: UserCommand) -> Result<(), Failure> {
    match cmd {
        UserCommand::Add { username, roles, email, cfg } => {
            valid_email(email.as_deref())?;
            valid_username(&username)?;
            let password = read_password(&format!("Password for {username}: "))?;
            with_store(&cfg, |store, config| async move {
                let password_hash = checked_hash(&config, &username, &password).await?;
                let now = tessera_server::now();
                let id = tessera_server::crypto::random_id().map_err(|e| Failure::usage(e.0))?;
                let mut roles = roles;
                roles.sort();
                roles.dedup();
                let user = User {
                    id,
                    username: username.clone(),
                    password_hash,
                    roles,
                    disabled: false,
                    created_at: now,
                    password_changed_at: now,
                    must_reset_password: false,
                    step_up_after: None,
                    email,
                };
                store.create_user(&user).await.map_err(|e| match e {
                    StoreError::Conflict(_) => Failure::usage(format!("user {username} already exists")),
                    other => store_failure(other),
                })?;
                record(&*store, Event { sub: Some(user.id.clone()), ..admin_event("user_add") }).await?;
                emit(&describe(&user))
            })
        }
        UserCommand::List { cfg } => with_store(&cfg, |store, _| async move {
            let mut lines = vec![format!("{:<24} {:<24} {:<9} ROLES", "USERNAME", "ID", "STATE")];
            for u in store.list_users().await.map_err(store_failure)? {
                let state = if u.disabled { "disabled" } else { "enabled" };
                lines.push(format!("{:<24} {:<24} {:<9} {}", u.username, u.id, state, u.roles.join(",")));
            }
            emit(&lines.join("\n"))
        }),
        UserCommand::Show { username, cfg } => with_store(&cfg, |store, _| async move {
            let u = find(&*store, &username).await?;
            let totp = store.totp_factor(&u.id).await.map_err(store_failure)?;
            let keys = store.webauthn_credentials(&u.id).await.map_err(store_failure)?;
            let mut factors = Vec::new();
            if totp.is_some_and(|t| t.secret_sealed.is_some()) {
                factors.push("totp".to_owned());
            }
            if !keys.is_empty() {
                let names: Vec<String> = keys.iter().map(|k| format!("{:?}", k.name)).collect();
                factors.push(format!("passkeys {}", names.join(", ")));
            }
            let mfa = if factors.is_empty() {
                "none".to_owned()
            } else {
                let left = store.recovery_codes_left(&u.id).await.map_err(store_failure)?;
                format!("{}; {left} recovery codes left", factors.join("; "))
            };
            emit(&format!("{}\nmfa: {mfa}", describe(&u)))
        }),
        UserCommand::SetEmail { username, email, cfg } => {
            valid_email(email.as_deref())?;
            with_store(&cfg, |store, _| async move {
                let u = find(&*store, &username).await?;
                store.set_user_email(&u.id, email.as_deref()).await.map_err(store_failure)?;
                let event = Event { sub: Some(u.id.clone()), ..admin_event("user_set_email") };
                record(&*store, event).await?;
                emit(&format!("email of {username}: {}", email.as_deref().unwrap_or("(none)")))
            })
        }
        UserCommand::Mfa { cmd: MfaCommand::Reset { username, cfg } } => {
            with_store(&cfg, |store, _| async move {
                let u = find(&*store, &username).await?;
                let removed = store.reset_mfa(&u.id).await.map_err(store_failure)?;
                let detail = serde_json::json!({ "removed": removed }).to_string();
                let event =
                    Event { sub: Some(u.id.clone()), detail: Some(detail), ..admin_event("user_mfa_reset") };
                record(&*store, event).await?;
                if removed {
                    emit(&format!("second factors of {username} removed"))
                } else {
                    emit(&format!("{username} had no second factor"))
                }
            })
        }
        UserCommand::Disable { username, cfg } => with_store(&cfg, |store, _| async move {
            let u = find(&*store, &username).await?;
            store.set_user_disabled(&u.id, true).await.map_err(store_failure)?;
            let seq = store
                .revoke_user(&u.id, "user_disabled", false, tessera_server::now())
                .await
                .map_err(store_failure)?;
            record(&*store, Event { sub: Some(u.id.clone()), ..admin_event("user_disable") }).await?;
            emit(&format!("user {username} disabled; every session and token revoked (revocation #{seq})"))
        }),
        UserCommand::Enable { username, cfg } => with_store(&cfg, |store, _| async move {
            let u = find(&*store, &username).await?;
            store.set_user_disabled(&u.id, false).await.map_err(store_failure)?;
            record(&*store, Event { sub: Some(u.id.clone()), ..admin_event("user_enable") }).await?;
            emit(&format!("user {username} enabled"))
        }),
        UserCommand::SetPassword { username, cfg } => {
            let password = read_password(&format!("New password for {username}: "))?;
            with_store(&cfg, |store, config| async move {
                let password_hash = checked_hash(&config, &username, &password).await?;
                let u = find(&*store, &username).await?;
                let seq = store
                    .set_password(&u.id, &password_hash, tessera_server::now())
                    .await
                    .map_err(store_failure)?
                    .ok_or_else(|| Failure::usage(format!("no user {username}")))?;
                let event = Event {
                    sub: Some(u.id.clone()),
                    reason: Some("admin_set".into()),
                    ..Event::new(EventKind::PasswordChanged, tessera_server::now())
                };
                record(&*store, event).await?;
                emit(&format!("password of {username} changed; every session revoked (revocation #{seq})"))
            })
        }
        UserCommand::Roles { username, roles, cfg } => with_store(&cfg, |store, _| async move {
            let u = find(&*store, &username).await?;
            if roles.is_empty() {
                return emit(&u.roles.join("\n"));
            }
            let mut roles = roles;
            roles.sort();
            roles.dedup();
            store.set_user_roles(&u.id, &roles).await.map_err(store_failure)?;
            let detail = serde_json::json!({ "roles": roles }).to_string();
            let event =
                Event { sub: Some(u.id.clone()), detail: Some(detail), ..admin_event("user_set_roles") };
            record(&*store, event).await?;
            emit(&format!("roles of {username}: {} (in tokens issued from now on)", roles.join(" ")))
        }),
    }
}

pub(crate) fn revoke(args: RevokeArgs) -> Result<(), Failure> {
    let reason = args.reason.clone();
    if reason.is_empty() || reason.len() > 64 || !reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(Failure::usage("--reason must be a short snake_case word"));
    }
    with_store(&args.cfg, |store, _| async move {
        let now = tessera_server::now();
        let t = args.target;
        let mut event = Event { reason: Some(reason.clone()), ..Event::new(EventKind::TokenRevoked, now) };
        let message = if let Some(jti) = t.token {
            event.jti = Some(jti.clone());
            let entry = NewRevocation {
                kind: RevocationKind::Token,
                subject: jti.clone(),
                not_before: None,
                expires_at: now + REVOCATION_HORIZON_SECS,
                reason,
            };
            let seq = store.revoke(&entry, now).await.map_err(store_failure)?;
            format!("token {jti} revoked (revocation #{seq})")
        } else if let Some(sid) = t.session {
            event.sid = Some(sid.clone());
            if store.family(&sid).await.map_err(store_failure)?.is_none() {
                return Err(Failure::usage(format!("no session {sid}")));
            }
            store.revoke_family(&sid, &reason, now).await.map_err(store_failure)?;
            format!("session {sid} revoked")
        } else if let Some(username) = t.user {
            let u = find(&*store, &username).await?;
            event.sub = Some(u.id.clone());
            let seq = store.revoke_user(&u.id, &reason, false, now).await.map_err(store_failure)?;
            format!("every session and token of {username} revoked (revocation #{seq})")
        } else if let Some(client) = t.client {
            event.client_id = Some(client.clone());
            if store.client(&client).await.map_err(store_failure)?.is_none() {
                return Err(Failure::usage(format!("no client {client}")));
            }
            let seq = store.revoke_client(&client, &reason, now).await.map_err(store_failure)?;
            format!("every token of client {client} revoked (revocation #{seq})")
        } else {
            return Err(Failure::usage("name what to revoke: --token, --session, --user or --client"));
        };
        record(&*store, event).await?;
        emit(&message)
    })
}
