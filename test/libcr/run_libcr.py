#!/usr/bin/env python3
"""Drives the libcr tests (issue 4) through the real tools.

    run_libcr.py --bindir BUILD CASE

Every program runs in a session of its own (so a process-group or session
checkpoint holds only what the test made). A case passes only if the
programs report their own checks as OK, on the continue path and, where a
context was written, on the restart path too. Exit 0 pass, 1 fail, 77 skip.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ARGS = None
WORK = None


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def tool(name):
    sub = "test/libcr" if name == "libcr_api" else ("engine/agent" if name.startswith("lib") else "engine/cli")
    return os.path.join(ARGS.bindir, sub, name)


def run(cmd, timeout=120, expect_rc=0, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, start_new_session=True, cwd=WORK, **kw)
    out = p.stdout + p.stderr
    sys.stdout.write(out)
    if expect_rc is not None and p.returncode != expect_rc:
        fail(f"{' '.join(cmd)} exited {p.returncode}, expected {expect_rc}")
    return p


def expect_ok(out, what):
    if "FAIL" in out or not re.search(r"^OK " + re.escape(what), out, re.M):
        fail(f"expected 'OK {what}'")


def start(cmd):
    """Starts a program that prints READY <pid>; returns (Popen, pid)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, cwd=WORK)
    line = p.stdout.readline()
    m = re.match(r"READY (\d+)", line)
    if not m:
        p.kill()
        fail(f"{cmd[0]} did not start: {line!r}")
    return p, int(m.group(1))


def context_pids(path):
    out = subprocess.run([tool("stasis"), "show", path], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=WORK).stdout
    return [int(x) for x in re.findall(r"^\s*process (\d+)", out, re.M)]


def checkpoint(args, expect_rc=0):
    return run([tool("cr_checkpoint")] + args, expect_rc=expect_rc)


def restart(ctx, *extra, expect_rc=0):
    return run([tool("cr_restart")] + list(extra) + [ctx], expect_rc=expect_rc)


# ---------------------------------------------------------------- cases

def self_checkpointing(mode, *extra, restart_ok=None):
    """The program checkpoints itself (cr_request_checkpoint) and checks the
    continue path; the restart of its context checks the restart path."""
    ctx = os.path.join(WORK, f"{mode}.ctx")
    p = run([tool("libcr_api"), mode, ctx] + list(extra))
    expect_ok(p.stdout, "continue")
    if not os.path.exists(ctx) or os.path.getsize(ctx) < 4096:
        fail(f"{ctx} not written")
    r = restart(ctx)
    expect_ok(r.stdout, restart_ok or "restart")


def case_order():
    self_checkpointing("order")


def case_critical_sections():
    self_checkpointing("cs", "25")


def case_omit():
    ctx = os.path.join(WORK, "omit.ctx")
    p = run([tool("libcr_api"), "omit", ctx])
    expect_ok(p.stdout, "continue")
    child = int(re.search(r"^CHILD (\d+)", p.stdout, re.M).group(1))
    pids = context_pids(ctx)
    if len(pids) != 1 or child in pids:
        fail(f"context holds {pids}; the omitted child {child} must not be in it")
    expect_ok(restart(ctx).stdout, "restart")


def case_temp_failure():
    self_checkpointing("fail")


def case_external_failure():
    # A callback's TEMP_FAILURE_CODE(42): cr_checkpoint fails with exit 42,
    # one line, no file; the process goes on.
    prog, pid = start([tool("libcr_api"), "extfail", "42"])
    ctx = os.path.join(WORK, "ext.ctx")
    r = checkpoint(["--pid", str(pid), "-f", ctx], expect_rc=42)
    err = r.stderr.strip()
    if "\n" in err or "cancelled by a callback" not in err:
        fail(f"expected one line naming the cancelling callback, got {err!r}")
    if os.path.exists(ctx):
        fail("a cancelled checkpoint left a context file")
    if prog.poll() is not None:
        fail("the process did not survive a cancelled checkpoint")
    prog.kill()
    prog.wait()
    # PERM_FAILURE: the checkpoint is cancelled and the process killed.
    prog, pid = start([tool("libcr_api"), "extfail", "perm"])
    r = checkpoint(["--pid", str(pid), "-f", ctx], expect_rc=2355 & 0xff)
    if "CR_EPERMFAIL" not in r.stderr:
        fail("PERM failure not named")
    try:
        prog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        prog.kill()
        fail("PERM failure did not kill the process")
    if prog.returncode != -signal.SIGKILL:
        fail(f"process ended with {prog.returncode}, expected SIGKILL")
    print("OK temp failure code 42 and perm failure through cr_checkpoint")


def case_request():
    ctx = os.path.join(WORK, "request.ctx")
    p = run([tool("libcr_api"), "request", ctx])
    expect_ok(p.stdout, "continue")
    expect_ok(p.stdout, "child counted")
    # The child's own context: restarted alone, it goes on counting.
    child_ctx = ctx + ".child"
    r = subprocess.Popen([tool("cr_restart"), child_ctx], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=WORK)
    time.sleep(1.0)
    if r.poll() is not None:
        fail(f"restored child ended early: {r.stdout.read()}")
    open(ctx + ".stop", "w").close()
    out, _ = r.communicate(timeout=30)
    print(out, end="")
    if r.returncode != 0 or "OK child counted" not in out:
        fail("restored child did not finish its count")
    os.unlink(ctx + ".stop")
    # The process group's context: parent and child come back together.
    r = restart(ctx)
    expect_ok(r.stdout, "restart")


def case_forward():
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    prog, pid = start([tool("libcr_api"), "forward", str(other.pid)])
    ctx = os.path.join(WORK, "forward.ctx")
    ck = subprocess.Popen([tool("cr_checkpoint"), "--pid", str(pid), "-f", ctx], cwd=WORK)
    if ck.wait(timeout=60) != 0:
        fail("cr_checkpoint failed")
    out, _ = prog.communicate(timeout=60)
    print(out, end="")
    other.kill()
    other.wait()
    if "OK forwarded" not in out:
        fail("cr_forward_checkpoint failed in the callback")
    # cr_get_checkpoint_info names the cr_checkpoint process, the pid and the
    # scope it was given (CR_SCOPE_PROC == 0).
    want = f"INFO requester={ck.pid} target={pid} scope=0 signal=0"
    if want not in out:
        fail(f"checkpoint info: expected '{want}'")
    pids = context_pids(ctx)
    if sorted(pids) != sorted([pid, other.pid]):
        fail(f"context holds {pids}, expected {pid} and the forwarded {other.pid}")
    print("OK forwarded process is in the context")


def case_fork_exec():
    self_checkpointing("forkexec")


def case_replace():
    p = run([tool("libcr_api"), "replace", os.path.join(WORK, "replace.ctx")])
    expect_ok(p.stdout, "replace_callback")


def case_bad_input():
    p = run([tool("libcr_api"), "badinput"])
    expect_ok(p.stdout, "bad input")


def case_cr_run():
    # cr_run preloads libcr; cr_run --omit opts a process out.
    plain, pid = start([tool("cr_run"), tool("libcr_api"), "wait", "30"])
    maps = open(f"/proc/{pid}/maps").read()
    if "libcr.so" not in maps:
        fail("cr_run did not preload libcr")
    plain.kill()
    plain.wait()
    omitted = subprocess.Popen([tool("cr_run"), "--omit", "sleep", "300"], start_new_session=True)
    time.sleep(0.3)
    if "libcr.so" not in open(f"/proc/{omitted.pid}/maps").read():
        fail("cr_run --omit did not preload libcr")
    r = checkpoint(["--pid", str(omitted.pid), "-f", os.path.join(WORK, "x.ctx")], expect_rc=3)
    if "omitted" not in r.stderr:
        fail("an all-omitted checkpoint must fail with ESRCH naming the omission")
    omitted.kill()
    omitted.wait()
    # A tree: the omitted child stays out, its sibling and parent are in.
    script = f"{tool('cr_run')} --omit sleep 300 & sleep 300 & echo READY $$; wait"
    tree, root = start(["bash", "-c", script])
    time.sleep(0.5)
    kids = [int(x) for x in open(f"/proc/{root}/task/{root}/children").read().split()]
    ctx = os.path.join(WORK, "tree.ctx")
    checkpoint(["--tree", str(root), "-f", ctx])
    pids = context_pids(ctx)
    if len(kids) != 2 or len(pids) != 2 or root not in pids:
        fail(f"tree {root} with children {kids}: context holds {pids}, expected bash and one sleep")
    os.killpg(root, signal.SIGKILL)
    tree.wait()
    print("OK cr_run preloads libcr; --omit processes stay out of checkpoints")


def case_restart_checkpointable():
    # A restarted job can be checkpointed again, with or without cr_restart
    # (BLCR's --omit-maybe/always/never).
    prog, pid = start([tool("libcr_api"), "wait", "6"])
    a = os.path.join(WORK, "a.ctx")
    checkpoint(["--tree", str(pid), "-f", a, "--kill"])
    prog.wait()

    def children(pid):
        try:
            return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        except OSError:
            return []

    def restarted(policy):
        """bash -> cr_restart POLICY a.ctx -> the restored job, as in a batch
        script; returns (bash Popen, bash pid, cr_restart pid, job pid)."""
        script = (f"{tool('cr_restart')} {policy} --no-restore-pid {a} & echo READY $$; wait")
        sh, shpid = start(["bash", "-c", script])
        for _ in range(300):
            kids = children(shpid)
            if kids and children(kids[0]):
                app = children(kids[0])[0]
                try:
                    traced = re.search(r"TracerPid:\s*(\d+)", open(f"/proc/{app}/status").read())
                except OSError:
                    traced = None
                if traced and traced.group(1) == "0":  # restore finished
                    return sh, shpid, kids[0], app
            time.sleep(0.02)
        os.killpg(shpid, signal.SIGKILL)
        fail("cr_restart did not restore")

    def stop(sh, shpid):
        os.killpg(shpid, signal.SIGKILL)
        sh.wait()

    # --omit-maybe (default): in when a request names it, out when it is
    # only swept up (here: inside the batch script's tree).
    sh, shpid, crr, app = restarted("--omit-maybe")
    t1 = os.path.join(WORK, "t1.ctx")
    checkpoint(["--tree", str(crr), "-f", t1])
    if sorted(context_pids(t1)) != sorted([crr, app]):
        fail(f"--omit-maybe, named: context holds {context_pids(t1)}, expected {crr} and {app}")
    s1 = os.path.join(WORK, "s1.ctx")
    checkpoint(["--tree", str(shpid), "-f", s1])
    if sorted(context_pids(s1)) != sorted([shpid, app]):
        fail(f"--omit-maybe, script's tree: context holds {context_pids(s1)}, expected {shpid} "
             f"and {app} without cr_restart {crr}")
    stop(sh, shpid)
    # --omit-always: never in.
    sh, shpid, crr, app = restarted("--omit-always")
    t2 = os.path.join(WORK, "t2.ctx")
    checkpoint(["--tree", str(crr), "-f", t2])
    if context_pids(t2) != [app]:
        fail(f"--omit-always: context holds {context_pids(t2)}, expected only {app}")
    stop(sh, shpid)
    # --omit-never: always in.
    sh, shpid, crr, app = restarted("--omit-never")
    s3 = os.path.join(WORK, "s3.ctx")
    checkpoint(["--tree", str(shpid), "-f", s3])
    if sorted(context_pids(s3)) != sorted([shpid, crr, app]):
        fail(f"--omit-never: context holds {context_pids(s3)}, expected {shpid}, {crr}, {app}")
    stop(sh, shpid)
    # The context holding cr_restart and its job restarts: the old
    # cr_restart goes on waiting for the job, which finishes its count.
    out = restart(t1).stdout
    expect_ok(out, "waited 6 s")
    # And the job alone, checkpointed without cr_restart, restarts too.
    expect_ok(restart(t2).stdout, "waited 6 s")
    print("OK restarted jobs checkpointable with cr_restart --omit-maybe/always/never")


def case_compile():
    pc_dir = os.path.join(ARGS.bindir, "engine/agent/pkgconfig")
    env = dict(os.environ, PKG_CONFIG_PATH=pc_dir)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libcr"], env=env,
                           stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_check.c")
    for compiler, lang, std in (("cc", "c", "-std=c11"), ("c++", "c++", "-std=c++17")):
        exe = os.path.join(WORK, f"compile_check_{lang.replace('+', 'p')}")
        run([compiler, "-x", lang, std, "-Wall", "-Wextra", "-Werror", src, "-o", exe] + flags)
        p = run([exe])
        if "compile_check: ok" not in p.stdout:
            fail(f"{lang} program built against libcr.h did not run")
    print("OK a C and a C++ program build with -Wall -Wextra -Werror against libcr.pc")


CASES = {
    "order": case_order,
    "critical_sections": case_critical_sections,
    "omit": case_omit,
    "temp_failure": case_temp_failure,
    "external_failure": case_external_failure,
    "request": case_request,
    "forward": case_forward,
    "fork_exec": case_fork_exec,
    "bad_input": case_bad_input,
    "replace": case_replace,
    "cr_run": case_cr_run,
    "restart_checkpointable": case_restart_checkpointable,
    "compile": case_compile,
}


def main():
    global ARGS, WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("case", choices=sorted(CASES))
    ARGS = ap.parse_args()
    if os.geteuid() != 0 and ARGS.case in ("restart_checkpointable",):
        print("SKIPPED: needs root (restores into a fresh pid namespace)")
        return 77
    if ARGS.case == "compile" and not shutil.which("pkg-config"):
        print("SKIPPED: pkg-config is not installed (ci/setup.sh installs it)")
        return 77
    WORK = tempfile.mkdtemp(prefix=f"libcr-{ARGS.case}-", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        CASES[ARGS.case]()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"PASS {ARGS.case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
