-- Least privilege for an application role that calls `outbox_relay.publish`: it can add
-- messages to the outbox, and can neither read nor change them.

GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT INSERT ON {schema}.outbox TO {role};

-- The outbox trigger runs as the inserting role and reads whether a relay is waiting.
GRANT SELECT ON {schema}.outbox_listener TO {role};
