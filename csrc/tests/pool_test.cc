// C++ core tests, run under AddressSanitizer and UBSan in CI (meson -Dcore_tests=true -Dsanitize_tests=true).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include <arrow/array/builder_primitive.h>
#include <arrow/table.h>

#include "arena.h"
#include "segment_heap.h"
#include "segment_registry.h"
#include "share_export.h"
#include "share_import.h"
#include "shared_object.h"
#include "zerrow_pool.h"

using zerrow::Arena;
using zerrow::SegmentHeap;
using zerrow::SegmentRegistry;
using zerrow::ZerrowPool;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)
#define CHECK_OK(expr) CHECK((expr).ok())

static uint8_t* Alloc(ZerrowPool* pool, int64_t size, int64_t align = 64) {
  uint8_t* p = nullptr;
  auto st = pool->Allocate(size, align, &p);
  if (!st.ok()) {
    std::fprintf(stderr, "allocate %lld: %s\n", static_cast<long long>(size), st.ToString().c_str());
    std::abort();
  }
  return p;
}

static void TestAlignmentAndZeroSize(ZerrowPool* pool) {
  for (int64_t size : {1, 63, 64, 100, 4096, 40000, 1 << 20}) {
    for (int64_t align : {64, 128, 4096, 1 << 16}) {
      uint8_t* p = Alloc(pool, size, align);
      CHECK(reinterpret_cast<uintptr_t>(p) % align == 0);
      CHECK(SegmentRegistry::Global().Resolve(p).has_value());
      std::memset(p, 0xAB, size);
      pool->Free(p, size, align);
    }
  }
  uint8_t* z = Alloc(pool, 0);
  CHECK(z != nullptr && reinterpret_cast<uintptr_t>(z) % 64 == 0);
  pool->Free(z, 0, 64);
}

static void TestStats(ZerrowPool* pool) {
  int64_t before = pool->bytes_allocated(), n = pool->num_allocations(), total = pool->total_bytes_allocated();
  uint8_t* a = Alloc(pool, 1000);
  uint8_t* b = Alloc(pool, 100000);
  CHECK(pool->bytes_allocated() == before + 101000);
  CHECK(pool->num_allocations() == n + 2);
  CHECK(pool->total_bytes_allocated() == total + 101000);
  CHECK(pool->max_memory() >= before + 101000);
  pool->Free(a, 1000, 64);
  pool->Free(b, 100000, 64);
  CHECK(pool->bytes_allocated() == before);
}

static void TestRealloc(ZerrowPool* pool) {
  // Small growth across classes, large growth, shrink: contents preserved.
  uint8_t* p = Alloc(pool, 100);
  for (int i = 0; i < 100; ++i) p[i] = static_cast<uint8_t>(i);
  int64_t size = 100;
  for (int64_t next : {200, 5000, 70000, 1 << 20, 8 << 20, 3 << 20, 50000, 10}) {
    CHECK_OK(pool->Reallocate(size, next, 64, &p));
    for (int i = 0; i < 10; ++i) CHECK(p[i] == static_cast<uint8_t>(i));
    size = next;
  }
  pool->Free(p, size, 64);
  // A large buffer with free space after it grows in place.
  auto in_place = pool->Stats().realloc_in_place;
  uint8_t* big = Alloc(pool, 64 << 20);
  uint8_t* before = big;
  CHECK_OK(pool->Reallocate(64 << 20, 96 << 20, 64, &big));
  CHECK(big == before);
  CHECK(pool->Stats().realloc_in_place == in_place + 1);
  pool->Free(big, 96 << 20, 64);
}

static void TestReuse(ZerrowPool* pool) {
  uint8_t* a = Alloc(pool, 1 << 20);
  pool->Free(a, 1 << 20, 64);
  uint8_t* b = Alloc(pool, 1 << 20);
  CHECK(a == b);  // best fit returns the freed extent
  pool->Free(b, 1 << 20, 64);
}

static void TestFreezeAndScope(ZerrowPool* pool) {
  uint64_t token = pool->PushScope();
  uint8_t* keep = Alloc(pool, 200000);
  uint8_t* temp = Alloc(pool, 200000);
  uint8_t* small_keep = Alloc(pool, 100);
  uint8_t* small_temp = Alloc(pool, 100);
  std::memset(keep, 1, 200000);
  std::memset(temp, 0x5E, 200000);
  std::memset(small_temp, 0x5E, 100);
  pool->Free(temp, 200000, 64);
  pool->Free(small_temp, 100, 64);
  auto r = SegmentRegistry::Global().Resolve(keep);
  CHECK(r.has_value() && r->heap != nullptr);
  CHECK_OK(pool->Freeze(r->heap, /*seal=*/false));
  CHECK(r->heap->frozen());
  // Freed bytes of a frozen segment read as zeros; live ones are intact.
  CHECK(temp[0] == 0 && temp[199999] == 0);
  CHECK(small_temp[0] == 0 && small_temp[99] == 0);
  CHECK(keep[0] == 1 && keep[199999] == 1);
  // New allocations avoid the frozen segment.
  uint8_t* fresh = Alloc(pool, 200000);
  CHECK(!r->segment->contains(fresh));
  uint8_t* fresh_small = Alloc(pool, 100);
  CHECK(!r->segment->contains(fresh_small));
  pool->Free(fresh, 200000, 64);
  pool->Free(fresh_small, 100, 64);
  CHECK_OK(pool->PopScope(token));
  int64_t segments = pool->Stats().segments;
  pool->Free(keep, 200000, 64);
  pool->Free(small_keep, 100, 64);
  // The frozen, emptied segment is unmapped.
  CHECK(pool->Stats().segments < segments);
  CHECK(!pool->PopScope(token).ok());
}

// A frozen, unsealed segment emptied here is lent while another open file
// description of it exists, and comes back (warm, zeroed) once none does.
static void TestLendAndReclaim(ZerrowPool* pool) {
  constexpr int64_t kSize = 4 << 20;
  uint64_t token = pool->PushScope();
  uint8_t* shared = Alloc(pool, kSize);
  std::memset(shared, 0x7A, kSize);
  auto r = SegmentRegistry::Global().Resolve(shared);
  CHECK(r.has_value() && r->heap != nullptr);
  CHECK_OK(pool->Freeze(r->heap, /*seal=*/false, /*keep_free=*/true));
  auto reader_fd = r->segment->OpenReadOnly();  // what a consumer would hold
  CHECK(reader_fd.ok());
  const uint64_t ino = r->segment->ino();
  CHECK_OK(pool->PopScope(token));
  const int64_t reclaimed0 = pool->Stats().segments_reclaimed;
  pool->Free(shared, kSize, 64);
  CHECK(pool->Stats().lent_segments >= 1);
  // A new scope needs a segment: the lent one is held elsewhere and stays lent.
  token = pool->PushScope();
  uint8_t* other = Alloc(pool, 100);
  CHECK(SegmentRegistry::Global().Resolve(other)->segment->ino() != ino);
  CHECK(pool->Stats().segments_reclaimed == reclaimed0);
  CHECK_OK(pool->PopScope(token));
  pool->Free(other, 100, 64);
  close(*reader_fd);
  // Now it is ours alone: the next segment taken is reclaimed, and a large
  // allocation lands on its resident pages, which read as zeros.
  token = pool->PushScope();
  uint8_t* again = Alloc(pool, kSize);
  CHECK(pool->Stats().segments_reclaimed == reclaimed0 + 1);
  auto r2 = SegmentRegistry::Global().Resolve(again);
  CHECK(r2.has_value() && r2->segment->ino() == ino);
  CHECK(again[0] == 0 && again[kSize - 1] == 0);
  CHECK_OK(pool->PopScope(token));
  pool->Free(again, kSize, 64);
}

// Spares handed out as the test sets them (once each), recording what the arena asked for.
class FakeSpares final : public zerrow::SpareHeaps {
 public:
  SegmentHeap* warm = nullptr;
  SegmentHeap* cold = nullptr;
  std::vector<size_t> warm_targets, cold_caps;
  SegmentHeap* TakeCold(size_t, size_t max_resident) override {
    cold_caps.push_back(max_resident);
    return std::exchange(cold, nullptr);
  }
  SegmentHeap* TakeWarm(size_t, size_t target, size_t) override {
    warm_targets.push_back(target);
    return std::exchange(warm, nullptr);
  }
};

// A detached 64 MiB heap whose first `warm` bytes are resident: one dirty free extent.
static SegmentHeap* MakeSpare(SegmentRegistry& registry, size_t warm) {
  auto segment = zerrow::Segment::Create(size_t{64} << 20).ValueOrDie();
  std::memset(segment->base(), 1, warm);
  auto* heap = new SegmentHeap(nullptr, segment);
  registry.AddHeap(heap);
  heap->Thaw();
  return heap;
}

static size_t DirtyBytes(const SegmentHeap* heap) { return heap->DirtyFit(1, SIZE_MAX, /*longest=*/true); }

// A hinted scope's shortfall shrinks by the warm memory of every spare it
// adopts, the cold one its first slab took included, and once it is covered
// no further warm spare is asked for.
static void TestHintedScopeCountsEverySpare() {
  constexpr size_t kMiB = size_t{1} << 20, kExpected = 32 * kMiB;
  SegmentRegistry registry;
  FakeSpares spares;
  std::vector<std::pair<uint8_t*, size_t>> live;
  Arena arena(&registry, zerrow::ArenaOptions{}, &spares);
  auto alloc = [&](size_t size) {
    uint8_t* p = nullptr;
    CHECK_OK(arena.Allocate(size, 64, &p));
    live.emplace_back(p, size);
  };
  arena.ExpectBytes(kExpected);
  spares.cold = MakeSpare(registry, 2 * kMiB);
  const size_t cold_dirty = DirtyBytes(spares.cold);
  alloc(100);  // first slab: no warm spare covers the hint, so the coldest
  CHECK((spares.warm_targets == std::vector<size_t>{kExpected}));
  CHECK((spares.cold_caps == std::vector<size_t>{3 * kExpected}));  // SpareCapLocked: 2x, at least +64 MiB
  spares.warm = MakeSpare(registry, 8 * kMiB);
  const size_t warm_dirty = DirtyBytes(spares.warm);
  alloc(16 * kMiB);  // adopts the 8 MiB warm spare, then asks for the rest in vain
  CHECK((spares.warm_targets ==
         std::vector<size_t>{kExpected, kExpected - cold_dirty, kExpected - cold_dirty - warm_dirty}));
  spares.warm = MakeSpare(registry, 24 * kMiB);
  alloc(40 * kMiB);  // adopts it: the hint is covered, nothing more is asked for
  CHECK(spares.warm_targets.size() == 4 && spares.warm_targets.back() == 40 * kMiB);
  CHECK(spares.warm == nullptr && spares.cold_caps.size() == 1);
  for (auto [p, size] : live) {
    zerrow::BadFree bad = zerrow::BadFree::kNone;
    size_t actual = 0;
    arena.Free(registry.Resolve(p)->heap, p, size, 64, &bad, &actual);
    CHECK(bad == zerrow::BadFree::kNone);
  }
}

static void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

// The sharing layer works on the pool it is given: a table built in a pool of
// its own, over a registry of its own, is referenced in place when shared
// through that pool (freezing its segment, not one of the process pool's) and
// copied when shared through the process pool, which does not know its memory;
// attached through the other pool, its mappings are registered there only.
static void TestShareThroughAnotherPool() {
  SegmentRegistry registry;
  {
    ZerrowPool other(registry);
    ZerrowPool* global = ZerrowPool::Instance();
    const int64_t global_frozen = global->Stats().frozen_segments;
    std::shared_ptr<arrow::Table> table;
    {
      arrow::Int64Builder builder(&other);
      for (int64_t i = 0; i < 10000; ++i) CHECK_OK(builder.Append(i * 7));
      auto array = builder.Finish().ValueOrDie();
      table = arrow::Table::Make(arrow::schema({arrow::field("x", arrow::int64())}), {array});
    }
    CHECK(other.bytes_allocated() >= 80000);
    CHECK(!SegmentRegistry::Global().Resolve(table->column(0)->chunk(0)->data()->buffers[1]->data()).has_value());

    auto copied = zerrow::Share(*global, zerrow::FromTable(table), zerrow::ShareOptions{/*seal=*/false});
    CHECK(copied.ok());
    if (copied.ok()) {
      CHECK(copied->bytes_zero_copy == 0 && copied->bytes_copied == copied->nbytes);
      CloseAll(copied->fds);
    }
    CHECK(other.Stats().frozen_segments == 0);

    auto shared = zerrow::Share(other, zerrow::FromTable(table), zerrow::ShareOptions{/*seal=*/false});
    CHECK(shared.ok());
    if (shared.ok()) {
      CHECK(shared->bytes_zero_copy == shared->nbytes && shared->bytes_copied == 0);
      CHECK(other.Stats().frozen_segments == 1);
      CHECK(global->Stats().frozen_segments == global_frozen);
      auto attached = zerrow::Attach(other, shared->descriptor, shared->fds, zerrow::AttachOptions{});
      CHECK(attached.ok());
      if (attached.ok()) {
        auto back = zerrow::ToTable(*attached);
        CHECK(back.ok() && (*back)->Equals(*table));
        const uint8_t* data = attached->columns[0][0]->buffers[1]->data();
        auto in_other = registry.Resolve(data);
        CHECK(in_other.has_value() && in_other->heap == nullptr);  // attached, not a heap of its own
        CHECK(!SegmentRegistry::Global().Resolve(data).has_value());
      }
      CloseAll(shared->fds);
    }
    table.reset();
    CHECK(other.bytes_allocated() == 0);
  }
  // The pool is gone, and with it every segment it had registered.
  int left = 0;
  registry.ForEachHeap([&](zerrow::SegmentHeap*) { ++left; });
  CHECK(left == 0);
}

static void TestThreads(ZerrowPool* pool) {
  constexpr int kThreads = 4, kIters = 20000;
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<std::pair<uint8_t*, int64_t>> live;
      for (int i = 0; i < kIters; ++i) {
        int op = rng() % 3;
        if (op == 0 || live.empty()) {
          int64_t size = (rng() % 8 == 0) ? 33000 + rng() % 300000 : 1 + rng() % 3000;
          uint8_t* p = Alloc(pool, size);
          std::memset(p, t + 1, size);
          live.emplace_back(p, size);
        } else if (op == 1) {
          auto& [p, size] = live[rng() % live.size()];
          int64_t next = 1 + rng() % 100000;
          if (!pool->Reallocate(size, next, 64, &p).ok()) bad++;
          for (int64_t j = 0; j < std::min(size, next); j += 97)
            if (p[j] != t + 1) bad++;
          if (next > size) std::memset(p + size, t + 1, next - size);
          size = next;
        } else {
          size_t k = rng() % live.size();
          auto [p, size] = live[k];
          for (int64_t j = 0; j < size; j += 61)
            if (p[j] != t + 1) bad++;
          pool->Free(p, size, 64);
          live[k] = live.back();
          live.pop_back();
        }
      }
      for (auto [p, size] : live) pool->Free(p, size, 64);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(bad.load() == 0);
}

// `pool_test bad-free KIND`: one invalid Free or Reallocate (what
// ZERROW_DEBUG_MEMORY_POOL reports), then checks that the pool was not
// corrupted by it: "survived" on stdout if so.
static int BadFree(ZerrowPool* pool, const std::string& kind) {
  uint8_t* keep = Alloc(pool, 100);
  if (kind == "not-ours") {
    std::vector<uint8_t> heap_memory(100);
    pool->Free(heap_memory.data(), 100, 64);
  } else if (kind == "double-small" || kind == "double-large") {
    const int64_t size = kind == "double-small" ? 100 : 100000;
    uint8_t* p = Alloc(pool, size);
    pool->Free(p, size, 64);
    pool->Free(p, size, 64);
    // Freed twice, it must not be handed out twice.
    uint8_t* a = Alloc(pool, size);
    uint8_t* b = Alloc(pool, size);
    CHECK(a != b);
    pool->Free(a, size, 64);
    pool->Free(b, size, 64);
  } else if (kind == "interior") {
    pool->Free(keep + 8, 100, 64);
    uint8_t* other = Alloc(pool, 100);
    CHECK(other != keep);
    pool->Free(other, 100, 64);
  } else if (kind == "wrong-size") {
    uint8_t* p = Alloc(pool, 100000);
    pool->Free(p, 5000, 64);
  } else if (kind == "realloc-freed") {
    uint8_t* p = Alloc(pool, 100000);
    pool->Free(p, 100000, 64);
    // Refused when reported; otherwise a copy of whatever the pages hold.
    if (pool->Reallocate(100000, 200000, 64, &p).ok()) pool->Free(p, 200000, 64);
  } else {
    std::fprintf(stderr, "unknown kind %s\n", kind.c_str());
    return 2;
  }
  pool->Free(keep, 100, 64);
  std::printf("%s\n", failures ? "corrupted" : "survived");
  return failures ? 1 : 0;
}

int main(int argc, char** argv) {
  ZerrowPool* pool = ZerrowPool::Instance();
  if (argc == 3 && std::string(argv[1]) == "bad-free") return BadFree(pool, argv[2]);
  TestAlignmentAndZeroSize(pool);
  TestStats(pool);
  TestRealloc(pool);
  TestReuse(pool);
  TestFreezeAndScope(pool);
  TestLendAndReclaim(pool);
  TestHintedScopeCountsEverySpare();
  TestThreads(pool);
  TestShareThroughAnotherPool();
  pool->ReleaseUnused();
  CHECK(pool->bytes_allocated() == 0);
  std::printf("pool_test: %s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
