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

--store-on gluster: the cluster gets a GlusterFS volume (ci/cluster.sh
--gluster: glusterd and two bricks on host fs, mounted through the FUSE
client at DIR/shared on every node) and the checkpoint store of the cases is
DIR/shared/ck instead of a local folder.
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
        f.write(f"required {plugin} min_interval=5m keep=3 default_dir=/srv/ckpt "
                f"tool={install_tool('stasis-step')}\n")
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
                    "sh", "-c",
                    "echo $(hostname) $STASIS_CHECKPOINT_INTERVAL $STASIS_CHECKPOINT_DIR "
                    "$STASIS_CHECKPOINT_KEEP", user="stasis_ua")
    lines = sorted(out.strip().splitlines())
    want = ["n1 5400 /scratch/ck 3"] * 2 + ["n2 5400 /scratch/ck 3"] * 2
    if lines != want:
        fail(f"srun tasks saw {lines}, expected {want}")
    print("OK srun -N2 -n4 --checkpoint=1:30:00: all 4 tasks on n1 and n2 got interval 5400 s, "
          "the folder and keep 3")
    # --restart-dir (Slurm's old name) makes the tasks restarts: a folder
    # that is not there is refused by every task, naming it.
    rc, out, err = run("srun", "-N2", "-n2", "--restart-dir=/scratch/ck/41", "hostname",
                       user="stasis_ua", expect_rc=None)
    if rc == 0 or "/scratch/ck/41" not in err or out.strip():
        fail(f"srun --restart-dir=/scratch/ck/41 hostname: rc {rc}, out {out!r}, err {err!r}: "
             "expected a refusal naming the folder and no hostname printed")
    print("OK srun --restart-dir=<missing folder>: refused, naming the folder; the command did not run")
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


def install_tool(name):
    """A built program copied into DIR/bin (readable by the test users and
    by slurmstepd; the build tree may not be)."""
    src = {"stasis-step": ARGS.stasis_step, "count_task": ARGS.count_task, "stasisd": ARGS.stasisd,
           "stasis": ARGS.stasis, "scontrol": ARGS.scontrol_wrapper, "share_task": ARGS.share_task,
           "spank_stasis.so": ARGS.spank, "pmix_ckpt": ARGS.pmix_ckpt,
           "libstasis_pmix.so": ARGS.pmix_agent, "mpi_ring": ARGS.mpi_ring,
           "cr_checkpoint": ARGS.stasis and os.path.join(os.path.dirname(ARGS.stasis), "cr_checkpoint"),
           "cr_restart": ARGS.stasis and os.path.join(os.path.dirname(ARGS.stasis), "cr_restart"),
           "libcr.so.0": ARGS.pmix_agent and os.path.join(
               os.path.dirname(os.path.dirname(ARGS.pmix_agent)), "engine", "agent", "libcr.so.0"),
           }[name]
    if not src or not os.path.exists(src):
        skip(f"{name} was not built")
    bindir = os.path.join(DIR, "bin")
    os.makedirs(bindir, exist_ok=True)
    os.chmod(bindir, 0o755)
    dst = os.path.join(bindir, name)
    if not os.path.exists(dst):
        shutil.copy(src, dst + ".new")
        os.chmod(dst + ".new", 0o755)
        os.rename(dst + ".new", dst)
    return dst


STASISD = {}  # node name -> Popen


def start_stasisd(node, config=None):
    """stasisd on node `node` (its network and UTS namespace), socket
    DIR/run/stasisd-<node>.sock, with `config` (YAML text) if given; stopped
    by ci/cluster.sh stop (it ends every process in the cluster's
    namespaces)."""
    cid = hashlib.sha1(os.path.realpath(DIR).encode()).hexdigest()[:8]
    sock = os.path.join(DIR, "run", f"stasisd-{node}.sock")
    state = os.path.join(DIR, "run", f"stasisd-{node}")
    os.makedirs(state, exist_ok=True)
    if os.path.exists(sock):
        os.unlink(sock)
    log = open(os.path.join(DIR, "log", f"stasisd-{node}.log"), "a")
    conf = os.path.join(DIR, "run", f"stasisd-{node}.yaml")
    with open(conf, "w") as f:
        f.write(config or "{}\n")
    STASISD[node] = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/stasis-{cid}-{node}", "--", "unshare", "--uts", "--",
         "sh", "-c", 'hostname "$1" && exec "$2" --socket "$3" --state-dir "$4" -c "$5"', "sh", node,
         install_tool("stasisd"), sock, state, conf],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if time.monotonic() > deadline or STASISD[node].poll() is not None:
            fail(f"stasisd on {node} did not start")
        time.sleep(0.05)


def stop_stasisd(node):
    p = STASISD.pop(node)
    p.kill()
    p.wait()


def enable_stasis(min_interval="5s", extra=""):
    """The plugin, stasis-step and one stasisd per node, as a site would."""
    plugin = install_tool("spank_stasis.so")
    tool = install_tool("stasis-step")
    install_tool("count_task")
    install_tool("libcr.so.0")  # libstasis_pmix.so's neighbour
    agent = install_tool("libstasis_pmix.so")
    for i in range(1, ARGS.nodes + 1):
        start_stasisd(f"n{i}")
    with open(os.path.join(DIR, "plugstack.conf"), "w") as f:
        f.write(f"required {plugin} tool={tool} min_interval={min_interval} keep=3 "
                f"socket={DIR}/run/stasisd-%h.sock ticker_log={WORK} final_lead=45s "
                f"pmix_agent={agent}{' ' + extra if extra else ''}\n")
    ck = os.path.join(store_root(), "ck")
    os.makedirs(ck, exist_ok=True)
    shutil.chown(ck, "stasis_ua", "stasis_ua")
    os.chmod(ck, 0o700)
    return ck


def store_root():
    """Where the cases' checkpoint stores live: the GlusterFS mount with
    --store-on gluster, else the local work folder."""
    return os.path.join(DIR, "shared") if ARGS.store_on == "gluster" else WORK


def cluster_id():
    return hashlib.sha1(os.path.realpath(DIR).encode()).hexdigest()[:8]


def on_node(node, *cmd, user=None):
    """argv running `cmd` in node `node`'s network namespace (as `user`)."""
    argv = ["nsenter", f"--net=/run/netns/stasis-{cluster_id()}-{node}", "--"]
    if user:
        argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
    return argv + [str(c) for c in cmd]


def node_run(node, *cmd, expect_rc=0, timeout=120):
    """`cmd` on node `node` as root; returns (rc, stdout, stderr, seconds)."""
    t = time.monotonic()
    p = subprocess.run(on_node(node, *cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    took = time.monotonic() - t
    print(f"[{elapsed()}] {node}$ {' '.join(str(c) for c in cmd)}   (rc {p.returncode}, {took:.2f} s)")
    for line in (p.stdout + p.stderr).splitlines()[:12]:
        print(f"    {line}")
    if expect_rc is not None and p.returncode != expect_rc:
        fail(f"{' '.join(str(c) for c in cmd)} on {node} exited {p.returncode}, expected {expect_rc}: "
             f"{p.stderr.strip()[-600:]}")
    return p.returncode, p.stdout, p.stderr, took


def wrapped(*cmd, user="stasis_ua", expect_rc=0, timeout=90):
    """scontrol through srun-wrappers/scontrol (first in PATH)."""
    wrapper = install_tool("scontrol")
    env = ["env", f"PATH={os.path.dirname(wrapper)}:/usr/bin:/bin",
           f"STASIS_STEP={install_tool('stasis-step')}"]
    return run(*env, "scontrol", *cmd, user=user, expect_rc=expect_rc, timeout=timeout)


def complete_epochs(jobdir):
    if not os.path.isdir(jobdir):
        return []
    return sorted(int(e) for e in os.listdir(jobdir)
                  if e.isdigit() and os.path.exists(os.path.join(jobdir, e, "MANIFEST")))


def wait_epochs(jobdir, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(complete_epochs(jobdir)) >= count:
            return complete_epochs(jobdir)
        time.sleep(0.3)
    fail(f"{jobdir}: {len(complete_epochs(jobdir))} complete epochs after {timeout} s, wanted {count}")


def counts(path, jobs=None):
    """rank -> list of the counts it printed, in order; fails on a memory
    check. `jobs`: rank -> set of the job ids its lines named (count_task
    prints getenv("SLURM_JOB_ID") as it sees it)."""
    out = {}
    for line in open(path, errors="replace"):
        if "MEMORY BAD" in line:
            fail(f"{path}: {line.strip()}")
        m = re.match(r"rank (\d+) count (\d+)(?: job (\S+))?$", line.strip())
        if m:
            out.setdefault(int(m.group(1)), []).append(int(m.group(2)))
            if jobs is not None and m.group(3):
                jobs.setdefault(int(m.group(1)), set()).add(m.group(3))
    return out


def check_continued(old, new, ranks, what):
    """Every rank's counts in `new` start right after a count it had printed
    in `old` (the checkpoint point) and go on one by one."""
    for r in range(ranks):
        a, b = old.get(r, []), new.get(r, [])
        if not b:
            fail(f"{what}: rank {r} printed nothing after the restart")
        if b != list(range(b[0], b[0] + len(b))):
            fail(f"{what}: rank {r} skipped or repeated a count after the restart: {b[:10]}...")
        if b[0] - 1 not in a and not (b[0] == 1 and not a):
            fail(f"{what}: rank {r} resumed at {b[0]}, but had printed {a[-3:] if a else 'nothing'} "
                 "before: not a checkpoint point")
    return {r: new[r][0] for r in range(ranks)}


def case_checkpoint():
    """sbatch --checkpoint on 2 nodes x 2 tasks: periodic epochs through each
    node's stasisd, verified; scontrol checkpoint (the wrapper) by the owner,
    refused to another user, every other scontrol use untouched; the job
    cancelled and restarted in a new job with srun --restart-from: every task
    continues its count in the new job's output, checks its memory, and the
    new job completes."""
    # The site compresses epochs with lz4 (plugstack.conf compress=lz4) and
    # takes a full epoch every 3, the others incremental (incremental=3).
    ck = enable_stasis(extra="compress=lz4 incremental=3")
    limit_file = os.path.join(WORK, "limit")
    script = write_script("count.sh", f"#!/bin/sh\nsrun {install_tool('count_task')} 100 {limit_file}\n")
    jobid = submit(script, "stasis_ua", "-N2", "-n4", "--checkpoint=5s", f"--checkpoint-dir={ck}",
                   "-o", os.path.join(WORK, "count-%j.out"))
    jobdir = os.path.join(ck, str(jobid))
    t = time.monotonic()
    epochs = wait_epochs(jobdir, 2, timeout=60)
    print(f"OK job {jobid} (2 nodes, 4 tasks, --checkpoint=5s): epochs {epochs} complete after "
          f"{time.monotonic() - t:.1f} s")
    stasis = install_tool("stasis")
    _, out, _ = run(stasis, "verify", jobdir, user="stasis_ua")
    verified = re.findall(r"ok \(2 nodes", out)
    if len(verified) < 2:
        fail(f"stasis verify {jobdir}: expected at least two epochs of 2 nodes verified")
    log = open(os.path.join(WORK, f"ticker-{jobid}.log")).read()
    lines = [l for l in log.splitlines() if "trigger to resumed" in l]
    for line in lines:
        print(f"    ticker: {line}")
    # The tasks continue: every node ran on after the "frozen" fence while
    # its pages were written from copy-on-write snapshots, but for the
    # incremental epochs with little to write, written frozen.
    if not lines or not all("written from a snapshot" in l or "is written frozen" in l for l in lines):
        fail("periodic epochs were not written from snapshots: " + "; ".join(lines))
    if not any(re.search(r"incremental against epoch \d+, \d+ MiB left to it", l) for l in lines):
        fail("no periodic epoch was incremental (plugstack.conf incremental=3): " + "; ".join(lines))
    print(f"OK stasis verify: {len(verified)} epochs, every node file's checksums verified")
    _, shown, _ = run(stasis, "show", os.path.join(jobdir, str(epochs[-1]), "node1.ctx"), user="stasis_ua",
                      quiet=True)
    if "compressed: lz4" not in shown:
        fail(f"epoch {epochs[-1]} of a compress=lz4 site is not compressed: {shown[:400]!r}")
    print("OK the epochs' page data is lz4-compressed (plugstack.conf compress=lz4)")

    # scontrol checkpoint: another user is refused by Slurm; the owner gets an epoch.
    before = complete_epochs(jobdir)[-1]
    rc, out, err = wrapped("checkpoint", "create", str(jobid), user="stasis_ub", expect_rc=None)
    if rc == 0 or "denied" not in err.lower():
        fail(f"scontrol checkpoint create {jobid} as stasis_ub: rc {rc}, {err!r}: expected a refusal")
    _, out, _ = wrapped("checkpoint", "create", str(jobid))
    m = re.search(r"epoch (\d+) of job", out)
    if not m or int(m.group(1)) <= before or not os.path.exists(os.path.join(jobdir, m.group(1), "MANIFEST")):
        fail(f"scontrol checkpoint create {jobid}: no new complete epoch after {before}: {out!r}")
    print(f"OK scontrol checkpoint create {jobid}: epoch {m.group(1)}; stasis_ub refused by Slurm")
    _, able, _ = wrapped("checkpoint", "able", str(jobid))
    # disable refuses epochs until enable; error tells why the last failed.
    _, out, _ = wrapped("checkpoint", "disable", str(jobid))
    rc, out2, err = wrapped("checkpoint", "create", str(jobid), expect_rc=None)
    if rc == 0 or "disabled" not in err:
        fail(f"scontrol checkpoint create {jobid} after disable: rc {rc}, {err!r}: expected a refusal")
    _, why, _ = wrapped("checkpoint", "error", str(jobid))
    if "disabled" not in why:
        fail(f"scontrol checkpoint error {jobid}: {why!r} does not give the last failure")
    wrapped("checkpoint", "enable", str(jobid))
    rc, out, _ = wrapped("checkpoint", "create", str(jobid), user="stasis_ub", expect_rc=None)
    if rc == 0:
        fail("stasis_ub's scontrol checkpoint create succeeded")
    print(f"OK scontrol checkpoint disable/create/error/enable {jobid}: refused while disabled, "
          f"error says '{why.strip()}'")
    # Everything else is Slurm's scontrol, byte for byte.
    for cmd in (["show", "partition"], ["show", "node", "n1"], ["ping"], ["show", "job", "999999"],
                ["checkpoint_is_not_a_word"]):
        r1 = run("scontrol", *cmd, user="stasis_ua", expect_rc=None, quiet=True)
        r2 = wrapped(*cmd, expect_rc=None)
        norm = lambda s: re.sub(r"\b(LastBusyTime|BootTime|SlurmdStartTime|CurrentWatts)=\S+", "", s)
        if r1[0] != r2[0] or norm(r1[1]) != norm(r2[1]) or r1[2] != r2[2]:
            fail(f"scontrol {' '.join(cmd)}: the wrapper changed the result: {r1} vs {r2}")
    print("OK scontrol show/ping/unknown words: same output and exit status with and without the wrapper")

    time.sleep(1)
    run("scancel", str(jobid), user="stasis_ua")
    wait_job_done(jobid)
    newest = complete_epochs(jobdir)[-1]
    old = counts(os.path.join(WORK, f"count-{jobid}.out"))
    last = max(max(v) for v in old.values())
    limit = last + 25
    with open(limit_file, "w") as f:
        f.write(f"{limit}\n")
    # A step of another shape is refused before anything starts, naming both.
    rc, out, err = run("srun", "-N2", "-n2", f"--restart-from={jobdir}", install_tool("count_task"),
                       user="stasis_ua", expect_rc=None)
    if rc == 0 or "4 task(s)" not in err or "2 task(s)" not in err or "count" in out:
        fail(f"srun -N2 -n2 --restart-from (a 4-task checkpoint): rc {rc}, out {out[-300:]!r}, err {err[-600:]!r}")
    print("OK srun -N2 -n2 --restart-from=<4-task epoch>: refused before anything ran, naming 4 and 2 tasks")
    script2 = write_script("restart.sh", f"#!/bin/sh\nsrun --restart-from={jobdir} "
                           f"{install_tool('count_task')}\n")
    job2 = submit(script2, "stasis_ua", "-N2", "-n4", "-o", os.path.join(WORK, "count-%j.out"))
    state, code = wait_job_done(job2, timeout=60)
    text = open(os.path.join(WORK, f"count-{job2}.out")).read()
    if state != "COMPLETED" or code != "0:0":
        fail(f"restart job {job2}: {state} {code}:\n{text[-2000:]}")
    if f"/{newest}/node0.ctx" not in text:
        fail(f"restart job {job2} did not say it restarts from epoch {newest}: {text[:500]!r}")
    seen = {}
    new = counts(os.path.join(WORK, f"count-{job2}.out"), seen)
    starts = check_continued(old, new, 4, f"restart job {job2}")
    if any(seen.get(r) != {str(job2)} for r in range(4)):
        fail(f"restart job {job2}: the restored tasks' SLURM_JOB_ID is {seen}, not the new job's")
    for r in range(4):
        if new[r][-1] != limit:
            fail(f"restart job {job2}: rank {r} stopped at {new[r][-1]}, not {limit}")
    print(f"OK job {jobid} cancelled, job {job2} (srun --restart-from={jobdir}) continued every task "
          f"from epoch {newest} (ranks resumed at {starts}) to {limit}, memory checked, getenv(SLURM_JOB_ID) "
          f"= {job2} in every restored task, COMPLETED 0:0")


def case_requeue():
    """A --checkpoint job requeued by scontrol checkpoint requeue resumes its
    step from that epoch by itself; a node whose stasisd is gone makes an
    epoch abort cleanly (tasks continue, no new epoch) and the next one,
    with stasisd back, succeeds; scontrol checkpoint vacate ends the job after
    a last epoch."""
    ck = enable_stasis()
    # Two steps: a short one (step 0, never checkpointed) and the counting
    # one (step 1). After a requeue, step 0 runs afresh, step 1 resumes.
    script = write_script("count.sh", f"#!/bin/sh\nsrun -N2 -n2 sh -c 'echo prep on $(hostname)'\n"
                          f"srun {install_tool('count_task')} 100 {os.path.join(WORK, 'rq-limit')}\n")
    jobid = submit(script, "stasis_ua", "-N2", "-n4", "--checkpoint=1h", f"--checkpoint-dir={ck}",
                   "-o", os.path.join(WORK, "rq-%j.out"))
    wait_step_running(jobid, 1)
    time.sleep(2)
    jobdir = os.path.join(ck, str(jobid))
    out_path = os.path.join(WORK, f"rq-{jobid}.out")
    # stasisd gone on n2: the epoch aborts, every task goes on.
    stop_stasisd("n2")
    before = complete_epochs(jobdir)
    rc, out, err = wrapped("checkpoint", str(jobid), expect_rc=None)
    if rc == 0 or complete_epochs(jobdir) != before:
        fail(f"scontrol checkpoint {jobid} without stasisd on n2: rc {rc}, epochs {complete_epochs(jobdir)}")
    if "n2" not in err:
        fail(f"the aborted epoch's error does not name node n2: {err!r}")
    n0 = {r: c[-1] for r, c in counts(out_path).items()}
    time.sleep(1)
    n1 = {r: c[-1] for r, c in counts(out_path).items()}
    if len(n1) != 4 or any(n1[r] <= n0.get(r, 0) for r in n1):
        fail(f"tasks did not continue after the aborted epoch: {n0} then {n1}")
    leftovers = [e for e in os.listdir(jobdir) if e.isdigit()] if os.path.isdir(jobdir) else []
    why = [line for line in err.splitlines() if "aborted" in line] or err.strip().splitlines()[-1:]
    print(f"OK stasisd stopped on n2: epoch aborted ({why[0].strip()}), "
          f"tasks kept counting, no epoch left behind ({leftovers})")
    # n2's stasisd and its worker killed in the middle of an epoch (n2
    # writes at 4 MB/s, so its 16 MiB take 4 s; both die 1 s after the
    # worker starts): the epoch aborts, every task goes on, and the next
    # epoch, with a fresh stasisd, succeeds.
    start_stasisd("n2", config="bandwidth_limit: 4M\n")
    daemon = STASISD["n2"].pid
    wrapper = install_tool("scontrol")
    helper = subprocess.Popen(
        ["bash", ARGS.cluster_sh, "run", DIR, "--user", "stasis_ua", "env",
         f"PATH={os.path.dirname(wrapper)}:/usr/bin:/bin", f"STASIS_STEP={install_tool('stasis-step')}",
         "scontrol", "checkpoint", str(jobid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=WORK)
    worker = None
    deadline = time.monotonic() + 20
    while worker is None and time.monotonic() < deadline:
        try:
            kids = open(f"/proc/{daemon}/task/{daemon}/children").read().split()
        except OSError:
            kids = []
        worker = int(kids[0]) if kids else None
        time.sleep(0.02)
    if worker is None:
        fail("n2's stasisd started no worker for the epoch")
    time.sleep(1.0)
    os.kill(worker, signal.SIGKILL)
    STASISD.pop("n2").kill()
    out, err = helper.communicate(timeout=120)
    print(f"    killed n2's stasisd (pid {daemon}) and its worker (pid {worker}) mid-epoch")
    for line in (out + err).splitlines():
        print(f"    {line}")
    if helper.returncode == 0 or complete_epochs(jobdir) != before:
        fail(f"epoch with n2's stasisd killed: rc {helper.returncode}, epochs {complete_epochs(jobdir)} "
             f"(before {before})")
    n0 = {r: c[-1] for r, c in counts(out_path).items()}
    time.sleep(1)
    n1 = {r: c[-1] for r, c in counts(out_path).items()}
    if len(n1) != 4 or any(n1[r] <= n0.get(r, 0) for r in n1):
        fail(f"tasks did not continue after the killed epoch: {n0} then {n1}")
    start_stasisd("n2")
    _, out, _ = wrapped("checkpoint", str(jobid))
    if len(complete_epochs(jobdir)) != len(before) + 1:
        fail(f"the epoch after n2's stasisd came back did not complete: {complete_epochs(jobdir)}")
    print(f"OK n2's stasisd and worker killed mid-epoch: epoch aborted, no epoch left, tasks kept "
          f"counting; with stasisd back the next epoch (epoch {complete_epochs(jobdir)[-1]}) completed")
    # Requeue: checkpoint, requeue, and the step resumes by itself.
    _, out, _ = wrapped("checkpoint", "requeue", str(jobid))
    epoch = complete_epochs(jobdir)[-1]
    before_rq = counts(out_path)
    # Slurm holds a requeued job back for AuthInfo's cred_expire (10 s in
    # the test cluster, 120 s by default).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state, _ = job_state(jobid)
        text = open(out_path).read() if os.path.exists(out_path) else ""
        if state == "RUNNING" and "resuming step 1" in text and len(counts(out_path)) == 4 and \
                all(len(v) >= 5 for v in counts(out_path).values()):
            break
        time.sleep(0.3)
    else:
        fail(f"requeued job {jobid} did not resume: {job_state(jobid)}, output {text[-500:]!r}")
    if f"/{epoch}/node0.ctx" not in text:
        fail(f"requeued job {jobid} did not resume from epoch {epoch}: {text[:400]!r}")
    # Step 0 had completed before the requeue (every node marked it done):
    # the rerun script does not run it a second time.
    if re.findall(r"^prep on (n\d)$", text, re.M) or "step 0 completed before the requeue; not run again" not in text:
        fail(f"requeued job {jobid}: step 0, completed before the requeue, ran again or said nothing: {text[:600]!r}")
    after = counts(out_path)
    starts = check_continued(before_rq, after, 4, f"requeued job {jobid}")
    print(f"OK scontrol checkpoint requeue {jobid}: epoch {epoch} of step 1, job requeued; step 0 (done "
          f"before) was not run again, step 1 resumed by itself from it (ranks at {starts})")
    # Vacate: one more epoch, then the job ends.
    _, out, _ = wrapped("checkpoint", "vacate", str(jobid))
    state, _ = wait_job_done(jobid, timeout=30)
    last = complete_epochs(jobdir)[-1]
    if last <= epoch or state not in ("CANCELLED", "FAILED", "COMPLETED"):
        fail(f"scontrol checkpoint vacate {jobid}: state {state}, newest epoch {last}")
    print(f"OK scontrol checkpoint vacate {jobid}: epoch {last}, then the job ended ({state})")
    # That epoch was of the restored step (its tasks found through the
    # node's restorer): a restart of a restart continues the counts again.
    vacated = counts(out_path)
    limit_file = os.path.join(WORK, "rq-limit")
    limit = max(max(v) for v in vacated.values()) + 15
    with open(limit_file, "w") as f:
        f.write(f"{limit}\n")
    again = write_script("again.sh", f"#!/bin/sh\nsrun --restart-from={jobdir}/{last} {install_tool('count_task')}\n")
    job4 = submit(again, "stasis_ua", "-N2", "-n4", "-o", os.path.join(WORK, "rq-%j.out"))
    state4, code4 = wait_job_done(job4, timeout=60)
    text4 = open(os.path.join(WORK, f"rq-{job4}.out")).read()
    new4 = counts(os.path.join(WORK, f"rq-{job4}.out"))
    if state4 != "COMPLETED":
        fail(f"restart of epoch {last} (job {job4}): {state4} {code4}: {text4[-1500:]!r}")
    starts4 = check_continued(vacated, new4, 4, f"restart of the vacate epoch (job {job4})")
    print(f"OK epoch {last} (taken of the restored step) restarted in job {job4}: every task continued "
          f"({starts4}) to its end, COMPLETED")
    # The final epoch before the time limit: a 1-minute job, interval 1 h,
    # final_lead=45s in plugstack.conf: one epoch about 15 s in.
    plain = write_script("plain.sh", f"#!/bin/sh\nsrun {install_tool('count_task')} 100\n")
    job3 = submit(plain, "stasis_ua", "-N2", "-n4", "--time=1", "--checkpoint=1h",
                  f"--checkpoint-dir={ck}", "-o", os.path.join(WORK, "rq-%j.out"))
    t = time.monotonic()
    epochs = wait_epochs(os.path.join(ck, str(job3)), 1, timeout=45)
    took = time.monotonic() - t
    log = open(os.path.join(WORK, f"ticker-{job3}.log")).read()
    if "final checkpoint" not in log or took < 5:
        fail(f"job {job3}: epoch {epochs} after {took:.1f} s is not the final one: {log!r}")
    run("scancel", str(job3), user="stasis_ua")
    print(f"OK job {job3} (--time=1, --checkpoint=1h, final_lead=45s): final epoch {epochs[0]} "
          f"{took:.1f} s after submission, before the time limit")


def case_batch():
    """The batch script's own processes: a --checkpoint job whose bash script
    runs a counting program directly (no srun), phase by phase in a loop, is
    checkpointed as step "batch"; scontrol checkpoint requeue requeues it and
    the script comes back where it stopped: the count goes on from the epoch,
    the loop is not started again, and the job completes."""
    ck = enable_stasis()
    count = install_tool("count_task")
    limits = [os.path.join(WORK, f"b-limit{i}") for i in (1, 2)]
    for f in limits:
        with open(f, "w") as fh:
            fh.write("1000000\n")
    script = write_script("batch.sh", "#!/bin/bash\n"
                          "for phase in 1 2; do\n"
                          "  echo \"phase $phase start\"\n"
                          f"  {count} 100 {WORK}/b-limit$phase\n"
                          "  echo \"phase $phase end\"\n"
                          "done\n"
                          "echo script done\n")
    # --open-mode=append: what Slurm advises for requeued jobs (else it
    # truncates the output file when the job starts again).
    jobid = submit(script, "stasis_ua", "-N1", "-n1", "--checkpoint=5s", f"--checkpoint-dir={ck}",
                   "--open-mode=append", "-o", os.path.join(WORK, "b-%j.out"))
    out_path = os.path.join(WORK, f"b-{jobid}.out")
    jobdir = os.path.join(ck, str(jobid))
    # The ticker's periodic epochs include the batch script.
    first = wait_epochs(jobdir, 1, timeout=30)[0]
    if "step batch" not in open(os.path.join(jobdir, str(first), "MANIFEST")).read():
        fail(f"periodic epoch {first} is not of step batch")
    print(f"OK periodic epoch {first} (--checkpoint=5s) of the batch script's processes")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and \
            (not os.path.exists(out_path) or len(counts(out_path).get(0, [])) < 10):
        time.sleep(0.2)
    _, out, err = wrapped("checkpoint", "create", str(jobid))
    epochs = complete_epochs(jobdir)
    if not epochs:
        fail(f"scontrol checkpoint create {jobid}: no epoch of the batch script: {out!r} {err!r}")
    manifest = open(os.path.join(jobdir, str(epochs[-1]), "MANIFEST")).read()
    if "step batch" not in manifest:
        fail(f"epoch {epochs[-1]} is not of step batch: {manifest[:400]!r}")
    print(f"OK scontrol checkpoint create {jobid}: epoch {epochs[-1]} of the batch script's processes")
    _, out, err = wrapped("checkpoint", "requeue", str(jobid))
    epoch = complete_epochs(jobdir)[-1]
    before = counts(out_path)
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        state, _ = job_state(jobid)
        text = open(out_path).read() if os.path.exists(out_path) else ""
        if state == "RUNNING" and "resuming step batch" in text and \
                len(counts(out_path).get(0, [])) >= len(before.get(0, [])) + 5:
            break
        time.sleep(0.3)
    else:
        fail(f"requeued job {jobid}: the batch script did not resume: {job_state(jobid)}, {text[-800:]!r}")
    if f"/{epoch}/node0.ctx" not in text:
        fail(f"requeued job {jobid} did not resume the batch script from epoch {epoch}: {text[-800:]!r}")
    after = counts(out_path)
    starts = check_continued(before, {0: after[0][len(before[0]):]}, 1, f"requeued job {jobid}")
    # Phase 1 ends, phase 2 runs to 5, the script ends: each line once.
    last = max(after[0])
    with open(limits[0], "w") as f:
        f.write(f"{last + 10}\n")
    with open(limits[1], "w") as f:
        f.write("5\n")
    state, code = wait_job_done(jobid, timeout=60)
    text = open(out_path).read()
    if state != "COMPLETED" or code != "0:0":
        fail(f"requeued job {jobid}: {state} {code}: {text[-1500:]!r}")
    for line in ("phase 1 start", "phase 1 end", "phase 2 start", "phase 2 end", "script done"):
        if len(re.findall(rf"^{line}$", text, re.M)) != 1:
            fail(f"requeued job {jobid}: '{line}' appears {len(re.findall(rf'^{line}$', text, re.M))} times: "
                 f"{text[-1500:]!r}")
    print(f"OK scontrol checkpoint requeue {jobid}: the batch script resumed by itself from epoch {epoch} "
          f"(its count at {starts[0]}), finished phase 1, ran phase 2, COMPLETED 0:0; each phase ran once")


def case_shared_tools():
    """The plain tools on the shared file system (--store-on gluster, whose
    FUSE client refuses rename flags, so every MANIFEST is linked into
    place): cr_checkpoint --dir <mount>/ck/job1 PID of a counting program on
    n1, three epochs, timed beside the same epochs into a local folder; no
    temporary MANIFEST left; stasis ls on n1 and n2 agree, stasis verify on
    n2 passes; cr_restart of the job folder on n2 continues the count from
    the newest epoch with its memory checked."""
    if ARGS.store_on != "gluster":
        fail("case shared_tools needs --store-on gluster")
    shared = os.path.join(DIR, "shared")
    tools = {t: install_tool(t) for t in ("cr_checkpoint", "cr_restart", "stasis", "count_task")}
    job = os.path.join(shared, "ck", "job1")
    local_job = os.path.join(WORK, "ck-local", "job1")
    limit = os.path.join(WORK, "t-limit")
    with open(limit, "w") as f:
        f.write("1000000\n")
    out_path = os.path.join(WORK, "t.out")
    # nsenter execs: the child is the counting program itself.
    prog = subprocess.Popen(on_node("n1", tools["count_task"], 50, limit), stdin=subprocess.DEVNULL,
                            stdout=open(out_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(counts(out_path).get(0, [])) < 5:
            if time.monotonic() > deadline or prog.poll() is not None:
                fail(f"count_task on n1 did not count: {open(out_path).read()[-300:]!r}")
            time.sleep(0.1)
        took = {"gluster": [], "local": []}
        for i in range(3):
            for where, folder in (("gluster", job), ("local", local_job)):
                _, _, _, t = node_run("n1", tools["cr_checkpoint"], "--no-daemon", "--dir", folder, prog.pid)
                took[where].append(t)
        epochs = complete_epochs(job)
        if epochs != [2, 3]:  # keep 2
            fail(f"{job}: complete epochs {epochs} after three checkpoints with --keep 2, expected [2, 3]")
        for e in epochs:
            names = sorted(os.listdir(os.path.join(job, str(e))))
            if names != ["MANIFEST", "node0.ctx"]:
                fail(f"{job}/{e} holds {names}, expected MANIFEST and node0.ctx only")
        med = {w: sorted(v)[1] for w, v in took.items()}
        print(f"OK cr_checkpoint --dir {job}: epochs {epochs} complete, MANIFEST linked into place (no "
              f"rename flags on FUSE), nothing else left; an epoch of the 8 MiB program took "
              f"{med['gluster']:.2f} s on GlusterFS, {med['local']:.2f} s on the local disk (median of 3, "
              f"the whole cr_checkpoint)")
        node_run("n1", tools["cr_checkpoint"], "--no-daemon", "--kill", "--dir", job, prog.pid)
        prog.wait(timeout=30)
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.wait()
    newest = complete_epochs(job)[-1]
    _, ls1, _, _ = node_run("n1", tools["stasis"], "ls", job)
    _, ls2, _, _ = node_run("n2", tools["stasis"], "ls", job)
    if ls1 != ls2 or f"{newest}" not in ls2 or "complete" not in ls2:
        fail(f"stasis ls {job} differs between n1 and n2: {ls1!r} vs {ls2!r}")
    _, ver, _, _ = node_run("n2", tools["stasis"], "verify", job)
    if len(re.findall(r"\bok\b", ver)) < 2:
        fail(f"stasis verify {job} on n2: expected two epochs verified: {ver!r}")
    print(f"OK stasis ls on n1 and n2 agree; stasis verify on n2: both epochs verified")
    old = counts(out_path)
    last = max(old[0])
    with open(limit, "w") as f:
        f.write(f"{last + 20}\n")
    _, _, err, _ = node_run("n2", tools["cr_restart"], "--no-daemon", job, timeout=120)
    if f"/{newest}/node0.ctx" not in err:
        fail(f"cr_restart {job} on n2 did not say it restarts epoch {newest}: {err!r}")
    new = {0: counts(out_path)[0][len(old[0]):]}
    starts = check_continued(old, new, 1, f"cr_restart {job} on n2")
    if new[0][-1] != last + 20:
        fail(f"the restored program stopped at {new[0][-1]}, not {last + 20}")
    print(f"OK cr_restart {job} on n2: epoch {newest} continued the count at {starts[0]} to {last + 20}, "
          f"memory checked at every count")


def brick_of(relpath):
    """(brick name, path in it) of the brick holding `relpath` of the
    volume (a distribute volume keeps each file whole on one brick)."""
    for b in ("brick1", "brick2"):
        path = os.path.join(DIR, "gluster", b, relpath)
        if os.path.isfile(path):
            return b, path
    return None, None


def brick_pid(brick):
    run_dir = os.path.join(DIR, "gluster", "run", "vols", "stasis")
    for name in os.listdir(run_dir):
        if name.endswith(f"-{brick}.pid"):
            return int(open(os.path.join(run_dir, name)).read().strip())
    fail(f"no pid file of {brick} in {run_dir}")


def shared_state(job, tools):
    """{epoch: state} of `job` by stasis ls on n1 and on n2, which must agree."""
    _, ls1, _, _ = node_run("n1", tools["stasis"], "ls", job)
    _, ls2, _, _ = node_run("n2", tools["stasis"], "ls", job)
    if ls1 != ls2:
        fail(f"stasis ls {job}: n1 and n2 disagree: {ls1!r} vs {ls2!r}")
    states = {}
    for line in ls2.splitlines()[1:]:
        m = re.match(r"\S+\s+(\d+)\s+(\w+)", line)
        if m:
            states[int(m.group(1))] = m.group(2)
    if "corrupt" in states.values():
        fail(f"stasis ls {job}: a corrupt epoch: {ls2!r}")
    return states


def newest_complete(states):
    done = [e for e, st in states.items() if st == "complete"]
    return max(done) if done else 0


def case_shared_faults():
    """Faults of the shared file system under cr_checkpoint --dir (issue 21):
    the glusterfsd holding the node file being written is SIGKILLed in the
    middle of the epoch; the bricks answer ENOSPC (storage.reserve 100TB); the
    FUSE client dies (the mount answers ENOTCONN). Each checkpoint fails
    naming the cause, the program runs on, and once the server is repaired
    stasis ls on n1 and n2 agree that the previous epoch is still the newest
    complete one, none corrupt; a checkpoint works again. At the end the
    program is killed and cr_restart on n2 continues it from the newest
    complete epoch, its memory checked."""
    if ARGS.store_on != "gluster":
        fail("case shared_faults needs --store-on gluster")
    tools = {t: install_tool(t) for t in ("cr_checkpoint", "cr_restart", "stasis", "count_task")}
    job = os.path.join(DIR, "shared", "ck", "jobf")
    limit = os.path.join(WORK, "f-limit")
    with open(limit, "w") as f:
        f.write("1000000\n")
    out_path = os.path.join(WORK, "f.out")
    prog = subprocess.Popen(on_node("n1", tools["count_task"], 50, limit), stdin=subprocess.DEVNULL,
                            stdout=open(out_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def checkpoint(*extra, expect_rc=0):
        return node_run("n1", tools["cr_checkpoint"], "--no-daemon", *extra, "--dir", job, prog.pid,
                        expect_rc=expect_rc)

    def still_counting(what):
        n = len(counts(out_path).get(0, []))
        deadline = time.monotonic() + 10
        while len(counts(out_path).get(0, [])) < n + 3:
            if prog.poll() is not None or time.monotonic() > deadline:
                fail(f"{what}: the program stopped counting (rc {prog.poll()})")
            time.sleep(0.05)

    try:
        deadline = time.monotonic() + 20
        while len(counts(out_path).get(0, [])) < 5:
            if time.monotonic() > deadline or prog.poll() is not None:
                fail(f"count_task on n1 did not count: {open(out_path).read()[-300:]!r}")
            time.sleep(0.1)
        checkpoint()
        good = newest_complete(shared_state(job, tools))

        # 1. The brick server holding the node file dies mid-write.
        rel = os.path.relpath(job, os.path.join(DIR, "shared"))
        epoch = good + 1
        ck = subprocess.Popen(on_node("n1", tools["cr_checkpoint"], "--no-daemon", "--bandwidth", "2M",
                                      "--dir", job, prog.pid),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        brick = None
        while time.monotonic() < deadline:
            brick, path = brick_of(os.path.join(rel, str(epoch), "node0.ctx"))
            if brick and os.path.getsize(path) >= 1 << 20:
                break
            time.sleep(0.05)
        if not brick:
            ck.kill()
            fail(f"epoch {epoch}'s node0.ctx did not grow on a brick")
        written = os.path.getsize(path)
        os.kill(brick_pid(brick), signal.SIGKILL)
        _, err = ck.communicate(timeout=60)
        if ck.returncode == 0 or "node0.ctx" not in err:
            fail(f"cr_checkpoint with {brick} killed after {written} bytes: rc {ck.returncode}, {err!r}")
        still_counting("brick killed")
        print(f"OK {brick}'s glusterfsd SIGKILLed with {written} bytes of epoch {epoch}'s node0.ctx on it: "
              f"cr_checkpoint exited {ck.returncode}: {err.strip().splitlines()[-1]}; the program counts on")
        t = time.monotonic()
        rc, out = cluster("gluster", DIR, "volume", "start", "stasis", "force")
        if rc != 0:
            fail(f"gluster volume start stasis force: {out}")
        # The client reconnects to the new brick process within seconds;
        # until then the brick's files are unavailable (DHT says ENOENT).
        while True:
            p = subprocess.run(on_node("n2", tools["stasis"], "verify", os.path.join(job, str(good))),
                               stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if p.returncode == 0:
                break
            if time.monotonic() > t + 30:
                fail(f"stasis verify {job}/{good} on n2 still fails 30 s after the brick restarted: {p.stdout}")
            time.sleep(0.2)
        states = shared_state(job, tools)
        if newest_complete(states) != good:
            fail(f"after the brick came back: newest complete epoch {newest_complete(states)}, not {good}")
        print(f"OK brick back and reconnected after {time.monotonic() - t:.1f} s: epoch {good} verified on n2, "
              f"ls on n1 and n2 agree it is the newest complete, none corrupt ({states})")
        checkpoint()
        good = newest_complete(shared_state(job, tools))

        # 2. The volume is full: the bricks keep more in reserve than any
        # disk holds, so they answer ENOSPC to every new file and folder
        # (GlusterFS 10.3 reads a bare "100" as 100 bytes, not percent).
        rc, out = cluster("gluster", DIR, "volume", "set", "stasis", "storage.reserve", "100TB")
        if rc != 0:
            fail(f"gluster volume set storage.reserve: {out}")
        deadline = time.monotonic() + 30
        while True:  # the bricks look at their free space every 5 s
            rc, _, err, _ = checkpoint(expect_rc=None)
            if rc != 0:
                break
            good = newest_complete(shared_state(job, tools))
            if time.monotonic() > deadline:
                fail("checkpoints still succeed 30 s after storage.reserve 100TB")
            time.sleep(1)
        if "space" not in err.lower():
            fail(f"cr_checkpoint on a full volume: rc {rc}, {err!r}: no word of space")
        still_counting("volume full")
        states = shared_state(job, tools)
        if newest_complete(states) != good:
            fail(f"volume full: newest complete epoch {newest_complete(states)}, not {good}")
        print(f"OK volume full: cr_checkpoint exited {rc}: {err.strip().splitlines()[-1]}; epoch {good} "
              "still the newest complete on n1 and n2")
        cluster("gluster", DIR, "volume", "reset", "stasis", "storage.reserve")

        # 3. The mount is gone: its FUSE client dies.
        client = int(open(os.path.join(DIR, "run", "glusterfs.pid")).read().strip())
        os.kill(client, signal.SIGKILL)
        time.sleep(0.2)
        rc, _, err, _ = checkpoint(expect_rc=None)
        if rc == 0 or "not connected" not in err:
            fail(f"cr_checkpoint with the FUSE client dead: rc {rc}, {err!r}")
        still_counting("mount gone")
        print(f"OK FUSE client killed: cr_checkpoint exited {rc}: {err.strip().splitlines()[-1]}; "
              "the program counts on")
        rc, out = cluster("remount", DIR)
        if rc != 0:
            fail(f"ci/cluster.sh remount: {out}")
        states = shared_state(job, tools)
        if newest_complete(states) != good:
            fail(f"after the remount: newest complete epoch {newest_complete(states)}, not {good}")
        print(f"OK remounted: ls on n1 and n2 agree, epoch {good} still the newest complete ({states})")
    finally:
        if prog.poll() is None:
            prog.kill()
        prog.wait()
    # The program is gone without a last checkpoint: the newest complete
    # epoch from before the faults brings it back on the other node.
    # The restored program writes on at its output file's offset of that
    # epoch: the counts it had printed since are printed again, the same.
    old = counts(out_path)[0]
    last = max(old)
    with open(limit, "w") as f:
        f.write(f"{last + 5}\n")
    _, _, err, _ = node_run("n2", tools["cr_restart"], "--no-daemon", job, timeout=120)
    if f"/{good}/node0.ctx" not in err:
        fail(f"cr_restart {job} on n2 did not restart epoch {good}: {err!r}")
    new = counts(out_path)[0]
    if new != list(range(1, last + 6)):
        fail(f"after cr_restart {job} on n2 the output counts {new[:3]}...{new[-8:]}, not 1..{last + 5}")
    print(f"OK the program SIGKILLed at count {last}; cr_restart {job} on n2 brought back epoch {good} "
          f"and it counted on to {last + 5}, memory checked at every count")


def case_share():
    """Two tasks per node that share a pipe (a named FIFO, then unlinked),
    POSIX shared memory (unlinked once both mapped it) and each an unlinked
    scratch file: checkpointed by the ticker, cancelled, restarted on the
    same two nodes, and again on other nodes (n2 and n3 instead of n1 and
    n2): every task's count continues, the reader gets exactly the next
    number through the restored pipe, sees the writer's shared counter move
    (the memory is shared again) and its scratch file intact."""
    if ARGS.nodes < 3:
        skip("the share case needs 3 nodes (--nodes 3)")
    ck = enable_stasis()
    share = install_tool("share_task")
    limit_file = os.path.join(WORK, "share-limit")
    script = write_script("share.sh", f"#!/bin/sh\nsrun {share} 100 {limit_file}\n")
    jobid = submit(script, "stasis_ua", "-N2", "--ntasks-per-node=2", "-w", "n1,n2", "--checkpoint=5s",
                   f"--checkpoint-dir={ck}", "-o", os.path.join(WORK, "share-%j.out"))
    jobdir = os.path.join(ck, str(jobid))
    epochs = wait_epochs(jobdir, 2, timeout=60)
    run("scancel", str(jobid), user="stasis_ua")
    wait_job_done(jobid)
    newest = complete_epochs(jobdir)[-1]
    old = counts(os.path.join(WORK, f"share-{jobid}.out"))
    if len(old) != 4:
        fail(f"job {jobid}: expected 4 counting tasks, got ranks {sorted(old)}")
    limit = max(max(v) for v in old.values()) + 20
    with open(limit_file, "w") as f:
        f.write(f"{limit}\n")
    print(f"OK job {jobid} (n1, n2; 2 tasks each sharing a FIFO, shm and scratch files): "
          f"epochs {epochs}..{newest}, cancelled")
    for nodes in ("n1,n2", "n2,n3"):
        script2 = write_script("share-restart.sh", f"#!/bin/sh\nsrun --restart-from={jobdir} {share}\n")
        job2 = submit(script2, "stasis_ua", "-N2", "--ntasks-per-node=2", "-w", nodes,
                      "-o", os.path.join(WORK, "share-%j.out"))
        state, code = wait_job_done(job2, timeout=60)
        text = open(os.path.join(WORK, f"share-{job2}.out")).read()
        if state != "COMPLETED" or code != "0:0":
            fail(f"restart job {job2} on {nodes}: {state} {code}:\n{text[-2000:]}")
        new = counts(os.path.join(WORK, f"share-{job2}.out"))
        starts = check_continued(old, new, 4, f"restart job {job2} on {nodes}")
        if any(new[r][-1] != limit for r in range(4)):
            fail(f"restart job {job2}: ranks stopped at {[new[r][-1] for r in range(4)]}, not {limit}")
        print(f"OK restart of epoch {newest} on {nodes} (job {job2}): pipe, shared memory and scratch "
              f"files intact, every task resumed ({starts}) and counted to {limit}")


def case_pmix():
    """A PMIx program (srun --mpi=pmix, 2 nodes x 2 tasks) with a
    PMIX_JCTRL_CHECKPOINT handler, in a --checkpoint job: at each epoch every
    rank hears of the checkpoint, drops its PMIx connection, re-initialises,
    hears it continued and fences with all ranks; `scontrol checkpoint
    vacate` gives every rank PMIX_JCTRL_PREEMPT_ALERT before its final
    checkpoint and ends the job; it is restarted with srun --mpi=pmix
    --restart-from: every rank hears it was
    restarted, fences with all ranks in the new step's namespace, and counts
    on from the epoch with its memory checked."""
    ck = enable_stasis()
    prog = install_tool("pmix_ckpt")
    limit_file = os.path.join(WORK, "pmix-limit")
    script = write_script("pmix.sh", f"#!/bin/sh\nsrun --mpi=pmix {prog} 100 {limit_file}\n")
    jobid = submit(script, "stasis_ua", "-N2", "-n4", "--checkpoint=5s", f"--checkpoint-dir={ck}",
                   "-o", os.path.join(WORK, "pmix-%j.out"))
    jobdir = os.path.join(ck, str(jobid))
    out_path = os.path.join(WORK, f"pmix-{jobid}.out")
    t = time.monotonic()
    epochs = wait_epochs(jobdir, 2, timeout=90)
    # The epochs' tasks told their handlers, and went on.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = open(out_path, errors="replace").read()
        fenced = re.findall(r"rank (\d+) of 4 fence ok after continued ns (\S+) job (\d+)", text)
        if all(sum(1 for f in fenced if f[0] == str(r)) >= 2 for r in range(4)):
            break
        time.sleep(0.5)
    if "PMIX FAILED" in text or "MEMORY BAD" in text:
        fail(f"job {jobid}: {text[-1500:]}")
    for r in range(4):
        events = text.count(f"rank {r} checkpoint event")
        cont = sum(1 for f in fenced if f[0] == str(r))
        if events < 2 or cont < 2:
            fail(f"job {jobid}: rank {r} saw {events} checkpoint event(s) and fenced {cont} time(s) "
                 f"after 'continued'; want 2 each after epochs {epochs}:\n{text[-1500:]}")
    print(f"OK job {jobid} (srun --mpi=pmix, 2 nodes, 4 tasks): epochs {epochs} after "
          f"{time.monotonic() - t:.1f} s; every rank got PMIX_JCTRL_CHECKPOINT, dropped and "
          f"re-initialised PMIx, heard PMIX_ERR_PROC_CHECKPOINT (continued) and fenced with all 4")
    log = open(os.path.join(WORK, f"ticker-{jobid}.log")).read()
    for line in [l for l in log.splitlines() if "trigger to resumed" in l]:
        print(f"    ticker: {line}")

    # vacate: a final epoch (PMIX_JCTRL_PREEMPT_ALERT first), then the job ends.
    before = complete_epochs(jobdir)[-1]
    install_tool("scontrol")
    _, out, _ = wrapped("checkpoint", "vacate", str(jobid))
    wait_job_done(jobid)
    newest = complete_epochs(jobdir)[-1]
    if newest <= before:
        fail(f"scontrol checkpoint vacate {jobid}: no new epoch after {before}: {out!r}")
    text = open(out_path, errors="replace").read()
    for r in range(4):
        tail_lines = [l for l in text.splitlines() if l.startswith(f"rank {r} ") and "count" not in l]
        if tail_lines[-2:] != [f"rank {r} preempt alert", f"rank {r} checkpoint event"]:
            fail(f"scontrol checkpoint vacate {jobid}: rank {r}'s last events are {tail_lines[-3:]}, "
                 "want the preempt alert, then the checkpoint event")
    print(f"OK scontrol checkpoint vacate {jobid}: epoch {newest}; every rank got "
          f"PMIX_JCTRL_PREEMPT_ALERT, then PMIX_JCTRL_CHECKPOINT, and the job ended")
    old = counts(out_path)
    limit = max(max(v) for v in old.values()) + 20
    with open(limit_file, "w") as f:
        f.write(f"{limit}\n")
    script2 = write_script("pmix-restart.sh", f"#!/bin/sh\nsrun --mpi=pmix --restart-from={jobdir} {prog}\n")
    job2 = submit(script2, "stasis_ua", "-N2", "-n4", "-o", os.path.join(WORK, "pmix-%j.out"))
    state, code = wait_job_done(job2, timeout=90)
    out2 = os.path.join(WORK, f"pmix-{job2}.out")
    text2 = open(out2, errors="replace").read()
    if state != "COMPLETED" or code != "0:0":
        fail(f"restart job {job2}: {state} {code}:\n{text2[-2000:]}")
    restarted = re.findall(r"rank (\d+) of 4 fence ok after restarted ns (\S+) job (\d+) on (\S+)", text2)
    if sorted(int(f[0]) for f in restarted) != [0, 1, 2, 3]:
        fail(f"restart job {job2}: not every rank fenced after 'restarted': {restarted}\n{text2[-2000:]}")
    bad = [f for f in restarted if f[2] != str(job2) or f".{job2}." not in f[1]]
    if bad:
        fail(f"restart job {job2}: ranks re-initialised PMIx in the old step's namespace or job: {bad}")
    new = counts(out2)
    starts = check_continued(old, new, 4, f"restart job {job2}")
    for r in range(4):
        if new[r][-1] != limit:
            fail(f"restart job {job2}: rank {r} stopped at {new[r][-1]}, not {limit}")
    print(f"OK job {job2} (srun --mpi=pmix --restart-from): every rank heard PMIX_ERR_PROC_RESTART, "
          f"re-initialised PMIx in namespace {restarted[0][1]} and fenced with all 4 "
          f"(nodes {sorted(set(f[3] for f in restarted))}), counted on from epoch {newest} "
          f"(resumed at {starts}) to {limit}, memory checked, COMPLETED 0:0")

    # A program whose handler never answers: the epoch fails after
    # STASIS_PMIX_TIMEOUT, every rank runs on, the job folder gets no epoch.
    script3 = write_script("pmix-ignore.sh", "#!/bin/sh\nexport STASIS_PMIX_TIMEOUT=2\n"
                           f"srun --mpi=pmix {prog} 100 '' ignore\n")
    job3 = submit(script3, "stasis_ua", "-N2", "-n2", f"--checkpoint-dir={ck}",
                  "-o", os.path.join(WORK, "pmix-%j.out"))
    out3 = os.path.join(WORK, f"pmix-{job3}.out")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not os.path.exists(out3) or len(counts(out3).get(1, [])) < 3):
        time.sleep(0.2)
    t = time.monotonic()
    rc, out, err = wrapped("checkpoint", "create", str(job3), expect_rc=None)
    took = time.monotonic() - t
    n_before = {r: len(v) for r, v in counts(out3).items()}
    time.sleep(1)
    text3 = open(out3, errors="replace").read()
    n_after = {r: len(v) for r, v in counts(out3).items()}
    run("scancel", str(job3), user="stasis_ua")
    wait_job_done(job3)
    if rc == 0 or complete_epochs(os.path.join(ck, str(job3))):
        fail(f"scontrol checkpoint create {job3} (handlers never answer): rc {rc}, epochs "
             f"{complete_epochs(os.path.join(ck, str(job3)))}: want a failure and no epoch")
    if text3.count("no PMIX_JCTRL_CHECKPOINT_COMPLETE (or PMIx_Finalize) within 2 s") < 2:
        fail(f"job {job3}: the tasks' stderr does not say which rank did not answer:\n{text3[-1500:]}")
    if any(n_after.get(r, 0) <= n_before.get(r, 0) for r in range(2)):
        fail(f"job {job3}: the ranks stopped counting after the failed epoch: {n_before} -> {n_after}")
    print(f"OK job {job3} (handlers that never answer, STASIS_PMIX_TIMEOUT=2): scontrol checkpoint "
          f"create failed after {took:.1f} s ({err.strip().splitlines()[-1] if err.strip() else rc}), "
          f"no epoch, every rank counts on")

    # A program that stays connected: it answers PMIX_JCTRL_CHECKPOINT_COMPLETE
    # and keeps its PMIx connection to slurmstepd, which a restart could only
    # give back closed. Such an epoch could not be restarted, so it fails,
    # naming the connection; every rank hears PMIX_ERR_PROC_CHECKPOINT (it
    # continues, nothing taken) and fences with both ranks.
    script4 = write_script("pmix-complete.sh", f"#!/bin/sh\nsrun --mpi=pmix {prog} 100 '' complete\n")
    job4 = submit(script4, "stasis_ua", "-N2", "-n2", f"--checkpoint-dir={ck}",
                  "-o", os.path.join(WORK, "pmix-%j.out"))
    out4 = os.path.join(WORK, f"pmix-{job4}.out")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not os.path.exists(out4) or len(counts(out4).get(1, [])) < 3):
        time.sleep(0.2)
    rc, _, err = wrapped("checkpoint", "create", str(job4), expect_rc=None)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text4 = open(out4, errors="replace").read()
        if all(f"rank {r} of 2 fence ok after continued connected" in text4 for r in range(2)):
            break
        time.sleep(0.2)
    n_before = {r: len(v) for r, v in counts(out4).items()}
    time.sleep(1)
    n_after = {r: len(v) for r, v in counts(out4).items()}
    run("scancel", str(job4), user="stasis_ua")
    wait_job_done(job4)
    refusal = re.search(r"task \d+ \(pid \d+\) fd \d+: TCP \S+ -> \S+ is connected to [^;]*slurmstepd: the PMIx "
                        r"server of step [^;]*; it would come back closed, so this checkpoint could not be restarted",
                        err)
    if rc == 0 or not refusal or complete_epochs(os.path.join(ck, str(job4))):
        fail(f"scontrol checkpoint create {job4} (a rank keeps its PMIx connection): rc {rc}, epochs "
             f"{complete_epochs(os.path.join(ck, str(job4)))}: want a failure naming the connection to the "
             f"PMIx server and no epoch: {err[-1500:]!r}")
    if "PMIX FAILED" in text4 or not all(f"rank {r} of 2 fence ok after continued connected" in text4
                                         for r in range(2)):
        fail(f"job {job4} (stays connected): {text4[-1500:]}")
    if any(n_after.get(r, 0) <= n_before.get(r, 0) for r in range(2)):
        fail(f"job {job4}: the ranks stopped counting after the refused epoch: {n_before} -> {n_after}")
    print(f"OK job {job4} (answers PMIX_JCTRL_CHECKPOINT_COMPLETE, keeps PMIx): the epoch is refused "
          f"({refusal.group(0)[:160]}...), no epoch; every rank heard PMIX_ERR_PROC_CHECKPOINT, fenced "
          f"with both ranks and counts on")


def case_mpi_honest():
    """Honest epochs (issue 20): an Open MPI ring (srun --mpi=pmix, 4 ranks
    on 2 nodes, btl/tcp between the nodes) in a --checkpoint job. Its ranks
    hold TCP connections to ranks on the other node and to their PMIx server
    (slurmstepd), and map that server's data-store files: no epoch of it
    could be restarted, so none may be called complete. Every epoch,
    periodic (the ticker) or asked for (scontrol checkpoint create), fails
    with one line naming the task, the fd and the peer; no epoch is complete
    in `stasis ls`; the job runs on, MPI still works, and the ring ends with
    every byte of every message and the checksums right, COMPLETED 0:0."""
    ck = enable_stasis()
    ring = install_tool("mpi_ring")
    stop = os.path.join(WORK, "ring-stop")
    out = os.path.join(WORK, "ring-%j.out")
    # btl/tcp on the cluster's network only (each node also has lo). Open
    # MPI names its session folder and vader's shared-memory files after the
    # host, uid and PMIx namespace, which are the same in every test cluster
    # on this machine (n1, stasis_ua, slurm.pmix.1.0), and /tmp and /dev/shm
    # are shared: each cluster's job keeps them in its own folder.
    ompi_tmp = os.path.join(WORK, "ompi-tmp")
    script = write_script("ring.sh", "#!/bin/sh\nexport OMPI_MCA_btl_tcp_if_include=10.250.0.0/24\n"
                          f"mkdir -p {ompi_tmp}\nexport TMPDIR={ompi_tmp} OMPI_MCA_orte_tmpdir_base={ompi_tmp} "
                          f"OMPI_MCA_btl_vader_backing_directory={ompi_tmp}\n"
                          f"srun --mpi=pmix {ring} {stop} 80\n")
    jobid = submit(script, "stasis_ua", "-N2", "-n4", "--checkpoint=5s", f"--checkpoint-dir={ck}", "-o", out)
    out = os.path.join(WORK, f"ring-{jobid}.out")
    jobdir = os.path.join(ck, str(jobid))

    def rounds():
        """rank -> the last round it printed."""
        last = {}
        if os.path.exists(out):
            for m in re.finditer(r"rank (\d+) of 4 on (\S+) round (\d+)", open(out, errors="replace").read()):
                last[int(m.group(1))] = int(m.group(3))
        return last

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(rounds()) < 4:
        time.sleep(0.3)
    if len(rounds()) < 4:
        text = open(out, errors="replace").read() if os.path.exists(out) else ""
        fail(f"job {jobid}: the ring did not start on 4 ranks: {text[-1500:]}")
    print(f"OK job {jobid}: Open MPI ring running on 4 ranks, 2 nodes: {rounds()}")

    # The ticker's periodic epoch fails, naming the connection.
    ticker = os.path.join(WORK, f"ticker-{jobid}.log")
    line_re = re.compile(r"task (\d+) \(pid (\d+)\) fd (\d+): TCP (\S+) -> (\S+) is connected to ([^;]+); it would "
                         r"come back closed, so this checkpoint could not be restarted")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = open(ticker, errors="replace").read() if os.path.exists(ticker) else ""
        if "aborted" in log:
            break
        time.sleep(0.3)
    aborted = [l for l in log.splitlines() if "aborted" in l]
    for l in aborted:
        print(f"    ticker: {l}")
    if not aborted or not any(line_re.search(l) for l in aborted):
        fail(f"job {jobid}: the ticker's epoch did not fail naming a task, fd and TCP peer:\n{log[-2000:]}")
    if complete_epochs(jobdir):
        fail(f"job {jobid}: epochs {complete_epochs(jobdir)} are complete although none could be restarted")
    # The plugin gives pmix steps OpenPMIx's hash data store: no rank maps
    # the step's PMIx server files (ds21), so only sockets are refused.
    if any("file(s)" in l or "pmix_dstor" in l for l in aborted):
        fail(f"job {jobid}: a rank maps the PMIx server's data-store files (PMIX_MCA_gds=hash not in effect):\n"
             + "\n".join(aborted))
    print("OK the periodic epoch failed with one line naming the task, the fd and the peer; no PMIx file mapped")

    # scontrol checkpoint create: refused with that line; the job runs on.
    before = rounds()
    rc, _, err = wrapped("checkpoint", "create", str(jobid), expect_rc=None)
    named = [m for m in (line_re.search(l) for l in err.splitlines()) if m]
    if rc == 0 or not named:
        fail(f"scontrol checkpoint create {jobid}: rc {rc}; want a failure naming task, fd and peer: {err[-1500:]!r}")
    task, pid, fd, local, peer, who = named[0].groups()
    if "slurmstepd: the PMIx server of step" not in who and not re.search(r"node n\d of this step", who):
        fail(f"scontrol checkpoint create {jobid}: the peer {peer} is not named as the step's PMIx server "
             f"or one of its nodes: {who!r}")
    _, listed, _ = run(install_tool("stasis"), "ls", jobdir, user="stasis_ua")
    if re.search(r"\bcomplete\b", listed) or complete_epochs(jobdir):
        fail(f"stasis ls {jobdir} shows a complete epoch of job {jobid}:\n{listed}")
    print(f"OK scontrol checkpoint create {jobid}: rc {rc}, task {task} (pid {pid}) fd {fd}: TCP {local} -> "
          f"{peer}, connected to {who}; stasis ls shows no complete epoch")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(rounds().get(r, 0) > before.get(r, 0) + 5 for r in range(4)):
        time.sleep(0.3)
    after = rounds()
    if not all(after.get(r, 0) > before.get(r, 0) + 5 for r in range(4)):
        fail(f"job {jobid}: the ring did not go on after the refused epochs: {before} -> {after}")
    state, _ = job_state(jobid)
    if state != "RUNNING":
        fail(f"job {jobid} is {state} after the refused epochs")
    with open(stop, "w") as f:
        f.write("stop\n")
    state, code = wait_job_done(jobid, timeout=60)
    text = open(out, errors="replace").read()
    if state != "COMPLETED" or code != "0:0" or "RING BAD" in text:
        fail(f"job {jobid}: {state} {code}:\n{text[-2000:]}")
    ok = re.search(r"ring ok: 4 ranks, (\d+) rounds, checksum (\S+)", text)
    if not ok:
        fail(f"job {jobid}: the ring did not report its checksums right:\n{text[-2000:]}")
    if complete_epochs(jobdir):
        fail(f"job {jobid}: epochs {complete_epochs(jobdir)} were called complete")
    print(f"OK job {jobid} ran on through the refused epochs (rounds {before} -> {after}) and ended "
          f"COMPLETED 0:0: ring ok, {ok.group(1)} rounds, every byte and checksum right")

    # A task of an `srun --mpi=pmix` step that holds a file of the step's PMIx
    # server folder (gone with the step) and no connection: the epoch fails
    # naming the file; once it let go, the epoch is complete, so slurmstepd's
    # PMIx listener it inherited is no obstacle.
    release = os.path.join(WORK, "release")
    holder = write_script("hold.sh", "#!/bin/sh\n"
                          "f=$(find \"$PMIX_SERVER_TMPDIR\" -type f | sort | head -n 1)\n"
                          "exec 3<\"$f\"\necho \"holding $f\"\n"
                          f"while [ ! -e {release} ]; do sleep 1; done\n"
                          "exec 3<&-\necho released\nwhile :; do sleep 1; done\n")
    script2 = write_script("hold-job.sh", f"#!/bin/sh\nsrun --mpi=pmix -n1 {holder}\n")
    job2 = submit(script2, "stasis_ua", "-N1", "-n1", f"--checkpoint-dir={ck}",
                  "-o", os.path.join(WORK, "hold-%j.out"))
    out2 = os.path.join(WORK, f"hold-{job2}.out")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not os.path.exists(out2) or "holding" not in open(out2).read()):
        time.sleep(0.2)
    held = re.search(r"holding (\S+)", open(out2).read() if os.path.exists(out2) else "")
    if not held or f"/pmix.{job2}.0/" not in held.group(1):
        fail(f"job {job2}: the task holds no file of its PMIx server folder: "
             f"{open(out2).read() if os.path.exists(out2) else ''!r}")
    rc, _, err = wrapped("checkpoint", "create", str(job2), expect_rc=None)
    want = (rf"task 0 \(pid \d+\) fd 3: {re.escape(held.group(1))}, in \S+/pmix\.{job2}\.0 \(the PMIx server "
            rf"folder of step {job2}\.0, removed when the step ends\): it would be gone at restart")
    if rc == 0 or not re.search(want, err) or complete_epochs(os.path.join(ck, str(job2))):
        fail(f"scontrol checkpoint create {job2} (a task holds {held.group(1)}): rc {rc}, epochs "
             f"{complete_epochs(os.path.join(ck, str(job2)))}; want a failure naming the file: {err[-1200:]!r}")
    print(f"OK scontrol checkpoint create {job2}: refused, naming task 0, fd 3 and {held.group(1)}")
    open(release, "w").close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "released" not in open(out2).read():
        time.sleep(0.2)
    _, out, _ = wrapped("checkpoint", "create", str(job2))
    epochs = complete_epochs(os.path.join(ck, str(job2)))
    run("scancel", str(job2), user="stasis_ua")
    wait_job_done(job2)
    if not epochs:
        fail(f"scontrol checkpoint create {job2} after the task let go of the file: no complete epoch: {out!r}")
    _, shown, _ = run(install_tool("stasis"), "show", os.path.join(ck, str(job2), str(epochs[-1]), "node0.ctx"),
                      user="stasis_ua", quiet=True)
    if not re.search(r"\bunix +TCP \S+ listening( [\w-]+)? pos \d+ \(led outside: restored closed\)", shown):
        fail(f"job {job2}'s epoch does not show the inherited PMIx listener saved as closed:\n{shown[-1500:]}")
    print(f"OK once the task let go of it: epoch {epochs[-1]} complete, the inherited PMIx listener saved "
          "as closed")


def case_daemon_restart():
    """cr_restart through the node's stasisd from inside a step (issue 23):
    the daemon runs in the node's network and a UTS namespace of its own,
    the step in slurmd's; the restored task must be in the step's
    namespaces and cgroups (the caller's), not the daemon's."""
    enable_stasis()
    count = install_tool("count_task")
    ckpt, restart = install_tool("cr_checkpoint"), install_tool("cr_restart")
    sock = os.path.join(DIR, "run", "stasisd-n1.sock")
    ctx = os.path.join(WORK, "ck", "task.ctx")
    limit_file = os.path.join(WORK, "limit")
    script = write_script("one.sh", f"#!/bin/sh\nsrun -N1 -n1 {count} 100 {limit_file}\n")
    job = submit(script, "stasis_ua", "-N1", "-w", "n1", "-o", os.path.join(WORK, "one-%j.out"))
    wait_step_running(job, 0)
    pid = 0
    deadline = time.monotonic() + 20
    while not pid and time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-u", "stasis_ua", "-x", "count_task"], stdout=subprocess.PIPE,
                             text=True).stdout.split()
        pid = int(out[0]) if len(out) == 1 else 0
        time.sleep(0.1)
    if not pid:
        fail("no count_task of job {job} found")
    time.sleep(1)
    run("env", f"STASIS_SOCKET={sock}", ckpt, "--kill", "-f", ctx, str(pid), user="stasis_ua")
    wait_job_done(job)
    script2 = write_script("one-restart.sh",
                           f"#!/bin/sh\nsrun -N1 -n1 env STASIS_SOCKET={sock} {restart} {ctx}\n")
    job2 = submit(script2, "stasis_ua", "-N1", "-w", "n1", "-o", os.path.join(WORK, "one-%j.out"))
    caller = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-u", "stasis_ua", "-x", "cr_restart"], stdout=subprocess.PIPE,
                             text=True).stdout.split()
        caller = int(out[0]) if len(out) == 1 else 0
        if caller and os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.1)
    if not caller or not os.path.exists(f"/proc/{pid}"):
        fail(f"job {job2}: pid {pid} was not restored through stasisd ({job_state(job2)})")
    daemon = STASISD["n1"].pid
    problems = []
    for kind in ("uts", "net", "mnt", "ipc", "cgroup", "pid"):
        mine, theirs = os.readlink(f"/proc/{pid}/ns/{kind}"), os.readlink(f"/proc/{caller}/ns/{kind}")
        if mine != theirs:
            problems.append(f"{kind} {mine}, the step's {theirs}")
    if os.readlink(f"/proc/{pid}/ns/uts") == os.readlink(f"/proc/{daemon}/ns/uts"):
        problems.append("in stasisd's UTS namespace")
    cg, step_cg = open(f"/proc/{pid}/cgroup").read(), open(f"/proc/{caller}/cgroup").read()
    if cg != step_cg:
        problems.append(f"cgroups {cg.split()}, the step's {step_cg.split()}")
    if problems:
        fail(f"job {job2}: the task restored through stasisd left the step: " + "; ".join(problems))
    with open(limit_file, "w") as f:
        f.write("1\n")  # any count: the task stops at its next line
    state, code = wait_job_done(job2, timeout=60)
    if state != "COMPLETED":
        fail(f"job {job2} (cr_restart through stasisd in a step): {state} {code}")
    print(f"OK job {job2}: cr_restart in a step restored pid {pid} through n1's stasisd into the "
          f"step's namespaces and cgroups {step_cg.split()}, and it completed")


CASES = {
    "daemon_restart": case_daemon_restart,
    "pmix": case_pmix,
    "mpi_honest": case_mpi_honest,
    "share": case_share,
    "smoke": case_smoke,
    "spank": case_spank,
    "checkpoint": case_checkpoint,
    "requeue": case_requeue,
    "batch": case_batch,
    "shared_tools": case_shared_tools,
    "shared_faults": case_shared_faults,
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
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")
              if line.split()[4] == DIR or line.split()[4].startswith(DIR + "/")]
    if mounts:
        left.append(f"mounts under the cluster folder: {mounts}")
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
    ap.add_argument("--stasis-step", default="")
    ap.add_argument("--stasisd", default="")
    ap.add_argument("--stasis", default="")
    ap.add_argument("--count-task", default="")
    ap.add_argument("--share-task", default="")
    ap.add_argument("--pmix-ckpt", default="")
    ap.add_argument("--pmix-agent", default="")
    ap.add_argument("--mpi-ring", default="")
    ap.add_argument("--scontrol-wrapper", default="")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--store-on", choices=("local", "gluster"), default="local")
    ap.add_argument("case", choices=sorted(CASES))
    ARGS = ap.parse_args()
    ARGS.cluster_sh = os.path.abspath(ARGS.cluster_sh)
    if os.geteuid() != 0:
        skip("cluster tests need root (network namespaces, munged, slurmctld, slurmd)")
    for prog in ("slurmd", "slurmctld", "munged", "srun", "sbatch", "ip", "nsenter",
                 "unshare", "setpriv", "useradd"):
        if not shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            skip(f"{prog} is not installed (ci/setup.sh installs it)")
    if ARGS.store_on == "gluster":
        for prog in ("glusterd", "glusterfsd", "glusterfs", "gluster"):
            if not shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
                skip(f"{prog} is not installed (ci/setup.sh installs glusterfs-server, glusterfs-client)")
        if not os.path.exists("/dev/fuse"):
            skip("no /dev/fuse: the GlusterFS client mounts through FUSE")
    if not ARGS.pmix_fence or not os.path.exists(ARGS.pmix_fence):
        skip("pmix_fence was not built: pkg-config found no 'pmix' when configuring "
             "(libpmix-dev; ci/setup.sh installs it)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        print(f"FAIL: prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
        sys.exit(1)
    ensure_users()
    suffix = "-gluster" if ARGS.store_on == "gluster" else ""
    DIR = tempfile.mkdtemp(prefix=f"stasis-cluster-{ARGS.case}{suffix}-", dir="/tmp")
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
        rc, out = cluster("start", DIR, str(ARGS.nodes),
                          *(["--gluster"] if ARGS.store_on == "gluster" else []), timeout=120)
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
