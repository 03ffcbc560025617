-- 001_init.sql: users and their sessions.
--
-- Applied by lk_db_migrate() inside one transaction together with its schema_migrations
-- row, so this file holds no BEGIN/COMMIT: it is all or nothing.

create table users (
    id            uuid        primary key default gen_random_uuid(),
    -- Stored already normalized by common/check.c (trimmed, ASCII-lowercased), so equality
    -- is the right comparison and no lower() index is needed.
    email         text        not null check (octet_length(email) between 3 and 254),
    -- argon2id string from crypto_pwhash_str: never the password itself.
    password_hash text        not null,
    status        text        not null default 'active' check (status in ('active', 'disabled')),
    is_active     boolean     not null default true,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

-- Serves user_by_email (signin: SELECT ... FROM users WHERE email = $1) and makes
-- user_insert's INSERT fail with 23505 for a taken email (signup's 409 email_taken), which
-- is race-free where a prior SELECT would not be.
create unique index users_email_key on users (email);

create table user_sessions (
    -- BLAKE2b-256 of the token: the token itself is never stored.
    token_hash bytea       primary key check (octet_length(token_hash) = 32),
    user_id    uuid        not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);

-- Serves signout-all and the sweeper's repair of one user's sessions
-- (DELETE/SELECT ... FROM user_sessions WHERE user_id = $1 [AND expires_at > now()]),
-- and the ON DELETE CASCADE from users, which would otherwise scan the table.
create index user_sessions_user_id_expires_at_idx on user_sessions (user_id, expires_at);

-- Serves sessions_expire (DELETE ... WHERE token_hash IN (SELECT token_hash FROM
-- user_sessions WHERE expires_at < $1 LIMIT $2)) and the sweeper's cache warm-up at start
-- (SELECT ... FROM user_sessions WHERE expires_at > now()).
create index user_sessions_expires_at_idx on user_sessions (expires_at);
