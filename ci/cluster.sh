#!/usr/bin/env bash
# A real multi-node Slurm cluster on this one machine, for the `cluster` test
# tier and for trying things by hand. Everything lives in one private folder
# DIR: no /etc/slurm, no system munge key, no system service is touched, so
# several clusters (and a system Slurm) can coexist.
#
#   ci/cluster.sh start  DIR [NODES] [--gluster]   start munged, slurmctld and NODES slurmd
#                                      (default 2); --gluster: and a GlusterFS volume at DIR/shared
#   ci/cluster.sh stop   DIR           stop everything of DIR (a no-op when stopped)
#   ci/cluster.sh run    DIR [--user NAME] CMD...   a Slurm client command in the cluster
#   ci/cluster.sh status DIR           0 running, 3 stopped, 1 broken
#   ci/cluster.sh gluster DIR ARGS...  the gluster CLI against the cluster's glusterd
#   ci/cluster.sh remount DIR          mount DIR/shared again (after its FUSE client died)
#
# Each node is a network namespace (stasis-<id>-n1, -n2, ...) joined to a bridge
# in a hub namespace (stasis-<id>-hub) by a veth pair, with its own hostname
# (UTS namespace) n1, n2, ... and address 10.250.0.(10+i); the controller is
# host `ctl` at 10.250.0.1 in stasis-<id>-ctl, where munged runs too and where
# `run` executes clients. <id> is the first 8 hex digits of the SHA-1 of DIR's
# absolute path. Nothing is created in the machine's own network namespace.
#
# In DIR: slurm.conf, cgroup.conf, plugstack.conf (empty; one line such as
# "required /path/plugin.so" adds a SPANK plugin: srun, sbatch and each new
# job step read it when they start, slurmd only at the next start), work/
# (mode 1777: jobs' scripts, programs and output), log/ (every daemon's log),
# tmp/nX (each node's TmpFS), nodes/nX/spool, ctld/state, munge/ (key in a
# 0700 folder, socket in a 0755 one), run/ (pid files, keeper.py).
#
# The daemons are children of a keeper (python3, a child subreaper) that reaps
# them and every orphan of theirs (slurmstepd, tasks): PID 1 may not reap
# here. The keeper exits when its last child is gone; `stop` finds everything
# by pid file, by network namespace and by DIR on the command line.
#
# `run` sets SLURM_CONF, STASIS_CLUSTER_DIR and STASIS_MUNGE_SOCKET (Slurm
# itself finds munged through AuthInfo in slurm.conf); `--user NAME` runs the
# command as NAME (setpriv, NAME's groups), from the caller's folder.
# start creates the tests' unprivileged users stasis_ua and stasis_ub if missing.
#
# With --gluster (or STASIS_CLUSTER_GLUSTER=1), a shared file system as a
# site has one: the file server is host `fs` at 10.250.0.2 in namespace
# stasis-<id>-fs, running glusterd and one glusterfsd per brick (bricks
# DIR/gluster/brick1 and brick2, a 2-brick distribute volume `stasis`), and
# the volume is mounted through the FUSE client (glusterfs, in the
# controller's namespace) at DIR/shared. The nodes are network namespaces
# sharing the machine's mount namespace, so that one FUSE mount is the same
# path on every node. glusterd runs in a private mount namespace where
# /var/lib/glusterd, /run/gluster and /var/log/glusterfs are DIR/gluster/lib,
# run and log: nothing of the machine's own GlusterFS is used or touched,
# and several clusters coexist. Every start makes a new, empty volume;
# stop unmounts DIR/shared before it ends the daemons.
#
# Environment: STASIS_CLUSTER_CPUS (CPUs per node, default 2),
# STASIS_CLUSTER_TIMEOUT (seconds to wait for idle nodes, default 60),
# STASIS_CLUSTER_DEBUG (SlurmctldDebug and SlurmdDebug, default info),
# STASIS_CLUSTER_KEEP_FAILED=1 (leave a cluster that did not come up running).
set -euo pipefail

PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
me=cluster.sh
die() { echo "$me: $*" >&2; exit 1; }
usage() {
  sed -n '7,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
cmd=$1
DIR=$(realpath -m -- "$2")
shift 2
[[ $DIR != / ]] || die "refusing to use / as the cluster folder"

ID=$(printf %s "$DIR" | sha1sum | cut -c1-8)
NSP=stasis-$ID                  # namespace prefix: $NSP-hub, $NSP-ctl, $NSP-n<i>
BRIDGE=stbr$ID                  # lives in $NSP-hub only
CTL_ADDR=10.250.0.1
CONF=$DIR/slurm.conf
MUNGE_SOCK=$DIR/munge/run/munge.socket
FS_ADDR=10.250.0.2
SHARED=$DIR/shared              # the GlusterFS mount (--gluster)
GSOCK=/run/gluster/glusterd.socket  # inside glusterd's mount namespace
STATE=$DIR/cluster.env
SELF=$(realpath -- "$0")

node_addr() { echo "10.250.0.$((10 + $1))"; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "$cmd needs root (it creates network namespaces and runs daemons)"
}

need_tools() {
  local t missing=()
  for t in munged slurmctld slurmd sinfo srun ip nsenter unshare setpriv python3 sha1sum flock; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  if [[ ${GLUSTER:-0} == 1 ]]; then
    for t in glusterd glusterfsd glusterfs gluster; do
      command -v "$t" >/dev/null || missing+=("$t")
    done
    [[ -c /dev/fuse ]] || missing+=("/dev/fuse")
  fi
  [[ ${#missing[@]} -eq 0 ]] || die "missing programs: ${missing[*]} (ci/setup.sh installs them)"
}

# Our namespaces that exist now (leftovers included).
our_netns() {
  local f
  for f in /run/netns/"$NSP"-*; do
    [[ -e $f ]] && basename "$f"
  done
  return 0
}

# "net:[inode]" of each of our namespaces, one per line.
our_netns_ids() {
  local ns
  for ns in $(our_netns); do
    echo "net:[$(stat -L -c %i "/run/netns/$ns")]"
  done
}

alive() { # pid: running and not a zombie
  local st
  [[ -n ${1:-} && -r /proc/$1/stat ]] || return 1
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

since() { awk "BEGIN {printf \"%.3f\", $EPOCHREALTIME - $1}"; } # seconds since $EPOCHREALTIME value $1

pidfile_pid() { if [[ -s $1 ]]; then tr -dc 0-9 <"$1"; fi; }

# Every live process that belongs to this cluster: named by a pid file in
# DIR/run (if it still runs munged, slurmctld, slurmd or the keeper), in one
# of its network namespaces (daemons, slurmstepd, job tasks, clients started
# by `run`), or naming DIR's keeper, launcher, slurm.conf or munge folder on
# its command line. Never this script or its ancestors. One pass over /proc.
cluster_pids() {
  # shellcheck disable=SC2046
  python3 - "$DIR" "$$" $(our_netns_ids) <<'EOF'
import os, sys
d, me, ids = sys.argv[1], int(sys.argv[2]), set(sys.argv[3:])
marks = (d + "/run/keeper.py", d + "/slurm.conf", d + "/munge/", f"__launch {d} ", d + "/gluster/")
started = set()
if os.path.isdir(d + "/run"):
    for name in os.listdir(d + "/run"):
        if name.endswith(".pid"):
            try:
                started.add(open(f"{d}/run/{name}").read().strip())
            except OSError:
                pass
programs = ("munged", "slurmctld", "slurmd", "python3", "glusterd", "glusterfs")
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return fields[0], int(fields[1])
skip, q = {os.getpid()}, me
while q > 1:
    skip.add(q)
    try:
        q = stat(q)[1]
    except OSError:
        break
for e in os.listdir("/proc"):
    if not e.isdigit() or int(e) in skip:
        continue
    try:
        if stat(e)[0] in "ZX":
            continue
        if ids and os.readlink(f"/proc/{e}/ns/net") in ids:
            print(e)
            continue
        with open(f"/proc/{e}/cmdline", "rb") as f:
            cl = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if any(m in cl for m in marks) or \
            (e in started and os.path.basename(cl.split(" ")[0]) in programs):
        print(e)
EOF
}

keeper_pid() {
  local p
  p=$(pidfile_pid "$DIR/run/keeper.pid")
  if alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$DIR/run/keeper.py"; then
    echo "$p"
  fi
}

# Is DIR/shared a mount point (of anything: a FUSE mount whose client died
# is still one)?
shared_mounted() {
  awk -v m="$SHARED" '$5 == m {f = 1} END {exit !f}' /proc/self/mountinfo
}

# The gluster CLI, in glusterd's network and mount namespace (its socket
# is in the private /run/gluster).
gluster_cli() {
  local p
  p=$(pidfile_pid "$DIR/run/glusterd.pid")
  alive "$p" || { echo "$me: $DIR: glusterd is not running" >&2; return 1; }
  nsenter -t "$p" --net --mount -- gluster --mode=script --glusterd-sock="$GSOCK" "$@"
}

client() { # runs a client in the controller's namespace, as root
  nsenter --net="/run/netns/$NSP-ctl" -- env SLURM_CONF="$CONF" "$@"
}

ctld_listening() {
  [[ -n $(nsenter --net="/run/netns/$NSP-ctl" -- ss -Hltn 'sport = :6817' 2>/dev/null) ]]
}

idle_nodes() {
  client sinfo -h -t idle -o %D 2>/dev/null | awk '{n += $1} END {print n + 0}'
}

# The last lines of every log; a daemon's stderr (*.out, where it says why
# it could not start) when its log file is empty.
log_tails() {
  local f
  for f in "$DIR"/log/*.log "$DIR"/log/*.out; do
    [[ -s $f ]] || continue
    [[ $f == *.out && -s ${f%.out}.log ]] && continue
    echo "--- ${f#"$DIR"/} (last 25 lines)"
    tail -n 25 "$f"
  done >&2
}

# DIR holds files but no slurm.conf of ours: start empties DIR's log/, tmp/,
# run/ ..., so never in someone else's folder.
foreign_dir() {
  local f
  for f in "$DIR"/* "$DIR"/.[!.]*; do
    [[ -e $f && ${f##*/} != .cluster.lock ]] || continue
    head -n 1 "$CONF" 2>/dev/null | grep -q '^# Written by ci/cluster.sh' && return 1
    return 0
  done
  return 1
}

ensure_users() {
  local u
  for u in stasis_ua stasis_ub; do
    getent passwd "$u" >/dev/null ||
      useradd --no-create-home --shell /usr/sbin/nologin "$u"
  done
}

write_config() {
  local n=$1 cpus=${STASIS_CLUSTER_CPUS:-2} i
  rm -rf "$DIR/ctld" "$DIR/nodes" "$DIR/tmp" "$DIR/munge" "$DIR/run" "$DIR/log"
  mkdir -p "$DIR/ctld/state" "$DIR/log" "$DIR/run" "$DIR/work" \
    "$DIR/munge/etc" "$DIR/munge/run" "$DIR/munge/lib"
  chmod 0755 "$DIR" "$DIR/log" "$DIR/munge" "$DIR/munge/run"
  chmod 0700 "$DIR/munge/etc" "$DIR/munge/lib" "$DIR/ctld"
  chmod 1777 "$DIR/work"
  for ((i = 1; i <= n; i++)); do
    mkdir -p "$DIR/nodes/n$i/spool" "$DIR/tmp/n$i"
    chmod 1777 "$DIR/tmp/n$i"
  done
  chmod 0755 "$DIR/tmp"
  head -c 1024 /dev/urandom >"$DIR/munge/etc/munge.key"
  chmod 0400 "$DIR/munge/etc/munge.key"

  : >"$DIR/plugstack.conf" # one line per SPANK plugin, e.g. "required /path/x.so"
  cat >"$DIR/cgroup.conf" <<EOF
# Written by ci/cluster.sh. proctrack/linuxproc and task/none use no cgroup.
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
  {
    cat <<EOF
# Written by ci/cluster.sh for the test cluster in $DIR (id $ID).
ClusterName=stasis$ID
SlurmctldHost=ctl($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$DIR/ctld/state
SlurmctldPidFile=$DIR/ctld/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdSpoolDir=$DIR/nodes/%n/spool
SlurmdPidFile=$DIR/nodes/%n/slurmd.pid
SlurmdLogFile=$DIR/log/slurmd-%n.log
TmpFS=$DIR/tmp/%n
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
KillWait=2
InactiveLimit=0
SlurmctldDebug=${STASIS_CLUSTER_DEBUG:-info}
SlurmdDebug=${STASIS_CLUSTER_DEBUG:-info}
EOF
    for ((i = 1; i <= n; i++)); do
      echo "NodeName=n$i NodeAddr=$(node_addr "$i") NodeHostname=n$i CPUs=$cpus State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF"
  chmod 0644 "$CONF" "$DIR/cgroup.conf" "$DIR/plugstack.conf"
  if [[ $GLUSTER == 1 ]]; then
    # A new volume every start: bricks that held one refuse a second.
    rm -rf "$DIR/gluster"
    mkdir -p "$DIR/gluster/lib" "$DIR/gluster/run" "$DIR/gluster/log" \
      "$DIR/gluster/brick1" "$DIR/gluster/brick2" "$SHARED"
    chmod 0700 "$DIR/gluster"
    cat >"$DIR/gluster/glusterd.vol" <<EOF
# Written by ci/cluster.sh: glusterd of the test cluster in $DIR. The paths
# are those of glusterd's private mount namespace (DIR/gluster/*).
volume management
    type mgmt/glusterd
    option working-directory /var/lib/glusterd
    option glusterd-sockfile $GSOCK
    option transport-type socket
    option transport.address-family inet
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
EOF
  fi
  printf 'STASIS_CLUSTER_DIR=%s\nSTASIS_CLUSTER_ID=%s\nSTASIS_CLUSTER_NODES=%s\nSTASIS_CLUSTER_GLUSTER=%s\n' \
    "$DIR" "$ID" "$n" "$GLUSTER" >"$STATE"
  if [[ $GLUSTER == 1 ]]; then echo "STASIS_CLUSTER_SHARED=$SHARED" >>"$STATE"; fi
}

make_network() {
  local n=$1 i ns
  ip netns add "$NSP-hub"
  ip -n "$NSP-hub" link add "$BRIDGE" type bridge
  ip -n "$NSP-hub" link set "$BRIDGE" up
  ip -n "$NSP-hub" link set lo up
  # Peer 0 is the controller, 1..n the nodes.
  for ((i = 0; i <= n; i++)); do
    if [[ $i -eq 0 ]]; then ns=$NSP-ctl; else ns=$NSP-n$i; fi
    ip netns add "$ns"
    ip -n "$NSP-hub" link add "stv${ID}n$i" type veth peer name eth0 netns "$ns"
    ip -n "$NSP-hub" link set "stv${ID}n$i" master "$BRIDGE" up
    if [[ $i -eq 0 ]]; then
      ip -n "$ns" addr add "$CTL_ADDR/24" dev eth0
    else
      ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    fi
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
  done
  if [[ $GLUSTER == 1 ]]; then
    ip netns add "$NSP-fs"
    ip -n "$NSP-hub" link add "stv${ID}fs" type veth peer name eth0 netns "$NSP-fs"
    ip -n "$NSP-hub" link set "stv${ID}fs" master "$BRIDGE" up
    ip -n "$NSP-fs" addr add "$FS_ADDR/24" dev eth0
    ip -n "$NSP-fs" link set lo up
    ip -n "$NSP-fs" link set eth0 up
  fi
}

write_keeper() {
  cat >"$DIR/run/keeper.py" <<'EOF'
# Written by ci/cluster.sh: parent and reaper of one test cluster's daemons.
import ctypes, os, sys
PR_SET_CHILD_SUBREAPER = 36
os.setsid()
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("keeper: prctl(PR_SET_CHILD_SUBREAPER) failed")
cluster_sh, cluster_dir = sys.argv[1], sys.argv[2]
os.spawnv(os.P_NOWAIT, "/bin/bash", ["bash", cluster_sh, "__launch", cluster_dir])
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
print("keeper: last child gone, exiting", flush=True)
EOF
}

# The file server (host fs): glusterd in a private mount namespace whose
# /var/lib/glusterd, /run/gluster and /var/log/glusterfs are DIR/gluster's;
# it starts one glusterfsd per brick (they are the keeper's orphans). Then
# the volume, and the FUSE client mounting it at DIR/shared from the
# controller's namespace. Says DIR/run/gluster.ready, or why not in
# DIR/run/gluster.failed.
# shellcheck disable=SC2016 # the sh -c script expands its own $1, $2
launch_gluster() {
  local tries t0=$EPOCHREALTIME
  local daemon_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C)
  nsenter --net="/run/netns/$NSP-fs" -- unshare --mount --uts -- "${daemon_env[@]}" \
    sh -c 'hostname fs && mkdir -p /var/lib/glusterd /run/gluster /var/log/glusterfs &&
      mount --bind "$1/lib" /var/lib/glusterd && mount --bind "$1/run" /run/gluster &&
      mount --bind "$1/log" /var/log/glusterfs && exec glusterd -N -f "$1/glusterd.vol" -l "$2"' \
    sh "$DIR/gluster" "$DIR/log/glusterd.log" </dev/null >>"$DIR/log/glusterd.out" 2>&1 &
  echo $! >"$DIR/run/glusterd.pid"
  for ((tries = 0; tries < 200; tries++)); do
    [[ -S $DIR/gluster/run/glusterd.socket ]] && break
    alive "$(pidfile_pid "$DIR/run/glusterd.pid")" || break
    sleep 0.05
  done
  if [[ ! -S $DIR/gluster/run/glusterd.socket ]]; then
    echo "glusterd did not start (log/glusterd.log)" >"$DIR/run/gluster.failed"
    return 1
  fi
  local out
  if ! out=$(gluster_cli volume create stasis "$FS_ADDR:$DIR/gluster/brick1" \
    "$FS_ADDR:$DIR/gluster/brick2" force 2>&1) ||
    ! out=$(gluster_cli volume start stasis 2>&1); then
    echo "gluster volume create/start: $out" >"$DIR/run/gluster.failed"
    return 1
  fi
  if ! out=$(mount_shared 2>&1); then
    echo "$out" >"$DIR/run/gluster.failed"
    return 1
  fi
  printf '%.2f\n' "$(since "$t0")" >"$DIR/run/gluster.ready"
}

# The FUSE client (glusterfs -N, in the controller's network namespace)
# mounting the volume at DIR/shared; a dead mount of an earlier client is
# detached first. Returns once mounted.
mount_shared() {
  local tries
  if shared_mounted && ! stat "$SHARED" >/dev/null 2>&1; then umount -l "$SHARED"; fi
  if shared_mounted; then return 0; fi
  nsenter --net="/run/netns/$NSP-ctl" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C \
    glusterfs -N --volfile-server="$FS_ADDR" --volfile-id=stasis \
    --log-file="$DIR/log/glusterfs-client.log" "$SHARED" \
    </dev/null >>"$DIR/log/glusterfs-client.out" 2>&1 &
  echo $! >"$DIR/run/glusterfs.pid"
  for ((tries = 0; tries < 400; tries++)); do
    shared_mounted && return 0
    alive "$(pidfile_pid "$DIR/run/glusterfs.pid")" || break
    sleep 0.05
  done
  echo "the FUSE client did not mount $SHARED (log/glusterfs-client.log)" >&2
  return 1
}

# Runs as the keeper's child: starts the daemons in the background and
# returns; they become the keeper's children. Each is exec'd in place
# (nsenter, unshare and sh all exec), so $! is the daemon's own pid.
# shellcheck disable=SC2016 # the sh -c scripts expand their own $1, $2
launch() {
  local n=$STASIS_CLUSTER_NODES i tries
  local daemon_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C)
  if [[ ${STASIS_CLUSTER_GLUSTER:-0} == 1 ]]; then launch_gluster || return 1; fi
  nsenter --net="/run/netns/$NSP-ctl" -- "${daemon_env[@]}" munged -F \
    --socket="$MUNGE_SOCK" --key-file="$DIR/munge/etc/munge.key" \
    --pid-file="$DIR/munge/run/munged.pid" --seed-file="$DIR/munge/lib/munged.seed" \
    </dev/null >>"$DIR/log/munged.log" 2>&1 &
  echo $! >"$DIR/run/munged.pid"
  for ((tries = 0; tries < 100; tries++)); do
    [[ -S $MUNGE_SOCK ]] && break
    sleep 0.05
  done
  nsenter --net="/run/netns/$NSP-ctl" -- unshare --uts -- "${daemon_env[@]}" \
    sh -c 'hostname ctl && exec slurmctld -D -f "$1"' sh "$CONF" \
    </dev/null >>"$DIR/log/slurmctld.out" 2>&1 &
  local ctld=$!
  echo "$ctld" >"$DIR/run/slurmctld.pid"
  # slurmd registers at once and retries only a second later: start the
  # nodes once slurmctld listens (about 10 ms), so they are idle at once.
  for ((tries = 0; tries < 500; tries++)); do
    ctld_listening && break
    alive "$ctld" || return 1
    sleep 0.02
  done
  for ((i = 1; i <= n; i++)); do
    nsenter --net="/run/netns/$NSP-n$i" -- unshare --uts -- "${daemon_env[@]}" \
      sh -c 'hostname "$1" && exec slurmd -D -f "$2"' sh "n$i" "$CONF" \
      </dev/null >>"$DIR/log/slurmd-n$i.out" 2>&1 &
    echo $! >"$DIR/run/slurmd-n$i.pid"
  done
}

do_stop() {
  local pids p k tries rc=0
  pids=$(cluster_pids)
  k=$(keeper_pid)
  if [[ -z $pids && -z $(our_netns) ]] && ! shared_mounted; then
    rm -f "$STATE" "$DIR"/run/*.pid
    echo "$me: $DIR: not running"
    return 0
  fi
  local t0=$EPOCHREALTIME
  # The shared file system first, while its client and servers still run
  # (a job may hold files open there: then detached at once, gone with the
  # last of them).
  if shared_mounted; then
    umount "$SHARED" 2>/dev/null || umount -l "$SHARED" ||
      { echo "$me: could not unmount $SHARED" >&2; rc=1; }
  fi
  # Daemons and jobs first: SIGTERM, one second to flush their logs, then
  # SIGKILL for anything left (a stuck slurmstepd ignores SIGTERM), until
  # nothing is left: a dying slurmd may still fork. The keeper last: it
  # leaves by itself once it reaped them.
  for p in $pids; do
    [[ $p == "$k" ]] || kill -TERM "$p" 2>/dev/null || true
  done
  for ((tries = 0; tries < 10; tries++)); do
    pids=$(cluster_pids | grep -vx "${k:-none}" || true)
    [[ -z $pids ]] && break
    sleep 0.1
  done
  for ((tries = 0; tries < 50; tries++)); do
    pids=$(cluster_pids | grep -vx "${k:-none}" || true)
    [[ -z $pids ]] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  if [[ -n $pids ]]; then
    echo "$me: $DIR: processes survive SIGKILL: ${pids//$'\n'/ }" >&2
    rc=1
  fi
  if [[ -n $k ]]; then
    for ((tries = 0; tries < 50; tries++)); do
      alive "$k" || break
      sleep 0.1
    done
    if alive "$k"; then kill -KILL "$k" 2>/dev/null || true; fi
  fi
  local ns
  for ns in $(our_netns); do
    ip netns del "$ns" || { echo "$me: could not delete namespace $ns" >&2; rc=1; }
  done
  rm -f "$STATE" "$DIR"/run/*.pid "$DIR"/run/gluster.*
  printf '%s: %s: stopped in %.2f s\n' "$me" "$DIR" "$(since "$t0")"
  return $rc
}

do_start() {
  local n=${1:-2}
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 200 ]] || die "NODES must be 1..200, not '$n'"
  if [[ -n $(keeper_pid) && -f $STATE ]]; then
    local have
    have=$(sed -n 's/^STASIS_CLUSTER_NODES=//p' "$STATE")
    if [[ $have != "$n" ]]; then
      die "$DIR already runs a cluster of $have nodes; stop it first"
    fi
    have=$(sed -n 's/^STASIS_CLUSTER_GLUSTER=//p' "$STATE")
    if [[ ${have:-0} != "$GLUSTER" ]]; then
      die "$DIR already runs a cluster $([[ $GLUSTER == 1 ]] && echo without || echo with) GlusterFS; stop it first"
    fi
    if [[ $(idle_nodes) -ge $n ]]; then
      echo "$me: $DIR already running with $n nodes idle; reusing it"
      return 0
    fi
    die "$DIR already runs a cluster of $n nodes, but not all are idle (ci/cluster.sh status $DIR)"
  fi
  # Leftovers of a cluster that was not stopped (crash, kill -9): clean first.
  if [[ -n $(our_netns) || -n $(cluster_pids) ]] || shared_mounted; then
    echo "$me: $DIR: cleaning up leftovers of an earlier cluster"
    do_stop >/dev/null
  fi
  ensure_users
  local t0=$EPOCHREALTIME
  # A failing step (set -e) leaves no half-made cluster behind.
  trap 'echo "$me: $DIR: start failed; cleaning up" >&2; do_stop >&2 || true' EXIT
  mkdir -p "$DIR"
  write_config "$n"
  make_network "$n"
  write_keeper
  STASIS_CLUSTER_NODES=$n python3 "$DIR/run/keeper.py" "$SELF" "$DIR" \
    </dev/null >>"$DIR/log/keeper.log" 2>&1 9>&- &
  echo $! >"$DIR/run/keeper.pid"
  disown # its end is no news: stop ends it

  local deadline idle=0 p
  deadline=$(awk "BEGIN {printf \"%.3f\", $EPOCHREALTIME + ${STASIS_CLUSTER_TIMEOUT:-60}}")
  while :; do
    # sinfo before slurmctld listens would wait a second to retry.
    if ctld_listening; then
      idle=$(idle_nodes)
      [[ $idle -ge $n && ($GLUSTER == 0 || -e $DIR/run/gluster.ready) ]] && break
    fi
    if [[ -e $DIR/run/gluster.failed ]]; then
      echo "$me: $DIR: GlusterFS: $(cat "$DIR/run/gluster.failed")" >&2
      idle=-1
      break
    fi
    if awk "BEGIN {exit !($EPOCHREALTIME > $deadline)}"; then
      echo "$me: $DIR: only $idle of $n nodes idle after $(since "$t0") s" >&2
      break
    fi
    for p in "$DIR"/run/munged.pid "$DIR"/run/slurmctld.pid "$DIR"/run/slurmd-n*.pid; do
      [[ -s $p ]] || continue
      if ! alive "$(pidfile_pid "$p")"; then
        echo "$me: $DIR: $(basename "${p%%.*}") exited during start" >&2
        idle=-1
      fi
    done
    [[ $idle -ge 0 ]] || break
    sleep 0.05
  done
  trap - EXIT
  if [[ $idle -lt $n ]]; then
    client sinfo -N -l >&2 2>&1 || true
    log_tails
    if [[ -n ${STASIS_CLUSTER_KEEP_FAILED:-} ]]; then
      echo "$me: STASIS_CLUSTER_KEEP_FAILED is set: leaving it running (ci/cluster.sh stop $DIR)" >&2
    else
      do_stop >&2 || true
    fi
    exit 1
  fi
  printf '%s: %s: %d nodes idle after %.2f s (namespaces %s-*)\n' \
    "$me" "$DIR" "$n" "$(since "$t0")" "$NSP"
  if [[ $GLUSTER == 1 ]]; then
    printf '%s: %s: GlusterFS volume stasis (2 bricks on fs, %s) mounted at %s in %s s\n' \
      "$me" "$DIR" "$FS_ADDR" "$SHARED" "$(cat "$DIR/run/gluster.ready")"
  fi
}

do_status() {
  local k rc=0 p f name
  k=$(keeper_pid)
  if [[ -z $k && -z $(our_netns) && -z $(cluster_pids) ]]; then
    echo "$DIR: stopped"
    return 3
  fi
  echo "$DIR: id $ID, namespaces: $(our_netns | tr '\n' ' ')"
  echo "keeper: ${k:-not running}"
  [[ -n $k ]] || rc=1
  for f in "$DIR"/run/munged.pid "$DIR"/run/slurmctld.pid "$DIR"/run/slurmd-n*.pid \
    "$DIR"/run/glusterd.pid "$DIR"/run/glusterfs.pid; do
    [[ -e $f ]] || continue
    name=$(basename "$f"); name=${name%%.*}
    p=$(pidfile_pid "$f")
    if alive "$p"; then echo "$name: pid $p"; else echo "$name: not running"; rc=1; fi
  done
  if [[ -e /run/netns/$NSP-ctl ]]; then
    client sinfo -N -o '%N %T %C' 2>&1 || rc=1
  fi
  if [[ -e /run/netns/$NSP-fs ]]; then
    if shared_mounted; then echo "shared: $SHARED mounted"; else echo "shared: $SHARED not mounted"; rc=1; fi
  fi
  return $rc
}

do_run() {
  local user=""
  if [[ ${1:-} == --user ]]; then
    [[ $# -ge 2 ]] || usage
    user=$2
    shift 2
  fi
  [[ $# -ge 1 ]] || usage
  [[ -e /run/netns/$NSP-ctl && -f $STATE ]] || die "$DIR: no cluster running (ci/cluster.sh start $DIR)"
  local env=(env SLURM_CONF="$CONF" STASIS_CLUSTER_DIR="$DIR" STASIS_MUNGE_SOCKET="$MUNGE_SOCK")
  if [[ -z $user ]]; then
    exec nsenter --net="/run/netns/$NSP-ctl" -- "${env[@]}" "$@"
  fi
  local home
  home=$(getent passwd "$user" | cut -d: -f6) || die "no such user: $user"
  exec nsenter --net="/run/netns/$NSP-ctl" -- \
    setpriv --reuid="$user" --regid="$user" --init-groups -- \
    "${env[@]}" USER="$user" LOGNAME="$user" HOME="$home" "$@"
}

GLUSTER=${STASIS_CLUSTER_GLUSTER:-0}
if [[ $cmd == start ]]; then
  args=()
  for a in "$@"; do
    if [[ $a == --gluster ]]; then GLUSTER=1; else args+=("$a"); fi
  done
  set -- "${args[@]}"
fi
[[ $GLUSTER == 0 || $GLUSTER == 1 ]] || die "STASIS_CLUSTER_GLUSTER must be 0 or 1"

case $cmd in
  start | stop)
    need_root
    need_tools
    if [[ $cmd == stop && ! -d $DIR ]]; then
      # Nothing to lock, but namespaces of a deleted folder may be left.
      do_stop
      exit
    fi
    if [[ $cmd == start ]] && foreign_dir; then
      die "$DIR is neither empty nor a cluster folder (no $CONF written by ci/cluster.sh)"
    fi
    mkdir -p "$DIR"
    exec 9>"$DIR/.cluster.lock"
    flock -w 120 9 || die "$DIR: another ci/cluster.sh holds the lock"
    if [[ $cmd == start ]]; then do_start "$@"; else do_stop; fi
    ;;
  status) need_root; do_status ;;
  gluster) need_root; gluster_cli "$@" ;;
  remount)
    need_root
    [[ -e /run/netns/$NSP-fs ]] || die "$DIR: no cluster with GlusterFS running"
    mount_shared
    ;;
  run) need_root; do_run "$@" ;;
  __launch)
    # shellcheck disable=SC1090
    source "$STATE"
    launch
    ;;
  *) usage ;;
esac
