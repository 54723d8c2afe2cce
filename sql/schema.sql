-- The outbox schema, created directly: what `outbox-relay sql` prints and `outbox-relay
-- migrate` applies to a schema without an outbox. Every statement is idempotent, and the
-- last ones record the migrations this schema already contains, so `outbox-relay migrate`
-- can run afterwards and a later version's `outbox-relay sql --since-version N` goes on
-- from here. `outbox-relay sql --drop` prints the statements that remove it again.
--
-- In the file, placeholders stand for the quoted schema name, its NOTIFY channel and the
-- partition count (`--partitions N`, default 16). sql/migrations/ builds the same schema
-- step by step, for schemas an earlier version created; a test compares the catalogs
-- the two build, so a change here needs the same change as a new migration there.

CREATE SCHEMA IF NOT EXISTS {schema};

-- Which migrations the schema has; `migrate` applies the missing ones.
CREATE TABLE IF NOT EXISTS {schema}.outbox_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per message written by `outbox_relay.publish` in the application's transaction.
-- No index on message_id and no CHECK constraints: each would cost every producer, and
-- nothing needs them. Relays read rows by id, consumers deduplicate on the message id in
-- their inbox; publish() validates the routing key before it writes, a relay marks a row
-- whose routing key AMQP cannot carry dead with the reason, and only relays write
-- attempts. inserted_at is the wall-clock moment of the insert, for the opt-in order gate
-- (`run --order-gate`): ids are taken at insert, not at commit. properties holds the
-- AMQP properties a message sets besides content type and message id (correlation_id,
-- priority, expiration as a string of milliseconds, ...), by their AMQP names; NULL,
-- as for most messages, when it sets none.
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    text        NOT NULL,
    exchange      text        NOT NULL,
    routing_key   text        NOT NULL,
    payload       bytea       NOT NULL,
    content_type  text        NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    partition_key text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    dead_at       timestamptz,
    inserted_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    properties    jsonb
);

-- The claim reads the primary key in id order (its session turns sorting off, see
-- sql/queries/relay.sql). A row due at once has available_at = created_at; only delayed
-- and retried rows are in the index that finds the next one due, so producers of
-- ordinary rows never touch it.
CREATE INDEX IF NOT EXISTS outbox_waiting_idx
    ON {schema}.outbox (available_at, partition_key)
    WHERE available_at > created_at AND dead_at IS NULL;

-- One row per relay that is asleep and wants a NOTIFY. Unlogged: after a crash it is
-- empty, which only costs one poll interval of latency.
CREATE UNLOGGED TABLE IF NOT EXISTS {schema}.outbox_listener (
    backend_pid integer     PRIMARY KEY,
    waiting     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- NOTIFY takes a global lock at commit that serialises committers, so producers wake
-- the relay only while it waits. publish() calls this in its INSERT statement; writers
-- that insert rows by other means call `SELECT <schema>.outbox_wake()` in the same
-- transaction (`outbox_wake(true)` when they wrote a delayed row), or put the trigger
-- below on the outbox with `outbox-relay migrate --wake-trigger`. Without either, their
-- rows are found by the relay's backstop poll.
--
-- Sends the NOTIFY when a relay waits for one; `scheduled` says that the statement wrote
-- a delayed row, so the relay reads when it is due. Returns whether a relay may be
-- waiting: a caller that gets false may skip the check for a short while. Under
-- REPEATABLE READ and SERIALIZABLE the flag was read at the transaction's start, perhaps
-- long ago, so the answer is never false there.
CREATE OR REPLACE FUNCTION {schema}.outbox_wake(scheduled boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {schema}.outbox_listener WHERE waiting) THEN
        PERFORM pg_notify({channel}, CASE WHEN scheduled THEN 'scheduled' ELSE '' END);
        RETURN true;
    END IF;
    RETURN current_setting('transaction_isolation') <> 'read committed';
END;
$$;

-- The optional trigger's function (`migrate --wake-trigger`): the same check.
CREATE OR REPLACE FUNCTION {schema}.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.outbox_wake();
    RETURN NULL;
END;
$$;

-- A row's partition, computed by the relay when it claims (a stored column would cost
-- every producer): the first 28 bits of md5(key) modulo the partition count; rows without
-- a key spread by id.
CREATE OR REPLACE FUNCTION {schema}.outbox_partition(
    id bigint, partition_key text, partitions integer
) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN partition_key IS NULL THEN (id % partitions)::integer
        ELSE ('x' || substr(md5(partition_key), 1, 7))::bit(28)::integer % partitions
    END
$$;

-- One row per running relay; a relay whose heartbeat is older than its lease is gone.
CREATE TABLE IF NOT EXISTS {schema}.outbox_relays (
    relay_id     text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- One row per partition: who holds it and until when. epoch counts hand-overs. Each
-- partition is leased to one relay at a time; a relay claims only rows of partitions it
-- holds, checking the lease in the claim's own transaction. The count is fixed here.
CREATE TABLE IF NOT EXISTS {schema}.outbox_partitions (
    partition   integer     PRIMARY KEY,
    owner       text,
    lease_until timestamptz,
    epoch       bigint      NOT NULL DEFAULT 0
);

INSERT INTO {schema}.outbox_partitions (partition)
SELECT generate_series(0, {partitions} - 1)
ON CONFLICT (partition) DO NOTHING;

-- The consumers' inbox, for exactly-once effects. A consumer inserts (consumer,
-- message_id) in the same transaction as its handler's work. The primary key makes a
-- second delivery of the same message a no-op: the insert finds the row, the handler is
-- skipped and the delivery acked.
CREATE TABLE IF NOT EXISTS {schema}.inbox (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (consumer, message_id)
);

-- Purging walks the oldest rows first, in batches.
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx
    ON {schema}.inbox (processed_at);

-- Rate limits and pauses of consumer handlers, shared by every consumer process of an
-- app. One row per token bucket: consumer is '<app name>:<queue>' (as in the inbox), key
-- the handler's rate-limit key ('' for the bucket of messages without one, whose row also
-- holds the handler's pause). tat is the bucket's theoretical arrival time and
-- paused_until the end of a pause a handler asked for (raise RateLimited), both as
-- seconds since the epoch on the database's clock.
CREATE TABLE IF NOT EXISTS {schema}.consumer_flow (
    consumer     text             NOT NULL,
    key          text             NOT NULL,
    tat          double precision NOT NULL DEFAULT 0,
    paused_until double precision NOT NULL DEFAULT 0,
    CONSTRAINT consumer_flow_pkey PRIMARY KEY (consumer, key)
);
