// The pool's cache of empty segments, so that memory a process used once comes
// back warm (zeroed as it is reused, a tenth of the cost of faulting fresh
// shmem pages in) instead of going back to the kernel:
//
//   spare  a detached, unfrozen heap: a finished scope's emptied segment, or a
//          lent one reclaimed. Handed to an arena that needs a segment (the
//          SpareHeaps interface). Bounded by resident bytes: ZERROW_SPARE_BYTES,
//          by default twice the pool's peak allocation, at least 1 GiB.
//   lent   a detached, frozen (shared) and unsealed heap with nothing live here.
//          Its pages are the very ones readers in other processes still map, so
//          it costs nothing extra; once the kernel says no one else holds the
//          file (Segment::SoleHolder) it becomes a spare. At most kMaxLent.
//
// Locking. Lock order: registry mutex -> the cache's mutex. Names say which a
// caller holds: *RegistryLocked: the registry's mutex, exclusively; *Locked:
// the cache's own mutex.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include <arrow/memory_pool.h>

#include "arena.h"
#include "segment_heap.h"
#include "segment_registry.h"

namespace zerrow {

class SegmentCache final : public SpareHeaps {
 public:
  // `pool_stats`: the owning pool's counters (the default spare budget follows
  // its peak). `spare_budget`: resident bytes of spares kept; -1 for the default.
  SegmentCache(SegmentRegistry& registry, const arrow::internal::MemoryPoolStats& pool_stats, int64_t spare_budget);
  ~SegmentCache();  // destroys every cached heap
  SegmentCache(const SegmentCache&) = delete;
  SegmentCache& operator=(const SegmentCache&) = delete;

  // SpareHeaps: an arena adopting a segment. Both look at lent heaps first.
  SegmentHeap* TakeCold(size_t capacity, size_t max_resident) override;
  SegmentHeap* TakeWarm(size_t need, size_t target, size_t cap) override;

  // A heap just detached from its arena (Arena::DetachHeapRegistryLocked):
  // lent if frozen, else a spare within budget; destroyed otherwise.
  void KeepRegistryLocked(SegmentHeap* heap);
  // Destroys every spare and lent heap (release_unused()).
  void DestroyAllRegistryLocked();

  // fork(): the pool's fork handlers lock the cache between the registry and
  // the arenas. In the child the cached heaps were never mapped: it forgets them.
  void LockForFork();
  void UnlockAfterFork(bool child);

  // Resident bytes of the spares now (asked of the kernel: see SpareResidentLocked).
  int64_t SpareResidentBytes() const;
  // Lent heaps that became spares, ever.
  int64_t reclaimed() const;

 private:
  static constexpr size_t kMaxLent = 64;  // past that the oldest is let go

  bool KeepSpareRegistryLocked(SegmentHeap* heap);  // false: over budget, not kept
  void LendRegistryLocked(SegmentHeap* heap);
  // Lent heaps no one else holds any more become spares (or are destroyed).
  void ReclaimLentRegistryLocked();
  void DestroyRegistryLocked(SegmentHeap* heap);
  SegmentHeap* TakeSpareLocked(std::vector<SegmentHeap*>::iterator it);
  // Memory backing the spares right now, asked of the kernel each time: it
  // can change while they wait (huge-page collapse, reads of untouched
  // pages), so a running sum kept by hand drifts (issue 9).
  int64_t SpareResidentLocked() const;

  SegmentRegistry& registry_;
  const arrow::internal::MemoryPoolStats& pool_stats_;
  const int64_t spare_budget_;
  mutable std::mutex mu_;
  std::vector<SegmentHeap*> spares_;
  std::vector<SegmentHeap*> lent_;  // oldest first
  int64_t reclaimed_ = 0;
  std::atomic<int64_t> last_warm_reclaim_ns_{0};
};

}  // namespace zerrow
