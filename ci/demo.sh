#!/usr/bin/env bash
# The stasis demo, about 10 seconds: a counter runs under cr_run, is
# checkpointed twice into a job folder (epochs 1 and 2, the second with
# --kill), the epochs are listed and shown, and cr_restart of the job folder
# brings the counter back from the newest epoch at the same pid, counting on
# from where it stopped, until it is asked to exit. Installs and builds first (fast when already done).
# Run as root: a process comes back at its original pid only with privilege.
set -euo pipefail

cd "$(dirname "$0")/.."
build_dir=${STASIS_BUILD_DIR:-build}
say() { printf '\n==> %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (sudo ci/demo.sh): restoring a process at its own pid needs root" >&2
  exit 1
fi

say "Installing missing packages and building (quick when already done)"
bash ci/setup.sh
bash ci/build.sh | tail -n 3

bin=$build_dir/engine/cli
counter=$build_dir/test/zdtm/demo_counter
for tool in cr_run cr_checkpoint cr_restart stasis; do
  if [[ ! -x $bin/$tool ]]; then
    echo "demo: $bin/$tool is missing: the engine's command-line tools are not built yet" >&2
    exit 1
  fi
done

work=$(mktemp -d /tmp/stasis-demo.XXXXXX)
out=$work/counter.out
started=()
cleanup() {
  local pid
  for pid in "${started[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Show the counter's output as it grows (the counter writes to a file so its
# output can be checked at the end; the restored counter appends to it).
: >"$out"
tail -n +1 -f "$out" &
started+=($!)

say "Starting demo_counter under cr_run, in a session of its own; it counts 4 times a second"
# setsid does not fork here (a background job of a script is no group leader),
# so $! is the counter's pid once cr_run has exec'd it.
setsid "$bin/cr_run" "$counter" "$work/stop" </dev/null >>"$out" 2>&1 &
pid=$!
started+=("$pid")
sleep 1.6

job="$work/ckpt/demo"
say "Checkpointing pid $pid into the job folder $job (epoch 1; it keeps running)"
timeout 30 "$bin/cr_checkpoint" --dir "$job" "$pid"
sleep 0.6
say "Checkpointing it again (epoch 2), then killing it (cr_checkpoint --kill)"
timeout 30 "$bin/cr_checkpoint" --kill --dir "$job" "$pid"
wait "$pid" 2>/dev/null || true # reap it, so its pid is free for the restart
last=$(grep -oE 'count [0-9]+' "$out" | tail -n 1)
echo "The counter is gone (pid $pid no longer exists); it had reached ${last:-nothing}."

say "The job's checkpoints (stasis ls) and what epoch 2 holds (stasis show)"
timeout 30 "$bin/stasis" ls "$job"
timeout 30 "$bin/stasis" show "$job/2/node0.ctx" >"$work/show.txt"
head -n 12 "$work/show.txt"
lines=$(wc -l <"$work/show.txt")
[[ $lines -le 12 ]] || echo "  ... ($((lines - 12)) more lines: memory mappings)"

say "Restarting it from the job folder (cr_restart picks the newest complete epoch): same pid, memory as it was"
setsid "$bin/cr_restart" "$job" </dev/null >>"$out" 2>&1 &
restart=$!
started+=("$restart")
sleep 1.6

say "Asking the counter to finish (it exits once $work/stop exists)"
touch "$work/stop"
status=0
for _ in $(seq 100); do
  kill -0 "$restart" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$restart" 2>/dev/null; then
  echo "demo: cr_restart did not exit within 10 s" >&2
  exit 1
fi
wait "$restart" || status=$?
sleep 0.3 # let tail print the last lines

first_after=$(grep -oE 'count [0-9]+' "$out" | awk -v last="$last" '
  found { print; exit } $0 == last { found = 1 }')
if [[ $status -ne 0 || -z $first_after ]]; then
  echo "demo: FAILED: cr_restart exited with status $status; after ${last:-?} the counter printed ${first_after:-nothing}" >&2
  exit 1
fi
say "Done. cr_restart exited with status 0, the restored counter's own exit status."
echo "Before the checkpoint the counter reached ${last}; after the restart it went on with ${first_after}."
