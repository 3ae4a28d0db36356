-- The audit log becomes a hash chain (see tessera_core::audit). The writer numbers events itself (id = the
-- head's seq + 1), so ids are contiguous; each row holds its predecessor's hash and its own. audit_head is
-- the chain's last link, updated in the same transaction as every append: its row lock orders the writers
-- of every node. Events written before this migration stay unhashed behind the first checkpoint.
ALTER TABLE events ALTER COLUMN id DROP IDENTITY;
ALTER TABLE events ADD COLUMN service TEXT;
ALTER TABLE events ADD COLUMN route TEXT;
ALTER TABLE events ADD COLUMN outcome TEXT;
ALTER TABLE events ADD COLUMN actor TEXT;
ALTER TABLE events ADD COLUMN prev_hash BYTEA;
ALTER TABLE events ADD COLUMN hash BYTEA;

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) SELECT 1, COALESCE(MAX(id), 0), '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea FROM events;

-- The last event removed by retention (or the last before the chain began), and its hash: where `audit
-- verify` starts.
CREATE TABLE audit_checkpoints (
    through_seq BIGINT PRIMARY KEY,
    hash        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    reason      TEXT NOT NULL
);
INSERT INTO audit_checkpoints (through_seq, hash, created_at, reason)
    SELECT COALESCE(MAX(id), 0), '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea,
           extract(epoch FROM now())::BIGINT, 'chain_start' FROM events;

-- Searches by time use events_at; by kind, events_at and a filter (kinds are few, times are selective).
-- Every index costs each event a B-tree insert, which is most of what an event costs.
DROP INDEX events_kind;
CREATE INDEX events_at ON events(at);
CREATE INDEX events_sub ON events(sub) WHERE sub IS NOT NULL;
CREATE INDEX events_sid ON events(sid) WHERE sid IS NOT NULL;
CREATE INDEX events_jti ON events(jti) WHERE jti IS NOT NULL;
CREATE INDEX events_client ON events(client_id) WHERE client_id IS NOT NULL;
CREATE INDEX events_ip ON events(ip) WHERE ip IS NOT NULL;

-- Append-only, as far as the database can say so: no event is ever updated or truncated, and only events
-- behind a checkpoint may be deleted. (Whoever can drop a trigger can still edit a row; `tessera audit
-- verify` catches that.)
CREATE FUNCTION tessera_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.id <= (SELECT MAX(through_seq) FROM audit_checkpoints) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'only events behind an audit checkpoint may be deleted';
    END IF;
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION tessera_events_guard();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_events_guard();

CREATE FUNCTION tessera_checkpoints_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit checkpoints are append-only';
END
$$;
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_checkpoints_guard();
