#!/usr/bin/env python3
"""The checkpoint store with real processes, the real tools and real restarts.

usage: run_store.py BUILD_DIR CASE      (CASE: faults, faults_no_rename_flags, corruption, enospc, users, config)

faults      A self-checking program (test/zdtm mem: memory rebuilt from a seed
            at check time) gets epoch 1 from `cr_checkpoint --dir`; then
            store_fault_tool (the same code with a fault-injecting Env) tries
            epoch 2 with, in turn, ENOSPC and EIO at every operation of the
            commit protocol, a crash before every operation (with and without
            the loss of unsynced data) and a real SIGKILL before every
            operation. After each: `stasis ls` shows no corrupt epoch, epoch 1
            complete, the new one absent or incomplete (complete only where
            its MANIFEST rename had happened), and `cr_restart JOBDIR`
            restores the newest complete epoch, which checks its memory and
            prints PASS. The original program, which went through all those
            failed checkpoints, must PASS as well.
faults_no_rename_flags  The same where renameat2's flags are refused (EINVAL,
            as GlusterFS's FUSE client and NFS do): MANIFEST is linked into
            place and the temporary name removed; every operation from the
            refused rename on is faulted.
corruption  A flipped byte, a truncated and an extended node file and an
            edited MANIFEST: `stasis verify` names the file (and section),
            `cr_restart EPOCHDIR` refuses, `cr_restart JOBDIR` says so and
            falls back to the previous epoch, which PASSes.
enospc      A small tmpfs: a checkpoint that cannot fit fails before writing,
            with both figures; the previous epoch stays and restarts.
users       Another user can neither list, verify nor restart a user's job
            folder; a user's folder planted as a symlink is refused.
Exit 77 (CTest SKIP_RETURN_CODE) with "SKIPPED: why" when a prerequisite is
missing.
"""
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from test_users import ensure_users  # noqa: E402

BUILD = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "build"
CLI = os.path.join(BUILD, "engine", "cli")
TOOL = os.path.join(BUILD, "test", "store", "store_fault_tool")
PROG = os.path.join(BUILD, "test", "zdtm", "zdtm_mem")
WORK = None
FAILURES = []


def skip(why):
    print(f"SKIPPED: {why}")
    sys.exit(77)


def fail(msg):
    FAILURES.append(msg)
    print(f"FAIL: {msg}", flush=True)


def run(argv, timeout=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


class Program:
    """One zdtm_mem process speaking the READY/CHECK protocol."""

    def __init__(self, name, size="8M", user=None):
        self.dir = os.path.join(WORK, name)
        os.makedirs(self.dir)
        self.ready = os.path.join(self.dir, "ready")
        self.check = os.path.join(self.dir, "check")
        env = dict(os.environ, ZDTM_READY=self.ready, ZDTM_CHECK=self.check)
        argv = [PROG, size, "private"]
        if user:
            os.chown(self.dir, pwd.getpwnam(user).pw_uid, -1)
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] + argv
        # stdout is a pipe: it leads outside any checkpoint, so a restored
        # copy writes to cr_restart's stdout instead.
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=self.dir, text=True)
        deadline = time.time() + 60
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{PROG} did not become ready: {self.proc.stdout.read()}")
            time.sleep(0.02)
        self.pid = int(open(self.ready).read().split()[1])

    def finish(self, what):
        open(self.check, "w").close()
        try:
            out, _ = self.proc.communicate(timeout=60)
            rc = self.proc.returncode
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            rc = "timeout"
        if rc != 0 or "PASS" not in out:
            fail(f"{what}: the original program ended with {rc}: {out.strip()[-300:]}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ls(job):
    """{epoch: (state, problem)} from `stasis ls JOB`."""
    r = run([os.path.join(CLI, "stasis"), "ls", job])
    epochs = {}
    for line in r.stdout.splitlines()[1:]:
        m = re.match(r"\S+\s+(\d+)\s+(\w+)\s.*?(?:  # (.*))?$", line)
        if m:
            epochs[int(m.group(1))] = (m.group(2), m.group(3) or "")
    return r.returncode, epochs, r.stdout + r.stderr


def restart(path, expect_epoch, what, user=None, pass_expected=True):
    """cr_restart PATH with the CHECK file present: the restored program
    verifies itself at once. Returns (rc, stdout, stderr)."""
    argv = [os.path.join(CLI, "cr_restart"), "--no-daemon", path]
    if user:  # without stasisd, a user cannot choose pids
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] + argv[:2] + \
            ["--no-restore-pid", path]
    r = run(argv, timeout=120)
    if pass_expected:
        said = re.findall(r"restarting from \S+ \(epoch (\d+)", r.stderr)
        if not said or int(said[-1]) != expect_epoch:
            fail(f"{what}: cr_restart did not say it restarts epoch {expect_epoch}: {r.stderr.strip()}")
        elif r.returncode != 0 or "PASS" not in r.stdout:
            fail(f"{what}: restored epoch {expect_epoch} did not PASS (rc {r.returncode}): "
                 f"{r.stdout.strip()[-300:]} {r.stderr.strip()[-300:]}")
    return r


def checkpoint(job, pid, what, extra=()):
    r = run([os.path.join(CLI, "cr_checkpoint"), "--no-daemon", "--dir", job, *extra, str(pid)])
    if r.returncode != 0:
        fail(f"{what}: cr_checkpoint --dir failed: {r.stderr.strip()}")
    return r


def case_faults(no_rename_flags=False):
    """no_rename_flags: every rename with flags is refused (EINVAL), as on
    GlusterFS's FUSE client and NFS, so MANIFEST is linked into place; only
    the operations from the refused rename on differ from the plain case, so
    only they are faulted."""
    prog = Program("faults")
    flags = ["--no-rename-flags"] if no_rename_flags else []
    jobs = []  # (job, newest complete epoch expected, what)
    try:
        probe = os.path.join(WORK, "probe")
        checkpoint(probe, prog.pid, "probe")
        r = run([TOOL, "--dir", probe, "--count", *flags, str(prog.pid)])
        m = re.search(r"ops (\d+)", r.stdout)
        if r.returncode != 0 or not m:
            raise SystemExit(f"store_fault_tool --count failed: {r.stdout} {r.stderr}")
        total = int(m.group(1))
        ops = [l[3:] for l in r.stderr.splitlines() if l.startswith("op ")]
        print(f"one epoch = {total} operations: " + "; ".join(ops), flush=True)
        modes = [("ENOSPC", ["--fail-at", "{n}:28"]), ("EIO", ["--fail-at", "{n}:5"]),
                 ("crash", ["--crash-at", "{n}"]), ("power loss", ["--crash-at", "{n}", "--power-loss"]),
                 ("SIGKILL", ["--kill-at", "{n}"])]
        first = 1
        if no_rename_flags:
            first = next(i + 1 for i, o in enumerate(ops) if o.split()[1] == "rename")
            if not any(o.split()[1] == "link" for o in ops):
                raise SystemExit("with rename flags refused, the commit did not link: " + "; ".join(ops))
        for label, args in modes:
            for n in range(first, total + 1):
                what = f"{label} before op {ops[n - 1]}"
                job = os.path.join(WORK, "jobs", f"{label.replace(' ', '_')}-{n}")
                os.makedirs(os.path.dirname(job), exist_ok=True)
                checkpoint(job, prog.pid, what)
                r = run([TOOL, "--dir", job, *[a.format(n=n) for a in args], *flags, str(prog.pid)])
                if label == "SIGKILL" and r.returncode != -signal.SIGKILL:
                    fail(f"{what}: the tool was not killed (rc {r.returncode})")
                if label != "SIGKILL" and r.returncode == 0:
                    fail(f"{what}: the checkpoint did not fail")
                rc, epochs, text = ls(job)
                if rc != 0 or epochs.get(1, ("",))[0] != "complete":
                    fail(f"{what}: epoch 1 is not complete: {text}")
                newest = 1
                for e, (state, problem) in epochs.items():
                    if state == "corrupt":
                        fail(f"{what}: epoch {e} corrupt: {problem}")
                    if e > 1 and state == "complete":
                        newest = e
                # MANIFEST is in place after the rename, or after the link
                # (a rename refused for its flags changed nothing).
                renamed = any(o.split()[1] == ("link" if no_rename_flags else "rename") for o in ops[:n - 1])
                if newest > 1 and (label in ("ENOSPC", "EIO", "power loss") or not renamed):
                    fail(f"{what}: epoch {newest} is complete: {text}")
                jobs.append((job, newest, what))
        if prog.proc.poll() is not None:
            fail("the program died during the failed checkpoints")
    finally:
        prog.finish("after every fault")
    # The CHECK file exists: every restored program checks itself at once.
    for job, newest, what in jobs:
        restart(job, newest, what)
    print(f"{len(jobs)} faults injected, each followed by a restart", flush=True)


def case_corruption():
    prog = Program("corruption")
    job = os.path.join(WORK, "ckpt", "4711")
    try:
        for _ in range(2):
            checkpoint(job, prog.pid, "corruption setup")
    finally:
        prog.finish("corruption setup")
    node = os.path.join(job, "2", "node0.ctx")
    good = open(node, "rb").read()
    manifest = os.path.join(job, "2", "MANIFEST")
    good_manifest = open(manifest, "rb").read()

    def flip(data, pos):
        return data[:pos] + bytes([data[pos] ^ 0x55]) + data[pos + 1:]

    cases = [("byte flipped in the header", node, flip(good, 10), "node0.ctx"),
             ("byte flipped in the metadata", node, flip(good, 300), "node0.ctx"),
             ("byte flipped in page data", node, flip(good, len(good) // 2), "node0.ctx"),
             ("last byte flipped", node, flip(good, len(good) - 1), "node0.ctx"),
             ("truncated", node, good[:len(good) - 4096], "node0.ctx"),
             ("appended to", node, good + b"\0" * 10, "node0.ctx"),
             ("manifest edited", manifest, good_manifest.replace(b"tasks=0", b"tasks=9"), "MANIFEST")]
    for what, path, data, name in cases:
        with open(path, "wb") as f:
            f.write(data)
        r = run([os.path.join(CLI, "stasis"), "verify", os.path.join(job, "2")])
        if r.returncode == 0 or name not in r.stdout:
            fail(f"{what}: stasis verify did not name {name}: {r.stdout} {r.stderr}")
        print(f"{what}: verify says: {r.stdout.strip()}", flush=True)
        r = restart(os.path.join(job, "2"), 2, what, pass_expected=False)
        if r.returncode == 0 or name not in r.stderr:
            fail(f"{what}: cr_restart of the epoch did not refuse naming {name}: {r.stderr}")
        # The job folder falls back to epoch 1, and says why.
        r = restart(job, 1, what)
        if name not in r.stderr:
            fail(f"{what}: cr_restart of the job did not say why it skipped epoch 2: {r.stderr}")
        with open(node, "wb") as f:
            f.write(good)
        with open(manifest, "wb") as f:
            f.write(good_manifest)
    restart(job, 2, "repaired")


def case_enospc():
    if os.geteuid() != 0:
        skip("mounting a small tmpfs needs root")
    prog = Program("enospc")
    small = os.path.join(WORK, "small")
    os.makedirs(small)
    r = run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", small])
    if r.returncode != 0:
        prog.kill()
        skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        job = os.path.join(small, "job")
        checkpoint(job, prog.pid, "first epoch")
        size = sum(os.path.getsize(os.path.join(job, "1", f)) for f in os.listdir(os.path.join(job, "1")))
        st = os.statvfs(small)
        free = st.f_bavail * st.f_frsize
        # Leave room for less than another epoch.
        with open(os.path.join(small, "filler"), "wb") as f:
            f.write(b"x" * max(0, free - size // 2))
        r = run([os.path.join(CLI, "cr_checkpoint"), "--no-daemon", "--dir", job, str(prog.pid)])
        print(f"second epoch: rc {r.returncode}: {r.stderr.strip()}", flush=True)
        if r.returncode == 0 or "not enough space" not in r.stderr or "free" not in r.stderr:
            fail(f"a checkpoint that cannot fit did not fail early with the figures: {r.stderr}")
        if os.path.exists(os.path.join(job, "2")):
            fail("the failed epoch left its folder behind")
        rc, epochs, text = ls(job)
        if epochs != {1: ("complete", "")}:
            fail(f"after ENOSPC: {text}")
        if prog.proc.poll() is not None:
            fail("the program died")
    finally:
        prog.finish("after ENOSPC")
    restart(os.path.join(small, "job"), 1, "after ENOSPC")
    run(["umount", small])


def case_users():
    if os.geteuid() != 0:
        skip("the users case needs root (it runs programs as two users)")
    ensure_users()
    os.chmod(WORK, 0o755)
    root = os.path.join(WORK, "ckpt")
    os.makedirs(root)
    os.chmod(root, 0o1777)
    prog = Program("users", user="stasis_ua")
    as_a = ["setpriv", "--reuid=stasis_ua", "--regid=stasis_ua", "--init-groups"]
    as_b = ["setpriv", "--reuid=stasis_ub", "--regid=stasis_ub", "--init-groups"]
    job = os.path.join(root, "900")
    try:
        r = run(as_a + [os.path.join(CLI, "cr_checkpoint"), "--no-daemon", "--dir", job, str(prog.pid)])
        if r.returncode != 0:
            fail(f"user a could not checkpoint into {job}: {r.stderr}")
        st = os.stat(job)
        if st.st_uid != pwd.getpwnam("stasis_ua").pw_uid or st.st_mode & 0o777 != 0o700:
            fail(f"job folder is uid {st.st_uid} mode {oct(st.st_mode)}")
        # User b: cannot list, verify, restart or write into a's job.
        for argv in (["stasis", "ls", job], ["stasis", "verify", job], ["cr_restart", "--no-daemon", job],
                     ["cr_checkpoint", "--no-daemon", "--dir", job, str(prog.pid)]):
            r = run(as_b + [os.path.join(CLI, argv[0])] + argv[1:])
            if r.returncode == 0:
                fail(f"user b ran {' '.join(argv)}: {r.stdout} {r.stderr}")
            else:
                print(f"user b: {argv[0]} {argv[1]}: {r.stderr.strip()}", flush=True)
        # Under the shared root, b's listing shows b's jobs only, quietly.
        r = run(as_b + [os.path.join(CLI, "stasis"), "ls", root])
        if r.returncode != 0 or "900" in r.stdout:
            fail(f"user b's stasis ls of the shared root: rc {r.returncode}: {r.stdout} {r.stderr}")
        # User b plants a symlink named like a job folder, pointing at a's.
        planted = os.path.join(root, "901")
        run(as_b + ["ln", "-s", job, planted])
        r = run(as_a + [os.path.join(CLI, "cr_checkpoint"), "--no-daemon", "--dir", planted, str(prog.pid)])
        if r.returncode == 0 or "symbolic link" not in r.stderr:
            fail(f"a checkpoint into a planted symlink was not refused: {r.stderr}")
        # Root's tools may inspect a user's checkpoints.
        rc, epochs, text = ls(job)
        if epochs.get(1, ("",))[0] != "complete":
            fail(f"root's stasis ls: {text}")
    finally:
        prog.finish("users")
    restart(job, 1, "user a restarts", user="stasis_ua")


def case_config():
    """The site's stasis.yaml gives --dir its retention and bandwidth cap;
    options override it; a broken file is refused naming file and line."""
    prog = Program("config")
    conf = os.path.join(WORK, "stasis.yaml")
    with open(conf, "w") as f:
        f.write("retention: 1\nbandwidth_limit: 10M\n")
    env = dict(os.environ, STASIS_CONFIG=conf)
    job = os.path.join(WORK, "ckpt", "cfg")
    cr = [os.path.join(CLI, "cr_checkpoint"), "--no-daemon", "--dir", job]
    try:
        for _ in range(3):
            t0 = time.time()
            r = run(cr + [str(prog.pid)], env=env)
            took = time.time() - t0
            if r.returncode != 0:
                fail(f"checkpoint with the site config failed: {r.stderr}")
        size = os.path.getsize(os.path.join(job, "3", "node0.ctx"))
        # 10 MiB/s: the last checkpoint cannot have been faster.
        if took < size / (10 << 20) * 0.9:
            fail(f"bandwidth_limit 10M not honoured: {size} bytes in {took:.2f} s")
        print(f"{size} bytes at bandwidth_limit 10M: {took:.2f} s", flush=True)
        rc, epochs, text = ls(job)
        if sorted(epochs) != [3]:
            fail(f"retention 1 from the config: {text}")
        r = run(cr + ["--keep", "2", "--bandwidth", "0", str(prog.pid)], env=env)
        rc, epochs, text = ls(job)
        if r.returncode != 0 or sorted(epochs) != [3, 4]:
            fail(f"--keep 2 over the config: {r.stderr} {text}")
        with open(conf, "w") as f:
            f.write("retention: 1\nretention: 0\n")
        r = run(cr + [str(prog.pid)], env=env)
        if r.returncode == 0 or f"{conf}:2" not in r.stderr:
            fail(f"a broken stasis.yaml was not refused with file:line: {r.stderr}")
    finally:
        prog.finish("config")
    restart(job, 4, "after the config checkpoints")


CASES = {"config": case_config, "faults": case_faults,
         "faults_no_rename_flags": lambda: case_faults(no_rename_flags=True), "corruption": case_corruption, "enospc": case_enospc,
         "users": case_users}


def main():
    global WORK
    if len(sys.argv) != 3 or sys.argv[2] not in CASES:
        print(f"usage: run_store.py BUILD_DIR {'|'.join(CASES)}", file=sys.stderr)
        return 2
    for path in (TOOL, PROG, os.path.join(CLI, "cr_checkpoint")):
        if not os.path.exists(path):
            skip(f"{path} is not built")
    if shutil.which("setpriv") is None:
        skip("setpriv is not installed (ci/setup.sh installs util-linux)")
    WORK = tempfile.mkdtemp(prefix=f"stasis-store-{sys.argv[2]}-", dir="/tmp")
    try:
        CASES[sys.argv[2]]()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    if FAILURES:
        print(f"{len(FAILURES)} failures")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
