#include "debug_memory_pool.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace zerrow {
namespace {

enum class Mode { kNone, kWarn, kAbort, kTrap };

Mode ReadMode() {
  const char* v = std::getenv("ZERROW_DEBUG_MEMORY_POOL");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "none") == 0) return Mode::kNone;
  if (std::strcmp(v, "warn") == 0) return Mode::kWarn;
  if (std::strcmp(v, "abort") == 0) return Mode::kAbort;
  if (std::strcmp(v, "trap") == 0) return Mode::kTrap;
  std::fprintf(stderr, "zerrow: ZERROW_DEBUG_MEMORY_POOL=%s is not one of none, warn, abort, trap; using warn\n", v);
  return Mode::kWarn;
}

Mode TheMode() {
  static const Mode mode = ReadMode();
  return mode;
}

const char* Reason(BadFree why) {
  switch (why) {
    case BadFree::kNotOurs: return "the pool does not own this memory";
    case BadFree::kNotLive: return "not the start of a live allocation (freed already?)";
    case BadFree::kInterior: return "points inside an allocation, not at its start";
    case BadFree::kWrongSize: return "size differs from the allocation's";
    case BadFree::kNone: break;
  }
  return "";
}

}  // namespace

bool DebugMemoryPool() { return TheMode() != Mode::kNone; }

void ReportBadFree(BadFree why, const char* call, const void* p, int64_t size, int64_t alignment, size_t actual) {
  const Mode mode = TheMode();
  if (why == BadFree::kNone || mode == Mode::kNone) return;
  if (why == BadFree::kWrongSize) {
    std::fprintf(stderr, "zerrow: invalid %s(%p, size=%lld, alignment=%lld): %s (%zu bytes)\n", call, p,
                 static_cast<long long>(size), static_cast<long long>(alignment), Reason(why), actual);
  } else {
    std::fprintf(stderr, "zerrow: invalid %s(%p, size=%lld, alignment=%lld): %s\n", call, p,
                 static_cast<long long>(size), static_cast<long long>(alignment), Reason(why));
  }
  if (mode == Mode::kAbort) std::abort();
  if (mode == Mode::kTrap) __builtin_trap();
}

}  // namespace zerrow
