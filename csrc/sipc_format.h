// The shared-IPC (SIPC) descriptor: a table's layout plus, for every buffer, a
// (segment, offset, length) reference into files passed alongside as fds.
// docs/SHARED_IPC.md specifies the byte layout. Parsing is type-independent and
// checks every length and count against the bytes present, so any input either
// parses into a RawDescriptor or fails with a message naming the problem.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <arrow/result.h>

namespace zerrow::sipc {

constexpr char kMagic[4] = {'Z', 'S', 'I', 'P'};
constexpr uint16_t kVersion = 1;
constexpr uint32_t kMaxDepth = 64;       // nesting of children and dictionaries
constexpr uint32_t kMaxSegments = 4096;  // fds in one descriptor

enum class ObjectKind : uint8_t { kTable = 1, kRecordBatch = 2, kArray = 3, kChunkedArray = 4 };
enum Flags : uint8_t { kSealed = 1 };
// Segment kinds are zerrow::SegmentKind's values: 1 memfd, 2 kernel-module file,
// 3 spill file (the highest).
constexpr uint8_t kSpillFileKind = 3;

struct BufferRef {
  int32_t segment = -1;  // -1: no buffer (a null pointer in ArrayData)
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct RawNode {
  int64_t length = 0, null_count = 0, offset = 0;
  int32_t dictionary = -1;  // index into RawDescriptor::dictionaries
  std::vector<BufferRef> buffers;
  std::vector<RawNode> children;
};

struct SegmentEntry {
  uint8_t kind = 0;       // zerrow::SegmentKind
  uint64_t min_size = 0;  // the file is at least this long
};

struct RawDescriptor {
  ObjectKind kind = ObjectKind::kTable;
  uint8_t flags = 0;
  int64_t num_rows = 0;
  std::vector<SegmentEntry> segments;  // segment i travels as fds[i]
  std::string schema;                  // Arrow IPC Schema message
  std::vector<RawNode> dictionaries;   // a dictionary may refer only to earlier ones
  std::vector<std::vector<RawNode>> columns;  // columns x chunks
};

std::string Encode(const RawDescriptor& d);
arrow::Result<RawDescriptor> Parse(std::string_view bytes);

// The same descriptor with every segment's kind set to 3 (a spill file): for
// a copy of each segment written to a file on disk at the same offsets, in the
// same order. Fails as Parse does.
arrow::Result<std::string> MarkSpilled(std::string_view bytes);

// Each segment's kind, in the descriptor's order. Fails as Parse does.
arrow::Result<std::vector<uint8_t>> SegmentKinds(std::string_view bytes);

// What a descriptor's buffer references add up to (for a share received
// without attaching it). Fails as Parse does.
struct ReferenceTotals {
  int64_t nbytes = 0;
  int64_t nbuffers = 0;
};
arrow::Result<ReferenceTotals> Totals(std::string_view bytes);

}  // namespace zerrow::sipc
