#!/bin/sh
# As the official image's entrypoint: on an empty $PGDATA, initdb with POSTGRES_USER
# (default postgres) and POSTGRES_PASSWORD, host connections from anywhere with
# POSTGRES_HOST_AUTH_METHOD (default scram-sha-256, trust without a password), and
# POSTGRES_DB (default the user's name) created by a temporary server whose log goes to
# stdout; then the server, logging to stderr.
set -eu
bin=/usr/lib/postgresql/15/bin
case "${1:-}" in -*) set -- postgres "$@" ;; esac # options only: for the server, as officially
if [ "${1:-}" != postgres ]; then
    exec "$@"
fi
shift
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
as_postgres() { runuser -u postgres -- "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    password=${POSTGRES_PASSWORD:-}
    if [ -n "$password" ]; then
        method=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    else
        method=${POSTGRES_HOST_AUTH_METHOD:-trust}
    fi
    pwfile=$(mktemp)
    printf '%s\n' "${password:-unused}" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host="$method"
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all $method" >>"$PGDATA/pg_hba.conf"
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start
    if [ "$db" != postgres ]; then
        as_postgres psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -qc "CREATE DATABASE \"$db\""
    fi
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop
fi
exec runuser -u postgres -- "$bin/postgres" -D "$PGDATA" "$@"
