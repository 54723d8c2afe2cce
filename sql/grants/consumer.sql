-- Least privilege for a consumer's role (`outbox-relay consume`): its inbox, nothing of the
-- outbox. Grant its handlers' own tables as your application needs.

GRANT USAGE ON SCHEMA {schema} TO {role};

-- Deduplication (INSERT ... ON CONFLICT DO NOTHING) and purging old inbox rows.
GRANT SELECT, INSERT, DELETE ON {schema}.inbox TO {role};
