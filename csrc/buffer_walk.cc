#include "buffer_walk.h"

#include "segment_registry.h"

namespace zerrow {

bool InZerrowMemory(const SegmentRegistry& registry, const arrow::Buffer& buffer) {
  if (buffer.size() == 0) return true;  // no bytes to live anywhere
  if (!buffer.is_cpu()) return false;
  auto r = registry.Resolve(buffer.data());
  return r.has_value() && r->offset + static_cast<size_t>(buffer.size()) <= r->segment->size();
}

bool AllInZerrowMemory(const SegmentRegistry& registry, const SharedObject& object) {
  bool all = true;
  for (const auto& column : object.columns)
    for (const auto& chunk : column)
      VisitBuffers(*chunk, [&](const std::shared_ptr<arrow::Buffer>& b) { all = all && InZerrowMemory(registry, *b); });
  return all;
}

}  // namespace zerrow
