// Process-wide map from addresses to the zerrow segments that hold them: the
// pool's own heaps and the segments attached from other processes. Resolving a
// pointer is O(log #segments).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <shared_mutex>
#include <vector>

#include "segment.h"

namespace zerrow {

class SegmentHeap;

// Where a pointer lies.
struct Resolved {
  std::shared_ptr<Segment> segment;
  size_t offset = 0;
  SegmentHeap* heap = nullptr;  // set for this process's own pool memory
};

class SegmentRegistry {
 public:
  static SegmentRegistry& Global();

  // Own heaps are added when created and removed before they are destroyed.
  void AddHeap(SegmentHeap* heap);
  void RemoveHeap(SegmentHeap* heap);
  void RemoveHeapLocked(SegmentHeap* heap);  // mutex() held exclusively
  // Attached segments are removed by their own destructor (see AttachedSegmentDeleter).
  void AddAttached(const std::shared_ptr<Segment>& segment);
  void RemoveAttached(const Segment* segment);

  // The heap holding p; call with mutex() held shared.
  SegmentHeap* FindHeapLocked(const void* p) const;
  std::optional<Resolved> Resolve(const void* p) const;
  // Snapshot of own heaps (for stats).
  template <typename F>
  void ForEachHeap(F&& f) const {
    std::shared_lock lock(mu_);
    for (auto& [base, e] : entries_)
      if (e.heap) f(e.heap);
  }

  template <typename F>
  void ForEachHeapLocked(F&& f) const {  // mutex() held
    for (auto& [base, e] : entries_)
      if (e.heap) f(e.heap);
  }

  std::shared_mutex& mutex() const { return mu_; }
  // In a forked child, instead of unlocking mutex() locked before fork():
  // a write-locked rwlock remembers its owner's thread id, which the child's
  // thread does not have.
  void ResetMutexInChild() { new (&mu_) std::shared_mutex(); }

 private:
  struct Entry {
    uintptr_t end = 0;
    SegmentHeap* heap = nullptr;
    std::weak_ptr<Segment> attached;
  };
  const Entry* FindLocked(const void* p, uintptr_t* base) const;

  mutable std::shared_mutex mu_;
  std::map<uintptr_t, Entry> entries_;
};

}  // namespace zerrow
