-- Login throttling, shared by every server node: one counter per account (a keyed pseudonym of the typed
-- username, so unknown names are throttled like real ones) and per source address. `version` makes each
-- update a compare-and-swap, so concurrent attempts cannot both take the last free slot.
CREATE TABLE login_throttle (
    key          TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    next_at      BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_at      BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    version      BIGINT NOT NULL
);
CREATE INDEX login_throttle_expiry ON login_throttle(expires_at);
