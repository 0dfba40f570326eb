#!/usr/bin/env bash
# Builds the libFuzzer targets (engine/format/fuzz, engine/daemon/fuzz) with
# clang into build-fuzz/ (its own build folder: the main build uses gcc) and
# runs each fuzzer for a bounded time over a temporary copy of its committed
# corpus, so the repository stays clean. Fails if a fuzzer finds a crash, a
# leak, a slow input or a broken property, and prints where the input was
# saved (build-fuzz/artifacts/<fuzzer>/).
#
# Usage: ci/fuzz.sh [--build-only] [SECONDS] [FUZZER...]
#   SECONDS  fuzzing time per fuzzer (default 60)
#   FUZZER   context_reader, protocol, manifest, state_record (default: all)
# Exits 77 (CTest's SKIP_RETURN_CODE), printing "SKIPPED: ...", when clang or
# its libFuzzer/sanitizer runtimes (libclang-rt-14-dev) are not installed;
# ci/setup.sh installs both. Configuring and building hold a lock, so that
# several runs (the fuzz.* CTest tests) can share build-fuzz/.
set -euo pipefail

cd "$(dirname "$0")/.."
fuzz_dir=${STASIS_FUZZ_BUILD_DIR:-build-fuzz}
[[ $fuzz_dir == /* ]] || fuzz_dir=$PWD/$fuzz_dir

build_only=0
if [[ ${1:-} == --build-only ]]; then
  build_only=1
  shift
fi
seconds=60
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
fuzzers=("$@")
[[ ${#fuzzers[@]} -gt 0 ]] || fuzzers=(context_reader protocol manifest state_record)

# The committed corpus of each fuzzer.
declare -A corpus=(
  [context_reader]=engine/format/fuzz/corpus
  [protocol]=engine/format/fuzz/protocol_corpus
  [manifest]=engine/format/fuzz/manifest_corpus
  [state_record]=engine/daemon/fuzz/state_record_corpus
)
# Where each fuzzer is built (beside its corpus, below the build folder).
declare -A bindir=(
  [context_reader]=engine/format/fuzz
  [protocol]=engine/format/fuzz
  [manifest]=engine/format/fuzz
  [state_record]=engine/daemon/fuzz
)
for f in "${fuzzers[@]}"; do
  if [[ -z ${corpus[$f]:-} ]]; then
    echo "fuzz: unknown fuzzer '$f' (known: ${!corpus[*]})" >&2
    exit 2
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# clang, and a program that links with -fsanitize=fuzzer,address,undefined.
if ! command -v clang >/dev/null || ! command -v clang++ >/dev/null; then
  echo "SKIPPED: clang/libFuzzer not installed (no clang, clang++; ci/setup.sh installs them)"
  exit 77
fi
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' \
  >"$work/probe.cc"
if ! clang++ -fsanitize=fuzzer,address,undefined "$work/probe.cc" -o "$work/probe" \
  >"$work/probe.log" 2>&1; then
  sed 's/^/  /' "$work/probe.log" | head -n 5
  echo "SKIPPED: clang/libFuzzer not installed (clang++ cannot link a fuzzer;" \
    "ci/setup.sh installs libclang-rt-14-dev)"
  exit 77
fi

# Configure (once) and build only the fuzzers, under a lock.
mkdir -p "$fuzz_dir"
exec 9>"$fuzz_dir/.lock"
flock 9
if [[ -f $fuzz_dir/CMakeCache.txt ]] &&
   ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++' "$fuzz_dir/CMakeCache.txt"; then
  echo "fuzz: $fuzz_dir/ was configured with another compiler; remove it and rerun" >&2
  exit 1
fi
if [[ ! -f $fuzz_dir/build.ninja ]] || ! grep -qx 'STASIS_FUZZ:BOOL=ON' "$fuzz_dir/CMakeCache.txt"; then
  CC=clang CXX=clang++ cmake -S . -B "$fuzz_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSTASIS_FUZZ=ON >"$work/configure.log" 2>&1 || {
    cat "$work/configure.log"
    echo "fuzz: configuring $fuzz_dir/ failed" >&2
    exit 1
  }
fi
targets=()
for f in "${fuzzers[@]}"; do targets+=("${f}_fuzzer"); done
cmake --build "$fuzz_dir" --target "${targets[@]}"
flock -u 9
[[ $build_only -eq 0 ]] || exit 0

failed=()
for f in "${fuzzers[@]}"; do
  echo
  echo "=== fuzz: ${f}_fuzzer, ${seconds}s over ${corpus[$f]}"
  # New inputs go to the copy; crashes to build-fuzz/artifacts/.
  cp -r "${corpus[$f]}" "$work/$f"
  artifacts=$fuzz_dir/artifacts/$f
  mkdir -p "$artifacts"
  rc=0
  "$fuzz_dir/${bindir[$f]}/${f}_fuzzer" -max_total_time="$seconds" -print_final_stats=1 \
    -timeout=30 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" "$work/$f" \
    </dev/null >"$work/$f.log" 2>&1 || rc=$?
  # The start, what it found, and the final stats; not every new coverage line.
  grep -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$work/$f.log" | tail -n 60
  if [[ $rc -ne 0 ]]; then
    failed+=("$f")
    echo "fuzz: ${f}_fuzzer FAILED (exit $rc)"
    grep -h 'Test unit written to' "$work/$f.log" | sed 's/^/fuzz: /' || true
    echo "fuzz: reproduce with $fuzz_dir/${bindir[$f]}/${f}_fuzzer <input>;" \
      "add the input to ${corpus[$f]}/ once fixed"
  else
    echo "fuzz: ${f}_fuzzer ok ($(find "$work/$f" -type f | wc -l) inputs in the corpus copy)"
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1  # never libFuzzer's own 77, which CTest would count as skipped
fi
