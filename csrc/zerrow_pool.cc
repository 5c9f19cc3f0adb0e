#include "zerrow_pool.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <shared_mutex>
#include <utility>

#include <pthread.h>

#include "env_bytes.h"

namespace zerrow {
namespace {

// Zero-size allocations all point here, as in Arrow's own pools.
alignas(kPageSize) uint8_t zero_size_area[1];

}  // namespace

ZerrowPool* ZerrowPool::Instance() {
  static auto* pool = [] {
    auto* p = new ZerrowPool(SegmentRegistry::Global());
    pthread_atfork([] { Instance()->BeforeFork(); }, [] { Instance()->AfterFork(false); },
                   [] { Instance()->AfterFork(true); });
    return p;
  }();
  return pool;
}

ZerrowPool::ZerrowPool(SegmentRegistry& registry)
    : registry_(registry), cache_(registry, stats_, EnvBytes("ZERROW_SPARE_BYTES", -1)) {
  options_.segment_capacity = RoundUp(
      static_cast<size_t>(EnvBytes("ZERROW_SEGMENT_SIZE", static_cast<int64_t>(options_.segment_capacity))),
      size_t{2} << 20);
  options_.retain_bytes = EnvBytes("ZERROW_RETAIN_BYTES", -1);
  default_arena_ = std::make_unique<Arena>(&registry_, options_, &cache_);
  current_.store(default_arena_.get());
}

ZerrowPool::~ZerrowPool() = default;

std::vector<Arena*> ZerrowPool::AllArenasLocked() const {
  std::vector<Arena*> arenas{default_arena_.get()};
  for (auto& a : scope_arenas_) arenas.push_back(a.get());
  return arenas;
}

void ZerrowPool::BeforeFork() {
  // Every lock, in the documented order, so that no other thread is midway
  // through changing what the child copies.
  scope_mu_.lock();
  registry_.mutex().lock();
  cache_.LockForFork();
  for (Arena* arena : AllArenasLocked()) arena->LockForFork();
  registry_.ForEachHeapLocked([](SegmentHeap* heap) {
    if (heap->arena() != nullptr && !heap->inherited() && !heap->sealed()) heap->segment()->OpenForkDescription();
  });
}

void ZerrowPool::AfterFork(bool child) {
  const std::vector<Arena*> arenas = AllArenasLocked();
  if (child) {
    registry_.ForEachHeapLocked([](SegmentHeap* heap) {
      if (heap->arena() == nullptr || heap->inherited()) return;  // spares and lent: the cache's; or already private
      if (!heap->sealed()) {
        auto st = heap->segment()->RemapPrivateInChild();
        if (!st.ok()) std::fprintf(stderr, "zerrow: after fork(): %s\n", st.ToString().c_str());
      }
    });
  }
  if (!child) {  // the child holds its own copy of each, for as long as it maps the heap
    registry_.ForEachHeapLocked([](SegmentHeap* heap) { heap->segment()->CloseForkDescription(); });
  }
  for (Arena* arena : arenas) {
    arena->FreezeAtFork(child);
    arena->UnlockAfterFork();
  }
  cache_.UnlockAfterFork(child);
  if (child) {
    registry_.ResetMutexInChild();
  } else {
    registry_.mutex().unlock();
  }
  scope_mu_.unlock();
}

arrow::Status ZerrowPool::Allocate(int64_t size, int64_t alignment, uint8_t** out) {
  ARROW_RETURN_NOT_OK(AllocateRaw(size, alignment, out));
  stats_.DidAllocateBytes(size);
  return arrow::Status::OK();
}

arrow::Status ZerrowPool::AllocateRaw(int64_t size, int64_t alignment, uint8_t** out, bool populate) {
  if (size < 0) return arrow::Status::Invalid("zerrow: negative allocation size ", size);
  if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
    return arrow::Status::Invalid("zerrow: alignment ", alignment, " is not a power of two");
  if (size == 0) {
    *out = zero_size_area;
    return arrow::Status::OK();
  }
  Arena* arena = current_.load(std::memory_order_acquire);
  auto st = arena->Allocate(static_cast<size_t>(size), static_cast<size_t>(alignment), out, populate);
  if (!st.ok()) return arrow::Status::OutOfMemory("zerrow: allocating ", size, " bytes: ", st.message());
  return arrow::Status::OK();
}

void ZerrowPool::Free(uint8_t* buffer, int64_t size, int64_t alignment) {
  if (FreeRaw(buffer, size, alignment, "Free")) stats_.DidFreeBytes(size);
}

bool ZerrowPool::FreeRaw(uint8_t* buffer, int64_t size, int64_t alignment, const char* call) {
  if (buffer == zero_size_area || buffer == nullptr) return true;
  const void* base = nullptr;
  bool collect = false;
  BadFree bad = BadFree::kNone;
  size_t actual = 0;
  {
    std::shared_lock lock(registry_.mutex());
    SegmentHeap* heap = registry_.FindHeapLocked(buffer);
    if (heap == nullptr) {
      bad = BadFree::kNotOurs;  // nothing safe to do
    } else {
      base = heap->segment()->base();
      collect = heap->arena()->Free(heap, buffer, static_cast<size_t>(size), static_cast<size_t>(alignment), &bad, &actual);
    }
  }
  ReportBadFree(bad, call, buffer, size, alignment, actual);
  if (collect) Collect(base);
  return bad == BadFree::kNone || bad == BadFree::kWrongSize;
}

arrow::Status ZerrowPool::Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                                     uint8_t** ptr) {
  if (new_size < 0) return arrow::Status::Invalid("zerrow: negative reallocation size ", new_size);
  ARROW_RETURN_NOT_OK(ReallocateRaw(old_size, new_size, alignment, ptr));
  // As Arrow's pools count it: the size difference, an allocation only when growing.
  stats_.DidReallocateBytes(old_size, new_size);
  return arrow::Status::OK();
}

arrow::Status ZerrowPool::ReallocateRaw(int64_t old_size, int64_t new_size, int64_t alignment, uint8_t** ptr) {
  if (*ptr == zero_size_area) return AllocateRaw(new_size, alignment, ptr, /*populate=*/false);
  if (new_size == 0) {
    FreeRaw(*ptr, old_size, alignment, "Reallocate");
    *ptr = zero_size_area;
    return arrow::Status::OK();
  }
  bool in_place = false;
  {
    std::shared_lock lock(registry_.mutex());
    SegmentHeap* heap = registry_.FindHeapLocked(*ptr);
    if (heap == nullptr) {
      ReportBadFree(BadFree::kNotOurs, "Reallocate", *ptr, old_size, alignment);
      return arrow::Status::Invalid("zerrow: reallocating memory the pool does not own");
    }
    if (DebugMemoryPool()) {
      size_t actual = 0;
      BadFree bad = heap->arena()->Check(heap, *ptr, static_cast<size_t>(old_size), static_cast<size_t>(alignment), &actual);
      ReportBadFree(bad, "Reallocate", *ptr, old_size, alignment, actual);
      if (bad == BadFree::kNotLive || bad == BadFree::kInterior)
        return arrow::Status::Invalid("zerrow: reallocating memory that is not a live allocation of the pool");
    }
    if (!heap->frozen()) {
      auto o = static_cast<size_t>(old_size), n = static_cast<size_t>(new_size);
      if (o <= kMaxSmall && n <= kMaxSmall && alignment <= static_cast<int64_t>(kMinAlignment)) {
        in_place = SizeClassOf(o) == SizeClassOf(n);
      } else if (o > kMaxSmall && n > kMaxSmall) {
        in_place = heap->arena()->ResizeInPlace(heap, *ptr, o, n, static_cast<size_t>(alignment));
      }
    }
  }
  if (in_place) {
    realloc_in_place_.fetch_add(1, std::memory_order_relaxed);
    return arrow::Status::OK();
  }
  uint8_t* fresh;
  ARROW_RETURN_NOT_OK(AllocateRaw(new_size, alignment, &fresh, /*populate=*/new_size <= old_size));
  std::memcpy(fresh, *ptr, static_cast<size_t>(std::min(old_size, new_size)));
  FreeRaw(*ptr, old_size, alignment, "Reallocate");
  realloc_copied_.fetch_add(1, std::memory_order_relaxed);
  *ptr = fresh;
  return arrow::Status::OK();
}

void ZerrowPool::Collect(const void* segment_base, bool only_collectable) {
  Arena* emptied = nullptr;
  {
    std::unique_lock lock(registry_.mutex());
    SegmentHeap* heap = registry_.FindHeapLocked(segment_base);
    if (heap == nullptr || heap->arena() == nullptr) return;  // gone, or the cache's already
    Arena* arena = heap->arena();
    bool gone;
    if (only_collectable && arena->DetachHeapRegistryLocked(heap)) {
      cache_.KeepRegistryLocked(heap);
      gone = true;
    } else {
      gone = arena->DestroyHeapRegistryLocked(heap, only_collectable);
    }
    if (gone) emptied = arena;
  }
  if (emptied != nullptr) NoteIfDead(emptied);
}

void ZerrowPool::NoteIfDead(Arena* arena) {
  std::lock_guard lock(scope_mu_);
  if (arena->retired() && arena->empty() &&
      std::find(dead_arenas_.begin(), dead_arenas_.end(), arena) == dead_arenas_.end())
    dead_arenas_.push_back(arena);
}

void ZerrowPool::ReleaseUnused() {
  {
    std::unique_lock lock(registry_.mutex());
    cache_.DestroyAllRegistryLocked();
  }
  std::vector<Arena*> arenas;
  {
    std::lock_guard lock(scope_mu_);
    arenas = AllArenasLocked();
  }
  for (Arena* arena : arenas) {
    arena->ReleaseRetained();
    for (const void* base : arena->EmptyHeapBases(/*only_collectable=*/false)) Collect(base, false);
  }
}

uint64_t ZerrowPool::PushScope(size_t expected_bytes) {
  std::lock_guard lock(scope_mu_);
  Arena* arena;
  if (!dead_arenas_.empty()) {
    arena = dead_arenas_.back();
    dead_arenas_.pop_back();
    arena->Reopen();
  } else {
    scope_arenas_.push_back(std::make_unique<Arena>(&registry_, options_, &cache_));
    arena = scope_arenas_.back().get();
  }
  arena->ExpectBytes(expected_bytes);
  uint64_t token = next_token_++;
  scope_stack_.emplace_back(token, arena);
  current_.store(arena, std::memory_order_release);
  return token;
}

arrow::Status ZerrowPool::PopScope(uint64_t token) {
  Arena* arena = nullptr;
  {
    std::lock_guard lock(scope_mu_);
    auto it = std::find_if(scope_stack_.begin(), scope_stack_.end(),
                           [&](const auto& e) { return e.first == token; });
    if (it == scope_stack_.end()) return arrow::Status::Invalid("zerrow: scope ", token, " is not open");
    arena = it->second;
    scope_stack_.erase(it);
    current_.store(scope_stack_.empty() ? default_arena_.get() : scope_stack_.back().second,
                   std::memory_order_release);
    arena->Retire();
  }
  // Heaps that are already empty go now; the rest as their last buffer is freed.
  for (const void* base : arena->EmptyHeapBases(/*only_collectable=*/true)) Collect(base);
  NoteIfDead(arena);
  return arrow::Status::OK();
}

arrow::Status ZerrowPool::Freeze(SegmentHeap* heap, bool seal, bool keep_free) {
  return heap->arena()->Freeze(heap, seal, keep_free);
}

void ZerrowPool::PrintStats() {
  const PoolStats s = Stats();
  const std::pair<const char*, int64_t> rows[] = {
      {"bytes_allocated", s.bytes_allocated},       {"max_memory", s.max_memory},
      {"total_bytes_allocated", s.total_bytes_allocated}, {"num_allocations", s.num_allocations},
      {"realloc_in_place", s.realloc_in_place},     {"realloc_copied", s.realloc_copied},
      {"segments", s.segments},                     {"frozen_segments", s.frozen_segments},
      {"spare_segments", s.spare_segments},         {"lent_segments", s.lent_segments},
      {"segments_reclaimed", s.segments_reclaimed}, {"bytes_resident", s.bytes_resident},
      {"bytes_retained", s.bytes_retained},         {"scopes_open", s.scopes_open},
  };
  std::fprintf(stderr, "zerrow pool:\n");
  for (const auto& [name, value] : rows) std::fprintf(stderr, "  %-22s %lld\n", name, static_cast<long long>(value));
  std::fflush(stderr);
}

PoolStats ZerrowPool::Stats() const {
  PoolStats s;
  s.bytes_allocated = stats_.bytes_allocated();
  s.max_memory = stats_.max_memory();
  s.total_bytes_allocated = stats_.total_bytes_allocated();
  s.num_allocations = stats_.num_allocations();
  s.realloc_in_place = realloc_in_place_.load();
  s.realloc_copied = realloc_copied_.load();
  registry_.ForEachHeap([&](SegmentHeap* h) {
    if (h->inherited()) return;  // the parent's, in a forked child
    s.bytes_resident += h->segment()->ResidentBytes();
    if (h->arena() == nullptr) {
      ++(h->frozen() ? s.lent_segments : s.spare_segments);
    } else {
      ++s.segments;
      if (h->frozen()) ++s.frozen_segments;
    }
  });
  s.bytes_retained = default_arena_->retained_bytes();
  {
    std::lock_guard lock(scope_mu_);
    for (auto& a : scope_arenas_) s.bytes_retained += a->retained_bytes();
    s.scopes_open = static_cast<int64_t>(scope_stack_.size());
  }
  s.bytes_retained += cache_.SpareResidentBytes();  // empty segments of finished scopes, kept for the next
  s.segments_reclaimed = cache_.reclaimed();
  return s;
}

}  // namespace zerrow
