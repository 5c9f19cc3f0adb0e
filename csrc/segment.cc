#include "segment.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <utility>

#include "errno_status.h"

namespace zerrow {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

// A new description of fd's file with the given access mode, or -1.
int Reopen(int fd, int mode) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  return open(path, mode | O_CLOEXEC);
}

// memfd_create's own description is not counted among the file's writers, so
// a write lease on it is never granted; a reopened description is counted.
// Falls back to the original (then SoleHolder is always false).
int CountedWritable(int memfd) {
  int rw = Reopen(memfd, O_RDWR);
  if (rw < 0) return memfd;
  close(memfd);
  // A lease break (someone opening us through /proc/<pid>/fd while we probe)
  // signals the holder; SIGURG is ignored unless the program asks for it.
  fcntl(rw, F_SETSIG, SIGURG);
  return rw;
}

bool LeaseGranted(int fd) {
  if (fcntl(fd, F_SETLEASE, F_WRLCK) != 0) return false;
  fcntl(fd, F_SETLEASE, F_UNLCK);
  return true;
}

}  // namespace

arrow::Result<std::shared_ptr<Segment>> Segment::Create(size_t capacity) {
  int fd = memfd_create("zerrow", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ErrnoError("memfd_create");
  fd = CountedWritable(fd);
  std::shared_ptr<Segment> seg(new Segment());
  seg->fd_ = fd;  // closed by the destructor from here on
  if (ftruncate(fd, static_cast<off_t>(capacity)) != 0) return ErrnoError("ftruncate");
  // Reserve with slack, then place the file mapping on a 2 MiB boundary so that
  // shmem huge pages (shmem_enabled=advise) can back it.
  size_t reserve = capacity + kHugePage;
  void* r = mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return ErrnoError("mmap reserve");
  auto start = reinterpret_cast<uintptr_t>(r);
  uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
  void* m = mmap(reinterpret_cast<void*>(aligned), capacity, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_FIXED, fd, 0);
  if (m == MAP_FAILED) {
    const int err = errno;
    munmap(r, reserve);
    return ErrnoError("mmap memfd", err);
  }
  if (aligned > start) munmap(r, aligned - start);
  uintptr_t end = aligned + capacity, rend = start + reserve;
  if (rend > end) munmap(reinterpret_cast<void*>(end), rend - end);
  seg->base_ = seg->map_base_ = static_cast<uint8_t*>(m);
  seg->size_ = seg->map_len_ = capacity;
  seg->owned_ = true;
  madvise(m, capacity, MADV_HUGEPAGE);  // best effort: only matters with shmem THP on advise
  // A fork must not write into our file: the child remaps it copy-on-write.
  if (madvise(m, capacity, MADV_DONTFORK) != 0) return ErrnoError("madvise(MADV_DONTFORK)");
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoError("fstat");
  seg->dev_ = st.st_dev;
  seg->ino_ = st.st_ino;
  return seg;
}

arrow::Result<std::unique_ptr<Segment>> Segment::Attach(int fd, size_t size, SegmentKind kind) {
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return ErrnoError("dup");
  std::unique_ptr<Segment> seg(new Segment());
  seg->fd_ = own;
  seg->kind_ = kind;
  struct stat st;
  if (fstat(own, &st) != 0) return ErrnoError("fstat");
  seg->dev_ = st.st_dev;
  seg->ino_ = st.st_ino;
  if (size == 0) return seg;
  void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, own, 0);
  if (m == MAP_FAILED) return ErrnoError("mmap read-only");
  seg->base_ = seg->map_base_ = static_cast<uint8_t*>(m);
  seg->size_ = seg->map_len_ = size;
  return seg;
}

Segment::~Segment() {
  if (map_base_ != nullptr) munmap(map_base_, map_len_);
  if (fd_ >= 0) close(fd_);
  if (int ro = ro_fd_.load(); ro >= 0) close(ro);
}

arrow::Status Segment::Punch(size_t offset, size_t len) {
  if (len == 0) return arrow::Status::OK();
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(len)) != 0) {
    return ErrnoError("fallocate(PUNCH_HOLE)");
  }
  return arrow::Status::OK();
}

arrow::Status Segment::SealSize() {
  if (fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) return ErrnoError("F_ADD_SEALS");
  return arrow::Status::OK();
}

arrow::Status Segment::SealWrites() {
  ARROW_ASSIGN_OR_RAISE(int ro, OpenReadOnly());
  void* m = mmap(map_base_, map_len_, PROT_READ, MAP_SHARED | MAP_FIXED, ro, 0);
  int err = errno;
  close(ro);
  if (m == MAP_FAILED) {
    return ErrnoError("remapping a segment read-only", err);
  }
  madvise(m, map_len_, MADV_HUGEPAGE);
  if (fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) != 0) return ErrnoError("F_ADD_SEALS");
  return arrow::Status::OK();
}

arrow::Result<int> Segment::OpenReadOnly() const {
  int ro = ro_fd_.load(std::memory_order_acquire);
  if (ro < 0) {
    if (!owned_) {
      ro = fd_;  // attached segments were received read-only
    } else {
      int fresh = Reopen(fd_, O_RDONLY);
      if (fresh < 0) return ErrnoError("reopen segment read-only");
      int expected = -1;
      if (ro_fd_.compare_exchange_strong(expected, fresh)) {
        ro = fresh;
      } else {
        close(fresh);
        ro = expected;
      }
    }
  }
  int out = fcntl(ro, F_DUPFD_CLOEXEC, 0);
  if (out < 0) return ErrnoError("dup read-only segment fd");
  return out;
}

void Segment::OpenForkDescription() {
  if (fork_fd_ < 0) fork_fd_ = Reopen(fd_, O_RDONLY);
}

void Segment::CloseForkDescription() {
  if (fork_fd_ >= 0) close(fork_fd_);
  fork_fd_ = -1;
}

arrow::Status Segment::RemapPrivateInChild() {
  if (int ro = ro_fd_.exchange(-1); ro >= 0) close(ro);
  int ro = std::exchange(fork_fd_, -1);
  // Without a description of our own the parent cannot see us, but we still
  // read its pages copy-on-write.
  const int from = ro >= 0 ? ro : fd_;
  void* m = mmap(map_base_, map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, from, 0);
  int err = errno;
  if (ro >= 0) close(ro);
  if (m == MAP_FAILED) {
    return ErrnoError("remapping an inherited segment copy-on-write", err);
  }
  close(fd_);
  fd_ = -1;
  return arrow::Status::OK();
}

void Segment::ForgetInChild() {
  map_base_ = nullptr;  // never inherited: nothing of ours is mapped there
  if (int ro = ro_fd_.exchange(-1); ro >= 0) close(ro);
}

int64_t Segment::ResidentBytes() const {
  struct stat st;
  if (fstat(fd_, &st) != 0) return 0;
  return static_cast<int64_t>(st.st_blocks) * 512;
}

std::vector<std::pair<size_t, size_t>> Segment::ResidentRanges(size_t min_hole) const {
  std::vector<std::pair<size_t, size_t>> out;
  off_t pos = 0;
  const auto end = static_cast<off_t>(size_);
  while (pos < end) {
    off_t data = lseek(fd_, pos, SEEK_DATA);
    if (data < 0 || data >= end) break;  // ENXIO: no data past pos
    off_t hole = lseek(fd_, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    auto off = static_cast<size_t>(data), len = static_cast<size_t>(hole - data);
    if (!out.empty() && off - (out.back().first + out.back().second) < min_hole) {
      out.back().second = off + len - out.back().first;
    } else {
      out.emplace_back(off, len);
    }
    pos = hole;
  }
  return out;
}

bool Segment::SoleHolder() {
  if (!owned_) return false;
  if (int ro = ro_fd_.exchange(-1); ro >= 0) close(ro);
  return LeaseGranted(fd_);
}

bool Segment::CanProbeHolders() {
  static const bool ok = [] {
    int fd = memfd_create("zerrow-probe", MFD_CLOEXEC);
    if (fd < 0) return false;
    fd = CountedWritable(fd);
    bool alone = LeaseGranted(fd);
    int ro = Reopen(fd, O_RDONLY);
    bool reader_seen = ro >= 0 && !LeaseGranted(fd);
    if (ro >= 0) close(ro);
    bool alone_again = LeaseGranted(fd);
    close(fd);
    return alone && reader_seen && alone_again;
  }();
  return ok;
}

}  // namespace zerrow
