// PMIx as the helper tasks of an epoch use it: rank, size, put/fence/get of
// strings, with a timeout on fences. One per process; finalizes on
// destruction.
#pragma once

#include <pmix.h>

#include <cstdint>
#include <string>

#include "engine/base/status.h"

namespace stasis::step {

class Pmix {
 public:
  Pmix() = default;
  Pmix(const Pmix&) = delete;
  Pmix& operator=(const Pmix&) = delete;
  ~Pmix();
  // PMIx_Init and the job size; fails outside `srun --mpi=pmix`.
  Status Init();
  uint32_t rank() const { return me_.rank; }
  uint32_t size() const { return size_; }
  // Publishes a string under `key` (PMIX_GLOBAL) and commits it.
  Status Put(const std::string& key, const std::string& value);
  // A fence of every rank, collecting what each put; at most
  // `timeout_seconds`.
  Status Fence(int timeout_seconds);
  // The string `rank` put under `key` (after a fence).
  Result<std::string> Get(uint32_t rank, const std::string& key);

 private:
  pmix_proc_t me_{};
  uint32_t size_ = 0;
  bool up_ = false;
};

}  // namespace stasis::step
