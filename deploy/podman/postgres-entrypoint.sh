#!/bin/sh
# First start: initdb with POSTGRES_PASSWORD for the postgres superuser, run the *.sql and
# *.sh files of /docker-entrypoint-initdb.d, then serve on every interface.
set -eu
bin="$(echo /usr/lib/postgresql/*/bin)"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pwfile"
    "$bin/initdb" --pgdata="$PGDATA" --username=postgres --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    "$bin/pg_ctl" --pgdata="$PGDATA" --wait --silent \
        --options="-c listen_addresses='' -c unix_socket_directories=/tmp" start
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) "$bin/psql" -v ON_ERROR_STOP=1 -q -h /tmp -U postgres -f "$f" ;;
            *.sh) . "$f" ;;
        esac
    done
    "$bin/pg_ctl" --pgdata="$PGDATA" --wait --silent stop
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
