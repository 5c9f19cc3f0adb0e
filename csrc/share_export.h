// share(): describe an object's buffers as references into shareable segments,
// freezing the pool segments they lie in, re-referencing attached segments, and
// placing anything else through the foreign-memory hook or, failing that, one copy.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <arrow/result.h>

#include "segment.h"
#include "shared_object.h"

namespace zerrow {

struct ShareOptions {
  bool seal = true;  // seal shared memfds against writes; make our own view read-only
  // Copy the partial first/last pages of foreign buffers placed by the kernel
  // module rather than expose the producer's unrelated bytes in them.
  bool strict_exposure = false;
  // Unsealed shares only: free memory left in the frozen segments is zeroed
  // and stays resident, so it is warm when the pool reclaims the segment
  // after its readers let go; otherwise it is punched out now and the share
  // pins no more than its own pages.
  bool keep_free = false;
};

struct ShareResult {
  std::string descriptor;
  std::vector<int> fds;  // read-only; owned by the caller
  int64_t nbytes = 0;
  int64_t nbuffers = 0;
  int64_t bytes_zero_copy = 0;
  int64_t bytes_copied = 0;
  int64_t bytes_exposed = 0;  // other bytes a consumer can read in the shared files
};

class ZerrowPool;

// Buffers are looked up in `pool`'s registry; those in its own segments are
// referenced in place, freezing their segments (ZerrowPool::Freeze). Fails
// with NotImplemented for objects the format cannot carry (non-CPU buffers,
// nested dictionaries), or with the error of a freeze, copy or reopen.
arrow::Result<ShareResult> Share(ZerrowPool& pool, const SharedObject& object, const ShareOptions& options);

// Where a foreign buffer was placed without copying.
struct ForeignPlacement {
  std::shared_ptr<Segment> segment;
  uint64_t offset = 0;
  int64_t exposed_bytes = 0;  // unrelated bytes the placement makes readable
  int64_t copied_bytes = 0;   // bytes of the buffer that had to be copied anyway (edge pages)
};

struct ForeignRange {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// Places memory that zerrow did not allocate into shareable files without
// copying (the kernel module does this). Called once per share with every
// foreign buffer; returns one entry per range, std::nullopt where it declines
// (that buffer is then copied).
class ForeignMemoryHook {
 public:
  virtual ~ForeignMemoryHook() = default;
  virtual arrow::Result<std::vector<std::optional<ForeignPlacement>>> Place(
      const std::vector<ForeignRange>& ranges, const ShareOptions& options) = 0;
};

void SetForeignMemoryHook(std::shared_ptr<ForeignMemoryHook> hook);
std::shared_ptr<ForeignMemoryHook> GetForeignMemoryHook();

}  // namespace zerrow
