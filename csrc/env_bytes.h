// A byte count from an environment variable, for the ZERROW_* tuning knobs.
#pragma once

#include <cstdint>
#include <cstdlib>

namespace zerrow {

// The value of `name` as a non-negative byte count, with an optional binary
// suffix (K, M, G, T; "KiB", "M", "2g" all read as powers of 1024), or
// `fallback` when unset, empty or not such a number.
inline int64_t EnvBytes(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long long n = std::strtoll(v, &end, 10);
  if (end == v || n < 0) return fallback;
  int shift = 0;
  switch (*end) {
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case 't': case 'T': shift = 40; break;
    case '\0': return static_cast<int64_t>(n);
    default: return fallback;
  }
  ++end;
  if (*end == 'i' || *end == 'I') ++end;
  if (*end == 'b' || *end == 'B') ++end;
  if (*end != '\0' || n > (INT64_MAX >> shift)) return fallback;
  return static_cast<int64_t>(n) << shift;
}

}  // namespace zerrow
