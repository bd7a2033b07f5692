#!/bin/bash
# What a foreign platform costs (issue 17): the seed app's shape (ADD of
# the context, a RUN that writes 200 files) built cold for this machine's
# platform alone, for linux/arm64 alone (its RUN under QEMU user
# emulation), and for both at once (one index), alternating, ROUNDS
# times; then the RUN step alone, native and emulated. One line per run:
# what seconds.
# Usage: cargo build --release --locked --workspace --bins
#        builder/benches/platforms.sh [ROUNDS]
# Needs qemu-user-static with its binfmt_misc handlers registered and
# Debian's busybox-static for arm64 unpacked in ARM64 (default
# /var/lib/kiln-test/arm64, as .ci/run makes it); amd64 host.
set -eu
rounds=${1:-5}
here=$(cd "$(dirname "$0")/../.." && pwd)
kiln=${KILN:-$here/target/release/kiln}
arm64=${ARM64:-/var/lib/kiln-test/arm64}
app=$(cd "$here/../shared/bench/workloads/seed-app" && pwd)
data=$(mktemp -d /tmp/kiln-bench-platforms.XXXXXX)
trap 'rm -rf "$data"' EXIT
export KILN_ROOT=$data/root

rootfs() {  # DIR BUSYBOX: a busybox root filesystem tarball DIR.tar
    mkdir -p "$1/bin" "$1/tmp"
    cp "$2" "$1/bin/busybox"
    for applet in sh echo cat ls seq wc uname mkdir sha256sum head; do ln -s busybox "$1/bin/$applet"; done
    tar -C "$1" -cf "$1.tar" .
}
rootfs "$data/amd64" /bin/busybox
rootfs "$data/arm64" "$arm64/bin/busybox"
"$kiln" import "$data/amd64.tar" base:amd64 >/dev/null
"$kiln" import --platform linux/arm64 "$data/arm64.tar" base:arm64 >/dev/null
mkdir -p "$data/base"
printf 'FROM base:amd64 AS base-amd64\nFROM base:arm64 AS base-arm64\nFROM base-$TARGETARCH\n' > "$data/base/Dockerfile"
"$kiln" build -q --platform linux/amd64,linux/arm64 -t base:multi "$data/base" >/dev/null
# The RUN step alone: the seed app's, and a CPU-bound one.
mkdir -p "$data/step"
printf 'FROM base:multi\nRUN for i in $(seq 1 200); do echo "module $i" > /gen_$i.py; done && head -c 16777216 /dev/zero | sha256sum\n' > "$data/step/Dockerfile"

timed() {  # seconds of a cold build: kiln build --no-cache ARGS
    local start end
    start=$(date +%s.%N)
    "$kiln" build --no-cache -q "$@" >/dev/null 2>"$data/err" || { echo "FAIL $(tail -1 "$data/err")"; return; }
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}
for _ in $(seq "$rounds"); do
    echo "seed-app linux/amd64 $(timed --build-arg BASE=base:multi --platform linux/amd64 "$app")"
    echo "seed-app linux/arm64 $(timed --build-arg BASE=base:multi --platform linux/arm64 "$app")"
    echo "seed-app both $(timed --build-arg BASE=base:multi --platform linux/amd64,linux/arm64 "$app")"
    echo "step linux/amd64 $(timed --platform linux/amd64 "$data/step")"
    echo "step linux/arm64 $(timed --platform linux/arm64 "$data/step")"
done
