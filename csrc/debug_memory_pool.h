// ZERROW_DEBUG_MEMORY_POOL: what to do about a Free or Reallocate the pool
// cannot honour (a pointer it does not own, one freed already, one inside an
// allocation, a size other than the allocation's), as Arrow's
// ARROW_DEBUG_MEMORY_POOL does for its pools. Unset or "none": such frees are
// ignored (never half-done: that would corrupt the pool); "warn": also
// reported on stderr; "abort" / "trap": reported, then the process aborts
// (abort()) or traps (__builtin_trap, for a debugger).
#pragma once

#include <cstddef>
#include <cstdint>

namespace zerrow {

enum class BadFree {
  kNone,
  kNotOurs,    // not in any segment of this pool
  kNotLive,    // in a segment of this pool, but not live: freed already, or never handed out
  kInterior,   // inside a live allocation, not its start
  kWrongSize,  // the allocation's size class or page count differs (freed all the same)
};

// Reports `why` as ZERROW_DEBUG_MEMORY_POOL says; `actual` is the allocation's
// size in bytes for kWrongSize.
void ReportBadFree(BadFree why, const char* call, const void* p, int64_t size, int64_t alignment,
                   size_t actual = 0);

// Whether bad frees are reported at all (checks cost a little on Reallocate).
bool DebugMemoryPool();

}  // namespace zerrow
