// cr_run: start a command so that it can be checkpointed (BLCR's cr_run).
// The engine checkpoints any process of the caller's without preparation;
// cr_run marks the process tree (STASIS_RUN=1, STASIS_OMIT=1 with --omit)
// and will preload the in-process agent once libcr exists, as BLCR's
// libcr_run.so did.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/cli/cli_common.h"

int main(int argc, char** argv) {
  const char* kUsage = "cr_run [--omit] COMMAND [ARGS...]";
  int i = 1;
  bool omit = false;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--omit") {
      omit = true;
    } else if (a == "--") {
      ++i;
      break;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n", kUsage);
      return 0;
    } else if (a[0] == '-') {
      stasis::cli::Usage("cr_run", kUsage);
    } else {
      break;
    }
  }
  if (i >= argc) stasis::cli::Usage("cr_run", kUsage);
  ::setenv("STASIS_RUN", "1", 1);
  if (omit) ::setenv("STASIS_OMIT", "1", 1);
  ::execvp(argv[i], argv + i);
  stasis::cli::Die("cr_run", std::string("cannot run ") + argv[i] + ": " + std::strerror(errno),
                   127);
}
