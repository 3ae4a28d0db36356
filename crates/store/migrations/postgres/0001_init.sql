-- Tessera schema v1 (PostgreSQL). Times are Unix seconds; lists are JSON arrays of strings; secrets are stored
-- only as their SHA-256 (32-byte BYTEAs) or, for private signing keys, sealed with AES-256-GCM.

CREATE TABLE users (
    id                  TEXT PRIMARY KEY,
    username            TEXT NOT NULL UNIQUE,
    password_hash       TEXT NOT NULL,
    roles               TEXT NOT NULL,
    disabled            BOOLEAN NOT NULL,
    created_at          BIGINT NOT NULL,
    password_changed_at BIGINT NOT NULL
);

CREATE TABLE clients (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    secret_hash          BYTEA,
    redirect_uris        TEXT NOT NULL,
    grant_types          TEXT NOT NULL,
    audiences            TEXT NOT NULL,
    scopes               TEXT NOT NULL,
    access_ttl           BIGINT NOT NULL,
    refresh_idle_ttl     BIGINT NOT NULL,
    refresh_absolute_ttl BIGINT NOT NULL,
    first_party          BOOLEAN NOT NULL,
    disabled             BOOLEAN NOT NULL,
    created_at           BIGINT NOT NULL
);

CREATE TABLE resources (
    audience   TEXT PRIMARY KEY,
    scopes     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    alg            TEXT NOT NULL,
    state          TEXT NOT NULL,
    public_jwk     TEXT NOT NULL,
    private_sealed BYTEA NOT NULL,
    created_at     BIGINT NOT NULL,
    activated_at   BIGINT,
    retired_at     BIGINT
);

CREATE TABLE login_sessions (
    hash       BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    auth_time  BIGINT NOT NULL,
    amr        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX login_sessions_user ON login_sessions(user_id);

CREATE TABLE auth_codes (
    hash           BYTEA PRIMARY KEY,
    client_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scope          TEXT NOT NULL,
    audience       TEXT,
    nonce          TEXT,
    login_session  BYTEA,
    auth_time      BIGINT NOT NULL,
    amr            TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);

CREATE TABLE refresh_families (
    id            TEXT PRIMARY KEY,
    client_id     TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    scope         TEXT NOT NULL,
    audience      TEXT,
    auth_time     BIGINT NOT NULL,
    amr           TEXT NOT NULL,
    login_session BYTEA,
    code_hash     BYTEA,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT
);
CREATE INDEX refresh_families_user ON refresh_families(user_id);
CREATE INDEX refresh_families_client ON refresh_families(client_id);
CREATE INDEX refresh_families_login ON refresh_families(login_session);
CREATE INDEX refresh_families_code ON refresh_families(code_hash);

CREATE TABLE refresh_tokens (
    hash       BYTEA PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES refresh_families(id),
    generation BIGINT NOT NULL,
    scope      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT,
    successor  BYTEA
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

-- One row: the last revocation sequence number handed out. Incrementing it inside the inserting transaction
-- serialises revocation writers, so sequence order is commit order on every backend.
CREATE TABLE revocation_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO revocation_counter (id, value) VALUES (1, 0);

CREATE TABLE revocations (
    seq        BIGINT PRIMARY KEY,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    not_before BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    reason     TEXT NOT NULL
);
CREATE INDEX revocations_subject ON revocations(kind, subject);
CREATE INDEX revocations_expiry ON revocations(expires_at);

CREATE TABLE events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    sub        TEXT,
    sid        TEXT,
    jti        TEXT,
    client_id  TEXT,
    audience   TEXT,
    reason     TEXT,
    detail     TEXT
);
CREATE INDEX events_kind ON events(kind, at);
