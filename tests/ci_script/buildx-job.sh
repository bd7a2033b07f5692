#!/bin/bash
# A CI job as it is written for `docker buildx build`: labels and
# annotations, a push, the build cache to a directory and to S3, the digest
# read back from --metadata-file. kiln runs it by changing the program's
# name: BUILDX="docker buildx" or BUILDX="kiln" (or "kiln --addr ADDR").
#
# Usage: buildx-job.sh first|again   (`again`: a fresh runner, from the caches)
# Environment: BUILDX, REGISTRY (host:port), CACHE_DIR, S3_ENDPOINT (and
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), OUT (where results go).
set -euo pipefail
: "${BUILDX:?}" "${REGISTRY:?}" "${CACHE_DIR:?}" "${S3_ENDPOINT:?}" "${OUT:?}"
phase=${1:?first or again}
export SOURCE_DATE_EPOCH=1700000000
s3="type=s3,region=us-east-1,bucket=ci-cache,endpoint_url=$S3_ENDPOINT,use_path_style=true,name=app"
case $phase in
first) cache=(--cache-to "type=local,dest=$CACHE_DIR,mode=max" --cache-to "$s3,mode=max") ;;
again) cache=(--cache-from "type=local,src=$CACHE_DIR" --cache-from "$s3") ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086 # BUILDX is a command line ("docker buildx").
$BUILDX build \
    --label org.opencontainers.image.source=https://example.invalid/ci/app \
    --label org.opencontainers.image.revision=0123abcd \
    --annotation org.opencontainers.image.title=ci-app \
    "${cache[@]}" \
    --metadata-file "$OUT/$phase.json" \
    --progress plain \
    --push -t "$REGISTRY/ci/app:$phase" \
    . 2> "$OUT/$phase.log"
python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' \
    "$OUT/$phase.json" > "$OUT/$phase.digest"
