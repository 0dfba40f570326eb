#!/usr/bin/env python3
"""Cluster tests: a real multi-node Slurm cluster on this machine.

    run_cluster.py --cluster-sh ci/cluster.sh --pmix-fence=BUILD/pmix_fence CASE

Each case starts its own cluster with ci/cluster.sh in a fresh folder under
/tmp (munged, slurmctld and one slurmd per node, each node a network
namespace with its own hostname n1, n2, ...), runs real jobs through srun and
sbatch, as root and as the unprivileged users stasis_ua and stasis_ub, and
always stops the cluster at the end, then checks that nothing of it is left
(processes, namespaces, links). The harness is a child subreaper: the
cluster's keeper, and so everything the cluster ran, ends up as its child
and is reaped here. Exit 0 pass, 1 fail, 77 skip.
"""
import argparse
import ctypes
import hashlib
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
from test_users import USERS, ensure_users  # noqa: E402

ARGS = None
DIR = None       # the cluster's folder
WORK = None      # DIR/work: world-writable, where jobs run and write
T0 = time.monotonic()


def elapsed():
    return f"{time.monotonic() - T0:5.1f}s"


def log_tails():
    """The last lines of every daemon's log; its stderr (*.out, where a
    daemon says why it could not start) only when its log file is empty."""
    logdir = os.path.join(DIR, "log") if DIR else None
    if not logdir or not os.path.isdir(logdir):
        return

    def size(name):
        path = os.path.join(logdir, name)
        return os.path.getsize(path) if os.path.exists(path) else 0

    for name in sorted(os.listdir(logdir)):
        if not size(name) or (name.endswith(".out") and size(name[:-4] + ".log")):
            continue
        lines = open(os.path.join(logdir, name), errors="replace").read().splitlines()
        print(f"--- {name} (last 30 lines)")
        print("\n".join(lines[-30:]))


class Failure(Exception):
    pass


def fail(msg, logs=True):
    print(f"FAIL: {msg}")
    if logs:
        log_tails()
    raise Failure(msg)


def skip(msg):
    print(f"SKIPPED: {msg}")
    sys.exit(77)


def cluster(*args, timeout=120):
    """ci/cluster.sh with the given subcommand; returns (rc, output)."""
    p = subprocess.run(["bash", ARGS.cluster_sh, *args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout


def run(*cmd, user=None, expect_rc=0, timeout=60, quiet=False):
    """A Slurm client command in the controller's namespace (as `user`)."""
    full = ["bash", ARGS.cluster_sh, "run", DIR] + (["--user", user] if user else []) + list(cmd)
    t = time.monotonic()
    p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=WORK, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        fail(f"{' '.join(cmd)} (as {user or 'root'}) did not finish in {timeout} s")
    took = time.monotonic() - t
    if not quiet:
        print(f"[{elapsed()}] $ {' '.join(cmd)}   (as {user or 'root'}, rc {p.returncode}, {took:.2f} s)")
        for line in (out + err).splitlines():
            print(f"    {line}")
    if expect_rc is not None and p.returncode != expect_rc:
        fail(f"{' '.join(cmd)} (as {user or 'root'}) exited {p.returncode}, expected {expect_rc}")
    return p.returncode, out, err


def job_state(jobid):
    _, out, _ = run("scontrol", "-o", "show", "job", str(jobid), quiet=True, expect_rc=None)
    state = re.search(r"\bJobState=(\S+)", out)
    code = re.search(r"\bExitCode=(\S+)", out)
    return (state.group(1) if state else "?"), (code.group(1) if code else "?")


def wait_job_done(jobid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, code = job_state(jobid)
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "?"):
            return state, code
        time.sleep(0.2)
    fail(f"job {jobid} did not finish in {timeout} s (state {job_state(jobid)[0]})")


def wait_step_running(jobid, step, timeout=30):
    want = f"{jobid}.{step}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out, _ = run("squeue", "-h", "-s", "-j", str(jobid), "-o", "%i", quiet=True,
                        expect_rc=None)
        if want in out.split():
            return
        time.sleep(0.2)
    fail(f"step {want} was not running after {timeout} s (state {job_state(jobid)[0]})")


def write_script(name, text):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def submit(script, user, *opts):
    _, out, _ = run("sbatch", "--parsable", *opts, script, user=user)
    m = re.match(r"\s*(\d+)", out)
    if not m:
        fail(f"sbatch printed no job id: {out!r}")
    return int(m.group(1))


def hostnames(text):
    return sorted(line.strip() for line in text.splitlines() if line.strip())


def case_smoke():
    # 1. Tasks spread over both nodes, each node with its own hostname.
    _, out, _ = run("srun", "-N2", "-n4", "hostname")
    if hostnames(out) != ["n1", "n1", "n2", "n2"]:
        fail(f"srun -N2 -n4 hostname: expected n1 twice and n2 twice, got {hostnames(out)}")
    print("OK srun -N2 -n4 hostname: 2 tasks on n1, 2 on n2")

    # 2. A batch job of an unprivileged user; its script runs srun.
    script = write_script("hostnames.sh", "#!/bin/sh\nsrun hostname\n")
    jobid = submit(script, "stasis_ua", "-N2", "-o", os.path.join(WORK, "hostnames-%j.out"))
    state, code = wait_job_done(jobid)
    if state != "COMPLETED" or code != "0:0":
        fail(f"batch job {jobid} of stasis_ua ended {state} with exit code {code}")
    outfile = os.path.join(WORK, f"hostnames-{jobid}.out")
    got = hostnames(open(outfile).read()) if os.path.exists(outfile) else None
    if got != ["n1", "n2"]:
        fail(f"{outfile}: expected n1 and n2, got {got}")
    owner = pwd.getpwuid(os.stat(outfile).st_uid).pw_name
    if owner != "stasis_ua":
        fail(f"{outfile} belongs to {owner}, not stasis_ua")
    print(f"OK sbatch -N2 as stasis_ua: job {jobid} COMPLETED, its output (owned by "
          f"stasis_ua) names n1 and n2")

    # 3. PMIx across both nodes: init, job size, fence.
    fence = os.path.join(WORK, "pmix_fence")
    shutil.copy(ARGS.pmix_fence, fence)
    os.chmod(fence, 0o755)
    _, out, _ = run("srun", "--mpi=pmix", "-N2", "-n2", fence, user="stasis_ua")
    lines = sorted(re.findall(r"^rank (\d+) of (\d+) fence ok on (\S+)$", out, re.M))
    if lines != [("0", "2", "n1"), ("1", "2", "n2")]:
        fail(f"srun --mpi=pmix -N2 -n2 pmix_fence: expected rank 0 on n1 and rank 1 on n2, "
             f"both 'of 2 fence ok', got {lines}")
    print("OK srun --mpi=pmix -N2 -n2: rank 0 (n1) and rank 1 (n2) passed PMIx_Fence")

    # 4. A helper step inside a running job: its owner may add one task per
    # node with --overlap, another user is refused.
    script = write_script("sleeper.sh", "#!/bin/sh\nsrun sleep 30\n")
    jobid = submit(script, "stasis_ua", "-N2", "-o", os.path.join(WORK, "sleeper-%j.out"))
    wait_step_running(jobid, 0)
    helper = ("srun", "--overlap", f"--jobid={jobid}", "-N2", "--ntasks-per-node=1", "hostname")
    _, out, _ = run(*helper, user="stasis_ua")
    if hostnames(out) != ["n1", "n2"]:
        fail(f"helper step in job {jobid}: expected n1 and n2, got {hostnames(out)}")
    print(f"OK helper step in running job {jobid} as its owner stasis_ua: one task on n1 and n2")
    rc, out, err = run(*helper, user="stasis_ub", expect_rc=None)
    if rc == 0 or "Access/permission denied" not in err or hostnames(out):
        fail(f"helper step in job {jobid} as stasis_ub was not refused: rc {rc}, "
             f"stdout {out!r}, stderr {err!r}")
    print(f"OK the same helper step as stasis_ub refused (rc {rc}: Access/permission denied)")
    state, _ = job_state(jobid)
    if state != "RUNNING":
        fail(f"job {jobid} is {state} after the helper steps, expected RUNNING")
    run("scancel", str(jobid))
    state, _ = wait_job_done(jobid)
    if state != "CANCELLED":
        fail(f"job {jobid} ended {state} after scancel, expected CANCELLED")
    print(f"OK job {jobid} cancelled")


def case_spank():
    """spank_stasis.so enabled by one plugstack.conf line: its options are in
    --help, a bad or too short interval is refused at submission, and the
    options reach every task of every step, on every node."""
    if not ARGS.spank or not os.path.exists(ARGS.spank):
        skip("spank_stasis.so was not built (libslurm-dev's slurm/spank.h; ci/setup.sh installs it)")
    plugin = os.path.join(DIR, "spank_stasis.so")
    shutil.copy(ARGS.spank, plugin)
    os.chmod(plugin, 0o755)
    with open(os.path.join(DIR, "plugstack.conf"), "w") as f:
        f.write(f"required {plugin} min_interval=5m keep=3 default_dir=/srv/ckpt\n")
    _, out, err = run("sbatch", "--help", quiet=True)
    for opt in ("--checkpoint=interval", "--checkpoint-dir=dir", "--restart-from=dir", "--restart-dir=dir"):
        if opt not in out + err:
            fail(f"sbatch --help does not list {opt}")
    print("OK sbatch --help lists --checkpoint, --checkpoint-dir, --restart-from, --restart-dir")
    for bad, words in (("bogus", "is not a checkpoint interval"), ("0", "is not a checkpoint interval"),
                       ("30s", "shorter than this site's minimum interval (5m)")):
        rc, out, err = run("srun", f"--checkpoint={bad}", "hostname", user="stasis_ua", expect_rc=None)
        if rc == 0 or words not in err or out.strip():
            fail(f"srun --checkpoint={bad}: rc {rc}, stderr {err!r}: expected a refusal saying {words!r}")
        rc, out, err = run("sbatch", f"--checkpoint={bad}", "--wrap=hostname", user="stasis_ua", expect_rc=None)
        if rc == 0 or words not in err:
            fail(f"sbatch --checkpoint={bad}: rc {rc}, stderr {err!r}: expected a refusal saying {words!r}")
    print("OK bad intervals and one under min_interval refused by srun and sbatch at submission")
    # srun: every task on both nodes sees the options.
    _, out, _ = run("srun", "-N2", "-n4", "--checkpoint=1:30:00", "--checkpoint-dir=/scratch/ck",
                    "--restart-dir=/scratch/ck/41", "sh", "-c",
                    "echo $(hostname) $STASIS_CHECKPOINT_INTERVAL $STASIS_CHECKPOINT_DIR "
                    "$STASIS_CHECKPOINT_KEEP $STASIS_RESTART_FROM", user="stasis_ua")
    lines = sorted(out.strip().splitlines())
    want = ["n1 5400 /scratch/ck 3 /scratch/ck/41"] * 2 + ["n2 5400 /scratch/ck 3 /scratch/ck/41"] * 2
    if lines != want:
        fail(f"srun tasks saw {lines}, expected {want}")
    print("OK srun -N2 -n4 --checkpoint=1:30:00: all 4 tasks on n1 and n2 got interval 5400 s, "
          "the folder, keep 3 and --restart-dir")
    # sbatch: the batch script and the steps inside it; the site's default folder.
    script = write_script("spank_env.sh", "#!/bin/sh\necho batch $STASIS_CHECKPOINT_INTERVAL "
                          "$STASIS_CHECKPOINT_DIR\nsrun sh -c 'echo step $(hostname) "
                          "$STASIS_CHECKPOINT_INTERVAL'\n")
    jobid = submit(script, "stasis_ua", "-N2", "--checkpoint=30m", "-o", os.path.join(WORK, "spank-%j.out"))
    state, code = wait_job_done(jobid)
    text = open(os.path.join(WORK, f"spank-{jobid}.out")).read()
    got = sorted(text.strip().splitlines())
    if state != "COMPLETED" or got != ["batch 1800 /srv/ckpt", "step n1 1800", "step n2 1800"]:
        fail(f"sbatch --checkpoint=30m job {jobid} ({state}): {got}")
    print(f"OK sbatch --checkpoint=30m: the batch script and its step on n1 and n2 got 1800 s and "
          f"the site's default_dir")


CASES = {
    "smoke": case_smoke,
    "spank": case_spank,
}


def netns_ids(cluster_id):
    """{"net:[inode]": name} of the cluster's namespaces that exist now."""
    ids = {}
    if os.path.isdir("/run/netns"):
        for name in os.listdir("/run/netns"):
            if name.startswith(f"stasis-{cluster_id}-"):
                ids[f"net:[{os.stat(os.path.join('/run/netns', name)).st_ino}]"] = name
    return ids


def processes_in(ids):
    found = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{e}/ns/net") in ids:
                found.append(f"{e} {open(f'/proc/{e}/cmdline').read().replace(chr(0), ' ')}")
        except OSError:
            pass
    return found


def reap(timeout=10):
    """Reaps every child (the cluster's keeper, orphans that reached us)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def check_nothing_left(cluster_id, ids):
    left = []
    if netns_ids(cluster_id):
        left.append(f"namespaces {sorted(netns_ids(cluster_id).values())}")
    procs = processes_in(ids)
    if procs:
        left.append(f"processes in the cluster's namespaces: {procs}")
    links = subprocess.run(["ip", "-o", "link"], stdout=subprocess.PIPE, text=True).stdout
    mine = [line for line in links.splitlines() if cluster_id in line]
    if mine:
        left.append(f"links in the host namespace: {mine}")
    rc, out = cluster("status", DIR)
    if rc != 3:
        left.append(f"ci/cluster.sh status says (rc {rc}): {out.strip()}")
    if not reap():
        left.append("children of the harness still running after stop")
    return left


def main():
    global ARGS, DIR, WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster-sh", required=True)
    ap.add_argument("--pmix-fence", default="")
    ap.add_argument("--spank", default="")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("case", choices=sorted(CASES))
    ARGS = ap.parse_args()
    ARGS.cluster_sh = os.path.abspath(ARGS.cluster_sh)
    if os.geteuid() != 0:
        skip("cluster tests need root (network namespaces, munged, slurmctld, slurmd)")
    for prog in ("slurmd", "slurmctld", "munged", "srun", "sbatch", "ip", "nsenter",
                 "unshare", "setpriv", "useradd"):
        if not shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            skip(f"{prog} is not installed (ci/setup.sh installs it)")
    if not ARGS.pmix_fence or not os.path.exists(ARGS.pmix_fence):
        skip("pmix_fence was not built: pkg-config found no 'pmix' when configuring "
             "(libpmix-dev; ci/setup.sh installs it)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        print(f"FAIL: prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
        sys.exit(1)
    ensure_users()
    DIR = tempfile.mkdtemp(prefix=f"stasis-cluster-{ARGS.case}-", dir="/tmp")
    os.chmod(DIR, 0o755)
    WORK = os.path.join(DIR, "work")
    print(f"[{elapsed()}] cluster folder {DIR}")

    def on_term(signum, _frame):
        raise Failure(f"signal {signum}")  # so that `finally` stops the cluster

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    # ci/cluster.sh names its namespaces after the SHA-1 of the folder's path.
    cluster_id = hashlib.sha1(os.path.realpath(DIR).encode()).hexdigest()[:8]
    ids = {}
    try:
        t = time.monotonic()
        rc, out = cluster("start", DIR, str(ARGS.nodes), timeout=120)
        print(out.rstrip())
        ids = netns_ids(cluster_id)
        if rc != 0:
            # It printed the daemons' logs itself.
            fail(f"ci/cluster.sh start {DIR} {ARGS.nodes} exited {rc}", logs=False)
        print(f"[{elapsed()}] cluster of {ARGS.nodes} nodes up in {time.monotonic() - t:.2f} s")
        CASES[ARGS.case]()
        ok = True
    except Failure as e:
        if str(e).startswith("signal"):
            print(f"FAIL: interrupted ({e}); stopping the cluster")
    except KeyboardInterrupt:
        print("FAIL: interrupted (SIGINT); stopping the cluster")
    except subprocess.TimeoutExpired as e:
        print(f"FAIL: {' '.join(e.cmd)} did not finish in {e.timeout} s")
        log_tails()
    finally:
        t = time.monotonic()
        rc, out = cluster("stop", DIR, timeout=120)
        print(out.rstrip())
        if rc != 0:
            print(f"FAIL: ci/cluster.sh stop {DIR} exited {rc}")
            ok = False
        left = check_nothing_left(cluster_id, ids)
        if left:
            print("FAIL: the cluster left things behind: " + "; ".join(left))
            ok = False
        else:
            print(f"[{elapsed()}] cluster stopped in {time.monotonic() - t:.2f} s; no process, "
                  "namespace or link of it left, every child reaped")
    if not ok:
        print(f"(cluster folder with its logs kept: {DIR})")
        sys.exit(1)
    shutil.rmtree(DIR, ignore_errors=True)
    print(f"PASS {ARGS.case} ({elapsed()})")


if __name__ == "__main__":
    main()
