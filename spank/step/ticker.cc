// stasis-step ticker --job J --interval SECONDS [--final-lead SECONDS]
// Started by spank_stasis.so in the batch step of a job submitted with
// --checkpoint: one `checkpoint` every interval, and a final one when Slurm
// signals the job (SIGTERM before a preemption, the --signal warning) or
// final-lead seconds before its time limit, while time permits.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <string>

#include "engine/core/procfs.h"
#include "spank/step/common.h"
#include "spank/step/subcommands.h"

namespace stasis::step {
namespace {

volatile sig_atomic_t g_warned = 0;
void OnWarn(int) { g_warned = 1; }

// When the job will end (its time limit), from squeue; 0 if unknown.
double JobEndTime(const std::string& job) {
  auto out = RunCapture({"squeue", "-h", "-j", job, "-o", "%e"});
  if (!out) return 0;
  struct tm tm {};
  std::string text = *out;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (!::strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return 0;
  tm.tm_isdst = -1;
  return static_cast<double>(::mktime(&tm));
}

// The batch script: the child of the batch step's slurmstepd `stepd` that
// is not this ticker (0 when not found).
pid_t BatchScript(pid_t stepd) {
  auto kids = core::ReadFileToString("/proc/" + std::to_string(stepd) + "/task/" +
                                     std::to_string(stepd) + "/children");
  if (!kids) return 0;
  std::istringstream in(*kids);
  long k = 0;
  while (in >> k)
    if (k != ::getpid()) return static_cast<pid_t>(k);
  return 0;
}

}  // namespace

int RunTicker(const std::string& job, uint64_t interval, uint64_t final_lead) {
  struct sigaction sa {};
  sa.sa_handler = OnWarn;
  for (int sig : {SIGTERM, SIGUSR1, SIGUSR2}) ::sigaction(sig, &sa, nullptr);
  CheckpointArgs a;
  a.job = job;
  a.timeout = static_cast<int>(std::min<uint64_t>(std::max<uint64_t>(interval, 60), 600));
  double next = Now() + static_cast<double>(interval);
  const pid_t parent = ::getppid();  // the batch step's slurmstepd
  // The final epoch before the time limit: final_lead seconds before the
  // job's end time (re-read every tick: scontrol update may move it).
  double end = JobEndTime(job), last_poll = Now();
  bool final_done = false;
  for (;;) {
    while (!g_warned && Now() < next) {
      if (::getppid() != parent) return 0;  // the job has ended
      if (Now() - last_poll > 30) {
        end = JobEndTime(job);
        last_poll = Now();
      }
      if (!final_done && end > 0 && final_lead > 0 &&
          Now() >= end - static_cast<double>(final_lead))
        break;
      ::usleep(200000);
    }
    bool final = g_warned || (!final_done && end > 0 && final_lead > 0 &&
                              Now() >= end - static_cast<double>(final_lead));
    if (final) final_done = true;
    a.final = final;
    a.batch_script = BatchScript(parent);
    std::fprintf(stderr, "%s: job %s: %s checkpoint\n", kTool, job.c_str(),
                 final ? "final" : "periodic");
    (void)RunCheckpoint(a);
    if (g_warned) return 0;
    next = Now() + static_cast<double>(interval);
  }
}

}  // namespace stasis::step
