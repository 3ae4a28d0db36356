//! Messages to a user: a password-reset link, and the notice that their password was changed. They go by
//! email (SMTP, through `lettre`) to the user's address, or to a webhook (JSON, HMAC-SHA256 signed like the
//! alerts) that the operator bridges to whatever reaches their users. Both may be configured.
//!
//! A message is sent once, while the request waits, not through the alerts' durable outbox: a reset link
//! that did not arrive is asked for again, and the notice of a change is a courtesy beside the audit event.

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tessera_store::User;

use crate::alerts::{Sender, webhook_signature};

/// Where user messages go (`[notify]`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// `smtp://host:port` (STARTTLS when offered; `?tls=required` to insist), `smtps://host:465`, with
    /// `user:password@` if the relay needs it. Empty: no email.
    pub smtp_url: String,
    /// The sender address, such as `Tessera <no-reply@example.com>`.
    pub from: String,
    /// A URL that receives each message as signed JSON. Empty: none.
    pub webhook_url: String,
    /// The webhook's HMAC key (at least 32 characters).
    pub webhook_secret: String,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("smtp", &!self.smtp_url.is_empty())
            .field("from", &self.from)
            .field("webhook", &!self.webhook_url.is_empty())
            .finish()
    }
}

impl NotifyConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// One line naming the key.
    pub fn check(&self) -> Result<(), String> {
        if !self.smtp_url.is_empty() {
            if !(self.smtp_url.starts_with("smtp://") || self.smtp_url.starts_with("smtps://")) {
                return Err("notify.smtp_url: must be smtp://… or smtps://…".into());
            }
            if self.from.parse::<Mailbox>().is_err() {
                return Err("notify.from: must be an address, such as Tessera <no-reply@example.com>".into());
            }
        }
        if !self.webhook_url.is_empty() {
            if !(self.webhook_url.starts_with("https://") || self.webhook_url.starts_with("http://")) {
                return Err("notify.webhook_url: must be an http(s) URL".into());
            }
            if self.webhook_secret.len() < 32 {
                return Err("notify.webhook_secret: must be at least 32 characters".into());
            }
        }
        Ok(())
    }
}

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A link to set a new password.
    PasswordReset,
    /// The password was changed.
    PasswordChanged,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::PasswordReset => "password_reset",
            Kind::PasswordChanged => "password_changed",
        }
    }
}

/// Sends user messages.
#[derive(Clone)]
pub struct Notifier {
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    webhook: Option<(String, String, Sender)>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("smtp", &self.smtp.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Notifier {
    /// The notifier `config` describes (possibly one that sends nothing).
    ///
    /// # Errors
    /// If the SMTP URL or the webhook client cannot be set up.
    pub fn new(config: &NotifyConfig) -> Result<Self, String> {
        let smtp = if config.smtp_url.is_empty() {
            None
        } else {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
                .map_err(|_| "notify.smtp_url: not a usable SMTP URL".to_owned())?
                .timeout(Some(std::time::Duration::from_secs(10)))
                .build();
            let from =
                config.from.parse::<Mailbox>().map_err(|_| "notify.from: not an address".to_owned())?;
            Some((transport, from))
        };
        let webhook = if config.webhook_url.is_empty() {
            None
        } else {
            Some((config.webhook_url.clone(), config.webhook_secret.clone(), Sender::new()?))
        };
        Ok(Notifier { smtp, webhook })
    }

    /// Whether any message can go anywhere.
    pub fn enabled(&self) -> bool {
        self.smtp.is_some() || self.webhook.is_some()
    }

    /// Sends `text` (with `subject`) about `kind` to `user`; the sinks it reached (`email`, `webhook`).
    /// Failures are logged without the message (it may hold a reset link) and leave the sink out.
    pub async fn send(
        &self,
        user: &User,
        kind: Kind,
        subject: &str,
        text: &str,
        now: i64,
    ) -> Vec<&'static str> {
        let mut reached = Vec::new();
        if let (Some((transport, from)), Some(to)) = (&self.smtp, user.email.as_deref()) {
            let message = to.parse::<Mailbox>().ok().and_then(|to| {
                Message::builder().from(from.clone()).to(to).subject(subject).body(text.to_owned()).ok()
            });
            match message {
                Some(message) => match transport.send(message).await {
                    Ok(_) => reached.push("email"),
                    Err(e) => tracing::warn!(
                        kind = kind.name(),
                        transient = e.is_transient(),
                        "notice email not sent"
                    ),
                },
                None => tracing::warn!(
                    kind = kind.name(),
                    "notice email not sent: the user's address is unusable"
                ),
            }
        }
        if let Some((url, secret, sender)) = &self.webhook {
            let body = serde_json::json!({
                "type": kind.name(),
                "user": { "sub": user.id, "username": user.username, "email": user.email },
                "subject": subject,
                "text": text,
                "time": now,
            })
            .to_string()
            .into_bytes();
            let signature = webhook_signature(secret.as_bytes(), now, &body);
            let headers = [("content-type", "application/json".to_owned()), ("tessera-signature", signature)];
            match sender.post(url, &headers, body).await {
                Ok((status, _)) if status.is_success() => reached.push("webhook"),
                Ok((status, _)) => {
                    tracing::warn!(kind = kind.name(), status = status.as_u16(), "notice webhook refused")
                }
                Err(e) => tracing::warn!(kind = kind.name(), error = %e, "notice webhook failed"),
            }
        }
        reached
    }
}
