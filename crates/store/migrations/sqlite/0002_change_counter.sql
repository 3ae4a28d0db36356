-- One row counting changes to users, clients and resources. Servers cache those records and poll this
-- counter; a change empties their caches.
CREATE TABLE change_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO change_counter (id, value) VALUES (1, 0);
