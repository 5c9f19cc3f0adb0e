// Page number -> Span*, two levels so that a mostly empty 1 GiB segment costs
// a few KiB. Reads are lock-free; writers are serialised by the arena.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>

#include "size_classes.h"
#include "span.h"

namespace zerrow {

class PageMap {
 public:
  explicit PageMap(size_t capacity)
      : num_leaves_((capacity / kPageSize + kLeafPages - 1) / kLeafPages),
        leaves_(new std::atomic<Leaf*>[num_leaves_]) {
    for (size_t i = 0; i < num_leaves_; ++i) leaves_[i].store(nullptr, std::memory_order_relaxed);
  }
  ~PageMap() {
    for (size_t i = 0; i < num_leaves_; ++i) delete leaves_[i].load(std::memory_order_relaxed);
  }

  Span* Get(size_t page) const {
    Leaf* leaf = leaves_[page / kLeafPages].load(std::memory_order_acquire);
    return leaf ? leaf->spans[page % kLeafPages].load(std::memory_order_acquire) : nullptr;
  }

  void Set(size_t page, Span* span) {
    auto& slot = leaves_[page / kLeafPages];
    Leaf* leaf = slot.load(std::memory_order_relaxed);
    if (leaf == nullptr) {
      leaf = new Leaf();
      slot.store(leaf, std::memory_order_release);
    }
    leaf->spans[page % kLeafPages].store(span, std::memory_order_release);
  }

 private:
  static constexpr size_t kLeafPages = 512;
  struct Leaf {
    std::atomic<Span*> spans[kLeafPages] = {};
  };
  size_t num_leaves_;
  std::unique_ptr<std::atomic<Leaf*>[]> leaves_;
};

}  // namespace zerrow
