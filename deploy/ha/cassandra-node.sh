#!/bin/sh
# One node of the Cassandra cluster: its address is the container's, its token fixed (CASSANDRA_TOKEN),
# the seeds are CASSANDRA_SEEDS. Data in /var/lib/cassandra (a volume), heap CASSANDRA_HEAP (default 512M),
# further JVM options in CASSANDRA_JVM_OPTS (whitespace-separated).
set -eu
: "${CASSANDRA_TOKEN:?set CASSANDRA_TOKEN}" "${CASSANDRA_SEEDS:?set CASSANDRA_SEEDS}"
ip=$(hostname -i | awk '{print $1}')
home=/var/lib/cassandra
mkdir -p "$home/conf" "$home/data" "$home/logs" "$home/tmp"
sed -e "s#@ADDRESS@#$ip#g" -e "s#@TOKEN@#$CASSANDRA_TOKEN#g" -e "s#@SEEDS@#$CASSANDRA_SEEDS#g" \
    -e "s#@DATA_DIR@#$home/data#g" /opt/cassandra/conf/cassandra.yaml.in >"$home/conf/cassandra.yaml"
# shellcheck disable=SC2086 # CASSANDRA_JVM_OPTS is a list of options
exec java "@/opt/cassandra/conf/jvm17.args" -Xms256M "-Xmx${CASSANDRA_HEAP:-512M}" ${CASSANDRA_JVM_OPTS:-} \
  "-javaagent:$(ls /opt/cassandra/lib/jamm-*.jar)" \
  "-Djava.io.tmpdir=$home/tmp" "-Djna.tmpdir=$home/tmp" \
  "-Dcassandra.config=file://$home/conf/cassandra.yaml" "-Dcassandra.storagedir=$home/data" \
  "-Dcassandra.logdir=$home/logs" "-Dlogback.configurationFile=file:///opt/cassandra/conf/logback.xml" \
  -cp "$home/conf:/opt/cassandra/lib/*" org.apache.cassandra.service.CassandraDaemon
