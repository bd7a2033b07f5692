#!/bin/bash
# The farm's cost per step and its spread, through a release kilnd:
#   deep-chain (40 RUN steps, --no-cache) with no worker and with one
#   kiln-worker, alternating, ROUNDS times; then parallel-stages (four
#   `sleep 3` stages) with two workers and with none.
# Usage: cargo build --release --locked --workspace --bins
#        KILN_ROOT=/tmp/kiln-bench-root builder/benches/farm.sh [ROUNDS]
# The store needs base:busybox (../shared/bench/peers.sh makes it).
set -u
rounds=${1:-5}
bin=$(cd "$(dirname "$0")/../.." && pwd)/target/release
workloads=$(cd "$(dirname "$0")/../../../shared/bench/workloads" && pwd)
sock=/tmp/kiln-bench-farm.sock
workers=$(mktemp -d /tmp/kiln-bench-workers.XXXXXX)
cd "$workloads"
"$bin/kilnd" --addr "unix://$sock" 2>/dev/null &
kilnd=$!
trap 'kill $kilnd 2>/dev/null; rm -rf "$workers"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
worker() {
    "$bin/kiln-worker" --root "$workers/$1" --kilnd "unix://$sock" --id "$1" 2>/dev/null &
    sleep 1
}
build() {
    /usr/bin/time -f "%e" "$bin/kiln" --addr "unix://$sock" build --no-cache \
        --progress plain -t bench/farm "$1" 2>&1 >/dev/null | tail -1
}
for _ in $(seq "$rounds"); do
    echo "deep-chain, no worker:   $(build deep-chain) s"
    worker w1
    echo "deep-chain, one worker:  $(build deep-chain) s"
    kill %2; wait %2 2>/dev/null
done
worker w1
worker w2
for _ in $(seq 3); do echo "parallel-stages, two workers: $(build parallel-stages) s"; done
"$bin/kiln" --addr "unix://$sock" workers
kill %2 %3; wait %2 %3 2>/dev/null
for _ in $(seq 3); do echo "parallel-stages, no worker:   $(build parallel-stages) s"; done
