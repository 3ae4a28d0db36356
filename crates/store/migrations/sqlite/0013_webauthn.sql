-- WebAuthn credentials (passkeys, security keys) as a second factor. `credential` is the serialized public
-- credential (public key, signature counter, flags): nothing in it is secret. The id is the credential id
-- (base64url), unique across every user.
CREATE TABLE webauthn_credentials (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    credential   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

-- A ceremony under way (registration or authentication): its server-side state, kept here and not in the
-- browser so that a challenge is answered once. Keyed by the hash of a random handle; taken (deleted) when
-- answered, and pruned once expired.
CREATE TABLE webauthn_ceremonies (
    handle     TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    purpose    TEXT NOT NULL,
    state      TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
