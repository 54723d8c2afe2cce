-- outbox-relay migration 0007: producers wake the relay in their own statement; the
-- outbox loses its trigger.
--
-- The statement trigger cost every producer transaction, even while no relay was
-- waiting: measured with pgbench (8 clients, an order insert plus one outbox row), the
-- server's CPU per transaction went from about 175 to 205 us with the trigger, which
-- read a flag that was down. publish() now asks outbox_wake() in its INSERT statement
-- itself, and after it has seen the flag down it does not ask again for a short while
-- (per process, database and schema; the relay keeps claiming for a little longer than
-- that after it raises its flag: the README's "Run the relay" gives the figures). So
-- under load most producer transactions carry no check at all.
--
-- Writers that insert rows by other means call `SELECT <schema>.outbox_wake()` in the
-- same transaction (`outbox_wake(true)` when they wrote a delayed row), or put the trigger
-- back with `outbox-relay migrate --wake-trigger`.
-- Without either, their rows are found by the relay's backstop poll (within
-- --poll-interval, and up to 5 s while the relay has been idle).

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

DROP TRIGGER IF EXISTS outbox_notify ON {schema}.outbox;
