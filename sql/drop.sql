-- Removes what `outbox-relay migrate` (or the DDL `outbox-relay sql` prints) created in
-- the schema, and nothing else: `outbox-relay sql --drop` prints it, `outbox-relay
-- migrate --drop` runs it. Every row goes with the tables: messages not yet relayed, the
-- relays' leases, the consumers' inbox. Stop the relays and consumers first.
--
-- No CASCADE: when an object of yours depends on one of these (a view over the outbox, a
-- foreign key to the inbox, a trigger of yours that calls outbox_notify()), PostgreSQL
-- refuses, names the object, and in one transaction nothing is dropped.
--
-- The schema itself stays, with the grants on it: it may be yours (public, your
-- application's) and outbox-relay does not record whether it created it. Drop an empty
-- schema yourself, without CASCADE, if nothing else lives there.

-- With them go their indexes, the outbox's identity sequence, the grants on them, and the
-- optional wake-up trigger (`migrate --wake-trigger`), which is part of the outbox table.
DROP TABLE IF EXISTS
    {schema}.outbox,
    {schema}.outbox_listener,
    {schema}.outbox_relays,
    {schema}.outbox_partitions,
    {schema}.inbox,
    {schema}.consumer_flow
    RESTRICT;

DROP FUNCTION IF EXISTS
    {schema}.outbox_notify(),
    {schema}.outbox_wake(boolean),
    {schema}.outbox_partition(bigint, text, integer)
    RESTRICT;

-- Last: until here, the schema still says which version it had.
DROP TABLE IF EXISTS {schema}.outbox_migrations RESTRICT;
