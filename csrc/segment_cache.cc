#include "segment_cache.h"

#include <algorithm>
#include <chrono>

namespace zerrow {

void SegmentHeap::Thaw() {
  const size_t size = segment_->size();
  free_extents_.clear();
  size_t pos = 0;
  for (auto [off, len] : segment_->ResidentRanges(/*min_hole=*/size_t{64} << 10)) {
    if (off > pos) free_extents_[pos] = FreeExtent{off - pos, false, false};
    free_extents_[off] = FreeExtent{len, true, true};
    pos = off + len;
  }
  if (pos < size) free_extents_[pos] = FreeExtent{size - pos, false, false};
  frozen_.store(false, std::memory_order_release);
}

size_t SegmentHeap::DirtyFit(size_t need, size_t cap, bool longest) const {
  size_t best = 0;
  for (const auto& [off, fe] : free_extents_)
    if (fe.dirty && fe.length >= need && fe.length <= cap &&
        (best == 0 || (longest ? fe.length > best : fe.length < best)))
      best = fe.length;
  return best;
}

SegmentCache::SegmentCache(SegmentRegistry& registry, const arrow::internal::MemoryPoolStats& pool_stats,
                           int64_t spare_budget)
    : registry_(registry), pool_stats_(pool_stats), spare_budget_(spare_budget) {}

SegmentCache::~SegmentCache() {
  std::unique_lock lock(registry_.mutex());
  DestroyAllRegistryLocked();
}

SegmentHeap* SegmentCache::TakeCold(size_t capacity, size_t max_resident) {
  std::unique_lock registry_lock(registry_.mutex());
  ReclaimLentRegistryLocked();
  std::lock_guard lock(mu_);
  auto best = spares_.end();
  int64_t best_resident = 0;
  for (auto it = spares_.begin(); it != spares_.end(); ++it) {
    if ((*it)->segment()->size() < capacity) continue;
    int64_t resident = (*it)->segment()->ResidentBytes();
    if (best == spares_.end() || resident < best_resident) {
      best = it;
      best_resident = resident;
    }
  }
  if (best == spares_.end() || static_cast<size_t>(best_resident) > max_resident) return nullptr;
  return TakeSpareLocked(best);
}

SegmentHeap* SegmentCache::TakeWarm(size_t need, size_t target, size_t cap) {
  // Readers let go of lent heaps at any time; asking the kernel costs two
  // syscalls per lent heap, so a stream of large allocations asks once a ms.
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  int64_t last = last_warm_reclaim_ns_.load(std::memory_order_relaxed);
  if (now - last > 1'000'000 && last_warm_reclaim_ns_.compare_exchange_strong(last, now)) {
    std::unique_lock registry_lock(registry_.mutex());
    ReclaimLentRegistryLocked();
  }
  std::lock_guard lock(mu_);
  // Smallest run that covers the target, else the longest that covers need.
  auto best = spares_.end();
  size_t best_len = 0;
  bool best_covers = false;
  for (auto it = spares_.begin(); it != spares_.end(); ++it) {
    const size_t covering = (*it)->DirtyFit(target, cap, /*longest=*/false);
    const size_t len = covering != 0 ? covering : (*it)->DirtyFit(need, cap, /*longest=*/true);
    if (len == 0) continue;
    const bool covers = covering != 0;
    const bool better = best == spares_.end() || (covers && !best_covers) ||
                        (covers == best_covers && (covers ? len < best_len : len > best_len));
    if (better) {
      best = it;
      best_len = len;
      best_covers = covers;
    }
  }
  return best == spares_.end() ? nullptr : TakeSpareLocked(best);
}

SegmentHeap* SegmentCache::TakeSpareLocked(std::vector<SegmentHeap*>::iterator it) {
  SegmentHeap* heap = *it;
  spares_.erase(it);
  return heap;
}

void SegmentCache::KeepRegistryLocked(SegmentHeap* heap) {
  if (heap->frozen()) {
    LendRegistryLocked(heap);
  } else if (!KeepSpareRegistryLocked(heap)) {  // a finished scope's unshared heap
    DestroyRegistryLocked(heap);
  }
}

bool SegmentCache::KeepSpareRegistryLocked(SegmentHeap* heap) {
  std::lock_guard lock(mu_);
  // By default twice what the process ever had allocated at once (at least
  // 1 GiB): a worker that runs the same steps again finds its memory warm,
  // including that of outputs whose readers have since let go.
  const int64_t budget =
      spare_budget_ >= 0 ? spare_budget_ : std::max(int64_t{1} << 30, 2 * pool_stats_.max_memory());
  int64_t resident = heap->segment()->ResidentBytes();
  if (resident == 0 || SpareResidentLocked() + resident > budget) return false;
  spares_.push_back(heap);
  return true;
}

int64_t SegmentCache::SpareResidentLocked() const {
  int64_t resident = 0;
  for (SegmentHeap* heap : spares_) resident += heap->segment()->ResidentBytes();
  return resident;
}

int64_t SegmentCache::SpareResidentBytes() const {
  std::lock_guard lock(mu_);
  return SpareResidentLocked();
}

int64_t SegmentCache::reclaimed() const {
  std::lock_guard lock(mu_);
  return reclaimed_;
}

void SegmentCache::DestroyRegistryLocked(SegmentHeap* heap) {
  registry_.RemoveHeapLocked(heap);
  delete heap;
}

void SegmentCache::LendRegistryLocked(SegmentHeap* heap) {
  if (!Segment::CanProbeHolders()) {  // we could never tell when it is ours again
    DestroyRegistryLocked(heap);
    return;
  }
  {
    std::lock_guard lock(mu_);
    lent_.push_back(heap);
    if (lent_.size() <= kMaxLent) return;
  }
  ReclaimLentRegistryLocked();
  std::lock_guard lock(mu_);
  if (lent_.size() > kMaxLent) {
    DestroyRegistryLocked(lent_.front());
    lent_.erase(lent_.begin());
  }
}

void SegmentCache::ReclaimLentRegistryLocked() {
  std::vector<SegmentHeap*> ours;
  {
    std::lock_guard lock(mu_);
    std::vector<SegmentHeap*> still_lent;
    for (SegmentHeap* h : lent_) (h->segment()->SoleHolder() ? ours : still_lent).push_back(h);
    lent_.swap(still_lent);
    reclaimed_ += static_cast<int64_t>(ours.size());
  }
  for (SegmentHeap* heap : ours) {
    heap->Thaw();
    if (!KeepSpareRegistryLocked(heap)) DestroyRegistryLocked(heap);
  }
}

void SegmentCache::DestroyAllRegistryLocked() {
  std::lock_guard lock(mu_);
  for (SegmentHeap* heap : spares_) DestroyRegistryLocked(heap);
  for (SegmentHeap* heap : lent_) DestroyRegistryLocked(heap);
  spares_.clear();
  lent_.clear();
}

void SegmentCache::LockForFork() { mu_.lock(); }

void SegmentCache::UnlockAfterFork(bool child) {
  if (child) {  // never mapped into the child (see Segment::Create): nothing to remap
    for (auto* heaps : {&spares_, &lent_})
      for (SegmentHeap* heap : *heaps) {
        heap->segment()->ForgetInChild();
        DestroyRegistryLocked(heap);
      }
    spares_.clear();
    lent_.clear();
  }
  mu_.unlock();
}

}  // namespace zerrow
