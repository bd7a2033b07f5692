#!/usr/bin/env bash
# The main job: build the getting-started app (examples/seed-app) with kiln,
# on kiln's default store, with no container registry. Run as root on
# Debian (`make demo`).
#
# 1. builds kiln;
# 2. makes a Python base image once, from Debian packages (debootstrap),
#    and imports it with `kiln import` (reused on later runs);
# 3. builds the app — its RUN step really pip-installs Flask and Redis;
# 4. shows the result.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bins
# RUN steps reach the network through a NAT of their own (slirp4netns).
command -v slirp4netns >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slirp4netns; }
kiln=target/release/kiln
base=kiln/python-base:bookworm

if ! "$kiln" inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "making $base with debootstrap (once; a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-pip bookworm "$work/rootfs" http://deb.debian.org/debian
    # An image's Python is the image's own: let pip install into it (PEP 668's
    # marker is for a distribution's system Python on a host).
    rm -f "$work"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    # The image trusts the CAs of the host that made it (networks that
    # inspect TLS add their own), and pip uses them.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        mkdir -p "$work/rootfs/etc/ssl/certs"
        cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$work/rootfs/etc/pip.conf"
    fi
    tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
    "$kiln" import "$work/rootfs.tar" "$base"
fi

"$kiln" build -t seed-app:latest --build-arg BASE="$base" examples/seed-app
"$kiln" images
"$kiln" inspect seed-app:latest
