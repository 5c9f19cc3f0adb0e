// The foreign-memory hook backed by the zerrow kernel module: buffers zerrow
// did not allocate are pinned into a de-anonymized file instead of copied.
#pragma once

#include <memory>

#include "share_export.h"

namespace zerrow {

// True when /dev/zerrow exists and speaks our ABI.
bool KernelModuleAvailable();

// The hook share() uses. Declines every buffer when the module is absent or
// ZERROW_KMOD=0, and buffers smaller than ZERROW_KMOD_MIN_BYTES (default 64 KiB:
// below that a copy is cheaper than pinning and exposes nothing).
std::shared_ptr<ForeignMemoryHook> MakeKernelModuleHook();

}  // namespace zerrow
