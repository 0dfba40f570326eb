#!/usr/bin/env python3
"""Checkpoint and restart benchmarks, against the raw bandwidth of the same
folder measured in the same run.

  bench/checkpoint.py [--folder DIR] [--small] [--only NAME[,NAME]]
                      [--ckpt-opt OPT]... [--restart-opt OPT]... [--rounds N]
                      [--incremental]

Workloads (bench_mem.c; --small divides every size by 64, as CI does):
  1g-random 1g-halfzero 1g-compressible   one process, 1 GiB resident
  4g-random 4g-halfzero 4g-compressible   one process, 4 GiB resident
  16x256m                                 16 processes of 256 MiB (random)
  1g-shared-x8                            1 GiB shared by 8 processes

For each: the process tree is checkpointed (it keeps running: the pause is
the engine's own "paused" figure, from the freeze to the moment the tree
runs again), killed, and restarted from a cold page cache. Then, on the
same folder and the same number of bytes: dd if=/dev/zero bs=1M
conv=fsync (raw write) and a cold-cache dd read (raw read). Figures:
  checkpoint  wall time of cr_checkpoint          ratio to the raw write
  pause       the tree stopped                    ratio to the raw write
  restart     cr_restart to the program running    ratio to the raw read
              (it answers a ping within 1 ms), and to all memory resident
              (cr_restart's "restored" line)
  size        context bytes                        ratio to memory held
  peak        cr_checkpoint's peak resident memory (ru_maxrss)
The restored program then checks every byte of its memory; a failed check
fails the benchmark.

--incremental (single-process workloads; 1g-random and 4g-random unless
--only says): a full checkpoint with --track, then the program rewrites 5%
of its pages (every 20th), then an incremental one (--parent the full one).
Figures: both contexts' sizes, both checkpoint times and their ratio
(issue 9's target: incremental <= 0.1 x full), the incremental pause, and
the restart of the chain (cold cache) to the program running, as a ratio to
the cold raw read of both files' bytes. Needs root (drops the page cache, restores pids).
"""
import argparse
import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("STASIS_BUILD_DIR", os.path.join(ROOT, "build"))
CLI = os.path.join(BUILD, "engine", "cli")
MEM = os.path.join(BUILD, "bench", "bench_mem")

WORKLOADS = [
    # name, MiB, mix, processes, sharing
    ("1g-random", 1024, "random", 1, "private"),
    ("1g-halfzero", 1024, "halfzero", 1, "private"),
    ("1g-compressible", 1024, "compressible", 1, "private"),
    ("4g-random", 4096, "random", 1, "private"),
    ("4g-halfzero", 4096, "halfzero", 1, "private"),
    ("4g-compressible", 4096, "compressible", 1, "private"),
    ("16x256m", 256, "random", 16, "private"),
    ("1g-shared-x8", 1024, "random", 8, "shared"),
]


def die(msg):
    print("bench: " + msg, file=sys.stderr)
    sys.exit(1)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def reap():
    """Reaps every finished child (we are the subreaper of the trees)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_file(path, timeout, proc=None, what=""):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            die(f"{what} exited with {proc.returncode} before {os.path.basename(path)}")
        if time.monotonic() > end:
            die(f"timed out waiting for {path}")
        time.sleep(0.001)
    return time.monotonic()


def peak_of(argv):
    """ru_maxrss of one child, measured in a fresh process so earlier
    children do not mask it."""
    code = ("import resource,subprocess,sys,time;"
            "t=time.monotonic();p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
            "s=time.monotonic()-t;"
            "print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode);"
            "sys.stderr.write(p.stderr)")
    p = subprocess.run([sys.executable, "-c", code] + argv, capture_output=True, text=True)
    fields = p.stdout.split()
    if len(fields) != 3 or fields[2] != "0":
        die(f"{' '.join(argv)} failed: {p.stderr.strip()}")
    return float(fields[0]), p.stderr, int(fields[1])


def dd_write(path, mib):
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync",
                    "status=none"], check=True)
    return time.monotonic() - t0


def dd_read(path):
    drop_caches()
    t0 = time.monotonic()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True)
    return time.monotonic() - t0


def one(name, mib, mix, procs, sharing, args, folder):
    work = tempfile.mkdtemp(prefix=f"stasis-bench-{name}.", dir=folder)
    try:
        return one_in(work, name, mib, mix, procs, sharing, args)
    finally:
        subprocess.run(["pkill", "-KILL", "-f", work], check=False)
        reap()
        shutil.rmtree(work, ignore_errors=True)


def one_in(work, name, mib, mix, procs, sharing, args):
    ctx = os.path.join(work, "ctx")
    log = open(os.path.join(work, "program.log"), "w")
    prog = subprocess.Popen([MEM, f"{mib}M", mix, str(procs), sharing, work], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    wait_file(os.path.join(work, "ready"), 600, prog, "bench_mem")

    # Checkpoint; the tree keeps running.
    ck_secs, err, peak_kib = peak_of([os.path.join(CLI, "cr_checkpoint"), "-v"] + args.ckpt_opt +
                                     ["-f", ctx, str(prog.pid)])
    m = re.search(r"([\d.]+) MiB memory, ([\d.]+) MiB file.* paused ([\d.]+) s", err)
    if not m:
        die(f"no figures in cr_checkpoint's output: {err.strip()}")
    mem_mib, pause = float(m.group(1)), float(m.group(3))
    ctx_bytes = os.path.getsize(ctx)
    held_mib = mib * (procs if sharing == "private" else 1)

    os.killpg(prog.pid, signal.SIGKILL)
    prog.wait()
    time.sleep(0.05)
    reap()

    # Raw bandwidth of the same folder, same bytes.
    raw = os.path.join(work, "raw")
    raw_mib = max(1, (ctx_bytes + (1 << 20) - 1) >> 20)
    raw_write = dd_write(raw, raw_mib)
    raw_read = dd_read(raw)
    os.unlink(raw)

    # Restart from a cold cache; the program answers the ping once it runs.
    drop_caches()
    open(os.path.join(work, "ping"), "w").close()
    rlog = open(os.path.join(work, "restart.err"), "w")
    t0 = time.monotonic()
    rs = subprocess.Popen([os.path.join(CLI, "cr_restart"), "-v"] + args.restart_opt + [ctx],
                          stdin=subprocess.DEVNULL, stdout=log, stderr=rlog, start_new_session=True)
    t_run = wait_file(os.path.join(work, "pong"), 600, rs, "cr_restart") - t0
    # All memory resident: without lazy restart, before the program runs
    # (cr_restart releases it after the last page); with it, when
    # cr_restart says so.
    t_resident = None
    end = time.monotonic() + 600
    while t_resident is None:
        with open(os.path.join(work, "restart.err")) as f:
            text = f.read()
        lazy = "lazily" in text
        if not lazy and re.search(r"restored \d+ processes", text):
            t_resident = min(time.monotonic() - t0, t_run)
        elif lazy and "all pages resident" in text:
            t_resident = time.monotonic() - t0
        elif rs.poll() is not None:
            die(f"cr_restart exited early: {text.strip()}")
        elif time.monotonic() > end:
            die("timed out waiting for the restart")
        else:
            time.sleep(0.001)
    open(os.path.join(work, "check"), "w").close()
    rc = rs.wait(timeout=600)
    log.close()
    with open(os.path.join(work, "program.log")) as f:
        out = f.read()
    if rc != 0 or "PASS" not in out:
        die(f"{name}: the restored program failed its check (exit {rc}): {out.strip()[-300:]}")
    reap()
    return dict(name=name, held_mib=held_mib, mem_mib=mem_mib, ctx_mib=ctx_bytes / 2**20,
                ck=ck_secs, pause=pause, run=t_run, resident=t_resident, peak_mib=peak_kib / 1024,
                raw_write=raw_write, raw_read=raw_read)


def one_incremental(work, name, mib, mix, args):
    full, incr = os.path.join(work, "full.ctx"), os.path.join(work, "incr.ctx")
    log = open(os.path.join(work, "program.log"), "w")
    prog = subprocess.Popen([MEM, f"{mib}M", mix, "1", "private", work], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    wait_file(os.path.join(work, "ready"), 600, prog, "bench_mem")
    ck = os.path.join(CLI, "cr_checkpoint")
    ck_full, err_full, _ = peak_of([ck, "-v", "--track"] + args.ckpt_opt + ["-f", full, str(prog.pid)])
    open(os.path.join(work, "mutate"), "w").close()
    wait_file(os.path.join(work, "mutated"), 600, prog, "bench_mem")
    ck_incr, err_incr, peak_kib = peak_of([ck, "-v", "--parent", full] + args.ckpt_opt + ["-f", incr, str(prog.pid)])
    m = re.search(r"incremental: 1 processes, ([\d.]+) MiB unchanged", err_incr)
    p = re.search(r"paused ([\d.]+) s", err_incr)
    if not m or not p:
        die(f"the second checkpoint was not incremental: {err_incr.strip()}")
    pause = float(p.group(1))
    os.killpg(prog.pid, signal.SIGKILL)
    prog.wait()
    time.sleep(0.05)
    reap()
    full_bytes, incr_bytes = os.path.getsize(full), os.path.getsize(incr)
    raw = os.path.join(work, "raw")
    raw_write = dd_write(raw, max(1, (full_bytes + (1 << 20) - 1) >> 20))
    os.unlink(raw)
    dd_write(raw, max(1, (full_bytes + incr_bytes + (1 << 20) - 1) >> 20))
    raw_read = dd_read(raw)
    os.unlink(raw)
    drop_caches()
    open(os.path.join(work, "ping"), "w").close()
    t0 = time.monotonic()
    rs = subprocess.Popen([os.path.join(CLI, "cr_restart")] + args.restart_opt + [incr],
                          stdin=subprocess.DEVNULL, stdout=log, stderr=open(os.path.join(work, "restart.err"), "w"),
                          start_new_session=True)
    t_run = wait_file(os.path.join(work, "pong"), 600, rs, "cr_restart") - t0
    open(os.path.join(work, "check"), "w").close()
    rc = rs.wait(timeout=600)
    log.close()
    out = open(os.path.join(work, "program.log")).read()
    if rc != 0 or "PASS" not in out:
        die(f"{name}: the program restored from the chain failed its check (exit {rc}): {out.strip()[-300:]}")
    reap()
    return dict(name=name, mib=mib, full_mib=full_bytes / 2**20, incr_mib=incr_bytes / 2**20, ck_full=ck_full,
                ck_incr=ck_incr, pause=pause, run=t_run, raw_write=raw_write, raw_read=raw_read,
                peak_mib=peak_kib / 1024)


def run_incremental(args, only, folder):
    print("workload          memory   full  incr   full ckpt    incr ckpt  incr/full  incr pause"
          "   chain restart      peak   raw w/r s")
    for name, mib, mix, procs, sharing in WORKLOADS:
        if procs != 1 or sharing != "private":
            continue
        if (only and name not in only) or (not only and name not in ("1g-random", "4g-random")):
            continue
        if args.small:
            mib = max(1, mib // 64)
        for _ in range(args.rounds):
            work = tempfile.mkdtemp(prefix=f"stasis-bench-incr-{name}.", dir=folder)
            try:
                r = one_incremental(work, name, mib, mix, args)
            finally:
                subprocess.run(["pkill", "-KILL", "-f", work], check=False)
                reap()
                shutil.rmtree(work, ignore_errors=True)
            w, rd = r["raw_write"], r["raw_read"]
            print(f"{name:<16} {r['mib']:6d}M {r['full_mib']:6.0f}M {r['incr_mib']:5.0f}M"
                  f" {r['ck_full']:6.3f}s {r['ck_full'] / w:4.2f}w {r['ck_incr']:6.3f}s {r['ck_incr'] / w:4.2f}w"
                  f"  {r['ck_incr'] / r['ck_full']:5.3f}    {r['pause']:6.3f}s {r['pause'] / w:5.3f}w"
                  f"  {r['run']:6.3f}s {r['run'] / rd:4.2f}r {r['peak_mib']:7.1f}M  {w:.3f}/{rd:.3f}", flush=True)
    print("incr/full = incremental checkpoint time / full checkpoint time (target <= 0.1); w = ratio "
          "to the raw write of the full context's bytes; r = ratio to the cold raw read of both files; "
          "peak = the incremental cr_checkpoint's ru_maxrss. The program restored from the chain "
          "checked all its memory: PASS.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", default="/tmp")
    ap.add_argument("--small", action="store_true", help="sizes / 64 (CI)")
    ap.add_argument("--only", default="")
    ap.add_argument("--ckpt-opt", action="append", default=[])
    ap.add_argument("--restart-opt", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--incremental", action="store_true", help="full, 5%% change, incremental")
    args = ap.parse_args()
    if os.geteuid() != 0:
        die("run as root (drops the page cache, restores pids)")
    for exe in (MEM, os.path.join(CLI, "cr_checkpoint")):
        if not os.access(exe, os.X_OK):
            die(f"{exe} is missing: build first (ci/build.sh)")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the trees' orphans are ours to reap
    only = [w for w in args.only.split(",") if w]
    names = [w[0] for w in WORKLOADS]
    for w in only:
        if w not in names:
            die(f"unknown workload '{w}' (known: {' '.join(names)})")
    folder = os.path.realpath(args.folder)
    print(f"folder {folder}; checkpoint options {args.ckpt_opt or '(none)'}; "
          f"restart options {args.restart_opt or '(none)'}")
    if args.incremental:
        run_incremental(args, only, folder)
        return
    hdr = ("workload          memory  context  size   checkpoint   pause        restart:run  "
           "resident      peak   raw w/r s")
    print(hdr)
    for name, mib, mix, procs, sharing in WORKLOADS:
        if only and name not in only:
            continue
        if args.small:
            mib = max(1, mib // 64)
        for _ in range(args.rounds):
            r = one(name, mib, mix, procs, sharing, args, folder)
            w, rd = r["raw_write"], r["raw_read"]
            print(f"{r['name']:<16} {r['held_mib']:6.0f}M {r['ctx_mib']:7.0f}M {r['ctx_mib'] / r['held_mib']:5.2f}x"
                  f" {r['ck']:6.3f}s {r['ck'] / w:4.2f}w  {r['pause']:6.3f}s {r['pause'] / w:5.3f}w"
                  f"  {r['run']:6.3f}s {r['run'] / rd:4.2f}r {r['resident']:6.3f}s {r['resident'] / rd:4.2f}r"
                  f" {r['peak_mib']:7.1f}M  {w:.3f}/{rd:.3f}", flush=True)
    print("size = context / memory held; w = ratio to the raw write of the context's bytes "
          "(dd conv=fsync), r = ratio to the cold raw read of them; peak = cr_checkpoint's "
          "ru_maxrss. Every restored program checked all its memory: PASS.")


if __name__ == "__main__":
    main()
