// spank.guard: no C++ exception leaves a hook of spank_stasis.so. This
// program stands in for slurmstepd: it defines the Slurm functions the
// plugin calls (exported with -rdynamic, as slurmstepd exports them), loads
// the plugin with dlopen, makes those functions throw, and checks that
// every hook returns -1 and logs "stasis: <hook>: <what>" instead of
// unwinding into its caller (which in Slurm is C).
//   spank_guard_test PLUGIN.so
extern "C" {
#include <slurm/spank.h>
}

#include <dlfcn.h>

#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace {

bool g_throw = false;
std::string g_logged;

void MaybeThrow(const char* what) {
  if (g_throw) throw std::runtime_error(std::string("injected failure in ") + what);
}

}  // namespace

// The Slurm side, as the plugin links against it.
extern "C" {
void slurm_error(const char* format, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, format);
  std::vsnprintf(buf, sizeof buf, format, ap);
  va_end(ap);
  g_logged = buf;
}
spank_context_t spank_context(void) {
  MaybeThrow("spank_context");
  return S_CTX_REMOTE;
}
int spank_remote(spank_t) {
  MaybeThrow("spank_remote");
  return 1;
}
spank_err_t spank_option_register(spank_t, struct spank_option*) {
  return static_cast<spank_err_t>(ESPANK_SUCCESS);
}
spank_err_t spank_get_item(spank_t, spank_item_t, ...) {
  MaybeThrow("spank_get_item");
  return static_cast<spank_err_t>(ESPANK_ERROR);
}
spank_err_t spank_getenv(spank_t, const char*, char*, int) {
  MaybeThrow("spank_getenv");
  return static_cast<spank_err_t>(ESPANK_ENV_NOEXIST);
}
spank_err_t spank_setenv(spank_t, const char*, const char*, int) {
  MaybeThrow("spank_setenv");
  return static_cast<spank_err_t>(ESPANK_SUCCESS);
}
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: spank_guard_test PLUGIN.so\n");
    return 2;
  }
  void* plugin = ::dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!plugin) {
    std::fprintf(stderr, "dlopen %s: %s\n", argv[1], ::dlerror());
    return 1;
  }
  using Hook = int (*)(spank_t, int, char**);
  const char* const hooks[] = {"slurm_spank_init", "slurm_spank_user_init", "slurm_spank_task_init",
                               "slurm_spank_task_exit", "slurm_spank_exit"};
  int failures = 0;
  for (const char* name : hooks) {
    auto hook = reinterpret_cast<Hook>(::dlsym(plugin, name));
    if (!hook) {
      std::fprintf(stderr, "FAIL %s: not exported\n", name);
      ++failures;
      continue;
    }
    // Without a failure the hook does its work (nothing, outside a step).
    g_throw = false;
    g_logged.clear();
    int rc = hook(nullptr, 0, nullptr);
    if (rc != 0) {
      std::fprintf(stderr, "FAIL %s: returned %d without a failure (%s)\n", name, rc,
                   g_logged.c_str());
      ++failures;
    }
    // With one: -1 and one line with the plugin's prefix, no exception.
    g_throw = true;
    g_logged.clear();
    try {
      rc = hook(nullptr, 0, nullptr);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "FAIL %s: an exception escaped: %s\n", name, e.what());
      ++failures;
      continue;
    }
    const std::string want = std::string("stasis: ") + name + ": injected failure in ";
    if (rc != -1 || g_logged.rfind(want, 0) != 0) {
      std::fprintf(stderr, "FAIL %s: returned %d and logged '%s' (expected -1 and '%s...')\n", name,
                   rc, g_logged.c_str(), want.c_str());
      ++failures;
      continue;
    }
    std::printf("ok %s: %s\n", name, g_logged.c_str());
  }
  return failures ? 1 : 0;
}
