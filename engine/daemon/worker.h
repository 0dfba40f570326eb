// stasisd's workers: one forked process per checkpoint or restart request.
// A worker holds the request's privileges and nothing else: it takes the
// requesting user's file-system identity before touching a path, runs the
// engine (engine/core) and answers the client directly (so the answer
// arrives even if stasisd itself is killed meanwhile), with a copy of the
// answer to stasisd for its log and status table.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "engine/daemon/config.h"
#include "engine/daemon/state_record.h"
#include "engine/format/protocol.h"

namespace stasis::daemon {

// Who is asking, as the kernel says (SO_PEERCRED, SO_PEERGROUPS).
struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

struct WorkerTask {
  uint64_t id = 0;
  format::proto::Request request;
  Peer peer;
  int client_fd = -1;         // the client's connection
  int report_fd = -1;         // to stasisd
  std::vector<int> attached;  // fds that came with the request
  // checkpoint into a path: the state record the worker writes once its
  // file exists (state_record.h) and removes when it is done.
  std::string state_file;
};

// The state record of request `id` run by `worker`, without the file's
// fields (the worker adds them once its file exists).
StateRecord NewStateRecord(uint64_t id, pid_t worker, const Peer& peer,
                           const format::proto::Request& req);

// Runs in the forked child (checkpoint, restart, list, delete); never
// returns.
[[noreturn]] void RunWorker(const Config& config, const WorkerTask& task);

// The name workers give themselves (/proc/PID/comm), by which a restarted
// stasisd recognises the live workers of a killed instance.
inline constexpr const char* kWorkerComm = "stasisd-worker";

// Is `path` (absolute, resolved) at or below one of `roots`?
bool UnderRoots(const std::string& path, const std::vector<std::string>& roots);

// Sets the file-system identity of the calling thread to `peer` (no-op for
// root): groups, fsgid, fsuid. Paths are then opened with the user's rights.
Status TakeFsIdentity(const Peer& peer);
Status DropFsIdentity();

}  // namespace stasis::daemon
