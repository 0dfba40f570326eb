// `stasis verify`'s second question: could this context be restarted
// faithfully from here, now? Checksums say the bytes are intact; this says
// whether what the context saved by reference is still there (files mapped
// or open, working folders) and whether it saved, as closed, a socket that
// was connected (a restart gives it back closed, its peer lost).
#pragma once

#include <string>
#include <vector>

#include "engine/format/context_io.h"

namespace stasis::cli {

struct RestartCheck {
  // One line each, for a user: "task 1 (pid 4242) fd 17: TCP ... was
  // connected ...; a restart gives it back closed".
  std::vector<std::string> problems;
  // Worth saying, not stopping a restart (a context of an older stasis
  // that does not record whether an outside socket was connected).
  std::vector<std::string> notes;
};

// Checks files as this host sees them now, the way a restart here would
// (it cannot know of a later --relocate). Mapped files: there, same size
// and mtime. Open regular files: there, same inode. Directories, devices,
// named FIFOs and working folders: there.
RestartCheck CheckRestartable(const format::Context& ctx);

}  // namespace stasis::cli
