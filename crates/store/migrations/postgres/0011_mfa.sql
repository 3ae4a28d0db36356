-- Second factors. A TOTP secret is sealed under the key-encryption key (AES-256-GCM, the user id as
-- associated data): unlike a password it must be read back to compute codes. `pending_sealed` holds a secret
-- being enrolled until a first code confirms it. `last_step` is the last TOTP step accepted, so a code is
-- never accepted twice. Recovery codes are kept as SHA-256 hashes, each usable once.
CREATE TABLE totp_factors (
    user_id        TEXT PRIMARY KEY,
    secret_sealed  BYTEA,
    pending_sealed BYTEA,
    last_step      BIGINT NOT NULL DEFAULT 0,
    confirmed_at   BIGINT,
    created_at     BIGINT NOT NULL
);

CREATE TABLE recovery_codes (
    user_id    TEXT NOT NULL,
    hash       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, hash)
);

-- Each client's MFA policy: required, risky (the default) or off.
ALTER TABLE clients ADD COLUMN mfa TEXT NOT NULL DEFAULT 'risky';
