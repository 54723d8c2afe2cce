-- Least privilege for an application role that calls `outbox_relay.publish`: it can add
-- messages to the outbox, and can neither read nor change them.

GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT INSERT ON {schema}.outbox TO {role};

-- publish() calls outbox_wake() (as does the optional trigger), which runs as the
-- inserting role: it reads whether a relay is waiting and sends the NOTIFY.
GRANT SELECT ON {schema}.outbox_listener TO {role};
GRANT EXECUTE ON FUNCTION {schema}.outbox_wake(boolean) TO {role};
