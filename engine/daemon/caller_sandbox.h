// A restart through stasisd runs inside the caller's sandbox. The worker is
// forked by root's stasisd; before it opens a path of the request or forks
// anything it identifies the client race-free (a pidfd of the socket's
// peer) and takes on what confines the client: its namespaces, its cgroup,
// its resource limits, no_new_privs and its seccomp filters (handed to the
// restorer, which installs them outermost in every restored process). What
// the daemon lends is only what needs privilege: exact pids
// (CAP_CHECKPOINT_RESTORE). A client whose confinement cannot be taken on
// soundly (another user namespace, a chroot, a namespace owned by another
// user namespace, root with fewer capabilities than stasisd) is refused
// with one line. Not carried over: LSM labels and Landlock domains (no
// interface reads them from outside).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "engine/base/status.h"
#include "engine/daemon/worker.h"
#include "engine/format/context.h"

namespace stasis::daemon {

struct CallerSandbox {
  pid_t pid = 0;  // the client, as the worker sees it
  bool no_new_privs = false;
  std::vector<format::SeccompFilter> seccomp_filters;  // oldest first
  // Entered a pid namespace other than the worker's (for children): the
  // restorer must run in a child of the worker to live in it.
  bool other_pid_namespace = false;
  std::vector<std::string> joined;  // "net", "mnt", "cgroup /x/y"... for the log
};

// Run by a restart worker (root, single-threaded) on the client's connection
// `conn` before anything else of the request: on success the calling
// process is in the caller's mount, UTS, IPC, network, cgroup and time
// namespaces (pid for its children), in its cgroups (v2 and v1), with its
// resource limits, its capability bounding set and, when the caller has it
// or runs under a seccomp filter, no_new_privs; the caller's seccomp
// filters are returned to be installed in the restored tree.
Result<CallerSandbox> EnterCallerSandbox(int conn, const Peer& peer);

}  // namespace stasis::daemon
