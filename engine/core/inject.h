// Internal to engine/core: checking an injected system call.
//
// A call injected into a tracee (Tracee::Syscall, ptrace.h) fails in one of
// two ways: ptrace itself fails (the tracee died, was killed, is not
// stopped), or the call runs and returns -errno in the tracee. Checked()
// folds both into one Result, so that a restore step reads
//
//   STASIS_ASSIGN_OR_RETURN(long fd, Checked(Call(p, SYS_openat, ...), "open " + path));
//
// and never forgets the second check.
#pragma once

#include <string>

#include "engine/base/status.h"

namespace stasis::core {

// The -errno an injected call returned (-4095..-1) as an error naming
// `what`; any other value is a success.
inline Status SysErr(long r, const std::string& what) {
  if (r >= 0 || r < -4095) return Status::Ok();
  return Status::FromErrno(static_cast<int>(-r), what);
}

// The value of an injected call that ptrace completed and that did not
// return -errno; else the error (ptrace's own, or the call's naming `what`).
inline Result<long> Checked(Result<long> call, const std::string& what) {
  if (!call) return call.error();
  STASIS_RETURN_IF_ERROR(SysErr(*call, what));
  return *call;
}

}  // namespace stasis::core
