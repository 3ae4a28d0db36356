-- Client authentication with keys (RFC 7523 private_key_jwt): a client's registered public JWKS.
-- Token exchange (RFC 8693): the audiences a client may exchange a token for (JSON list; none by default).
-- The authorization request's dpop_jkt (RFC 9449 §10): the key the code must be redeemed with.
ALTER TABLE clients ADD COLUMN jwks TEXT;
ALTER TABLE clients ADD COLUMN exchange_audiences TEXT NOT NULL DEFAULT '[]';
ALTER TABLE auth_codes ADD COLUMN dpop_jkt TEXT;
