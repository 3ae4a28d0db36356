-- Several server nodes on one database.
--
-- Every committed change that other nodes must act on at once is announced with NOTIFY on a channel named
-- after what changed; the payload is the schema, so deployments sharing one database in separate schemas do
-- not wake each other. NOTIFY is sent at commit (never for a rolled-back change) and PostgreSQL folds
-- identical ones within a transaction into one, so a containment revoking a hundred sessions wakes each node
-- once. A node that misses a notification (its listening connection dropped) re-reads by sequence number.
CREATE FUNCTION tessera_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], current_schema());
    RETURN NULL;
END
$$;

CREATE TRIGGER revocations_announce AFTER INSERT ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_announce('tessera_revocations');
CREATE TRIGGER signing_keys_announce AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_announce('tessera_keys');
CREATE TRIGGER change_counter_announce AFTER UPDATE ON change_counter
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_announce('tessera_directory');

-- At most one key signs. Promotions serialise on the current key's row; this index is the backstop.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';
