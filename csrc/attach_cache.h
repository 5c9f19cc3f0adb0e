// Read-only mappings of received segment files, one per file: a receiver that
// still maps a segment reuses the mapping for the next object that refers to it.
#pragma once

#include <memory>

#include <arrow/result.h>

#include "segment.h"
#include "segment_registry.h"

namespace zerrow {

// Validates fd (a sealed memfd, or a zerrow kernel-module file) and returns the
// mapping of its whole file, shared with earlier attaches of the same file
// into the same registry (where the mapping is registered while it lives).
// `min_size`: the file must be at least this long. With `immutable`, a memfd
// must also be sealed against writes (values checked now stay true).
arrow::Result<std::shared_ptr<Segment>> AttachSegment(SegmentRegistry& registry, int fd, SegmentKind kind, uint64_t min_size,
                                                      bool immutable = false);

}  // namespace zerrow
