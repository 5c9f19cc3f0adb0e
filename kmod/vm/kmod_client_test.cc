// In-guest smoke test of csrc/kmod_client: de-anonymize a malloc'd buffer
// (as numpy would hand one over), protect it, read it back through the file,
// and give the addresses back to malloc. Exit status 0 = pass.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kmod_client.h"

namespace {

int failures = 0;

void Expect(bool cond, const std::string& what) {
  if (!cond) {
    std::printf("ZTEST INFO kmod_client: FAILED %s\n", what.c_str());
    ++failures;
  }
}

}  // namespace

int main() {
  using zerrow::KmodAppend;
  using zerrow::KmodDevice;
  using zerrow::KmodFile;
  using zerrow::KmodFileInfo;
  using zerrow::KmodStatus;

  KmodDevice missing;
  KmodStatus st = KmodDevice::Open(&missing, "/dev/zerrow-missing");
  Expect(st.err == ENOENT && st.message.find("not loaded") != std::string::npos,
         "ENOENT message: " + st.message);
  Expect(KmodDevice::Available(), "Available()");

  KmodDevice dev;
  st = KmodDevice::Open(&dev);
  Expect(st.ok() && dev.abi_version() == ZERROW_ABI_VERSION, "open: " + st.message);

  // A malloc'd buffer of 3 MiB + 100 bytes: glibc serves it with mmap, the
  // data starts 16 bytes into the mapping, so both edges are partial pages.
  const size_t len = 3 * 1024 * 1024 + 100;
  auto* buf = static_cast<unsigned char*>(std::malloc(len));
  for (size_t i = 0; i < len; i++) buf[i] = static_cast<unsigned char>(i * 7 + 3);

  KmodFile file;
  st = dev.CreateFile(&file);
  Expect(st.ok() && file.valid(), "create: " + st.message);
  KmodAppend a;
  st = file.Append(buf, len, ZERROW_APPEND_COPY_EDGES, &a);
  Expect(st.ok(), "append: " + st.message);
  const size_t page = zerrow::KmodPageSize();
  Expect(a.offset % page == reinterpret_cast<uintptr_t>(buf) % page, "offset keeps in-page offset");
  Expect(a.exposed_head == 0 && a.exposed_tail == 0 && a.copied_pages == 2, "copied edges");
  st = file.Protect(a);
  Expect(st.ok(), "protect: " + st.message);
  bool same = true;
  for (size_t i = 0; i < len; i++) same &= buf[i] == static_cast<unsigned char>(i * 7 + 3);
  Expect(same, "producer still reads its buffer after Protect");
  st = file.Seal();
  Expect(st.ok(), "seal: " + st.message);
  KmodFileInfo info;
  st = file.Info(&info);
  Expect(st.ok() && info.sealed && info.size >= len && info.page_size == page, "info");

  const void* view = nullptr;
  st = file.MapReadOnly(0, info.size, &view);
  Expect(st.ok(), "map: " + st.message);
  if (st.ok()) {
    Expect(std::memcmp(static_cast<const unsigned char*>(view) + a.offset, buf, len) == 0,
           "reader view equals producer buffer");
  }

  // errors carry an explanation
  void* ro = mmap(nullptr, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  st = file.Append(ro, page, 0, nullptr);
  Expect(st.err == EPERM, "append after seal is EPERM: " + st.message);
  KmodFile other;
  dev.CreateFile(&other);
  st = other.Append(ro, page, 0, nullptr);
  Expect(st.err == EACCES && st.message.find("not writable") != std::string::npos,
         "EACCES message: " + st.message);

  // hand the addresses back to the producer, then to malloc
  st = zerrow::KmodRestoreWritable(a.protect_addr, a.protect_len);
  Expect(st.ok(), "restore: " + st.message);
  std::memset(buf, 0, len);
  std::free(buf);
  if (view != nullptr) {
    Expect(static_cast<const unsigned char*>(view)[a.offset + 5] == 5 * 7 + 3,
           "reader unchanged after producer reuse");
    munmap(const_cast<void*>(view), info.size);
  }
  int fd = file.Release();
  Expect(fd >= 0 && !file.valid(), "release");
  close(fd);
  std::printf("ZTEST INFO kmod_client: %d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
