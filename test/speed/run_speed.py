#!/usr/bin/env python3
"""Correctness of the fast paths (issue 9), with real processes and the real
tools. Usage: run_speed.py BUILD_DIR CASE

  snapshot    a program rewriting 64 MiB without pause is checkpointed with
              the write slowed to 32 MB/s (about 2 s): the tree must be paused
              for a small part of that, must have run on during the write,
              must have reaped its snapshot, and the restarted program must
              find its memory exactly as at one instant, the pause.
  dontfork    the same with the buffer MADV_DONTFORK: no snapshot (the
              reason is printed), the tree stays frozen during the write, and
              the restart is exact too.
  killed      cr_checkpoint is SIGKILLed while writing from a snapshot: the
              program runs on, its dead snapshot is left as a zombie child;
              the next checkpoint leaves that zombie out of the tree and has
              it reaped, and its restart is exact.
  pidns       a tree restarted in a pid namespace of its own (its pid was
              taken) is checkpointed with a snapshot: the snapshot is reaped
              by the pid the process sees, so no child is left (root only).
  halfzero    a process with half of its pages zero gives a context of about
              half its memory; restarted, it checks every byte.
  lazy        a program with 256 MiB is restarted with cr_restart --lazy: it
              runs (prints) before its memory is in; then it and a forked child
              read every page in random order, drop a MiB (zeros) and move
              4 MiB (data kept) while the rest streams in (root only).
  incr        incremental epochs: a program (and from step 2 its fork child)
              changes 5% of 32 MiB, drops pages, maps, unmaps and moves memory
              between checkpoints; cr_checkpoint --track, then four
              --parent checkpoints, each a fraction of the first; a restart
              from each of the five finds memory exactly as at that epoch.
              A capture whose context was lost (tracking reset, file gone)
              makes the next one store whole; a missing, replaced or damaged
              parent is refused by name; a lazy restart of the chain (root
              only: fixed pids).
  bench       bench/checkpoint.py --small (and --incremental): every workload
              still runs and every restored program checks all of its memory.
Exit 77 = skipped (prints SKIPPED and why).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "build"
CASE = sys.argv[2] if len(sys.argv) > 2 else ""
CLI = os.path.join(BUILD, "engine", "cli")
REWRITER = os.path.join(BUILD, "test", "speed", "rewriter")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def skip(msg):
    print("SKIPPED: " + msg)
    sys.exit(77)


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            fail("timed out waiting for " + what)
        time.sleep(0.01)


def last_gen(path):
    with open(path) as f:
        gens = re.findall(r"^gen (\d+)$", f.read(), re.M)
    return int(gens[-1]) if gens else 0


def restart_rewriter(work, out, options):
    """Restarts work/ctx with DIR/check present: the restored rewriter checks
    its memory at once. Returns the pass it resumed in."""
    time.sleep(0.1)
    open(os.path.join(work, "check"), "w").close()
    rs = subprocess.run([os.path.join(CLI, "cr_restart")] + options + [os.path.join(work, "ctx")],
                        capture_output=True, text=True, timeout=120)
    # Its stdout is the original's file, reopened at its offset.
    text = open(out).read()
    m = re.search(r"^(PASS|FAIL) gen (\d+) cursor (\d+).*$", text, re.M)
    if m:
        print("restarted program: " + m.group(0))
    if rs.returncode != 0 or not m or m.group(1) != "PASS":
        fail(f"the restarted program (exit {rs.returncode}): {text[-300:].strip()} {rs.stderr.strip()}")
    return int(m.group(2))


def rewriter_case(work, dontfork):
    out = os.path.join(work, "orig.out")
    argv = [REWRITER, "64", work] + (["dontfork"] if dontfork else [])
    prog = subprocess.Popen(argv, stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(work, "ready")), 60, "the program's first pass")
        wait_for(lambda: last_gen(out) >= 3, 60, "three passes")
        g0 = last_gen(out)
        t0 = time.monotonic()
        ck = subprocess.run([os.path.join(CLI, "cr_checkpoint"), "-v", "--bandwidth", "32M", "-f",
                             os.path.join(work, "ctx"), str(prog.pid)], capture_output=True, text=True)
        wall = time.monotonic() - t0
        g1 = last_gen(out)
        if ck.returncode != 0:
            fail("cr_checkpoint: " + ck.stderr.strip())
        print(ck.stderr.strip())
        m = re.search(r"paused ([\d.]+) s", ck.stderr)
        if not m:
            fail("no pause figure in: " + ck.stderr)
        pause = float(m.group(1))
        print(f"checkpoint {wall:.3f} s, paused {pause:.3f} s; passes before {g0}, after {g1}")
        if dontfork:
            if "no snapshot" not in ck.stderr or "MADV_DONTFORK" not in ck.stderr:
                fail("a MADV_DONTFORK buffer must make the checkpoint say why it took no snapshot")
            if pause < 0.8 * wall - 0.2:
                fail(f"without a snapshot the tree must stay frozen while writing: paused {pause:.3f} "
                     f"of {wall:.3f} s")
            if g1 > g0 + 1:
                fail(f"the program ran {g1 - g0} passes during a frozen checkpoint")
        else:
            if "written from a snapshot" not in ck.stderr:
                fail("expected the pages to be written from a snapshot: " + ck.stderr.strip())
            if wall < 1.0:
                fail(f"the throttled write took {wall:.3f} s; the test needs it slow to mean anything")
            if pause > 0.5 * wall:
                fail(f"paused {pause:.3f} s of a {wall:.3f} s checkpoint: the snapshot did not shorten it")
            if g1 < g0 + 2:
                fail(f"the program did not run during the write (passes {g0} -> {g1})")
            # The snapshot is gone and reaped: no child left in the program.
            kids = open(f"/proc/{prog.pid}/task/{prog.pid}/children").read().split()
            if kids:
                fail(f"the program has children after the checkpoint: {kids} (snapshot not reaped)")
    finally:
        os.killpg(prog.pid, signal.SIGKILL)
        prog.wait()
    gen = restart_rewriter(work, out, ["--no-restore-pid"])
    # It resumed inside pass g0+1 or g0+2 (the freeze came right after g0
    # was printed), never in a pass the original reached during the write.
    if not g0 <= gen <= g0 + 2:
        fail(f"restarted in pass {gen}; the pause was between passes {g0} and {g0 + 2}")
    if not dontfork and gen >= g1 + 1:
        fail(f"restarted in pass {gen}, which the original reached only after the pause ({g1})")
    print(f"restarted program: memory exactly as at one instant, pass {gen} (paused after {g0})")


def children(pid):
    return open(f"/proc/{pid}/task/{pid}/children").read().split()


def killed_case(work):
    out = os.path.join(work, "orig.out")
    prog = subprocess.Popen([REWRITER, "32", work], stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: last_gen(out) >= 2, 60, "two passes")
        ck = subprocess.Popen([os.path.join(CLI, "cr_checkpoint"), "--bandwidth", "4M", "-f",
                               os.path.join(work, "first"), str(prog.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # well inside the 8 s write
        if ck.poll() is not None:
            fail("cr_checkpoint ended before it could be killed: " + ck.stderr.read())
        ck.kill()
        ck.wait()
        g = last_gen(out)
        wait_for(lambda: last_gen(out) >= g + 2, 30, "the program to run on after the kill")
        left = children(prog.pid)
        if len(left) != 1:
            fail(f"expected the dead snapshot as the one child of the program, found {left}")
        st = open(f"/proc/{left[0]}/stat").read()
        print(f"after the kill: program runs (pass {last_gen(out)}), dead snapshot {left[0]} "
              f"state {st.rsplit(')', 1)[1].split()[0]}")
        ck2 = subprocess.run([os.path.join(CLI, "cr_checkpoint"), "-v", "-f", os.path.join(work, "ctx"),
                              str(prog.pid)], capture_output=True, text=True)
        if ck2.returncode != 0:
            fail("the next checkpoint: " + ck2.stderr.strip())
        print(ck2.stderr.strip())
        if not re.search(r": 1 processes,", ck2.stderr):
            fail("the dead snapshot was taken into the tree: " + ck2.stderr.strip())
        if children(prog.pid):
            fail(f"the dead snapshot was not reaped: children {children(prog.pid)}")
    finally:
        os.killpg(prog.pid, signal.SIGKILL)
        prog.wait()
    restart_rewriter(work, out, [])


def pidns_case(work):
    if os.geteuid() != 0:
        skip("a restart into a pid namespace of its own needs root")
    out = os.path.join(work, "orig.out")
    prog = subprocess.Popen([REWRITER, "16", work], stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    rs = None
    try:
        wait_for(lambda: last_gen(out) >= 2, 60, "two passes")
        ck = subprocess.run([os.path.join(CLI, "cr_checkpoint"), "-f", os.path.join(work, "ctx"), str(prog.pid)],
                            capture_output=True, text=True)
        if ck.returncode != 0:
            fail("cr_checkpoint: " + ck.stderr.strip())
        # The original still runs: its pid is taken, so the copy gets a pid
        # namespace of its own.
        err = open(os.path.join(work, "restart.err"), "w")
        rs = subprocess.Popen([os.path.join(CLI, "cr_restart"), "-v", os.path.join(work, "ctx")],
                              stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                              start_new_session=True)
        wait_for(lambda: "restored" in open(os.path.join(work, "restart.err")).read(), 60, "the restart")
        text = open(os.path.join(work, "restart.err")).read()
        if "new pid namespace" not in text:
            fail("expected a restart into a new pid namespace: " + text.strip())
        copy = None
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != prog.pid:
                try:
                    status = open(f"/proc/{pid}/status").read()
                except OSError:
                    continue
                m = re.search(r"^NSpid:\s+(\d+)\s+(\d+)$", status, re.M)
                if m and int(m.group(2)) == prog.pid and "rewriter" in open(f"/proc/{pid}/cmdline").read():
                    copy = int(pid)
        if not copy:
            fail("no restored copy seeing itself as pid %d" % prog.pid)
        ck2 = subprocess.run([os.path.join(CLI, "cr_checkpoint"), "-v", "-f", os.path.join(work, "ctx2"),
                              str(copy)], capture_output=True, text=True)
        print(ck2.stderr.strip())
        if ck2.returncode != 0 or "written from a snapshot" not in ck2.stderr:
            fail("checkpoint of the restored copy: " + ck2.stderr.strip())
        if children(copy):
            fail(f"the snapshot of the copy in its own pid namespace was not reaped: {children(copy)}")
        print(f"copy {copy} (pid {prog.pid} in its namespace): checkpointed from a snapshot, no child left")
    finally:
        os.killpg(prog.pid, signal.SIGKILL)
        prog.wait()
        if rs:
            os.killpg(rs.pid, signal.SIGKILL)
            rs.wait()


def halfzero_case(work):
    mem = os.path.join(BUILD, "bench", "bench_mem")
    prog = subprocess.Popen([mem, "64M", "halfzero", "1", "private", work], stdout=open(os.path.join(work, "out"), "w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(work, "ready")), 60, "bench_mem")
        ck = subprocess.run([os.path.join(CLI, "cr_checkpoint"), "-v", "-f", os.path.join(work, "ctx"),
                             str(prog.pid)], capture_output=True, text=True)
        if ck.returncode != 0:
            fail("cr_checkpoint: " + ck.stderr.strip())
    finally:
        os.killpg(prog.pid, signal.SIGKILL)
        prog.wait()
    size = os.path.getsize(os.path.join(work, "ctx"))
    ratio = size / (64 << 20)
    print(f"64 MiB, half of it zero pages: context {size / 2**20:.1f} MiB ({ratio:.3f} of the memory)")
    if not 0.45 <= ratio <= 0.55:
        fail(f"a half-zero process gave a context of {ratio:.3f} of its memory, not about half")
    open(os.path.join(work, "check"), "w").close()
    rs = subprocess.run([os.path.join(CLI, "cr_restart"), "--no-restore-pid", os.path.join(work, "ctx")],
                        capture_output=True, text=True, timeout=120)
    text = open(os.path.join(work, "out")).read()
    if rs.returncode != 0 or "PASS" not in text:
        fail(f"restarted program: {text.strip()} {rs.stderr.strip()}")
    print("restarted program: " + text.strip())


def lazy_case(work):
    if os.geteuid() != 0:
        skip("cr_restart --lazy makes a userfaultfd in the restored process: needs root here "
             "(vm.unprivileged_userfaultfd is 0)")
    prog_path = os.path.join(BUILD, "test", "speed", "lazy_touch")
    out = os.path.join(work, "out")
    prog = subprocess.Popen([prog_path, "256", work], stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(work, "ready")), 60, "lazy_touch")
        time.sleep(0.05)
        ck = subprocess.run([os.path.join(CLI, "cr_checkpoint"), "--kill", "-f", os.path.join(work, "ctx"),
                             str(prog.pid)], capture_output=True, text=True)
        if ck.returncode != 0:
            fail("cr_checkpoint: " + ck.stderr.strip())
    finally:
        try:
            os.killpg(prog.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        prog.wait()
    ticks = lambda: len(re.findall(r"^tick \d+$", open(out).read(), re.M))
    before = ticks()
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)
    t0 = time.monotonic()
    rs = subprocess.Popen([os.path.join(CLI, "cr_restart"), "--lazy", "-v", os.path.join(work, "ctx")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: ticks() > before or rs.poll() is not None, 60, "the restored program's first tick")
    running = time.monotonic() - t0
    # While its pages arrive, a checkpoint of it is refused (their absence
    # would read as zero pages), with a line that says so.
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and
            open(f"/proc/{p}/cmdline", "rb").read().startswith(prog_path.encode())]
    early = subprocess.run([os.path.join(CLI, "cr_checkpoint"), "-f", os.path.join(work, "early.ctx"),
                            str(max(pids))], capture_output=True, text=True) if pids else None
    if early and early.returncode != 0 and "still arriving from a lazy restart" not in early.stderr:
        fail(f"a checkpoint during the lazy restart failed otherwise: {early.stderr.strip()}")
    if early:
        print("checkpoint while pages arrive: " + (early.stderr.strip() or "taken (every page was in)"))
    open(os.path.join(work, "check"), "w").close()
    try:
        _, err = rs.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        rs.kill()
        fail("cr_restart --lazy did not end within 300 s")
    text = open(out).read()
    m = re.search(r"^(PASS|FAIL) .*$", text, re.M)
    print(err.strip())
    print(f"running {running:.3f} s after cr_restart --lazy started (cold cache); "
          f"program says: {m.group(0) if m else text[-200:]}")
    if rs.returncode != 0 or not m or m.group(1) != "PASS":
        fail(f"the lazily restarted program (cr_restart exit {rs.returncode}): {text[-400:].strip()} {err.strip()}")
    lazy = re.search(r"([\d.]+) MiB of pages follow lazily", err)
    served = re.search(r"all pages resident .*\((\d+) faults served, ([\d.]+) MiB streamed\)", err)
    if not lazy or float(lazy.group(1)) < 250 or not served or int(served.group(1)) == 0:
        fail(f"cr_restart --lazy did not leave the big region to the page server: {err.strip()}")
    # A damaged page deep in the file: the tree runs first (the damage is
    # found by the stream), then it is killed and cr_restart says why.
    ctx = os.path.join(work, "ctx")
    bad = os.path.join(work, "bad.ctx")
    shutil.copy(ctx, bad)
    with open(bad, "r+b") as f:
        f.seek(os.path.getsize(bad) * 3 // 4)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x20]))
    os.remove(os.path.join(work, "check"))
    rs = subprocess.run([os.path.join(CLI, "cr_restart"), "--lazy", bad], capture_output=True, text=True,
                        timeout=120)
    if rs.returncode == 0 or "checksum mismatch" not in rs.stderr:
        fail(f"cr_restart --lazy of a damaged context: exit {rs.returncode}, {rs.stderr.strip()!r}: "
             "want a failure naming the checksum mismatch")
    print(f"damaged page data: cr_restart --lazy exit {rs.returncode}: {rs.stderr.strip()}")


def incr_case(work):
    if os.geteuid() != 0:
        skip("restarts with the original pids: run as root")
    prog_path = os.path.join(BUILD, "test", "speed", "incr")
    ck_bin = os.path.join(CLI, "cr_checkpoint")
    out = open(os.path.join(work, "out"), "w")
    prog = subprocess.Popen([prog_path, work], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    ctx = lambda k: os.path.join(work, f"e{k}.ctx")

    def put(name, text):
        with open(os.path.join(work, name + ".tmp"), "w") as f:
            f.write(text)
        os.rename(os.path.join(work, name + ".tmp"), os.path.join(work, name))

    def step(k):
        put("step", str(k))
        wait_for(lambda: os.path.exists(os.path.join(work, f"done.{k}")), 30, f"step {k}")
        if k >= 3:
            put("c.step", str(k))
            wait_for(lambda: os.path.exists(os.path.join(work, f"c.done.{k}")), 30, f"child step {k}")

    def checkpoint(k, parent=None):
        args = [ck_bin, "-v", "-f", ctx(k)] + (["--parent", ctx(parent)] if parent else ["--track"])
        # Small incremental captures are written frozen; e4 is read from a
        # snapshot all the same (the threshold is 256 MiB otherwise); e7,
        # stored whole, is too.
        env = dict(os.environ, STASIS_FROZEN_WRITE_BYTES="0") if k == 4 else None
        r = subprocess.run(args + [str(prog.pid)], capture_output=True, text=True, timeout=120, env=env)
        want = "(pages written from a snapshot)" if k in (4, 7) or not parent else "is written frozen"
        if want not in r.stderr:
            fail(f"e{k}: expected '{want}':\n{r.stderr}")
        if r.returncode != 0:
            fail(f"cr_checkpoint e{k}: {r.stderr.strip()}")
        m = re.search(r"incremental: (\d+) processes, ([\d.]+) MiB unchanged", r.stderr)
        size = os.path.getsize(ctx(k))
        print(f"e{k}: {size / 2**20:.1f} MiB" + (f", {m.group(1)} processes incremental, {m.group(2)} MiB left to e{parent}" if m else ", whole"))
        return size, (int(m.group(1)) if m else 0), r.stderr

    try:
        wait_for(lambda: os.path.exists(os.path.join(work, "ready")), 30, "incr")
        full, _, _ = checkpoint(1)
        sizes = {}
        for k in range(1, 5):
            step(k)
            if k == 2:
                wait_for(lambda: os.path.exists(os.path.join(work, "c.ready")), 30, "the child")
            sizes[k + 1], nproc, err = checkpoint(k + 1, k)
            # From e4 on the child is tracked too (e3 stored it whole: a fork
            # child is not tracked until a capture sets it up).
            want = 1 if k + 1 <= 3 else 2
            if nproc != want:
                fail(f"e{k + 1}: {nproc} processes incremental, expected {want}:\n{err}")
            if k + 1 == 3 and "a fork child" not in err:
                fail(f"e3 does not say why the fork child was stored whole:\n{err}")
        # 5% of 32 MiB and the few new mappings, against everything.
        for k in (2, 4, 5):
            if sizes[k] > 0.3 * full:
                fail(f"e{k} is {sizes[k]} bytes, not a fraction of the whole e1 ({full})")
        # A capture whose context is lost still reset the tracking: the next
        # one, against the older parent, must store whole, not reference it.
        step(5)
        checkpoint(6, 5)
        os.unlink(ctx(6))
        step(6)
        size7, nproc, err = checkpoint(7, 5)
        if nproc != 0 or "tracked since another capture than the parent" not in err:
            fail(f"e7 after a lost e6 was incremental against e5 ({nproc} processes):\n{err}")
    finally:
        os.killpg(prog.pid, signal.SIGKILL)
        prog.wait()
    subprocess.run(["pkill", "-KILL", "-f", prog_path + " " + work], check=False)
    time.sleep(0.2)

    def restart(k, expect_main, expect_child, opts=()):
        for name in ("verify", "c.verify", "verify.out", "c.verify.out", "step", "c.step"):
            if os.path.exists(os.path.join(work, name)):
                os.unlink(os.path.join(work, name))
        put("verify", "")
        put("c.verify", "")
        rs = subprocess.run([os.path.join(CLI, "cr_restart"), *opts, ctx(k)], capture_output=True, text=True,
                            timeout=120)
        # cr_restart waits for the restored root, which exits once verified.
        if not os.path.exists(os.path.join(work, "verify.out")):
            if rs.returncode == 0 or not rs.stderr.strip():
                fail(f"restart of e{k}: no verdict and no error ({rs.returncode})")
            return rs.stderr.strip()
        wait_for(lambda: os.path.exists(os.path.join(work, "verify.out")), 30, f"the restored e{k} to verify")
        got = open(os.path.join(work, "verify.out")).read().strip()
        if got != f"PASS step {expect_main}":
            fail(f"restart of e{k}: {got}")
        if expect_child:
            wait_for(lambda: os.path.exists(os.path.join(work, "c.verify.out")), 30, f"the restored child of e{k}")
            cgot = open(os.path.join(work, "c.verify.out")).read().strip()
            if cgot != f"PASS step {expect_child}":
                fail(f"restart of e{k}, the child: {cgot}")
        subprocess.run(["pkill", "-KILL", "-f", prog_path + " " + work], check=False)
        time.sleep(0.2)
        print(f"restart of e{k}: {got}" + (f", child {cgot}" if expect_child else ""))
        return ""

    for k, main_step, child_step in ((1, 0, 0), (2, 1, 0), (3, 2, 2), (4, 3, 3), (5, 4, 4), (7, 6, 6)):
        err = restart(k, main_step, child_step)
        if err:
            fail(f"cr_restart e{k}: {err}")
    # Lazily: the chain's pages are in before the tree runs, e5's own arrive
    # on demand.
    err = restart(5, 4, 4, opts=("--lazy",))
    if err:
        fail(f"cr_restart --lazy e5: {err}")
    # A damaged, replaced or missing parent is refused by name.
    shutil.copy(ctx(3), ctx(3) + ".good")
    with open(ctx(3), "r+b") as f:
        f.seek(os.path.getsize(ctx(3)) - 8192)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xff]))
    err = restart(5, 4, 4)
    if "e3.ctx" not in err or "checksum" not in err:
        fail(f"a damaged e3 under e5 was not refused by name: {err!r}")
    print("damaged parent: " + err)
    shutil.copy(ctx(1), ctx(3))
    err = restart(5, 4, 4)
    if "e3.ctx" not in err or "is not the context this one was taken after" not in err:
        fail(f"e3 replaced by another context was not refused: {err!r}")
    print("replaced parent: " + err)
    os.unlink(ctx(3))
    err = restart(5, 4, 4)
    if "e3.ctx" not in err:
        fail(f"a missing e3 under e5 was not named: {err!r}")
    print("missing parent: " + err)
    print("damaged, replaced, missing parent: refused by name")
    r = subprocess.run([ck_bin, "--parent", ctx(1) + ".nope", "-f", ctx(9), "1"], capture_output=True, text=True)
    if r.returncode == 0 or "e1.ctx.nope" not in r.stderr:
        fail(f"--parent of a missing file: {r.stderr!r}")


def main():
    if CASE not in ("snapshot", "dontfork", "killed", "pidns", "halfzero", "lazy", "incr", "bench"):
        fail(f"unknown case '{CASE}'")
    if CASE == "bench":
        if os.geteuid() != 0:
            skip("the benchmarks drop the page cache: run as root")
        env = dict(os.environ, STASIS_BUILD_DIR=BUILD)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "checkpoint.py"), "--small"],
                           env=env, text=True, capture_output=True, timeout=1200)
        print(r.stdout + r.stderr)
        if r.returncode != 0 or "PASS" not in r.stdout:
            fail("bench/checkpoint.py --small failed")
        rows = [l for l in r.stdout.splitlines() if re.match(r"^\S+\s+\d+M ", l)]
        if len(rows) != 8:
            fail(f"expected 8 workload rows, got {len(rows)}")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "checkpoint.py"), "--small", "--incremental"],
                           env=env, text=True, capture_output=True, timeout=600)
        print(r.stdout + r.stderr)
        rows = [l for l in r.stdout.splitlines() if re.match(r"^\S+\s+\d+M ", l)]
        if r.returncode != 0 or "PASS" not in r.stdout or len(rows) != 2:
            fail("bench/checkpoint.py --small --incremental failed")
        return
    work = tempfile.mkdtemp(prefix=f"stasis-speed-{CASE}.")
    os.chmod(work, 0o755)
    try:
        if CASE == "halfzero":
            halfzero_case(work)
        elif CASE == "lazy":
            lazy_case(work)
        elif CASE == "incr":
            incr_case(work)
        elif CASE == "killed":
            killed_case(work)
        elif CASE == "pidns":
            pidns_case(work)
        else:
            rewriter_case(work, CASE == "dontfork")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("PASS " + CASE)


if __name__ == "__main__":
    main()
