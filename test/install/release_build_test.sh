#!/usr/bin/env bash
# build.release (install tier): the product builds warning-free as packagers
# and sites build it, `-DCMAKE_BUILD_TYPE=Release` (-O3, where GCC 12 warns
# more than at -O2: the -Wrestrict false positive of issue 22 was one), with
# -Werror, into its own folder beside the test build folder. Only what gets
# installed is built (tools, stasisd, libcr, the plugin, stasis-step,
# libstasis_pmix.so), not the tests and benchmarks, to keep CI's time.
#
# usage: release_build_test.sh CMAKE SOURCE_DIR BUILD_DIR
# Incremental: a second run rebuilds only what changed.
set -euo pipefail
if [[ $# -ne 3 ]]; then
  echo "usage: $0 CMAKE SOURCE_DIR BUILD_DIR" >&2
  exit 2
fi
cmake=$1
src=$2
out=$3-release
# Logs beside the test build's own (never in the source tree).
log=$3/Testing/build-release
mkdir -p "$(dirname "$log")"
gen=()
command -v ninja >/dev/null && [[ ! -f $out/CMakeCache.txt ]] && gen=(-G Ninja)
"$cmake" -S "$src" -B "$out" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSTASIS_WERROR=ON \
  >"$log.configure" 2>&1 || { cat "$log.configure" >&2; echo "FAIL build.release: configure"; exit 1; }
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
  echo "FAIL build.release: the Release build failed (log: $log.build)"
  exit 1
fi
echo "build.release: ${targets[*]} built with -O3 -Werror in $(($(date +%s) - start)) s ($out)"
