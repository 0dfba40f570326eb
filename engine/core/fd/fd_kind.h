// Internal to engine/core: one row of operations per kind of fd.
//
// Every fd kind (format::FileKind) has one row, defined in the file of its
// family (fd/regular.cc, fd/pipe.cc, fd/unix_socket.cc, fd/terminal.cc,
// fd/event.cc, fd/tcp_socket.cc), and the ordered table of rows is in
// fd_table.cc. Adding a
// kind is one file (or a row in an existing family's file) plus one line in
// that table; the fd table code (capture loop, kcmp identity, pidfd_getfd
// and dup3 placement) never changes.
//
// Capture: the first row whose `claims` accepts the fd's stat and link
// captures it. Restore: the row of the saved kind restores it, in one of two
// ways: opened in the restorer and handed to the process (pidfd_getfd), or
// created inside the process by injected calls.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/format/context.h"

namespace stasis::core {
namespace capture {
class Capturer;
struct ProcState;
}  // namespace capture
namespace restore {
class Restorer;
struct RProc;
}  // namespace restore

// What the capture knows of one fd before its kind is known.
struct FdSeen {
  int fd = -1;
  std::string link;       // what /proc/PID/fd/N points to (or the module's path)
  std::string link_path;  // /proc/PID/fd/N
  std::string proc;       // /proc/PID
  std::string where;      // "pid P fd N", for messages
  struct stat st {};
};

struct FdKindOps {
  uint32_t kind;     // format::FileKind
  const char* name;  // for messages and tools
  // Capture. Does this row take an fd with this stat and link? Null: the
  // kind is never seen directly (a pts slave is found by ClassifyPtys).
  bool (*claims)(const struct stat& st, const std::string& link);
  // Fills f's kind and kind-specific members (the fd number, flags, position,
  // path and file identity are already there).
  Status (*capture)(capture::Capturer* cap, capture::ProcState* p, const FdSeen& seen,
                    format::FileDesc* f);
  // Restore, one of the two is set. A new file description opened in the
  // restorer (cached by object id by the caller, handed over with
  // pidfd_getfd) ...
  Result<UniqueFd> (*open_in_restorer)(restore::Restorer* r, const restore::RProc* p,
                                       const format::FileDesc& f);
  // ... or one created inside the process by injected calls: its fd number
  // there.
  Result<long> (*create_in_process)(restore::Restorer* r, restore::RProc* p,
                                    const format::FileDesc& f);
  // Optional: once every fd of the process is in place (epoll registrations).
  Status (*after_all_fds)(restore::Restorer* r, restore::RProc* p, const format::FileDesc& f);
};

// The row that captures an fd with this stat and link, or null (refused).
const FdKindOps* FdKindClaiming(const struct stat& st, const std::string& link);
// The row of a saved kind, or null (a kind this release cannot restore).
const FdKindOps* FdKindOf(uint32_t kind);

}  // namespace stasis::core
