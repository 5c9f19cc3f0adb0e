#include "segment_registry.h"

#include <mutex>

#include "segment_heap.h"

namespace zerrow {

SegmentRegistry& SegmentRegistry::Global() {
  static auto* registry = new SegmentRegistry();  // immortal: used from exit-time frees
  return *registry;
}

void SegmentRegistry::AddHeap(SegmentHeap* heap) {
  std::unique_lock lock(mu_);
  auto base = reinterpret_cast<uintptr_t>(heap->segment()->base());
  entries_[base] = Entry{base + heap->segment()->size(), heap, {}};
}

void SegmentRegistry::RemoveHeap(SegmentHeap* heap) {
  std::unique_lock lock(mu_);
  RemoveHeapLocked(heap);
}

void SegmentRegistry::RemoveHeapLocked(SegmentHeap* heap) {
  entries_.erase(reinterpret_cast<uintptr_t>(heap->segment()->base()));
}

void SegmentRegistry::AddAttached(const std::shared_ptr<Segment>& segment) {
  if (segment->size() == 0) return;
  std::unique_lock lock(mu_);
  auto base = reinterpret_cast<uintptr_t>(segment->base());
  entries_[base] = Entry{base + segment->size(), nullptr, segment};
}

void SegmentRegistry::RemoveAttached(const Segment* segment) {
  std::unique_lock lock(mu_);
  auto it = entries_.find(reinterpret_cast<uintptr_t>(segment->base()));
  if (it != entries_.end() && it->second.heap == nullptr) entries_.erase(it);
}

const SegmentRegistry::Entry* SegmentRegistry::FindLocked(const void* p, uintptr_t* base) const {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = entries_.upper_bound(a);
  if (it == entries_.begin()) return nullptr;
  --it;
  if (a >= it->second.end) return nullptr;
  *base = it->first;
  return &it->second;
}

SegmentHeap* SegmentRegistry::FindHeapLocked(const void* p) const {
  uintptr_t base;
  const Entry* e = FindLocked(p, &base);
  return e ? e->heap : nullptr;
}

std::optional<Resolved> SegmentRegistry::Resolve(const void* p) const {
  std::shared_lock lock(mu_);
  uintptr_t base;
  const Entry* e = FindLocked(p, &base);
  if (e == nullptr) return std::nullopt;
  Resolved r;
  r.offset = reinterpret_cast<uintptr_t>(p) - base;
  if (e->heap) {
    r.segment = e->heap->segment();
    r.heap = e->heap;
  } else {
    r.segment = e->attached.lock();
    if (!r.segment) return std::nullopt;  // being unmapped right now
  }
  return r;
}

}  // namespace zerrow
