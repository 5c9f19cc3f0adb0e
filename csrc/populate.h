// Bulk population of fresh segment pages: one madvise(MADV_POPULATE_WRITE)
// maps a whole range, where writing it would take one page fault per 4 KiB.
#pragma once

#include <cstddef>

namespace zerrow {

// Maps the pages of a new allocation [p, p + size) that lies in never-touched
// segment memory, when it is large enough that its caller will almost surely
// write all of it: ZERROW_POPULATE_MIN bytes (K/M/G suffixes; default 16 MiB,
// 0 turns population off), and only the first ZERROW_POPULATE_MAX bytes
// (default 256 MiB) of larger ones, so that reserving far more than is
// written does not pay for the rest. Best effort: kernels without
// MADV_POPULATE_WRITE (before 5.14) fault pages in as they are written.
void PopulateFresh(void* p, size_t size);

}  // namespace zerrow
