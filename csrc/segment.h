// A memfd-backed (or kernel-module-backed) shareable file mapped into this process.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <arrow/result.h>
#include <arrow/status.h>

namespace zerrow {

// How a segment's file came to be; travels in share descriptors (sipc_format.h).
enum class SegmentKind : uint8_t {
  kMemfd = 1,       // memfd_create, from this library's pool
  kKernelFile = 2,  // a de-anonymized file of the zerrow kernel module
  kSpillFile = 3,   // a read-only file on disk holding a segment's bytes at their offsets
};

// One file plus one mapping of it. Owned segments are mapped read-write and
// were created here; attached segments are mapped read-only from a received fd.
class Segment {
 public:
  // Creates a memfd of `capacity` bytes (sparse: pages appear on first touch),
  // maps it MAP_SHARED read-write at a 2 MiB-aligned address and advises huge
  // pages. The read-write mapping is not inherited by fork() (MADV_DONTFORK):
  // a child gets a copy-on-write view instead, see RemapPrivateInChild.
  static arrow::Result<std::shared_ptr<Segment>> Create(size_t capacity);

  // Maps `fd` read-only. The segment keeps its own dup of `fd`.
  static arrow::Result<std::unique_ptr<Segment>> Attach(int fd, size_t size, SegmentKind kind);

  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  uint8_t* base() const { return base_; }
  size_t size() const { return size_; }
  int fd() const { return fd_; }
  bool owned() const { return owned_; }
  SegmentKind kind() const { return kind_; }
  bool contains(const void* p) const {
    auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(base_);
    return a >= b && a < b + size_;
  }
  // Identity of the underlying file (unique among live files on this machine).
  uint64_t dev() const { return dev_; }
  uint64_t ino() const { return ino_; }

  // Returns [offset, offset+len) to the kernel; it reads as zeros afterwards.
  arrow::Status Punch(size_t offset, size_t len);
  // Seals the file against shrinking and growing.
  arrow::Status SealSize();
  // Makes the contents immutable for everyone: our own mapping is replaced by
  // one from a read-only fd (which can never be made writable again), then
  // the file is sealed against writes (F_SEAL_WRITE) as well as size changes.
  arrow::Status SealWrites();
  // A new fd (the caller closes it) on a read-only file description of this
  // segment's file: whoever holds it cannot map it writable.
  arrow::Result<int> OpenReadOnly() const;
  // Just before fork(), in the parent: opens the read-only description of the
  // file that the child will map (RemapPrivateInChild). Made before the fork,
  // so there is no moment after it when the child holds no description of its
  // own and the parent's lease check (SoleHolder) could miss it. The parent
  // closes its copy right after the fork (CloseForkDescription).
  void OpenForkDescription();
  void CloseForkDescription();
  // In a child just forked: maps the file again at the same address,
  // MAP_PRIVATE (copy-on-write) with the parent's protection, through the
  // description opened before the fork, so the parent's lease check sees this
  // child for as long as it maps the segment. The inherited descriptors are
  // closed; this process must never change the file.
  arrow::Status RemapPrivateInChild();
  // In a child just forked: closes the inherited descriptors of a segment whose
  // mapping was not inherited (MADV_DONTFORK), forgetting the mapping too.
  void ForgetInChild();
  // Bytes of the file that are backed by memory right now.
  int64_t ResidentBytes() const;
  // The [offset, length) runs of the file that are backed by memory, holes
  // shorter than `min_hole` folded into their neighbours.
  std::vector<std::pair<size_t, size_t>> ResidentRanges(size_t min_hole) const;

  // True when no other open file description of this (owned) file exists
  // anywhere: no fd, mapping or fd in flight in another process, nor a
  // read-only reopen here (the cached one is closed first). The kernel
  // answers it: a write lease is granted only to a file's sole opener. A
  // fork of this process shares our own description, which is not seen; but
  // a child that maps the segment does so through a description of its own
  // (RemapPrivateInChild), which is.
  bool SoleHolder();
  // Whether the kernel counts openers the way SoleHolder relies on (checked
  // once per process on a scratch memfd).
  static bool CanProbeHolders();

 private:
  Segment() = default;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  size_t map_len_ = 0;    // length of the whole reservation (includes alignment slack)
  uint8_t* map_base_ = nullptr;
  int fd_ = -1;
  mutable std::atomic<int> ro_fd_{-1};  // read-only reopen of fd_, made on first use
  int fork_fd_ = -1;  // the description a child about to be forked maps (-1 otherwise)
  bool owned_ = false;
  SegmentKind kind_ = SegmentKind::kMemfd;
  uint64_t dev_ = 0, ino_ = 0;
};

}  // namespace zerrow
