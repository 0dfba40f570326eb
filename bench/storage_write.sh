#!/usr/bin/env bash
# How the checkpoint store writes one node's context file of SIZE (default
# 1G; 64M for a smoke run) into FOLDER (default /tmp) with each write
# strategy (buffered, streaming, direct) and chunk size (1/8/32 MiB), against
# dd conv=fsync of the same size in the same run: medians of ROUNDS runs
# (default 3) as seconds, MB/s and the ratio to dd, plus how much of the file
# stays in the page cache and the peak Dirty memory while writing. The
# program is bench/storage_write.cc (built by ci/build.sh).
#   bench/storage_write.sh [SIZE] [FOLDER] [ROUNDS]
set -euo pipefail
size=${1:-1G}
dir=$(realpath "${2:-/tmp}")
rounds=${3:-3}
cd "$(dirname "$0")/.."
bin=${STASIS_BUILD_DIR:-build}/bench/storage_write
[[ -x $bin ]] || { echo "bench: build first (ci/build.sh)" >&2; exit 1; }
work=$(mktemp -d "$dir/stasis-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$bin" "$size" "$work" "$rounds"
