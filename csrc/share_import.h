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
};

// Does not take ownership of fds: mappings keep their own duplicates.
arrow::Result<SharedObject> Attach(std::string_view descriptor, const std::vector<int>& fds,
                                   const AttachOptions& options);

}  // namespace zerrow
