-- Queries of `outbox-relay migrate`.

-- name: lock
-- Two `migrate` runs on one schema take turns.
SELECT pg_advisory_xact_lock(%(lock_key)s)

-- name: applied_versions
SELECT version FROM {schema}.outbox_migrations ORDER BY version

-- name: record_version
INSERT INTO {schema}.outbox_migrations (version, name) VALUES (%(version)s, %(name)s)
ON CONFLICT (version) DO NOTHING

-- name: partitions_created
-- NULL before migration 0003 created the partitions table.
SELECT to_regclass(%(table)s) IS NOT NULL AS created

-- name: partition_count
SELECT count(*) FROM {schema}.outbox_partitions

-- name: wake_trigger
-- Optional (`sql --wake-trigger`): every INSERT into the outbox wakes a waiting relay,
-- whoever writes it. Costs each inserting transaction the check that publish() makes
-- only while a relay may be waiting (see migration 0007). Remove it with
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
