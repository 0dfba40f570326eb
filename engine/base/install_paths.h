// Where the other files of an installed stasis are, found from the running
// program's (or shared object's) own location, so that an installed prefix
// can be moved: sites install into versioned prefixes and load them with
// environment modules. The relative paths between the install folders come
// from the build (CMakeLists.txt, STASIS_REL_*); absolute paths compiled in
// stay the callers' last fallback.
#pragma once

#include <string>

namespace stasis {

// The folder holding the running executable (/proc/self/exe); "" if unknown.
std::string SelfDir();

// The folder holding the executable or shared object that contains addr
// (dladdr); "" if unknown.
std::string ObjectDir(const void* addr);

// The canonical path of dir/rel if it exists and `mode` (access(2): R_OK,
// X_OK) is granted; "" otherwise or when dir is empty.
std::string ExistingPath(const std::string& dir, const std::string& rel, int mode);

// The site configuration (stasis.yaml(5)) of the install the running
// executable belongs to, whose prefix is SelfDir()/rel_to_prefix: for the
// prefix /usr (or /) /etc/stasis/stasis.yaml, as the .deb installs it;
// otherwise PREFIX/etc/stasis/stasis.yaml, where `cmake --install` puts it.
// /etc/stasis/stasis.yaml when the executable's location is unknown.
std::string SiteConfigPath(const char* rel_to_prefix);

}  // namespace stasis
