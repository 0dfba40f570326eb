// stasis-step's shared helpers (common.h).
#include "spank/step/common.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "engine/base/fd.h"
#include "engine/cli/cli_common.h"
#include "engine/core/procfs.h"

namespace stasis::step {

const char* const kTool = "stasis-step";
const char* const kBatchStepId = "4294967291";

void Die(const std::string& message, int code) { stasis::cli::Die(kTool, message, code); }

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

bool IsBatchRestart() {
  return Env("STASIS_RESTART_TASK") == Env("SLURM_JOB_ID") + "." + kBatchStepId;
}

double Now() {
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

Result<std::string> ReadAll(int fd) {
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "read");
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

Result<std::string> ReadProcFile(pid_t pid, const char* what) {
  return core::ReadFileToString("/proc/" + std::to_string(pid) + "/" + what);
}

Result<std::string> RunCapture(const std::vector<std::string>& argv, int* exit_status) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  pid_t pid = ::fork();
  if (pid < 0) return Status::FromErrno(errno, "fork");
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    std::fprintf(stderr, "%s: cannot run %s: %s\n", kTool, a[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(pipefd[1]);
  UniqueFd r(pipefd[0]);
  auto out = ReadAll(r.get());
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (exit_status) *exit_status = st;
  if (!out) return out.error();
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return Status::Error(
        EIO, argv[0] + " " + (argv.size() > 1 ? argv[1] : "") + " failed (status " +
                 std::to_string(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)) + ")");
  return out;
}

std::string SelfPath() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string(kTool);
}

std::string SlurmClientIn(pid_t root) {
  std::vector<pid_t> todo = {root};
  for (size_t i = 0; i < todo.size() && i < 100000; ++i) {
    const pid_t p = todo[i];
    auto comm = ReadProcFile(p, "comm");
    std::string c = comm ? comm->substr(0, comm->find('\n')) : "";
    if (c == "srun" || c == "salloc" || c == "sbatch" || c == "sattach" || c == "scontrol" ||
        c == "squeue")
      return c + " (pid " + std::to_string(p) + ")";
    auto kids = core::ReadFileToString("/proc/" + std::to_string(p) + "/task/" + std::to_string(p) +
                                       "/children");
    if (!kids) continue;
    std::istringstream in(*kids);
    long k = 0;
    while (in >> k) todo.push_back(static_cast<pid_t>(k));
  }
  return "";
}

bool JobDisabled(const store::JobFolder& job) {
  struct stat st;
  return ::fstatat(job.fd(), kDisabled, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

Status WriteJobFile(const store::JobFolder& job, const char* name, const std::string& text) {
  std::string tmp = std::string(name) + ".tmp";
  ::unlinkat(job.fd(), tmp.c_str(), 0);
  UniqueFd fd(
      ::openat(job.fd(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno(errno, job.path() + "/" + tmp);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
      ::fsync(fd.get()) != 0)
    return Status::FromErrno(errno, job.path() + "/" + tmp);
  if (::renameat(job.fd(), tmp.c_str(), job.fd(), name) != 0)
    return Status::FromErrno(errno, job.path() + "/" + name);
  return Status::Ok();
}

}  // namespace stasis::step
