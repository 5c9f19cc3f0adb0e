// The zerrow arrow::MemoryPool: every byte it hands out lies in a memfd segment
// that can be passed to another process.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <arrow/memory_pool.h>

#include "arena.h"
#include "segment_registry.h"

namespace zerrow {

struct PoolStats {
  int64_t bytes_allocated = 0;
  int64_t max_memory = 0;
  int64_t total_bytes_allocated = 0;
  int64_t num_allocations = 0;
  int64_t realloc_in_place = 0;
  int64_t realloc_copied = 0;
  int64_t segments = 0;         // own segments currently mapped
  int64_t frozen_segments = 0;  // of which frozen (shared)
  int64_t spare_segments = 0;   // empty, unshared or reclaimed segments kept for reuse (not in `segments`)
  int64_t lent_segments = 0;    // emptied shared segments that readers may still map (not in `segments`)
  int64_t segments_reclaimed = 0;  // lent segments found unmapped elsewhere and reused, ever
  int64_t bytes_resident = 0;   // memory backing own segments right now
  int64_t bytes_retained = 0;   // resident but free, kept for reuse
  int64_t scopes_open = 0;
};

class ZerrowPool final : public arrow::MemoryPool, private SpareHeaps {
 public:
  // The process's pool; never destroyed (buffers may be freed during exit).
  static ZerrowPool* Instance();

  arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t** out) override;
  arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                           uint8_t** ptr) override;
  void Free(uint8_t* buffer, int64_t size, int64_t alignment) override;
  void ReleaseUnused() override;
  int64_t bytes_allocated() const override { return bytes_allocated_.load(); }
  int64_t max_memory() const override { return max_memory_.load(); }
  int64_t total_bytes_allocated() const override { return total_bytes_allocated_.load(); }
  int64_t num_allocations() const override { return num_allocations_.load(); }
  std::string backend_name() const override { return "zerrow"; }
  // Writes Stats() to stderr, one counter a line (Arrow's PrintStats convention).
  void PrintStats() override;

  // Scopes: while open, all allocations from any thread go to a fresh arena
  // whose segments hold nothing else. Scopes nest; the innermost receives.
  uint64_t PushScope();
  arrow::Status PopScope(uint64_t token);

  // Freezes the heap a shared buffer lies in (see Arena::Freeze). The caller
  // keeps a live buffer in it, so the heap cannot go away meanwhile.
  arrow::Status Freeze(SegmentHeap* heap, bool seal, bool keep_free = false);

  PoolStats Stats() const;

  // fork(): the parent holds every pool lock across fork(). The child remaps
  // the heaps in use copy-on-write (their read-write mappings are not
  // inherited, see Segment::Create); spare and lent heaps, never mapped into
  // children, it forgets. Both sides freeze the heaps in use (see
  // Arena::FreezeForForkLocked): the parent's come back, lent, once the child
  // no longer maps them.
  void BeforeFork();
  void AfterFork(bool child);

 private:
  ZerrowPool();
  std::vector<Arena*> AllArenasLocked() const;  // scope_mu_ held
  void Collect(const void* segment_base, bool only_collectable = true);
  SegmentHeap* TakeCold(size_t capacity) override;
  SegmentHeap* TakeWarm(size_t need) override;
  SegmentHeap* TakeSpareLocked(std::vector<SegmentHeap*>::iterator it);  // spare_mu_ held
  // Keeps an empty heap of a finished scope for the next scope, within budget;
  // registry mutex held exclusively. False: destroy it instead.
  bool KeepSpareLocked(SegmentHeap* heap);
  void DestroySparesLocked();
  // Memory backing the spares right now, asked of the kernel each time: it
  // can change while they wait (huge-page collapse, reads of untouched
  // pages), so a running sum kept by hand drifts (issue 9). spare_mu_ held.
  int64_t SpareResidentLocked() const;
  // Lent heaps: frozen (shared) heaps with nothing live here any more. Their
  // pages are what readers in other processes still map, so they cost nothing
  // extra; once the kernel says no one else holds the file (Segment::SoleHolder)
  // they become spares, warm, instead of fresh memory faulted in page by page.
  // Registry mutex held exclusively for all three.
  void LendLocked(SegmentHeap* heap);
  void ReclaimLentLocked();
  void DestroyLentLocked();
  void DestroyDetachedLocked(SegmentHeap* heap);
  // A retired arena with no heaps left can serve a later scope.
  void NoteIfDead(Arena* arena);
  void NoteAllocated(int64_t size);  // stats of one allocation of `size` bytes
  // The work of Allocate / Free / Reallocate, without the stats.
  arrow::Status AllocateRaw(int64_t size, int64_t alignment, uint8_t** out, bool populate = true);
  // False if nothing was freed (see ZERROW_DEBUG_MEMORY_POOL); `call` names the
  // entry point in reports.
  bool FreeRaw(uint8_t* buffer, int64_t size, int64_t alignment, const char* call);
  arrow::Status ReallocateRaw(int64_t old_size, int64_t new_size, int64_t alignment, uint8_t** ptr);

  SegmentRegistry& registry_;
  ArenaOptions options_;
  std::unique_ptr<Arena> default_arena_;
  std::atomic<Arena*> current_;

  mutable std::mutex scope_mu_;
  std::vector<std::pair<uint64_t, Arena*>> scope_stack_;
  std::vector<std::unique_ptr<Arena>> scope_arenas_;  // all ever made; reused when dead
  std::vector<Arena*> dead_arenas_;
  uint64_t next_token_ = 1;

  mutable std::mutex spare_mu_;  // inside the registry mutex when both are held
  std::vector<SegmentHeap*> spares_;
  std::vector<SegmentHeap*> lent_;  // oldest first
  std::atomic<int64_t> last_warm_reclaim_ns_{0};
  int64_t reclaimed_ = 0;
  int64_t spare_budget_ = -1;  // ZERROW_SPARE_BYTES; -1: max(1 GiB, 2 * max_memory())

  std::atomic<int64_t> bytes_allocated_{0}, max_memory_{0}, total_bytes_allocated_{0},
      num_allocations_{0}, realloc_in_place_{0}, realloc_copied_{0};
};

}  // namespace zerrow
