// Readers of /proc for one process or thread: the facts the engine needs at
// capture time (tree, maps, status, fds) and at restore time (what a
// half-built process currently maps). Pure parsing lives in the Parse*
// functions so unit tests can feed them text; the Read* functions add the
// file access. No state; thread-compatible.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/status.h"
#include "engine/format/context.h"

namespace stasis::core {

Result<std::string> ReadFileToString(const std::string& path, size_t limit = 64 << 20);
Result<std::string> ReadLink(const std::string& path);
// A process's command line (/proc/PID/cmdline), one string per argument.
Result<std::vector<std::string>> ReadArgv(pid_t pid);

// One line of /proc/PID/maps.
struct MapsEntry {
  uint64_t start = 0, end = 0;
  bool read = false, write = false, exec = false, shared = false;
  uint64_t offset = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t inode = 0;
  std::string path;  // may be "[heap]", "[stack]", "[vdso]", "/x (deleted)", ""
};
Result<std::vector<MapsEntry>> ParseMaps(const std::string& text);
Result<std::vector<MapsEntry>> ReadMaps(pid_t pid);

// The fields of /proc/PID/stat the engine uses.
struct ProcStat {
  pid_t pid = 0;
  std::string comm;
  char state = '?';
  pid_t ppid = 0, pgrp = 0, session = 0;
  uint64_t tty_nr = 0;  // the controlling terminal's device, 0 = none
  pid_t tpgid = 0;      // its foreground process group
  uint64_t flags = 0;
  uint64_t start_code = 0, end_code = 0, start_stack = 0;
  uint64_t start_data = 0, end_data = 0, start_brk = 0;
  uint64_t arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
  int exit_signal = 0;
  int exit_code = 0;
  int num_threads = 0;
  uint64_t starttime = 0;  // clock ticks after boot: with the pid, names a process for good
};
Result<ProcStat> ParseStat(const std::string& text);
Result<ProcStat> ReadStat(pid_t pid);
// The pid a process sees for itself (the last NSpid field; 0 if gone).
pid_t InnermostPid(pid_t pid);

// /proc/PID/timers: one record per POSIX timer ("ID: 3", "signal: 35/
// 0000000000000abc", "notify: signal/tid.1234" (none|signal, pid|tid),
// "ClockID: 1"). The time left is not there (timer_gettime gives it).
Result<std::vector<format::PosixTimer>> ParsePosixTimers(const std::string& text);
Result<ProcStat> ReadThreadStat(pid_t pid, pid_t tid);

// "Key:\tvalue" lines of /proc/PID/status.
Result<std::string> StatusField(const std::string& status_text, const std::string& key);

Result<std::vector<pid_t>> ListTasks(pid_t pid);
// Every process visible in /proc, sorted.
Result<std::vector<pid_t>> ListAllProcesses();
// Children of every thread of pid (from /proc/PID/task/TID/children).
Result<std::vector<pid_t>> ListChildren(pid_t pid);
// Open fd numbers of pid, sorted.
Result<std::vector<int>> ListFds(pid_t pid);

// /proc/PID/fdinfo/FD: pos and flags (octal in the file).
struct FdInfo {
  uint64_t pos = 0;
  uint32_t flags = 0;
  uint64_t mnt_id = 0;
};
Result<FdInfo> ReadFdInfo(pid_t pid, int fd);

// The real uid of a process (from status), or an error if it is gone.
Result<uid_t> ProcessUid(pid_t pid);

// Who asks to trace (checkpoint) a process, as the kernel's
// ptrace_may_access (PTRACE_MODE_ATTACH_REALCREDS) sees a caller: its real
// uid and gid, its permitted capabilities, and whether it may trace anyone
// (CAP_SYS_PTRACE effective; stasisd never sets that for a user).
struct TraceCreds {
  uid_t uid = 0;
  gid_t gid = 0;
  uint64_t cap_permitted = 0;
  bool cap_sys_ptrace = false;
};
// The credentials of process `pid` as a requester (from its status).
Result<TraceCreds> ReadTraceCreds(pid_t pid);

// The kernel's ptrace rule (kernel/ptrace.c __ptrace_may_access and
// security/commoncap.c cap_ptrace_access_check) for a requester without
// CAP_SYS_PTRACE: the target's real, effective, saved (and fs) uids all
// equal the requester's uid, its real, effective, saved (and fs) gids all
// equal the requester's gid, it is dumpable (SUID_DUMP_USER), and its
// permitted capabilities are a subset of the requester's. A requester with
// cap_sys_ptrace passes. `status` is the target's /proc/PID/status;
// `file_uid`/`file_gid` the owner of that file, which the kernel sets to
// the target's euid/egid when it is dumpable and to root when it is not
// (task_dump_owner; verified on 6.18: /proc/PID/status flips to 0:0 on
// PR_SET_DUMPABLE 0 and back on 1, while the /proc/PID directory does not).
// EPERM names the pid and its owner; Corrupt on unreadable status.
Status MayTraceFromStatus(pid_t pid, const std::string& status, uid_t file_uid, gid_t file_gid,
                          const TraceCreds& requester);
// The same for a live process: opens /proc/PID/status once (owner and
// content come from the same open). ESRCH when it is gone.
Status CheckMayTrace(pid_t pid, const TraceCreds& requester);

// pidfds (Linux 5.3): a pidfd names one process for good, so a signal sent
// through it never reaches a process that reused the pid. PidfdOpen and
// PidfdSignal return -1 with errno like the system calls; PidfdAlive is
// false once the process is gone (ESRCH; a zombie still counts as there).
int PidfdOpen(pid_t pid);
int PidfdSignal(int pidfd, int sig);
bool PidfdAlive(int pidfd);

}  // namespace stasis::core

namespace stasis::core {
// Lower-case hex without prefix.
std::string ToHex(uint64_t v);
}  // namespace stasis::core
