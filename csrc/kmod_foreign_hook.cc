#include "kmod_foreign_hook.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <mutex>

#include "cow_guard.h"
#include "env_bytes.h"
#include "kmod_client.h"

namespace zerrow {
namespace {

class KernelModuleHook final : public ForeignMemoryHook {
 public:
  arrow::Result<std::vector<std::optional<ForeignPlacement>>> Place(const std::vector<ForeignRange>& ranges,
                                                                    const ShareOptions& options) override {
    std::vector<std::optional<ForeignPlacement>> out(ranges.size());
    const char* enabled = std::getenv("ZERROW_KMOD");
    if (enabled != nullptr && std::string(enabled) == "0") return out;
    const auto min_bytes = static_cast<size_t>(EnvBytes("ZERROW_KMOD_MIN_BYTES", 64 * 1024));
    std::vector<size_t> wanted;
    for (size_t i = 0; i < ranges.size(); ++i)
      if (ranges[i].size >= min_bytes) wanted.push_back(i);
    if (wanted.empty() || !KernelModuleAvailable()) return out;

    KmodDevice device;
    if (!KmodDevice::Open(&device).ok()) return out;
    KmodFile file;
    if (auto st = device.CreateFile(&file); !st.ok()) return arrow::Status::IOError(st.message);
    const size_t page = KmodPageSize();
    // Append everything first: a range already remapped onto the file could
    // not be pinned again by a later append that shares its edge page.
    std::vector<KmodAppend> appended(ranges.size());
    std::vector<size_t> placed;
    for (size_t i : wanted) {
      uint32_t flags = options.strict_exposure ? ZERROW_APPEND_COPY_EDGES : 0;
      if (!file.Append(ranges[i].data, ranges[i].size, flags, &appended[i]).ok()) continue;  // copied instead
      placed.push_back(i);
    }
    if (placed.empty()) return out;
    if (auto st = file.Seal(); !st.ok()) return arrow::Status::IOError(st.message);
    // Producer protection: remap the pages of each range read-only onto the
    // file, so this process can no longer change what readers see; a later
    // write here (the owner mutating, or its allocator reusing the addresses
    // or writing its headers next to the buffer) gets a private copy
    // (cow_guard.h). With strict_exposure the edge pages were copied into the
    // file instead of pinned: only the whole pages inside are the producer's.
    for (size_t i : placed) {
      const KmodAppend& a = appended[i];
      auto addr = reinterpret_cast<uintptr_t>(ranges[i].data);
      uintptr_t lo = addr & ~(page - 1), hi = (addr + ranges[i].size + page - 1) & ~(page - 1);
      if (options.strict_exposure) {
        lo = reinterpret_cast<uintptr_t>(a.protect_addr);
        hi = lo + a.protect_len;
      }
      if (hi <= lo) continue;
      ARROW_RETURN_NOT_OK(GuardReadOnlyRange(reinterpret_cast<void*>(lo), hi - lo));
      void* m = mmap(reinterpret_cast<void*>(lo), hi - lo, PROT_READ, MAP_SHARED | MAP_FIXED, file.fd(),
                     static_cast<off_t>(a.offset - (addr - lo)));
      if (m == MAP_FAILED) return arrow::Status::IOError("zerrow: remapping a de-anonymized range read-only failed");
    }
    ARROW_ASSIGN_OR_RAISE(std::shared_ptr<Segment> segment,
                          Segment::Attach(file.fd(), /*size=*/0, SegmentKind::kKernelFile));
    for (size_t i : placed) {
      const KmodAppend& a = appended[i];
      ForeignPlacement p;
      p.segment = segment;
      p.offset = a.offset;
      p.exposed_bytes = static_cast<int64_t>(a.exposed_head + a.exposed_tail);
      p.copied_bytes = std::min<int64_t>(static_cast<int64_t>(ranges[i].size),
                                         static_cast<int64_t>(a.copied_pages * page));
      out[i] = std::move(p);
    }
    return out;
  }
};

}  // namespace

bool KernelModuleAvailable() { return access(ZERROW_DEVICE_PATH, R_OK | W_OK) == 0 && KmodDevice::Available(); }

std::shared_ptr<ForeignMemoryHook> MakeKernelModuleHook() { return std::make_shared<KernelModuleHook>(); }

}  // namespace zerrow
