-- The example's database roles, one per part (run once by PostgreSQL's first start, from
-- /docker-entrypoint-initdb.d). `postgres`, the owner, runs `migrate` and grants each role
-- the least it needs (`outbox-relay sql --grants`, see shop.py's `setup`).
CREATE ROLE relay LOGIN PASSWORD 'relay-secret';     -- outbox-relay run
CREATE ROLE shop LOGIN PASSWORD 'shop-secret';       -- the producer: its orders and publish()
CREATE ROLE billing LOGIN PASSWORD 'billing-secret'; -- outbox-relay consume: inbox, invoices
