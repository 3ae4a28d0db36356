-- At most one key signs (the PostgreSQL migration of the same number also adds the change announcements,
-- which SQLite, with a single node, does without).
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';
