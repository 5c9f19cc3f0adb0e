// Read-only mappings of received segment files, one per file: a receiver that
// still maps a segment reuses the mapping for the next object that refers to it.
#pragma once

#include <memory>

#include <arrow/result.h>

#include "segment.h"
#include "segment_registry.h"

namespace zerrow {

// What a receiver accepts beyond a sealed memfd or a kernel-module file.
struct AttachTrust {
  // A memfd must also be sealed against writes (values checked now stay true).
  bool immutable = false;
  // Segments of kind kSpillFile (read-only plain files, unsealable) are accepted.
  bool spill_files = false;
};

// Validates fd (a sealed memfd, a zerrow kernel-module file, or with
// `trust.spill_files` a spill file) and returns the mapping of its whole file,
// shared with earlier attaches of the same file into the same registry (where
// the mapping is registered while it lives). `min_size`: the file must be at
// least this long. Fails with Invalid naming the fd and what is wrong with it.
arrow::Result<std::shared_ptr<Segment>> AttachSegment(SegmentRegistry& registry, int fd, SegmentKind kind, uint64_t min_size,
                                                      const AttachTrust& trust);

}  // namespace zerrow
