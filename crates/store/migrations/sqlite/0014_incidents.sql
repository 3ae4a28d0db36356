-- Incidents: what a responder opened (or a high-severity detection opened) about a user, session, token or
-- client, and every action taken on it. `subject` is the one thing it is about (`user:ID`, `client:ID`,
-- `session:SID`, `token:JTI`); at most one incident per subject is live (not closed) at a time, so a second
-- detection about the same user joins the incident already open.
CREATE TABLE incidents (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subject      TEXT NOT NULL,
    user_id      TEXT,
    sid          TEXT,
    jti          TEXT,
    client_id    TEXT,
    reason       TEXT NOT NULL,
    detection    TEXT,
    state        TEXT NOT NULL,
    opened_at    BIGINT NOT NULL,
    opened_by    TEXT NOT NULL,
    contained_at BIGINT,
    closed_at    BIGINT,
    closed_by    TEXT
);
CREATE UNIQUE INDEX incidents_live ON incidents (subject) WHERE closed_at IS NULL;

-- What was done on an incident, in order: containment steps (each once per target, which makes `contain`
-- safe to repeat), detections that joined it, and its closing.
CREATE TABLE incident_actions (
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    seq         BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    PRIMARY KEY (incident_id, seq)
);

-- SQLite's indexes already end in the rowid (the sequence number), so events_sub and its siblings serve a
-- timeline's range scan in chain order as they are.
