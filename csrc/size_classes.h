// Size classes for small allocations: 64-byte steps up to 1 KiB, then four
// classes per power of two up to kMaxSmall, so a slot wastes at most 25%.
#pragma once

#include <array>
#include <bit>
#include <cstddef>

namespace zerrow {

constexpr size_t kPageSize = 4096;
constexpr size_t kMinAlignment = 64;  // Arrow's default buffer alignment
constexpr size_t kMaxSmall = 32 * 1024;
constexpr int kNumClasses = 16 + 4 * 5;

constexpr size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Class index of an allocation of n bytes, 1 <= n <= kMaxSmall.
constexpr int SizeClassOf(size_t n) {
  if (n <= 1024) return static_cast<int>((n + 63) / 64) - 1;
  int lg = std::bit_width(n - 1);  // 2^(lg-1) < n <= 2^lg
  size_t base = size_t{1} << (lg - 1), step = base / 4;
  return 16 + (lg - 11) * 4 + static_cast<int>((n - base + step - 1) / step) - 1;
}

constexpr size_t ClassSize(int c) {
  if (c < 16) return static_cast<size_t>(c + 1) * 64;
  int group = (c - 16) / 4, idx = (c - 16) % 4 + 1;
  size_t base = size_t{1024} << group;
  return base + idx * (base / 4);
}

// Bytes of one slab of class c: at least 64 KiB and at least 8 slots.
constexpr size_t SlabBytes(int c) {
  size_t s = ClassSize(c) * 8;
  return RoundUp(s < 65536 ? 65536 : s, kPageSize);
}

static_assert(SizeClassOf(64) == 0 && ClassSize(0) == 64);
static_assert(SizeClassOf(1025) == 16 && ClassSize(16) == 1280);
static_assert(SizeClassOf(2048) == 19 && ClassSize(19) == 2048);
static_assert(SizeClassOf(kMaxSmall) == kNumClasses - 1 && ClassSize(kNumClasses - 1) == kMaxSmall);

}  // namespace zerrow
