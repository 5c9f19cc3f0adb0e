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
#include "segment_cache.h"
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

// Four parts, each in its own class: the arenas (the default one and one per
// scope), the segment cache (spare and lent heaps), the registry of
// segments, and Arrow's counters (MemoryPoolStats); the pool routes calls to
// them and owns the fork handlers.
//
// Locking. Lock order: scope_mu_ -> registry mutex -> segment cache ->
// an arena's shards -> its large-extent mutex. Names say what a caller holds:
// *Locked: the object's own mutex (here scope_mu_); *RegistryLocked: the
// registry's mutex, exclusively; *AtFork: every lock, inside the fork handlers.
class ZerrowPool final : public arrow::MemoryPool {
 public:
  // The process's pool, over SegmentRegistry::Global(); never destroyed
  // (buffers may be freed during exit). It alone takes part in fork().
  static ZerrowPool* Instance();

  // A pool of its own over `registry` (tests: the sharing layer against a pool
  // other than the process's). Destroy it only once its buffers are freed.
  explicit ZerrowPool(SegmentRegistry& registry);
  ~ZerrowPool() override;

  arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t** out) override;
  arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                           uint8_t** ptr) override;
  void Free(uint8_t* buffer, int64_t size, int64_t alignment) override;
  void ReleaseUnused() override;
  int64_t bytes_allocated() const override { return stats_.bytes_allocated(); }
  int64_t max_memory() const override { return stats_.max_memory(); }
  int64_t total_bytes_allocated() const override { return stats_.total_bytes_allocated(); }
  int64_t num_allocations() const override { return stats_.num_allocations(); }
  std::string backend_name() const override { return "zerrow"; }
  // Writes Stats() to stderr, one counter a line (Arrow's PrintStats convention).
  void PrintStats() override;

  // Where this pool's segments, and the segments attached through it, are found.
  SegmentRegistry& registry() const { return registry_; }

  // Scopes: while open, all allocations from any thread go to a fresh arena
  // whose segments hold nothing else. Scopes nest; the innermost receives.
  // `expected_bytes`: what the scope is expected to allocate at most, 0 if
  // unknown (see Arena::ExpectBytes).
  uint64_t PushScope(size_t expected_bytes = 0);
  // Fails (Invalid) if `token` is not an open scope's.
  arrow::Status PopScope(uint64_t token);

  // Freezes the heap a shared buffer lies in (see Arena::Freeze). The caller
  // keeps a live buffer in it, so the heap cannot go away meanwhile. Fails
  // (IOError) if the file cannot be punched or sealed.
  arrow::Status Freeze(SegmentHeap* heap, bool seal, bool keep_free = false);

  PoolStats Stats() const;

  // fork(): the parent holds every pool lock across fork(). The child remaps
  // the heaps in use copy-on-write (their read-write mappings are not
  // inherited, see Segment::Create); spare and lent heaps, never mapped into
  // children, it forgets. Both sides freeze the heaps in use (see
  // Arena::FreezeAtFork): the parent's come back, lent, once the child
  // no longer maps them.
  void BeforeFork();
  void AfterFork(bool child);

 private:
  std::vector<Arena*> AllArenasLocked() const;
  void Collect(const void* segment_base, bool only_collectable = true);
  // A retired arena with no heaps left can serve a later scope.
  void NoteIfDead(Arena* arena);
  // The work of Allocate / Free / Reallocate, without the stats.
  arrow::Status AllocateRaw(int64_t size, int64_t alignment, uint8_t** out, bool populate = true);
  // False if nothing was freed (see ZERROW_DEBUG_MEMORY_POOL); `call` names the
  // entry point in reports.
  bool FreeRaw(uint8_t* buffer, int64_t size, int64_t alignment, const char* call);
  arrow::Status ReallocateRaw(int64_t old_size, int64_t new_size, int64_t alignment, uint8_t** ptr);

  SegmentRegistry& registry_;
  ArenaOptions options_;
  arrow::internal::MemoryPoolStats stats_;
  std::atomic<int64_t> realloc_in_place_{0}, realloc_copied_{0};
  SegmentCache cache_;  // before the arenas: they hand it heaps until they are destroyed
  std::unique_ptr<Arena> default_arena_;
  std::atomic<Arena*> current_;

  mutable std::mutex scope_mu_;
  std::vector<std::pair<uint64_t, Arena*>> scope_stack_;
  std::vector<std::unique_ptr<Arena>> scope_arenas_;  // all ever made; reused when dead
  std::vector<Arena*> dead_arenas_;
  uint64_t next_token_ = 1;
};

}  // namespace zerrow
