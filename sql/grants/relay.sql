-- Least privilege for the relay's role: its own tables in the outbox schema, nothing else.
-- (No placeholder in a comment: a quoted name may hold a newline.)
-- Run `outbox-relay migrate` as the schema's owner; the relay itself creates nothing.

GRANT USAGE ON SCHEMA {schema} TO {role};

-- Claim (SELECT ... FOR UPDATE needs UPDATE), delete published rows, record failures.
GRANT SELECT, UPDATE, DELETE ON {schema}.outbox TO {role};

-- Its wake-up flag, heartbeats and partition leases (FOR SHARE needs UPDATE).
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.outbox_listener TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.outbox_relays TO {role};
GRANT SELECT, UPDATE ON {schema}.outbox_partitions TO {role};

-- The claim computes each row's partition (PUBLIC has it by default; a database that
-- revokes EXECUTE from PUBLIC still works).
GRANT EXECUTE ON FUNCTION {schema}.outbox_partition(bigint, text, integer) TO {role};

-- With `run --order-gate` the relay also reads when other sessions' transactions began,
-- which needs the built-in role pg_read_all_stats granted to the relay's role.

-- `outbox-relay failed retry` run as this role wakes a waiting relay, as publish() does.
GRANT EXECUTE ON FUNCTION {schema}.outbox_wake(boolean) TO {role};
