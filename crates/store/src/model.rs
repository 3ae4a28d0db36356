//! The records the store keeps. Secrets appear only as [`TokenHash`]es; password hashes and sealed keys are
//! redacted from `Debug`.

use std::fmt;

use tessera_core::mfa::MfaPolicy;
use tessera_core::{ChainHash, ClientKind, GrantType, KeyState, RevocationKind, TokenHash};

/// Unix seconds, as the store keeps every time.
pub type Time = i64;

/// A user who can log in.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Stable, random id: the `sub` of the user's tokens.
    pub id: String,
    /// Unique login name.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Roles copied into the user's access tokens.
    pub roles: Vec<String>,
    /// A disabled user cannot log in or refresh.
    pub disabled: bool,
    /// When the user was created.
    pub created_at: Time,
    /// When the password was last set.
    pub password_changed_at: Time,
    /// The next login must set a new password before any token is issued (a `revoke_user` response or an
    /// administrator set this; a new password clears it).
    pub must_reset_password: bool,
    /// Sessions authenticated at or before this time may not refresh: they must log in again
    /// (`require_step_up`).
    pub step_up_after: Option<Time>,
    /// Where notices (a changed password) and reset links go.
    pub email: Option<String>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .field("must_reset_password", &self.must_reset_password)
            .field("step_up_after", &self.step_up_after)
            .finish_non_exhaustive()
    }
}

/// An OAuth client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// `client_id`.
    pub id: String,
    /// Human-readable name, shown on the consent screen.
    pub name: String,
    /// Public or confidential.
    pub kind: ClientKind,
    /// SHA-256 of the secret (confidential clients only).
    pub secret_hash: Option<TokenHash>,
    /// Registered redirect URIs, matched exactly.
    pub redirect_uris: Vec<String>,
    /// Grants this client may use.
    pub grant_types: Vec<GrantType>,
    /// Audiences (resources) this client may get tokens for.
    pub audiences: Vec<String>,
    /// Scopes this client may ask for.
    pub scopes: Vec<String>,
    /// Access-token lifetime, seconds.
    pub access_ttl: i64,
    /// Refresh-token idle lifetime, seconds.
    pub refresh_idle_ttl: i64,
    /// Refresh-family absolute lifetime, seconds.
    pub refresh_absolute_ttl: i64,
    /// First-party clients skip the consent screen.
    pub first_party: bool,
    /// A disabled client gets no tokens.
    pub disabled: bool,
    /// When the client was created.
    pub created_at: Time,
    /// Tokens for this client are DPoP-bound only: a token request without a proof is refused.
    pub require_dpop: bool,
    /// The client's public JWKS (JSON), for `private_key_jwt` client authentication (RFC 7523). A
    /// confidential client may have a secret, keys, or both; removing the secret switches `client_secret_*`
    /// off for it.
    pub jwks: Option<String>,
    /// The audiences this client may exchange a token for (RFC 8693). Empty: it may exchange none.
    pub exchange_audiences: Vec<String>,
    /// The audiences this client is the resource server for: tokens for them are sent to it, so it may
    /// exchange them, introspect them and report their use from its guard. Distinct from `audiences`, which
    /// are the services it may get tokens for. Confidential clients only.
    pub serves: Vec<String>,
    /// When this client's users must show a second factor.
    pub mfa: MfaPolicy,
}

/// A user's TOTP factor: the sealed secret in use and one being enrolled. `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpFactor {
    /// The confirmed secret, sealed under the key-encryption key.
    pub secret_sealed: Option<Vec<u8>>,
    /// A secret being enrolled, until a first code confirms it.
    pub pending_sealed: Option<Vec<u8>>,
    /// The last TOTP step accepted (0: none).
    pub last_step: i64,
    /// When the factor was confirmed.
    pub confirmed_at: Option<Time>,
}

impl fmt::Debug for TotpFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpFactor")
            .field("confirmed", &self.secret_sealed.is_some())
            .field("enrolling", &self.pending_sealed.is_some())
            .field("last_step", &self.last_step)
            .field("confirmed_at", &self.confirmed_at)
            .finish()
    }
}

/// A user's registered WebAuthn credential (a passkey or a security key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnCredential {
    /// The credential id (base64url), unique across every user.
    pub id: String,
    /// Its user.
    pub user_id: String,
    /// The name the user gave it.
    pub name: String,
    /// The serialized public credential (public key, signature counter): public data.
    pub credential: String,
    /// When it was registered.
    pub created_at: Time,
    /// When it last signed a sign-in.
    pub last_used_at: Option<Time>,
}

/// A resource server: an audience tokens can be issued for, with the scopes it understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The `aud` value, usually the service's URL.
    pub audience: String,
    /// Scopes defined by this resource.
    pub scopes: Vec<String>,
    /// When it was registered.
    pub created_at: Time,
}

/// A signing key with its private half sealed under the key-encryption key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// JWS `alg`.
    pub alg: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// The public JWK, as published.
    pub public_jwk: String,
    /// AES-256-GCM nonce ‖ ciphertext ‖ tag of the PKCS#8 document.
    pub private_sealed: Vec<u8>,
    /// When it was created.
    pub created_at: Time,
    /// When it became current.
    pub activated_at: Option<Time>,
    /// When it stopped signing.
    pub retired_at: Option<Time>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// A browser login session (the cookie's hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSession {
    /// SHA-256 of the cookie value.
    pub hash: TokenHash,
    /// Who logged in.
    pub user_id: String,
    /// When the user authenticated.
    pub auth_time: Time,
    /// Authentication methods used (`pwd`, `otp`, …).
    pub amr: Vec<String>,
    /// When the session was created.
    pub created_at: Time,
    /// When it ends.
    pub expires_at: Time,
    /// When it was ended early (logout, revocation).
    pub revoked_at: Option<Time>,
}

/// An authorization code, bound to its client, redirect URI and PKCE challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCode {
    /// SHA-256 of the code.
    pub hash: TokenHash,
    /// The client it was issued to.
    pub client_id: String,
    /// The user who authorised it.
    pub user_id: String,
    /// The exact redirect URI of the request.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// Granted scope (space-separated).
    pub scope: String,
    /// RFC 8707 resource: the access token's single audience.
    pub audience: Option<String>,
    /// OIDC nonce for the ID token.
    pub nonce: Option<String>,
    /// The login session it came from.
    pub login_session: Option<TokenHash>,
    /// When the user authenticated.
    pub auth_time: Time,
    /// Authentication methods used.
    pub amr: Vec<String>,
    /// When it was issued.
    pub created_at: Time,
    /// When it stops being redeemable.
    pub expires_at: Time,
    /// The authorization request's `dpop_jkt` (RFC 9449 §10): the code is redeemable only with a DPoP proof
    /// by this key.
    pub dpop_jkt: Option<String>,
}

/// What redeeming a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeUse {
    /// First use: the code is now spent.
    Fresh(AuthCode),
    /// The code was already spent: a replay.
    Replayed(AuthCode),
    /// No such code.
    Unknown,
}

/// A refresh family: one session's chain of rotated refresh tokens. Its id is the tokens' `sid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Random id, the `sid`.
    pub id: String,
    /// The client it belongs to.
    pub client_id: String,
    /// The user.
    pub user_id: String,
    /// Scope granted at the start.
    pub scope: String,
    /// The single audience of its access tokens.
    pub audience: Option<String>,
    /// When the user authenticated.
    pub auth_time: Time,
    /// Authentication methods used.
    pub amr: Vec<String>,
    /// The browser session it came from.
    pub login_session: Option<TokenHash>,
    /// The code it was redeemed from.
    pub code_hash: Option<TokenHash>,
    /// When it started.
    pub created_at: Time,
    /// Absolute end of the family.
    pub expires_at: Time,
    /// When it was revoked.
    pub revoked_at: Option<Time>,
    /// The thumbprint of the DPoP key the family is bound to: every rotation needs a proof by that key.
    pub dpop_jkt: Option<String>,
}

/// One refresh token of a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// SHA-256 of the token.
    pub hash: TokenHash,
    /// Its family.
    pub family_id: String,
    /// 0 for the first token, +1 per rotation.
    pub generation: i64,
    /// Scope of this token (can only narrow along the chain).
    pub scope: String,
    /// When it was issued.
    pub created_at: Time,
    /// Idle expiry.
    pub expires_at: Time,
    /// When it was rotated, if it was.
    pub rotated_at: Option<Time>,
    /// The hash of its successor, once rotated.
    pub successor: Option<TokenHash>,
}

/// What a rotation compare-and-swap found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// This call rotated the token; the successor is stored.
    Rotated,
    /// Another call had rotated it (or the family is revoked): nothing was written.
    Lost,
}

/// A committed revocation entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Monotonic sequence number; commit order.
    pub seq: i64,
    /// What it matches.
    pub kind: RevocationKind,
    /// The `jti`, `sid`, `sub`, `client_id` or `kid`.
    pub subject: String,
    /// For users and clients: tokens issued before this time are revoked.
    pub not_before: Option<Time>,
    /// When it was committed.
    pub created_at: Time,
    /// When no token it can match is still valid; it may be pruned after.
    pub expires_at: Time,
    /// Why (a stable snake_case reason).
    pub reason: String,
}

/// A revocation to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevocation {
    /// What it matches.
    pub kind: RevocationKind,
    /// The `jti`, `sid`, `sub`, `client_id` or `kid`.
    pub subject: String,
    /// For users and clients: tokens issued before this time are revoked.
    pub not_before: Option<Time>,
    /// When it may be pruned.
    pub expires_at: Time,
    /// Why.
    pub reason: String,
}

/// The identifying claims of a token, to check against the revocation set.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// `sid`, if any.
    pub sid: Option<&'a str>,
    /// `sub`.
    pub sub: &'a str,
    /// `client_id`.
    pub client_id: &'a str,
    /// `kid` of the signing key.
    pub kid: &'a str,
    /// `iat`.
    pub iat: Time,
    /// For an exchanged token, the tokens it came from (the `origin` claim): a revocation of any of them,
    /// of its client or of its key revokes this token too.
    pub origin: &'a [OriginRef<'a>],
}

/// One token an exchanged token came from.
#[derive(Debug, Clone, Copy)]
pub struct OriginRef<'a> {
    /// Its `jti`.
    pub jti: &'a str,
    /// Its `client_id`.
    pub client_id: &'a str,
    /// The `kid` of the key that signed it.
    pub kid: &'a str,
    /// Its `iat`.
    pub iat: Time,
}

pub use tessera_core::audit::Event;

/// An event as the audit log holds it: its number in the chain and its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its number: the chain's order.
    pub seq: i64,
    /// The event.
    pub event: Event,
    /// The hash of the event before it; `None` only for events written before the chain began.
    pub prev_hash: Option<ChainHash>,
    /// Its own hash; `None` only for events written before the chain began.
    pub hash: Option<ChainHash>,
}

/// Which events to read, oldest first. Every filter that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events after this number (paging).
    pub after_seq: i64,
    /// Subject.
    pub sub: Option<String>,
    /// Session.
    pub sid: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// Client.
    pub client_id: Option<String>,
    /// Source IP.
    pub ip: Option<String>,
    /// Any of these kinds (none: every kind).
    pub kinds: Vec<String>,
    /// At or after this time.
    pub since: Option<Time>,
    /// Before this time.
    pub until: Option<Time>,
    /// The newest `limit` matches instead of the oldest (still returned oldest first).
    pub newest: bool,
    /// At most this many.
    pub limit: i64,
}

/// Where the audit chain starts and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditState {
    /// The latest checkpoint: the last event removed (or written before the chain began).
    pub checkpoint_seq: i64,
    /// That event's hash (zeros at the chain's start).
    pub checkpoint_hash: ChainHash,
    /// When the checkpoint was recorded.
    pub checkpoint_at: Time,
    /// Why: `chain_start` or `retention`.
    pub checkpoint_reason: String,
    /// The last event written.
    pub head_seq: i64,
    /// Its hash.
    pub head_hash: ChainHash,
}

/// An alert to queue for delivery to one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// Unique and sortable: the receiver's deduplication key.
    pub id: String,
    /// `webhook` or `set`.
    pub sink: String,
    /// The detection's key (rule and subject), for listing.
    pub detection: String,
    /// What to send (the webhook's JSON body, or the SET's claims before signing).
    pub payload: String,
    /// Not sent before this time (a hold while the detection's responses run).
    pub next_at: Time,
}

/// A queued or finished alert delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Unique and sortable.
    pub id: String,
    /// `webhook` or `set`.
    pub sink: String,
    /// The detection's key.
    pub detection: String,
    /// What is sent.
    pub payload: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub state: String,
    /// When it was queued.
    pub created_at: Time,
    /// When it is next due (or, while a node delivers it, when that node's lease ends).
    pub next_at: Time,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed (a status code or a transport error kind; never a response body).
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<Time>,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertOutcome {
    /// The receiver accepted it.
    Delivered,
    /// Try again at `next_at`.
    Retry {
        /// Why this attempt failed.
        error: String,
        /// When to try again.
        next_at: Time,
    },
    /// Give up: the receiver refused it for good, or it is too old.
    Failed {
        /// Why.
        error: String,
    },
}

/// An incident: a user, session, token or client under investigation, and where its response stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// Its number, as responders type it.
    pub id: i64,
    /// What it is about, as `user:ID`, `client:ID`, `session:SID` or `token:JTI`; one live incident each.
    pub subject: String,
    /// The user, where known.
    pub user_id: Option<String>,
    /// The session named when it was opened.
    pub sid: Option<String>,
    /// The token named when it was opened.
    pub jti: Option<String>,
    /// The client named when it was opened.
    pub client_id: Option<String>,
    /// Why it was opened (an operator's words, or a detection's explanation).
    pub reason: String,
    /// The key of the detection that opened it, if one did.
    pub detection: Option<String>,
    /// `open`, `contained` or `closed`.
    pub state: String,
    /// When it was opened.
    pub opened_at: Time,
    /// Who opened it (`cli:alice`, `admin:u_1`, `detector`).
    pub opened_by: String,
    /// When it was first contained.
    pub contained_at: Option<Time>,
    /// When it was closed.
    pub closed_at: Option<Time>,
    /// Who closed it.
    pub closed_by: Option<String>,
}

/// A new incident: everything but its number and state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewIncident {
    /// What it is about (see [`Incident::subject`]).
    pub subject: String,
    /// The user, where known.
    pub user_id: Option<String>,
    /// The session.
    pub sid: Option<String>,
    /// The token.
    pub jti: Option<String>,
    /// The client.
    pub client_id: Option<String>,
    /// Why.
    pub reason: String,
    /// The detection that opened it.
    pub detection: Option<String>,
    /// Who.
    pub opened_by: String,
}

/// One thing done on an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentAction {
    /// Its place in the incident's record (1, 2, …).
    pub seq: i64,
    /// When.
    pub at: Time,
    /// Who (`cli:alice`, `detector`).
    pub actor: String,
    /// What (`revoke_sessions`, `revoke_user`, `force_password_reset`, `reset_mfa`, `revoke_client`,
    /// `rotate_client_secret`, `block_source`, `detection`, `response`, `close`).
    pub action: String,
    /// On what (`user:ID`, `client:ID`, `ip:ADDR`, a detection key).
    pub target: String,
    /// How it went (`revoked 2 sessions`, `blocked until …`, `skipped: …`).
    pub outcome: String,
}

/// What `contain` is to do, beyond the user's sessions, tokens and password (always, when the incident has
/// a user).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Containment {
    /// Who is doing it.
    pub actor: String,
    /// Remove the user's second factors, so that they enrol again.
    pub reset_mfa: bool,
    /// Revoke this client's tokens and, for a confidential client, replace its secret with this hash
    /// (`None`: the client has no secret to rotate).
    pub client: Option<(String, Option<TokenHash>)>,
    /// Block these source addresses or networks until the given time (and that time as the record shows
    /// it).
    pub block: Vec<(String, Time, String)>,
}

/// What a `contain` did: the incident afterwards, the steps this call took, and those an earlier call had
/// already taken (and that were therefore skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contained {
    /// The incident, now contained.
    pub incident: Incident,
    /// The steps taken now.
    pub taken: Vec<IncidentAction>,
    /// The steps found already taken.
    pub already: Vec<IncidentAction>,
    /// The highest revocation sequence number written (0 if none): what the guards must reach.
    pub revocation_seq: i64,
}
