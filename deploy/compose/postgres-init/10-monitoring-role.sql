-- The monitoring role of the README's quickstart: pg_monitor lets it see every session's state.
-- Runs once, when the compose stack's PostgreSQL initializes its data directory.
CREATE ROLE pgce_monitor LOGIN PASSWORD 'pgce-demo' CONNECTION LIMIT 3;
GRANT pg_monitor TO pgce_monitor;
