#!/usr/bin/env python3
"""Integration tests of stasisd (issue 5) against a real daemon.

    run_daemon.py --bindir BUILD CASE

Each case starts its own stasisd (as root) with a private socket, state
folder and configuration, and two unprivileged users created here
(stasis_ua, stasis_ub). Checkpointed programs are real python3 processes
that keep checking their own memory (a SHA-256 over 8 MiB of random data)
and publish a counter: a restarted program must continue counting, with its
pid, its uid, no capabilities, and its memory intact. Exit 0 pass, 1 fail,
77 skip.
"""
import argparse
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from test_users import USERS, ensure_users  # noqa: E402

ARGS = None
WORK = None
DAEMONS = []  # every stasisd started, stopped at the end whatever happens

WORKLOAD = r'''
import hashlib, os, sys, time
out = sys.argv[1]
mib = int(sys.argv[2]) if len(sys.argv) > 2 else 8
data = bytearray(os.urandom(1 << 20)) * mib
want = hashlib.sha256(data).hexdigest()
# One descriptor, rewritten in place: the file the context names is the
# one still there at restart (a temporary file renamed over it would not
# be, when the checkpoint fell between its open and its rename).
fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
i = 0
while True:
    i += 1
    state = "ok"
    if i % 5 == 0 and hashlib.sha256(data).hexdigest() != want:
        state = "CORRUPT"
    os.pwrite(fd, f"{os.getpid()} {i} {state} {i}\n".ljust(63).encode() + b"\n", 0)
    time.sleep(0.05)
'''


def fail(msg):
    print(f"FAIL: {msg}")
    log = os.path.join(WORK, "stasisd.log") if WORK else None
    if log and os.path.exists(log):
        print("--- stasisd log ---")
        print(open(log).read()[-6000:])
    sys.exit(1)


def skip(msg):
    print(f"SKIPPED: {msg}")
    sys.exit(77)


def tool(name):
    sub = "engine/daemon" if name == "stasisd" else "engine/cli"
    return os.path.join(ARGS.bindir, sub, name)


def as_user(user, cmd):
    if user is None:
        return cmd
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] + cmd


def env_for(sock):
    e = dict(os.environ)
    e["STASIS_SOCKET"] = sock
    return e


class Daemon:
    def __init__(self, name="d", extra_config="", max_concurrent=2, nofile=None):
        self.nofile = nofile
        self.dir = os.path.join(WORK, name)
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "sock")
        self.state = os.path.join(self.dir, "state")
        self.config = os.path.join(self.dir, "stasis.yaml")
        with open(self.config, "w") as f:
            f.write(f"socket: {self.sock}\nstate_dir: {self.state}\n"
                    f"allowed_roots: [{WORK}/ckpt]\nmax_concurrent: {max_concurrent}\n"
                    "log_level: debug\n"
                    + extra_config)
        self.log_path = os.path.join(WORK, "stasisd.log")
        self.proc = None
        DAEMONS.append(self)

    def start(self):
        log = open(self.log_path, "a")
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))) \
            if self.nofile else None
        self.proc = subprocess.Popen([tool("stasisd"), "-c", self.config], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=limit)
        for _ in range(200):
            if os.path.exists(self.sock):
                return self
            if self.proc.poll() is not None:
                fail(f"stasisd exited with {self.proc.returncode} at start")
            time.sleep(0.02)
        fail("stasisd did not create its socket")

    def log(self):
        return open(self.log_path).read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run(cmd, user=None, sock=None, expect_rc=0, timeout=120):
    p = subprocess.run(as_user(user, cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, start_new_session=True, cwd=WORK,
                       env=env_for(sock) if sock else None)
    out = p.stdout + p.stderr
    sys.stdout.write(out)
    if expect_rc is not None and p.returncode != expect_rc:
        fail(f"{' '.join(cmd)} (as {user or 'root'}) exited {p.returncode}, expected {expect_rc}")
    return p


class Workload:
    """A python3 program (as `user`) counting in <WORK>/ckpt/<name>.out."""

    def __init__(self, name, user=None, mib=8, prefix=None, script=WORKLOAD, extra=()):
        self.out = os.path.join(WORK, "ckpt", name + ".out")
        self.user = user
        cmd = ["/usr/bin/python3", "-c", script, self.out, str(mib), *extra]
        self.proc = subprocess.Popen(prefix + cmd if prefix else as_user(user, cmd),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        self.wait_count(1, timeout=30)

    def read(self):
        try:
            parts = open(self.out).read().split()
            if len(parts) > 3 and parts[1] != parts[3]:
                return None  # read while being rewritten
            return int(parts[0]), int(parts[1]), parts[2]
        except (OSError, ValueError, IndexError):
            return None

    def wait_count(self, at_least, timeout=20, pid=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.read()
            if r and r[1] >= at_least and (pid is None or r[0] == pid):
                if r[2] != "ok":
                    fail(f"{self.out}: the program found its memory corrupt: {r}")
                return r
            time.sleep(0.05)
        fail(f"{self.out}: counter did not reach {at_least} (last {self.read()})")

    def advancing(self, timeout=20):
        first = self.read()
        return self.wait_count(first[1] + 3, timeout=timeout, pid=first[0])

    def reap(self):
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fail(f"pid {self.pid} did not end")


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


def ckpt_dir():
    d = os.path.join(WORK, "ckpt")
    return d


def restart_in_background(user, sock, ctx, extra=()):
    return subprocess.Popen(as_user(user, [tool("cr_restart"), "-v", *extra, ctx]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_for(sock), start_new_session=True, cwd=WORK)


def checkpoint_and_restart(d, user, name):
    """One user's full cycle through the daemon; returns the restarted pid."""
    w = Workload(name, user)
    ctx = os.path.join(ckpt_dir(), name + ".ctx")
    before = w.wait_count(3)
    run([tool("cr_checkpoint"), "--kill", "-f", ctx, str(w.pid)], user=user, sock=d.sock)
    w.reap()
    st = os.stat(ctx)
    uid = pwd.getpwnam(user).pw_uid if user else 0
    if st.st_uid != uid or (st.st_mode & 0o777) != 0o600:
        fail(f"{ctx} is owned by {st.st_uid} mode {oct(st.st_mode)}, expected {uid} 0600")
    r = restart_in_background(user, d.sock, ctx)
    after = w.wait_count(before[1] + 5, timeout=30, pid=w.pid)
    s = proc_status(w.pid)
    if s["Uid"].split() != [str(uid)] * 4:
        fail(f"restored pid {w.pid} has uids {s['Uid']}, expected {uid}")
    if int(s["CapEff"], 16) or int(s["CapPrm"], 16):
        fail(f"restored pid {w.pid} kept capabilities: CapEff {s['CapEff']} CapPrm {s['CapPrm']}")
    if user and s["Uid"].split()[0] == "0":
        fail("restored a user's process as root")
    print(f"OK {user or 'root'}: pid {w.pid} restored by stasisd with its own pid, "
          f"counter {before[1]} -> {after[1]}, memory intact, no capabilities")
    os.kill(w.pid, signal.SIGKILL)
    out, _ = r.communicate(timeout=30)
    sys.stdout.write(out)
    if r.returncode != 128 + signal.SIGKILL:
        fail(f"cr_restart exited {r.returncode}, expected {128 + signal.SIGKILL} (root killed)")
    return w.pid


# --- cases -------------------------------------------------------------------

def case_tcp():
    """Issue 20: a user's program whose two processes talk over TCP (zdtm_tcp:
    IPv4 and IPv6 loopback, bytes queued both ways) checkpointed and
    restarted through stasisd, which may use TCP repair mode (the user's
    direct cr_checkpoint may not): the capture's own counts show queued
    bytes, and after the restart the program checks every byte and exits 0
    with no capabilities left."""
    import ctypes
    # The program's child is killed with it: we reap it (a subreaper), so
    # its pid is free again for the restart.
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    d = Daemon().start()
    user = USERS[0]
    pw = pwd.getpwnam(user)
    folder = os.path.join(WORK, "tcp")
    os.makedirs(folder, exist_ok=True)
    os.chown(folder, pw.pw_uid, pw.pw_gid)
    ready, check = os.path.join(folder, "ready"), os.path.join(folder, "check")
    env = dict(env_for(d.sock), ZDTM_READY=ready, ZDTM_CHECK=check)
    log = os.path.join(folder, "test.log")
    with open(log, "w"):
        pass
    os.chown(log, pw.pw_uid, pw.pw_gid)
    prog = os.path.join(ARGS.bindir, "test", "zdtm", "zdtm_tcp")
    with open(log, "a") as out:
        p = subprocess.Popen(as_user(user, [prog]), stdout=out, stderr=subprocess.STDOUT,
                             env=env, cwd=folder, start_new_session=True)
    for _ in range(1500):
        if os.path.exists(ready) or p.poll() is not None:
            break
        time.sleep(0.02)
    if not os.path.exists(ready):
        fail(f"zdtm_tcp did not get ready: {open(log).read()}")
    pid = int(open(ready).read().split()[1])
    ctx = os.path.join(ckpt_dir(), "tcp.ctx")
    run([tool("cr_checkpoint"), "--kill", "-f", ctx, str(pid)], user=user, sock=d.sock)
    p.wait(timeout=30)
    for _ in range(500):
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not os.path.exists(f"/proc/{pid}") and not os.path.exists(f"/proc/{pid + 1}"):
            break
        time.sleep(0.02)
    shown = subprocess.run([tool("stasis"), "show", ctx], stdout=subprocess.PIPE, text=True,
                           check=True).stdout
    rows = re.findall(r"tcp state 1 peer-here sendq (\d+) \(unsent \d+\) recvq (\d+)", shown)
    if len(rows) < 2 or any(int(a) == 0 or int(b) == 0 for a, b in rows):
        fail(f"the context's TCP connections (send, receive queue): {rows}")
    # The user's own restorer (no stasisd) may not use repair mode.
    p = subprocess.run(as_user(user, [tool("cr_restart"), "--no-daemon", "--no-restore-pid", ctx]),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60,
                       cwd=folder, env=env)
    lines = p.stderr.strip().splitlines()
    if p.returncode == 0 or len(lines) != 1 or "CAP_NET_ADMIN" not in lines[0]:
        fail(f"a user's cr_restart --no-daemon of TCP connections: exit {p.returncode}, "
             f"stderr {lines}")
    print(f"OK {user}: direct cr_restart refused: {lines[0]}")
    r = restart_in_background(user, d.sock, ctx)
    for _ in range(1500):
        if os.path.exists(f"/proc/{pid}") or r.poll() is not None:
            break
        time.sleep(0.02)
    if not os.path.exists(f"/proc/{pid}"):
        fail(f"the restart did not bring pid {pid} back: {r.communicate()[0]}")
    for _ in range(1500):  # released (it polls for the check file meanwhile)
        s = proc_status(pid)
        if s.get("TracerPid") == "0" and not int(s["CapEff"], 16) and not int(s["CapPrm"], 16):
            break
        time.sleep(0.02)
    if int(s["CapEff"], 16) or int(s["CapPrm"], 16):
        fail(f"restored pid {pid} kept capabilities: CapEff {s['CapEff']} CapPrm {s['CapPrm']}")
    with open(check, "w"):
        pass
    out, _ = r.communicate(timeout=90)
    text = open(log).read()
    if r.returncode != 0 or "PASS tcp" not in text.splitlines():
        fail(f"cr_restart exited {r.returncode}: {out.strip()} / {text.strip()}")
    print(f"OK {user}: TCP connections through stasisd, queues (send, receive) {rows}, "
          "every byte back, no capabilities")


def case_users():
    d = Daemon().start()
    for user in USERS:
        checkpoint_and_restart(d, user, "cycle_" + user)
    log = d.log()
    for user in USERS:
        uid = pwd.getpwnam(user).pw_uid
        if not re.search(rf"req \d+ uid {uid} \(pid \d+\): checkpoint tree \d+ -> .*: ok", log):
            fail(f"no log line for {user}'s checkpoint")
        if not re.search(rf"req \d+ uid {uid} \(pid \d+\): restart .*: ok", log):
            fail(f"no log line for {user}'s restart")
    run([tool("stasis"), "status"], user=USERS[0], sock=d.sock)
    d.stop()


def case_store():
    """A user's job folder in the checkpoint store, restarted through
    stasisd: the newest complete epoch, at the program's own pid, as the
    user; another user is refused; a damaged newest epoch falls back."""
    d = Daemon().start()
    a, b = USERS
    w = Workload("store_a", a)
    job = os.path.join(ckpt_dir(), "5150")
    before = w.wait_count(3)
    # Epoch 2 compressed by stasisd's worker (--compress travels in the request).
    for extra in ([], ["--kill", "--compress=zstd"]):
        run([tool("cr_checkpoint"), "--dir", job, *extra, str(w.pid)], user=a, sock=d.sock)
    w.reap()
    shown = run([tool("stasis"), "show", os.path.join(job, "2", "node0.ctx")], user=a).stdout
    if "compressed: zstd" not in shown:
        fail(f"stasis show of epoch 2 (--compress=zstd through stasisd) names no zstd: {shown[:600]!r}")
    # Epoch 3: a copy of epoch 2, whose MANIFEST names epoch 2: corrupt.
    shutil.copytree(os.path.join(job, "2"), os.path.join(job, "3"))
    for root_dir, dirs, files in os.walk(os.path.join(job, "3")):
        os.chown(root_dir, pwd.getpwnam(a).pw_uid, -1)
        for f in files:
            os.chown(os.path.join(root_dir, f), pwd.getpwnam(a).pw_uid, -1)
    p = run([tool("cr_restart"), job], user=b, sock=d.sock, expect_rc=None)
    expect_refused(p, r"Permission denied|belongs to uid", "B restarts A's job folder")
    if len(re.findall(r"checkpoint tree \d+ -> fd \(job 5150 epoch \d node 0, held\): ok", d.log())) != 2:
        fail(f"stasisd did not do both held checkpoints into the store: {d.log()}")
    r = restart_in_background(a, d.sock, job)
    after = w.wait_count(before[1] + 5, timeout=30, pid=w.pid)
    s = proc_status(w.pid)
    if s["Uid"].split() != [str(pwd.getpwnam(a).pw_uid)] * 4:
        fail(f"restored pid {w.pid} has uids {s['Uid']}")
    os.kill(w.pid, signal.SIGKILL)
    out, _ = r.communicate(timeout=30)
    sys.stdout.write(out)
    if "skipping epoch 3 (corrupt" not in out or not re.search(r"restarting from \S+/2/node0.ctx \(epoch 2", out):
        fail(f"cr_restart through stasisd did not say which epoch it chose and why: {out!r}")
    print(f"OK store: {a}'s job folder restored by stasisd at pid {w.pid}, counter {before[1]} -> {after[1]}")
    d.stop()


def case_store_incremental():
    """Incremental epochs through stasisd (cr_checkpoint --dir --incremental=3):
    a full epoch, two incremental ones, a full one again; retention with
    --keep 1 keeps the newest epoch's parent; the job folder restarts
    through stasisd from the chain, at the program's own pid, as the user."""
    d = Daemon().start()
    a = USERS[0]
    w = Workload("store_incr_a", a, mib=64)
    job = os.path.join(ckpt_dir(), "7170")
    notes = []
    for k in range(1, 6):
        w.advancing()
        p = run([tool("cr_checkpoint"), "-v", "--dir", job, "--keep", "1", "--incremental=3", str(w.pid)],
                user=a, sock=d.sock)
        m = re.search(r"epoch (\d+) complete: \S+ \(([^)]*\)?)\)", p.stderr)
        if not m or int(m.group(1)) != k:
            fail(f"epoch {k}: {p.stderr!r}")
        notes.append(m.group(2))
    want = ["full", "incremental against epoch 1", "incremental against epoch 2", "full", "incremental against epoch 4"]
    for k, (got, exp) in enumerate(zip(notes, want), 1):
        if not got.startswith(exp):
            fail(f"epoch {k}: {got!r}, expected {exp!r}")
    if len(re.findall(r"job 7170 epoch \d node 0, held\): ok", d.log())) != 5:
        fail(f"stasisd did not take the five held checkpoints: {d.log()}")
    listing = run([tool("stasis"), "ls", job], user=a).stdout
    kept = sorted(int(e) for e, st in re.findall(r"^\S+\s+(\d+)\s+(\w+)", listing, re.M) if st == "complete")
    if kept != [4, 5]:
        fail(f"--keep 1 should keep epoch 5 and its parent 4, not {kept}: {listing}")
    full = os.path.getsize(os.path.join(job, "4", "node0.ctx"))
    incr = os.path.getsize(os.path.join(job, "5", "node0.ctx"))
    print(f"epoch 4 (full) {full >> 20} MiB, epoch 5 (incremental) {incr >> 20} MiB")
    if incr > full // 2:
        fail(f"the incremental epoch 5 ({incr} bytes) is not much smaller than the full epoch 4 ({full})")
    last = w.read()[1]
    os.kill(w.pid, signal.SIGKILL)
    w.reap()
    r = restart_in_background(a, d.sock, job)
    w.wait_count(last + 3, timeout=60, pid=w.pid)
    os.kill(w.pid, signal.SIGKILL)
    out, _ = r.communicate(timeout=30)
    sys.stdout.write(out)
    if not re.search(r"restarting from \S+/5/node0.ctx", out):
        fail(f"the restart did not take epoch 5: {out!r}")
    print("OK store_incremental: epochs 1-5 full, +1, +2, full, +1; the chain 5 <- 4 restarted through stasisd")
    d.stop()


def case_store_faults():
    """Held checkpoints into the store through stasisd, with the client's
    MANIFEST work failing or the client killed at every step: the program
    resumes unharmed every time (stasisd holds it only until the commit),
    no epoch but the first is complete, and the first restarts."""
    d = Daemon().start()
    a = USERS[0]
    w = Workload("store_faults_a", a)
    job = os.path.join(ckpt_dir(), "6160")
    fault_tool = os.path.join(ARGS.bindir, "test", "store", "store_fault_tool")
    run([tool("cr_checkpoint"), "--dir", job, str(w.pid)], user=a, sock=d.sock)
    p = run([fault_tool, "--dir", job, "--socket", d.sock, "--count", str(w.pid)], user=a, sock=d.sock)
    total = int(re.search(r"ops (\d+)", p.stdout).group(1))
    newest = 2
    for label, args in (("ENOSPC", ["--fail-at", "{n}:28"]), ("SIGKILL", ["--kill-at", "{n}"])):
        for n in range(1, total + 1):
            before = w.wait_count(1)[1]
            p = run([fault_tool, "--dir", job, "--socket", d.sock, *[x.format(n=n) for x in args], str(w.pid)],
                    user=a, sock=d.sock, expect_rc=None)
            if p.returncode == 0:
                fail(f"{label} at op {n}: the checkpoint did not fail")
            w.wait_count(before + 2, timeout=20)  # it runs on
            listing = run([tool("stasis"), "ls", job], user=a).stdout
            states = re.findall(r"^\S+\s+(\d+)\s+(\w+)", listing, re.M)
            complete = [int(e) for e, st in states if st == "complete"]
            if "corrupt" in listing or newest not in complete or \
                    any(e > newest for e in complete) and label == "ENOSPC":
                fail(f"{label} at op {n}: epoch {newest} should be the newest complete: {listing}")
            # A kill after the MANIFEST rename leaves that epoch complete.
            newest = max(complete)
            run([tool("stasis"), "prune", "--keep", "1", job], user=a)
    # The newest complete epoch restarts at the program's own pid.
    last = w.read()[1]
    os.kill(w.pid, signal.SIGKILL)
    w.reap()
    r = restart_in_background(a, d.sock, job)
    w.wait_count(last + 2, timeout=60, pid=w.pid)
    os.kill(w.pid, signal.SIGKILL)
    out, _ = r.communicate(timeout=30)
    sys.stdout.write(out)
    print(f"OK store_faults: {2 * total} faults around stasisd's held checkpoints; the program ran on each time")
    d.stop()


def expect_refused(p, words, what):
    out = p.stdout + p.stderr
    if p.returncode == 0:
        fail(f"{what}: was allowed")
    if not re.search(words, out):
        fail(f"{what}: error does not say {words!r}: {out!r}")
    print(f"OK refused: {what}: {out.strip()}")


def case_refusals():
    d = Daemon().start()
    a, b = USERS
    uid_a, uid_b = (pwd.getpwnam(u).pw_uid for u in USERS)
    wb = Workload("b_owned", b)
    # A asks for B's process.
    p = run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), "stolen.ctx"), str(wb.pid)],
            user=a, sock=d.sock, expect_rc=None)
    expect_refused(p, rf"belongs to uid {uid_b}, not to uid {uid_a}", "A checkpoints B's process")
    if p.returncode != 1:  # EPERM
        fail(f"exit status {p.returncode}, expected 1 (EPERM)")
    wb.advancing()
    # B's context file, readable by A, restarted by A.
    ctx_b = os.path.join(ckpt_dir(), "b.ctx")
    run([tool("cr_checkpoint"), "-f", ctx_b, str(wb.pid)], user=b, sock=d.sock)
    os.chmod(ctx_b, 0o644)
    p = run([tool("cr_restart"), ctx_b], user=a, sock=d.sock, expect_rc=None)
    expect_refused(p, rf"belongs to uid {uid_b}, not to uid {uid_a}", "A restarts B's context")
    # A deletes B's context.
    p = run([tool("stasis"), "delete", ctx_b], user=a, sock=d.sock, expect_rc=None)
    expect_refused(p, rf"belongs to uid {uid_b}", "A deletes B's context")
    if not os.path.exists(ctx_b):
        fail("B's context was deleted")
    # A writes under a root that is not allowed, and into B's private folder.
    outside = tempfile.mkdtemp(prefix="stasis-outside-", dir="/var/tmp")
    os.chmod(outside, 0o777)
    try:
        wa = Workload("a_owned", a)
        p = run([tool("cr_checkpoint"), "-f", os.path.join(outside, "a.ctx"), str(wa.pid)],
                user=a, sock=d.sock, expect_rc=None)
        expect_refused(p, r"outside the allowed checkpoint roots", "A writes outside the roots")
        private_b = os.path.join(ckpt_dir(), "private_b")
        os.mkdir(private_b, 0o700)
        os.chown(private_b, uid_b, -1)
        p = run([tool("cr_checkpoint"), "-f", os.path.join(private_b, "a.ctx"), str(wa.pid)],
                user=a, sock=d.sock, expect_rc=None)
        expect_refused(p, r"Permission denied \(as uid %d\)" % uid_a, "A writes into B's folder")
        # A symlink to B's file is not followed.
        link = os.path.join(ckpt_dir(), "link.ctx")
        os.symlink(ctx_b, link)
        os.lchown(link, uid_a, uid_a)
        p = run([tool("cr_restart"), link], user=a, sock=d.sock, expect_rc=None)
        expect_refused(p, r"symbolic link", "A restarts through a symlink")
        wa.advancing()
    finally:
        shutil.rmtree(outside, ignore_errors=True)
    # Root is not limited.
    run([tool("cr_checkpoint"), "-f", os.path.join(WORK, "root_b.ctx"), str(wb.pid)],
        sock=d.sock)
    wb.advancing()
    log = d.log()
    refusals = re.findall(rf"refused .*uid {uid_a} \(pid \d+\).*(?:EPERM|belongs|outside|Permission)", log)
    if len(refusals) < 5:
        fail(f"expected at least 5 logged refusals of uid {uid_a}, found {len(refusals)}")
    print(f"OK {len(refusals)} refusals logged with who asked for what")
    d.stop()


def send_raw(sock_path, data, fds=()):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sock_path)
    if fds:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i" * len(fds), *fds))])
    else:
        s.send(data)
    s.settimeout(10)
    reply = s.recv(70000)
    s.close()
    return reply


def reply_code(reply):
    """The code field (tag 1, i32) of a reply packet."""
    magic, version, op, length = struct.unpack_from("<IHHI", reply)
    if magic != 0x51525453 or op != 64 or length != len(reply) - 12:
        fail(f"not a stasisd reply: {reply[:16]!r}")
    pos = 12
    code, message = 0, ""
    while pos < len(reply):
        tag, ln = struct.unpack_from("<II", reply, pos)
        val = reply[pos + 8:pos + 8 + ln]
        if tag == 1:
            code = struct.unpack("<i", val)[0]
        if tag == 3:
            message = val.decode(errors="replace")
        pos += 8 + ln
    return code, message


def header(op, payload, version=1, length=None):
    return struct.pack("<IHHI", 0x51525453, version, op,
                       len(payload) if length is None else length) + payload


def case_bad_requests():
    d = Daemon().start()
    import errno
    field = lambda tag, val: struct.pack("<II", tag, len(val)) + val
    good_ping = header(1, b"")
    cases = [
        ("garbage", b"hello stasisd, please", errno.EBADMSG),
        ("empty", b"", None),
        ("truncated header", good_ping[:7], errno.EBADMSG),
        ("truncated payload", header(2, field(1, struct.pack("<I", 5)), length=40), errno.EBADMSG),
        ("wrong version", header(1, b"", version=7), errno.EPROTO),
        ("unknown op", header(99, b""), errno.EBADMSG),
        ("field past the end", header(2, struct.pack("<II", 1, 1000) + b"abcd"), errno.EBADMSG),
        ("checkpoint without target", header(2, field(12, b"/tmp/x")), errno.EBADMSG),
        ("oversized", header(1, b"x" * 70000), errno.EMSGSIZE),
        ("fds not announced", header(1, b""), errno.EBADMSG),
    ]
    for name, data, want in cases:
        if name == "empty":
            # A zero-length packet reads as a hang-up: no reply, no harm.
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(d.sock)
            s.send(b"")
            s.close()
            continue
        fds = [os.open("/dev/null", os.O_RDONLY)] if name == "fds not announced" else []
        code, message = reply_code(send_raw(d.sock, data, fds))
        for fd in fds:
            os.close(fd)
        if code != want:
            fail(f"{name}: reply code {code} ({message}), expected {want}")
        print(f"OK {name}: error {code}: {message}")
        code, _ = reply_code(send_raw(d.sock, good_ping))
        if code != 0 or d.proc.poll() is not None:
            fail(f"stasisd stopped serving after '{name}'")
    print("OK stasisd kept serving after every bad request")
    d.stop()


def case_concurrent():
    n = 20
    d = Daemon(max_concurrent=4).start()
    ws = [Workload(f"conc{i}", USERS[i % 2], mib=4) for i in range(n)]
    ctxs = [os.path.join(ckpt_dir(), f"conc{i}.ctx") for i in range(n)]
    t0 = time.time()
    procs = [subprocess.Popen(as_user(w.user, [tool("cr_checkpoint"), "--kill", "-f", c, str(w.pid)]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env_for(d.sock), start_new_session=True)
             for w, c in zip(ws, ctxs)]
    for p, w in zip(procs, ws):
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            fail(f"concurrent checkpoint of {w.pid} failed: {out}")
    took = time.time() - t0
    for w in ws:
        w.reap()
    print(f"OK {n} concurrent checkpoints complete in {took:.1f} s")
    log = d.log()
    queued = len(re.findall(r": checkpoint tree \d+ -> .*: queued", log))
    if queued == 0:
        fail("no request was queued although 20 came at once with max_concurrent 4")
    befores = [w.read()[1] for w in ws]
    restarts = [restart_in_background(w.user, d.sock, c) for w, c in zip(ws, ctxs)]
    for w, b in zip(ws, befores):
        w.wait_count(b + 3, timeout=120, pid=w.pid)
    print(f"OK all {n} restarted through stasisd and continue ({queued} requests had queued)")
    for w in ws:
        os.kill(w.pid, signal.SIGKILL)
    for r in restarts:
        r.communicate(timeout=60)
    d.stop()


def verify(ctx):
    p = subprocess.run([tool("stasis"), "verify", ctx], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return p.returncode == 0, p.stdout.strip()


def slow_checkpoint(d, w, ctx, user=None):
    """A checkpoint slowed by the bandwidth cap; returns the client."""
    return subprocess.Popen(as_user(user, [tool("cr_checkpoint"), "-f", ctx, str(w.pid)]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_for(d.sock), start_new_session=True)


def ours(pid):
    """A process of this run: its command line names a file in WORK (our
    stasisd and its workers: -c WORK/...) or it works in WORK (the users'
    programs, restored ones too). Other runs on the machine (a cluster
    test's stasisd and jobs, another CI run) are left alone."""
    try:
        if os.readlink(f"/proc/{pid}/cwd").startswith(WORK):
            return True
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return WORK.encode() in f.read()
    except OSError:
        return False


def worker_pids():
    out = subprocess.run(["pgrep", "-x", "stasisd-worker"], stdout=subprocess.PIPE, text=True).stdout
    return [int(x) for x in out.split() if ours(int(x))]


def case_kill_daemon():
    # 64 MiB at 16 MiB/s: the checkpoint takes about 4 s.
    d = Daemon(extra_config="bandwidth_limit: 16M\n").start()
    w = Workload("victim", USERS[0], mib=64)
    ctx = os.path.join(ckpt_dir(), "victim.ctx")
    run([tool("cr_checkpoint"), "--no-daemon", "-f", ctx, str(w.pid)], user=USERS[0])
    ok, msg = verify(ctx)
    if not ok:
        fail(f"first context unreadable: {msg}")
    # 1. stasisd killed mid-checkpoint: the worker finishes, the target runs.
    c = slow_checkpoint(d, w, ctx, USERS[0])
    time.sleep(1.0)
    if not worker_pids():
        fail("no worker running 1 s into a 4 s checkpoint")
    d.proc.kill()
    d.proc.wait()
    ok, msg = verify(ctx)
    if not ok:
        fail(f"earlier context damaged after kill -9 stasisd: {msg}")
    out, _ = c.communicate(timeout=60)
    if c.returncode != 0:
        fail(f"checkpoint whose stasisd was killed did not complete: {out}")
    w.advancing()
    ok, msg = verify(ctx)
    if not ok:
        fail(f"context unreadable after the orphaned worker finished: {msg}")
    print("OK kill -9 stasisd mid-checkpoint: worker finished, target running, context intact")
    # 2. stasisd and its worker killed mid-checkpoint: target not left
    # stopped, earlier context intact, partial file cleaned up by the next
    # stasisd.
    d.start()
    c = slow_checkpoint(d, w, ctx, USERS[0])
    time.sleep(1.0)
    workers = worker_pids()
    if not workers:
        fail("no worker running 1 s into a 4 s checkpoint")
    d.proc.kill()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    d.proc.wait()
    c.communicate(timeout=30)
    temps = [f for f in os.listdir(ckpt_dir()) if f.startswith(".victim.ctx.tmp.")]
    if not temps:
        fail("expected the killed worker's partial file (test premise)")
    ok, msg = verify(ctx)
    if not ok:
        fail(f"earlier context damaged after kill -9 of stasisd and worker: {msg}")
    time.sleep(0.3)
    state = open(f"/proc/{w.pid}/stat").read().rsplit(")", 1)[1].split()[0]
    if state in ("t", "T"):
        fail(f"target left stopped ({state}) after its checkpointer was killed")
    w.advancing()
    d.start()
    time.sleep(0.5)
    left = [f for f in os.listdir(ckpt_dir()) if f.startswith(".victim.ctx.tmp.")]
    if left:
        fail(f"restarted stasisd left the partial file {left}")
    if "the partial context of request" not in d.log():
        fail("restarted stasisd did not log the clean-up")
    print("OK kill -9 of stasisd and worker: target running, earlier context intact, "
          "partial file removed by the next stasisd")
    # The earlier context still restarts.
    os.kill(w.pid, signal.SIGKILL)
    w.reap()
    before = w.read()[1]
    r = restart_in_background(USERS[0], d.sock, ctx)
    w.wait_count(before + 3, timeout=60, pid=w.pid)
    print("OK the context restarts after all that")
    os.kill(w.pid, signal.SIGKILL)
    r.communicate(timeout=30)
    d.stop()


def case_client_gone():
    d = Daemon(extra_config="bandwidth_limit: 16M\n").start()
    w = Workload("abandoned", USERS[1], mib=64)
    ctx = os.path.join(ckpt_dir(), "abandoned.ctx")
    c = slow_checkpoint(d, w, ctx, USERS[1])
    time.sleep(1.0)
    # A second request for the same tree while the first runs: EBUSY.
    p = run([tool("cr_checkpoint"), "-f", ctx + "2", str(w.pid)], user=USERS[1], sock=d.sock,
            expect_rc=None)
    expect_refused(p, r"already in progress", "second checkpoint of the same tree")
    if p.returncode != 16:
        fail(f"EBUSY exit status {p.returncode}, expected 16")
    os.killpg(c.pid, signal.SIGKILL)
    c.wait()
    deadline = time.time() + 20
    while time.time() < deadline and worker_pids():
        time.sleep(0.1)
    if worker_pids():
        fail("the worker kept running after its client went away")
    w.advancing()
    if os.path.exists(ctx) or [f for f in os.listdir(ckpt_dir()) if f.startswith(".abandoned")]:
        fail("a cancelled checkpoint left a file")
    if not re.search(r"client went away; cancelling", d.log()) or \
            not re.search(r"ECANCELED", d.log()):
        fail("cancel not logged")
    print("OK client gone mid-checkpoint: cancelled, processes running, no file left")
    d.stop()


def case_config():
    bad = os.path.join(WORK, "bad.yaml")
    checks = [
        ("socket: /tmp/s\nmax_concurent: 3\n", r"bad.yaml:2: key 'max_concurent': unknown key"),
        ("retention: 2\nretention: 3\n", r"bad.yaml:2: key 'retention': appears twice"),
        ("max_concurrent: lots\n", r"bad.yaml:1: key 'max_concurrent': 'lots' is not a whole number"),
        ("bandwidth_limit: fast\n", r"bad.yaml:1: key 'bandwidth_limit': 'fast' is not a byte rate"),
        ("capture_backend: fast\n", r"bad.yaml:1: key 'capture_backend': 'fast' is not auto, kernel or user"),
        ("log: [stderr]\n", r"bad.yaml:1: key 'log'"),
        ("allowed_roots: [relative/dir]\n", r"bad.yaml:1: key 'allowed_roots': 'relative/dir' is not an absolute path"),
        ("socket: [\n", r"bad.yaml:\d+: "),
        ("hold_timeout: 0\n", r"bad.yaml:1: key 'hold_timeout': 0 is out of range \(1..86400\)"),
        ("limit_root: maybe\n", r"bad.yaml:1: key 'limit_root': 'maybe' is not true or false"),
        ("idle_timeout: -5\n", r"bad.yaml:1: key 'idle_timeout': '-5' is not a whole number"),
        ("max_connections_per_user: 0\n", r"bad.yaml:1: key 'max_connections_per_user': 0 is out of range"),
    ]
    for text, want in checks:
        open(bad, "w").write(text)
        for cmd in ([tool("stasisd"), "--check-config", "-c", bad], [tool("stasisd"), "-c", bad]):
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=10)
            if p.returncode == 0 or not re.search(want, p.stdout):
                fail(f"{' '.join(cmd)} on {text!r}: rc {p.returncode}, said {p.stdout!r}, wanted {want!r}")
        print(f"OK refused: {p.stdout.strip()}")
    good = Daemon("cfg").config
    p = subprocess.run([tool("stasisd"), "--check-config", "-c", good], stdout=subprocess.PIPE,
                       text=True)
    if p.returncode != 0 or "ok" not in p.stdout:
        fail(f"a good configuration was refused: {p.stdout}")
    print("OK a good configuration passes --check-config")


def case_attack_state_dir():
    """Issue 23: a user who creates stasisd's state folder (or its socket
    folder) before stasisd starts would own the records a later stasisd
    acts on as root. stasisd refuses to start on a folder that is not
    root's alone, naming it, and starts on a root folder in sticky /tmp."""
    a = USERS[0]
    uid = pwd.getpwnam(a).pw_uid
    for what, key in (("state_dir", "state"), ("socket folder", "sockdir")):
        base = os.path.join(WORK, "planted_" + key)
        os.makedirs(base)
        os.chmod(base, 0o1777)  # like /tmp: anyone may create entries
        planted = os.path.join(base, "stasis")
        subprocess.run(as_user(a, ["mkdir", "-m", "0777", planted]), check=True)
        d = Daemon("planted_" + key)
        with open(d.config, "w") as f:
            sock = os.path.join(planted, "sock") if key == "sockdir" else d.sock
            state = os.path.join(planted, "state") if key == "state" else d.state
            f.write(f"socket: {sock}\nstate_dir: {state}\nallowed_roots: [{WORK}/ckpt]\n")
        try:
            p = subprocess.run([tool("stasisd"), "-c", d.config], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=20)
        except subprocess.TimeoutExpired as e:
            fail(f"stasisd started and served on a {what} owned by {a}: {e.output!r}")
        if p.returncode == 0 or not re.search(rf"{what} .*belongs to uid {uid}, not to root", p.stdout):
            fail(f"stasisd started on a {what} owned by {a}: rc {p.returncode}: {p.stdout!r}")
        if os.path.exists(os.path.join(planted, "sock")):
            fail(f"stasisd made its socket in {a}'s folder")
        print(f"OK refused a {what} of {a}'s: {p.stdout.strip()}")
    # A root-owned folder inside a sticky, world-writable one is fine.
    sticky = os.path.join(WORK, "sticky")
    os.makedirs(sticky)
    os.chmod(sticky, 0o1777)
    d = Daemon("sticky")
    with open(d.config, "w") as f:
        f.write(f"socket: {sticky}/sock\nstate_dir: {sticky}/state\nallowed_roots: [{WORK}/ckpt]\n")
    d.sock = os.path.join(sticky, "sock")
    d.start()
    st = os.stat(os.path.join(sticky, "state"))
    if st.st_uid != 0 or (st.st_mode & 0o777) != 0o700:
        fail(f"state folder is {oct(st.st_mode)} uid {st.st_uid}, expected root's 0700")
    run([tool("stasis"), "status"], user=a, sock=d.sock)
    d.stop()
    print("OK stasisd starts on root folders inside a sticky /tmp-like folder")


def case_libcr():
    """BLCR's API through stasisd: libcr's cr_request_checkpoint runs
    cr_checkpoint, which hands the request to the daemon; cr_restart too."""
    d = Daemon().start()
    harness = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "libcr", "run_libcr.py")
    # Not restart_checkpointable: through stasisd the restored job is a child
    # of the daemon's worker, not of cr_restart, so a --tree checkpoint of
    # the script that ran cr_restart does not reach it (docs/design.md).
    for case in ("order", "request", "forward", "external_failure", "temp_failure"):
        p = subprocess.run([sys.executable, harness, "--bindir", ARGS.bindir, case],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env_for(d.sock), timeout=240)
        if p.returncode != 0:
            print(p.stdout[-4000:])
            fail(f"libcr case {case} through stasisd failed")
        print(f"OK libcr {case} through stasisd")
    log = d.log()
    ckpts = len(re.findall(r"req \d+ uid 0 \(pid \d+\): checkpoint .*: ok", log))
    restarts = len(re.findall(r"req \d+ uid 0 \(pid \d+\): restart .*: ok", log))
    failures = len(re.findall(r"req \d+ uid 0 \(pid \d+\): checkpoint .*: errno", log))
    if ckpts < 5 or restarts < 2 or failures < 1:
        fail(f"stasisd did not do the work: {ckpts} checkpoints, {restarts} restarts, "
             f"{failures} callback failures logged")
    print(f"OK stasisd did {ckpts} checkpoints and {restarts} restarts for libcr "
          f"({failures} refused by a callback, as the case wants)")
    d.stop()


# --- attacks of an unprivileged user (issue 23) ------------------------------

def root_secret(name="rootdir", file="secret"):
    """A 0600 file of root's in a 0700 folder of root's."""
    d = os.path.join(WORK, name)
    os.mkdir(d, 0o700)
    f = os.path.join(d, file)
    with open(f, "w") as out:
        out.write("root's own\n")
    os.chmod(f, 0o600)
    return f


def as_user_python(user, code, *args, stdin=None):
    return subprocess.Popen(as_user(user, [sys.executable, "-c", code, *args]), stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=WORK)


def run_as(user, code, *args):
    p = as_user_python(user, code, *args)
    out, _ = p.communicate(timeout=60)
    if p.returncode != 0:
        fail(f"helper as {user} failed: {out}")
    return out


def kill_daemon_and_worker(d, client):
    """kill -9 of stasisd and of its worker while it writes; the client ends."""
    deadline = time.time() + 10
    while time.time() < deadline and not worker_pids():
        time.sleep(0.05)
    time.sleep(1.0)
    workers = worker_pids()
    if not workers:
        fail("no worker running 1 s into a slow checkpoint (test premise)")
    d.proc.kill()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    d.proc.wait()
    client.communicate(timeout=30)


def case_attack_state_forge():
    """A's checkpoint path holds newlines that, written verbatim into the
    state record, forge temp=<root's file>; stasisd and the worker are
    killed mid-write; the next stasisd must remove nothing of root's, and
    still remove A's own partial file."""
    a = USERS[0]
    secret = root_secret()
    d = Daemon(extra_config="bandwidth_limit: 16M\n").start()
    w = Workload("forge", a, mib=64)
    # In clobber mode the partial file is the destination: the record's
    # path= and temp= lines both end in "\ntemp=<secret>".
    evil_dir = os.path.join(ckpt_dir(), "q\ntemp=" + os.path.dirname(secret))
    run_as(a, "import os, sys; os.makedirs(sys.argv[1])", evil_dir)
    ctx = os.path.join(evil_dir, os.path.basename(secret))
    c = subprocess.Popen(as_user(a, [tool("cr_checkpoint"), "--clobber", "-f", ctx, str(w.pid)]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env_for(d.sock), start_new_session=True)
    kill_daemon_and_worker(d, c)
    if not os.path.exists(ctx):
        fail("expected A's partial file after killing the worker (test premise)")
    for name in os.listdir(d.state):
        print(f"state record {name}: {open(os.path.join(d.state, name), 'rb').read()!r}")
    d.start()
    time.sleep(1.0)
    if not os.path.exists(secret):
        fail(f"the next stasisd removed root's {secret} (forged through A's path)")
    if os.path.exists(ctx):
        fail(f"the next stasisd left A's partial file {ctx!r}")
    if "the partial context of request" not in d.log():
        fail("the clean-up of A's partial file was not logged")
    w.advancing()
    print("OK forged state record: root's file kept, A's own partial file removed")
    # The worker alone killed (a crash) while stasisd runs on: stasisd
    # removes the partial file the same way when it reaps the worker.
    c = subprocess.Popen(as_user(a, [tool("cr_checkpoint"), "--clobber", "-f", ctx, str(w.pid)]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env_for(d.sock), start_new_session=True)
    deadline = time.time() + 10
    while time.time() < deadline and not worker_pids():
        time.sleep(0.05)
    time.sleep(1.0)
    for pid in worker_pids():
        os.kill(pid, signal.SIGKILL)
    c.communicate(timeout=30)
    time.sleep(1.0)
    if not os.path.exists(secret):
        fail(f"stasisd removed root's {secret} after its worker was killed")
    if os.path.exists(ctx):
        fail(f"stasisd left A's partial file {ctx!r} of its killed worker")
    w.advancing()
    print("OK worker killed alone: root's file kept, A's partial file removed by the running stasisd")
    d.stop()


def case_attack_state_symlink():
    """A clobber checkpoint through a symlinked folder of A's; stasisd and
    the worker are killed; A repoints the symlink at root's folder. The
    next stasisd must not remove root's file of that name, and still remove
    A's partial file where it really is."""
    a = USERS[0]
    secret = root_secret(file="f.ctx")
    d = Daemon(extra_config="bandwidth_limit: 16M\n").start()
    w = Workload("symlink", a, mib=64)
    real = os.path.join(ckpt_dir(), "adir")
    link = os.path.join(ckpt_dir(), "link")
    run_as(a, "import os, sys; os.mkdir(sys.argv[1]); os.symlink(sys.argv[1], sys.argv[2])", real, link)
    c = subprocess.Popen(as_user(a, [tool("cr_checkpoint"), "--clobber", "-f",
                                     os.path.join(link, "f.ctx"), str(w.pid)]),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env_for(d.sock), start_new_session=True)
    kill_daemon_and_worker(d, c)
    partial = os.path.join(real, "f.ctx")
    if not os.path.exists(partial):
        fail("expected A's partial file after killing the worker (test premise)")
    run_as(a, "import os, sys; os.unlink(sys.argv[2]); os.symlink(sys.argv[1], sys.argv[2])",
           os.path.dirname(secret), link)
    d.start()
    time.sleep(1.0)
    if not os.path.exists(secret):
        fail(f"the next stasisd followed A's repointed symlink and removed root's {secret}")
    if os.path.exists(partial):
        fail(f"the next stasisd left A's partial file {partial}")
    w.advancing()
    print("OK repointed symlink: root's file kept, A's own partial file removed")
    d.stop()


def case_attack_log_forge():
    """A path with a newline and terminal escapes must not make a log line."""
    a = USERS[0]
    d = Daemon().start()
    w = Workload("logforge", a, mib=1)
    forged = "stasisd[1]: info: req 99 uid 0 (pid 1): restart root.ctx: ok"
    ctx = os.path.join(ckpt_dir(), "x.ctx\n" + forged + "\x1b[2K\r")
    run([tool("cr_checkpoint"), "-f", ctx, str(w.pid)], user=a, sock=d.sock, expect_rc=None)
    run([tool("stasis"), "delete", ctx], user=a, sock=d.sock, expect_rc=None)
    d.stop()
    log = d.log()
    for line in log.splitlines():
        if line.startswith("stasisd[1]:") or line.startswith(forged):
            fail(f"forged log line: {line!r}")
    if "\x1b" in log or "\r" in log:
        fail("a terminal escape or carriage return reached the log")
    if "x.ctx\\x0a" + forged not in log:
        fail("the path is not in the log, escaped")
    print("OK no forged log line; the path is logged escaped on one line")


FLOOD = r"""
import socket, struct, sys
sock, count, op, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
def field(tag, val): return struct.pack("<II", tag, len(val)) + val
payload = field(12, path) if op else b""
packet = struct.pack("<IHHI", 0x51525453, 1, op or 1, len(payload)) + payload
held, codes = [], {}
for i in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.settimeout(5)
        s.connect(sock)
        held.append(s)
        if not op:
            continue
        s.send(packet)
        r = s.recv(70000)
        pos, code, kind = 12, 0, 0
        while pos < len(r):
            tag, ln = struct.unpack_from("<II", r, pos)
            if tag == 1: code = struct.unpack_from("<i", r, pos + 8)[0]
            if tag == 2: kind = struct.unpack_from("<I", r, pos + 8)[0]
            pos += 8 + ln
        key = "queued" if kind == 1 else str(code)
    except OSError as e:
        key = "oserror"
    codes[key] = codes.get(key, 0) + 1
print(" ".join(f"{k}={v}" for k, v in sorted(codes.items())), flush=True)
sys.stdin.read()
"""


def flood(user, sock, count, op=0, path="/nonexistent"):
    """`count` connections of `user`'s, each with a restart request (op 3)
    or none (op 0); returns (helper, its summary line)."""
    p = as_user_python(user, FLOOD, sock, str(count), str(op), path, stdin=subprocess.PIPE)
    line = p.stdout.readline().strip()
    print(f"{user}'s flood of {count}: {line}")
    return p, dict(kv.split("=") for kv in line.split())


def ping_within(sock, user, seconds):
    """A ping as `user`, answered within `seconds`?"""
    # A full backlog fails a connect with a timeout at once (EAGAIN): retry
    # it, as a blocking client would wait.
    code = ("import socket, struct, sys, time\n"
            "end = time.time() + float(sys.argv[2])\n"
            "while True:\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.settimeout(float(sys.argv[2]))\n"
            "    try:\n"
            "        s.connect(sys.argv[1]); break\n"
            "    except BlockingIOError:\n"
            "        s.close()\n"
            "        if time.time() > end: raise\n"
            "        time.sleep(0.05)\n"
            "s.settimeout(max(end - time.time(), 0.1))\n"
            "t0 = time.time(); s.send(struct.pack('<IHHI', 0x51525453, 1, 1, 0)); r = s.recv(70000)\n"
            "print(('answered in %.3f s' % (time.time() - t0)) if r else 'closed')\n")
    p = as_user_python(user, code, sock, str(seconds))
    try:
        out, _ = p.communicate(timeout=seconds + 10)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return "answered" in out, out.strip()


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def end(*procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()


def raw_checkpoint(sock, user, target, path, callback_ms, limit_ms):
    code = r"""
import socket, struct, sys
def field(tag, val): return struct.pack("<II", tag, len(val)) + val
sock, target, path, cb, tl = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4]), int(sys.argv[5])
payload = (field(1, struct.pack("<I", target)) + field(10, struct.pack("<Q", tl)) +
           field(11, struct.pack("<Q", cb)) + field(12, path))
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.settimeout(60); s.connect(sock)
s.send(struct.pack("<IHHI", 0x51525453, 1, 2, len(payload)) + payload)
while True:
    r = s.recv(70000); pos, code, kind, msg = 12, 0, 0, ""
    while pos < len(r):
        tag, ln = struct.unpack_from("<II", r, pos)
        if tag == 1: code = struct.unpack_from("<i", r, pos + 8)[0]
        if tag == 2: kind = struct.unpack_from("<I", r, pos + 8)[0]
        if tag == 3: msg = r[pos + 8:pos + 8 + ln].decode(errors="replace")
        pos += 8 + ln
    if kind != 1: break
print(code, msg)
"""
    return run_as(user, code, sock, str(target), path, str(callback_ms), str(limit_ms)).strip()


def held_checkpoint(sock, user, target, node_file):
    """A held checkpoint (flag 128) whose client never commits: the final
    reply's code and message, and the kinds seen before it."""
    code = r"""
import os, socket, struct, sys, time
def field(tag, val): return struct.pack("<II", tag, len(val)) + val
sock, target, node = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(node, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
payload = (field(1, struct.pack("<I", target)) + field(4, struct.pack("<I", 128)) +
           field(8, struct.pack("<I", 1)) + field(16, b"4242") + field(17, struct.pack("<Q", 1)))
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.settimeout(60); s.connect(sock)
s.sendmsg([struct.pack("<IHHI", 0x51525453, 1, 2, len(payload)) + payload],
          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
kinds, t0 = [], time.time()
while True:
    r = s.recv(70000); pos, code, kind, msg = 12, 0, 0, ""
    while pos < len(r):
        tag, ln = struct.unpack_from("<II", r, pos)
        if tag == 1: code = struct.unpack_from("<i", r, pos + 8)[0]
        if tag == 2: kind = struct.unpack_from("<I", r, pos + 8)[0]
        if tag == 3: msg = r[pos + 8:pos + 8 + ln].decode(errors="replace")
        pos += 8 + ln
    kinds.append(kind)
    if kind in (0, 3): break
print(code, round(time.time() - t0, 1), kinds, msg)
"""
    return run_as(user, code, sock, str(target), node_file).strip()


def case_attack_dos():
    """Denial of service by A: B is served through each. STASIS_DOS_PHASES
    (e.g. "2,3") runs only some phases (phase 4 needs the new keys)."""
    import errno
    a, b = USERS
    phases = os.environ.get("STASIS_DOS_PHASES", "1,2,3,4,5").split(",")
    wa = [Workload(f"dos_a{i}", a, mib=64) for i in range(2)]
    if "1" in phases:
        dos_queue(a, b, wa)
    if "2" in phases:
        dos_group(a, b, wa)
    if "3" in phases:
        dos_connections(a, b)
    if "4" in phases:
        dos_timeouts(a, wa)
    if "5" in phases:
        dos_list(a, b)


def dos_list(a, b):
    """A lists a folder of 80000 entries: stasisd keeps answering B's pings
    meanwhile (the listing runs in a worker), and A still gets its file."""
    d = Daemon("l").start()
    big = os.path.join(ckpt_dir(), "big")
    run_as(a, "import os, sys\nos.mkdir(sys.argv[1])\n"
              "for i in range(int(sys.argv[2])): open(os.path.join(sys.argv[1], '%06d' % i), 'w').close()",
           big, "80000")
    w = Workload("dos_list", a, mib=1)
    run([tool("cr_checkpoint"), "-f", os.path.join(big, "real.ctx"), str(w.pid)], user=a, sock=d.sock)
    pinger = as_user_python(b, r"""
import socket, struct, sys, time
worst, n, end = 0.0, 0, time.time() + float(sys.argv[2])
while time.time() < end:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.settimeout(10); s.connect(sys.argv[1])
    t0 = time.time(); s.send(struct.pack('<IHHI', 0x51525453, 1, 1, 0)); s.recv(70000)
    worst, n = max(worst, time.time() - t0), n + 1
    s.close(); time.sleep(0.01)
print(f"{n} pings, slowest {worst:.3f} s")
""", d.sock, "3")
    time.sleep(0.3)
    lister = subprocess.Popen(as_user(a, [tool("stasis"), "list", big]), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env_for(d.sock),
                              start_new_session=True)
    listed, _ = lister.communicate(timeout=120)
    pinged, _ = pinger.communicate(timeout=60)
    print(f"B during A's listing: {pinged.strip()}; A's listing: {listed.strip()[-160:]!r}")
    if lister.returncode != 0 or "real.ctx" not in listed:
        fail(f"A's listing failed: {listed}")
    m = re.search(r"slowest ([\d.]+) s", pinged)
    if not m or float(m.group(1)) > 0.15:
        fail(f"B waited for A's listing of a huge folder: {pinged.strip()}")
    print(f"OK B answered within {m.group(1)} s throughout A's listing of 80000 entries")
    d.stop()


def dos_queue(a, b, wa):
    """A fills the queue (default limits): B is still served."""
    import errno
    d = Daemon("q", extra_config="bandwidth_limit: 16M\n").start()
    slow = [slow_checkpoint(d, w, os.path.join(ckpt_dir(), f"dos_a{i}.ctx"), a) for i, w in enumerate(wa)]
    time.sleep(0.5)
    helper, codes = flood(a, d.sock, 300, op=3, path=os.path.join(ckpt_dir(), "none.ctx"))
    wb = Workload("dos_b", b, mib=1)
    p = run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), "dos_b.ctx"), str(wb.pid)],
            user=b, sock=d.sock, expect_rc=None, timeout=60)
    if p.returncode != 0:
        fail(f"B's checkpoint failed while A flooded stasisd's queue: {(p.stdout + p.stderr).strip()}")
    refused = int(codes.get(str(errno.EAGAIN), 0)) + int(codes.get("oserror", 0))
    if refused < 250 or int(codes.get("queued", 0)) > 16:
        fail(f"A's requests beyond the per-user caps were not refused with EAGAIN: {codes}")
    print(f"OK B served while A flooded the queue; A: {codes}")
    end(helper, *slow)
    d.stop()


def dos_group(a, b, wa):
    """A's request naming B's process group or session: refused, and B's
    own checkpoint is not EBUSY."""
    d = Daemon("g", extra_config="bandwidth_limit: 16M\n", max_concurrent=1).start()
    wb = Workload("dos_b2", b, mib=1)
    busy = slow_checkpoint(d, wa[0], os.path.join(ckpt_dir(), "dos_a0.ctx"), a)
    time.sleep(0.5)
    grabs = [subprocess.Popen(as_user(a, [tool("cr_checkpoint"), scope, "-f",
                                          os.path.join(ckpt_dir(), f"steal{scope}.ctx"), str(wb.pid)]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env_for(d.sock), start_new_session=True)
             for scope in ("--pgid", "--sid")]
    time.sleep(0.5)
    p = run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), "dos_b2.ctx"), str(wb.pid)],
            user=b, sock=d.sock, expect_rc=None, timeout=60)
    if p.returncode != 0:
        fail(f"B's own checkpoint failed after A named B's process group/session: "
             f"{(p.stdout + p.stderr).strip()}")
    for g in grabs:
        try:
            out, _ = g.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            fail("A's request for B's process group was not refused")
        if g.returncode == 0 or "holds pid" not in out:
            fail(f"A's request for B's process group/session was not refused as B's: {out!r}")
        print(f"OK refused: {out.strip()}")
    end(busy)
    wb.advancing()
    print("OK B's checkpoint not EBUSY through A's request for B's group or session")
    d.stop()


def dos_connections(a, b):
    """Idle connections beyond stasisd's descriptors (nofile 64): B is still
    served (A's beyond max_connections_per_user are refused)."""
    d = Daemon("c", nofile=64).start()
    helper, codes = flood(a, d.sock, 200)
    t0, cpu0 = time.time(), cpu_seconds(d.proc.pid)
    ok, out = ping_within(d.sock, b, 5)
    if not ok:
        fail(f"B was not served with A's 200 idle connections open: {out}")
    print(f"OK B served within {time.time() - t0:.1f} s with A's 200 connections open")
    end(helper)
    d.stop()
    # The same with no per-user cap to help: EMFILE does not make stasisd
    # spin, and the idle timeout frees the descriptors.
    d = Daemon("e", nofile=64, extra_config="max_connections_per_user: 1000\nidle_timeout: 3\n").start()
    helper, codes = flood(a, d.sock, 200)
    time.sleep(0.5)
    cpu0 = cpu_seconds(d.proc.pid)
    time.sleep(2)
    spent = cpu_seconds(d.proc.pid) - cpu0
    if spent > 0.5:
        fail(f"stasisd spent {spent:.2f} s of CPU in 2 s out of descriptors: it spins")
    ok, out = ping_within(d.sock, b, 15)
    if not ok:
        fail(f"B was not served after the idle timeout: {out}")
    if d.log().count("not accepting until one closes") < 1:
        fail("EMFILE not logged")
    print(f"EMFILE logged {d.log().count('not accepting until one closes')} times")
    print(f"OK out of descriptors: {spent:.2f} s CPU in 2 s, B served once idle connections closed")
    end(helper)
    d.stop()


def dos_timeouts(a, wa):
    """The client's timeouts are capped by the configuration."""
    import errno
    d = Daemon("t", extra_config="hold_timeout: 2\n").start()
    wa1 = wa[1]
    out = raw_checkpoint(d.sock, a, wa1.pid, os.path.join(ckpt_dir(), "capped.ctx"), 1 << 40, 1 << 50)
    if not out.startswith("0 "):
        fail(f"A's checkpoint with huge timeouts failed: {out}")
    log = d.log()
    if "callback_timeout_ms 1099511627776 capped to 600000 (max_callback_timeout)" not in log or \
            "time_limit_ms 1125899906842624 capped to 86400000 (max_time_limit)" not in log:
        fail("a huge callback_timeout_ms / time_limit_ms was not capped")
    print("OK huge callback_timeout_ms and time_limit_ms capped to 600 s and 1 day")
    # A held checkpoint whose client never commits resumes its processes.
    out = held_checkpoint(d.sock, a, wa1.pid, os.path.join(ckpt_dir(), "held.node"))
    print(f"held checkpoint without a commit: {out}")
    code, took = out.split()[0], float(out.split()[1])
    if int(code) != errno.ETIMEDOUT or took > 15 or "hold_timeout" not in out:
        fail(f"a held checkpoint without a commit did not end with ETIMEDOUT after hold_timeout: {out}")
    wa1.advancing()
    print("OK a held checkpoint without its commit timed out and its processes run on")

# --- issue 23: an unprivileged attacker (A) against a root stasisd -----------

def attack_tool(name, libcr=False):
    """A C helper of test/daemon: from the build, else compiled here (a build
    of an older tree lacks it, and each case must run against one); with
    libcr, linked with the build's libcr."""
    built = os.path.join(ARGS.bindir, "test", "daemon", name)
    if os.path.exists(built):
        return built
    out = os.path.join(WORK, name)
    if not os.path.exists(out):
        here = os.path.dirname(os.path.abspath(__file__))
        src = os.path.join(here, "..", "..")
        cmd = ["cc", "-O1", "-Wall", "-I", src, "-o", out, os.path.join(here, name + ".c")]
        if libcr:
            lib = os.path.join(ARGS.bindir, "engine", "agent")
            cmd += ["-I", os.path.join(src, "engine", "agent", "include"), "-L", lib, "-lcr",
                    f"-Wl,-rpath,{lib}"]
        subprocess.run(cmd, check=True)
    return out


def wait_for_line(path, words, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and re.search(words, open(path).read()):
            return
        time.sleep(0.02)
    fail(f"{path} never said {words!r}: {open(path).read() if os.path.exists(path) else '(missing)'}")


def alive(proc):
    return proc.poll() is None


def tracer_of(pid):
    try:
        return int(proc_status(pid).get("TracerPid", "0"))
    except OSError:
        return 0


def case_attack_agent_kill():
    """Finding 1: A's hand-made agent forwards the checkpoint to B's and
    root's processes and A's second agent answers CR_EPERMFAIL (BLCR: kill
    the scope). Every forwarded process is checked before any agent of
    its round runs: refused with EPERM naming the pid; nobody is killed;
    A's failing agent is never even asked. The same when root asks."""
    d = Daemon().start()
    a, b = USERS
    uid_a, uid_b = (pwd.getpwnam(u).pw_uid for u in USERS)
    wb = Workload("kill_victim_b", b)
    wr = Workload("kill_victim_root", None)
    agent = attack_tool("agent_attack")
    log = os.path.join(ckpt_dir(), "agents.log")
    open(log, "w").close()
    os.chmod(log, 0o666)
    failer = subprocess.Popen(as_user(a, [agent, log, "permfail"]), start_new_session=True)
    wait_for_line(log, rf"ready permfail {failer.pid}")
    fwd = subprocess.Popen(as_user(a, [agent, log, "forward", str(failer.pid), str(wb.pid), str(wr.pid)]),
                           start_new_session=True)
    wait_for_line(log, rf"ready forward {fwd.pid}")
    for who, user in (("A", a), ("root", None)):
        p = run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), f"kill_{who}.ctx"), str(fwd.pid)],
                user=user, sock=d.sock, expect_rc=None, timeout=60)
        time.sleep(0.3)
        dead = [n for n, w in (("B's", wb.proc), ("root's", wr.proc), ("A's forwarding agent's", fwd),
                               ("A's failing agent's", failer)) if not alive(w)]
        if dead:
            fail(f"{who} asked: stasisd killed {', '.join(dead)} process on a callback's CR_EPERMFAIL")
        # A is refused at B's process already; root at it, for A's forwarder.
        words = (rf"pid {wb.pid} belongs to uid {uid_b}, not to uid {uid_a}" if user else
                 rf"pid {wb.pid} belongs to uid {uid_b}, not to uid {uid_a} "
                 rf"\(the checkpoint was forwarded to it by pid {fwd.pid}\)")
        expect_refused(p, words, f"{who} checkpoints A's agent that forwards to B's and root's processes")
        if p.returncode != 1:  # EPERM
            fail(f"exit status {p.returncode}, expected 1 (EPERM)")
        if "answered CR_EPERMFAIL" in open(log).read():
            fail(f"A's failing agent was asked for its callbacks before the scope was checked: {open(log).read()}")
    # A forwarder whose credentials change while its callbacks run (as a
    # setuid exec would lend root's reach to A's forward list; here a root
    # agent becomes A): its forwards are refused when root asks.
    gid_a = pwd.getpwnam(a).pw_gid
    turn = subprocess.Popen([agent, "--become", f"{uid_a}:{gid_a}", log, "forward", str(failer.pid),
                             str(wb.pid), str(wr.pid)], start_new_session=True)
    wait_for_line(log, rf"ready forward {turn.pid}")
    p = run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), "kill_turn.ctx"), str(turn.pid)],
            sock=d.sock, expect_rc=None, timeout=60)
    time.sleep(0.3)
    if not alive(wb.proc) or not alive(wr.proc) or not alive(failer):
        fail("a forwarder that changed credentials had processes killed")
    expect_refused(p, rf"pid {turn.pid} changed its credentials during its checkpoint callbacks",
                   "root checkpoints an agent that changes credentials before forwarding")
    wb.advancing()
    wr.advancing()
    print(f"OK B's pid {wb.pid} and root's pid {wr.pid} survive; the forwarding was refused by pid")
    for z in (fwd, failer, turn):
        z.kill()
        z.wait()
    d.stop()


SLEEPER = r'''
import ctypes, os, sys, time
out = sys.argv[1]
if "nodump" in sys.argv[3:]:
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)  # rewritten in place
i = 0
while True:
    i += 1
    os.pwrite(fd, f"{os.getpid()} {i} ok {i}\n".ljust(63).encode() + b"\n", 0)
    time.sleep(0.05)
'''


def case_attack_setgid_process():
    """Finding 4: processes of uid A that A could not ptrace (a group A is
    not in, not dumpable, a capability A lacks) are refused for A."""
    import grp
    d = Daemon().start()
    a, b = USERS
    uid_a = pwd.getpwnam(a).pw_uid
    gid_b = grp.getgrnam(b).gr_gid
    if gid_b in os.getgrouplist(a, pwd.getpwnam(a).pw_gid):
        skip(f"{a} is in group {b}")
    variants = [
        ("setgid", ["setpriv", f"--reuid={a}", f"--regid={gid_b}", "--clear-groups", "--"], (),
         rf"runs with gid {gid_b}, not gid \d+ of uid {uid_a}"),
        ("nodump", as_user(a, []), ("nodump",), r"is not dumpable"),
        ("cap", ["setpriv", f"--reuid={a}", f"--regid={a}", "--init-groups", "--inh-caps=+net_raw",
                 "--ambient-caps=+net_raw", "--"], (), r"holds capabilities \(CapPrm 2000\)"),
    ]
    for name, prefix, extra, words in variants:
        w = Workload("gid_" + name, a, prefix=prefix, script=SLEEPER, extra=extra)
        st = proc_status(w.pid)
        print(f"{name}: pid {w.pid} Uid {st['Uid']} Gid {st['Gid']} CapPrm {st['CapPrm']}")
        ctx = os.path.join(ckpt_dir(), f"gid_{name}.ctx")
        p = run([tool("cr_checkpoint"), "-f", ctx, str(w.pid)], user=a, sock=d.sock, expect_rc=None)
        expect_refused(p, rf"pid {w.pid} .*{words}", f"A checkpoints its {name} process")
        if p.returncode != 1:
            fail(f"exit status {p.returncode}, expected 1 (EPERM)")
        if os.path.exists(ctx):
            fail(f"{ctx} was written")
        w.advancing()
        os.kill(w.pid, signal.SIGKILL)
        w.reap()
    d.stop()


RESEIZE = r'''
import hashlib, os, signal, sys, time
out, mib, canary = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = bytearray(os.urandom(1 << 20)) * mib
def to_canary(*_):
    os.execv("/usr/bin/python3", ["/usr/bin/python3", "-c", open(canary).read(), out + ".canary"])
signal.signal(signal.SIGUSR1, to_canary)
fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)  # rewritten in place
i = 0
while True:
    i += 1
    os.pwrite(fd, f"{os.getpid()} {i} ok {i}\n".ljust(63).encode() + b"\n", 0)
    time.sleep(0.02)
'''

CANARY = r'''
import os, sys, time
out = sys.argv[1]
traced = 0
while True:
    for line in open("/proc/self/status"):
        if line.startswith("TracerPid:") and int(line.split()[1]):
            traced += 1
    with open(out + ".tmp", "w") as f:
        f.write(f"{os.getpid()} traced {traced}\n")
    os.rename(out + ".tmp", out)
    time.sleep(0.001)
'''


def wait_released(pid, timeout=20):
    """Until pid runs again, no longer traced, with its snapshot child
    ("stasis-snap") beside it: the checkpoint released it and is writing
    from the snapshot. (Running but still traced is an injected call of
    the release itself.)"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
            snaps = [k for k in kids if open(f"/proc/{k}/comm").read().strip() == "stasis-snap"]
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            snaps, state = [], "?"
        if snaps and state not in ("t", "T") and tracer_of(pid) == 0:
            return int(snaps[0])
        time.sleep(0.005)
    fail(f"pid {pid} was not released with a snapshot within {timeout} s")


def wait_file(path, timeout=10):
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)
    if not os.path.exists(path):
        fail(f"{path} did not appear")


def finish_checkpoint(c, what, pid):
    try:
        out, _ = c.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        fail(f"the checkpoint never finished after {what} (stasisd's worker stuck; pid {pid} "
             f"traced by {tracer_of(pid)})")
    print(out.strip())
    time.sleep(0.3)


def case_attack_reseize():
    """Finding 5: after a snapshot release, while stasisd writes the pages,
    A's process execs (1) or exits and B's process takes its pid (2).
    stasisd's worker must not ptrace the new image or B's process, must
    not hang, and B's process runs on unharmed."""
    # 32 MiB at 16 MiB/s: about 2 s of writing after the release.
    d = Daemon(extra_config="bandwidth_limit: 16M\ncapture_backend: user\n").start()
    a, b = USERS
    canary = os.path.join(WORK, "canary.py")
    open(canary, "w").write(CANARY)
    os.chmod(canary, 0o644)
    # ATTACK_RESEIZE=exit runs part 2 alone (to see it fail by itself).
    parts = os.environ.get("ATTACK_RESEIZE", "exec,exit").split(",")
    if "exec" in parts:
        reseize_exec(d, a, canary)
    if "exit" in parts:
        reseize_exit(d, a, b, canary)
    run([tool("stasis"), "status"], user=a, sock=d.sock)
    d.stop()


def reseize_exec(d, a, canary):
    """1. exec after the release."""
    w = Workload("reseize_exec", a, mib=32, script=RESEIZE, extra=(canary,))
    c = slow_checkpoint(d, w, os.path.join(ckpt_dir(), "reseize_exec.ctx"), a)
    wait_released(w.pid)
    os.kill(w.pid, signal.SIGUSR1)
    canary_out = w.out + ".canary"
    wait_file(canary_out)
    finish_checkpoint(c, "its process exec'd", w.pid)
    seen = open(canary_out).read().split()
    if not alive(w.proc) or int(seen[2]) or tracer_of(w.pid):
        fail(f"the exec'd image of pid {w.pid} was traced after the release: {seen}, alive {alive(w.proc)}")
    print(f"OK exec after the release: pid {w.pid}'s new image never traced; checkpoint rc {c.returncode}")
    os.kill(w.pid, signal.SIGKILL)
    w.reap()


def reseize_exit(d, a, b, canary):
    """2. exit after the release; B's process takes the pid (ns_last_pid)."""
    w = Workload("reseize_exit", a, mib=32, script=RESEIZE, extra=(canary,))
    pid = w.pid
    c = slow_checkpoint(d, w, os.path.join(ckpt_dir(), "reseize_exit.ctx"), a)
    wait_released(pid)
    os.kill(pid, signal.SIGKILL)
    w.reap()
    canary_b = os.path.join(ckpt_dir(), "reuse_b")
    wb = None
    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(as_user(b, ["/usr/bin/python3", "-c", CANARY, canary_b]),
                             stdin=subprocess.DEVNULL, start_new_session=True)
        if p.pid == pid:
            wb = p
            break
        p.kill()
        p.wait()
        if os.path.exists(f"/proc/{pid}"):
            break  # another process took it
    if wb is None:
        fail(f"could not give B's process the pid {pid} (another fork took it); rerun")
    wait_file(canary_b)
    print(f"B's process now holds pid {pid}")
    finish_checkpoint(c, "its process exited and B's took the pid", pid)
    seen = open(canary_b).read().split()
    if not alive(wb) or int(seen[2]) or tracer_of(pid):
        fail(f"B's process at the reused pid {pid} was traced by stasisd's worker: {seen}, alive {alive(wb)}")
    print(f"OK exit after the release: B's process at pid {pid} never traced, still running; "
          f"checkpoint rc {c.returncode}")
    wb.kill()
    wb.wait()


def case_attack_agent_shrink():
    """Finding 8: A truncates its agent memfd while stasisd's worker waits
    for its callbacks. An unsealed block is refused before it is mapped
    (the worker does not die of SIGBUS); a sealed one cannot shrink and
    the checkpoint is normal; stasisd keeps serving."""
    d = Daemon().start()
    a = USERS[0]
    agent = attack_tool("agent_attack")
    log = os.path.join(ckpt_dir(), "shrink.log")
    open(log, "w").close()
    os.chmod(log, 0o666)
    x = subprocess.Popen(as_user(a, [agent, "--no-seal", log, "shrink"]), start_new_session=True)
    wait_for_line(log, rf"ready shrink {x.pid}")
    p = run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), "shrink1.ctx"), str(x.pid)],
            user=a, sock=d.sock, expect_rc=None, timeout=60)
    if "killed by signal" in p.stdout + p.stderr or "killed by signal" in d.log():
        fail("stasisd's worker died on A's shrunk agent block")
    expect_refused(p, rf"pid {x.pid}: its agent block is not sealed", "an unsealed agent block")
    if not alive(x):
        fail("A's agent process was killed")
    y = subprocess.Popen(as_user(a, [agent, log, "shrink"]), start_new_session=True)
    wait_for_line(log, rf"ready shrink {y.pid}")
    run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), "shrink2.ctx"), str(y.pid)],
        user=a, sock=d.sock, timeout=60)
    wait_for_line(log, r"shrink refused: Operation not permitted")
    if "killed by signal" in d.log():
        fail("stasisd's worker died")
    # libcr's own block: sealed, so the callback's truncation fails and the
    # checkpoint is normal.
    z = subprocess.Popen(as_user(a, [attack_tool("libcr_shrink", libcr=True), log]), start_new_session=True)
    wait_for_line(log, rf"ready {z.pid}")
    p = run([tool("cr_checkpoint"), "-f", os.path.join(ckpt_dir(), "shrink3.ctx"), str(z.pid)],
            user=a, sock=d.sock, expect_rc=None, timeout=60)
    if "killed by signal" in p.stdout + p.stderr or "killed by signal" in d.log():
        fail("stasisd's worker died on the shrunk block of a libcr program")
    if p.returncode != 0:
        fail(f"the checkpoint of a libcr program failed: {p.stdout + p.stderr}")
    wait_for_line(log, r"shrink: refused EPERM \d+\ncontinue 0")
    if not alive(z):
        fail("the libcr program died")
    run([tool("stasis"), "status"], user=a, sock=d.sock)
    if d.proc.poll() is not None:
        fail("stasisd exited")
    print("OK an unsealed agent block is refused by pid, a sealed one cannot shrink; stasisd serves on")
    for q in (x, y, z):
        q.kill()
        q.wait()
    d.stop()


CASES = {
    "libcr": case_libcr,
    "users": case_users,
    "tcp": case_tcp,
    "refusals": case_refusals,
    "bad_requests": case_bad_requests,
    "concurrent": case_concurrent,
    "kill_daemon": case_kill_daemon,
    "client_gone": case_client_gone,
    "store": case_store,
    "store_faults": case_store_faults,
    "store_incremental": case_store_incremental,
    "config": case_config,
    "attack_state_dir": case_attack_state_dir,
    "attack_state_forge": case_attack_state_forge,
    "attack_state_symlink": case_attack_state_symlink,
    "attack_log_forge": case_attack_log_forge,
    "attack_dos": case_attack_dos,
    "attack_agent_kill": case_attack_agent_kill,
    "attack_setgid_process": case_attack_setgid_process,
    "attack_reseize": case_attack_reseize,
    "attack_agent_shrink": case_attack_agent_shrink,
}


def main():
    global ARGS, WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("case", choices=sorted(CASES))
    ARGS = ap.parse_args()
    ARGS.bindir = os.path.abspath(ARGS.bindir)
    if os.geteuid() != 0:
        skip("stasisd tests need root (they start stasisd and create users)")
    for prog in ("setpriv", "useradd", "python3", "pgrep"):
        if not shutil.which(prog):
            skip(f"{prog} is not installed (ci/setup.sh installs it)")
    ensure_users()
    WORK = tempfile.mkdtemp(prefix=f"stasisd-{ARGS.case}-", dir="/tmp")
    os.chmod(WORK, 0o755)
    os.makedirs(os.path.join(WORK, "ckpt"))
    os.chmod(os.path.join(WORK, "ckpt"), 0o1777)
    killed = []
    try:
        CASES[ARGS.case]()
    finally:
        for d in DAEMONS:
            if d.proc and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
        # Programs of the users left running by a failure.
        for user in USERS:
            out = subprocess.run(["pgrep", "-u", user], stdout=subprocess.PIPE, text=True).stdout
            for pid in (int(x) for x in out.split()):
                if ours(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for pid in worker_pids():
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"PASS {ARGS.case}")


if __name__ == "__main__":
    main()
