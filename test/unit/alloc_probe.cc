// The global operator new of stasis_unit_tests, instrumented for
// AllocationProbe. The two atomics are the test binary's only mutable
// globals: operator new has no other place to report to.
#include "test/unit/alloc_probe.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<bool> g_probing{false};
std::atomic<size_t> g_largest{0};
}  // namespace

void* operator new(size_t size) {
  if (g_probing.load(std::memory_order_relaxed)) {
    size_t seen = g_largest.load(std::memory_order_relaxed);
    while (size > seen && !g_largest.compare_exchange_weak(seen, size)) {
    }
  }
  if (size == 0) size = 1;
  if (void* p = std::malloc(size)) return p;
  throw std::bad_alloc();
}

void* operator new[](size_t size) { return ::operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace stasis::testing {

AllocationProbe::AllocationProbe() {
  g_largest.store(0);
  g_probing.store(true);
}

AllocationProbe::~AllocationProbe() { g_probing.store(false); }

size_t AllocationProbe::largest() const { return g_largest.load(); }

}  // namespace stasis::testing
