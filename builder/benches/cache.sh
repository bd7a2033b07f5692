#!/bin/bash
# Build-cache backends (issue 18): what exporting the build cache costs and
# what importing it saves, per backend — `type=registry` (a loopback
# docker-registry), `type=local` (an OCI layout directory) and `type=s3`
# (moto's S3 server on loopback). Per backend and workload, each on a fresh
# store (its own KILN_ROOT, base:busybox imported):
#   build         a cold build, no cache options (the baseline)
#   build+export  the same cold build with `--cache-to <backend>,mode=max`
#                 into an empty backend (a fresh registry, directory, moto)
#   import        a build with `--cache-from <backend>` (what build+export
#                 wrote): every step must be CACHED and none DONE, else the
#                 row is FAIL
# Backends alternate within a round, ROUNDS rounds; one line per run
# (backend workload what seconds), then the medians (median backend
# workload what seconds).
# Usage: cargo build --release --locked --workspace --bins
#        builder/benches/cache.sh [ROUNDS] [WORKLOAD...]
# KILN=path picks another kiln binary; BACKENDS="local s3" a subset;
# WORKLOADS=dir another copy of the workloads (generated: their
# generate.sh); TMPDIR where the stores and caches go. Every store and cache
# is kept until the end (then removed): deleting 20,000-file trees between
# runs slows the next build's inode allocation on this disk's journal-less
# ext4 (see docs/benchmarks.md, "Build, then ship").
# Needs /bin/busybox (static), /usr/bin/docker-registry, python3 with moto
# and boto3.
set -u
rounds=${1:-3}; shift || true
workloads=("$@"); [[ ${#workloads[@]} == 0 ]] && workloads=(many-files)
kiln=${KILN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/kiln}
backends=${BACKENDS:-registry local s3}
dir=${WORKLOADS:-$(cd "$(dirname "$0")/../../../shared/bench/workloads" && pwd)}
port=${REGISTRY_PORT:-5078}
s3port=${S3_PORT:-5079}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-bench} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-bench}
data=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-cache.XXXXXX")
registry='' moto='' n=0 root='' to='' t=''
say() { echo "$*" | tee -a "$data/lines"; }
stop() { [[ -n $1 ]] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null; }
trap 'stop "$registry"; stop "$moto"; rm -rf "$data"' EXIT

# base:busybox as setup-peers.sh makes it: every applet of a static busybox.
base() {
    local r=$data/rootfs a
    mkdir -p $r/bin $r/etc $r/tmp $r/root $r/home $r/usr/bin $r/usr/sbin $r/sbin $r/var $r/dev $r/proc $r/sys
    cp /bin/busybox $r/bin/busybox
    for a in $(/bin/busybox --list-full); do
        [[ $a == bin/busybox ]] && continue; mkdir -p "$r/$(dirname "$a")"; ln -sf /bin/busybox "$r/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > $r/etc/passwd
    printf 'root:x:0:\nnogroup:x:65534:\n' > $r/etc/group
    chmod 1777 $r/tmp
    (cd $r && tar --numeric-owner --sort=name --mtime=@1700000000 -cf "$data/base.tar" .)
    rm -rf "$r"
}
store() {  # a fresh store holding base:busybox, in $root
    n=$((n + 1))
    root=$data/root.$n
    KILN_ROOT=$root SOURCE_DATE_EPOCH=1700000000 "$kiln" import "$data/base.tar" base:busybox >/dev/null || exit 1
}
wait_port() {
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
    echo "nothing listens on 127.0.0.1:$1" >&2; exit 1
}
start_registry() {  # a fresh, empty registry: every blob is uploaded
    stop "$registry"
    printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
        "$data/registry.$n" "$port" > "$data/config.yml"
    /usr/bin/docker-registry serve "$data/config.yml" >/dev/null 2>&1 &
    registry=$!
    wait_port "$port"
}
start_moto() {  # a fresh moto (objects in memory) with an empty bucket
    stop "$moto"
    python3 -m moto.server -H 127.0.0.1 -p "$s3port" >/dev/null 2>&1 &
    moto=$!
    wait_port "$s3port"
    python3 -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$s3port', region_name='us-east-1').create_bucket(Bucket='kiln-cache')" || exit 1
}
cache() {  # backend workload: a fresh, empty cache; --cache-to's value in $to
    case $1 in
    registry) start_registry; to="type=registry,ref=127.0.0.1:$port/bench/$2:cache" ;;
    local) to="type=local,dest=$data/local.$n" ;;
    s3) start_moto; to="type=s3,bucket=kiln-cache,region=us-east-1,endpoint_url=http://127.0.0.1:$s3port,use_path_style=true,name=$2" ;;
    esac
}
timed() {  # command-line, in a fresh store: $t seconds or FAIL, the log in $data/log
    local start end
    store
    start=$(date +%s.%N)
    if KILN_ROOT=$root bash -c "$1" >/dev/null 2>"$data/log"; then
        end=$(date +%s.%N); t=$(echo "$end - $start" | bc)
    else
        t="FAIL $(tail -1 "$data/log")"
    fi
}
run() {  # backend workload
    local b=$1 w=$2 build="'$kiln' build --progress plain -t bench/$2 '$dir/$2'" from t steps ran cached
    timed "$build"
    steps=$(grep -c ' DONE' "$data/log")
    say "$b $w build $t"
    cache "$b" "$w"
    timed "$build --cache-to '$to,mode=max'"
    [[ $t == FAIL* ]] || grep -q "exporting cache to" "$data/log" || t="FAIL no 'exporting cache to' in the log"
    say "$b $w build+export $t"
    from=${to/dest=/src=}
    timed "$build --cache-from '$from'"
    ran=$(grep -c ' DONE' "$data/log"); cached=$(grep -c ' CACHED' "$data/log")
    if [[ $t != FAIL* ]] && ! grep -q "importing cache from" "$data/log"; then
        t="FAIL no 'importing cache from' in the log"
    elif [[ $t != FAIL* ]] && (( ran != 0 || cached < steps )); then
        t="FAIL $ran DONE, $cached CACHED of $steps steps"
    fi
    say "$b $w import $t"
}
base
for _ in $(seq "$rounds"); do
    for w in "${workloads[@]}"; do
        for b in $backends; do run "$b" "$w"; done
    done
done
# Medians of the runs that did not fail, in the order first seen.
awk '$4 ~ /^[0-9.]+$/ { print $1, $2, $3 }' "$data/lines" | awk '!seen[$0]++' | while read -r b w what; do
    mapfile -t v < <(awk -v k="$b $w $what" '$1 " " $2 " " $3 == k && $4 ~ /^[0-9.]+$/ { print $4 }' "$data/lines" | sort -g)
    c=${#v[@]}
    if (( c % 2 )); then m=${v[c / 2]}; else m=$(echo "(${v[c / 2 - 1]} + ${v[c / 2]}) / 2" | bc -l); fi
    printf 'median %s %s %s %.3f\n' "$b" "$w" "$what" "$m"
done
