#!/usr/bin/env bash
# Start a single-node Apache Cassandra 5.0 for tests, from Maven Central jars (no tarball, no Docker).
#
#   scripts/cassandra/start.sh [--dir DIR] [--port 9042] [--storage-port 7000] [--jmx-port PORT]
#                              [--heap 1G] [--heap-min 256M] [--timeout 180]
#                              [--listen-address 127.0.0.1] [--seeds ADDR:PORT,…] [--initial-token 0]
#                              [--cluster-name crawlcoin-test] [--foreground]
#   scripts/cassandra/start.sh --jars-only     # fetch the jars if missing, print their folder, start nothing
#
# - jars: resolved once with Maven into $CRAWLCOIN_CASSANDRA_HOME/lib-<version>
#         (default ~/.cache/crawlcoin/cassandra); later runs reuse them without Maven.
# - DIR:  conf/, data/, logs/ and cassandra.pid of this node (default $CRAWLCOIN_CASSANDRA_HOME/node-<port>).
#         Data is kept between runs; delete DIR for a fresh node.
# - Idempotent: if the node of DIR is already running, it only waits for CQL and prints the contact point.
# - --jmx-port enables local JMX (nodetool); off by default.
# - CRAWLCOIN_CASSANDRA_JVM_OPTS: extra JVM options, whitespace-separated.
# - A node of a cluster: its own --listen-address (Linux routes all of 127.0.0.0/8 to loopback, so three nodes
#   use 127.0.0.1-3 with the same ports), the --seeds (hinted handoff is on when they are given), one fixed
#   --initial-token each and one --cluster-name.
# - --foreground: exec the JVM in place of this script (its log on stdout, no waiting for CQL), for a
#   supervisor that restarts it (`crawlcoin up --ha`); the pid file is written as well.
# On success the only line on stdout is the contact point, 127.0.0.1:<port>; progress goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CRAWLCOIN_CASSANDRA_HOME:-$HOME/.cache/crawlcoin/cassandra}"

DIR=""
PORT=9042
STORAGE_PORT=7000
JMX_PORT=""
HEAP="1G"
HEAP_MIN="256M"
TIMEOUT=180
JARS_ONLY=""
ADDRESS="127.0.0.1"
SEEDS=""
TOKEN=0
CLUSTER="crawlcoin-test"
FOREGROUND=""

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "cassandra: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) DIR="${1#*=}"; shift ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --storage-port) STORAGE_PORT="${2:?}"; shift 2 ;;
    --storage-port=*) STORAGE_PORT="${1#*=}"; shift ;;
    --jmx-port) JMX_PORT="${2:?}"; shift 2 ;;
    --jmx-port=*) JMX_PORT="${1#*=}"; shift ;;
    --heap) HEAP="${2:?}"; shift 2 ;;
    --heap=*) HEAP="${1#*=}"; shift ;;
    --heap-min) HEAP_MIN="${2:?}"; shift 2 ;;
    --heap-min=*) HEAP_MIN="${1#*=}"; shift ;;
    --timeout) TIMEOUT="${2:?}"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; shift ;;
    --jars-only) JARS_ONLY=1; shift ;;
    --listen-address) ADDRESS="${2:?}"; shift 2 ;;
    --listen-address=*) ADDRESS="${1#*=}"; shift ;;
    --seeds) SEEDS="${2:?}"; shift 2 ;;
    --seeds=*) SEEDS="${1#*=}"; shift ;;
    --initial-token) TOKEN="${2:?}"; shift 2 ;;
    --initial-token=*) TOKEN="${1#*=}"; shift ;;
    --cluster-name) CLUSTER="${2:?}"; shift 2 ;;
    --cluster-name=*) CLUSTER="${1#*=}"; shift ;;
    --foreground) FOREGROUND=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "bad --port: $PORT"
[[ "$STORAGE_PORT" =~ ^[0-9]+$ ]] || die "bad --storage-port: $STORAGE_PORT"
[[ -z "$JMX_PORT" || "$JMX_PORT" =~ ^[0-9]+$ ]] || die "bad --jmx-port: $JMX_PORT"
[[ "$ADDRESS" =~ ^[0-9.]+$ ]] || die "bad --listen-address: $ADDRESS"
[[ "$TOKEN" =~ ^-?[0-9]+$ ]] || die "bad --initial-token: $TOKEN"
[[ "$CLUSTER" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad --cluster-name: $CLUSTER"
HINTS=true
if [[ -z "$SEEDS" ]]; then SEEDS="$ADDRESS:$STORAGE_PORT"; HINTS=false; fi
[[ "$SEEDS" =~ ^[0-9.:,]+$ ]] || die "bad --seeds: $SEEDS"

DIR="${DIR:-$CACHE/node-$PORT}"
if [[ -z "$JARS_ONLY" ]]; then
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
fi
PIDFILE="$DIR/cassandra.pid"
LOGDIR="$DIR/logs"

port_open() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# Wait until CQL accepts connections; on failure show the log and exit non-zero.
wait_for_cql() {
  local pid="$1" started="$2" now
  while :; do
    if port_open "$PORT"; then
      now=$(date +%s)
      echo "cassandra: CQL ready on $ADDRESS:$PORT after $((now - started)) s (pid $pid, dir $DIR)" >&2
      echo "$ADDRESS:$PORT"
      return 0
    fi
    if ! alive "$pid"; then
      echo "cassandra: the JVM (pid $pid) exited before CQL was ready. Log tail:" >&2
      tail -n 60 "$LOGDIR/system.log" "$LOGDIR/stdout.log" >&2 2>/dev/null || true
      rm -f "$PIDFILE"
      exit 1
    fi
    now=$(date +%s)
    if (( now - started >= TIMEOUT )); then
      echo "cassandra: CQL not ready on $ADDRESS:$PORT after ${TIMEOUT} s (pid $pid still running). Log tail:" >&2
      tail -n 60 "$LOGDIR/system.log" "$LOGDIR/stdout.log" >&2 2>/dev/null || true
      echo "cassandra: stop it with: $HERE/stop.sh --dir $DIR" >&2
      exit 1
    fi
    sleep 0.5
  done
}

# --- already running? ------------------------------------------------------
if [[ -z "$JARS_ONLY" && -f "$PIDFILE" ]]; then
  OLDPID="$(cat "$PIDFILE" 2>/dev/null || true)"
  if alive "$OLDPID" && grep -q CassandraDaemon "/proc/$OLDPID/cmdline" 2>/dev/null; then
    [[ -z "$FOREGROUND" ]] || die "the node of $DIR is already running (pid $OLDPID)"
    echo "cassandra: already running (pid $OLDPID)" >&2
    wait_for_cql "$OLDPID" "$(date +%s)"
    exit 0
  fi
  echo "cassandra: removing stale pid file ($PIDFILE)" >&2
  rm -f "$PIDFILE"
fi
if [[ -z "$JARS_ONLY" ]] && port_open "$PORT"; then
  die "$ADDRESS:$PORT is already in use by another process (not the node of $DIR)"
fi

# --- Java 17 -----------------------------------------------------------------
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/java}"
JAVA="${JAVA:-java}"
JAVA_MAJOR="$("$JAVA" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
if [[ "$JAVA_MAJOR" != "17" && "$JAVA_MAJOR" != "11" ]]; then
  for cand in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk /usr/lib/jvm/temurin-17-jdk-amd64; do
    if [[ -x "$cand/bin/java" ]]; then JAVA="$cand/bin/java"; JAVA_MAJOR=17; break; fi
  done
fi
[[ "$JAVA_MAJOR" == "17" || "$JAVA_MAJOR" == "11" ]] ||
  die "Cassandra 5.0 needs Java 17 (or 11); found '$JAVA' = ${JAVA_MAJOR:-unknown}. Set JAVA_HOME."

# --- jars --------------------------------------------------------------------
VERSION="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$HERE/pom.xml")"
[[ -n "$VERSION" ]] || die "cannot read cassandra.version from $HERE/pom.xml"
LIB="$CACHE/lib-$VERSION"
if [[ ! -f "$LIB/.complete" || ! -f "$LIB/cassandra-all-$VERSION.jar" ]]; then
  command -v mvn >/dev/null || die "Maven (mvn) is needed once to fetch the jars into $LIB"
  echo "cassandra: fetching cassandra-all $VERSION and its dependencies into $LIB ..." >&2
  mkdir -p "$CACHE"
  TMPLIB="$(mktemp -d "$CACHE/lib-$VERSION.tmp.XXXXXX")"
  t0=$(date +%s)
  if ! mvn -B -q -f "$HERE/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$TMPLIB" >"$CACHE/mvn.log" 2>&1; then
    tail -n 40 "$CACHE/mvn.log" >&2
    rm -rf "$TMPLIB"
    die "Maven could not fetch the jars (full log: $CACHE/mvn.log)"
  fi
  [[ -f "$TMPLIB/cassandra-all-$VERSION.jar" ]] || { rm -rf "$TMPLIB"; die "cassandra-all-$VERSION.jar missing after Maven"; }
  touch "$TMPLIB/.complete"
  rm -rf "$LIB"
  mv "$TMPLIB" "$LIB"
  echo "cassandra: jars ready in $(( $(date +%s) - t0 )) s ($(du -sh "$LIB" | cut -f1))" >&2
fi
if [[ -n "$JARS_ONLY" ]]; then
  echo "$LIB"
  exit 0
fi
JAMM="$(ls "$LIB"/jamm-*.jar 2>/dev/null | head -n 1)"
[[ -n "$JAMM" ]] || die "no jamm jar in $LIB"

# --- config ------------------------------------------------------------------
mkdir -p "$DIR/conf" "$DIR/data" "$DIR/triggers" "$LOGDIR" "$DIR/tmp"
sed -e "s#@DATA_DIR@#$DIR/data#g" \
    -e "s#@NATIVE_PORT@#$PORT#g" \
    -e "s#@STORAGE_PORT@#$STORAGE_PORT#g" \
    -e "s#@SSL_STORAGE_PORT@#$((STORAGE_PORT + 1))#g" \
    -e "s#@LISTEN_ADDRESS@#$ADDRESS#g" \
    -e "s#@SEEDS@#$SEEDS#g" \
    -e "s#@INITIAL_TOKEN@#$TOKEN#g" \
    -e "s#@CLUSTER_NAME@#$CLUSTER#g" \
    -e "s#@HINTED_HANDOFF@#$HINTS#g" \
    "$HERE/cassandra.yaml.in" > "$DIR/conf/cassandra.yaml"
cp "$HERE/logback.xml" "$DIR/conf/logback.xml"
cp "$HERE/jvm17.args" "$DIR/conf/jvm17.args"

ARGS=(
  "@$DIR/conf/jvm17.args"
  # -Xms below -Xmx on purpose: Cassandra mlockall()s its memory, which as root makes every committed
  # heap page resident at once (-Xms1G -Xmx1G gives ~1.45 GB RSS right after boot; 256M gives ~0.65 GB).
  "-Xms$HEAP_MIN" "-Xmx$HEAP"
  "-javaagent:$JAMM"
  "-Djava.io.tmpdir=$DIR/tmp"
  "-Djna.tmpdir=$DIR/tmp"
  "-Dcassandra.config=file://$DIR/conf/cassandra.yaml"
  "-Dcassandra.storagedir=$DIR/data"
  "-Dcassandra.logdir=$LOGDIR"
  "-Dcassandra.triggers_dir=$DIR/triggers"
  "-Dlogback.configurationFile=file://$DIR/conf/logback.xml"
)
if [[ -n "$JMX_PORT" ]]; then
  ARGS+=("-Dcassandra.jmx.local.port=$JMX_PORT")
fi
# Extra JVM options, whitespace-separated (e.g. CRAWLCOIN_CASSANDRA_JVM_OPTS="-Dcassandra.ring_delay_ms=1000").
if [[ -n "${CRAWLCOIN_CASSANDRA_JVM_OPTS:-}" ]]; then
  read -r -a EXTRA <<<"$CRAWLCOIN_CASSANDRA_JVM_OPTS"
  ARGS+=("${EXTRA[@]}")
fi
ARGS+=(-cp "$DIR/conf:$LIB/*" org.apache.cassandra.service.CassandraDaemon)

# --- launch ------------------------------------------------------------------
echo "cassandra: starting $VERSION (heap $HEAP, CQL $ADDRESS:$PORT, storage $STORAGE_PORT, dir $DIR)" >&2
if [[ -n "$FOREGROUND" ]]; then
  echo $$ >"$PIDFILE"
  exec "$JAVA" "${ARGS[@]}"
fi
STARTED=$(date +%s)
{
  echo "=== $(date -u +%FT%TZ) start: $JAVA ${ARGS[*]}"
} >>"$LOGDIR/stdout.log"
# setsid: the node survives the caller's shell/terminal; stop it with stop.sh.
# The inner shell writes its own pid and then execs java, so the pid file holds the JVM's pid.
rm -f "$PIDFILE"
setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' cassandra-start "$PIDFILE" "$JAVA" "${ARGS[@]}" \
  </dev/null >>"$LOGDIR/stdout.log" 2>&1 &
for _ in $(seq 50); do [[ -s "$PIDFILE" ]] && break; sleep 0.1; done
[[ -s "$PIDFILE" ]] || die "the JVM did not start (no pid file); see $LOGDIR/stdout.log"
PID="$(cat "$PIDFILE")"
wait_for_cql "$PID" "$STARTED"
