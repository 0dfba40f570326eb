// stasis-step control JOB --op enable|disable|error [--dir ROOT]: what
// `scontrol checkpoint enable/disable/error` runs (srun-wrappers/scontrol).
// It starts a one-task helper step in the job (so only the owner or root
// may), `control-local`, whose own environment names the job's checkpoint
// folder; that one switches the folder's .disabled file or prints its
// .last-error.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "engine/store/store.h"
#include "spank/slurm_util.h"
#include "spank/step/common.h"
#include "spank/step/subcommands.h"

namespace stasis::step {

int RunControlLocal(const std::string& job, const std::string& op, const std::string& dir) {
  // The folder the job's own processes were given (--checkpoint-dir, the
  // site's default_dir, else their submit folder): read from the
  // environment of one of its processes on this node.
  std::string root = dir;
  if (root.empty()) {
    auto listed = RunCapture({"scontrol", "listpids", job});
    std::istringstream in(listed ? *listed : "");
    std::string line;
    while (root.empty() && std::getline(in, line)) {
      std::istringstream f(line);
      long pid = 0;
      std::string j;
      if (!(f >> pid >> j) || pid <= 0 || j != job) continue;
      auto raw = ReadProcFile(static_cast<pid_t>(pid), "environ");
      if (!raw) continue;
      auto env = stasis::spank::ParseEnviron(*raw);
      if (!env["STASIS_CHECKPOINT_DIR"].empty())
        root = env["STASIS_CHECKPOINT_DIR"];
      else if (!env["SLURM_SUBMIT_DIR"].empty())
        root = env["SLURM_SUBMIT_DIR"];
    }
  }
  if (root.empty()) Die("job " + job + ": no checkpoint folder known (give ImageDir=)");
  ::mkdir(root.c_str(), 0700);
  auto folder = store::JobFolder::Open(store::DefaultEnv(), root + "/" + job, op == "disable",
                                       store::Access::Caller());
  if (op == "error") {
    if (!folder) {
      std::printf("job %s: no checkpoint error recorded\n", job.c_str());
      return 0;
    }
    auto fd = store::OpenOwnedFile(folder->fd(), kLastError, store::Access::Caller(),
                                   folder->path() + "/" + kLastError);
    if (!fd) {
      std::printf("job %s: no checkpoint error recorded\n", job.c_str());
      return 0;
    }
    auto text = ReadAll(fd->get());
    std::printf("job %s: last checkpoint error: %s", job.c_str(),
                text ? text->c_str() : "(unreadable)\n");
    return 0;
  }
  if (op == "enable") {
    if (folder && ::unlinkat(folder->fd(), kDisabled, 0) != 0 && errno != ENOENT)
      Die(folder->path() + "/" + kDisabled + ": " + std::strerror(errno));
    std::printf("job %s: checkpoints enabled\n", job.c_str());
    return 0;
  }
  if (!folder) Die(folder.error().message());
  if (Status s = WriteJobFile(*folder, kDisabled, "disabled by scontrol checkpoint disable\n");
      !s.ok())
    Die(s.message());
  std::printf("job %s: checkpoints disabled\n", job.c_str());
  return 0;
}

int RunControl(const CheckpointArgs& a, const std::string& op) {
  std::vector<std::string> argv = {
      "srun", "--overlap", "--jobid=" + a.job, "-N1",   "-n1", "-J",   "stasis-ckpt",
      "-Q",   SelfPath(),  "control-local",    "--job", a.job, "--op", op};
  if (!a.root.empty()) argv.insert(argv.end(), {"--dir", a.root});
  int st = 0;
  auto out = RunCapture(argv, &st);
  if (out) std::fputs(out->c_str(), stdout);
  if (!out)
    std::fprintf(stderr, "%s: scontrol checkpoint %s %s: %s\n", kTool, op.c_str(), a.job.c_str(),
                 out.error().message().c_str());
  return out ? 0 : 1;
}

}  // namespace stasis::step
