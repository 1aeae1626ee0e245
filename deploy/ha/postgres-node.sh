#!/bin/sh
# Prefect's PostgreSQL: a new data directory gets POSTGRES_PASSWORD for the user `prefect` and the
# database `prefect`; every address of the container's network may log in with that password.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
  install -d -o postgres -g postgres -m 700 "$data"
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
  chown postgres "$pw"
  runuser -u postgres -- initdb -D "$data" -U prefect --pwfile="$pw" --auth=scram-sha-256 >/dev/null
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$data/pg_hba.conf"
  echo "CREATE DATABASE prefect;" | runuser -u postgres -- postgres --single -D "$data" template1 >/dev/null
fi
exec runuser -u postgres -- postgres -D "$data" -c listen_addresses='*' -c max_connections=200 \
  -c unix_socket_directories=/tmp
