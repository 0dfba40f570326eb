#!/usr/bin/env bash
# Cost of libcr's agent while no checkpoint runs: a compute loop and a
# syscall-heavy loop (write(2) to /dev/null + getppid), each timed inside the
# process, run ROUNDS times in turn in three set-ups: plain; under cr_run
# (libcr preloaded, no cr_init); preloaded and cr_init() called (agent
# thread and block live). Prints the median seconds and the ratio to plain.
#   bench/agent_overhead.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
build=${STASIS_BUILD_DIR:-build}
cr_run=$build/engine/cli/cr_run
[[ -x $cr_run ]] || { echo "bench: build first (ci/build.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -o "$work/agent_loop" bench/agent_loop.c -ldl

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run() {  # workload n setup
  case $3 in
    plain) "$work/agent_loop" "$1" "$2" ;;
    preload) "$cr_run" "$work/agent_loop" "$1" "$2" ;;
    agent) "$cr_run" "$work/agent_loop" "$1" "$2" init ;;
  esac
}

printf '%-10s %-8s %10s %8s\n' workload setup median_s ratio
for w in "compute 400000000" "syscalls 2000000"; do
  set -- $w
  declare -A times=()
  for ((i = 0; i < rounds; i++)); do
    for s in plain preload agent; do times[$s]+="$(run "$1" "$2" "$s") "; done
  done
  base=$(echo "${times[plain]}" | tr ' ' '\n' | grep . | median)
  for s in plain preload agent; do
    m=$(echo "${times[$s]}" | tr ' ' '\n' | grep . | median)
    printf '%-10s %-8s %10.4f %8.3f\n' "$1" "$s" "$m" "$(echo "$m / $base" | bc -l)"
  done
  unset times
done
