// store_fault_tool: cr_checkpoint --dir with a FaultEnv, for run_store.py.
// Runs the same code as the tool (cli::CheckpointToEpoch) on a real process,
// with one fault:
//   store_fault_tool --dir JOB [--keep N] --count PID          prints "ops N"
//   store_fault_tool --dir JOB --fail-at N:ERRNO PID           operation N fails
//   store_fault_tool --dir JOB --crash-at N [--power-loss] PID operation N on
//       fail and change nothing; with --power-loss, unsynced data is then dropped
//   store_fault_tool --dir JOB --kill-at N PID                 SIGKILL before operation N
//   --no-rename-flags: Rename fails with EINVAL, as on GlusterFS's FUSE
//       client and NFS, so the commit links MANIFEST into place instead
//   --socket PATH: the capture is done by the stasisd at PATH (a held
//   checkpoint); the faults hit this process's folder and MANIFEST work
// Prints the operation log on stderr; exits 0 when the checkpoint succeeded.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/epoch/epoch_checkpoint.h"
#include "test/store/fault_env.h"

int main(int argc, char** argv) {
  std::string dir, mode, socket;
  int n = 0, err = 0;
  bool power_loss = false, no_rename_flags = false;
  long pid = 0, keep = 2;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--dir")
      dir = next();
    else if (a == "--keep")
      keep = std::atol(next().c_str());
    else if (a == "--count")
      mode = "count";
    else if (a == "--fail-at") {
      mode = "fail";
      std::string v = next();
      n = std::atoi(v.c_str());
      err = std::atoi(v.substr(v.find(':') + 1).c_str());
    } else if (a == "--crash-at")
      mode = "crash", n = std::atoi(next().c_str());
    else if (a == "--kill-at")
      mode = "kill", n = std::atoi(next().c_str());
    else if (a == "--power-loss")
      power_loss = true;
    else if (a == "--no-rename-flags")
      no_rename_flags = true;
    else if (a == "--socket")
      socket = next();
    else
      pid = std::atol(a.c_str());
  }
  if (dir.empty() || mode.empty() || pid <= 0 || keep <= 0) {
    std::fprintf(stderr,
                 "usage: store_fault_tool --dir JOB [--keep N] --count|--fail-at N:ERR|"
                 "--crash-at N [--power-loss]|--kill-at N [--no-rename-flags] PID\n");
    return 2;
  }
  stasis::test::FaultEnv env(stasis::store::DefaultEnv());
  if (mode == "fail") env.FailAt(n, err);
  if (mode == "crash") env.CrashAt(n);
  if (mode == "kill") env.KillAt(n);
  if (no_rename_flags) env.RefuseRenameFlags();
  stasis::core::CheckpointOptions opt;
  opt.target = static_cast<pid_t>(pid);
  opt.tool_argv = {"store_fault_tool"};
  stasis::cli::EpochRequest req;
  req.dir = dir;
  req.keep = static_cast<uint32_t>(keep);
  req.env = &env;
  req.daemon_socket = socket;  // the capture by stasisd, held until our commit
  auto out = stasis::cli::CheckpointToEpoch(opt, req);
  for (const auto& line : env.log()) std::fprintf(stderr, "op %s\n", line.c_str());
  if (power_loss) {
    stasis::Status s = env.DropUnsyncedData();
    if (!s.ok()) {
      std::fprintf(stderr, "store_fault_tool: power loss: %s\n", s.message().c_str());
      return 3;
    }
  }
  if (mode == "count") std::printf("ops %d\n", env.ops());
  if (!out) {
    std::fprintf(stderr, "store_fault_tool: %s\n", out.error().message().c_str());
    return 1;
  }
  if (!out->retention.ok()) {
    std::fprintf(stderr, "store_fault_tool: epoch %llu complete; retention: %s\n",
                 static_cast<unsigned long long>(out->epoch), out->retention.message().c_str());
    return 1;
  }
  return 0;
}
