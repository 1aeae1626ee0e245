#!/usr/bin/env bash
# What the build of deploy/docker/Dockerfile needs before it starts (prefect.yaml runs this as the first
# build step of the Docker deployments; run it by hand before a plain `docker build` the same way):
#  - the base image, made by base-image.sh unless it exists;
#  - the host's pip configuration (PIP_CONFIG_FILE, else /etc/pip.conf) and the certificates it names,
#    copied into deploy/docker/pip/ with their paths rewritten, for the image's build stage only: the
#    final image holds the virtualenv pip made, not the configuration. Empty when the host has none.
# Prints the base image's tag (the Dockerfile's BASE_IMAGE).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

tag="$("$root/scripts/docker/base-image.sh" "${1:-crawlcoin-base:bookworm}")"

stage="$root/deploy/docker/pip"
mkdir -p "$stage"
find "$stage" -mindepth 1 ! -name .gitignore -delete
conf="${PIP_CONFIG_FILE:-/etc/pip.conf}"
if [ -f "$conf" ]; then
  (
    umask 077
    while IFS= read -r line || [ -n "$line" ]; do
      if [[ $line =~ ^[[:space:]]*(cert|client-cert)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]]; then
        key="${BASH_REMATCH[1]}"
        cp "${BASH_REMATCH[2]}" "$stage/$key.pem"
        echo "$key = /etc/crawlcoin-pip/$key.pem"
      else
        printf '%s\n' "$line"
      fi
    done <"$conf" >"$stage/pip.conf"
  )
fi
echo "$tag"
