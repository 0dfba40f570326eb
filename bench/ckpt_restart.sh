#!/usr/bin/env bash
# Checkpoint and restart of one process holding SIZE of memory (default 1G;
# the zdtm `mem` mix: 40% random, 20% zero-written, 20% patterned, 20% never
# touched pages), against the raw bandwidth of the same folder measured in
# the same run: dd of the same number of bytes with conv=fsync (write) and a
# cold-cache read of that file (read). Prints seconds, context size and the
# ratios. Needs root (drops the page cache; restores the pid).
#   bench/ckpt_restart.sh [SIZE] [FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
dir=${2:-/tmp}
bin=${STASIS_BUILD_DIR:-build}/engine/cli
mem=${STASIS_BUILD_DIR:-build}/test/zdtm/zdtm_mem
[[ $(id -u) -eq 0 ]] || { echo "bench: run as root" >&2; exit 1; }
work=$(mktemp -d "$dir/stasis-bench.XXXXXX")
trap 'pkill -KILL -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

# Pre-warm: the VM hands idle memory back to the host (PLATFORM.md).
python3 -c "b = bytearray(3 << 30); b[::4096] = b'x' * len(b[::4096])" || true

export ZDTM_READY=$work/ready ZDTM_CHECK=$work/check
setsid "$bin/cr_run" "$mem" "$size" private >"$work/mem.log" 2>&1 </dev/null &
pid=$!
while [[ ! -e $work/ready ]]; do sleep 0.05; done
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
bytes=$((rss * 1024))

t0=$(now)
"$bin/cr_checkpoint" --kill -f "$work/ctx" "$pid"
t1=$(now)
wait "$pid" 2>/dev/null || true
ctx_bytes=$(stat -c %s "$work/ctx")

# Raw write of the context's size, then a cold read of it.
mb=$(( (ctx_bytes + 1048575) / 1048576 ))
t2=$(now)
dd if=/dev/zero of="$work/raw" bs=1M count="$mb" conv=fsync status=none
t3=$(now)
sync; echo 3 > /proc/sys/vm/drop_caches
t4=$(now)
dd if="$work/raw" of=/dev/null bs=1M status=none
t5=$(now)
rm -f "$work/raw"

sync; echo 3 > /proc/sys/vm/drop_caches
t6=$(now)
setsid "$bin/cr_restart" -v "$work/ctx" >>"$work/mem.log" 2>"$work/restart.err" </dev/null &
rpid=$!
while ! grep -q restored "$work/restart.err" 2>/dev/null; do
  kill -0 "$rpid" 2>/dev/null || { cat "$work/restart.err" >&2; exit 1; }
  sleep 0.005
done
t7=$(now)
touch "$work/check"
wait "$rpid" || { echo "bench: restored program failed its own check:" >&2; tail -3 "$work/mem.log" >&2; exit 1; }
grep -q '^PASS' "$work/mem.log" || { echo "bench: no PASS from the restored program" >&2; exit 1; }

ck=$(secs "$t0" "$t1"); dw=$(secs "$t2" "$t3"); dr=$(secs "$t4" "$t5"); rs=$(secs "$t6" "$t7")
printf 'memory resident       %8.1f MiB\n' "$(echo "$bytes / 1048576" | bc -l)"
printf 'context file          %8.1f MiB (%.2f of resident)\n' "$(echo "$ctx_bytes / 1048576" | bc -l)" "$(echo "$ctx_bytes / $bytes" | bc -l)"
printf 'checkpoint (--kill)   %8.3f s   raw write (dd conv=fsync, same bytes) %.3f s   ratio %.2f\n' "$ck" "$dw" "$(echo "$ck / $dw" | bc -l)"
printf 'restart (cold cache)  %8.3f s   raw read  (cold cache, same bytes)    %.3f s   ratio %.2f\n' "$rs" "$dr" "$(echo "$rs / $dr" | bc -l)"
echo "restored program verified its memory: $(grep '^PASS' "$work/mem.log")"
