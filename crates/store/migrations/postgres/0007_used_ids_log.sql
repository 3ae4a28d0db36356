-- Kept in step with SQLite's migration 0007, which turns its used_ids into an append-only log (the SQLite
-- server checks single-use ids in memory). PostgreSQL keeps the unique key: every node checks the table.
SELECT 1;
