#!/usr/bin/env python3
"""Epoch write and restart read on a shared file system (issue 21), against
dd of the same bytes by the same number of writers to the same volume in
the same run, with the local disk beside it.

  bench/shared_fs.py [--nodes N] [--size MIB] [--rounds R] [--build DIR]

Starts a test cluster with a GlusterFS volume (ci/cluster.sh start DIR N
--gluster: glusterd and two bricks on host fs, the FUSE mount DIR/shared,
bricks on this machine's disk under /tmp) and, for each target (the
GlusterFS mount, then a local folder on the disk that holds the bricks):

  epoch write   one bench_mem process of SIZE MiB (random pages) per node,
                started in that node's network namespace; all N
                `cr_checkpoint --no-daemon --dir TARGET/job<i> PID` at once,
                wall time until the last MANIFEST is in place;
                against N `dd if=/dev/zero bs=1M conv=fsync` of each
                context's bytes at once
  restart read  the programs killed, page cache dropped; all N
                `cr_restart --no-daemon TARGET/job<i>` at once, wall time
                until every restored program answers a ping (it runs);
                against N cold `dd of=/dev/null` of the dd files at once

Medians of R rounds (default 3). Every restored program then checks every
byte of its memory; a failed check fails the benchmark. Needs root (network
namespaces, drop_caches) and a build (ci/build.sh). GlusterFS's client may
keep read data in its own process memory, which drop_caches does not
reach; the volume is new for each run, so each file is read once.
"""
import argparse
import ctypes
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die(msg):
    print("bench: " + msg, file=sys.stderr)
    sys.exit(1)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_file(path, timeout, what):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            die(f"timed out waiting for {what} ({path})")
        time.sleep(0.001)
    return time.monotonic()


def all_at_once(argvs, timeout=600):
    """Runs every argv at once; the wall time until the last one ended."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in argvs]
    for p, a in zip(procs, argvs):
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            die(f"{' '.join(a)} exited {p.returncode}: {err.strip()[-400:]}")
    return time.monotonic() - t0


class Bench:
    def __init__(self, args):
        self.args = args
        build = os.path.abspath(args.build)
        self.cli = os.path.join(build, "engine", "cli")
        self.mem = os.path.join(build, "bench", "bench_mem")
        for p in (self.mem, os.path.join(self.cli, "cr_checkpoint"), os.path.join(self.cli, "cr_restart")):
            if not os.path.exists(p):
                die(f"{p} is not built (ci/build.sh)")
        self.dir = tempfile.mkdtemp(prefix="stasis-bench-sharedfs-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.cid = hashlib.sha1(os.path.realpath(self.dir).encode()).hexdigest()[:8]

    def cluster(self, *argv):
        p = subprocess.run(["bash", os.path.join(ROOT, "ci", "cluster.sh"), *argv], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
        return p.returncode, p.stdout

    def on_node(self, i, *argv):
        return ["nsenter", f"--net=/run/netns/stasis-{self.cid}-n{i}", "--", *[str(a) for a in argv]]

    def round(self, target, n):
        size = self.args.size
        works, progs = [], []
        try:
            for i in range(1, n + 1):
                w = os.path.join(self.dir, "work", f"{os.path.basename(target)}-{i}")
                shutil.rmtree(w, ignore_errors=True)
                os.makedirs(w)
                works.append(w)
                log = open(os.path.join(w, "program.log"), "w")
                progs.append(subprocess.Popen(self.on_node(i, self.mem, f"{size}M", "random", 1, "private", w),
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              start_new_session=True))
            for w in works:
                wait_file(os.path.join(w, "ready"), 600, "bench_mem")
            jobs = [os.path.join(target, f"job{i}") for i in range(1, n + 1)]
            for j in jobs:
                shutil.rmtree(j, ignore_errors=True)
            ck = all_at_once([self.on_node(i + 1, os.path.join(self.cli, "cr_checkpoint"), "--no-daemon",
                                           "--dir", jobs[i], progs[i].pid) for i in range(n)])
            ctx = [os.path.getsize(os.path.join(j, "1", "node0.ctx")) for j in jobs]
            for p in progs:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            reap()
            raws = [os.path.join(target, f"raw{i}") for i in range(1, n + 1)]
            ddw = all_at_once([["dd", "if=/dev/zero", f"of={raws[i]}", "bs=1M",
                                f"count={max(1, (ctx[i] + (1 << 20) - 1) >> 20)}", "conv=fsync", "status=none"]
                               for i in range(n)])
            drop_caches()
            ddr = all_at_once([["dd", f"if={r}", "of=/dev/null", "bs=1M", "status=none"] for r in raws])
            for r in raws:
                os.unlink(r)
            # Restart from a cold cache; each program answers its ping once it runs.
            drop_caches()
            for w in works:
                open(os.path.join(w, "ping"), "w").close()
            t0 = time.monotonic()
            rs = [subprocess.Popen(self.on_node(i + 1, os.path.join(self.cli, "cr_restart"), "--no-daemon", jobs[i]),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True) for i in range(n)]
            rsr = max(wait_file(os.path.join(w, "pong"), 600, "a restored program") for w in works) - t0
            for w in works:
                open(os.path.join(w, "check"), "w").close()
            for i, p in enumerate(rs):
                _, err = p.communicate(timeout=600)
                # The restored program writes on to its own log file.
                out = open(os.path.join(works[i], "program.log")).read()
                if p.returncode != 0 or "PASS" not in out:
                    die(f"node {i + 1}: the restored program failed its check (exit {p.returncode}): "
                        f"{out.strip()[-200:]} {err.strip()[-300:]}")
            reap()
            return dict(ctx_mib=sum(ctx) / n / 2**20, ck=ck, ddw=ddw, rs=rsr, ddr=ddr)
        finally:
            for p in progs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            reap()

    def run(self):
        n = self.args.nodes
        rc, out = self.cluster("start", self.dir, str(n), "--gluster")
        print(out.rstrip())
        if rc != 0:
            die("ci/cluster.sh start failed")
        try:
            targets = [("GlusterFS (FUSE, 2 bricks)", os.path.join(self.dir, "shared", "bench")),
                       ("local disk (the bricks' disk)", os.path.join(self.dir, "local", "bench"))]
            rows = []
            for label, target in targets:
                os.makedirs(target, exist_ok=True)
                results = [self.round(target, n) for _ in range(self.args.rounds)]
                med = {k: statistics.median(r[k] for r in results) for k in results[0]}
                rows.append((label, med))
            print(f"\n{n} nodes, one writer per node at once, {self.args.size} MiB per node (random pages), "
                  f"medians of {self.args.rounds} rounds; every restored program checked all its memory: PASS")
            print(f"{'target':32} {'ctx MiB':>8} {'epoch s':>8} {'dd w s':>7} {'ratio':>6} "
                  f"{'restart s':>9} {'dd r s':>7} {'ratio':>6}")
            for label, m in rows:
                print(f"{label:32} {m['ctx_mib']:8.1f} {m['ck']:8.2f} {m['ddw']:7.2f} {m['ck'] / m['ddw']:6.2f} "
                      f"{m['rs']:9.2f} {m['ddr']:7.2f} {m['rs'] / m['ddr']:6.2f}")
        finally:
            rc, out = self.cluster("stop", self.dir)
            print(out.rstrip())
            reap()
            if rc == 0:
                shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="MiB per node")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", default=os.environ.get("STASIS_BUILD_DIR", os.path.join(ROOT, "build")))
    args = ap.parse_args()
    if os.geteuid() != 0:
        die("needs root (network namespaces, drop_caches)")
    # Subreaper: the cluster's keeper and restored trees end up as our children.
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
        die("prctl(PR_SET_CHILD_SUBREAPER) failed")
    Bench(args).run()


if __name__ == "__main__":
    main()
