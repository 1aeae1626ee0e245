#!/usr/bin/env bash
# Run nodetool against the test node; needs the node started with --jmx-port.
#
#   scripts/cassandra/nodetool.sh --jmx-port PORT <nodetool command...>     e.g. ... --jmx-port 7199 status
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CRAWLCOIN_CASSANDRA_HOME:-$HOME/.cache/crawlcoin/cassandra}"
[[ "${1:-}" == "--jmx-port" && -n "${2:-}" ]] || { echo "usage: $0 --jmx-port PORT <nodetool command...>" >&2; exit 2; }
JMX_PORT="$2"; shift 2
VERSION="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$HERE/pom.xml")"
LIB="$CACHE/lib-$VERSION"
[[ -f "$LIB/.complete" ]] || { echo "no jars in $LIB: run start.sh first" >&2; exit 1; }
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/java}"
# Only the JPMS lines of the server argfile (nodetool's FileUtils needs them on Java 17).
mapfile -t JPMS < <(grep -E '^--add-(exports|opens) ' "$HERE/jvm17.args" | tr ' ' '\n')
exec "${JAVA:-java}" -Xmx128m "${JPMS[@]}" -Dcassandra.logdir="${TMPDIR:-/tmp}" \
  -Dlogback.configurationFile="file://$HERE/logback-tools.xml" \
  -cp "$LIB/*" org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p "$JMX_PORT" "$@"
