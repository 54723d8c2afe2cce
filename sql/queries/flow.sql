-- Rate limits and pauses of consumer handlers (outbox_relay.store.flow). {schema} is
-- replaced by the quoted schema name. Every statement runs alone in autocommit: no
-- transaction stays open while a delivery waits for its token. Times are seconds since
-- the epoch on the database's clock; what comes back is relative to the statement's
-- own time, so the consumers' clocks never need to agree.

-- name: flow_lease
-- Takes %(count)s tokens from a bucket in one round trip: moves its tat to
-- max(tat, now) + %(span_s)s. Returns start_s = max(tat, now) - now before the move (the
-- caller works out when each token is due, see outbox_relay.consumer.rate_limit) and
-- paused_s, the seconds the handler stays paused (its '' row): while it is paused, no
-- token is taken and tat stays. A NaN paused_until (written by versions that let
-- RateLimited(retry_after=nan) through) is no pause: PostgreSQL orders NaN after every
-- number, so it would pause the handler for ever.
WITH clock AS (SELECT extract(epoch FROM statement_timestamp())::float8 AS now),
pause AS (
    SELECT coalesce(max(paused_until) FILTER (WHERE paused_until <> 'NaN'), 0) AS until
    FROM {schema}.consumer_flow
    WHERE consumer = %(consumer)s AND key = ''
)
INSERT INTO {schema}.consumer_flow AS f (consumer, key, tat)
SELECT %(consumer)s, %(key)s,
       CASE WHEN pause.until > clock.now THEN 0 ELSE clock.now + %(span_s)s END
FROM clock, pause
ON CONFLICT (consumer, key) DO UPDATE
SET tat = CASE
    WHEN (SELECT until FROM pause) > (SELECT now FROM clock) THEN f.tat
    ELSE greatest(f.tat, (SELECT now FROM clock)) + %(span_s)s
END
RETURNING f.tat - %(span_s)s - (SELECT now FROM clock) AS start_s,
          greatest((SELECT until FROM pause) - (SELECT now FROM clock), 0) AS paused_s

-- name: flow_pause
-- A handler raised RateLimited: pause it in every process for %(seconds)s from now (a
-- longer pause already set stays, a NaN one is replaced). Returns the seconds it stays
-- paused.
WITH clock AS (SELECT extract(epoch FROM statement_timestamp())::float8 AS now)
INSERT INTO {schema}.consumer_flow AS f (consumer, key, paused_until)
SELECT %(consumer)s, '', clock.now + %(seconds)s FROM clock
ON CONFLICT (consumer, key) DO UPDATE
SET paused_until = greatest(nullif(f.paused_until, 'NaN'), (SELECT now FROM clock) + %(seconds)s)
RETURNING f.paused_until - (SELECT now FROM clock) AS paused_s

-- name: flow_paused
-- The handlers of %(consumers)s paused now, and for how many more seconds (a NaN
-- paused_until is no pause, as in flow_lease).
SELECT consumer, paused_until - extract(epoch FROM statement_timestamp())::float8
FROM {schema}.consumer_flow
WHERE consumer = ANY(%(consumers)s) AND key = '' AND paused_until <> 'NaN'
  AND paused_until > extract(epoch FROM statement_timestamp())::float8

-- name: flow_check
-- At start, for an app with rate limits: the table exists (migration 0010).
SELECT 1 FROM {schema}.consumer_flow LIMIT 0
