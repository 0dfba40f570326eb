#!/usr/bin/env bash
# build.release, build.debug_clang (install tier): the product builds
# warning-free as packagers, sites and developers build it, with -Werror,
# into its own folder beside the test build folder:
#   build.release      g++, -DCMAKE_BUILD_TYPE=Release (-O3, where GCC 12
#                      warns more than at -O2: the -Wrestrict false positive
#                      of issue 22 was one)
#   build.debug_clang  clang 14, Debug (-O0 -g), the other compiler
# Only what gets installed is built (tools, stasisd, libcr, the plugin,
# stasis-step, libstasis_pmix.so), not the tests and benchmarks, to keep
# CI's time. Incremental: a second run rebuilds only what changed.
#
# usage: build_check.sh CMAKE SOURCE_DIR BUILD_DIR NAME BUILD_TYPE [CC CXX]
# Prints "SKIPPED: <why>" and exits 77 when the compiler is missing.
set -euo pipefail
if [[ $# -ne 5 && $# -ne 7 ]]; then
  echo "usage: $0 CMAKE SOURCE_DIR BUILD_DIR NAME BUILD_TYPE [CC CXX]" >&2
  exit 2
fi
cmake=$1
src=$2
name=$4
type=$5
out=$3-$name
# Logs beside the test build's own (never in the source tree).
log=$3/Testing/build-$name
mkdir -p "$(dirname "$log")"
compilers=()
if [[ $# -eq 7 ]]; then
  for c in "$6" "$7"; do
    command -v "$c" >/dev/null || { echo "SKIPPED: $c is not installed (ci/setup.sh installs it)"; exit 77; }
  done
  compilers=(-DCMAKE_C_COMPILER="$6" -DCMAKE_CXX_COMPILER="$7")
fi
gen=()
command -v ninja >/dev/null && [[ ! -f $out/CMakeCache.txt ]] && gen=(-G Ninja)
"$cmake" -S "$src" -B "$out" "${gen[@]}" "${compilers[@]}" -DCMAKE_BUILD_TYPE="$type" \
  -DSTASIS_WERROR=ON >"$log.configure" 2>&1 ||
  { cat "$log.configure" >&2; echo "FAIL build.$name: configure"; exit 1; }
targets=(cr_run cr_checkpoint cr_restart stasis stasisd cr)
# Built when their prerequisites (Slurm's spank.h, PMIx) were found.
known=$("$cmake" --build "$out" --target help 2>/dev/null || true)
for t in stasis-step spank_stasis stasis_pmix; do
  if grep -qE "^\s*$t:" <<<"$known"; then
    targets+=("$t")
  fi
done
start=$(date +%s)
if ! "$cmake" --build "$out" --target "${targets[@]}" >"$log.build" 2>&1; then
  grep -E 'error|warning' "$log.build" | head -n 40 >&2
  echo "FAIL build.$name: the $type build failed (log: $log.build)"
  exit 1
fi
echo "build.$name: ${targets[*]} built ($type${compilers:+, ${6:-}}, -Werror) in $(($(date +%s) - start)) s ($out)"
