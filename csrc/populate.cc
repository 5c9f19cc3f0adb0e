#include "populate.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>

#include "env_bytes.h"
#include "size_classes.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace zerrow {
namespace {

// Measured with bench/first_touch.py and traced Arrow allocations (see
// docs/ARCHITECTURE.md): populating costs ~80% of faulting the same pages in,
// so it pays only for pages that will be written. Arrow's allocations of 16 MiB
// and more were written whole in every operation traced; smaller ones were
// often builder reserves written to 14-60%.
constexpr int64_t kDefaultMin = int64_t{16} << 20;
constexpr int64_t kDefaultMax = int64_t{256} << 20;

// Whether the kernel knows MADV_POPULATE_WRITE (Linux >= 5.14), asked once on
// a scratch mapping: a failure on a segment says nothing about the kernel
// (EINVAL also means a mapping made read-only meanwhile).
bool Supported() {
  static const bool ok = [] {
    void* p = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    bool yes = madvise(p, kPageSize, MADV_POPULATE_WRITE) == 0;
    munmap(p, kPageSize);
    return yes;
  }();
  return ok;
}

}  // namespace

void PopulateFresh(void* p, size_t size) {
  static const auto min = static_cast<size_t>(EnvBytes("ZERROW_POPULATE_MIN", kDefaultMin));
  static const auto max = static_cast<size_t>(EnvBytes("ZERROW_POPULATE_MAX", kDefaultMax));
  if (min == 0 || size < min || !Supported()) return;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = addr & ~(uintptr_t{kPageSize} - 1);
  const size_t len = std::min(RoundUp(addr + size, kPageSize) - first, max);
  // Best effort: if it fails (a memory cgroup at its limit), the pages fault
  // in as they are written, as without it.
  (void)madvise(reinterpret_cast<void*>(first), len, MADV_POPULATE_WRITE);
}

}  // namespace zerrow
