-- outbox-relay migration 0001: the outbox table and the relay's wake-up flag.
--
-- The schema placeholder below is replaced by the quoted schema name; `outbox-relay sql`
-- prints the result. Every statement is idempotent, so the printed DDL
-- can go into any migration tool and `outbox-relay migrate` can still run afterwards.

CREATE SCHEMA IF NOT EXISTS {schema};

-- One row per message written by `outbox_relay.publish` in the application's transaction.
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    uuid        NOT NULL,
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
    CONSTRAINT outbox_message_id_key UNIQUE (message_id),
    CONSTRAINT outbox_routing_key_length CHECK (octet_length(routing_key) <= 255),
    CONSTRAINT outbox_attempts_nonnegative CHECK (attempts >= 0)
);

-- The claim walks pending rows in id order; dead rows are parked outside the index.
CREATE INDEX IF NOT EXISTS outbox_pending_idx
    ON {schema}.outbox (id) WHERE dead_at IS NULL;

-- Rows waiting for a retry or a delay, and the keys they hold back.
CREATE INDEX IF NOT EXISTS outbox_scheduled_idx
    ON {schema}.outbox (available_at, partition_key) WHERE dead_at IS NULL;

-- One row per relay that is asleep and wants a NOTIFY. Unlogged: after a crash it is
-- empty, which only costs one poll interval of latency.
CREATE UNLOGGED TABLE IF NOT EXISTS {schema}.outbox_listener (
    backend_pid integer     PRIMARY KEY,
    waiting     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- NOTIFY takes a global lock at commit that serialises committers, so the trigger only
-- notifies while some relay is waiting for it. A busy relay finds new rows by itself.
CREATE OR REPLACE FUNCTION {schema}.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {schema}.outbox_listener WHERE waiting) THEN
        PERFORM pg_notify({channel}, '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS outbox_notify ON {schema}.outbox;
CREATE TRIGGER outbox_notify
    AFTER INSERT ON {schema}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify();
