// A thin C++ wrapper over the ioctls of the zerrow kernel module (/dev/zerrow).
// No Arrow and no Python: errors are errno values plus a human message.
//
//   KmodDevice dev;
//   KmodStatus st = KmodDevice::Open(&dev);          // ENOENT: module not loaded
//   KmodFile file;
//   st = dev.CreateFile(&file);
//   KmodAppend a;
//   st = file.Append(buf, len, /*flags=*/0, &a);       // pins; a.offset = where buf lands
//   st = file.Protect(a);                              // producer's range -> read-only
//   st = file.Seal();
//   send file.fd() with SCM_RIGHTS; readers mmap it PROT_READ, MAP_SHARED
//
// See docs/KERNEL_MODULE.md for the semantics (exposed edge bytes, producer
// protection, memlock accounting).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "../kmod/include/uapi/zerrow_kmod.h"

namespace zerrow {

// Outcome of a call: err == 0 on success, else an errno value.
struct KmodStatus {
  int err = 0;
  std::string message;

  bool ok() const { return err == 0; }
  static KmodStatus Ok() { return KmodStatus(); }
  // Status for `err` raised by `what` ("open", "create", "append", ...), with
  // an explanation of what the module means by that errno.
  static KmodStatus FromErrno(int err, const char* what);
};

// Result of one append; see struct zerrow_append in zerrow_kmod.h.
struct KmodAppend {
  uint64_t offset = 0;        // file offset where `addr` landed (same in-page offset)
  uint64_t exposed_head = 0;  // unrelated producer bytes before addr in its first page
  uint64_t exposed_tail = 0;  // same after addr+len in the last page
  void* protect_addr = nullptr;  // whole pinned pages inside the range (may be null)
  size_t protect_len = 0;
  uint64_t protect_offset = 0;  // file offset of protect_addr
  uint64_t pinned_pages = 0;
  uint64_t copied_pages = 0;
};

struct KmodFileInfo {
  uint64_t size = 0;  // bytes, whole pages
  uint64_t pinned_pages = 0;
  uint64_t copied_pages = 0;
  uint64_t appends = 0;
  uint32_t page_size = 0;
  bool sealed = false;
};

// A de-anonymized file. Owns its descriptor (closed by the destructor); the
// pages stay pinned until every descriptor and mapping of the file is gone.
class KmodFile {
 public:
  KmodFile() = default;
  // Takes ownership of `fd` (e.g. one received over SCM_RIGHTS).
  explicit KmodFile(int fd) : fd_(fd) {}
  ~KmodFile();
  KmodFile(KmodFile&& other) noexcept;
  KmodFile& operator=(KmodFile&& other) noexcept;
  KmodFile(const KmodFile&) = delete;
  KmodFile& operator=(const KmodFile&) = delete;

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  // Gives up ownership of the descriptor and returns it.
  int Release();

  // Pins the pages of [addr, addr+len) of this process's private anonymous,
  // writable memory and appends them to the file. `flags`: ZERROW_APPEND_*.
  // Only the process that created the file may append.
  KmodStatus Append(const void* addr, size_t len, uint32_t flags, KmodAppend* out);
  // Producer protection: remaps out.protect_addr..+protect_len of this
  // process read-only onto the file (MAP_SHARED|MAP_FIXED). Afterwards the
  // producer reads the same bytes at the same addresses, and neither it nor a
  // fork of it can change what readers see. No-op if protect_len == 0.
  KmodStatus Protect(const KmodAppend& appended);
  // Refuses further appends (EPERM afterwards).
  KmodStatus Seal();
  KmodStatus Info(KmodFileInfo* out) const;
  // Maps `len` bytes at file `offset` read-only, shared (readers' side).
  KmodStatus MapReadOnly(uint64_t offset, size_t len, const void** out) const;

 private:
  int fd_ = -1;
};

// An open /dev/zerrow.
class KmodDevice {
 public:
  KmodDevice() = default;
  ~KmodDevice();
  KmodDevice(KmodDevice&& other) noexcept;
  KmodDevice& operator=(KmodDevice&& other) noexcept;
  KmodDevice(const KmodDevice&) = delete;
  KmodDevice& operator=(const KmodDevice&) = delete;

  // Opens the device and checks its ABI version (EPROTO on a mismatch).
  static KmodStatus Open(KmodDevice* out, const char* path = ZERROW_DEVICE_PATH);
  // True if the device exists and answers; does not keep it open.
  static bool Available(const char* path = ZERROW_DEVICE_PATH);

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  uint32_t abi_version() const { return abi_; }

  // Creates an empty de-anonymized file (close-on-exec unless cloexec=false).
  KmodStatus CreateFile(KmodFile* out, bool cloexec = true) const;

 private:
  int fd_ = -1;
  uint32_t abi_ = 0;
};

// After the producer is done with a protected range (e.g. before free()
// hands the addresses back to malloc), maps fresh zero-filled private
// anonymous memory over the page-aligned [addr, addr+len). Readers keep the
// old pages. The range must be page-aligned (as Protect() produces).
KmodStatus KmodRestoreWritable(void* addr, size_t len);

// The kernel's page size.
size_t KmodPageSize();

}  // namespace zerrow
