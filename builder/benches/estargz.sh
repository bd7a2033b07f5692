#!/bin/bash
# eStargz against gzip (issue 18): a cold build of each workload with an
# OCI output (`-o type=oci,dest=…`), its layers compressed as they leave,
# `compression=gzip` (the default: gzip on every core) then
# `compression=estargz` (each file its own gzip member, one core),
# alternating, ROUNDS times. One line per run: label workload compression
# seconds bytes-of-the-output.
# Usage: cargo build --release --locked -p kiln-builder --bin kiln -p kiln-worker --bin kiln-sandbox
#        KILN_ROOT=/tmp/kiln-bench-root builder/benches/estargz.sh [ROUNDS] [WORKLOAD...]
# KILN=path picks another kiln binary; LABEL names the lines; WORKLOADS=dir
# another copy of the workloads (generated); TMPDIR where outputs go.
# The store needs base:busybox (../shared/bench/setup-peers.sh).
set -u
rounds=${1:-3}; shift || true
workloads=("$@"); [[ ${#workloads[@]} == 0 ]] && workloads=(big-file many-files)
kiln=${KILN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/kiln}
label=${LABEL:-kiln}
dir=${WORKLOADS:-$(cd "$(dirname "$0")/../../../shared/bench/workloads" && pwd)}
data=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-estargz.XXXXXX")
trap 'rm -rf "$data"' EXIT
timed() {  # seconds of the whole command line, or FAIL
    local start end
    start=$(date +%s.%N)
    if bash -c "$1" >/dev/null 2>"$data/err"; then
        end=$(date +%s.%N); echo "$end - $start" | bc
    else
        echo "FAIL $(tail -1 "$data/err")"
    fi
}
for _ in $(seq "$rounds"); do
    for w in "${workloads[@]}"; do
        for c in gzip estargz; do
            "$kiln" prune -a >/dev/null 2>&1
            t=$(timed "'$kiln' build --progress plain --no-cache -o type=oci,dest='$data/o.tar',compression=$c '$dir/$w'")
            echo "$label $w $c $t $(stat -c %s "$data/o.tar" 2>/dev/null)"
            rm -f "$data/o.tar"
        done
    done
done
