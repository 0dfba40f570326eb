#!/usr/bin/env bash
# Writes the golden context files of this folder with the tools of a build
# (test/unit/golden_context_test.cc reads them). Run as root from the
# repository: test/golden/make_golden.sh [BUILD_DIR]. Each program of
# test/zdtm builds its state, says READY, and is checkpointed with --kill;
# the context is copied here as NAME.golden. The programs run with an empty
# environment (the context holds it) and stdio on /dev/null and files in a
# temporary folder. Regenerate only on purpose: these files are what an
# earlier release wrote, and the test proves this one still reads them.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
bin=$(realpath "$build/engine/cli")
progs=$(realpath "$build/test/zdtm")
out=$(realpath test/golden)

golden() {  # NAME PROGRAM [ARGS...]
  local name=$1
  shift
  local dir
  dir=$(mktemp -d /tmp/stasis-golden-XXXXXX)
  (cd "$dir" && env -i PATH=/usr/bin:/bin ZDTM_READY="$dir/ready" ZDTM_CHECK="$dir/check" \
     setsid -f "$bin/cr_run" "$1" "${@:2}" </dev/null >"$dir/out" 2>"$dir/err")
  for _ in $(seq 300); do [[ -s $dir/ready ]] && break; sleep 0.1; done
  [[ -s $dir/ready ]] || { echo "$name: no READY: $(cat "$dir/err")" >&2; exit 1; }
  local pid
  pid=$(awk '{print $2}' "$dir/ready")
  "$bin/cr_checkpoint" --kill -f "$dir/ctx" "$pid"
  cp "$dir/ctx" "$out/$name.golden"
  echo "$name: $(stat -c %s "$out/$name.golden") bytes"
  rm -rf "$dir"
}

shm_kinds=$(mktemp /tmp/stasis-golden-shm-XXXXXX)
cc -O2 -o "$shm_kinds" test/golden/shm_kinds.c

golden fd_timers "$progs/zdtm_fd_timers"  # timerfd (one-shot, periodic with unread ticks), signalfd
golden eventfd "$progs/zdtm_eventfd"      # eventfd (semaphore too), epoll targets
golden pty "$progs/zdtm_pty"              # pty master and slaves, controlling terminal
golden socketpair "$progs/zdtm_unix_sock" socketpair    # stream and datagram queues
golden unix_listen "$progs/zdtm_unix_sock" unix_listen  # listener, accepted connection
golden shm_kinds "$shm_kinds"  # shared memory: anonymous, memfd, SysV, a file by value
rm -f "$shm_kinds"
