#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test tier through CTest:
# unit, integration, cluster, kmod, install (the CTest labels). A tier with no tests yet
# passes; a skipped test is listed with its reason and never counted as a
# pass. Exits non-zero if any test failed. Optional arguments: the tiers to
# run (default: all five).
set -euo pipefail

cd "$(dirname "$0")/.."
build_dir=${STASIS_BUILD_DIR:-build}
tiers=("$@")
[[ ${#tiers[@]} -gt 0 ]] || tiers=(unit integration cluster kmod install)

bash ci/setup.sh
bash ci/build.sh

results=()
failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# Runs ctest with the given selection; records one summary line for it.
run_tier() {
  local name=$1 jobs=$2
  shift 2
  echo
  echo "=== tier: $name"
  local rc=0
  ctest --test-dir "$build_dir" --output-on-failure --no-tests=ignore -j "$jobs" "$@" \
    </dev/null 2>&1 | tee "$out" || rc=$?
  local summary
  summary=$(grep -E 'tests passed|No tests were found' "$out" | tail -n 1 || true)
  grep -h '^SKIPPED[: ]' "$build_dir/Testing/Temporary/LastTest.log" 2>/dev/null |
    sed 's/^/  /' || true
  if [[ $rc -ne 0 ]]; then
    failed=1
    results+=("$name: FAILED ($summary)")
  else
    results+=("$name: ok (${summary:-no tests})")
  fi
}

for tier in "${tiers[@]}"; do
  jobs=1
  [[ $tier == unit ]] && jobs=$(nproc)
  run_tier "$tier" "$jobs" -L "^${tier}\$"
done

# A test without a tier label would never run above: run it, and say so.
if [[ $# -eq 0 ]]; then
  unlabelled=$(ctest --test-dir "$build_dir" -N -LE '^(unit|integration|cluster|kmod|install)$' |
    grep -c '^ *Test *#' || true)
  if [[ $unlabelled -gt 0 ]]; then
    echo "warning: $unlabelled tests carry no tier label (unit, integration, cluster, kmod, install)"
    run_tier unlabelled 1 -LE '^(unit|integration|cluster|kmod|install)$'
  fi
fi

echo
echo "=== summary"
printf '%s\n' "${results[@]}"
exit "$failed"
