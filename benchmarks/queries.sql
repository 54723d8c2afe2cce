-- Queries of the benchmark scripts. Each block starts with `-- name: NAME`; {schema} is
-- replaced by the quoted schema name, values are psycopg parameters.

-- name: checkpoint
CHECKPOINT

-- name: vacuum_outbox
VACUUM {schema}.outbox

-- name: outbox_empty
SELECT NOT EXISTS (SELECT 1 FROM {schema}.outbox)

-- name: max_id
SELECT max(id) FROM {schema}.outbox

-- name: rows_up_to
SELECT count(*) FROM {schema}.outbox WHERE id <= %(last)s

-- name: relay_waiting
SELECT EXISTS (SELECT 1 FROM {schema}.outbox_listener WHERE waiting)

-- name: table_sizes
SELECT pg_table_size(format('%%I.outbox', %(schema)s::text)::regclass),
       pg_indexes_size(format('%%I.outbox', %(schema)s::text)::regclass)

-- name: naive_claim
-- The naive relay as commonly written: take some rows, publish each, delete each.
SELECT id, message_id, exchange, routing_key, payload, content_type
FROM {schema}.outbox
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: naive_delete
DELETE FROM {schema}.outbox WHERE id = %(id)s

-- name: xact_commits
SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %(dbname)s

-- name: orders_table
CREATE TABLE {schema}.orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer   bigint NOT NULL,
    amount     numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)

-- name: plain_table
-- The producer ceiling: the same 512 B in an ordinary table with a primary key.
CREATE TABLE {schema}.plain (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)

-- name: plain_row
INSERT INTO {schema}.plain (payload) VALUES (%(payload)s)

-- name: floor_insert
-- The floor's producers (benchmarks/floor.py): the plain row, and its id for the NOTIFY.
INSERT INTO {schema}.plain (payload) VALUES (%(payload)s) RETURNING id

-- name: floor_row
-- The floor's listener reads the row a NOTIFY names, by its primary key.
SELECT payload FROM {schema}.plain WHERE id = %(id)s

-- name: minimal_outbox_table
-- A reference, not a design: the smallest row an outbox relay could work from (an id
-- to order by, a message id, where to send it, the payload).
CREATE TABLE {schema}.minimal_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  uuid NOT NULL,
    exchange    text NOT NULL,
    routing_key text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)

-- name: create_message_id_index
-- The index on the message id the outbox does without, put back to measure what it costs.
CREATE UNIQUE INDEX bench_message_id_idx ON {schema}.outbox (message_id)

-- name: drop_message_id_index
DROP INDEX {schema}.bench_message_id_idx

-- name: server_settings
SELECT current_setting('server_version'), current_setting('autovacuum'),
       current_setting('synchronous_commit')
