// attach(): validate a SIPC descriptor and its fds, map the segments read-only
// (reusing live mappings) and rebuild the object around them in O(#buffers).
#pragma once

#include <string_view>
#include <vector>

#include <arrow/result.h>

#include "shared_object.h"

namespace zerrow {

struct AttachOptions {
  // Also check every value (offsets, indices, UTF-8): O(data), for untrusted producers.
  bool validate_full = false;
  // Also accept segments of kind 3 (spill files: plain files on disk, which
  // cannot be sealed, so a writer could still change or truncate them): only
  // for a producer you trust, such as the pipeline runtime's coordinator.
  // Never together with validate_full.
  bool spill_files = false;
};

class ZerrowPool;

// Does not take ownership of fds: mappings keep their own duplicates. The
// segments are registered with `pool`'s registry while mapped, so that the
// object can be shared again through `pool`. Fails with Invalid (the message
// names what is wrong) on any descriptor or fd that does not match.
arrow::Result<SharedObject> Attach(ZerrowPool& pool, std::string_view descriptor, const std::vector<int>& fds,
                                   const AttachOptions& options);

}  // namespace zerrow
