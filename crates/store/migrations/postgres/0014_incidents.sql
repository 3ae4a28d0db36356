-- Incidents: what a responder opened (or a high-severity detection opened) about a user, session, token or
-- client, and every action taken on it. `subject` is the one thing it is about (`user:ID`, `client:ID`,
-- `session:SID`, `token:JTI`); at most one incident per subject is live (not closed) at a time, so a second
-- detection about the same user joins the incident already open.
CREATE TABLE incidents (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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

-- A timeline reads one user's, session's, token's or address's events in chain order: with the sequence
-- number in the index, that is one range scan however many events the log holds.
DROP INDEX events_sub;
DROP INDEX events_sid;
DROP INDEX events_jti;
DROP INDEX events_ip;
CREATE INDEX events_sub ON events (sub, id) WHERE sub IS NOT NULL;
CREATE INDEX events_sid ON events (sid, id) WHERE sid IS NOT NULL;
CREATE INDEX events_jti ON events (jti, id) WHERE jti IS NOT NULL;
CREATE INDEX events_ip ON events (ip, id) WHERE ip IS NOT NULL;
