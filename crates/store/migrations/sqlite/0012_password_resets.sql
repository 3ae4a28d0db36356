-- Forgotten passwords: each user may have an address for notices and reset links, and each reset link is
-- kept as the SHA-256 of its secret, single-use, until it expires (15 minutes).
ALTER TABLE users ADD COLUMN email TEXT;

CREATE TABLE password_resets (
    hash       TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX password_resets_expiry ON password_resets(expires_at);
