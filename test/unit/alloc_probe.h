// AllocationProbe: measures the largest single heap allocation made while
// it is alive, so tests can show that a claimed length was not allocated
// before its bytes arrived. Works by replacing the global operator new of
// the test binary (alloc_probe.cc). One probe at a time; not thread-safe.
#pragma once

#include <cstddef>

namespace stasis::testing {

class AllocationProbe {
 public:
  AllocationProbe();
  ~AllocationProbe();
  AllocationProbe(const AllocationProbe&) = delete;
  AllocationProbe& operator=(const AllocationProbe&) = delete;
  // Largest size passed to operator new since construction.
  size_t largest() const;
};

}  // namespace stasis::testing
