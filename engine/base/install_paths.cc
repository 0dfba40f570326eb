#include "engine/base/install_paths.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

namespace stasis {
namespace {

std::string Parent(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return "";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string Canonical(const std::string& path) {
  char real[PATH_MAX];
  return ::realpath(path.c_str(), real) ? std::string(real) : "";
}

}  // namespace

std::string SelfDir() {
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  self[n] = 0;
  return Parent(self);
}

std::string ObjectDir(const void* addr) {
  Dl_info info;
  if (!::dladdr(addr, &info) || !info.dli_fname || !*info.dli_fname) return "";
  std::string real = Canonical(info.dli_fname);
  return real.empty() ? "" : Parent(real);
}

std::string ExistingPath(const std::string& dir, const std::string& rel, int mode) {
  if (dir.empty()) return "";
  std::string real = Canonical(dir + "/" + rel);
  return !real.empty() && ::access(real.c_str(), mode) == 0 ? real : "";
}

std::string SiteConfigPath(const char* rel_to_prefix) {
  const std::string kSystem = "/etc/stasis/stasis.yaml";
  std::string dir = SelfDir();
  if (dir.empty()) return kSystem;
  std::string prefix = Canonical(dir + "/" + rel_to_prefix);
  if (prefix.empty() || prefix == "/usr" || prefix == "/") return kSystem;
  return prefix + "/etc/stasis/stasis.yaml";
}

}  // namespace stasis
