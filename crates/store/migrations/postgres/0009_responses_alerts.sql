-- Detection responses and alert delivery.
--
-- users.must_reset_password: set by a `revoke_user` response (or an administrator); the next login must set
-- a new password before any token is issued. users.step_up_after: set by `require_step_up`; a session
-- authenticated at or before it may not refresh, and must log in again.
ALTER TABLE users ADD COLUMN must_reset_password BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN step_up_after BIGINT;

-- One row per raised detection key while its evidence can still be seen: the claim that makes every node
-- raise a finding once. Queued alerts are inserted in the claiming transaction.
CREATE TABLE detections (
    key_hash   TEXT PRIMARY KEY,
    rule       TEXT NOT NULL,
    raised_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The durable alert outbox: each row is one delivery to one sink, retried with backoff until delivered or
-- given up. `next_at` doubles as a lease: a node taking a row moves it into the future first, so a node
-- killed mid-delivery leaves the row to be taken again once the lease passes (at-least-once delivery; the
-- receiver deduplicates by the alert id).
CREATE TABLE alert_outbox (
    id           TEXT PRIMARY KEY,
    sink         TEXT NOT NULL,
    detection    TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    next_at      BIGINT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at BIGINT
);
CREATE INDEX alert_outbox_due ON alert_outbox(state, next_at);
