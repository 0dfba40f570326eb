#!/usr/bin/env python3
"""cr_checkpoint and cr_restart show a progress line on a terminal only
(issue 22, item 7).

A Python program holds 384 MiB of random data. It is checkpointed twice and
restarted twice, directly (--no-daemon), once with stdout/stderr on pipes and
once on a pseudo-terminal:
  - on pipes, both tools print nothing at all (their output before progress
    lines existed);
  - on the terminal, each draws at least one line "TOOL: N MiB of ..." in
    place ("\\r...\\033[K") and erases it ("\\r\\033[K") as its last output,
    and prints nothing else.
Each restarted program recomputes its data's SHA-256 on SIGUSR1 and writes
OK when it matches the one taken at its start.

STASIS_PROGRESS_DELAY (the seconds before the first line) is 0 here, so that
a short checkpoint shows a line too; set it to a large value to see the
test fail (no line is drawn).

Usage: run_progress.py --bindir BUILD --workdir DIR. Exits 77 when not root.
"""
import argparse
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time

SIZE = 384 << 20

PROGRAM = r"""
import hashlib, os, signal, sys, time
data = bytearray(os.urandom(%d))
want = hashlib.sha256(data).hexdigest()
out = sys.argv[1]
def check(sig, frame):
    got = hashlib.sha256(data).hexdigest()
    with open(out + ".check.tmp", "w") as f:
        f.write("OK\n" if got == want else "FAIL %%s != %%s\n" %% (got, want))
    os.rename(out + ".check.tmp", out + ".check")
signal.signal(signal.SIGUSR1, check)
with open(out + ".ready", "w") as f:
    f.write("%%d\n" %% os.getpid())
while True:
    time.sleep(0.05)
""" % SIZE


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def wait_for(path, seconds, what):
    end = time.time() + seconds
    while not os.path.exists(path):
        if time.time() > end:
            fail("timed out waiting for " + what)
        time.sleep(0.05)


def start_program(work):
    base = os.path.join(work, "prog")
    for suffix in (".ready", ".check"):
        if os.path.exists(base + suffix):
            os.unlink(base + suffix)
    p = subprocess.Popen([sys.executable, "-c", PROGRAM, base], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    wait_for(base + ".ready", 60, "the program to start")
    return p, base


def wait_running(pid, seconds):
    """Until the restored `pid` runs on its own: untraced, its SIGUSR1
    handler in place (a signal sent earlier could meet the restorer)."""
    end = time.time() + seconds
    while time.time() < end:
        try:
            with open("/proc/%d/status" % pid) as f:
                status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
            caught = int(status["SigCgt"].strip(), 16)
            if (status["TracerPid"].strip() == "0" and caught & (1 << (signal.SIGUSR1 - 1)) and
                    status["State"].strip()[0] in "RSD"):
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    fail("pid %d was not restored and running within %d s" % (pid, seconds))


def check_restored(pid, base):
    wait_running(pid, 60)
    if os.path.exists(base + ".check"):
        os.unlink(base + ".check")
    os.kill(pid, signal.SIGUSR1)
    wait_for(base + ".check", 30, "the restored program's check")
    with open(base + ".check") as f:
        verdict = f.read().strip()
    if verdict != "OK":
        fail("restored program: " + verdict)


class Pty:
    """A command with stdout and stderr on a pseudo-terminal."""

    def __init__(self, argv, env):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                     env=env, start_new_session=True)
        os.close(slave)
        self.out = b""

    def read(self, seconds):
        """Reads what comes within `seconds`; False once the terminal closed."""
        end = time.time() + seconds
        while time.time() < end:
            r, _, _ = select.select([self.master], [], [], max(0, end - time.time()))
            if not r:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every writer is gone
                return False
            if not data:
                return False
            self.out += data
        return True

    def finish(self, seconds):
        while self.read(0.2):
            if time.time() > seconds:
                break
        rc = self.proc.wait(timeout=30)
        os.close(self.master)
        return rc


ERASE = b"\r\x1b[K"


def check_terminal_output(tool, out):
    line = re.compile(rb"\r(" + tool.encode() + rb": [0-9.]+ [MG]iB[^\r\x1b]*)\x1b\[K")
    drawn = line.findall(out)
    if not drawn:
        fail("%s on a terminal drew no progress line; it wrote %r" % (tool, out))
    if not out.endswith(ERASE):
        fail("%s left its progress line on the terminal: %r" % (tool, out[-200:]))
    rest = line.sub(b"", out).replace(ERASE, b"")
    if rest:
        fail("%s printed more than its progress line on a terminal: %r" % (tool, rest))
    print("%s: %d lines drawn, the last %r, then erased" % (tool, len(drawn), drawn[-1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIP: needs root (restores the program's own pid)")
        sys.exit(77)
    cli = os.path.join(args.bindir, "engine", "cli")
    ckpt, restart = os.path.join(cli, "cr_checkpoint"), os.path.join(cli, "cr_restart")
    work = os.path.join(args.workdir, "progress.work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ)
    env.setdefault("STASIS_PROGRESS_DELAY", "0")
    plain, tty = os.path.join(work, "plain.ctx"), os.path.join(work, "tty.ctx")

    prog, base = start_program(work)
    pid = prog.pid
    try:
        # Pipes: exactly the old output, nothing.
        r = subprocess.run([ckpt, "--no-daemon", "-f", plain, str(pid)], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if r.returncode != 0 or r.stdout or r.stderr:
            fail("cr_checkpoint on pipes: rc %d, stdout %r, stderr %r" %
                 (r.returncode, r.stdout, r.stderr))
        # A terminal: the line, then nothing left of it.
        t = Pty([ckpt, "--no-daemon", "--kill", "-f", tty, str(pid)], env)
        rc = t.finish(time.time() + 120)
        if rc != 0:
            fail("cr_checkpoint on a terminal: rc %d, output %r" % (rc, t.out))
        check_terminal_output("cr_checkpoint", t.out)
        prog.wait(timeout=30)

        # cr_restart on a terminal: it stays until the restored program ends.
        t = Pty([restart, "--no-daemon", tty], env)
        end = time.time() + 60
        while not t.out.endswith(ERASE) and t.read(0.1):
            if time.time() > end:
                fail("cr_restart on a terminal: no erased progress line in 60 s: %r" % t.out)
        check_restored(pid, base)
        os.kill(pid, signal.SIGKILL)
        rc = t.finish(time.time() + 30)
        if rc != 128 + signal.SIGKILL:
            fail("cr_restart on a terminal: rc %d (the program was killed), output %r" %
                 (rc, t.out))
        check_terminal_output("cr_restart", t.out)

        # cr_restart on pipes: nothing printed.
        p = subprocess.Popen([restart, "--no-daemon", plain], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        check_restored(pid, base)
        os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        if p.returncode != 128 + signal.SIGKILL or out or err:
            fail("cr_restart on pipes: rc %d, stdout %r, stderr %r" % (p.returncode, out, err))
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(work, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
