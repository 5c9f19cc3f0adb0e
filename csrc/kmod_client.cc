// Wrapper over the /dev/zerrow ioctls; see kmod_client.h.
#include "kmod_client.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace zerrow {

namespace {

// What the module means by each errno, per operation.
const char* Explain(int err, const char* what) {
  const bool append = std::strcmp(what, "append") == 0;
  switch (err) {
    case ENOENT:
      return "/dev/zerrow does not exist: the zerrow kernel module is not loaded "
             "(modprobe zerrow; see docs/KERNEL_MODULE.md)";
    case ENOMEM:
      return append ? "pinning would exceed RLIMIT_MEMLOCK (ulimit -l) of the process; "
                      "raise it or grant CAP_IPC_LOCK"
                    : "out of memory";
    case EACCES:
      return append ? "the range is not writable (PROT_WRITE is required)"
                    : "read-only file: map it with PROT_READ only";
    case EFAULT:
      return append ? "the range is not entirely mapped" : "bad address";
    case EOPNOTSUPP:
      return "the range is not private anonymous memory (shared, file-backed, "
             "hugetlb or device memory cannot be de-anonymized)";
    case EPERM:
      return "the file is sealed, or this process did not create it";
    case EINVAL:
      return "invalid argument (zero length, unknown flags or overflowing range)";
    case ENOTTY:
      return "not a zerrow device or file";
    case EPROTO:
      return "the loaded zerrow module speaks another ABI version";
    default:
      return nullptr;
  }
}

}  // namespace

KmodStatus KmodStatus::FromErrno(int err, const char* what) {
  KmodStatus st;
  st.err = err;
  const char* why = Explain(err, what);
  st.message = std::string("zerrow kmod ") + what + ": " + std::strerror(err);
  if (why != nullptr) st.message += std::string(" (") + why + ")";
  return st;
}

size_t KmodPageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// ---------------------------------------------------------------- KmodFile

KmodFile::~KmodFile() {
  if (fd_ >= 0) close(fd_);
}

KmodFile::KmodFile(KmodFile&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

KmodFile& KmodFile::operator=(KmodFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

int KmodFile::Release() { return std::exchange(fd_, -1); }

KmodStatus KmodFile::Append(const void* addr, size_t len, uint32_t flags, KmodAppend* out) {
  zerrow_append a;
  std::memset(&a, 0, sizeof(a));
  a.addr = reinterpret_cast<uintptr_t>(addr);
  a.len = len;
  a.flags = flags;
  if (ioctl(fd_, ZERROW_IOC_APPEND, &a) != 0) return KmodStatus::FromErrno(errno, "append");
  if (out != nullptr) {
    out->offset = a.offset;
    out->exposed_head = a.exposed_head;
    out->exposed_tail = a.exposed_tail;
    out->protect_addr = reinterpret_cast<void*>(static_cast<uintptr_t>(a.protect_addr));
    out->protect_len = static_cast<size_t>(a.protect_len);
    out->protect_offset = a.protect_offset;
    out->pinned_pages = a.pinned_pages;
    out->copied_pages = a.copied_pages;
  }
  return KmodStatus::Ok();
}

KmodStatus KmodFile::Protect(const KmodAppend& appended) {
  if (appended.protect_len == 0) return KmodStatus::Ok();
  void* p = mmap(appended.protect_addr, appended.protect_len, PROT_READ, MAP_SHARED | MAP_FIXED,
                 fd_, static_cast<off_t>(appended.protect_offset));
  if (p == MAP_FAILED) return KmodStatus::FromErrno(errno, "protect");
  return KmodStatus::Ok();
}

KmodStatus KmodFile::Seal() {
  if (ioctl(fd_, ZERROW_IOC_SEAL) != 0) return KmodStatus::FromErrno(errno, "seal");
  return KmodStatus::Ok();
}

KmodStatus KmodFile::Info(KmodFileInfo* out) const {
  zerrow_info info;
  std::memset(&info, 0, sizeof(info));
  if (ioctl(fd_, ZERROW_IOC_INFO, &info) != 0) return KmodStatus::FromErrno(errno, "info");
  out->size = info.size;
  out->pinned_pages = info.pinned_pages;
  out->copied_pages = info.copied_pages;
  out->appends = info.appends;
  out->page_size = info.page_size;
  out->sealed = info.sealed != 0;
  return KmodStatus::Ok();
}

KmodStatus KmodFile::MapReadOnly(uint64_t offset, size_t len, const void** out) const {
  void* p = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return KmodStatus::FromErrno(errno, "mmap");
  *out = p;
  return KmodStatus::Ok();
}

// -------------------------------------------------------------- KmodDevice

KmodDevice::~KmodDevice() {
  if (fd_ >= 0) close(fd_);
}

KmodDevice::KmodDevice(KmodDevice&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), abi_(other.abi_) {}

KmodDevice& KmodDevice::operator=(KmodDevice&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    abi_ = other.abi_;
  }
  return *this;
}

KmodStatus KmodDevice::Open(KmodDevice* out, const char* path) {
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return KmodStatus::FromErrno(errno, "open");
  uint32_t abi = 0;
  if (ioctl(fd, ZERROW_IOC_VERSION, &abi) != 0) {
    KmodStatus st = KmodStatus::FromErrno(errno, "version");
    close(fd);
    return st;
  }
  if (abi != ZERROW_ABI_VERSION) {
    close(fd);
    KmodStatus st = KmodStatus::FromErrno(EPROTO, "version");
    st.message += ": module ABI " + std::to_string(abi) + ", client ABI " +
                  std::to_string(ZERROW_ABI_VERSION);
    return st;
  }
  *out = KmodDevice();
  out->fd_ = fd;
  out->abi_ = abi;
  return KmodStatus::Ok();
}

bool KmodDevice::Available(const char* path) {
  KmodDevice dev;
  return Open(&dev, path).ok();
}

KmodStatus KmodDevice::CreateFile(KmodFile* out, bool cloexec) const {
  zerrow_create c;
  std::memset(&c, 0, sizeof(c));
  c.flags = cloexec ? ZERROW_CREATE_CLOEXEC : 0;
  if (ioctl(fd_, ZERROW_IOC_CREATE, &c) < 0) return KmodStatus::FromErrno(errno, "create");
  *out = KmodFile(c.fd);
  return KmodStatus::Ok();
}

KmodStatus KmodRestoreWritable(void* addr, size_t len) {
  const size_t page = KmodPageSize();
  if ((reinterpret_cast<uintptr_t>(addr) | len) & (page - 1)) {
    return KmodStatus::FromErrno(EINVAL, "restore");
  }
  void* p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) return KmodStatus::FromErrno(errno, "restore");
  return KmodStatus::Ok();
}

}  // namespace zerrow
