#!/usr/bin/env bash
# The base of crawlcoin's Docker image, made from Debian's own packages, so that building the image
# pulls nothing from a registry: a minimal Debian bookworm (Python 3.11 with venv, CA certificates)
# made by debootstrap and imported as one image. Run as root, with debootstrap and a running dockerd.
# Does nothing when the image exists. Prints the image's tag.
#   scripts/docker/base-image.sh [TAG]        # default crawlcoin-base:bookworm
set -euo pipefail

tag="${1:-crawlcoin-base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1 && ! PATH="$PATH:/usr/sbin" command -v debootstrap >/dev/null 2>&1; then
  echo "base-image.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
fi
export PATH="$PATH:/usr/sbin:/sbin"

# The machine's own Debian mirror, else Debian's.
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror="${mirror:-http://deb.debian.org/debian}"
# The downloaded packages are kept between runs: a second build only unpacks them.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/crawlcoin/debootstrap"
mkdir -p "$cache"

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates --cache-dir="$cache" \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
echo "$tag"
