// A byte count from an environment variable, for the ZERROW_* tuning knobs.
#pragma once

#include <cstdint>
#include <cstdlib>

namespace zerrow {

// The value of `name` as a non-negative integer, or `fallback` when unset,
// empty or not a number.
inline int64_t EnvBytes(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long long n = std::strtoll(v, &end, 10);
  return (end != v && n >= 0) ? static_cast<int64_t>(n) : fallback;
}

}  // namespace zerrow
