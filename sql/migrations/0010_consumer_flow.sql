-- outbox-relay migration 0010: rate limits and pauses of consumer handlers, shared by
-- every consumer process of an app.
--
-- One row per token bucket: consumer is '<app name>:<queue>' (as in the inbox), key the
-- handler's rate-limit key ('' for the bucket of messages without one, whose row also
-- holds the handler's pause). tat is the bucket's theoretical arrival time and
-- paused_until the end of a pause a handler asked for (raise RateLimited), both as
-- seconds since the epoch on the database's clock. A few rows per handler, updated
-- in place: no index besides the primary key.

CREATE TABLE IF NOT EXISTS {schema}.consumer_flow (
    consumer     text             NOT NULL,
    key          text             NOT NULL,
    tat          double precision NOT NULL DEFAULT 0,
    paused_until double precision NOT NULL DEFAULT 0,
    CONSTRAINT consumer_flow_pkey PRIMARY KEY (consumer, key)
);
