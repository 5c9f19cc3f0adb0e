// Allocation state of one owned segment: which page runs are free, which are
// spans, how much is live, and whether it is frozen. The state is private to
// the Arena that owns the heap (guarded by its large-allocation mutex unless
// noted); everyone else reads it through the accessors below.
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
      : arena_(arena), segment_(std::move(segment)), pages_(segment_->size()) {}
  SegmentHeap(const SegmentHeap&) = delete;
  SegmentHeap& operator=(const SegmentHeap&) = delete;

  Span* SpanAt(const void* p) const {
    size_t off = static_cast<size_t>(static_cast<const uint8_t*>(p) - segment_->base());
    return pages_.Get(off / kPageSize);
  }

  // nullptr while the heap is detached: a spare or lent heap (see SegmentCache).
  Arena* arena() const { return arena_; }
  const std::shared_ptr<Segment>& segment() const { return segment_; }
  bool frozen() const { return frozen_.load(std::memory_order_acquire); }
  bool sealed() const { return sealed_; }
  bool inherited() const { return inherited_; }
  int64_t live_bytes() const { return live_bytes_.load(std::memory_order_relaxed); }

  // For detached heaps only (no arena, so no lock but the cache's):
  // A lent heap that no one else maps any more: all of it becomes free again,
  // dirty where pages are resident (zeroed as they are handed out again, see
  // Arena::AdoptLocked), and it is no longer frozen.
  void Thaw();
  // The length of the smallest (or with `longest`, the longest) dirty free
  // extent of `need` to `cap` bytes; 0 if none.
  size_t DirtyFit(size_t need, size_t cap, bool longest) const;

 private:
  friend class Arena;

  Arena* arena_;  // changes only while the heap is empty (recycled to another scope)
  const std::shared_ptr<Segment> segment_;
  PageMap pages_;                              // page -> span, lock-free reads
  std::map<size_t, FreeExtent> free_extents_;  // by offset; absent once frozen
  std::vector<Span*> slabs_;                   // every slab span carved from this heap
  std::atomic<int64_t> live_allocations_{0};   // live allocations (any thread)
  std::atomic<int64_t> live_bytes_{0};         // bytes of live slots and extents
  std::atomic<bool> frozen_{false};
  bool sealed_ = false;
  // In a forked child: the parent's heap, mapped copy-on-write here. Never
  // allocated from, punched, sealed, lent or shared by reference; destroyed
  // once nothing in it is live (see ZerrowPool::AfterFork).
  bool inherited_ = false;
};

}  // namespace zerrow
