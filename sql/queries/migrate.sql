-- Queries of `outbox-relay migrate`.

-- name: lock
-- Two `migrate` runs on one schema take turns.
SELECT pg_advisory_xact_lock(%(lock_key)s)

-- name: applied_versions
SELECT version FROM {schema}.outbox_migrations ORDER BY version

-- name: record_version
INSERT INTO {schema}.outbox_migrations (version, name) VALUES (%(version)s, %(name)s)
ON CONFLICT (version) DO NOTHING

-- name: table_exists
-- Whether the migrations or the partitions table is there yet.
SELECT to_regclass(%(table)s) IS NOT NULL AS created

-- name: partition_count
SELECT count(*) FROM {schema}.outbox_partitions

-- name: wake_trigger
-- Optional (`sql --wake-trigger`): every INSERT into the outbox wakes a waiting relay,
-- whoever writes it. Costs each inserting transaction the check that publish() makes
-- only while a relay may be waiting (see outbox_wake() in sql/schema.sql). Remove it with
-- DROP TRIGGER outbox_notify ON <schema>.outbox.
DROP TRIGGER IF EXISTS outbox_notify ON {schema}.outbox;
CREATE TRIGGER outbox_notify
    AFTER INSERT ON {schema}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify()

-- name: wake_trigger_exists
SELECT EXISTS (
    SELECT 1 FROM pg_trigger
    WHERE tgrelid = to_regclass(%(table)s) AND tgname = 'outbox_notify'
) AS present

-- name: create_wake_trigger
-- `migrate --wake-trigger` when the trigger is missing (creating it locks the outbox).
CREATE TRIGGER outbox_notify
    AFTER INSERT ON {schema}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify()

-- name: schema_contents
-- Tables and functions in the schema, to tell what `migrate --drop` removed.
SELECT 'table' AS kind, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'function', p.proname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %(schema)s
