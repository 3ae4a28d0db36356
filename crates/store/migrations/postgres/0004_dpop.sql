-- DPoP (RFC 9449): clients that must prove possession of a key, refresh families bound to one key's
-- thumbprint, and the single-use-id cache shared by every server node (DPoP proof ids; client assertion ids).
ALTER TABLE clients ADD COLUMN require_dpop BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE refresh_families ADD COLUMN dpop_jkt TEXT;

CREATE TABLE used_ids (
    scope      TEXT NOT NULL,
    id_hash    BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (scope, id_hash)
);
CREATE INDEX used_ids_expiry ON used_ids(expires_at);
