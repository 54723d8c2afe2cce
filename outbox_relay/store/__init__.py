"""PostgreSQL adapters: the only package that imports psycopg."""
