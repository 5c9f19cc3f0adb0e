// Copy-on-write for this process's view of de-anonymized memory.
//
// Once the kernel module has pinned a producer's pages into a file, the
// producer's range is remapped read-only onto that file, so nothing the
// producer does can change what readers see. The first write to such a range
// (the producer mutating its array, or its allocator reusing the addresses
// after a free) faults; a SIGSEGV handler then gives this process a private
// copy of the surrounding chunk (copy, then mremap over the range in one
// step) and the write proceeds. Readers keep the pinned originals.
#pragma once

#include <cstddef>
#include <cstdint>

#include <arrow/status.h>

namespace zerrow {

// Watches the page-aligned [addr, addr+len) for writes. Installs the handler
// (chaining to any previous one for faults that are not ours) if needed.
arrow::Status GuardReadOnlyRange(void* addr, size_t len);

// Puts the handler back in front if something replaced it (Python's
// faulthandler restores its predecessor when disabled, for one). Cheap; a
// no-op until a range was guarded.
void EnsureCowHandler();

// True once any range was guarded.
bool CowRangesGuarded();

// Bytes this process copied because it wrote to a guarded range.
int64_t CowBytesCopied();

}  // namespace zerrow
