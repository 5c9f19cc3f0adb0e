// Visiting every buffer of an Arrow object: children and dictionaries included.
#pragma once

#include <memory>
#include <vector>

#include <arrow/array.h>
#include <arrow/array/data.h>
#include <arrow/buffer.h>

#include "shared_object.h"

namespace zerrow {

class SegmentRegistry;

// Calls f(const std::shared_ptr<arrow::Buffer>&) for each non-null buffer of
// data, its children and its dictionary, depth first.
template <typename F>
void VisitBuffers(const arrow::ArrayData& data, F&& f) {
  for (const auto& b : data.buffers)
    if (b) f(b);
  for (const auto& child : data.child_data)
    if (child) VisitBuffers(*child, f);
  if (data.dictionary) VisitBuffers(*data.dictionary, f);
}

// True when every non-empty buffer lies in zerrow memory known to `registry`
// (its pool's segments, or a segment attached from another process).
bool AllInZerrowMemory(const SegmentRegistry& registry, const SharedObject& object);
bool InZerrowMemory(const SegmentRegistry& registry, const arrow::Buffer& buffer);

}  // namespace zerrow
