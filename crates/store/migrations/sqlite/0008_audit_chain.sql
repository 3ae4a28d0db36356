-- The audit log becomes a hash chain (see tessera_core::audit). The writer numbers events itself (id = the
-- head's seq + 1), so ids are contiguous; each row holds its predecessor's hash and its own. audit_head is
-- the chain's last link, updated in the same transaction as every append (its row lock orders writers on
-- PostgreSQL). Events written before this migration stay unhashed behind the first checkpoint.
ALTER TABLE events ADD COLUMN service TEXT;
ALTER TABLE events ADD COLUMN route TEXT;
ALTER TABLE events ADD COLUMN outcome TEXT;
ALTER TABLE events ADD COLUMN actor TEXT;
ALTER TABLE events ADD COLUMN prev_hash BLOB;
ALTER TABLE events ADD COLUMN hash BLOB;

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) SELECT 1, COALESCE(MAX(id), 0), zeroblob(32) FROM events;

-- The last event removed by retention (or the last before the chain began), and its hash: where `audit
-- verify` starts.
CREATE TABLE audit_checkpoints (
    through_seq BIGINT PRIMARY KEY,
    hash        BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    reason      TEXT NOT NULL
);
INSERT INTO audit_checkpoints (through_seq, hash, created_at, reason)
    SELECT COALESCE(MAX(id), 0), zeroblob(32), CAST(strftime('%s', 'now') AS INTEGER), 'chain_start' FROM events;

-- Searches by time use events_at; by kind, events_at and a filter (kinds are few, times are selective).
-- Every index costs each event a B-tree insert, which is most of what an event costs.
DROP INDEX events_kind;
CREATE INDEX events_at ON events(at);
CREATE INDEX events_sub ON events(sub) WHERE sub IS NOT NULL;
CREATE INDEX events_sid ON events(sid) WHERE sid IS NOT NULL;
CREATE INDEX events_jti ON events(jti) WHERE jti IS NOT NULL;
CREATE INDEX events_client ON events(client_id) WHERE client_id IS NOT NULL;
CREATE INDEX events_ip ON events(ip) WHERE ip IS NOT NULL;

-- Append-only, as far as the database can say so: no event is ever updated, and only events behind a
-- checkpoint may be deleted. (Whoever can drop a trigger can still edit a row; `tessera audit verify`
-- catches that.)
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.id > (SELECT MAX(through_seq) FROM audit_checkpoints)
BEGIN
    SELECT RAISE(ABORT, 'only events behind an audit checkpoint may be deleted');
END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;
