-- A replayed authorization code is marked, so that the first redeemer cannot start a refresh family after
-- the replay was seen (which would escape the replay's revocation).
ALTER TABLE auth_codes ADD COLUMN replayed_at BIGINT;
