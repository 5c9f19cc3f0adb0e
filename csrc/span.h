// A run of pages inside one segment heap: either a slab of equal-size slots or
// one large allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace zerrow {

class SegmentHeap;

struct Span {
  SegmentHeap* heap = nullptr;
  size_t offset = 0;  // from the segment base, page aligned
  size_t length = 0;  // page multiple
  int size_class = -1;  // -1: a large allocation

  // Slabs only (guarded by the owning shard's mutex).
  int shard = 0;
  uint32_t slot_count = 0;
  uint32_t live = 0;
  uint32_t next_unused = 0;          // slots at or past this were never handed out
  std::vector<uint32_t> free_slots;  // slots handed out once and freed since
  std::vector<uint64_t> live_slots;  // bit per slot: handed out and not freed since
  bool in_partial_list = false;

  // Large allocations only (guarded by the arena's large-allocation mutex).
  size_t start = 0;  // offset of the pointer handed out (aligned within the span)

  bool slot_live(uint32_t slot) const { return (live_slots[slot / 64] >> (slot % 64)) & 1; }
  void set_slot_live(uint32_t slot, bool live) {
    const uint64_t bit = uint64_t{1} << (slot % 64);
    live_slots[slot / 64] = live ? live_slots[slot / 64] | bit : live_slots[slot / 64] & ~bit;
  }

  bool is_slab() const { return size_class >= 0; }
};

}  // namespace zerrow
