-- On SQLite the server process keeps single-use ids in memory (one process per database file) and writes
-- them behind to this table only to read them back after a restart. It becomes an append-only log: without
-- the unique key, new rows land at the end of the table and of the expiry index instead of at random places
-- in a key index, so writing an id costs a few bytes, not a page. (PostgreSQL keeps the unique key: there
-- the table itself is what every node checks.)
CREATE TABLE used_ids_log (
    scope      TEXT NOT NULL,
    id_hash    BLOB NOT NULL,
    expires_at BIGINT NOT NULL
);
INSERT INTO used_ids_log (scope, id_hash, expires_at) SELECT scope, id_hash, expires_at FROM used_ids;
DROP TABLE used_ids;
ALTER TABLE used_ids_log RENAME TO used_ids;
CREATE INDEX used_ids_expiry ON used_ids(expires_at);
