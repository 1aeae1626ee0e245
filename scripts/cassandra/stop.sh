#!/usr/bin/env bash
# Stop the test Cassandra node started by start.sh.
#
#   scripts/cassandra/stop.sh [--dir DIR] [--port 9042] [--timeout 60]
#
# Sends SIGTERM (Cassandra drains: flushes memtables, stops transports), waits up to --timeout
# seconds, then SIGKILL. Exits 0 if the node is stopped (or was not running).
set -euo pipefail

CACHE="${CRAWLCOIN_CASSANDRA_HOME:-$HOME/.cache/crawlcoin/cassandra}"
DIR=""
PORT=9042
TIMEOUT=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) DIR="${1#*=}"; shift ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --timeout) TIMEOUT="${2:?}"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "cassandra: unknown argument: $1" >&2; exit 2 ;;
  esac
done
DIR="${DIR:-$CACHE/node-$PORT}"
PIDFILE="$DIR/cassandra.pid"

if [[ ! -f "$PIDFILE" ]]; then
  echo "cassandra: not running (no $PIDFILE)" >&2
  exit 0
fi
PID="$(cat "$PIDFILE" 2>/dev/null || true)"
if [[ -z "$PID" ]] || ! kill -0 "$PID" 2>/dev/null || ! grep -q CassandraDaemon "/proc/$PID/cmdline" 2>/dev/null; then
  echo "cassandra: not running (stale pid file removed)" >&2
  rm -f "$PIDFILE"
  exit 0
fi

t0=$(date +%s)
kill -TERM "$PID"
while kill -0 "$PID" 2>/dev/null; do
  if (( $(date +%s) - t0 >= TIMEOUT )); then
    echo "cassandra: pid $PID still alive after ${TIMEOUT} s, sending SIGKILL" >&2
    kill -KILL "$PID" 2>/dev/null || true
    sleep 1
    break
  fi
  sleep 0.5
done
rm -f "$PIDFILE"
echo "cassandra: stopped pid $PID in $(( $(date +%s) - t0 )) s" >&2
