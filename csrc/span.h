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
  bool in_partial_list = false;

  bool is_slab() const { return size_class >= 0; }
};

}  // namespace zerrow
