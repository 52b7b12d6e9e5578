#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster on a loopback port, owned by user postgres
# (initdb refuses to run as root). Usage: scripts/postgres.sh start|stop DIR PORT
# On start it prints the DATABASE_URL to use. Tests run it with fsync off (a throwaway cluster);
# PG_FSYNC=on keeps durable commits (the benchmarks measure with them).
set -euo pipefail
cmd=$1 dir=$2 port=$3
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
case "$cmd" in
  start)
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U fleet --auth=trust >"$dir/initdb.log"
    fi
    if ! runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o \
        "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=${PG_FSYNC:-off} -c max_connections=200" \
        start >/dev/null
    fi
    echo "postgres://fleet@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -d "$dir/data" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  *) echo "usage: $0 start|stop DIR PORT" >&2; exit 2 ;;
esac
