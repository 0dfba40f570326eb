#!/usr/bin/env python3
"""zdtm.py: the ZDTM-style checkpoint/restart harness for stasis.

For a test program (see zdtm.h for the READY/CHECK protocol) `run NAME`:

  1. starts it under `cr_run` in a private temp dir, in a session of its own,
     stdout appended to test.log, stderr to test.err; waits for READY;
  2. records /proc for every process of its tree (maps, selected status
     fields, threads and their signal masks, fds with pipe/socket inodes
     normalised, cwd, exe, cmdline, environ, limits, pgrp/session);
  3. `cr_checkpoint --kill -f ctx1 PID`, waits until every pid and tid of the
     tree is gone (this harness is a child subreaper and reaps everything);
  4. `cr_restart ctx1` in the background (stdout/stderr appended to the same
     files) and waits until /proc shows the same tree again at the same pids,
     with the root now a child of cr_restart, nothing stopped or traced;
  5. does 3-4 again on the restored tree (ctx2, second cr_restart), checks the
     first cr_restart exited 137 (its root was SIGKILLed by --kill);
  6. creates the CHECK file, waits for the second cr_restart to exit 0 with
     "PASS NAME" in test.log; for counting tests, also checks that the
     "count N" lines are 1..N without a gap or repeat across both restarts.

Special tests: pid_taken, neg_missing_file, neg_corrupt_file,
neg_no_such_pid, neg_other_user, neg_disk_full (see their functions).
`selftest` runs every program without any checkpoint, normally (must PASS)
and with ZDTM_SELFTEST_CORRUPT=1 (must FAIL), and checks the harness's own
/proc comparison and log checks. Exit status: 0 pass, 1 fail, 77 skipped
(CTest's SKIP_RETURN_CODE). Python standard library only.
"""

import argparse
import copy
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36
SKIP_CODE = 77
HERE = os.path.dirname(os.path.abspath(__file__))
CLI = ("cr_run", "cr_checkpoint", "cr_restart")


class Fail(Exception):
    """The test failed; the message says what differs."""


class Skip(Exception):
    """A prerequisite is missing; the message says which."""


class Gone(Exception):
    """A process vanished while /proc was being read."""


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# Children: spawning, reaping, killing only what is ours.

class Reaper:
    """Reaps every child (this process is a child subreaper, so orphans of the
    tree come here too) and keeps exit statuses for the pids we wait on."""

    def __init__(self):
        self.exited = {}

    def poll(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited.setdefault(pid, []).append(os.waitstatus_to_exitcode(status))

    def done(self, pid):
        """Exit code of pid (negative: killed by that signal) if it ended."""
        self.poll()
        codes = self.exited.get(pid)
        return codes[0] if codes else None

    def wait(self, pid, timeout):
        deadline = time.monotonic() + timeout
        while True:
            code = self.done(pid)
            if code is not None:
                self.exited[pid].pop(0)
                if not self.exited[pid]:
                    del self.exited[pid]
                return code
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)


REAPER = Reaper()


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise Fail("prctl(PR_SET_CHILD_SUBREAPER): %s" % os.strerror(err))


def spawn(argv, cwd, env, stdout, stderr, stdin="/dev/null"):
    """fork+exec argv in a new session with the given stdio files (stdout and
    stderr opened O_APPEND, so several writers share them), default signal
    dispositions and an empty signal mask. Returns the pid."""
    if "/" not in argv[0]:
        found = shutil.which(argv[0])
        if not found:
            raise Fail("%s: not found in PATH" % argv[0])
        argv = [found] + list(argv[1:])
    r, w = os.pipe2(os.O_CLOEXEC)
    if stdout.startswith("|"):
        # stdout through a pipe to a logger outside the checkpointed tree: a
        # restore reattaches it to cr_restart's own stdout (BLCR semantics).
        pr, pw = os.pipe2(os.O_CLOEXEC)
        log_fd = os.open(stdout[1:], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        logger = os.fork()
        if logger == 0:
            os.dup2(pr, 0)
            os.dup2(log_fd, 1)
            os.execvp("cat", ["cat"])
        os.close(pr)
        os.close(log_fd)
        stdout_fd = pw
    else:
        stdout_fd = os.open(stdout, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fds = [os.open(stdin, os.O_RDONLY), stdout_fd,
           os.open(stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)]
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            os.chdir(cwd)
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
            os.closerange(3, w)
            os.closerange(w + 1, 1 << 16)
            for sig in range(1, signal.NSIG):
                if sig not in (signal.SIGKILL, signal.SIGSTOP):
                    try:
                        signal.signal(sig, signal.SIG_DFL)
                    except (OSError, ValueError):
                        pass
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.execve(argv[0], argv, env)
        except BaseException as e:  # pylint: disable=broad-except
            os.write(w, ("%s: %s" % (argv[0], e)).encode())
        finally:
            os._exit(127)
    REAPER.exited.pop(pid, None)  # statuses of an earlier holder of this pid are stale
    os.close(w)
    for fd in fds:
        os.close(fd)
    err = os.read(r, 4096)
    os.close(r)
    if err:
        REAPER.wait(pid, 5)
        raise Fail("cannot start %s" % err.decode(errors="replace"))
    return pid


def ours(pid):
    """True if pid descends from this harness (so we may kill it)."""
    me = os.getpid()
    for _ in range(64):
        try:
            ppid = int(read_status(pid)["PPid"])
        except (Gone, KeyError, ValueError):
            return False
        if ppid == me:
            return True
        if ppid <= 1:
            return False
        pid = ppid
    return False


def kill_ours(pids):
    for pid in sorted(pids):
        if ours(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def cleanup_processes():
    """Kills every descendant of this harness (all started by it: it is a
    subreaper, so even orphans of a test tree stay below it), then reaps."""
    for _ in range(20):
        victims = descendants(os.getpid())
        if not victims:
            return
        kill_ours(victims)
        time.sleep(0.05)
        REAPER.poll()


def run_cmd(argv, cwd, timeout, env=None):
    """Runs a short command; returns CompletedProcess (output captured)."""
    try:
        return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise Fail("%s did not finish within %d s" % (" ".join(argv), timeout)) from e


# --------------------------------------------------------------------------
# /proc snapshots.

STATUS_FIELDS = ("Name", "Umask", "Tgid", "Pid", "PPid", "Uid", "Gid", "Groups",
                 "NStgid", "NSpid", "NSpgid", "NSsid", "Threads", "SigPnd", "ShdPnd",
                 "SigBlk", "SigIgn", "SigCgt", "CapInh", "CapPrm", "CapEff", "CapBnd",
                 "CapAmb", "NoNewPrivs", "Seccomp", "Cpus_allowed_list",
                 "Mems_allowed_list")
THREAD_FIELDS = ("Name", "SigPnd", "SigBlk")
# A zombie's signal state is left over from its death (a process killed by
# SIGTERM still shows it pending) and nothing can use it: not compared when a
# process is a zombie before and after.
ZOMBIE_UNCOMPARED = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")


def read_text(path, binary=False):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise Gone(path) from e
    except ProcessLookupError as e:
        raise Gone(path) from e
    return data if binary else data.decode(errors="replace")


def read_status(pid, tid=None):
    path = "/proc/%d/status" % pid if tid is None else "/proc/%d/task/%d/status" % (pid, tid)
    out = {}
    for line in read_text(path).splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def readlink(path):
    try:
        return os.readlink(path)
    except FileNotFoundError as e:
        raise Gone(path) from e
    except PermissionError:
        return "<permission denied>"


def children(pid):
    kids = []
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return kids
    for tid in tids:
        try:
            kids += [int(x) for x in read_text("/proc/%d/task/%s/children" % (pid, tid)).split()]
        except Gone:
            pass
    return sorted(set(kids))


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for kid in children(todo.pop(0)):
            out.append(kid)
            todo.append(kid)
    return out


def tree_pids(root):
    if not os.path.exists("/proc/%d" % root):
        raise Gone("/proc/%d" % root)
    return [root] + descendants(root)


def parse_maps(pid):
    maps = []
    for line in read_text("/proc/%d/maps" % pid).splitlines():
        parts = line.split(None, 5)
        start, end = parts[0].split("-")
        path = parts[5] if len(parts) > 5 else ""
        maps.append((int(start, 16), int(end, 16), parts[1], int(parts[2], 16), path))
    return maps


def unless_zombie(zombie, fn, *args):
    """fn(*args); None for a zombie, which has no cwd, exe, root or environ."""
    try:
        return fn(*args)
    except Gone:
        if zombie:
            return None
        raise


def snapshot(root):
    """What /proc shows for the tree under root. fd targets name pipes and
    sockets by order of first appearance, so the sharing pattern compares
    equal after a restore that creates new inodes."""
    labels = {}
    snap = {}
    for pid in tree_pids(root):
        status = read_status(pid)
        stat = read_text("/proc/%d/stat" % pid)
        fields = stat[stat.rindex(")") + 2:].split()
        zombie = status.get("State", "?")[:1] == "Z"
        proc = {
            "status": {k: status.get(k) for k in STATUS_FIELDS},
            "state": status.get("State", "?")[:1],
            "tracer": status.get("TracerPid"),
            "stat": {"pgrp": fields[2], "session": fields[3], "tty_nr": fields[4],
                     "nice": fields[16]},
            "maps": parse_maps(pid),
            "cwd": unless_zombie(zombie, readlink, "/proc/%d/cwd" % pid),
            "exe": unless_zombie(zombie, readlink, "/proc/%d/exe" % pid),
            "root": unless_zombie(zombie, readlink, "/proc/%d/root" % pid),
            "cmdline": read_text("/proc/%d/cmdline" % pid, binary=True),
            "environ": unless_zombie(zombie, read_text, "/proc/%d/environ" % pid, True),
            "limits": read_text("/proc/%d/limits" % pid),
            "threads": {},
            "fds": {},
        }
        try:
            proc["personality"] = read_text("/proc/%d/personality" % pid).strip()
        except PermissionError:
            proc["personality"] = None
        for tid in sorted(int(t) for t in os.listdir("/proc/%d/task" % pid)):
            try:
                ts = read_status(pid, tid)
            except Gone:
                continue
            proc["threads"][tid] = {k: ts.get(k) for k in THREAD_FIELDS}
        try:
            fds = sorted(int(fd) for fd in os.listdir("/proc/%d/fd" % pid))
        except FileNotFoundError as e:
            raise Gone(pid) from e
        for fd in fds:
            try:
                target = os.readlink("/proc/%d/fd/%d" % (pid, fd))
                info = read_text("/proc/%d/fdinfo/%d" % (pid, fd))
            except (FileNotFoundError, Gone):
                continue  # closed meanwhile
            m = re.match(r"^(pipe|socket):\[(\d+)\]$", target)
            if m:
                key = target
                if key not in labels:
                    labels[key] = len([k for k in labels if k.startswith(m.group(1))]) + 1
                target = "%s:#%d" % (m.group(1), labels[key])
            flags = re.search(r"^flags:\s*(\S+)", info, re.M)
            proc["fds"][fd] = (target, flags.group(1) if flags else "?")
        snap[pid] = proc
    return snap


def fmt_map(m):
    return "%x-%x %s %08x %s" % m


def compare(before, after, root, root_ppid=None, states=False):
    """Differences between two snapshots, one line each, most useful first.
    states: the tree holds stopped processes or zombies on purpose (Prog
    states=True): every process must be in the same stopped/zombie state as
    before instead of running."""
    diffs = []
    if sorted(before) != sorted(after):
        diffs.append("tree pids: before %s, after %s" % (sorted(before), sorted(after)))
    for pid in sorted(set(before) & set(after)):
        b, a = before[pid], after[pid]
        who = "pid %d (%s)" % (pid, b["status"]["Name"])
        zombies = b["state"] == "Z" and a["state"] == "Z"
        for key in STATUS_FIELDS:
            if key == "PPid" and pid == root:
                continue
            if zombies and key in ZOMBIE_UNCOMPARED:
                continue
            if b["status"][key] != a["status"][key]:
                diffs.append("%s: status %s: %s -> %s" % (who, key, b["status"][key],
                                                          a["status"][key]))
        for key in sorted(b["stat"]):
            if b["stat"][key] != a["stat"][key]:
                diffs.append("%s: stat %s: %s -> %s" % (who, key, b["stat"][key], a["stat"][key]))
        if pid == root and root_ppid is not None and a["status"]["PPid"] != str(root_ppid):
            diffs.append("%s: PPid %s, want %d (cr_restart)" % (who, a["status"]["PPid"],
                                                                 root_ppid))
        if states:
            if b["state"] != a["state"] and (b["state"] in "TtZX" or a["state"] in "TtZX"):
                diffs.append("%s: state %s -> %s" % (who, b["state"], a["state"]))
        elif root_ppid is not None and a["state"] in "TtZX":
            diffs.append("%s: state %s after restore" % (who, a["state"]))
        if root_ppid is not None and a["tracer"] != "0":
            diffs.append("%s: traced by %s after restore" % (who, a["tracer"]))
        bm = {(m[0], m[1]): m for m in b["maps"]}
        am = {(m[0], m[1]): m for m in a["maps"]}
        for key in sorted(set(bm) | set(am)):
            if key not in am:
                diffs.append("%s: maps: missing %s" % (who, fmt_map(bm[key])))
            elif key not in bm:
                diffs.append("%s: maps: extra %s" % (who, fmt_map(am[key])))
            elif bm[key] != am[key]:
                diffs.append("%s: maps: %s -> %s" % (who, fmt_map(bm[key]), fmt_map(am[key])))
        for key in ("cwd", "exe", "root", "cmdline", "environ", "limits", "personality"):
            if b[key] != a[key]:
                bv, av = b[key], a[key]
                if isinstance(bv, bytes) and isinstance(av, bytes):  # None: unreadable mid-restore
                    bv, av = bv.replace(b"\0", b" ")[:200], av.replace(b"\0", b" ")[:200]
                diffs.append("%s: %s: %r -> %r" % (who, key, bv, av))
        if sorted(b["threads"]) != sorted(a["threads"]):
            diffs.append("%s: thread ids %s -> %s" % (who, sorted(b["threads"]),
                                                      sorted(a["threads"])))
        for tid in sorted(set(b["threads"]) & set(a["threads"])):
            for key in THREAD_FIELDS:
                if zombies and key in ZOMBIE_UNCOMPARED:
                    continue
                if b["threads"][tid][key] != a["threads"][tid][key]:
                    diffs.append("%s: thread %d %s: %s -> %s" % (
                        who, tid, key, b["threads"][tid][key], a["threads"][tid][key]))
        for fd in sorted(set(b["fds"]) | set(a["fds"])):
            bf, af = b["fds"].get(fd), a["fds"].get(fd)
            if bf != af:
                diffs.append("%s: fd %d: %s -> %s" % (
                    who, fd, "%s flags %s" % bf if bf else "(none)",
                    "%s flags %s" % af if af else "(none)"))
    return diffs


def all_ids(snap):
    """Every pid and tid of a snapshot (all must be free before a restore)."""
    ids = set(snap)
    for proc in snap.values():
        ids.update(proc["threads"])
    return ids


def wait_gone(ids, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        REAPER.poll()
        alive = sorted(i for i in ids if os.path.exists("/proc/%d" % i))
        if not alive:
            return
        if time.monotonic() > deadline:
            raise Fail("%s: pids/tids %s still exist %d s later" % (what, alive, timeout))
        time.sleep(0.01)


def counts_in(path):
    try:
        with open(path, errors="replace") as f:
            return [int(m.group(1)) for m in re.finditer(r"^count (\d+)$", f.read(), re.M)]
    except FileNotFoundError:
        return []


def check_counts(counts):
    """None if counts are 1..N in order, else what is wrong."""
    if not counts:
        return "no 'count N' lines"
    for i, c in enumerate(counts):
        if c != i + 1:
            prev = counts[i - 1] if i else None
            return "count %d follows %s at line %d (a gap or a repeat)" % (c, prev, i + 1)
    return None


def describe_exit(code):
    """cr_restart's status in words (it exits 128+N when its root died of N)."""
    if code is None:
        return "(still running)"
    if code < 0:
        return "%d (killed by %s)" % (code, signal.Signals(-code).name)
    if code > 128 and code - 128 < signal.NSIG:
        try:
            return "%d (128+%s)" % (code, signal.Signals(code - 128).name)
        except ValueError:
            pass
    return str(code)


def tail(path, n=8):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return "(no %s)" % os.path.basename(path)
    return " | ".join(lines[-n:]) if lines else "(%s is empty)" % os.path.basename(path)


# --------------------------------------------------------------------------
# Tests.

class Prog:
    def __init__(self, argv, counts=False, ready_timeout=30, cr_timeout=120, env=None,
                 verdict=None, states=False, prereq=None, ckpt_args=(), restart_env=None,
                 restart_args=(), after_ckpt=None, verify_says=()):
        self.argv = argv
        # after_ckpt(h, ctx): more checks of each context file, once written.
        self.after_ckpt = after_ckpt
        # What `stasis verify` of its first context must print, exiting 1:
        # the context is intact but cannot be restarted faithfully, by
        # design (--close-sockets: connections come back closed).
        self.verify_says = tuple(verify_says)
        self.restart_args = tuple(restart_args)  # more cr_restart options
        self.restart_env = restart_env or {}  # more environment for cr_restart
        self.ckpt_args = tuple(ckpt_args)  # more cr_checkpoint options
        # The tree holds stopped processes or zombies on purpose: /proc must
        # show the same state letters after a restore (see compare()).
        self.states = states
        # prereq(h): called in the test's folder before the program starts;
        # raises Skip if the machine lacks something, and appends to h.undo
        # what must be undone after the test, pass or fail (sysctls, SysV
        # segments and /dev/shm files the program leaves if it is killed).
        self.prereq = prereq
        self.verdict = verdict  # the name in the program's PASS line, if not the test's
        self.counts = counts
        self.ready_timeout = ready_timeout
        self.cr_timeout = cr_timeout
        self.env = env or {}



# Prerequisites of programs (Prog prereq=): called in the test's folder.

LIBC = ctypes.CDLL(None, use_errno=True)
IPC_RMID = 0


def sysv_segments():
    """{shmid: (key, size, nattch)} from /proc/sysvipc/shm."""
    out = {}
    for line in read_text("/proc/sysvipc/shm").splitlines()[1:]:
        f = line.split()
        out[int(f[1])] = (int(f[0]), int(f[3]), int(f[6]))
    return out


def prereq_sysv_shm(h):
    """The program makes a segment with key ftok(folder, 'Z') of 1 MiB + 100
    bytes and a private one of 64 KiB; if it dies before removing them, they
    must not outlive the test: the key's segment goes, and so do segments of
    those sizes that appeared during the test and are attached nowhere (a
    failed restore can leave such copies)."""
    if not os.path.exists("/proc/sysvipc/shm"):
        raise Skip("no SysV IPC in this kernel (/proc/sysvipc/shm)")
    st = os.stat(h.dir)
    key = (st.st_ino & 0xffff) | ((st.st_dev & 0xff) << 16) | (ord("Z") << 24)
    before = set(sysv_segments())

    def remove():
        for shmid, (k, size, nattch) in sorted(sysv_segments().items()):
            if k == key or (shmid not in before and nattch == 0 and
                            size in ((1 << 20) + 100, 65536)):
                if LIBC.shmctl(shmid, IPC_RMID, None) == 0:
                    log("  removed SysV segment %d (key %#x, %d bytes) left by the test" %
                        (shmid, k, size))
    h.undo.append(remove)


def prereq_outside_socket(h):
    """A UNIX listener of ours (outside the checkpoint) at outside.sock in
    the test's folder: the program connects to it (the connection waits in
    our backlog), so its socket leads outside."""
    import socket
    path = os.path.join(h.dir, "outside.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    h.undo.append(s.close)
    # And a TCP listener on 127.0.0.1, its port in outside.tcp.
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    t.listen(4)
    h.undo.append(t.close)
    with open(os.path.join(h.dir, "outside.tcp"), "w") as f:
        f.write("%d\n" % t.getsockname()[1])


def prereq_posix_shm(h):
    """The program makes /dev/shm/zdtm-pshm-<folder inode>[-gone]."""
    if not os.path.isdir("/dev/shm"):
        raise Skip("no /dev/shm")
    ino = os.stat(h.dir).st_ino
    names = ["/dev/shm/zdtm-pshm-%d" % ino, "/dev/shm/zdtm-pshm-%d-gone" % ino]

    def remove():
        for name in names:
            if os.path.exists(name):
                os.unlink(name)
                log("  removed %s left by the test" % name)
    h.undo.append(remove)


def prereq_hugetlb(h):
    """At least 4 free 2 MiB huge pages (2 for the program, 2 for the copy a
    restore builds while the killed tree's pages are being freed): raises
    /proc/sys/vm/nr_hugepages if needed (root), and puts it back afterwards."""
    meminfo = read_text("/proc/meminfo")
    m = re.search(r"^HugePages_Free:\s+(\d+)", meminfo, re.M)
    size = re.search(r"^Hugepagesize:\s+(\d+) kB", meminfo, re.M)
    if not m or not size:
        raise Skip("no hugetlbfs support in this kernel (/proc/meminfo)")
    if int(size.group(1)) != 2048:
        raise Skip("the default huge page size is %s kB, the test wants 2048" % size.group(1))
    free, want = int(m.group(1)), 4
    if free >= want:
        return
    path = "/proc/sys/vm/nr_hugepages"
    old = int(read_text(path))
    try:
        with open(path, "w") as f:
            f.write("%d\n" % (old + want - free))
    except OSError as e:
        raise Skip("%d free huge pages, and raising %s failed: %s" % (free, path, e)) from e

    def restore():
        with open(path, "w") as f:
            f.write("%d\n" % old)
    h.undo.append(restore)
    free = int(re.search(r"^HugePages_Free:\s+(\d+)", read_text("/proc/meminfo"), re.M).group(1))
    if free < want:
        raise Skip("only %d free huge pages after raising %s to %d (memory too fragmented?)" %
                   (free, path, old + want - free))


def tcp_queues_check(h, ctx):
    """From the capture's own counts (`stasis show`): every TCP connection
    socket of the context had bytes in its send queue, some of them unsent,
    and in its receive queue, and its peer was captured with it."""
    res = run_cmd([h.tool("stasis"), "show", ctx], h.dir, 60)
    if res.returncode != 0:
        raise Fail("stasis show %s exited %d" % (os.path.basename(ctx), res.returncode))
    rows = re.findall(r"tcp state 1( peer-here)? sendq (\d+) \(unsent (\d+)\) recvq (\d+)",
                      res.stdout.decode(errors="replace"))
    if len(rows) < 2:
        raise Fail("stasis show lists %d TCP connection socket(s), want at least 2" % len(rows))
    # After a restart the split between the sender's and the receiver's
    # queue may differ (refilled receive queues take less buffer space than
    # the many small segments they came as, so the window opens a little):
    # every end must still hold bytes, in one queue or the other.
    strict = os.path.basename(ctx) in ("ctx1", "ctx")
    for here, sendq, unsent, recvq in rows:
        if not here or (strict and (int(sendq) == 0 or int(unsent) == 0 or int(recvq) == 0)) or \
                int(sendq) + int(recvq) == 0:
            raise Fail("a TCP connection was captured with sendq %s (unsent %s), recvq %s%s: "
                       "want all > 0 and its peer in the context" % (
                           sendq, unsent, recvq, "" if here else ", peer not here"))
    log("  %s: %d TCP connection ends, queues (send/unsent/recv) %s" % (
        os.path.basename(ctx), len(rows),
        ", ".join("%s/%s/%s" % (r[1], r[2], r[3]) for r in rows)))


PROGRAMS = {
    "counter": Prog(["@zdtm_counter"], counts=True),
    "threads4": Prog(["@zdtm_threads", "4"]),
    "threads32": Prog(["@zdtm_threads", "32"]),
    "mem64m": Prog(["@zdtm_mem", "64M"]),
    "mem64m_private": Prog(["@zdtm_mem", "64M", "private"], verdict="mem64m"),
    # Compressed page data restores the same memory (issue 9).
    "mem64m_lz4": Prog(["@zdtm_mem", "64M"], verdict="mem64m", ckpt_args=["--compress=lz4"]),
    "mem64m_zstd": Prog(["@zdtm_mem", "64M"], verdict="mem64m", ckpt_args=["--compress", "zstd:3"]),
    "mem1g": Prog(["@zdtm_mem", "1G"], ready_timeout=180, cr_timeout=300),
    # For tests about something else than memory kinds: private memory only.
    "mem1g_private": Prog(["@zdtm_mem", "1G", "private"], ready_timeout=180, cr_timeout=300,
                          verdict="mem1g"),
    "fpu_avx": Prog(["@zdtm_fpu_avx"]),
    "tree3": Prog(["@zdtm_tree3"]),
    "counter_sh": Prog(["%bash", "$counter.sh"], counts=True),
    "counter_py": Prog(["%python3", "$counter.py"], counts=True),
    "counter_pl": Prog(["%perl", "$counter.pl"], counts=True),
    # Issue 3, process state coverage (see each program's .c file).
    "files": Prog(["@zdtm_files"]),
    "unlinked": Prog(["@zdtm_unlinked"]),
    "pipes": Prog(["@zdtm_pipes"]),
    "fifo": Prog(["@zdtm_fifo"]),
    "socketpair": Prog(["@zdtm_unix_sock", "socketpair"]),
    "unix_listen": Prog(["@zdtm_unix_sock", "unix_listen"]),
    "unix_backlog": Prog(["@zdtm_unix_sock", "unix_backlog"]),
    # The TCP connection to the harness's listener comes back closed (the
    # pair inside the tree is kept whole): `stasis verify` must say so (the
    # listener and the UDP socket lose nothing). The UNIX
    # connection still waiting in the harness's backlog looks, to
    # sock_diag, like one whose peer closed, and is not counted.
    "net_closed": Prog(["@zdtm_unix_sock", "net_closed"], ckpt_args=["--close-sockets"],
                       env={"ZDTM_OUTSIDE_SOCK": "outside.sock", "ZDTM_OUTSIDE_TCP": "outside.tcp"},
                       prereq=prereq_outside_socket,
                       verify_says=["was connected to 127.0.0.1:", "a restart gives it back closed",
                                    "cannot be restarted faithfully: 1 problem(s)"]),
    "shm_fork": Prog(["@zdtm_shm_fork"]),
    "file_mmap": Prog(["@zdtm_file_mmap"]),
    "sysv_shm": Prog(["@zdtm_sysv_shm"], prereq=prereq_sysv_shm),
    "posix_shm": Prog(["@zdtm_posix_shm"], prereq=prereq_posix_shm),
    "hugetlb": Prog(["@zdtm_hugetlb"], prereq=prereq_hugetlb),
    "signals": Prog(["@zdtm_signals"]),
    "itimers": Prog(["@zdtm_itimers"]),
    "fd_timers": Prog(["@zdtm_fd_timers"]),
    "eventfd": Prog(["@zdtm_eventfd"]),
    "seccomp": Prog(["@zdtm_seccomp"]),
    "posix_timer": Prog(["@zdtm_posix_timer"]),
    # Timer ids as kernels before PR_TIMER_CREATE_RESTORE_IDS give them
    # (Debian 12's 6.1): in increasing order, gaps used up by placeholders.
    "posix_timer_count": Prog(["@zdtm_posix_timer"], verdict="posix_timer",
                              restart_env={"STASIS_TIMER_IDS": "count"}),
    "prctl": Prog(["@zdtm_prctl"]),
    "rseq": Prog(["@zdtm_rseq"]),
    "robust_futex": Prog(["@zdtm_robust_futex"]),
    "stopped": Prog(["@zdtm_stopped"], states=True),
    "zombie": Prog(["@zdtm_zombie"], states=True),
    "pty": Prog(["@zdtm_pty"]),
    "openmp": Prog(["@zdtm_openmp"]),
    "mixed": Prog(["@zdtm_mixed"]),
    # Lazy restart of trees with threads, children, pipes, shared memory
    # and an unlinked file, and of 32 threads (issue 9).
    "mixed_lazy": Prog(["@zdtm_mixed"], verdict="mixed", restart_args=["--lazy"]),
    "threads32_lazy": Prog(["@zdtm_threads", "32"], verdict="threads32", restart_args=["--lazy"]),
    "mem64m_lazy": Prog(["@zdtm_mem", "64M"], verdict="mem64m", restart_args=["--lazy"]),
    "pipes_half_closed": Prog(["@zdtm_pipes_half_closed"]),
    # Issue 20: TCP connections with both ends in the checkpoint.
    "tcp": Prog(["@zdtm_tcp"], after_ckpt=tcp_queues_check),
    "tcp_autotuned": Prog(["@zdtm_tcp"], verdict="tcp", env={"ZDTM_TCP_AUTOTUNED": "1"},
                          after_ckpt=tcp_queues_check),
}


class Harness:
    def __init__(self, args):
        self.bindir = os.path.abspath(args.bindir)
        self.testdir = os.path.abspath(args.testdir)
        self.require_cli = args.require_cli
        self.workroot = args.workdir or tempfile.gettempdir()
        self.keep = args.keep
        self.dir = None
        self.mounts = []  # tmpfs mounts to undo after the test
        self.undo = []  # callables a prereq registers, run after the test (run_undo)

    # -- prerequisites --
    def tool(self, name):
        path = os.path.join(self.bindir, name)
        if not os.access(path, os.X_OK):
            msg = "%s not found in %s" % (name, self.bindir)
            if self.require_cli:
                raise Fail(msg + " (the build should have made it)")
            raise Skip(msg + " (engine/cli not built yet)")
        return path

    def need_cli(self):
        for name in CLI:
            self.tool(name)

    @staticmethod
    def need_root(why):
        if os.geteuid() != 0:
            raise Skip("needs root: %s" % why)

    def resolve(self, argv):
        out = []
        for a in argv:
            if a.startswith("@"):
                path = os.path.join(self.testdir, a[1:])
                if not os.access(path, os.X_OK):
                    raise Fail("test program %s not built" % path)
                out.append(path)
            elif a.startswith("%"):
                path = next((p for p in ("/usr/bin/" + a[1:], shutil.which(a[1:]))
                             if p and os.access(p, os.X_OK)), None)
                if not path:
                    raise Skip("%s is not installed" % a[1:])
                out.append(path)
            elif a.startswith("$"):
                out.append(os.path.join(HERE, a[1:]))
            else:
                out.append(a)
        return out

    # -- pieces --
    def make_dir(self, name):
        self.dir = tempfile.mkdtemp(prefix="zdtm-%s-" % name, dir=self.workroot)
        os.chmod(self.dir, 0o755)
        return self.dir

    def path(self, name):
        return os.path.join(self.dir, name)

    def env(self, prog, extra=None):
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("ZDTM_")]:
            del env[key]
        env.update(prog.env)
        env["ZDTM_READY"] = self.path("ready")
        env["ZDTM_CHECK"] = self.path("check")
        env.update(extra or {})
        return env

    def start(self, prog, argv_prefix, extra_env=None, out="test.log", pipe_out=False):
        argv = argv_prefix + self.resolve(prog.argv)
        pid = spawn(argv, self.dir, self.env(prog, extra_env),
                    ("|" if pipe_out else "") + self.path(out), self.path("test.err"))
        deadline = time.monotonic() + prog.ready_timeout
        while not os.path.exists(self.path("ready")):
            code = REAPER.done(pid)
            skipped = re.search(r"^SKIPPED [^:]*: (.*)$", read_text(self.path(out)), re.M) \
                if code == SKIP_CODE and os.path.exists(self.path(out)) else None
            if skipped:
                raise Skip(skipped.group(1))
            if code is not None:
                raise Fail("%s exited with %d before READY: %s; stderr: %s" % (
                    " ".join(argv), code, tail(self.path(out)), tail(self.path("test.err"))))
            if time.monotonic() > deadline:
                raise Fail("no READY within %d s: %s" % (prog.ready_timeout, tail(self.path(out))))
            time.sleep(0.01)
        with open(self.path("ready")) as f:
            line = f.read().strip()
        if line != "READY %d" % pid:
            raise Fail("ready file says %r, want 'READY %d'" % (line, pid))
        return pid

    def request_check(self):
        with open(self.path("check.tmp"), "w") as f:
            f.write("check\n")
        os.rename(self.path("check.tmp"), self.path("check"))

    def checkpoint(self, ctx, pid, timeout, extra=("--kill",), verify_says=()):
        t0 = time.monotonic()
        for _ in range(300):
            res = run_cmd([self.tool("cr_checkpoint")] + list(extra) + ["-f", ctx, str(pid)],
                          self.dir, timeout)
            # A lazily restarted tree is refused until its pages are in.
            if res.returncode == 0 or b"still arriving from a lazy restart" not in res.stderr:
                break
            time.sleep(0.1)
        took = time.monotonic() - t0
        if res.returncode != 0:
            raise Fail("cr_checkpoint %s -f %s %d exited %d: %s" % (
                " ".join(extra), os.path.basename(ctx), pid, res.returncode,
                res.stderr.decode(errors="replace").strip()))
        if not os.path.isfile(ctx):
            raise Fail("cr_checkpoint exited 0 but %s does not exist" % ctx)
        size = os.path.getsize(ctx)
        log("  checkpoint %s: %.1f MiB in %.2f s" % (os.path.basename(ctx), size / 2**20, took))
        stasis = os.path.join(self.bindir, "stasis")
        if os.access(stasis, os.X_OK):
            res = run_cmd([stasis, "verify", ctx], self.dir, timeout)
            said = res.stdout.decode(errors="replace")
            if verify_says:
                missing = [w for w in verify_says if w not in said]
                if res.returncode != 1 or missing:
                    raise Fail("stasis verify %s exited %d (want 1) without saying %s: %s" % (
                        os.path.basename(ctx), res.returncode, missing, said.strip()))
                log("  stasis verify: %s" % said.strip().replace("\n", "\n    "))
            elif res.returncode != 0:
                raise Fail("stasis verify %s exited %d: %s %s" % (
                    os.path.basename(ctx), res.returncode, said.strip(),
                    res.stderr.decode(errors="replace").strip()))

    def restart(self, ctx, extra=(), out="test.log", env=None):
        argv = [self.tool("cr_restart")] + list(extra) + [ctx]
        return spawn(argv, self.dir, dict(os.environ, **(env or {})), self.path(out),
                     self.path("test.err"))

    def wait_restored(self, before, root, restart_pid, timeout, what, states=False):
        t0 = time.monotonic()
        deadline = t0 + timeout
        diffs = ["pid %d does not exist" % root]
        while time.monotonic() < deadline:
            code = REAPER.done(restart_pid)
            if code is not None:
                raise Fail("%s: cr_restart exited %s before the tree was back: %s" % (
                    what, describe_exit(code), tail(self.path("test.err"), 3)))
            try:
                diffs = compare(before, snapshot(root), root, root_ppid=restart_pid,
                                states=states)
            except Gone as e:
                diffs = ["process vanished while reading /proc: %s" % e]
            if not diffs:
                log("  %s: /proc matches after %.2f s" % (what, time.monotonic() - t0))
                return
            time.sleep(0.05)
        raise Fail("%s: /proc still differs %d s after cr_restart started:\n    %s" % (
            what, timeout, "\n    ".join(diffs[:40])))

    def wait_counting(self, past, timeout=5):
        """Waits until the log shows a count above `past`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = counts_in(self.path("test.log"))
            if counts and counts[-1] > past:
                return
            time.sleep(0.02)
        raise Fail("the restored process did not print a count above %d within %d s" % (
            past, timeout))

    # -- the standard two-cycle run --
    def run_program(self, name):
        prog = PROGRAMS[name]
        self.need_cli()
        self.need_root("restoring processes at their original pids")
        self.make_dir(name)
        log("zdtm: %s in %s" % (name, self.dir))
        if prog.prereq:
            prog.prereq(self)
        pid = self.start(prog, [self.tool("cr_run")])
        time.sleep(0.1)
        before = snapshot(pid)
        log("  READY pid %d, tree %s" % (pid, sorted(before)))
        ids = all_ids(before)
        owner = None  # the cr_restart whose child the root is
        for cycle in (1, 2):
            ctx = self.path("ctx%d" % cycle)
            last = (counts_in(self.path("test.log")) or [0])[-1]
            # (Once restored, a socket that led outside is a closed UNIX socket.)
            self.checkpoint(ctx, pid, prog.cr_timeout, extra=("--kill",) + prog.ckpt_args,
                            verify_says=prog.verify_says if cycle == 1 else ())
            if prog.after_ckpt:
                prog.after_ckpt(self, ctx)
            wait_gone(ids, 20, "after cr_checkpoint --kill")
            if owner is not None:
                code = REAPER.wait(owner, 10)
                if code != 128 + signal.SIGKILL:
                    raise Fail("cycle %d: the cr_restart whose tree cr_checkpoint --kill "
                               "killed exited %s, want %d (128+SIGKILL)" %
                               (cycle, code, 128 + signal.SIGKILL))
            owner = self.restart(ctx, extra=prog.restart_args, env=prog.restart_env)
            self.wait_restored(before, pid, owner, prog.cr_timeout, "restore %d" % cycle,
                               states=prog.states)
            if prog.counts:
                self.wait_counting(last)
            else:
                time.sleep(0.2)
        self.request_check()
        code = REAPER.wait(owner, 60)
        if code is None:
            raise Fail("cr_restart did not exit within 60 s of the check request: %s" %
                       tail(self.path("test.log")))
        fails = [line for line in open(self.path("test.log"), errors="replace")
                 if line.startswith("FAIL ")]
        if fails:
            raise Fail("the program reports: %s" % fails[0].strip())
        if code != 0:
            raise Fail("cr_restart exited %s: %s; stderr: %s" % (
                describe_exit(code), tail(self.path("test.log")), tail(self.path("test.err"))))
        verdict = "PASS %s" % (prog.verdict or name)
        if not any(line.strip() == verdict for line in open(self.path("test.log"))):
            raise Fail("no '%s' in the log: %s" % (verdict, tail(self.path("test.log"))))
        if prog.counts:
            problem = check_counts(counts_in(self.path("test.log")))
            if problem:
                raise Fail("the log's counts across the restarts: %s" % problem)
        wait_gone(ids, 10, "after the test ended")


# --------------------------------------------------------------------------
# Special tests.

def one_line_failure(what, res, mentions):
    """Problems with a command that should have failed with one clear line."""
    problems = []
    rc = res.returncode
    if rc == 0:
        problems.append("%s exited 0, want a failure" % what)
    elif rc < 0 or rc > 125:
        problems.append("%s ended with status %d (a crash or a signal, not an error exit)" %
                        (what, rc))
    err = res.stderr.decode(errors="replace")
    lines = err.rstrip("\n").split("\n") if err.strip() else []
    if len(lines) != 1:
        problems.append("%s printed %d lines on stderr, want exactly one: %r" %
                        (what, len(lines), lines[:6]))
    elif not any(m in lines[0] for m in mentions):
        problems.append("%s: the error line %r names none of %s" % (what, lines[0], mentions))
    else:
        log("  %s: exit %d, stderr: %s" % (what, rc, lines[0]))
    return problems


def expect(problems):
    if problems:
        raise Fail("\n    ".join(problems))


def state_of(pid):
    try:
        st = read_status(pid)
        return st.get("State", "?")[:1], st.get("TracerPid")
    except Gone:
        return None, None


def test_neg_missing_file(h):
    h.need_cli()
    h.make_dir("neg_missing_file")
    ctx = h.path("does-not-exist.ctx")
    res = run_cmd([h.tool("cr_restart"), ctx], h.dir, 30)
    expect(one_line_failure("cr_restart of a missing file", res, ["does-not-exist.ctx"]))


def test_neg_no_such_pid(h):
    h.need_cli()
    h.make_dir("neg_no_such_pid")
    pid_max = int(read_text("/proc/sys/kernel/pid_max"))
    pid = next(p for p in range(pid_max - 1, 300, -1) if not os.path.exists("/proc/%d" % p))
    problems = []
    res = run_cmd([h.tool("cr_checkpoint"), "-f", h.path("nopid.ctx"), str(pid)], h.dir, 30)
    problems += one_line_failure("cr_checkpoint -f nopid.ctx %d" % pid, res, [str(pid)])
    res = run_cmd([h.tool("cr_checkpoint"), str(pid)], h.dir, 30)
    problems += one_line_failure("cr_checkpoint %d" % pid, res, [str(pid)])
    for name in ("nopid.ctx", "context.%d" % pid):
        if os.path.exists(h.path(name)):
            problems.append("%s exists after the failed checkpoint" % name)
    expect(problems)


def test_file_deps(h):
    """Files a restart depends on, changed after the checkpoint: a vanished
    open file, an open file replaced by another, a mapped file modified are
    each refused with one line naming the file, nothing started; the folder
    moved elsewhere restarts with --relocate OLD=NEW (open file, mapping and
    working directory found there); with --save-all the program's executable
    and mapped file are saved, and it restarts after both are deleted."""
    h.need_cli()
    h.need_root("restoring the program at its pid")
    h.make_dir("file_deps")
    a, b = h.path("a"), h.path("b")

    def populate(folder):
        os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
        open(os.path.join(folder, "sub", "here"), "w").close()
        with open(os.path.join(folder, "data"), "w") as f:
            f.write("abcdefghij")
        with open(os.path.join(folder, "mapped"), "w") as f:
            f.write("MAPPED" + "x" * 4090)
        shutil.copy(os.path.join(h.testdir, "zdtm_file_deps"), os.path.join(folder, "prog"))

    populate(a)
    prog = Prog([os.path.join(a, "prog"), a])
    pid = h.start(prog, [h.tool("cr_run")])
    ids = all_ids(snapshot(pid))
    ctx = h.path("ctx")
    h.checkpoint(ctx, pid, 60)
    wait_gone(ids, 20, "after cr_checkpoint --kill")
    problems = []

    stasis = h.tool("stasis")
    res = run_cmd([stasis, "verify", ctx], h.dir, 60)
    if res.returncode != 0 or b"every file it needs is here and unchanged" not in res.stdout:
        problems.append("stasis verify of the fresh context: exit %d, %s" % (
            res.returncode, res.stdout.decode(errors="replace").strip()))

    def refused(what, mentions):
        # stasis verify sees it first: exit 1, one line naming the file.
        res = run_cmd([stasis, "verify", ctx], h.dir, 60)
        said = res.stdout.decode(errors="replace")
        named = [l for l in said.splitlines() if all(m in l for m in mentions)]
        if res.returncode != 1 or not named or "cannot be restarted faithfully" not in said:
            problems.append("stasis verify with %s: exit %d, did not name %s: %s" % (
                what, res.returncode, mentions, said.strip()))
        else:
            log("  stasis verify with %s: %s" % (what, named[0]))
        res = run_cmd([h.tool("cr_restart"), ctx], h.dir, 60)
        problems.extend(one_line_failure("cr_restart with %s" % what, res, mentions))
        if os.path.exists("/proc/%d" % pid) and ours(pid):
            problems.append("cr_restart with %s left pid %d behind" % (what, pid))
            kill_ours([pid])

    data = os.path.join(a, "data")
    os.rename(data, data + ".away")
    refused("the open file gone", [data])
    with open(data, "w") as f:
        f.write("abcdefghij")
    refused("the open file replaced by another", [data])
    os.remove(data)
    os.rename(data + ".away", data)
    mapped = os.path.join(a, "mapped")
    with open(mapped, "a") as f:
        f.write("more")
    refused("the mapped file modified", [mapped])
    os.rename(mapped, mapped + ".away")
    refused("the mapped file deleted", [mapped, "is gone"])
    os.rename(mapped + ".away", mapped)
    if problems:
        expect(problems)
    shutil.rmtree(a)

    def fresh(folder):
        for name in ("ready", "check"):
            if os.path.exists(h.path(name)):
                os.remove(h.path(name))
        return h.start(Prog([os.path.join(folder, "prog"), folder]), [h.tool("cr_run")])

    # Moved: checkpoint again from a fresh start, move the folder, relocate.
    populate(a)
    pid = fresh(a)
    ids = all_ids(snapshot(pid))
    h.checkpoint(ctx, pid, 60)
    wait_gone(ids, 20, "after cr_checkpoint --kill")
    os.rename(a, b)
    open(h.path("check"), "w").close()
    res = run_cmd([h.tool("cr_restart"), "--relocate", "%s=%s" % (a, b), ctx], h.dir, 60)
    text = read_text(h.path("test.log"))
    if res.returncode != 0 or "PASS file_deps" not in text:
        problems.append("cr_restart --relocate %s=%s: exit %d, %s %s" % (
            a, b, res.returncode, tail(h.path("test.log")), res.stderr.decode(errors="replace").strip()))
    else:
        log("  moved folder restarted with --relocate: PASS")
    # --save-all: the executable and the mapped file come from the context.
    pid = fresh(b)
    ids = all_ids(snapshot(pid))
    h.checkpoint(ctx, pid, 60, extra=("--kill", "--save-all"))
    wait_gone(ids, 20, "after cr_checkpoint --kill --save-all")
    os.remove(os.path.join(b, "prog"))
    os.remove(os.path.join(b, "mapped"))
    open(h.path("check"), "w").close()
    res = run_cmd([h.tool("cr_restart"), ctx], h.dir, 60)
    text = read_text(h.path("test.log"))
    if res.returncode != 0 or text.count("PASS file_deps") < 2:
        problems.append("cr_restart of a --save-all context after the executable and the mapped file were "
                        "deleted: exit %d, %s %s" % (res.returncode, tail(h.path("test.log")),
                                                     res.stderr.decode(errors="replace").strip()))
    else:
        log("  --save-all: restarted with its executable and mapped file deleted: PASS")
    expect(problems)


def test_stdio_targets(h):
    """A counter whose stdout is a pipe to a process outside the checkpoint:
    cr_restart --stdout FILE reattaches it to FILE (not to cr_restart's own
    stdout), and the counts go on there from where they stopped."""
    h.need_cli()
    h.need_root("restoring the counter at its pid")
    prog = PROGRAMS["counter"]
    h.make_dir("stdio_targets")
    pid = h.start(prog, [h.tool("cr_run")], pipe_out=True)
    time.sleep(0.3)
    ids = all_ids(snapshot(pid))
    h.checkpoint(h.path("ctx"), pid, prog.cr_timeout)
    wait_gone(ids, 20, "after cr_checkpoint --kill")
    time.sleep(0.2)  # the logger has written what the pipe held
    before = counts_in(h.path("test.log"))
    target = h.path("elsewhere.out")
    rpid = spawn([h.tool("cr_restart"), "--stdout", target, h.path("ctx")], h.dir, dict(os.environ),
                 h.path("restart.out"), h.path("test.err"))
    deadline = time.monotonic() + 30
    while len(counts_in(target)) < 3 and time.monotonic() < deadline:
        if REAPER.done(rpid) is not None:
            break
        time.sleep(0.02)
    after = counts_in(target)
    mine = counts_in(h.path("restart.out"))
    kill_ours([pid])
    REAPER.wait(rpid, 10)
    problems = []
    if len(after) < 3:
        problems.append("the restored counter wrote %d counts to --stdout's file (stderr: %s)" % (
            len(after), tail(h.path("test.err"), 3)))
    elif not before or after[0] != before[-1] + 1:
        problems.append("counts in the --stdout file start at %d, want %d (the next after %s)" % (
            after[0], (before[-1] + 1) if before else -1, before[-3:]))
    if mine:
        problems.append("cr_restart's own stdout got %d counts: the pipe was not reattached to --stdout" % len(mine))
    if not problems:
        log("  counts %d..%d before, %d.. in the --stdout file" % (before[0], before[-1], after[0]))
    expect(problems)


def test_tcp_continue(h):
    """The tcp program checkpointed with the tree left running (--cont):
    the capture took both ends in and out of repair mode, and the running
    connections go on exactly (the program checks every byte)."""
    h.need_cli()
    h.need_root("TCP repair mode needs CAP_NET_ADMIN")
    prog = PROGRAMS["tcp"]
    h.make_dir("tcp_continue")
    pid = h.start(prog, [h.tool("cr_run")])
    ctx = h.path("ctx")
    h.checkpoint(ctx, pid, 120, extra=("--cont",))
    tcp_queues_check(h, ctx)
    h.request_check()
    code = REAPER.wait(pid, 90)
    text = open(h.path("test.log"), errors="replace").read()
    if code != 0 or "PASS tcp" not in text.splitlines():
        raise Fail("the program after a --cont checkpoint exited %s: %s" % (
            code, tail(h.path("test.log"))))


def test_neg_tcp_unprivileged(h):
    """A user's own direct cr_checkpoint (no stasisd) of a program with TCP
    connections inside it: refused with one line naming the connection and
    CAP_NET_ADMIN (repair mode needs it), no context written, the program
    runs on and finishes correctly."""
    h.need_cli()
    h.need_root("creating users and running processes as them")
    if not shutil.which("setpriv"):
        raise Skip("setpriv is not installed (util-linux)")
    owner = ensure_user("stasis-zdtm-owner")
    prog = PROGRAMS["tcp"]
    h.make_dir("neg_tcp_unprivileged")
    os.chmod(h.dir, 0o755)
    os.chown(h.dir, owner.pw_uid, owner.pw_gid)
    env = h.env(prog)
    env.update({"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    for name in ("test.log", "test.err"):
        open(h.path(name), "a").close()
        os.chown(h.path(name), owner.pw_uid, owner.pw_gid)
    launcher = spawn(as_user(owner, [h.tool("cr_run")] + h.resolve(prog.argv)), h.dir, env,
                     h.path("test.log"), h.path("test.err"))
    deadline = time.monotonic() + prog.ready_timeout
    while not os.path.exists(h.path("ready")):
        if REAPER.done(launcher) is not None or time.monotonic() > deadline:
            raise Fail("the program did not start as %s: %s" % (owner.pw_name,
                                                             tail(h.path("test.err"))))
        time.sleep(0.01)
    pid = int(read_text(h.path("ready")).split()[1])
    ctx = h.path("ctx")
    res = run_cmd(as_user(owner, [h.tool("cr_checkpoint"), "--no-daemon", "-f", ctx, str(pid)]),
                  h.dir, 60, env=env)
    problems = one_line_failure("a user's cr_checkpoint --no-daemon of TCP connections", res,
                                ["CAP_NET_ADMIN"])
    err = res.stderr.decode(errors="replace")
    if "TCP 127.0.0.1:" not in err and "TCP [::1]:" not in err:
        problems.append("the error does not name the connection: %r" % err.strip())
    if os.path.exists(ctx):
        problems.append("a context exists after the refused checkpoint")
    h.request_check()
    code = REAPER.wait(launcher, 90)
    if code != 0 or "PASS tcp" not in read_text(h.path("test.log")).splitlines():
        problems.append("the program after the refusal exited %s: %s" % (
            code, tail(h.path("test.log"))))
    expect(problems)


def test_neg_net_socket(h):
    """A TCP socket leads outside the checkpoint: without --close-sockets
    cr_checkpoint refuses with one line naming the socket and the option,
    writes no context and leaves the process running untouched."""
    h.need_cli()
    prog = PROGRAMS["net_closed"]
    h.make_dir("neg_net_socket")
    prog.prereq(h)
    pid = h.start(prog, [h.tool("cr_run")])
    ctx = h.path("net.ctx")
    res = run_cmd([h.tool("cr_checkpoint"), "-f", ctx, str(pid)], h.dir, 60)
    # The UDP socket is refused first (fd order); TCP connections leading
    # outside once every fd is seen (fd/tcp_socket.cc).
    problems = one_line_failure("cr_checkpoint of a process with TCP sockets", res,
                                ["TCP 127.0.0.1:", "UDP 127.0.0.1:"])
    err = res.stderr.decode(errors="replace")
    if "--close-sockets" not in err:
        problems.append("the error does not name --close-sockets: %r" % err.strip())
    if os.path.exists(ctx):
        problems.append("net.ctx exists after the refused checkpoint")
    state, tracer = state_of(pid)
    if state is None or state in "TtZX" or tracer != "0":
        problems.append("the process after the refusal: state %s, tracer %s" % (state, tracer))
    kill_ours([pid])
    expect(problems)


def test_neg_corrupt_file(h):
    h.need_cli()
    h.need_root("restoring the good context file at its original pid")
    prog = PROGRAMS["counter"]
    h.make_dir("neg_corrupt_file")
    pid = h.start(prog, [h.tool("cr_run")])
    snap = snapshot(pid)
    good = h.path("good.ctx")
    h.checkpoint(good, pid, 60)
    wait_gone(all_ids(snap), 20, "after cr_checkpoint --kill")
    with open(good, "rb") as f:
        orig = f.read()
    if len(orig) < 2:
        raise Fail("good.ctx has only %d bytes" % len(orig))
    middle = len(orig) // 2
    bad = h.path("flipped.ctx")
    with open(bad, "wb") as f:
        f.write(orig[:middle] + bytes([orig[middle] ^ 0xFF]) + orig[middle + 1:])
    short = h.path("truncated.ctx")
    with open(short, "wb") as f:
        f.write(orig[:middle])
    log("  flipped.ctx: byte %d of %d flipped (0x%02x -> 0x%02x); truncated.ctx: first %d "
        "bytes" % (middle, len(orig), orig[middle], orig[middle] ^ 0xFF, middle))
    problems = []
    stasis = os.path.join(h.bindir, "stasis")
    for path in (bad, short):
        base = os.path.basename(path)
        if os.access(stasis, os.X_OK):
            res = run_cmd([stasis, "verify", path], h.dir, 60)
            problems += one_line_failure("stasis verify %s" % base, res, [base])
        res = run_cmd([h.tool("cr_restart"), path], h.dir, 60)
        problems += one_line_failure("cr_restart %s" % base, res, [base])
        time.sleep(0.2)
        REAPER.poll()
        leftovers = [p for p in all_ids(snap) if os.path.exists("/proc/%d" % p)]
        leftovers += descendants(os.getpid())
        if leftovers:
            problems.append("after the failed cr_restart %s, processes remain: %s" %
                            (base, sorted(set(leftovers))))
            kill_ours(set(leftovers))
            wait_gone(set(leftovers), 10, "cleanup")
    # Control: the unmodified file still restores and the program passes.
    owner = h.restart(good)
    h.wait_restored(snap, pid, owner, 60, "restore of good.ctx")
    h.request_check()
    code = REAPER.wait(owner, 60)
    if code != 0 or "PASS counter" not in open(h.path("test.log")).read():
        problems.append("restoring the intact good.ctx: cr_restart exited %s: %s" %
                        (code, tail(h.path("test.log"))))
    expect(problems)


def ensure_user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    res = run_cmd(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                   "--shell", "/usr/sbin/nologin", name], "/", 30)
    if res.returncode != 0 and b"already exists" not in res.stderr:
        raise Skip("useradd %s failed: %s" % (name, res.stderr.decode(errors="replace").strip()))
    return pwd.getpwnam(name)


def as_user(user, argv):
    return ["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid,
            "--init-groups", "--"] + argv


def test_neg_other_user(h):
    h.need_cli()
    h.need_root("creating users and running processes as them")
    if not shutil.which("setpriv"):
        raise Skip("setpriv is not installed (util-linux)")
    owner = ensure_user("stasis-zdtm-owner")
    other = ensure_user("stasis-zdtm-other")
    h.make_dir("neg_other_user")
    os.chmod(h.dir, 0o711)
    dirs = {}
    for user in (owner, other):
        d = h.path(user.pw_name)
        os.mkdir(d, 0o700)
        os.chown(d, user.pw_uid, user.pw_gid)
        dirs[user.pw_name] = d
    for tool in ("cr_run", "cr_checkpoint"):
        res = run_cmd(as_user(other, ["test", "-x", h.tool(tool)]), "/", 10)
        if res.returncode != 0:
            raise Skip("user %s cannot execute %s (a folder on its path is not "
                       "world-searchable)" % (other.pw_name, h.tool(tool)))
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    argv = as_user(owner, [h.tool("cr_run"), "/bin/sleep", "120"])
    pid = spawn(argv, dirs[owner.pw_name], env, h.path("test.log"), h.path("test.err"))
    deadline = time.monotonic() + 10
    while True:
        try:
            if read_text("/proc/%d/comm" % pid).strip() == "sleep":
                break
        except Gone:
            pass
        if REAPER.done(pid) is not None or time.monotonic() > deadline:
            raise Fail("cr_run sleep as %s did not start: %s" % (owner.pw_name,
                                                                tail(h.path("test.err"))))
        time.sleep(0.01)
    problems = []
    target = os.path.join(dirs[other.pw_name], "stolen.ctx")
    res = run_cmd(as_user(other, [h.tool("cr_checkpoint"), "-f", target, str(pid)]),
                  dirs[other.pw_name], 60, env=env)
    problems += one_line_failure("cr_checkpoint by %s of %s's pid %d" % (
        other.pw_name, owner.pw_name, pid), res, [str(pid)])
    if os.path.exists(target):
        problems.append("stolen.ctx exists after the refused checkpoint")
    time.sleep(0.1)
    state, tracer = state_of(pid)
    if state is None or state in "TtZX" or tracer != "0":
        problems.append("the victim after the refused checkpoint: state %s, tracer %s" %
                        (state, tracer))
    # Control: the owner may checkpoint its own process, so the refusal above
    # was about ownership and not a failure of any checkpoint.
    own = os.path.join(dirs[owner.pw_name], "own.ctx")
    res = run_cmd(as_user(owner, [h.tool("cr_checkpoint"), "-f", own, str(pid)]),
                  dirs[owner.pw_name], 60, env=env)
    if res.returncode != 0 or not os.path.isfile(own):
        problems.append("control: %s could not checkpoint its own pid %d (exit %d: %s)" % (
            owner.pw_name, pid, res.returncode, res.stderr.decode(errors="replace").strip()))
    expect(problems)



def test_unprivileged(h):
    """An ordinary user checkpoints and restarts its own counter, twice, with
    --no-restore-pid (choosing pids needs privilege); the count goes on with
    no number lost or repeated. Another user cannot restart the owner's
    context file."""
    h.need_cli()
    h.need_root("creating users and running processes as them")
    if not shutil.which("setpriv"):
        raise Skip("setpriv is not installed (util-linux)")
    owner = ensure_user("stasis-zdtm-owner")
    other = ensure_user("stasis-zdtm-other")
    prog = PROGRAMS["counter"]
    h.make_dir("unprivileged")
    os.chmod(h.dir, 0o755)
    os.chown(h.dir, owner.pw_uid, owner.pw_gid)
    for tool in ("cr_run", "cr_checkpoint", "cr_restart"):
        res = run_cmd(as_user(owner, ["test", "-x", h.tool(tool)]), "/", 10)
        if res.returncode != 0:
            raise Skip("user %s cannot execute %s" % (owner.pw_name, h.tool(tool)))
    env = h.env(prog)
    env.update({"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    argv = as_user(owner, [h.tool("cr_run")] + h.resolve(prog.argv))
    for name in ("test.log", "test.err"):
        open(h.path(name), "a").close()
        os.chown(h.path(name), owner.pw_uid, owner.pw_gid)
    launcher = spawn(argv, h.dir, env, h.path("test.log"), h.path("test.err"))
    deadline = time.monotonic() + prog.ready_timeout
    while not os.path.exists(h.path("ready")):
        if REAPER.done(launcher) is not None or time.monotonic() > deadline:
            raise Fail("the counter did not start as %s: %s" % (owner.pw_name,
                                                             tail(h.path("test.err"))))
        time.sleep(0.01)
    pid = int(read_text(h.path("ready")).split()[1])
    restarts = []
    for rnd in (1, 2):
        time.sleep(0.3)
        ctx = h.path("ctx%d" % rnd)
        res = run_cmd(as_user(owner, [h.tool("cr_checkpoint"), "--kill", "-f", ctx, str(pid)]),
                      h.dir, 60, env=env)
        if res.returncode != 0:
            raise Fail("round %d: cr_checkpoint as %s exited %d: %s" % (
                rnd, owner.pw_name, res.returncode, res.stderr.decode(errors="replace").strip()))
        st = os.stat(ctx)
        if st.st_uid != owner.pw_uid or st.st_mode & 0o077:
            raise Fail("round %d: the context is owned by uid %d with mode %o, want uid %d, "
                       "0600" % (rnd, st.st_uid, st.st_mode & 0o777, owner.pw_uid))
        if rnd == 1:
            # Another user may not restore the owner's context.
            res = run_cmd(as_user(other, [h.tool("cr_restart"), ctx]), "/", 30,
                          env={"PATH": "/usr/bin:/bin"})
            problems = one_line_failure("cr_restart by %s of %s's context" % (
                other.pw_name, owner.pw_name), res, ["ctx1"])
            expect(problems)
        before = counts_in(h.path("test.log"))
        rpid = spawn(as_user(owner, [h.tool("cr_restart"), "--no-restore-pid", ctx]), h.dir,
                     env, h.path("test.log"), h.path("test.err"))
        restarts.append(rpid)
        deadline = time.monotonic() + 30
        while len(counts_in(h.path("test.log"))) < len(before) + 2:
            if REAPER.done(rpid) is not None or time.monotonic() > deadline:
                raise Fail("round %d: the restarted counter does not count: %s; stderr: %s" % (
                    rnd, tail(h.path("test.log")), tail(h.path("test.err"), 3)))
            time.sleep(0.02)
        # The restored counter runs under a new pid: the child of cr_restart.
        kids = read_text("/proc/%d/task/%d/children" % (rpid, rpid)).split()
        if len(kids) != 1:
            raise Fail("round %d: cr_restart has children %s, want one" % (rnd, kids))
        pid = int(kids[0])
        uid = int(read_text("/proc/%d/status" % pid).split("Uid:")[1].split()[0])
        if uid != owner.pw_uid:
            raise Fail("round %d: the restored counter runs as uid %d, want %d" % (
                rnd, uid, owner.pw_uid))
    h.request_check()
    code = REAPER.wait(restarts[-1], 60)
    problems = []
    if code != 0 or "PASS counter" not in read_text(h.path("test.log")):
        problems.append("the second cr_restart exited %s: %s" % (code, tail(h.path("test.log"))))
    problem = check_counts(counts_in(h.path("test.log")))
    if problem:
        problems.append("counts: " + problem)
    expect(problems)

def test_neg_disk_full(h):
    h.need_cli()
    h.need_root("mounting a 1 MiB tmpfs")
    prog = PROGRAMS["mem1g_private"]
    h.make_dir("neg_disk_full")
    full = h.path("full")
    os.mkdir(full)
    res = run_cmd(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", full], "/", 30)
    if res.returncode != 0:
        raise Skip("mount tmpfs: %s" % res.stderr.decode(errors="replace").strip())
    h.mounts.append(full)
    pid = h.start(prog, [h.tool("cr_run")])
    target = os.path.join(full, "mem.ctx")
    problems = []
    previous = b"previous good context file\n" * 150
    for case in ("no previous file", "previous file present"):
        for leftover in os.listdir(full):
            os.unlink(os.path.join(full, leftover))
        if case == "previous file present":
            with open(target, "wb") as f:
                f.write(previous)
        res = run_cmd([h.tool("cr_checkpoint"), "--kill", "-f", target, str(pid)], h.dir,
                      prog.cr_timeout)
        problems += one_line_failure("cr_checkpoint into a full disk (%s)" % case, res,
                                     ["mem.ctx", "No space", "space"])
        names = sorted(os.listdir(full))
        if case == "no previous file":
            if names:
                problems.append("%s: files left in the full folder: %s" % (case, names))
        else:
            with open(target, "rb") as f:
                if f.read() != previous:
                    problems.append("%s: mem.ctx changed by the failed checkpoint" % case)
            if names != ["mem.ctx"]:
                problems.append("%s: folder holds %s, want only mem.ctx" % (case, names))
        time.sleep(0.1)
        state, tracer = state_of(pid)
        if state is None or state in "TtZX" or tracer != "0":
            problems.append("%s: after the failed checkpoint --kill the program is %s "
                            "(tracer %s); it must keep running" %
                            (case, "gone" if state is None else "in state " + state, tracer))
            expect(problems)
    h.request_check()
    code = REAPER.wait(pid, 120)
    if code != 0:
        problems.append("the program after the failed checkpoints exited %s: %s" %
                        (code, tail(h.path("test.log"))))
    expect(problems)


def test_pid_taken(h):
    """Checkpoint without --kill: the original keeps its pid. cr_restart must
    still restore a copy (in a fresh pid namespace), and so must
    cr_restart --no-restore-pid; each copy continues counting from the value
    at the checkpoint, into its own log, while the original counts on."""
    h.need_cli()
    h.need_root("restoring into a new pid namespace")
    prog = PROGRAMS["counter"]
    h.make_dir("pid_taken")
    pid = h.start(prog, [h.tool("cr_run")], pipe_out=True)
    time.sleep(0.3)
    low = counts_in(h.path("test.log"))[-1]
    h.checkpoint(h.path("ctx"), pid, prog.cr_timeout, extra=())
    high = counts_in(h.path("test.log"))[-1]
    state, tracer = state_of(pid)
    if state is None or state in "TtZX" or tracer != "0":
        raise Fail("the original after cr_checkpoint (no --kill): state %s, tracer %s" %
                   (state, tracer))
    copies = {}
    for variant, extra in (("plain", ()), ("no-restore-pid", ("--no-restore-pid",))):
        out = "copy-%s.log" % variant
        copies[variant] = (h.restart(h.path("ctx"), extra, out=out), out)
    problems = []
    deadline = time.monotonic() + 30
    for variant, (rpid, out) in copies.items():
        while len(counts_in(h.path(out))) < 3:
            code = REAPER.done(rpid)
            if code is not None or time.monotonic() > deadline:
                problems.append("cr_restart (%s) with the pid taken: %s; log: %s; stderr: %s" % (
                    variant, "exited %d" % code if code is not None else "no 3 counts in 30 s",
                    tail(h.path(out)), tail(h.path("test.err"), 3)))
                break
            time.sleep(0.02)
    n_before = len(counts_in(h.path("test.log")))
    time.sleep(0.3)
    if len(counts_in(h.path("test.log"))) <= n_before:
        problems.append("the original stopped counting while the copies ran")
    h.request_check()
    if REAPER.wait(pid, 30) != 0:
        problems.append("the original did not exit 0: %s" % tail(h.path("test.log")))
    for variant, (rpid, out) in copies.items():
        code = REAPER.wait(rpid, 30)
        counts = counts_in(h.path(out))
        text = open(h.path(out), errors="replace").read()
        if code != 0 or "PASS counter" not in text:
            problems.append("copy (%s): cr_restart exited %s: %s" % (variant, code,
                                                                    tail(h.path(out))))
        if counts and not low + 1 <= counts[0] <= high + 1:
            problems.append("copy (%s) started at count %d, want %d..%d (the value at the "
                            "checkpoint + 1)" % (variant, counts[0], low + 1, high + 1))
        if counts and counts != list(range(counts[0], counts[0] + len(counts))):
            problems.append("copy (%s): counts are not continuous: %s" % (variant, counts[:20]))
    problem = check_counts(counts_in(h.path("test.log")))
    if problem:
        problems.append("the original's counts: %s" % problem)
    expect(problems)


SPECIAL = {
    "pid_taken": test_pid_taken,
    "neg_missing_file": test_neg_missing_file,
    "neg_corrupt_file": test_neg_corrupt_file,
    "neg_net_socket": test_neg_net_socket,
    "tcp_continue": test_tcp_continue,
    "neg_tcp_unprivileged": test_neg_tcp_unprivileged,
    "stdio_targets": test_stdio_targets,
    "file_deps": test_file_deps,
    "neg_no_such_pid": test_neg_no_such_pid,
    "neg_other_user": test_neg_other_user,
    "unprivileged": test_unprivileged,
    "neg_disk_full": test_neg_disk_full,
}


# --------------------------------------------------------------------------
# Selftest: every program without checkpoints, plus the harness's own checks.

SELFTEST = [
    ("counter", {}), ("threads4", {}), ("threads32", {}), ("mem64m", {}),
    ("mem64m_private", {}),
    ("fpu_avx", {}), ("fpu_avx", {"ZDTM_FPU_ISA": "avx"}), ("fpu_avx", {"ZDTM_FPU_ISA": "sse"}),
    ("tree3", {}), ("counter_sh", {}), ("counter_py", {}), ("counter_pl", {}),
    # Issue 3, process state coverage.
    ("files", {}), ("unlinked", {}), ("pipes", {}), ("fifo", {}), ("socketpair", {}),
    ("unix_listen", {}), ("unix_backlog", {}), ("shm_fork", {}), ("file_mmap", {}),
    ("sysv_shm", {}), ("posix_shm", {}), ("hugetlb", {}), ("signals", {}), ("itimers", {}),
    ("posix_timer", {}), ("eventfd", {}), ("prctl", {}),
    ("rseq", {}), ("robust_futex", {}), ("stopped", {}), ("zombie", {}), ("pty", {}),
    ("openmp", {}), ("mixed", {}), ("pipes_half_closed", {}), ("tcp", {}),
]


def run_undo(h):
    """Runs what prereqs registered in h.undo, once the processes are gone; a
    failure is logged, not raised (it must not hide the test's verdict)."""
    for undo in reversed(h.undo):
        try:
            undo()
        except OSError as e:
            log("  cleanup: %s" % e)
    h.undo.clear()


def selftest_one(h, name, extra_env, corrupt):
    prog = PROGRAMS[name]
    label = "%s%s %s" % (name, "".join(" %s=%s" % kv for kv in extra_env.items()),
                         "corrupted" if corrupt else "intact")
    h.make_dir(name)
    env = dict(extra_env)
    if corrupt:
        env["ZDTM_SELFTEST_CORRUPT"] = "1"
    if prog.prereq:
        prog.prereq(h)
    pid = h.start(prog, [], env)
    problems = []
    time.sleep(0.1)
    # Two looks 0.5 s apart must match; up to five pairs, because a look can
    # catch a moment the program passes through (bash blocks SIGCHLD for an
    # instant in every `read -t`), as run's own comparison polls until it
    # matches. A program whose /proc keeps changing still fails.
    for _ in range(5):
        first = snapshot(pid)
        time.sleep(0.5)
        diffs = compare(first, snapshot(pid), pid, states=prog.states)
        if not diffs:
            break
    if diffs:  # the program's /proc must hold still, or run's comparison would be noise
        problems.append("/proc changed between two looks 0.5 s apart: %s" % "; ".join(diffs[:5]))
    h.request_check()
    code = REAPER.wait(pid, 60)
    text = open(h.path("test.log"), errors="replace").read()
    verdicts = [line for line in text.splitlines() if line.startswith(("PASS ", "FAIL "))]
    said = prog.verdict or name
    if corrupt:
        if code != 1 or len(verdicts) != 1 or not verdicts[0].startswith("FAIL %s: " % said):
            problems.append("want exit 1 and one 'FAIL %s: ...' line, got exit %s, %s" % (
                said, code, verdicts))
    elif code != 0 or verdicts != ["PASS %s" % said]:
        problems.append("want exit 0 and 'PASS %s', got exit %s, %s" % (said, code, verdicts))
    if prog.counts:
        problem = check_counts(counts_in(h.path("test.log")))
        if corrupt and problem is None:
            problems.append("the log check missed the skipped count")
        elif not corrupt and problem:
            problems.append("log counts: %s" % problem)
    wait_gone(all_ids(first), 10, "after the program ended")
    detail = verdicts[0] if verdicts else "no verdict"
    if problems:
        log("FAIL selftest %s: %s" % (label, "; ".join(problems)))
    else:
        log("ok   selftest %s: %s" % (label, detail))
    if not problems and not h.keep:
        shutil.rmtree(h.dir, ignore_errors=True)
    return not problems


def selftest_compare():
    """The comparison itself must see a change in each kind of state."""
    me = snapshot(os.getpid())[os.getpid()]
    base = {1000: me}
    problems = []
    mutations = {
        "maps": lambda p: p["maps"].__setitem__(0, p["maps"][0][:2] + ("---p",) + p["maps"][0][3:]),
        "status": lambda p: p["status"].__setitem__("SigBlk", "ffffffffffffffff"),
        "fds": lambda p: p["fds"].__setitem__(99, ("pipe:#77", "0")),
        "threads": lambda p: p["threads"].__setitem__(424242, {k: "x" for k in THREAD_FIELDS}),
        "environ": lambda p: p.__setitem__("environ", b"X=1"),
    }
    for what, mutate in mutations.items():
        other = copy.deepcopy(me)
        mutate(other)
        if not compare(base, {1000: other}, 1000):
            problems.append("compare() missed a change in %s" % what)
    if compare(base, {1000: copy.deepcopy(me)}, 1000):
        problems.append("compare() reports a difference between equal snapshots")
    if check_counts([1, 2, 3]) or not check_counts([1, 2, 4]) or not check_counts([1, 2, 2]):
        problems.append("check_counts() is wrong")
    log(("FAIL selftest compare: %s" % "; ".join(problems)) if problems
        else "ok   selftest compare: maps, status, fds, threads, environ changes all seen")
    return not problems


def selftest(h, names):
    ok = selftest_compare()
    for name, extra in SELFTEST:
        if names and name not in names:
            continue
        for corrupt in (False, True):
            try:
                ok &= selftest_one(h, name, extra, corrupt)
            except Skip as e:
                log("SKIPPED selftest %s: %s" % (name, e))
            except Fail as e:
                log("FAIL selftest %s: %s" % (name, e))
                ok = False
            finally:
                cleanup_processes()
                run_undo(h)
    return ok


# --------------------------------------------------------------------------

def drop_big_files(folder, limit=64 << 20):
    """Removes files over limit from a kept folder (a failed mem1g run would
    otherwise leave gigabytes of context files in /tmp on every run)."""
    dropped = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.path.getsize(path) > limit:
            os.unlink(path)
            dropped.append(name)
    return "; removed large files: %s" % ", ".join(dropped) if dropped else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bindir", required=True, help="folder with cr_run, cr_checkpoint, "
                    "cr_restart, stasis")
    ap.add_argument("--testdir", required=True, help="folder with the built zdtm_* programs")
    ap.add_argument("--require-cli", action="store_true",
                    help="a missing CLI binary is a failure, not a skip")
    ap.add_argument("--workdir", help="where to make per-test temp folders (default $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep temp folders of passing tests")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="checkpoint/restart tests")
    p_run.add_argument("names", nargs="+", choices=sorted(list(PROGRAMS) + list(SPECIAL)))
    p_self = sub.add_parser("selftest", help="the programs and the harness, no checkpoint")
    p_self.add_argument("names", nargs="*")
    sub.add_parser("list", help="list test names")
    args = ap.parse_args()

    if args.cmd == "list":
        print("\n".join(sorted(list(PROGRAMS) + list(SPECIAL))))
        return 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    become_subreaper()
    h = Harness(args)

    if args.cmd == "selftest":
        try:
            ok = selftest(h, args.names)
        finally:
            cleanup_processes()
        log("PASS selftest" if ok else "FAIL selftest")
        return 0 if ok else 1

    status = 0
    for name in args.names:
        result, code = "PASS %s" % name, 0
        try:
            if name in SPECIAL:
                SPECIAL[name](h)
            else:
                h.run_program(name)
        except Skip as e:
            result, code = "SKIPPED %s: %s" % (name, e), SKIP_CODE
        except Fail as e:
            result, code = "FAIL %s: %s" % (name, e), 1
        except KeyboardInterrupt as e:
            result, code = "FAIL %s: interrupted (%s)" % (name, e), 1
        finally:
            cleanup_processes()
            run_undo(h)
            for mnt in reversed(h.mounts):
                if run_cmd(["umount", mnt], "/", 30).returncode != 0:
                    run_cmd(["umount", "-l", mnt], "/", 30)
            h.mounts.clear()
        if h.dir and (code == 1 or h.keep):
            result += "\n  (files kept in %s%s)" % (h.dir, drop_big_files(h.dir))
        elif h.dir:
            shutil.rmtree(h.dir, ignore_errors=True)
        h.dir = None
        log(result)
        if code == 1 or (code == SKIP_CODE and status == 0):
            status = code
    return status


if __name__ == "__main__":
    sys.exit(main())
