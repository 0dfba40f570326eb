// cr_run: start a command with libcr preloaded (BLCR's cr_run and its
// libcr_run.so). The engine checkpoints any process of the caller's without
// preparation; the preloaded agent lets programs that were not linked with
// -lcr still be omitted (cr_run --omit, BLCR's libcr_omit: STASIS_OMIT=1,
// inherited by their children) and costs nothing otherwise: it installs no
// wrappers and, unless asked to omit, not even its agent block.
#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/base/install_paths.h"
#include "engine/cli/cli_common.h"

namespace {

// libcr.so.0: $STASIS_LIBCR, else the one installed with this binary (the
// libdir relative to bindir, so a moved prefix still works), else the one
// in the build tree (../agent), else the configured libdir.
std::string LibcrPath() {
  const char* env = std::getenv("STASIS_LIBCR");
  if (env && *env) return ::access(env, R_OK) == 0 ? env : "";
  const std::string dir = stasis::SelfDir();
  for (std::string rel :
       {std::string(STASIS_REL_BIN_TO_LIB) + "/libcr.so.0", std::string("../agent/libcr.so.0")}) {
    std::string p = stasis::ExistingPath(dir, rel, R_OK);
    if (!p.empty()) return p;
  }
  std::string p = std::string(STASIS_INSTALL_LIBDIR) + "/libcr.so.0";
  return ::access(p.c_str(), R_OK) == 0 ? p : "";
}

}  // namespace

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
  std::string lib = LibcrPath();
  if (lib.empty())
    stasis::cli::Die("cr_run", "cannot find libcr.so.0 (set STASIS_LIBCR to its path)", 127);
  const char* old = std::getenv("LD_PRELOAD");
  std::string preload = lib;
  if (old && *old && std::string(old).find(lib) == std::string::npos)
    preload += std::string(":") + old;
  ::setenv("LD_PRELOAD", preload.c_str(), 1);
  ::execvp(argv[i], argv + i);
  stasis::cli::Die("cr_run", std::string("cannot run ") + argv[i] + ": " + std::strerror(errno),
                   127);
}
