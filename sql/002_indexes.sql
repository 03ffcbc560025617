-- 002_indexes.sql: the seed guide's indexes where they serve a query latchkey makes, and
-- pg_stat_statements.
--
-- Applied by lk_db_migrate() in one transaction (so no CREATE INDEX CONCURRENTLY: it
-- cannot run inside a transaction block; on a large existing table, build the index by
-- hand with CONCURRENTLY first and this file's IF NOT EXISTS skips it).
-- Checked by tests/integration/db_scale_test.py: with 100,000 users and sessions, the
-- generic plan of every statement named below uses an index, not a Seq Scan.

-- Serves lk_user_by_email (signin: SELECT ... FROM users WHERE email = $1). A hash index
-- holds a 4-byte hash per row instead of the whole email, so it stays smaller and an
-- equality probe reads one bucket page; equality is the only thing this lookup does.
-- users_email_key (001, btree) stays: only a btree can be UNIQUE, and that constraint is
-- what makes signup's INSERT race-free (23505 -> 409 email_taken).
create index if not exists users_email_hash_idx on users using hash (email);

-- Already in 001, named here for the record: user_sessions_user_id_expires_at_idx
-- (user_id, expires_at) serves lk_user_sessions_delete (signout-all, disabling a user)
-- and the ON DELETE CASCADE from users; user_sessions_expires_at_idx serves
-- lk_sessions_expire[_returning] (the sweeper's DELETE ... WHERE expires_at < $1 LIMIT $2);
-- the primary key on token_hash serves lk_session_delete and the keyset-paged
-- lk_sessions_live_page (the cache warm-up: token_hash > $1 ORDER BY token_hash LIMIT $3).

-- Not created, because no query of latchkey would use them (each costs every write):
-- - the partial index on active users (users(id) WHERE is_active): users are only ever
--   looked up by email, and the active flag is read from that row, never filtered on;
-- - users(created_at DESC): nothing lists users by age;
-- - user_sessions(user_id) WHERE expires_at > now(): now() is not immutable, so Postgres
--   refuses it as an index predicate; the (user_id, expires_at) index covers the need;
-- - users(email, status) WHERE status IN (...): the email lookup is already unique.
-- Add one with the query that needs it.

-- Per-statement time and counts (docs/performance.md reads Postgres time per signin from
-- it). The embedded Postgres preloads the library (supervisor/pgembed.c); an external
-- database may lack the package or deny the privilege: that is a warning, not a failed
-- migration.
do $$
begin
    create extension if not exists pg_stat_statements;
exception
    when insufficient_privilege or undefined_file or feature_not_supported or object_not_in_prerequisite_state then
        raise warning 'pg_stat_statements not enabled: %', sqlerrm;
end
$$;
