// An arena: the segments one scope (or the process's default) allocates from.
// Small allocations come from per-size-class slabs kept in a few sharded bins,
// so threads rarely share a lock; large ones are page-granular extents picked
// best-fit across the arena's segments. Freed memory stays resident for reuse
// up to a bound, then is punched out of the memfd.
//
// Locking. Lock order: registry -> shards (ascending) -> large_mu_. Names say
// what a caller holds: *Locked: the arena's own mutexes (large_mu_, and the
// shards where noted); *RegistryLocked: the registry's mutex, exclusively;
// *AtFork: every lock, inside the pool's fork handlers.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include <arrow/status.h>

#include "debug_memory_pool.h"
#include "segment_heap.h"
#include "size_classes.h"

namespace zerrow {

class SegmentRegistry;

// Where an arena gets recycled segments: empty heaps of finished scopes or of
// shared buffers their readers let go, whose pages are still resident
// (cheaper to zero than to fault in again).
class SpareHeaps {
 public:
  virtual ~SpareHeaps() = default;
  // The spare heap of at least `capacity` bytes with the least resident
  // memory, if that is at most `max_resident`; else nullptr.
  virtual SegmentHeap* TakeCold(size_t capacity, size_t max_resident) = 0;
  // Among spares with a resident free run of at least `need` and at most
  // `cap` bytes: the one whose smallest run of at least `target` (>= need) is
  // the smallest such; else the one whose run is the longest; nullptr if none.
  virtual SegmentHeap* TakeWarm(size_t need, size_t target, size_t cap) = 0;
};

struct ArenaOptions {
  size_t segment_capacity = size_t{1} << 30;  // virtual size of a segment; pages appear on touch
  int64_t retain_bytes = -1;  // resident free bytes kept for reuse; -1: max(256 MiB, peak live bytes)
};

class Arena {
 public:
  Arena(SegmentRegistry* registry, ArenaOptions options, SpareHeaps* spares = nullptr);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // `populate`: a large allocation from fresh pages is populated in bulk (see
  // populate.h); false for the growth of a reallocated buffer, which Arrow's
  // builders grow geometrically and write only in part.
  arrow::Status Allocate(size_t size, size_t alignment, uint8_t** out, bool populate = true);
  // Frees p, which lies in `heap` (one of this arena's). Returns true when the
  // heap can now be destroyed (nothing live, and frozen or retired). A pointer
  // that is not the start of a live allocation is left alone (*bad says why);
  // a size that does not match is freed all the same (*bad = kWrongSize,
  // *actual = the allocation's bytes).
  bool Free(SegmentHeap* heap, uint8_t* p, size_t size, size_t alignment, BadFree* bad, size_t* actual);
  // What Free would say about p, without freeing it.
  BadFree Check(SegmentHeap* heap, const uint8_t* p, size_t size, size_t alignment, size_t* actual);
  // Grows or shrinks a large allocation without moving it, when its segment allows.
  bool ResizeInPlace(SegmentHeap* heap, uint8_t* p, size_t old_size, size_t new_size,
                     size_t alignment);

  // No new allocations in heap; its free memory reads as zeros from now on:
  // punched, or with `keep_free` zeroed in place (warm for when the heap is
  // reclaimed, see SegmentCache's lent heaps). With `seal`, the file is sealed
  // against writes and our own mapping made read-only: it is never reused,
  // so its free memory is always punched.
  arrow::Status Freeze(SegmentHeap* heap, bool seal, bool keep_free = false);

  // fork(): the parent takes every lock of the arena before forking (so the
  // child's copy of its state is consistent) and both sides release them.
  void LockForFork();
  void UnlockAfterFork();
  // After fork(), on both sides, every lock held (inside the fork handlers,
  // see LockForFork): no heap in use
  // is allocated from again and its free memory is forgotten untouched. In the
  // child every heap is the parent's (mapped copy-on-write, see
  // Segment::RemapPrivateInChild): never punched, sealed or lent, it goes once
  // its buffers here are freed. In the parent, the child still reads the pages
  // it has not written from these files: an emptied heap is lent, and comes
  // back once no other process holds the file.
  void FreezeAtFork(bool child);

  // The arena's scope has ended: its heaps are destroyed as they empty.
  void Retire();
  // A dead arena (retired, no heaps left) may serve a new scope.
  void Reopen();
  // How much the scope expects to allocate at most (0: no idea), e.g. what the
  // same code took last time. Warm spares are then adopted to cover that much
  // and no more: one spare that fits it rather than the smallest warm run for
  // each allocation, which would scatter the scope's buffers over several
  // spares and, once they are shared, strand the rest of each spare's warm
  // memory until every reader lets go. Call before the first allocation.
  void ExpectBytes(size_t bytes);
  bool retired() const { return retired_.load(std::memory_order_acquire); }
  // Returns resident free memory to the kernel.
  void ReleaseRetained();
  // Base addresses of heaps with nothing live in them (destroyable when frozen
  // or retired, or on release); look them up again before use.
  std::vector<const void*> EmptyHeapBases(bool only_collectable);
  // Destroys heap if still empty; the registry's mutex must be held exclusively.
  bool DestroyHeapRegistryLocked(SegmentHeap* heap, bool only_collectable);
  // Removes an empty heap so that it can be recycled: an unfrozen one of a
  // retired arena (all its memory becomes free, dirty where it was used), or a
  // frozen, unsealed one of any arena (readers may still map it; see
  // SegmentCache's lent heaps). Registry mutex held exclusively. False if the
  // heap is not recyclable.
  bool DetachHeapRegistryLocked(SegmentHeap* heap);
  bool empty();  // no heaps left

  int64_t retained_bytes() const { return retained_.load(std::memory_order_relaxed); }

 private:
  static constexpr int kShards = 4;
  struct Shard {
    std::mutex mu;
    std::vector<Span*> partial[kNumClasses];  // slabs with a free slot
  };
  using IndexKey = std::tuple<size_t, SegmentHeap*, size_t>;  // length, heap, offset

  std::array<std::unique_lock<std::mutex>, kShards> LockAllShards();  // in order: see large_mu_
  // Takes an empty heap out of this arena (slabs folded back into free
  // extents, extents out of the index); false if it is not ours or not empty.
  bool UnlinkEmptyHeapLocked(SegmentHeap* heap);  // all shards and large_mu_ held
  arrow::Status AllocateSmall(size_t size, uint8_t** out);
  arrow::Status AllocateLarge(size_t size, size_t alignment, uint8_t** out, bool populate);
  arrow::Status FreezeLocked(SegmentHeap* heap, bool punch_free);  // shards and large_mu_ held
  arrow::Status AddHeap(size_t at_least);  // a cold spare or a new segment; no lock held
  bool AdoptWarmSpare(size_t need);         // no lock held
  // What the scope expects (ExpectBytes) beyond the warm memory of the spares
  // it has adopted; 0 without a hint or once that is covered. large_mu_ held.
  size_t ShortfallLocked() const;
  // With a hint (ExpectBytes), the most warm memory a spare adopted for a
  // shortfall of `target` bytes may hold; SIZE_MAX without one. large_mu_ held.
  size_t SpareCapLocked(size_t target) const;
  // A spare (warm or cold) becomes ours; its dirty free bytes count toward
  // adopted_warm_. large_mu_ held.
  void AdoptLocked(SegmentHeap* heap);
  // Which free extents an allocation may be carved from, in order of preference.
  enum class Fit {
    kWarm,   // large, first try: resident ones only
    kAny,    // slabs, and large when nothing warm is left: resident, then fresh
  };
  // Carves `need` bytes from the best-fitting free extent allowed by `fit`
  // (zeroing them if stale); *dirty: the bytes may hold earlier contents of
  // this scope.
  bool TakeExtentLocked(size_t need, Fit fit, SegmentHeap** heap, size_t* offset, bool* dirty);
  // A large allocation that fits in no resident extent alone: the longest
  // resident run followed by enough fresh pages (a slab carved from the head of
  // a run then costs a large allocation only the slab's pages). *warm: the
  // resident bytes at its start.
  bool TakeWarmHeadLocked(size_t need, SegmentHeap** heap, size_t* offset, size_t* warm);
  void InsertFreeLocked(SegmentHeap* heap, size_t offset, size_t length, bool dirty, bool stale = false);
  void EraseFreeLocked(SegmentHeap* heap, std::map<size_t, FreeExtent>::iterator it);
  void PunchLocked(SegmentHeap* heap, size_t offset);  // a dirty free extent becomes clean
  void PunchTailLocked(SegmentHeap* heap, size_t offset, size_t cut);  // only its last `cut` bytes
  void ReleaseSlabLocked(Shard& shard, Span* span);  // shard and large_mu_ held
  // Is p the start of a live slot / large allocation of `size` bytes? Span's
  // shard mutex / large_mu_ held.
  static BadFree CheckSlotLocked(const Span* span, const uint8_t* p, size_t size, size_t alignment, size_t* actual);
  static BadFree CheckLargeLocked(const Span* span, const uint8_t* p, size_t size, size_t alignment, size_t* actual);
  void DecayLocked();
  void ZeroUnusedSlotsLocked(Span* span);

  // Checks the invariants below (aborts naming the broken one) after each
  // transition, when built with ZERROW_DEBUG_INVARIANTS (meson
  // -Ddebug_invariants=true, on in the sanitizer build); nothing otherwise.
  // large_mu_ held.
#ifdef ZERROW_DEBUG_INVARIANTS
  void CheckInvariantsLocked() const;
#else
  void CheckInvariantsLocked() const {}
#endif

  // Invariants (large_mu_ held; checked by CheckInvariantsLocked):
  //  heaps:    every h in heaps_ has h->arena == this; sealed and inherited
  //            heaps are frozen; a frozen heap has no free extents.
  //  extents:  within a heap, free extents are disjoint, lie inside the
  //            segment, and two adjacent ones differ in dirtiness (equal ones
  //            merge); stale implies dirty.
  //  indexes:  dirty_index_ / clean_index_ hold exactly the (length, heap,
  //            offset) of the dirty / clean free extents of heaps_.
  //  retained: retained_ == sum of the lengths of dirty free extents of heaps_.
  //  live:     live_bytes_ >= 0 and each heap's live_allocations, live_bytes >= 0.
  SegmentRegistry* const registry_;
  const ArenaOptions options_;
  SpareHeaps* const spares_;
  std::atomic<bool> retired_{false};
  Shard shards_[kShards];

  std::mutex large_mu_;  // lock order: registry -> shards (ascending) -> large_mu_
  std::vector<SegmentHeap*> heaps_;
  // Free extents of unfrozen heaps by size: resident ones (dirty) are handed
  // out first, since faulting in fresh shmem pages costs more than zeroing.
  std::set<IndexKey> dirty_index_, clean_index_;
  std::set<IndexKey>& IndexOf(bool dirty) { return dirty ? dirty_index_ : clean_index_; }
  std::atomic<int64_t> retained_{0};  // bytes in dirty free extents
  size_t expected_bytes_ = 0;  // see ExpectBytes; large_mu_
  size_t adopted_warm_ = 0;    // dirty free bytes of the spares adopted since (AdoptLocked); large_mu_
  std::atomic<int64_t> live_bytes_{0};
  std::atomic<int64_t> peak_live_bytes_{0};
  void NoteLive(int64_t delta);
};

}  // namespace zerrow
