#include "cow_guard.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "errno_status.h"

namespace zerrow {
namespace {

constexpr size_t kChunk = size_t{2} << 20;  // copy granularity: bounds the number of VMAs
constexpr size_t kMaxRanges = 65536;

// Slots are appended under g_register_mu and read lock-free by the handler;
// the newest slot covering an address is the one in force.
struct Range {
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<uint64_t>* private_chunks = nullptr;  // bit per kChunk already copied
};
Range g_ranges[kMaxRanges];
std::atomic<size_t> g_used{0};
std::mutex g_register_mu;

std::atomic_flag g_fix_lock = ATOMIC_FLAG_INIT;
std::atomic<int64_t> g_copied{0};
struct sigaction g_previous;
__attribute__((tls_model("initial-exec"))) thread_local uintptr_t t_last_fault = 0;

void Handler(int sig, siginfo_t* info, void* ctx);

bool OurHandlerInstalled() {
  struct sigaction cur;
  sigaction(SIGSEGV, nullptr, &cur);
  return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == Handler;
}

// Makes [lo, hi) of a guarded range private and writable, keeping its bytes:
// copy to fresh memory, then move that over the range in one step, so other
// threads read the same bytes throughout.
bool MakePrivate(uintptr_t lo, uintptr_t hi) {
  size_t len = hi - lo;
  void* fresh = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (fresh == MAP_FAILED) return false;
  std::memcpy(fresh, reinterpret_cast<void*>(lo), len);
  void* moved = mremap(fresh, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(lo));
  if (moved == MAP_FAILED) {
    munmap(fresh, len);
    return false;
  }
  g_copied.fetch_add(static_cast<int64_t>(len), std::memory_order_relaxed);
  return true;
}

// The bounds of the mapping holding addr, if it is a zerrow kernel-module file
// mapping: read from /proc/self/maps with raw syscalls only (signal-safe).
// Parts of a guarded range may have been unmapped or mapped anew since it was
// guarded; only this mapping may be replaced.
bool ZerrowMappingAt(uintptr_t addr, uintptr_t* start, uintptr_t* end) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096];
  char line[512];
  size_t len = 0;
  bool found = false, done = false;
  while (!done) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    for (ssize_t i = 0; i < n && !done; ++i) {
      char c = buf[i];
      if (c != '\n') {
        if (len + 1 < sizeof(line)) line[len++] = c;
        continue;
      }
      line[len] = '\0';
      uintptr_t lo = 0, hi = 0;
      size_t j = 0;
      auto hex = [&](uintptr_t* v) {
        for (; j < len; ++j) {
          char h = line[j];
          int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
          if (d < 0) break;
          *v = *v * 16 + static_cast<uintptr_t>(d);
        }
      };
      hex(&lo);
      ++j;  // '-'
      hex(&hi);
      if (addr >= lo && addr < hi) {
        done = true;
        found = std::strstr(line, " zerrow:[") != nullptr;  // kmod files, not /memfd:zerrow
        *start = lo;
        *end = hi;
      }
      len = 0;
    }
  }
  close(fd);
  return found;
}

void Chain(int sig, siginfo_t* info, void* ctx) {
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) {
      g_previous.sa_sigaction(sig, info, ctx);
      return;
    }
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  // Default action: restore it and return; the faulting instruction faults again.
  signal(sig, SIG_DFL);
}

// 1: handled, the write can retry; 0: not a guarded write.
int Fix(uintptr_t addr) {
  for (size_t i = g_used.load(std::memory_order_acquire); i-- > 0;) {
    uintptr_t s = g_ranges[i].start.load(std::memory_order_acquire);
    uintptr_t e = g_ranges[i].end.load(std::memory_order_acquire);
    if (addr < s || addr >= e) continue;
    size_t chunk = ((addr & ~(kChunk - 1)) - (s & ~(kChunk - 1))) / kChunk;
    std::atomic<uint64_t>& word = g_ranges[i].private_chunks[chunk / 64];
    const uint64_t bit = uint64_t{1} << (chunk % 64);
    while (g_fix_lock.test_and_set(std::memory_order_acquire)) {
    }
    int handled = 0;
    if (word.load(std::memory_order_relaxed) & bit) {
      // Another thread copied this chunk while we waited: retry the write once.
      handled = t_last_fault != addr;
    } else if (uintptr_t ms, me; ZerrowMappingAt(addr, &ms, &me)) {
      uintptr_t lo = addr & ~(kChunk - 1), hi = lo + kChunk;
      lo = lo < s ? s : lo;
      lo = lo < ms ? ms : lo;
      hi = hi > e ? e : hi;
      hi = hi > me ? me : hi;
      if (MakePrivate(lo, hi)) {
        word.fetch_or(bit, std::memory_order_relaxed);
        handled = 1;
      }
    }
    g_fix_lock.clear(std::memory_order_release);
    return handled;
  }
  return 0;
}

void Handler(int sig, siginfo_t* info, void* ctx) {
  auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  if (info->si_code == SEGV_ACCERR) {
    int saved = errno;
    int handled = Fix(addr);
    errno = saved;
    if (handled) {
      t_last_fault = addr;
      return;
    }
  }
  t_last_fault = 0;
  Chain(sig, info, ctx);
}

arrow::Status InstallHandler() {
  if (OurHandlerInstalled()) return arrow::Status::OK();
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = Handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  struct sigaction previous;
  if (sigaction(SIGSEGV, &sa, &previous) != 0)
    return ErrnoError("installing the SIGSEGV handler");
  if (!((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction == Handler)) g_previous = previous;
  return arrow::Status::OK();
}

}  // namespace

arrow::Status GuardReadOnlyRange(void* addr, size_t len) {
  std::lock_guard lock(g_register_mu);
  // Someone (Python's faulthandler, say) may have replaced our handler since.
  ARROW_RETURN_NOT_OK(InstallHandler());
  size_t n = g_used.load(std::memory_order_relaxed);
  if (n == kMaxRanges) return arrow::Status::CapacityError("zerrow: too many guarded ranges");
  auto s = reinterpret_cast<uintptr_t>(addr);
  size_t chunks = ((s + len - 1) >> 21) - (s >> 21) + 1;
  auto* bits = new std::atomic<uint64_t>[(chunks + 63) / 64];
  for (size_t i = 0; i < (chunks + 63) / 64; ++i) bits[i].store(0, std::memory_order_relaxed);
  g_ranges[n].private_chunks = bits;
  g_ranges[n].start.store(s, std::memory_order_relaxed);
  g_ranges[n].end.store(s + len, std::memory_order_relaxed);
  g_used.store(n + 1, std::memory_order_release);
  return arrow::Status::OK();
}

void EnsureCowHandler() {
  if (g_used.load(std::memory_order_acquire) == 0) return;
  std::lock_guard lock(g_register_mu);
  (void)InstallHandler();
}

bool CowRangesGuarded() { return g_used.load(std::memory_order_acquire) != 0; }

int64_t CowBytesCopied() { return g_copied.load(std::memory_order_relaxed); }

}  // namespace zerrow
