#include "attach_cache.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <arrow/util/io_util.h>

#include "../kmod/include/uapi/zerrow_kmod.h"
#include "segment_registry.h"

namespace zerrow {
namespace {

std::mutex cache_mu;
// (registry, device, inode) -> mapping.
using CacheKey = std::tuple<const SegmentRegistry*, uint64_t, uint64_t>;
std::map<CacheKey, std::weak_ptr<Segment>>& Cache() {
  static auto* cache = new std::map<CacheKey, std::weak_ptr<Segment>>();
  return *cache;
}

std::string FdTarget(int fd) {
  char path[64], target[256];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof(target) - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
}

arrow::Status CheckFd(int fd, SegmentKind kind, const struct stat& st, const AttachTrust& trust) {
  const bool immutable = trust.immutable;
  std::string target = FdTarget(fd);
  if (kind == SegmentKind::kSpillFile) {
    if (!trust.spill_files)
      return arrow::Status::Invalid("zerrow: segment fd ", fd, " is a spill file (", target,
                                    "), which is accepted only from a trusted producer (spill_files=True)");
    if (immutable)
      return arrow::Status::Invalid("zerrow: spill file fd ", fd, " cannot be sealed against writes, "
                                    "so full validation cannot hold for it");
    if (!S_ISREG(st.st_mode) || target.rfind("/memfd:", 0) == 0)
      return arrow::Status::Invalid("zerrow: fd ", fd, " is not a spill file on disk (", target, ")");
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_ACCMODE) != O_RDONLY)
      return arrow::Status::Invalid("zerrow: spill file fd ", fd, " is not open read-only");
    return arrow::Status::OK();
  }
  if (kind == SegmentKind::kMemfd) {
    if (!S_ISREG(st.st_mode) || target.rfind("/memfd:", 0) != 0)
      return arrow::Status::Invalid("zerrow: fd ", fd, " is not a memfd (", target, ")");
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & F_SEAL_SHRINK) == 0)
      return arrow::Status::Invalid("zerrow: memfd ", fd, " is not sealed against shrinking; mapping it could fault");
    if (immutable && (seals & F_SEAL_WRITE) == 0)
      return arrow::Status::Invalid("zerrow: memfd ", fd, " is not sealed against writes (shared with seal=False?): ",
                                    "its values could change after validation");
  } else {
    zerrow_info info;
    std::memset(&info, 0, sizeof(info));
    if (ioctl(fd, ZERROW_IOC_INFO, &info) != 0 || target.find("zerrow") == std::string::npos)
      return arrow::Status::Invalid("zerrow: fd ", fd, " is not a zerrow kernel-module file (", target, ")");
    if (!info.sealed) return arrow::Status::Invalid("zerrow: kernel-module file ", fd, " is not sealed");
  }
  return arrow::Status::OK();
}

}  // namespace

arrow::Result<std::shared_ptr<Segment>> AttachSegment(SegmentRegistry& registry, int fd, SegmentKind kind, uint64_t min_size,
                                                      const AttachTrust& trust) {
  struct stat st;
  if (fstat(fd, &st) != 0)
    return arrow::internal::StatusFromErrno(errno, arrow::StatusCode::Invalid, "zerrow: fd ", fd, " is not open: ",
                                            std::strerror(errno));
  ARROW_RETURN_NOT_OK(CheckFd(fd, kind, st, trust));
  auto size = static_cast<uint64_t>(st.st_size);
  if (size < min_size)
    return arrow::Status::Invalid("zerrow: segment file is ", size, " bytes, the descriptor expects ", min_size);
  CacheKey key{&registry, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  std::shared_ptr<Segment> cached;  // declared before the lock: its deleter takes cache_mu
  std::lock_guard lock(cache_mu);
  auto& slot = Cache()[key];
  cached = slot.lock();
  if (cached && cached->size() >= size) return cached;
  ARROW_ASSIGN_OR_RAISE(auto fresh, Segment::Attach(fd, size, kind));
  std::shared_ptr<Segment> seg(fresh.release(), [key, &registry](Segment* s) {
    registry.RemoveAttached(s);
    {
      std::lock_guard lock(cache_mu);
      auto it = Cache().find(key);
      if (it != Cache().end() && it->second.expired()) Cache().erase(it);
    }
    delete s;
  });
  registry.AddAttached(seg);
  slot = seg;
  return seg;
}

}  // namespace zerrow
