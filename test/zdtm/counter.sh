#!/usr/bin/env bash
# counter_sh: the counter test with bash as the checkpointed program. Counts
# every 100 ms and prints "count N"; polls $ZDTM_CHECK every 20 ms (read -t on
# a pipe of its own, so no sleep child is ever in the tree); at the check
# verifies the count continued from the last printed value. ZDTM protocol:
# see zdtm.h.
set -euo pipefail

name=counter_sh
: "${ZDTM_READY:?run through zdtm.py}" "${ZDTM_CHECK:?run through zdtm.py}"
exec {tick_fd}<> <(:)   # a pipe that never has data: read -t on it is a sleep

count=0
last=0
failure=""
tick() {
  if [[ $count -ne $last && -z $failure ]]; then
    failure="count is $count but the last printed value was $last"
  fi
  count=$((count + 1))
  printf 'count %d\n' "$count"
  last=$count
}

for _ in 1 2 3; do
  tick
  read -r -t 0.1 -u "$tick_fd" _ || true
done
printf 'READY %d\n' "$$" >"$ZDTM_READY.tmp.$$"
mv -f "$ZDTM_READY.tmp.$$" "$ZDTM_READY"

polls=0
ticks=0
while [[ ! -e $ZDTM_CHECK ]]; do
  read -r -t 0.02 -u "$tick_fd" _ || true
  polls=$((polls + 1))
  if [[ $((polls % 5)) -eq 0 ]]; then
    tick
    ticks=$((ticks + 1))
    if [[ $ticks -eq 3 && -n ${ZDTM_SELFTEST_CORRUPT:-} ]]; then
      count=$((count + 1))   # selftest: skip a value without printing it
    fi
  fi
done

[[ $count -eq $last || -n $failure ]] || failure="count $count != last printed $last"
if [[ -n $failure ]]; then
  printf 'FAIL %s: %s\n' "$name" "$failure"
  exit 1
fi
printf 'PASS %s\n' "$name"
