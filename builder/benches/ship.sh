#!/bin/bash
# What a build costs once its image leaves the machine (issue 16: layers
# are compressed when they leave, not when they are built): cold build +
# push to a local docker-registry, and cold build + save, kiln beside
# dockerd's BuildKit (`docker build` + `docker push` / `docker save`),
# alternating, ROUNDS times. One line per run: tool workload what seconds.
# Usage: cargo build --release --locked --workspace --bins
#        KILN_ROOT=/tmp/kiln-bench-root builder/benches/ship.sh [ROUNDS] [WORKLOAD...]
# KILN=path picks another kiln binary (e.g. an older build, to compare),
# TOOLS="kiln" leaves dockerd out; LABEL names kiln's lines.
# The store and dockerd need base:busybox (../shared/bench/setup-peers.sh).
set -u
rounds=${1:-3}; shift || true
workloads=("$@"); [[ ${#workloads[@]} == 0 ]] && workloads=(big-file many-files seed-app)
kiln=${KILN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/kiln}
tools=${TOOLS:-kiln docker}
label=${LABEL:-kiln}
dir=$(cd "$(dirname "$0")/../../../shared/bench/workloads" && pwd)
port=5077
data=$(mktemp -d /tmp/kiln-bench-ship.XXXXXX)
trap 'kill $registry 2>/dev/null; rm -rf "$data"' EXIT
start_registry() {  # a fresh, empty registry each run: every blob is uploaded
    [[ -n ${registry:-} ]] && kill "$registry" 2>/dev/null && wait "$registry" 2>/dev/null
    rm -rf "$data/store"
    printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
        "$data/store" "$port" > "$data/config.yml"
    /usr/bin/docker-registry serve "$data/config.yml" >/dev/null 2>&1 &
    registry=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
}
timed() {  # seconds of the whole command line, or FAIL
    local start end
    start=$(date +%s.%N)
    if bash -c "$1" >/dev/null 2>"$data/err"; then
        end=$(date +%s.%N); echo "$end - $start" | bc
    else
        echo "FAIL $(tail -1 "$data/err")"
    fi
}
clear() {
    "$kiln" rmi "bench/$1" "127.0.0.1:$port/bench/$1" >/dev/null 2>&1; "$kiln" prune -a >/dev/null 2>&1
    /usr/bin/docker rmi -f "bench/$1" "127.0.0.1:$port/bench/$1" >/dev/null 2>&1; /usr/bin/docker builder prune -af >/dev/null 2>&1
}
run() {  # tool workload
    local w=$2 ref=127.0.0.1:$port/bench/$2
    case $1 in
    kiln)
        clear "$w"; start_registry
        echo "$label $w build+push $(timed "'$kiln' build --progress plain -t $ref '$dir/$w' && '$kiln' push $ref")"
        clear "$w"
        echo "$label $w build+save $(timed "'$kiln' build --progress plain -t bench/$w '$dir/$w' && '$kiln' save -o '$data/k.tar' bench/$w")" ;;
    docker)
        clear "$w"; start_registry
        echo "docker $w build+push $(timed "DOCKER_BUILDKIT=1 /usr/bin/docker build --network none -q -t $ref '$dir/$w' && /usr/bin/docker push -q $ref")"
        clear "$w"
        echo "docker $w build+save $(timed "DOCKER_BUILDKIT=1 /usr/bin/docker build --network none -q -t bench/$w '$dir/$w' && /usr/bin/docker save -o '$data/d.tar' bench/$w")" ;;
    esac
    rm -f "$data/k.tar" "$data/d.tar"
}
for _ in $(seq "$rounds"); do
    for w in "${workloads[@]}"; do
        for tool in $tools; do run "$tool" "$w"; done
    done
done
