#!/usr/bin/env python3
"""counter_py: the counter test with python3 as the checkpointed program.

Counts every 100 ms and prints "count N"; polls $ZDTM_CHECK every 20 ms; at
the check verifies the count continued from the last printed value and that
a list of every value printed (built in the interpreter's heap) is intact.
ZDTM protocol: see zdtm.h.
"""
import os
import sys
import time

NAME = "counter_py"


def main():
    ready = os.environ["ZDTM_READY"]
    check = os.environ["ZDTM_CHECK"]
    corrupt = bool(os.environ.get("ZDTM_SELFTEST_CORRUPT"))
    state = {"count": 0, "last": 0, "failure": None}
    history = []

    def tick():
        if state["count"] != state["last"] and state["failure"] is None:
            state["failure"] = "count is %d but the last printed value was %d" % (
                state["count"], state["last"])
        state["count"] += 1
        history.append(state["count"])
        print("count %d" % state["count"], flush=True)
        state["last"] = state["count"]

    for _ in range(3):
        tick()
        time.sleep(0.1)
    tmp = "%s.tmp.%d" % (ready, os.getpid())
    with open(tmp, "w") as f:
        f.write("READY %d\n" % os.getpid())
    os.replace(tmp, ready)

    polls = ticks = 0
    while not os.path.exists(check):
        time.sleep(0.02)
        polls += 1
        if polls % 5 == 0:
            tick()
            ticks += 1
            if ticks == 3 and corrupt:
                state["count"] += 1  # selftest: skip a value without printing it

    failure = state["failure"]
    if failure is None and state["count"] != state["last"]:
        failure = "count %d != last printed %d" % (state["count"], state["last"])
    if failure is None and history != list(range(1, len(history) + 1)):
        failure = "the history of printed values has a gap or a repeat"
    if failure:
        print("FAIL %s: %s" % (NAME, failure), flush=True)
        return 1
    print("PASS %s" % NAME, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
