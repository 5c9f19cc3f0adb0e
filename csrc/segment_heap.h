// Allocation state of one owned segment: which page runs are free, which are
// spans, how much is live, and whether it is frozen. All fields are guarded by
// the owning arena's large-allocation mutex unless noted.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "page_map.h"
#include "segment.h"

namespace zerrow {

class Arena;

struct FreeExtent {
  size_t length = 0;
  bool dirty = false;  // may hold resident pages from earlier use
  bool stale = false;  // holds bytes of an earlier scope: zeroed when handed out
};

class SegmentHeap {
 public:
  SegmentHeap(Arena* arena, std::shared_ptr<Segment> segment)
      : arena(arena), segment(std::move(segment)), pages(this->segment->size()) {}

  Span* SpanAt(const void* p) const {
    size_t off = static_cast<size_t>(static_cast<const uint8_t*>(p) - segment->base());
    return pages.Get(off / kPageSize);
  }

  Arena* arena;  // changes only while the heap is empty (recycled to another scope)
  const std::shared_ptr<Segment> segment;
  PageMap pages;                              // page -> span, lock-free reads
  std::map<size_t, FreeExtent> free_extents;  // by offset; absent once frozen
  std::vector<Span*> slabs;                   // every slab span carved from this heap
  std::atomic<int64_t> live_allocations{0};   // live allocations (any thread)
  std::atomic<int64_t> live_bytes{0};         // bytes of live slots and extents
  std::atomic<bool> frozen{false};
  bool sealed = false;
  // In a forked child: the parent's heap, mapped copy-on-write here. Never
  // allocated from, punched, sealed, lent or shared by reference; destroyed
  // once nothing in it is live (see ZerrowPool::AfterFork).
  bool inherited = false;
};

}  // namespace zerrow
