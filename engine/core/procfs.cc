// /proc readers; see procfs.h.
#include "engine/core/procfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <sstream>

#include "engine/base/fd.h"

namespace stasis::core {

Result<std::string> ReadFileToString(const std::string& path, size_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Status::FromErrno(errno, "open " + path);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit) return Status::Error(EFBIG, "read " + path + ": larger than expected");
  }
  return out;
}

Result<std::string> ReadLink(const std::string& path) {
  std::string buf(4096, '\0');
  ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
  if (n < 0) return Status::FromErrno(errno, "readlink " + path);
  buf.resize(static_cast<size_t>(n));
  return buf;
}

Result<std::vector<MapsEntry>> ParseMaps(const std::string& text) {
  std::vector<MapsEntry> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.empty()) continue;
    MapsEntry e;
    char perms[5] = {0};
    unsigned long long start, end, off, ino;
    unsigned maj, min;
    int consumed = 0;
    if (sscanf(line.c_str(), "%llx-%llx %4s %llx %x:%x %llu %n", &start, &end, perms, &off, &maj,
               &min, &ino, &consumed) < 7) {
      return Status::Error(EINVAL, "cannot parse maps line: " + line);
    }
    e.start = start;
    e.end = end;
    e.read = perms[0] == 'r';
    e.write = perms[1] == 'w';
    e.exec = perms[2] == 'x';
    e.shared = perms[3] == 's';
    e.offset = off;
    e.dev_major = maj;
    e.dev_minor = min;
    e.inode = ino;
    if (consumed > 0 && static_cast<size_t>(consumed) < line.size()) e.path = line.substr(consumed);
    out.push_back(std::move(e));
  }
  return out;
}

Result<std::vector<MapsEntry>> ReadMaps(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/maps"));
  return ParseMaps(text);
}

Result<ProcStat> ParseStat(const std::string& text) {
  ProcStat st;
  size_t open = text.find('(');
  size_t close = text.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open)
    return Status::Error(EINVAL, "cannot parse stat");
  st.pid = static_cast<pid_t>(atol(text.c_str()));
  st.comm = text.substr(open + 1, close - open - 1);
  std::istringstream in(text.substr(close + 2));
  std::vector<std::string> f;  // f[0] is field 3 (state)
  std::string tok;
  while (in >> tok) f.push_back(tok);
  if (f.size() < 50) return Status::Error(EINVAL, "short stat line");
  auto u = [&](int field) {
    return strtoull(f[static_cast<size_t>(field - 3)].c_str(), nullptr, 10);
  };
  st.state = f[0][0];
  st.ppid = static_cast<pid_t>(u(4));
  st.pgrp = static_cast<pid_t>(u(5));
  st.session = static_cast<pid_t>(u(6));
  st.tty_nr = u(7);
  st.tpgid = static_cast<pid_t>(strtoll(f[static_cast<size_t>(8 - 3)].c_str(), nullptr, 10));
  st.flags = u(9);
  st.num_threads = static_cast<int>(u(20));
  st.starttime = u(22);
  st.start_code = u(26);
  st.end_code = u(27);
  st.start_stack = u(28);
  st.exit_signal = static_cast<int>(u(38));
  st.start_data = u(45);
  st.end_data = u(46);
  st.start_brk = u(47);
  st.arg_start = u(48);
  st.arg_end = u(49);
  st.env_start = u(50);
  st.env_end = u(51);
  st.exit_code = static_cast<int>(u(52));
  return st;
}

Result<ProcStat> ReadStat(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/stat"));
  return ParseStat(text);
}

pid_t InnermostPid(pid_t pid) {
  auto status = ReadFileToString("/proc/" + std::to_string(pid) + "/status");
  if (!status) return 0;
  auto field = StatusField(*status, "NSpid");
  if (!field) return pid;
  size_t last = field->find_last_of(" \t");
  std::string tail = last == std::string::npos ? *field : field->substr(last + 1);
  return static_cast<pid_t>(std::strtol(tail.c_str(), nullptr, 10));
}

Result<std::vector<format::PosixTimer>> ParsePosixTimers(const std::string& text) {
  std::vector<format::PosixTimer> out;
  std::istringstream in(text);
  std::string line;
  auto bad = [&](const std::string& why) {
    return Status::Error(EPROTO, "cannot read /proc/PID/timers: " + why + " in '" + line + "'");
  };
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == std::string::npos) return bad("no ':'");
    std::string key = line.substr(0, colon), value = line.substr(colon + 1);
    while (!value.empty() && value[0] == ' ') value.erase(0, 1);
    char* end = nullptr;
    if (key == "ID") {
      out.emplace_back();
      long id = std::strtol(value.c_str(), &end, 10);
      if (end == value.c_str() || id < 0 || id > INT32_MAX) return bad("bad id");
      out.back().id = static_cast<int32_t>(id);
      continue;
    }
    if (out.empty()) return bad("a field before the first ID");
    format::PosixTimer& t = out.back();
    if (key == "signal") {
      size_t slash = value.find('/');
      if (slash == std::string::npos) return bad("no '/'");
      t.signo = static_cast<uint32_t>(std::strtoul(value.c_str(), nullptr, 10));
      t.sigval = std::strtoull(value.c_str() + slash + 1, nullptr, 16);
    } else if (key == "notify") {
      size_t slash = value.find('/'), dot = value.find('.');
      if (slash == std::string::npos || dot == std::string::npos) return bad("no '/' or '.'");
      std::string how = value.substr(0, slash), whom = value.substr(slash + 1, dot - slash - 1);
      if (how == "signal")
        t.notify = SIGEV_SIGNAL;
      else if (how == "none")
        t.notify = SIGEV_NONE;
      else
        return bad("notification '" + how + "' cannot be restored");
      if (whom == "tid") {
        t.notify |= SIGEV_THREAD_ID;
        t.tid = static_cast<uint32_t>(std::strtoul(value.c_str() + dot + 1, nullptr, 10));
      }
    } else if (key == "ClockID") {
      t.clock = static_cast<int32_t>(std::strtol(value.c_str(), nullptr, 10));
    }
  }
  return out;
}

Result<ProcStat> ReadThreadStat(pid_t pid, pid_t tid) {
  STASIS_ASSIGN_OR_RETURN(
      std::string text,
      ReadFileToString("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat"));
  return ParseStat(text);
}

Result<std::string> StatusField(const std::string& status_text, const std::string& key) {
  std::string needle = key + ":";
  size_t pos = 0;
  while (pos < status_text.size()) {
    size_t eol = status_text.find('\n', pos);
    if (eol == std::string::npos) eol = status_text.size();
    if (status_text.compare(pos, needle.size(), needle) == 0) {
      size_t v = pos + needle.size();
      while (v < eol && (status_text[v] == ' ' || status_text[v] == '\t')) ++v;
      return status_text.substr(v, eol - v);
    }
    pos = eol + 1;
  }
  return Status::Error(ENOENT, "no " + key + " in status");
}

static Result<std::vector<long>> ListNumericDir(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (!d) return Status::FromErrno(errno, "opendir " + path);
  std::vector<long> out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    out.push_back(atol(e->d_name));
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::vector<pid_t>> ListTasks(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(auto v, ListNumericDir("/proc/" + std::to_string(pid) + "/task"));
  return std::vector<pid_t>(v.begin(), v.end());
}

Result<std::vector<pid_t>> ListAllProcesses() {
  STASIS_ASSIGN_OR_RETURN(auto v, ListNumericDir("/proc"));
  return std::vector<pid_t>(v.begin(), v.end());
}

Result<std::vector<pid_t>> ListChildren(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::vector<pid_t> tasks, ListTasks(pid));
  std::vector<pid_t> out;
  for (pid_t t : tasks) {
    auto text = ReadFileToString("/proc/" + std::to_string(pid) + "/task/" + std::to_string(t) +
                                 "/children");
    if (!text) continue;  // thread exited meanwhile
    std::istringstream in(*text);
    long c;
    while (in >> c) out.push_back(static_cast<pid_t>(c));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Result<std::vector<std::string>> ReadArgv(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string raw,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/cmdline"));
  std::vector<std::string> argv;
  for (size_t i = 0; i < raw.size();) {
    size_t end = raw.find('\0', i);
    if (end == std::string::npos) end = raw.size();
    argv.push_back(raw.substr(i, end - i));
    i = end + 1;
  }
  return argv;
}

Result<std::vector<int>> ListFds(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(auto v, ListNumericDir("/proc/" + std::to_string(pid) + "/fd"));
  return std::vector<int>(v.begin(), v.end());
}

Result<FdInfo> ReadFdInfo(pid_t pid, int fd) {
  STASIS_ASSIGN_OR_RETURN(std::string text, ReadFileToString("/proc/" + std::to_string(pid) +
                                                             "/fdinfo/" + std::to_string(fd)));
  FdInfo info;
  STASIS_ASSIGN_OR_RETURN(std::string pos, StatusField(text, "pos"));
  STASIS_ASSIGN_OR_RETURN(std::string flags, StatusField(text, "flags"));
  info.pos = strtoull(pos.c_str(), nullptr, 10);
  info.flags = static_cast<uint32_t>(strtoul(flags.c_str(), nullptr, 8));
  auto mnt = StatusField(text, "mnt_id");
  if (mnt) info.mnt_id = strtoull(mnt->c_str(), nullptr, 10);
  return info;
}

Result<uid_t> ProcessUid(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/status"));
  STASIS_ASSIGN_OR_RETURN(std::string uid, StatusField(text, "Uid"));
  return static_cast<uid_t>(strtoul(uid.c_str(), nullptr, 10));
}

namespace {

// The first `n` numbers of a status line ("Uid:\t1\t2\t3\t4").
bool StatusNumbers(const std::string& status, const char* key, int base, uint64_t* out, int n) {
  auto field = StatusField(status, key);
  if (!field) return false;
  const char* p = field->c_str();
  for (int i = 0; i < n; ++i) {
    char* end = nullptr;
    errno = 0;
    out[i] = std::strtoull(p, &end, base);
    if (end == p || errno != 0) return false;
    p = end;
  }
  return true;
}

constexpr int kCapSysPtrace = 19;

}  // namespace

Result<TraceCreds> ReadTraceCreds(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/status"));
  uint64_t uids[4], gids[4], prm = 0, eff = 0;
  if (!StatusNumbers(text, "Uid", 10, uids, 4) || !StatusNumbers(text, "Gid", 10, gids, 4) ||
      !StatusNumbers(text, "CapPrm", 16, &prm, 1) || !StatusNumbers(text, "CapEff", 16, &eff, 1))
    return Status::Corrupt("cannot read the credentials of pid " + std::to_string(pid));
  TraceCreds c;
  c.uid = static_cast<uid_t>(uids[0]);
  c.gid = static_cast<gid_t>(gids[0]);
  c.cap_permitted = prm;
  c.cap_sys_ptrace = (eff >> kCapSysPtrace) & 1;
  return c;
}

Status MayTraceFromStatus(pid_t pid, const std::string& status, uid_t file_uid, gid_t file_gid,
                          const TraceCreds& requester) {
  const std::string who = "pid " + std::to_string(pid);
  if (requester.cap_sys_ptrace) return Status::Ok();
  uint64_t uids[4], gids[4], prm = 0;
  if (!StatusNumbers(status, "Uid", 10, uids, 4) || !StatusNumbers(status, "Gid", 10, gids, 4) ||
      !StatusNumbers(status, "CapPrm", 16, &prm, 1))
    return Status::Corrupt("cannot read the credentials of " + who);
  const std::string want_uid = "uid " + std::to_string(requester.uid);
  for (uint64_t u : uids)
    if (u != requester.uid)
      return Status::Error(EPERM,
                           who + " belongs to uid " + std::to_string(u) + ", not to " + want_uid);
  for (uint64_t g : gids)
    if (g != requester.gid)
      return Status::Error(EPERM, who + " (uid " + std::to_string(uids[0]) + ") runs with gid " +
                                      std::to_string(g) + ", not gid " +
                                      std::to_string(requester.gid) + " of " + want_uid);
  // Not dumpable (PR_SET_DUMPABLE 0, a setuid/setgid exec, changed
  // credentials): the kernel's /proc files of it are then root's.
  if (file_uid != uids[1] || file_gid != gids[1])
    return Status::Error(EPERM, who + " (uid " + std::to_string(uids[0]) +
                                    ") is not dumpable (setuid/setgid program or "
                                    "PR_SET_DUMPABLE 0), so " +
                                    want_uid + " may not trace it");
  if (prm & ~requester.cap_permitted)
    return Status::Error(EPERM, who + " (uid " + std::to_string(uids[0]) +
                                    ") holds capabilities (CapPrm " + ToHex(prm) + ") that " +
                                    want_uid + " does not have");
  return Status::Ok();
}

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

int PidfdSignal(int pidfd, int sig) {
  if (pidfd < 0) {
    errno = EBADF;
    return -1;
  }
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

bool PidfdAlive(int pidfd) { return PidfdSignal(pidfd, 0) == 0 || errno == EPERM; }

Status CheckMayTrace(pid_t pid, const TraceCreds& requester) {
  const std::string path = "/proc/" + std::to_string(pid) + "/status";
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ESRCH)
      return Status::Error(ESRCH, "pid " + std::to_string(pid) + " has exited");
    return Status::FromErrno(errno, "open " + path);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (errno == ESRCH) return Status::Error(ESRCH, "pid " + std::to_string(pid) + " has exited");
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  if (text.empty()) return Status::Error(ESRCH, "pid " + std::to_string(pid) + " has exited");
  return MayTraceFromStatus(pid, text, st.st_uid, st.st_gid, requester);
}

}  // namespace stasis::core

namespace stasis::core {
std::string ToHex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace stasis::core
