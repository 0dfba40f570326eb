#!/usr/bin/env python3
"""Restart through stasisd, tried by a hostile user (issue 23, findings 3, 6
and the restart half of 7), against a real root stasisd per case.

    attack_restart.py --bindir BUILD CASE

  sandbox  A restarts its program from inside `unshare -rn` (refused: a user
           namespace), then from inside a sandbox root made for it (network
           and UTS namespaces, cgroups, no_new_privs, a seccomp filter,
           nofile 256, core 0, a small nproc): the restored program is in
           that sandbox, not in stasisd's.
  session  stasisd runs on a terminal (a pty): A's restored program cannot
           open /dev/tty nor read what the admin types, and its session is
           not stasisd's.
  fifo     a FIFO given as the context file is refused at once, and stasisd
           keeps serving B.
  timeout  a restart that blocks (a mapped file replaced by a FIFO) fails
           with ETIMEDOUT after restart_timeout, nothing of it left, and
           stasisd keeps serving B.

ATTACK_SKIP_USERNS=1 (sandbox) and ATTACK_OMIT_TIMEOUT_KEY=1 (timeout) let
the later checks run against old code that fails the earlier ones.

Uses run_daemon.py's harness (users stasis_ua = A, stasis_ub = B). Exit 0
pass, 1 fail, 77 skip.
"""
import argparse
import fcntl
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_daemon as rd  # noqa: E402
from run_daemon import USERS, as_user, env_for, fail, run, tool  # noqa: E402

# A program that counts like run_daemon's workload and, on request (a file
# next to its output), probes its confinement: forks (RLIMIT_NPROC), a
# system call the test's seccomp filter denies, and the terminal.
PROBE = r'''
import errno, os, select, signal, sys, time
out = sys.argv[1]
def put(name, text):
    with open(out + name + ".tmp", "w") as f:
        f.write(text + "\n")
    os.rename(out + name + ".tmp", out + name)
fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)  # rewritten in place
i = 0
done = set()
while True:
    i += 1
    if "fork" not in done and os.path.exists(out + ".fork"):
        done.add("fork")
        kids, err = [], ""
        for k in range(int(open(out + ".fork").read())):
            try:
                pid = os.fork()
            except OSError as e:
                err = errno.errorcode.get(e.errno, str(e.errno))
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        try:
            os.sched_getaffinity(0)
            aff = "allowed"
        except OSError as e:
            aff = errno.errorcode.get(e.errno, str(e.errno))
        put(".forked", f"{len(kids)} {err or 'none'} {aff}")
    if "tty" not in done and os.path.exists(out + ".tty"):
        done.add("tty")
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NONBLOCK)
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            signal.signal(signal.SIGTTIN, signal.SIG_IGN)
            try:
                os.tcsetpgrp(fd, os.getpgrp())
                fg = "foreground"
            except OSError as e:
                fg = "background"
            got = b""
            end = time.time() + 3
            while time.time() < end and b"\n" not in got:
                if select.select([fd], [], [], 0.2)[0]:
                    try:
                        got += os.read(fd, 100)
                    except OSError:
                        pass
            put(".ttyres", f"opened {fg} read={got.decode(errors='replace').strip()!r} sid={os.getsid(0)}")
        except OSError as e:
            put(".ttyres", f"refused {errno.errorcode.get(e.errno, e.errno)} sid={os.getsid(0)}")
    os.pwrite(fd, f"{os.getpid()} {i} ok {i}\n".ljust(63).encode() + b"\n", 0)
    time.sleep(0.05)
'''

# Installs a seccomp filter (sched_getaffinity fails with EPERM, the rest is
# allowed) under no_new_privs, then execs its arguments.
SECCOMP_HELPER = r'''
import ctypes, os, sys
class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
prog = [(0x20, 0, 0, 0), (0x15, 0, 1, 204), (0x06, 0, 0, 0x00050001), (0x06, 0, 0, 0x7fff0000)]
arr = (F * len(prog))(*[F(*x) for x in prog])
p = P(len(prog), arr)
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0:
    sys.exit("no_new_privs: " + os.strerror(ctypes.get_errno()))
if libc.syscall(317, 1, 0, ctypes.byref(p)) != 0:
    sys.exit("seccomp: " + os.strerror(ctypes.get_errno()))
os.execvp(sys.argv[1], sys.argv[1:])
'''


class Probe(rd.Workload):
    """PROBE as `user`; with leader=False it is the child of a shell that
    leads the session (a restored non-leader joins the restorer's session)."""

    def __init__(self, name, user, leader=True):
        self.out = os.path.join(rd.WORK, "ckpt", name + ".out")
        self.user = user
        if leader:
            cmd = ["/usr/bin/python3", "-c", PROBE, self.out]
        else:
            cmd = ["sh", "-c", '/usr/bin/python3 -c "$0" "$1" & echo $! > "$1.pid"; wait', PROBE, self.out]
        self.proc = subprocess.Popen(as_user(user, cmd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.wait_count(1, timeout=30)
        self.pid = self.read()[0]

    def ask(self, what, content="", timeout=20):
        with open(self.out + "." + what, "w") as f:
            f.write(content)
        res = {"fork": ".forked", "tty": ".ttyres"}[what]
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(self.out + res):
                return open(self.out + res).read().strip()
            time.sleep(0.05)
        fail(f"pid {self.pid} did not answer the {what} probe in {timeout} s")

    def reap(self):
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fail(f"the program's starter {self.proc.pid} did not end")


def checkpoint(d, w, user, ctx):
    w.wait_count(3)
    run([tool("cr_checkpoint"), "--kill", "-f", ctx, str(w.pid)], user=user, sock=d.sock)
    w.reap()


def limits(pid):
    out = {}
    for line in open(f"/proc/{pid}/limits").read().splitlines()[1:]:
        name = line[:26].strip()
        parts = line[26:].split()
        out[name] = (parts[0], parts[1])
    return out


def ns(pid, kind):
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def users_processes(user):
    out = subprocess.run(["pgrep", "-u", user], stdout=subprocess.PIPE, text=True).stdout
    return len(out.split())


def cgroup_dirs():
    """Where this host mounts the v2 hierarchy and the v1 pids one."""
    dirs = []
    for line in open("/proc/self/mountinfo"):
        pre, _, post = line.partition(" - ")
        a, b = pre.split(), post.split()
        if b[0] == "cgroup2" or (b[0] == "cgroup" and "pids" in b[2].split(",")):
            dirs.append(a[4])
    return dirs


def case_sandbox():
    d = rd.Daemon(max_concurrent=2).start()
    a = USERS[0]
    w = Probe("sandbox", a)
    ctx = os.path.join(rd.WORK, "ckpt", "sandbox.ctx")
    checkpoint(d, w, a, ctx)
    host_net = ns(d.proc.pid, "net")

    # 1. From inside an unprivileged user namespace: refused, one line.
    #    (ATTACK_SKIP_USERNS=1 goes straight to 2, to see it on old code.)
    userns = ["true"] if os.environ.get("ATTACK_SKIP_USERNS") else ["unshare", "-rn", tool("cr_restart"), "-v", ctx]
    p = subprocess.Popen(as_user(a, userns), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env_for(d.sock), start_new_session=True, cwd=rd.WORK)
    try:
        out, _ = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        r = w.read()
        if r and os.path.exists(f"/proc/{r[0]}"):
            s = rd.proc_status(r[0])
            kill_quietly(r[0])
            fail(f"cr_restart from inside `unshare -rn` restored pid {r[0]} in stasisd's network "
                 f"namespace (restored: {ns(r[0], 'net') if os.path.exists(f'/proc/{r[0]}') else '?'}, "
                 f"caller's user namespace ignored), NoNewPrivs {s.get('NoNewPrivs')} "
                 f"Seccomp {s.get('Seccomp')}")
        p.kill()
        fail("cr_restart from inside `unshare -rn` neither returned nor restored")
    sys.stdout.write(out or "")
    if os.environ.get("ATTACK_SKIP_USERNS"):
        pass
    elif p.returncode == 0 or "user namespace" not in out or "--no-daemon" not in out:
        fail(f"cr_restart from inside `unshare -rn`: rc {p.returncode}, expected a refusal naming the "
             f"user namespace: {out!r}")
    else:
        print("OK restart from inside `unshare -rn` refused: " + out.strip().splitlines()[-1])

    # 2. Inside a sandbox root made for A (as Slurm makes a step's): its
    #    own network and UTS namespaces and cgroups, then as A:
    #    no_new_privs, a seccomp filter, nofile 256, core 0, a small nproc.
    tag = f"stasis-attack-{os.getpid()}"
    cgs = []
    for base in cgroup_dirs():
        path = os.path.join(base, tag)
        try:
            os.mkdir(path)
            cgs.append(path)
        except OSError as e:
            print(f"note: no cgroup {path}: {e}")
    nproc = users_processes(a) + 10
    helper = os.path.join(rd.WORK, "seccomp_helper.py")
    with open(helper, "w") as f:
        f.write(SECCOMP_HELPER)
    os.chmod(helper, 0o755)
    enter = "".join(f'echo $$ > {c}/cgroup.procs && ' for c in cgs)
    inner = ["setpriv", f"--reuid={a}", f"--regid={a}", "--init-groups",
             "--bounding-set=-all,+net_bind_service", "--no-new-privs", "--",
             "prlimit", "--nofile=256:256", "--core=0:0", f"--nproc={nproc}:{nproc}", "--",
             "/usr/bin/python3", helper, tool("cr_restart"), "-v", ctx]
    cmd = ["sh", "-c", enter + 'exec unshare --net --uts -- sh -c \'hostname stasis-sandbox && exec "$@"\' sh "$@"',
           "sh"] + inner
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env_for(d.sock), start_new_session=True, cwd=rd.WORK)
        r = w.wait_count(w.read()[1] + 3, timeout=30, pid=w.pid) if p.poll() is None else None
        if r is None or p.poll() is not None:
            out, _ = p.communicate(timeout=10)
            fail(f"cr_restart in the sandbox exited {p.returncode}: {out!r}")
        pid, caller = w.pid, p.pid
        s = rd.proc_status(pid)
        problems = []
        if s.get("NoNewPrivs") != "1":
            problems.append(f"NoNewPrivs {s.get('NoNewPrivs')}")
        if s.get("Seccomp") != "2":
            problems.append(f"Seccomp {s.get('Seccomp')}")
        if s.get("CapBnd") != rd.proc_status(caller).get("CapBnd"):
            problems.append(f"CapBnd {s.get('CapBnd')}, the caller's {rd.proc_status(caller).get('CapBnd')}")
        lim = limits(pid)
        if lim["Max open files"] != ("256", "256"):
            problems.append(f"nofile {lim['Max open files']}")
        if lim["Max core file size"] != ("0", "0"):
            problems.append(f"core {lim['Max core file size']}")
        if int(lim["Max processes"][1]) > nproc if lim["Max processes"][1].isdigit() else True:
            problems.append(f"nproc {lim['Max processes']} (caller {nproc})")
        for kind in ("net", "uts", "ipc", "mnt", "cgroup", "pid"):
            if ns(pid, kind) != ns(caller, kind):
                problems.append(f"{kind} namespace {ns(pid, kind)}, the caller's is {ns(caller, kind)}")
        if ns(pid, "net") == host_net:
            problems.append("in stasisd's network namespace")
        mine = open(f"/proc/{pid}/cgroup").read()
        theirs = open(f"/proc/{caller}/cgroup").read()
        if mine != theirs:
            problems.append(f"cgroups {mine.split()} , the caller's {theirs.split()}")
        tries = nproc + 5  # more than the limit allows, whoever else runs as A
        forked = w.ask("fork", str(tries)).split()
        if int(forked[0]) >= tries or forked[1] != "EAGAIN":
            problems.append(f"forked {forked[0]} of {tries} children under the caller's nproc {nproc} ({forked[1]})")
        if forked[2] != "EPERM":
            problems.append(f"sched_getaffinity {forked[2]} under the caller's seccomp filter")
        if problems:
            fail(f"restored pid {pid} escaped the caller's sandbox: " + "; ".join(problems))
        print(f"OK restored pid {pid} in the caller's sandbox: NoNewPrivs 1, Seccomp 2 (the filter "
              f"denies sched_getaffinity), CapBnd {s.get('CapBnd')}, nofile 256, core 0, {forked[0]} forks then EAGAIN under "
              f"nproc {nproc}, the caller's net/uts/ipc/mnt/cgroup/pid namespaces and cgroups {theirs.split()}")
        os.kill(pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
        sys.stdout.write(out)
    finally:
        r = w.read()
        if r:
            kill_quietly(r[0])
        time.sleep(0.3)
        for c in cgs:
            for _ in range(50):
                try:
                    os.rmdir(c)
                    break
                except OSError:
                    time.sleep(0.1)
    d.stop()

    # 3. Root with fewer capabilities than stasisd (a container without a
    #    user namespace, say) is refused: its tree would be fully privileged.
    d = rd.Daemon(name="d3").start()
    w = rd.Workload("sandbox_root", None)
    ctx = os.path.join(rd.WORK, "ckpt", "sandbox_root.ctx")
    checkpoint(d, w, None, ctx)
    p = subprocess.run(["setpriv", "--bounding-set=-sys_admin", "--", tool("cr_restart"), ctx],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=20,
                       env=env_for(d.sock), start_new_session=True, cwd=rd.WORK)
    sys.stdout.write(p.stdout)
    if p.returncode == 0 or "fewer capabilities" not in p.stdout:
        r = w.read()
        if r and os.path.exists(f"/proc/{r[0]}"):
            kill_quietly(r[0])
        fail(f"root without CAP_SYS_ADMIN restarted through stasisd: rc {p.returncode}: {p.stdout!r}")
    print("OK root with fewer capabilities refused: " + p.stdout.strip())
    d.stop()

    # 4. stasisd in UTS and network namespaces of its own (as the cluster
    #    tier runs it, like a node's daemon): the restored program is in the
    #    caller's, not the daemon's.
    d = NsDaemon(name="d4").start()
    w = Probe("sandbox_ns", a)
    ctx = os.path.join(rd.WORK, "ckpt", "sandbox_ns.ctx")
    checkpoint(d, w, a, ctx)
    r = rd.restart_in_background(a, d.sock, ctx)
    w.wait_count(w.read()[1] + 3, timeout=30, pid=w.pid)
    for kind in ("uts", "net"):
        if ns(w.pid, kind) != ns(os.getpid(), kind) or ns(w.pid, kind) == ns(d.proc.pid, kind):
            kill_quietly(w.pid)
            fail(f"restored pid {w.pid} in {kind} {ns(w.pid, kind)}; the caller's is "
                 f"{ns(os.getpid(), kind)}, stasisd's {ns(d.proc.pid, kind)}")
    kill_quietly(w.pid)
    out, _ = r.communicate(timeout=30)
    sys.stdout.write(out)
    print(f"OK stasisd in its own UTS and network namespaces restored pid {w.pid} in the caller's")
    d.stop()


class NsDaemon(rd.Daemon):
    """stasisd in UTS and network namespaces of its own."""

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(["unshare", "--uts", "--net", "--", "sh", "-c",
                                      'hostname stasisd-node && exec "$0" -c "$1"', tool("stasisd"),
                                      self.config], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        for _ in range(200):
            if os.path.exists(self.sock):
                # The daemon itself, not the unshare/sh before its exec.
                return self
            if self.proc.poll() is not None:
                fail(f"stasisd exited with {self.proc.returncode} at start")
            time.sleep(0.02)
        fail("stasisd did not create its socket")


class TtyDaemon(rd.Daemon):
    """stasisd with a pty as its controlling terminal, as when an admin
    starts it by hand."""

    def start(self):
        self.master, slave = pty.openpty()
        log = open(self.log_path, "a")

        def on_tty():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([tool("stasisd"), "-c", self.config], stdin=slave, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=on_tty)
        os.close(slave)
        for _ in range(200):
            if os.path.exists(self.sock):
                return self
            time.sleep(0.02)
        fail("stasisd did not create its socket")


def case_session():
    d = TtyDaemon().start()
    a = USERS[0]
    w = Probe("session", a, leader=False)
    if os.getsid(w.pid) == w.pid:
        fail("the probe should not lead its session")
    ctx = os.path.join(rd.WORK, "ckpt", "session.ctx")
    checkpoint(d, w, a, ctx)
    r = rd.restart_in_background(a, d.sock, ctx)
    w.wait_count(w.read()[1] + 3, timeout=30, pid=w.pid)

    stop = time.time() + 4

    def type_lines():
        # The admin types at stasisd's terminal while the probe runs.
        while time.time() < stop:
            try:
                os.write(d.master, b"admin-secret\n")
            except OSError:
                pass
            time.sleep(0.2)

    import threading
    t = threading.Thread(target=type_lines)
    t.start()
    res = w.ask("tty")
    t.join()
    sid = os.getsid(w.pid)
    kill_quietly(w.pid)
    out, _ = r.communicate(timeout=30)
    sys.stdout.write(out)
    stasisd_sid = os.getsid(d.proc.pid)
    if res.startswith("opened"):
        fail(f"A's restored pid {w.pid} opened stasisd's terminal: {res} (stasisd's session {stasisd_sid})")
    if sid == stasisd_sid:
        fail(f"A's restored pid {w.pid} is in stasisd's session {sid}")
    if r.returncode != 128 + signal.SIGKILL:
        fail(f"cr_restart exited {r.returncode}, expected {128 + signal.SIGKILL}")
    print(f"OK restored pid {w.pid} in session {sid} (stasisd's is {stasisd_sid}): /dev/tty {res}")
    os.close(d.master)
    d.stop()


def case_fifo():
    d = rd.Daemon(max_concurrent=1).start()
    a, b = USERS
    fifo = os.path.join(rd.WORK, "ckpt", "fifo.ctx")
    run(["mkfifo", fifo], user=a)
    t0 = time.time()
    try:
        p = subprocess.run(as_user(a, [tool("cr_restart"), fifo]), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=15, env=env_for(d.sock),
                           start_new_session=True, cwd=rd.WORK)
    except subprocess.TimeoutExpired:
        fail("cr_restart of a FIFO did not return in 15 s: stasisd's worker blocks opening it")
    took = time.time() - t0
    sys.stdout.write(p.stdout)
    if p.returncode == 0 or "not a regular file" not in p.stdout or took > 5:
        fail(f"cr_restart of a FIFO: rc {p.returncode} after {took:.1f} s: {p.stdout!r}")
    print(f"OK a FIFO as the context refused in {took:.2f} s: {p.stdout.strip()}")
    rd.checkpoint_and_restart(d, b, "fifo_b")
    print("OK B served by the same stasisd (max_concurrent 1) afterwards")
    d.stop()


# Counts like PROBE with an empty file mapped (ctypes mmap, MAP_SHARED).
MAPPER = r'''
import ctypes, os, sys, time
out, path = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(path, os.O_RDONLY)
if libc.mmap(None, 4096, 1, 1, fd, 0) in (None, ctypes.c_void_p(-1).value):
    sys.exit("mmap failed")
os.close(fd)
fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)  # rewritten in place
i = 0
while True:
    i += 1
    os.pwrite(fd, f"{os.getpid()} {i} ok {i}\n".ljust(63).encode() + b"\n", 0)
    time.sleep(0.05)
'''


def case_timeout():
    """restart_timeout: a restart that blocks (a mapped file of the context
    replaced by a FIFO of the same size and mtime: the restored process's
    open of it never returns) fails with ETIMEDOUT after restart_timeout,
    leaves nothing of the tree, and stasisd serves B afterwards."""
    # (ATTACK_OMIT_TIMEOUT_KEY=1: no key, for old code that rejects it.)
    key = "" if os.environ.get("ATTACK_OMIT_TIMEOUT_KEY") else "restart_timeout: 3\n"
    d = rd.Daemon(max_concurrent=1, extra_config=key).start()
    a, b = USERS
    mapped = os.path.join(rd.WORK, "ckpt", "empty.map")
    run(["touch", mapped], user=a)
    out = os.path.join(rd.WORK, "ckpt", "timeout.out")
    proc = subprocess.Popen(as_user(a, ["/usr/bin/python3", "-c", MAPPER, out, mapped]),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    w = rd.Workload.__new__(rd.Workload)
    w.out, w.user, w.proc = out, a, proc
    w.wait_count(3, timeout=30)
    w.pid = w.read()[0]
    ctx = os.path.join(rd.WORK, "ckpt", "timeout.ctx")
    run([tool("cr_checkpoint"), "--kill", "-f", ctx, str(w.pid)], user=a, sock=d.sock)
    w.reap()
    st = os.stat(mapped)
    os.unlink(mapped)
    run(["mkfifo", mapped], user=a)
    os.utime(mapped, ns=(st.st_atime_ns, st.st_mtime_ns))
    t0 = time.time()
    try:
        p = subprocess.run(as_user(a, [tool("cr_restart"), ctx]), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=20, env=env_for(d.sock),
                           start_new_session=True, cwd=rd.WORK)
    except subprocess.TimeoutExpired:
        fail("a restart blocked on a FIFO did not end in 20 s: no restart time bound")
    took = time.time() - t0
    sys.stdout.write(p.stdout)
    if p.returncode == 0 or "time limit" not in p.stdout or took > 10:
        fail(f"blocked restart: rc {p.returncode} after {took:.1f} s: {p.stdout!r}")
    time.sleep(0.5)
    if os.path.exists(f"/proc/{w.pid}") and rd.ours(w.pid):
        fail(f"pid {w.pid} of the timed-out restart is still there")
    print(f"OK a blocked restart failed after {took:.1f} s (restart_timeout 3): {p.stdout.strip()}")
    rd.checkpoint_and_restart(d, b, "timeout_b")
    print("OK B served by the same stasisd (max_concurrent 1) afterwards")
    d.stop()


CASES = {"sandbox": case_sandbox, "session": case_session, "fifo": case_fifo, "timeout": case_timeout}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("case", choices=sorted(CASES))
    args = ap.parse_args()
    args.bindir = os.path.abspath(args.bindir)
    rd.ARGS = args
    if os.geteuid() != 0:
        rd.skip("stasisd tests need root (they start stasisd and create users)")
    for prog in ("setpriv", "useradd", "python3", "pgrep", "unshare", "prlimit", "mkfifo"):
        if not shutil.which(prog):
            rd.skip(f"{prog} is not installed")
    rd.ensure_users()
    rd.WORK = tempfile.mkdtemp(prefix=f"stasisd-attack-{args.case}-", dir="/tmp")
    os.chmod(rd.WORK, 0o755)
    os.makedirs(os.path.join(rd.WORK, "ckpt"))
    os.chmod(os.path.join(rd.WORK, "ckpt"), 0o1777)
    try:
        CASES[args.case]()
    finally:
        for d in rd.DAEMONS:
            if d.proc and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
        for user in USERS:
            out = subprocess.run(["pgrep", "-u", user], stdout=subprocess.PIPE, text=True).stdout
            for pid in (int(x) for x in out.split()):
                if rd.ours(pid):
                    kill_quietly(pid)
        for pid in rd.worker_pids():
            kill_quietly(pid)
    shutil.rmtree(rd.WORK, ignore_errors=True)
    print(f"PASS attack_restart_{args.case}")


if __name__ == "__main__":
    main()
