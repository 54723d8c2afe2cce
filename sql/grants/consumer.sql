-- Least privilege for a consumer's role (`outbox-relay consume`): the inbox rows of its
-- own consumer apps, nothing of the outbox. Grant its handlers' own tables as your
-- application needs.

GRANT USAGE ON SCHEMA {schema} TO {role};

-- Deduplication (INSERT ... ON CONFLICT DO NOTHING) and purging old inbox rows.
GRANT SELECT, INSERT, DELETE ON {schema}.inbox TO {role};

-- Row-level security: the inbox is keyed by (consumer, message_id), the consumer being
-- "<app name>:<queue>". The policy below lets the role see, insert and delete only the
-- rows of the app names it was granted, so one application cannot read, delete or forge
-- another's records in a shared inbox. Once it is enabled, a role with no policy sees
-- no inbox rows at all: print the grants of every consumer role, not only a new one.
-- The table's owner (the role that runs migrate), superusers and roles with BYPASSRLS
-- are not restricted. Enabling it needs the table's owner, like the policy itself.
ALTER TABLE {schema}.inbox ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS {policy} ON {schema}.inbox;
CREATE POLICY {policy} ON {schema}.inbox
    TO {role}
    USING {apps}
    WITH CHECK {apps};

-- Rate limits and pauses of its handlers (rate_limit=, raise RateLimited), shared with the
-- app's other processes, under the same policy: one app cannot slow down or pause another.
GRANT SELECT, INSERT, UPDATE ON {schema}.consumer_flow TO {role};
ALTER TABLE {schema}.consumer_flow ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS {policy} ON {schema}.consumer_flow;
CREATE POLICY {policy} ON {schema}.consumer_flow
    TO {role}
    USING {apps}
    WITH CHECK {apps};
