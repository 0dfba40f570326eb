// stasis verify: could a context be restarted faithfully; see restartable.h.
#include "engine/cli/restartable.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>

namespace stasis::cli {
namespace {

std::string Errno(int e) { return std::strerror(e); }

// "task 3 (pid 4242)" for a process of a task's tree, else "pid 4242".
std::map<uint32_t, std::string> Names(const format::Context& ctx) {
  std::map<uint32_t, const format::ProcessEntry*> by_pid;
  for (const auto& e : ctx.tree.processes) by_pid[e.pid] = &e;
  std::map<uint32_t, std::string> out;
  for (const auto& e : ctx.tree.processes) {
    const format::ProcessEntry* cur = &e;
    for (size_t hops = 0; cur && hops <= by_pid.size(); ++hops) {
      if (cur->flags & format::kProcTask) {
        out[e.pid] = "task " + std::to_string(cur->task) + " (pid " + std::to_string(e.pid) + ")";
        break;
      }
      auto it = by_pid.find(cur->ppid);
      cur = it == by_pid.end() ? nullptr : it->second;
    }
    if (!out.count(e.pid)) out[e.pid] = "pid " + std::to_string(e.pid);
  }
  return out;
}

int64_t MtimeNs(const struct stat& st) {
  return st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
}

// The batch script Slurm keeps in its spool (<spool>/job<N>/slurm_script):
// gone when the job ends, written again by a requeue of the job.
bool IsBatchScript(const std::string& path) {
  const std::string tail = "/slurm_script";
  return path.size() > tail.size() &&
         path.compare(path.size() - tail.size(), tail.size(), tail) == 0 &&
         path.find("/job") != std::string::npos;
}

}  // namespace

RestartCheck CheckRestartable(const format::Context& ctx) {
  RestartCheck out;
  const auto names = Names(ctx);
  auto who = [&](uint32_t pid) {
    auto it = names.find(pid);
    return it == names.end() ? "pid " + std::to_string(pid) : it->second;
  };
  // A file several processes map (a library, a shared segment) is one
  // problem: said once, with the first process that maps it.
  std::map<std::string, std::pair<std::string, size_t>> mapped;  // path -> (line, processes)
  std::vector<std::string> mapped_order;
  for (const auto& p : ctx.processes) {
    const std::string name = who(p.info.pid);
    std::set<std::string> seen;
    for (const auto& m : p.mappings) {
      if (m.kind != format::kMapFile || !seen.insert(m.path).second) continue;
      if (mapped.count(m.path)) {
        ++mapped[m.path].second;
        continue;
      }
      struct stat st;
      std::string line;
      if (::stat(m.path.c_str(), &st) != 0)
        line = name + " maps " + m.path + ", which is gone (" + Errno(errno) + ")";
      else if (static_cast<uint64_t>(st.st_size) != m.file_id.size)
        line = name + " maps " + m.path + ", which changed since the checkpoint (" +
               std::to_string(m.file_id.size) + " bytes then, " + std::to_string(st.st_size) +
               " now)";
      else if (MtimeNs(st) != m.file_id.mtime_ns)
        line = name + " maps " + m.path + ", which was modified since the checkpoint";
      if (line.empty()) continue;
      mapped[m.path] = {line, 1};
      mapped_order.push_back(m.path);
    }
    for (const auto& f : p.files) {
      const std::string fd = name + " fd " + std::to_string(f.fd) + ": ";
      if (f.kind == format::kFileUnixSocket && (f.fd_flags & format::kFdOutside)) {
        std::string peer = f.outside_peer.empty() ? "" : " " + f.outside_peer;
        // Network sockets carry their description ("TCP a -> b"); a UNIX
        // socket its bound name, if any.
        std::string what = f.path.rfind("TCP ", 0) == 0 || f.path.rfind("UDP ", 0) == 0 ? f.path
                           : f.path.empty() ? "a UNIX socket"
                                            : "UNIX socket " + f.path;
        if (f.outside_state == format::kOutsideConnected)
          out.problems.push_back(fd + what + " was connected to" +
                                 (peer.empty() ? " a process" : peer) +
                                 " outside the checkpoint; a restart gives it back closed "
                                 "(saved with --close-sockets)");
        else if (f.outside_state == 0)
          out.notes.push_back(fd + what +
                              " led outside the checkpoint and comes back closed (whether it was "
                              "connected is not recorded: a context of an older stasis)");
        continue;
      }
      if (f.fd_flags & (format::kFdOutside | format::kFdUnlinked)) continue;
      if (f.kind != format::kFileRegular && f.kind != format::kFileDirectory &&
          f.kind != format::kFileCharDevice && f.kind != format::kFileFifo)
        continue;
      struct stat st;
      if (::stat(f.path.c_str(), &st) != 0) {
        if (f.kind == format::kFileRegular && IsBatchScript(f.path))
          out.notes.push_back(fd + "the batch script " + f.path +
                              " is gone; a requeue of the job writes it again");
        else
          out.problems.push_back(fd + f.path + " is gone (" + Errno(errno) + ")");
      } else if (f.kind == format::kFileRegular &&
                 (static_cast<uint64_t>(st.st_ino) != f.file_id.ino ||
                  static_cast<uint64_t>(st.st_dev) != f.file_id.dev) &&
                 !IsBatchScript(f.path)) {
        out.problems.push_back(fd + f.path + " was replaced by another file since the checkpoint");
      }
    }
    struct stat st;
    if (!p.info.cwd.empty() && ::stat(p.info.cwd.c_str(), &st) != 0)
      out.problems.push_back(name + ": its working folder " + p.info.cwd + " is gone (" +
                             Errno(errno) + ")");
  }
  for (const auto& path : mapped_order) {
    auto& [line, n] = mapped[path];
    out.problems.push_back(n > 1 ? line + " (and " + std::to_string(n - 1) + " more process(es))"
                                 : line);
  }
  return out;
}

}  // namespace stasis::cli
