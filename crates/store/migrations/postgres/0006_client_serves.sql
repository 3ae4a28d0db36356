-- The audiences a client is the resource server for (JSON list): tokens for them are sent to it, so it may
-- exchange them (RFC 8693), introspect them (RFC 7662) and report their use from its guard. Until now the
-- client's `audiences` (what it may get tokens for) stood in for this; confidential clients keep exactly
-- what they had, and an operator narrows it with `tessera client set-serves`.
ALTER TABLE clients ADD COLUMN serves TEXT NOT NULL DEFAULT '[]';
UPDATE clients SET serves = audiences WHERE kind = 'confidential';
