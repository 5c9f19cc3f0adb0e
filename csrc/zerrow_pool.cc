#include "zerrow_pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <shared_mutex>

#include "env_bytes.h"

namespace zerrow {
namespace {

// Zero-size allocations all point here, as in Arrow's own pools.
alignas(kPageSize) uint8_t zero_size_area[1];

}  // namespace

ZerrowPool* ZerrowPool::Instance() {
  static auto* pool = new ZerrowPool();
  return pool;
}

ZerrowPool::ZerrowPool() : registry_(SegmentRegistry::Global()) {
  options_.segment_capacity = RoundUp(
      static_cast<size_t>(EnvBytes("ZERROW_SEGMENT_SIZE", static_cast<int64_t>(options_.segment_capacity))),
      size_t{2} << 20);
  options_.retain_bytes = EnvBytes("ZERROW_RETAIN_BYTES", -1);
  spare_budget_ = EnvBytes("ZERROW_SPARE_BYTES", int64_t{1} << 30);
  default_arena_ = std::make_unique<Arena>(&registry_, options_, static_cast<SpareHeaps*>(this));
  current_.store(default_arena_.get());
}

void ZerrowPool::NoteAllocated(int64_t size) {
  int64_t now = bytes_allocated_.fetch_add(size, std::memory_order_relaxed) + size;
  total_bytes_allocated_.fetch_add(size, std::memory_order_relaxed);
  num_allocations_.fetch_add(1, std::memory_order_relaxed);
  int64_t peak = max_memory_.load(std::memory_order_relaxed);
  while (now > peak && !max_memory_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

arrow::Status ZerrowPool::Allocate(int64_t size, int64_t alignment, uint8_t** out) {
  ARROW_RETURN_NOT_OK(AllocateRaw(size, alignment, out));
  NoteAllocated(size);
  return arrow::Status::OK();
}

arrow::Status ZerrowPool::AllocateRaw(int64_t size, int64_t alignment, uint8_t** out) {
  if (size < 0) return arrow::Status::Invalid("zerrow: negative allocation size ", size);
  if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
    return arrow::Status::Invalid("zerrow: alignment ", alignment, " is not a power of two");
  if (size == 0) {
    *out = zero_size_area;
    return arrow::Status::OK();
  }
  Arena* arena = current_.load(std::memory_order_acquire);
  auto st = arena->Allocate(static_cast<size_t>(size), static_cast<size_t>(alignment), out);
  if (!st.ok()) return arrow::Status::OutOfMemory("zerrow: allocating ", size, " bytes: ", st.message());
  return arrow::Status::OK();
}

void ZerrowPool::Free(uint8_t* buffer, int64_t size, int64_t alignment) {
  FreeRaw(buffer, size, alignment);
  bytes_allocated_.fetch_sub(size, std::memory_order_relaxed);
}

void ZerrowPool::FreeRaw(uint8_t* buffer, int64_t size, int64_t alignment) {
  if (buffer == zero_size_area || buffer == nullptr) return;
  const void* base = nullptr;
  bool collect = false;
  {
    std::shared_lock lock(registry_.mutex());
    SegmentHeap* heap = registry_.FindHeapLocked(buffer);
    if (heap == nullptr) return;  // not ours; nothing safe to do
    base = heap->segment->base();
    collect = heap->arena->Free(heap, buffer, static_cast<size_t>(size), static_cast<size_t>(alignment));
  }
  if (collect) Collect(base);
}

arrow::Status ZerrowPool::Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                                     uint8_t** ptr) {
  if (new_size < 0) return arrow::Status::Invalid("zerrow: negative reallocation size ", new_size);
  ARROW_RETURN_NOT_OK(ReallocateRaw(old_size, new_size, alignment, ptr));
  // As Arrow's pools count it: the size difference, an allocation only when growing.
  const int64_t diff = new_size - old_size;
  if (diff > 0) {
    NoteAllocated(diff);
  } else {
    bytes_allocated_.fetch_add(diff, std::memory_order_relaxed);
  }
  return arrow::Status::OK();
}

arrow::Status ZerrowPool::ReallocateRaw(int64_t old_size, int64_t new_size, int64_t alignment, uint8_t** ptr) {
  if (*ptr == zero_size_area) return AllocateRaw(new_size, alignment, ptr);
  if (new_size == 0) {
    FreeRaw(*ptr, old_size, alignment);
    *ptr = zero_size_area;
    return arrow::Status::OK();
  }
  bool in_place = false;
  {
    std::shared_lock lock(registry_.mutex());
    SegmentHeap* heap = registry_.FindHeapLocked(*ptr);
    if (heap == nullptr) return arrow::Status::Invalid("zerrow: reallocating memory the pool does not own");
    if (!heap->frozen.load(std::memory_order_acquire)) {
      auto o = static_cast<size_t>(old_size), n = static_cast<size_t>(new_size);
      if (o <= kMaxSmall && n <= kMaxSmall && alignment <= static_cast<int64_t>(kMinAlignment)) {
        in_place = SizeClassOf(o) == SizeClassOf(n);
      } else if (o > kMaxSmall && n > kMaxSmall) {
        in_place = heap->arena->ResizeInPlace(heap, *ptr, o, n, static_cast<size_t>(alignment));
      }
    }
  }
  if (in_place) {
    realloc_in_place_.fetch_add(1, std::memory_order_relaxed);
    return arrow::Status::OK();
  }
  uint8_t* fresh;
  ARROW_RETURN_NOT_OK(AllocateRaw(new_size, alignment, &fresh));
  std::memcpy(fresh, *ptr, static_cast<size_t>(std::min(old_size, new_size)));
  FreeRaw(*ptr, old_size, alignment);
  realloc_copied_.fetch_add(1, std::memory_order_relaxed);
  *ptr = fresh;
  return arrow::Status::OK();
}

void ZerrowPool::Collect(const void* segment_base, bool only_collectable) {
  Arena* emptied = nullptr;
  {
    std::unique_lock lock(registry_.mutex());
    SegmentHeap* heap = registry_.FindHeapLocked(segment_base);
    if (heap == nullptr || heap->arena == nullptr) return;  // gone, or a spare already
    Arena* arena = heap->arena;
    bool gone;
    if (only_collectable && arena->DetachHeapLocked(heap)) {  // a finished scope's unshared heap
      if (!KeepSpareLocked(heap)) {
        registry_.RemoveHeapLocked(heap);
        delete heap;
      }
      gone = true;
    } else {
      gone = arena->DestroyHeapLocked(heap, only_collectable);
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

SegmentHeap* ZerrowPool::Take(size_t capacity) {
  std::lock_guard lock(spare_mu_);
  auto best = spares_.end();
  for (auto it = spares_.begin(); it != spares_.end(); ++it)
    if ((*it)->segment->size() >= capacity && (best == spares_.end() || (*it)->segment->size() < (*best)->segment->size()))
      best = it;
  if (best == spares_.end()) return nullptr;
  SegmentHeap* heap = *best;
  spares_.erase(best);
  spare_resident_ -= heap->segment->ResidentBytes();
  return heap;
}

bool ZerrowPool::KeepSpareLocked(SegmentHeap* heap) {
  std::lock_guard lock(spare_mu_);
  int64_t resident = heap->segment->ResidentBytes();
  if (resident == 0 || spare_resident_ + resident > spare_budget_) return false;
  spares_.push_back(heap);
  spare_resident_ += resident;
  return true;
}

void ZerrowPool::DestroySparesLocked() {
  std::lock_guard lock(spare_mu_);
  for (SegmentHeap* heap : spares_) {
    registry_.RemoveHeapLocked(heap);
    delete heap;
  }
  spares_.clear();
  spare_resident_ = 0;
}

void ZerrowPool::ReleaseUnused() {
  {
    std::unique_lock lock(registry_.mutex());
    DestroySparesLocked();
  }
  std::vector<Arena*> arenas{default_arena_.get()};
  {
    std::lock_guard lock(scope_mu_);
    for (auto& a : scope_arenas_) arenas.push_back(a.get());
  }
  for (Arena* arena : arenas) {
    arena->ReleaseRetained();
    for (const void* base : arena->EmptyHeapBases(/*only_collectable=*/false)) Collect(base, false);
  }
}

uint64_t ZerrowPool::PushScope() {
  std::lock_guard lock(scope_mu_);
  Arena* arena;
  if (!dead_arenas_.empty()) {
    arena = dead_arenas_.back();
    dead_arenas_.pop_back();
    arena->Reopen();
  } else {
    scope_arenas_.push_back(std::make_unique<Arena>(&registry_, options_, static_cast<SpareHeaps*>(this)));
    arena = scope_arenas_.back().get();
  }
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

arrow::Status ZerrowPool::Freeze(SegmentHeap* heap, bool seal) { return heap->arena->Freeze(heap, seal); }

PoolStats ZerrowPool::Stats() const {
  PoolStats s;
  s.bytes_allocated = bytes_allocated_.load();
  s.max_memory = max_memory_.load();
  s.total_bytes_allocated = total_bytes_allocated_.load();
  s.num_allocations = num_allocations_.load();
  s.realloc_in_place = realloc_in_place_.load();
  s.realloc_copied = realloc_copied_.load();
  registry_.ForEachHeap([&](SegmentHeap* h) {
    s.bytes_resident += h->segment->ResidentBytes();
    if (h->arena == nullptr) {
      ++s.spare_segments;
    } else {
      ++s.segments;
      if (h->frozen.load()) ++s.frozen_segments;
    }
  });
  s.bytes_retained = default_arena_->retained_bytes();
  {
    std::lock_guard lock(scope_mu_);
    for (auto& a : scope_arenas_) s.bytes_retained += a->retained_bytes();
    s.scopes_open = static_cast<int64_t>(scope_stack_.size());
  }
  {
    std::lock_guard lock(spare_mu_);
    s.bytes_retained += spare_resident_;  // empty segments of finished scopes, kept for the next
  }
  return s;
}

}  // namespace zerrow
