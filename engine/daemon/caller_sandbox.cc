// Taking on the confinement of a restart's caller; see caller_sandbox.h.
#include "engine/daemon/caller_sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <map>
#include <thread>

#include "engine/base/fd.h"
#include "engine/core/unix_diag.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif
#ifndef PTRACE_SECCOMP_GET_METADATA
#define PTRACE_SECCOMP_GET_METADATA 0x420d
#endif

namespace stasis::daemon {

namespace {

constexpr const char* kNoSandboxLine =
    "restart from inside a user namespace/chroot through stasisd is not supported; run "
    "`cr_restart --no-daemon` inside it";

bool Alive(int pidfd) { return ::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0) == 0; }

Status Gone() { return Status::Error(ESRCH, "the client went away before its restart started"); }

Result<std::string> ReadAt(int dirfd, const char* name) {
  UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_CLOEXEC));
  if (!fd) return Status::FromErrno(errno, std::string("read the client's ") + name);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, std::string("read the client's ") + name);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > (1u << 20)) break;
  }
  return out;
}

// "Key:\tvalue" of a /proc status text.
std::string Field(const std::string& status, const std::string& key) {
  size_t at = status.find("\n" + key + ":");
  if (at == std::string::npos) return "";
  at += key.size() + 2;
  size_t end = status.find('\n', at);
  std::string v = status.substr(at, end == std::string::npos ? std::string::npos : end - at);
  size_t b = v.find_first_not_of(" \t");
  return b == std::string::npos ? "" : v.substr(b);
}

// "ID:CONTROLLERS:PATH" lines of /proc/PID/cgroup, by "ID:CONTROLLERS".
std::map<std::string, std::string> CgroupLines(const std::string& text) {
  std::map<std::string, std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t nl = text.find('\n', i);
    std::string line = text.substr(i, nl == std::string::npos ? std::string::npos : nl - i);
    i = nl == std::string::npos ? text.size() : nl + 1;
    size_t c1 = line.find(':');
    size_t c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
    if (c2 != std::string::npos) out[line.substr(0, c2)] = line.substr(c2 + 1);
  }
  return out;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t i = 0;
  for (;;) {
    size_t j = s.find(sep, i);
    out.push_back(s.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) return out;
    i = j + 1;
  }
}

// Where the hierarchy "ID:CONTROLLERS" is mounted in our mount namespace,
// with the cgroup the mount shows as its root ("" when not mounted).
std::pair<std::string, std::string> CgroupMount(const std::string& mountinfo,
                                                const std::string& key) {
  const std::string controllers = key.substr(key.find(':') + 1);
  const bool unified = key.rfind("0:", 0) == 0 && controllers.empty();
  for (const std::string& line : Split(mountinfo, '\n')) {
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::vector<std::string> a = Split(line.substr(0, dash), ' ');
    std::vector<std::string> b = Split(line.substr(dash + 3), ' ');
    if (a.size() < 5 || b.size() < 3) continue;
    if (unified ? b[0] != "cgroup2" : b[0] != "cgroup") continue;
    if (!unified) {
      std::vector<std::string> opts = Split(b[2], ',');
      bool all = true;
      for (const std::string& c : Split(controllers, ','))
        if (std::find(opts.begin(), opts.end(), c) == opts.end()) all = false;
      if (!all) continue;
    }
    if (a[4].find('\\') != std::string::npos) continue;  // escaped characters: not ours
    return {a[4], a[3]};
  }
  return {"", ""};
}

// Moves the calling process into the caller's cgroup of every hierarchy
// where it is not in the caller's (v2 and v1 alike): a Slurm step's limits
// and accounting hold for what is restored. Paths are as our cgroup
// namespace and mounts show them, so this runs before joining the caller's.
Status JoinCgroups(const std::string& theirs_text, std::vector<std::string>* joined) {
  STASIS_ASSIGN_OR_RETURN(std::string ours_text, ReadAt(AT_FDCWD, "/proc/self/cgroup"));
  STASIS_ASSIGN_OR_RETURN(std::string mountinfo, ReadAt(AT_FDCWD, "/proc/self/mountinfo"));
  auto ours = CgroupLines(ours_text);
  for (const auto& [key, path] : CgroupLines(theirs_text)) {
    auto it = ours.find(key);
    if (it != ours.end() && it->second == path) continue;
    if (path.empty() || path[0] != '/' || path.find("/..") != std::string::npos ||
        path.find(" (deleted)") != std::string::npos)
      return Status::Error(EPERM, "the client's cgroup '" + path + "' is not one to join");
    auto [dir, root] = CgroupMount(mountinfo, key);
    if (dir.empty()) continue;  // a hierarchy we do not see is nobody's limit here
    std::string rel = path;
    if (root != "/") {
      if (path.compare(0, root.size(), root) != 0 ||
          (path.size() > root.size() && path[root.size()] != '/'))
        return Status::Error(EPERM, "the client's cgroup " + path + " is outside " + dir);
      rel = path.substr(root.size());
    }
    std::string procs = dir + rel + "/cgroup.procs";
    UniqueFd fd(::open(procs.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd || ::write(fd.get(), "0", 1) != 1)
      return Status::FromErrno(errno, "move into the client's cgroup " + dir + rel);
    joined->push_back("cgroup " + dir + rel);
  }
  return Status::Ok();
}

// The pidfd of the connection's peer: SO_PEERPIDFD (Linux 6.5), else
// pidfd_open of SO_PEERCRED's pid, which may have been reused since the
// connect: then *check_later is set, and HoldsConnection must confirm the
// process before anything is done for it.
Result<UniqueFd> PeerPidfd(int conn, const Peer& peer, pid_t* pid, bool* check_later) {
  int raw = -1;
  socklen_t len = sizeof raw;
  *check_later = false;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERPIDFD, &raw, &len) == 0 && raw >= 0) {
    UniqueFd fd(raw);
    ::fcntl(raw, F_SETFD, FD_CLOEXEC);
    auto info = ReadAt(AT_FDCWD, ("/proc/self/fdinfo/" + std::to_string(raw)).c_str());
    if (!info) return info.error();
    long p = std::strtol(Field("\n" + *info, "Pid").c_str(), nullptr, 10);
    if (p <= 0) return Gone();  // exited, or not in our pid namespace
    *pid = static_cast<pid_t>(p);
    return fd;
  }
  if (errno != ENOPROTOOPT && errno != EINVAL) return Gone();
  UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_open, peer.pid, 0)));
  if (!fd) return Gone();
  *pid = peer.pid;
  *check_later = true;
  return fd;
}

// Does the process of `proc` (a /proc/PID folder fd) hold the other end of
// `conn`? Run in the client's network namespace: the kernel creates the
// accepted end of a connection in the connecting socket's namespace, and
// sock_diag shows only the current one.
Status HoldsConnection(int conn, int proc, int pidfd) {
  struct stat self;
  if (::fstat(conn, &self) != 0) return Status::FromErrno(errno, "stat the connection");
  auto socks = core::ReadUnixSockets();
  if (!socks) return socks.error().Prefixed("find the client's end of the connection");
  auto it = socks->find(self.st_ino);
  if (it == socks->end() || !it->second.peer) return Gone();
  const std::string want = "socket:[" + std::to_string(it->second.peer) + "]";
  int fds = ::openat(proc, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = fds < 0 ? nullptr : ::fdopendir(fds);
  if (!d) {
    if (fds >= 0) ::close(fds);
    return Gone();
  }
  bool holds = false;
  while (struct dirent* e = ::readdir(d)) {
    char link[64];
    ssize_t n = ::readlinkat(::dirfd(d), e->d_name, link, sizeof link - 1);
    if (n > 0 && std::string(link, static_cast<size_t>(n)) == want) holds = true;
  }
  ::closedir(d);
  if (!holds || !Alive(pidfd)) return Gone();
  return Status::Ok();
}

// The caller's seccomp filters, oldest first: it is seized and interrupted
// for the moment of reading them (PTRACE_SECCOMP_GET_FILTER needs a stopped
// tracee), then let go. The pidfd is checked after the seize, so the
// traced task is the caller and not a process that took its number.
Result<std::vector<format::SeccompFilter>> ReadSeccomp(pid_t pid, int pidfd) {
  auto refuse = [](const std::string& why) {
    return Status::Error(EPERM,
                         "the client runs under a seccomp filter that stasisd cannot copy "
                         "into the restored processes (" +
                             why + "); run `cr_restart --no-daemon` instead");
  };
  if (::ptrace(PTRACE_SEIZE, pid, nullptr, nullptr) != 0)
    return refuse(std::string("ptrace: ") + std::strerror(errno));
  auto let_go = [pid](int sig) {
    ::ptrace(PTRACE_DETACH, pid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig)));
  };
  if (!Alive(pidfd)) {
    let_go(0);
    return Gone();
  }
  if (::ptrace(PTRACE_INTERRUPT, pid, nullptr, nullptr) != 0) {
    let_go(0);
    return refuse(std::string("ptrace interrupt: ") + std::strerror(errno));
  }
  // Bounded: a task in an uninterruptible wait does not stop.
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    pid_t w = ::waitpid(pid, &status, __WALL | WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return Gone();
    if (std::chrono::steady_clock::now() > deadline) {
      let_go(0);
      return refuse("it did not stop to have them read");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!WIFSTOPPED(status)) return Gone();
  // A signal that arrived meanwhile is delivered when we let go.
  int pass = (status >> 16) == 0 && WSTOPSIG(status) != SIGTRAP ? WSTOPSIG(status) : 0;
  std::vector<format::SeccompFilter> newest_first;
  Status err;
  for (long i = 0; i < 1024; ++i) {
    long n = ::ptrace(static_cast<__ptrace_request>(PTRACE_SECCOMP_GET_FILTER), pid,
                      reinterpret_cast<void*>(i), nullptr);
    if (n < 0 && errno == ENOENT) break;
    if (n <= 0 || n > 4096) {
      err = refuse(std::string("read filter ") + std::to_string(i) + ": " +
                   (n < 0 ? std::strerror(errno) : "bad length"));
      break;
    }
    format::SeccompFilter f;
    f.program.resize(static_cast<size_t>(n) * 8);
    if (::ptrace(static_cast<__ptrace_request>(PTRACE_SECCOMP_GET_FILTER), pid,
                 reinterpret_cast<void*>(i), f.program.data()) != n) {
      err = refuse(std::string("read filter ") + std::to_string(i) + ": " + std::strerror(errno));
      break;
    }
    struct {
      uint64_t filter_off, flags;
    } meta = {static_cast<uint64_t>(i), 0};
    if (::ptrace(static_cast<__ptrace_request>(PTRACE_SECCOMP_GET_METADATA), pid,
                 reinterpret_cast<void*>(sizeof meta), &meta) > 0)
      f.flags = meta.flags;
    newest_first.push_back(std::move(f));
  }
  let_go(pass);
  if (!err.ok()) return err;
  if (newest_first.empty()) return refuse("no filter could be read");
  return std::vector<format::SeccompFilter>(newest_first.rbegin(), newest_first.rend());
}

// /proc/PID/limits: a header, then one line per resource in RLIMIT_*
// order, the soft and hard values from column 26 ("unlimited" or a number).
Status ParseLimits(const std::string& text, struct rlimit64* out) {
  std::vector<std::string> lines = Split(text, '\n');
  if (lines.size() < RLIM_NLIMITS + 1)
    return Status::Error(EPROTO, "the client's limits are unreadable");
  for (int r = 0; r < RLIM_NLIMITS; ++r) {
    const std::string& line = lines[static_cast<size_t>(r) + 1];
    if (line.size() < 26) return Status::Error(EPROTO, "the client's limits are unreadable");
    std::vector<std::string> v;
    for (const std::string& w : Split(line.substr(26), ' '))
      if (!w.empty()) v.push_back(w);
    if (v.size() < 2) return Status::Error(EPROTO, "the client's limits are unreadable");
    rlim64_t val[2];
    for (int k = 0; k < 2; ++k) {
      if (v[static_cast<size_t>(k)] == "unlimited") {
        val[k] = RLIM64_INFINITY;
        continue;
      }
      char* end = nullptr;
      errno = 0;
      val[k] = std::strtoull(v[static_cast<size_t>(k)].c_str(), &end, 10);
      if (errno || !end || *end) return Status::Error(EPROTO, "the client's limits are unreadable");
    }
    out[r] = {val[0], val[1]};
  }
  return Status::Ok();
}

struct NsKind {
  const char* name;
  int flag;
};
// The order of joining: the mount namespace last (it changes our paths).
constexpr NsKind kNamespaces[] = {{"pid", CLONE_NEWPID}, {"time", CLONE_NEWTIME},
                                  {"net", CLONE_NEWNET}, {"ipc", CLONE_NEWIPC},
                                  {"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP},
                                  {"mnt", CLONE_NEWNS}};

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

Result<int> CountOwnThreads() {
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return Status::FromErrno(errno, "list the worker's threads");
  int n = 0;
  while (struct dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

}  // namespace

Result<CallerSandbox> EnterCallerSandbox(int conn, const Peer& peer) {
  CallerSandbox out;
  // setns(CLONE_NEWNS) and of a time namespace need a single thread.
  STASIS_ASSIGN_OR_RETURN(int threads, CountOwnThreads());
  if (threads != 1)
    return Status::Error(EINVAL,
                         "a restart worker must be single-threaded to enter the client's "
                         "namespaces (it has " +
                             std::to_string(threads) + " threads)");
  bool check_later = false;
  STASIS_ASSIGN_OR_RETURN(UniqueFd pidfd, PeerPidfd(conn, peer, &out.pid, &check_later));
  // /proc/PID as a folder fd stays the caller's: a reused number is another
  // task that this fd does not show.
  UniqueFd proc(
      ::open(("/proc/" + std::to_string(out.pid)).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!proc || !Alive(pidfd.get())) return Gone();

  // Its credentials must still be the connection's.
  STASIS_ASSIGN_OR_RETURN(std::string status, ReadAt(proc.get(), "status"));
  {
    // Real, effective, saved, fs: SO_PEERCRED gave the effective one.
    std::string uids = Field(status, "Uid");
    char* end = nullptr;
    std::strtoul(uids.c_str(), &end, 10);
    if (std::strtoul(end, nullptr, 10) != peer.uid)
      return Status::Error(EPERM, "the client's process changed its user since it connected");
  }
  out.no_new_privs = Field(status, "NoNewPrivs") == "1";
  // Capabilities: the restored tree never gets one the client could not
  // have. A user's tree has none (the restorer drops them); its bounding
  // set (what a setuid program may gain) is made the client's below. A
  // root client with fewer capabilities than ours (a container without a
  // user namespace, a confined service) would get a fully privileged tree:
  // refused.
  STASIS_ASSIGN_OR_RETURN(std::string own_status, ReadAt(AT_FDCWD, "/proc/self/status"));
  const uint64_t their_bounding = std::strtoull(Field(status, "CapBnd").c_str(), nullptr, 16);
  if (peer.uid == 0) {
    for (const char* set : {"CapEff", "CapPrm", "CapBnd"}) {
      uint64_t ours = std::strtoull(Field(own_status, set).c_str(), nullptr, 16);
      uint64_t theirs = std::strtoull(Field(status, set).c_str(), nullptr, 16);
      if (ours & ~theirs)
        return Status::Error(EPERM,
                             "the client runs as root with fewer capabilities than stasisd; run "
                             "`cr_restart --no-daemon` inside its confinement");
    }
  }
  std::string mode = Field(status, "Seccomp");
  if (mode == "1")
    return Status::Error(EPERM,
                         "the client runs in seccomp strict mode; refusing to restore for it");

  // User namespace and root: refused when not ours.
  struct stat mine, theirs;
  if (::stat("/proc/self/ns/user", &mine) != 0 || ::fstatat(proc.get(), "ns/user", &theirs, 0) != 0)
    return Status::FromErrno(errno, "compare the client's user namespace");
  if (!SameFile(mine, theirs)) return Status::Error(EPERM, kNoSandboxLine);
  const dev_t my_userns_dev = mine.st_dev;
  const ino_t my_userns_ino = mine.st_ino;
  struct stat their_root;
  if (::fstatat(proc.get(), "root", &their_root, 0) != 0) {
    if (!Alive(pidfd.get())) return Gone();
    return Status::FromErrno(errno, "stat the client's root folder");
  }

  // Namespaces, opened now (fixed objects), each owned by our user
  // namespace: one the client's user made (through a user namespace of
  // its own) would let it arrange what the worker sees as root.
  std::vector<std::pair<const NsKind*, UniqueFd>> join;
  for (const NsKind& k : kNamespaces) {
    std::string name = std::string("ns/") + k.name;
    if (::stat(("/proc/self/" + name).c_str(), &mine) != 0) continue;  // not in this kernel
    UniqueFd fd(::openat(proc.get(), name.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd || ::fstat(fd.get(), &theirs) != 0) {
      if (!Alive(pidfd.get())) return Gone();
      return Status::FromErrno(errno, std::string("open the client's ") + k.name + " namespace");
    }
    if (SameFile(mine, theirs)) continue;
    UniqueFd owner(::ioctl(fd.get(), NS_GET_USERNS));
    struct stat ost;
    if (!owner || ::fstat(owner.get(), &ost) != 0 || ost.st_dev != my_userns_dev ||
        ost.st_ino != my_userns_ino)
      return Status::Error(EPERM, kNoSandboxLine + std::string(" (its ") + k.name +
                                      " namespace belongs to another user namespace)");
    join.emplace_back(&k, std::move(fd));
  }

  // Resource limits and seccomp filters while the client is surely ours.
  // (/proc/PID/limits: prlimit on another user's process would need
  // CAP_SYS_RESOURCE, which a container may not give stasisd.)
  struct rlimit64 limits[RLIM_NLIMITS];
  {
    STASIS_ASSIGN_OR_RETURN(std::string text, ReadAt(proc.get(), "limits"));
    STASIS_RETURN_IF_ERROR(ParseLimits(text, limits));
  }
  if (mode == "2") {
    STASIS_ASSIGN_OR_RETURN(out.seccomp_filters, ReadSeccomp(out.pid, pidfd.get()));
  }
  STASIS_ASSIGN_OR_RETURN(std::string their_cgroups, ReadAt(proc.get(), "cgroup"));
  if (!Alive(pidfd.get())) return Gone();

  // The cgroup first, while the worker still sees stasisd's cgroup
  // namespace and mounts: the restored tree is the client's to account
  // and limit (a Slurm step's cgroup, say).
  STASIS_RETURN_IF_ERROR(JoinCgroups(their_cgroups, &out.joined));

  for (auto& [k, fd] : join) {
    if (::setns(fd.get(), k->flag) != 0)
      return Status::FromErrno(errno, std::string("enter the client's ") + k->name + " namespace");
    out.joined.push_back(std::string(k->name) + " namespace");
    if (k->flag == CLONE_NEWPID) out.other_pid_namespace = true;
  }
  // The caller's root must be its mount namespace's (no chroot): request
  // paths are resolved from there.
  if (::chdir("/") != 0) return Status::FromErrno(errno, "chdir /");
  struct stat root;
  if (::stat("/", &root) != 0) return Status::FromErrno(errno, "stat /");
  if (!SameFile(root, their_root)) return Status::Error(EPERM, kNoSandboxLine);

  // Its limits (so RLIMIT_NPROC holds for the tree's forks once the worker
  // is the user) and no_new_privs, inherited by everything forked from here.
  for (int r = 0; r < RLIM_NLIMITS; ++r) {
    auto res = static_cast<__rlimit_resource>(r);
    if (::prlimit64(0, res, &limits[r], nullptr) == 0) continue;
    // Above our own hard limit without CAP_SYS_RESOURCE: ours, which is
    // lower than the client's.
    struct rlimit64 ours;
    if (errno != EPERM || ::prlimit64(0, res, nullptr, &ours) != 0)
      return Status::FromErrno(errno, "take the client's resource limit " + std::to_string(r));
    struct rlimit64 lim = {std::min(limits[r].rlim_cur, ours.rlim_max),
                           std::min(limits[r].rlim_max, ours.rlim_max)};
    if (::prlimit64(0, res, &lim, nullptr) != 0)
      return Status::FromErrno(errno, "take the client's resource limit " + std::to_string(r));
  }
  for (int cap = 0; cap < 64; ++cap) {
    if (their_bounding & (1ull << cap)) continue;
    int has = ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (has < 0) break;  // past the kernel's last capability
    if (has && ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
      return Status::FromErrno(errno, "take the client's capability bounding set");
  }
  // A filter is installed in an unprivileged process only under
  // no_new_privs: a filtered client's tree gets it too.
  if (out.no_new_privs || (!out.seccomp_filters.empty() && peer.uid != 0)) {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
      return Status::FromErrno(errno, "set no_new_privs");
    out.no_new_privs = true;
  }
  if (check_later) STASIS_RETURN_IF_ERROR(HoldsConnection(conn, proc.get(), pidfd.get()));
  if (!Alive(pidfd.get())) return Gone();
  return out;
}

}  // namespace stasis::daemon
