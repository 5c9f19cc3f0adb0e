#include "arena.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>

#include "populate.h"
#include "segment_registry.h"

namespace zerrow {
namespace {

constexpr size_t kHugeAlign = size_t{2} << 20;
constexpr int64_t kMinRetain = int64_t{256} << 20;
constexpr int kWarmHeadTries = 8;  // longest resident runs tried as the head of a large allocation

int MyShard(int shards) {
  static std::atomic<int> next{0};
  thread_local int shard = next.fetch_add(1, std::memory_order_relaxed);
  return shard % shards;
}

void RemoveFrom(std::vector<Span*>& v, Span* s) {
  auto it = std::find(v.begin(), v.end(), s);
  if (it != v.end()) {
    *it = v.back();
    v.pop_back();
  }
}

}  // namespace

Arena::Arena(SegmentRegistry* registry, ArenaOptions options, SpareHeaps* spares)
    : registry_(registry), options_(options), spares_(spares) {}

Arena::~Arena() {
  for (SegmentHeap* heap : heaps_) {
    registry_->RemoveHeap(heap);
    for (Span* s : heap->slabs_) delete s;
    delete heap;
  }
}

arrow::Status Arena::Allocate(size_t size, size_t alignment, uint8_t** out, bool populate) {
  if (size <= kMaxSmall && alignment <= kMinAlignment) return AllocateSmall(size, out);
  return AllocateLarge(size, alignment, out, populate);
}

arrow::Status Arena::AddHeap(size_t at_least) {
  size_t capacity = options_.segment_capacity;
  if (at_least > capacity / 4) capacity = RoundUp(at_least * 2, kHugeAlign);  // room to grow in place
  if (spares_ != nullptr) {
    size_t shortfall, cold_cap;
    {
      std::lock_guard lock(large_mu_);
      shortfall = ShortfallLocked();
      cold_cap = SpareCapLocked(std::max(at_least, shortfall));
    }
    // A scope that says what it will take gets it from one warm spare, its
    // first slab included (the coldest spare would be a second one); and no
    // spare much warmer than that: a new segment's few fresh pages cost less
    // than stranding (or, under a budget, punching) a warm spare's.
    if (shortfall != 0 && AdoptWarmSpare(at_least)) return arrow::Status::OK();
    if (SegmentHeap* heap = spares_->TakeCold(at_least, cold_cap)) {
      std::lock_guard lock(large_mu_);
      AdoptLocked(heap);
      return arrow::Status::OK();
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto segment, Segment::Create(capacity));
  auto* heap = new SegmentHeap(this, std::move(segment));
  registry_->AddHeap(heap);
  std::lock_guard lock(large_mu_);
  heaps_.push_back(heap);
  InsertFreeLocked(heap, 0, capacity, /*dirty=*/false);
  CheckInvariantsLocked();
  return arrow::Status::OK();
}

bool Arena::AdoptWarmSpare(size_t need) {
  if (spares_ == nullptr) return false;
  size_t target, cap;
  {
    std::lock_guard lock(large_mu_);
    const size_t shortfall = ShortfallLocked();
    // Once warm memory for what the scope expects is adopted, the rest comes
    // from fresh pages of our own heaps, leaving other spares whole; so does
    // a shortfall that only a much warmer spare would cover (SpareCapLocked).
    if (expected_bytes_ != 0 && shortfall == 0) return false;
    target = std::max(need, shortfall);
    cap = SpareCapLocked(target);
  }
  SegmentHeap* heap = spares_->TakeWarm(need, target, cap);
  if (heap == nullptr) return false;
  std::lock_guard lock(large_mu_);
  AdoptLocked(heap);
  return true;
}

size_t Arena::ShortfallLocked() const {
  return expected_bytes_ > adopted_warm_ ? expected_bytes_ - adopted_warm_ : 0;
}

size_t Arena::SpareCapLocked(size_t target) const {
  // Twice the shortfall, and at least 64 MiB more: a spare adopted for a
  // small scope is frozen with the scope's output when that is shared, and
  // its warm memory with it (stranded until the readers let go, or punched
  // under a memory budget).
  if (expected_bytes_ == 0) return SIZE_MAX;
  return std::max(2 * target, target + (size_t{64} << 20));
}

bool Arena::TakeExtentLocked(size_t need, Fit fit, SegmentHeap** heap, size_t* offset, bool* dirty) {
  const IndexKey key{need, nullptr, 0};
  auto warm = dirty_index_.lower_bound(key);
  auto fresh = clean_index_.lower_bound(key);
  const bool has_warm = warm != dirty_index_.end(), has_fresh = fresh != clean_index_.end();
  IndexKey chosen;
  if (has_warm) {
    chosen = *warm;
  } else if (has_fresh && fit != Fit::kWarm) {
    chosen = *fresh;
  } else {
    return false;
  }
  auto [len, h, off] = chosen;
  auto ext = h->free_extents_.find(off);
  bool was_dirty = ext->second.dirty, stale = ext->second.stale;
  EraseFreeLocked(h, ext);
  if (len > need) InsertFreeLocked(h, off + need, len - need, was_dirty, stale);
  if (stale) std::memset(h->segment_->base() + off, 0, need);
  *heap = h;
  *offset = off;
  *dirty = was_dirty;
  return true;
}

bool Arena::TakeWarmHeadLocked(size_t need, SegmentHeap** heap, size_t* offset, size_t* warm) {
  int tries = 0;
  for (auto it = dirty_index_.rbegin(); it != dirty_index_.rend() && tries < kWarmHeadTries; ++it, ++tries) {
    auto [len, h, off] = *it;
    // Dirty neighbours merge, so a free extent right after a dirty one is clean.
    auto next = h->free_extents_.find(off + len);
    if (next == h->free_extents_.end() || len + next->second.length < need) continue;
    const size_t total = len + next->second.length;
    auto ext = h->free_extents_.find(off);
    const bool stale = ext->second.stale;
    EraseFreeLocked(h, next);
    EraseFreeLocked(h, ext);  // `it` is invalid from here on
    if (total > need) InsertFreeLocked(h, off + need, total - need, /*dirty=*/false);
    if (stale) std::memset(h->segment_->base() + off, 0, len);
    *heap = h;
    *offset = off;
    *warm = len;
    return true;
  }
  return false;
}

void Arena::InsertFreeLocked(SegmentHeap* heap, size_t offset, size_t length, bool dirty, bool stale) {
  // Neighbours merge only when equally dirty: a freed extent must not make the
  // untouched rest of a segment count as resident, nor be punched with it.
  auto& fm = heap->free_extents_;
  auto next = fm.find(offset + length);
  if (next != fm.end() && next->second.dirty == dirty) {
    length += next->second.length;
    stale |= next->second.stale;
    EraseFreeLocked(heap, next);
  }
  auto prev = fm.lower_bound(offset);
  if (prev != fm.begin()) {
    --prev;
    if (prev->first + prev->second.length == offset && prev->second.dirty == dirty) {
      offset = prev->first;
      length += prev->second.length;
      stale |= prev->second.stale;
      EraseFreeLocked(heap, prev);
    }
  }
  fm[offset] = FreeExtent{length, dirty, stale && dirty};
  IndexOf(dirty).insert(IndexKey{length, heap, offset});
  if (dirty) retained_.fetch_add(static_cast<int64_t>(length), std::memory_order_relaxed);
}

void Arena::PunchLocked(SegmentHeap* heap, size_t offset) {
  auto it = heap->free_extents_.find(offset);
  if (it == heap->free_extents_.end() || !it->second.dirty) return;
  PunchTailLocked(heap, offset, it->second.length);
}

void Arena::PunchTailLocked(SegmentHeap* heap, size_t offset, size_t cut) {
  auto it = heap->free_extents_.find(offset);
  if (it == heap->free_extents_.end() || !it->second.dirty) return;
  const size_t length = it->second.length;
  const bool stale = it->second.stale;
  cut = std::min(cut, length);
  if (!heap->segment_->Punch(offset + length - cut, cut).ok()) return;
  EraseFreeLocked(heap, it);
  if (cut < length) InsertFreeLocked(heap, offset, length - cut, /*dirty=*/true, stale);
  InsertFreeLocked(heap, offset + length - cut, cut, /*dirty=*/false);
}

void Arena::EraseFreeLocked(SegmentHeap* heap, std::map<size_t, FreeExtent>::iterator it) {
  IndexOf(it->second.dirty).erase(IndexKey{it->second.length, heap, it->first});
  if (it->second.dirty)
    retained_.fetch_sub(static_cast<int64_t>(it->second.length), std::memory_order_relaxed);
  heap->free_extents_.erase(it);
}

arrow::Status Arena::AllocateSmall(size_t size, uint8_t** out) {
  const int cls = SizeClassOf(size);
  const size_t slot_size = ClassSize(cls);
  const int shard_index = MyShard(kShards);
  Shard& shard = shards_[shard_index];
  for (;;) {
    {
      std::lock_guard lock(shard.mu);
      auto& bin = shard.partial[cls];
      Span* span = bin.empty() ? nullptr : bin.back();
      if (span == nullptr) {
        std::lock_guard large(large_mu_);
        SegmentHeap* heap;
        size_t off;
        bool dirty;
        if (TakeExtentLocked(SlabBytes(cls), Fit::kAny, &heap, &off, &dirty)) {
          span = new Span();
          span->heap = heap;
          span->offset = off;
          span->length = SlabBytes(cls);
          span->size_class = cls;
          span->shard = shard_index;
          span->slot_count = static_cast<uint32_t>(span->length / slot_size);
          span->live_slots.assign((span->slot_count + 63) / 64, 0);
          for (size_t p = 0; p < span->length / kPageSize; ++p) heap->pages_.Set(off / kPageSize + p, span);
          heap->slabs_.push_back(span);
          bin.push_back(span);
          span->in_partial_list = true;
          CheckInvariantsLocked();
        }
      }
      if (span != nullptr) {
        uint32_t slot;
        if (!span->free_slots.empty()) {
          slot = span->free_slots.back();
          span->free_slots.pop_back();
        } else {
          slot = span->next_unused++;
        }
        span->set_slot_live(slot, true);
        if (++span->live == span->slot_count) {
          bin.pop_back();
          span->in_partial_list = false;
        }
        SegmentHeap* heap = span->heap;
        heap->live_allocations_.fetch_add(1, std::memory_order_relaxed);
        heap->live_bytes_.fetch_add(static_cast<int64_t>(slot_size), std::memory_order_relaxed);
        NoteLive(static_cast<int64_t>(slot_size));
        uint8_t* p = heap->segment_->base() + span->offset + size_t{slot} * slot_size;
        // The slot's tail may hold an earlier owner's bytes; a consumer of a
        // shared buffer must see zeros there.
        if (size < slot_size) std::memset(p + size, 0, slot_size - size);
        *out = p;
        return arrow::Status::OK();
      }
    }
    ARROW_RETURN_NOT_OK(AddHeap(SlabBytes(cls)));
  }
}

arrow::Status Arena::AllocateLarge(size_t size, size_t alignment, uint8_t** out, bool populate) {
  const size_t extra = alignment > kPageSize ? alignment : 0;
  const size_t need = RoundUp(std::max<size_t>(size, 1) + extra, kPageSize);
  // Resident memory first: ours, then a warm spare's, then a resident run
  // continued by fresh pages; only then fresh pages alone.
  Fit fit = Fit::kWarm;
  uint8_t* fresh_from = nullptr;  // where the never-touched pages of the allocation begin
  for (;;) {
    {
      std::lock_guard lock(large_mu_);
      SegmentHeap* heap;
      size_t off, warm = 0;
      bool dirty = false;
      bool got = TakeExtentLocked(need, Fit::kWarm, &heap, &off, &dirty);
      if (!got && fit == Fit::kAny) {
        // A resident run continued by fresh pages, before fresh pages alone.
        got = dirty = TakeWarmHeadLocked(need, &heap, &off, &warm);
        if (!got) got = TakeExtentLocked(need, Fit::kAny, &heap, &off, &dirty);
      }
      if (got) {
        auto* span = new Span();
        span->heap = heap;
        span->offset = off;
        span->length = need;
        uint8_t* start = heap->segment_->base() + off;
        uint8_t* p = extra ? reinterpret_cast<uint8_t*>(RoundUp(reinterpret_cast<uintptr_t>(start), alignment))
                           : start;
        span->start = static_cast<size_t>(p - heap->segment_->base());
        heap->pages_.Set(span->start / kPageSize, span);
        heap->live_allocations_.fetch_add(1, std::memory_order_relaxed);
        heap->live_bytes_.fetch_add(static_cast<int64_t>(need), std::memory_order_relaxed);
        NoteLive(static_cast<int64_t>(need));
        CheckInvariantsLocked();
        if (dirty) {
          if (p > start) std::memset(start, 0, static_cast<size_t>(p - start));
          std::memset(p + size, 0, static_cast<size_t>(start + need - p) - size);
        }
        *out = p;
        fresh_from = start + (!dirty ? 0 : warm != 0 ? warm : need);
        break;
      }
    }
    if (fit == Fit::kWarm) {
      if (!AdoptWarmSpare(need)) fit = Fit::kAny;
      continue;
    }
    ARROW_RETURN_NOT_OK(AddHeap(need));
  }
  // Fresh pages would fault in one by one as the caller writes them; one
  // populate call maps them all (outside the lock: it takes a while).
  if (populate && *out + size > fresh_from) {
    uint8_t* from = std::max(fresh_from, *out);
    PopulateFresh(from, static_cast<size_t>(*out + size - from));
  }
  return arrow::Status::OK();
}

BadFree Arena::CheckSlotLocked(const Span* span, const uint8_t* p, size_t size, size_t alignment, size_t* actual) {
  const size_t slot_size = ClassSize(span->size_class);
  const size_t rel = static_cast<size_t>(p - span->heap->segment_->base()) - span->offset;
  if (rel % slot_size != 0) return BadFree::kInterior;
  const size_t slot = rel / slot_size;
  if (slot >= span->slot_count || !span->slot_live(static_cast<uint32_t>(slot))) return BadFree::kNotLive;
  if (size > kMaxSmall || alignment > kMinAlignment || SizeClassOf(std::max<size_t>(size, 1)) != span->size_class) {
    *actual = slot_size;
    return BadFree::kWrongSize;
  }
  return BadFree::kNone;
}

BadFree Arena::CheckLargeLocked(const Span* span, const uint8_t* p, size_t size, size_t alignment, size_t* actual) {
  if (static_cast<size_t>(p - span->heap->segment_->base()) != span->start) return BadFree::kInterior;
  const size_t extra = alignment > kPageSize ? alignment : 0;
  const bool small = size <= kMaxSmall && alignment <= kMinAlignment;
  if (small || RoundUp(std::max<size_t>(size, 1) + extra, kPageSize) != span->length) {
    *actual = span->length;
    return BadFree::kWrongSize;
  }
  return BadFree::kNone;
}

BadFree Arena::Check(SegmentHeap* heap, const uint8_t* p, size_t size, size_t alignment, size_t* actual) {
  Span* span = heap->SpanAt(p);
  if (span == nullptr) return BadFree::kNotLive;
  if (span->is_slab()) {
    std::lock_guard lock(shards_[span->shard].mu);
    return CheckSlotLocked(span, p, size, alignment, actual);
  }
  std::lock_guard lock(large_mu_);
  return heap->SpanAt(p) == span ? CheckLargeLocked(span, p, size, alignment, actual) : BadFree::kNotLive;
}

bool Arena::Free(SegmentHeap* heap, uint8_t* p, size_t size, size_t alignment, BadFree* bad, size_t* actual) {
  Span* span = heap->SpanAt(p);
  if (span == nullptr) {  // not a live allocation: ignore rather than corrupt
    *bad = BadFree::kNotLive;
    return false;
  }
  if (span->is_slab()) {
    Shard& shard = shards_[span->shard];
    std::lock_guard lock(shard.mu);
    *bad = CheckSlotLocked(span, p, size, alignment, actual);
    if (*bad != BadFree::kNone && *bad != BadFree::kWrongSize) return false;  // a slot freed twice would be handed out twice
    const size_t slot_size = ClassSize(span->size_class);
    auto slot = static_cast<uint32_t>((static_cast<size_t>(p - heap->segment_->base()) - span->offset) / slot_size);
    span->set_slot_live(slot, false);
    span->free_slots.push_back(slot);
    --span->live;
    heap->live_bytes_.fetch_sub(static_cast<int64_t>(slot_size), std::memory_order_relaxed);
    live_bytes_.fetch_sub(static_cast<int64_t>(slot_size), std::memory_order_relaxed);
    if (!heap->frozen_.load(std::memory_order_acquire)) {
      auto& bin = shard.partial[span->size_class];
      if (!span->in_partial_list) {
        bin.push_back(span);
        span->in_partial_list = true;
      } else if (span->live == 0 && bin.size() > 1) {
        std::lock_guard large(large_mu_);
        ReleaseSlabLocked(shard, span);
      }
    }
  } else {
    std::lock_guard lock(large_mu_);
    if (heap->SpanAt(p) != span) {  // freed by another thread meanwhile
      *bad = BadFree::kNotLive;
      return false;
    }
    *bad = CheckLargeLocked(span, p, size, alignment, actual);
    if (*bad == BadFree::kInterior) return false;
    heap->pages_.Set(span->start / kPageSize, nullptr);
    heap->live_bytes_.fetch_sub(static_cast<int64_t>(span->length), std::memory_order_relaxed);
    live_bytes_.fetch_sub(static_cast<int64_t>(span->length), std::memory_order_relaxed);
    if (!heap->frozen_.load(std::memory_order_acquire)) {
      InsertFreeLocked(heap, span->offset, span->length, /*dirty=*/true);
      DecayLocked();
    }
    delete span;
    CheckInvariantsLocked();
  }
  int64_t left = heap->live_allocations_.fetch_sub(1, std::memory_order_acq_rel) - 1;
  return left == 0 && (heap->frozen_.load(std::memory_order_acquire) || retired());
}

void Arena::ReleaseSlabLocked(Shard& shard, Span* span) {
  SegmentHeap* heap = span->heap;
  RemoveFrom(shard.partial[span->size_class], span);
  RemoveFrom(heap->slabs_, span);
  for (size_t p = 0; p < span->length / kPageSize; ++p) heap->pages_.Set(span->offset / kPageSize + p, nullptr);
  InsertFreeLocked(heap, span->offset, span->length, /*dirty=*/true);
  delete span;
  CheckInvariantsLocked();
}

bool Arena::ResizeInPlace(SegmentHeap* heap, uint8_t* p, size_t old_size, size_t new_size,
                          size_t alignment) {
  if (alignment > kPageSize || new_size <= kMaxSmall) return false;
  std::lock_guard lock(large_mu_);
  if (heap->frozen_.load(std::memory_order_acquire)) return false;
  Span* span = heap->SpanAt(p);
  if (span == nullptr || span->is_slab()) return false;
  const size_t need = RoundUp(new_size, kPageSize);
  const auto delta = static_cast<int64_t>(need) - static_cast<int64_t>(span->length);
  if (need < span->length) {
    InsertFreeLocked(heap, span->offset + need, span->length - need, /*dirty=*/true);
  } else if (need > span->length) {
    // The free extents right after the span (dirty and clean ones alternate).
    const size_t grow = need - span->length;
    size_t end = span->offset + span->length, have = 0;
    for (auto it = heap->free_extents_.find(end); have < grow && it != heap->free_extents_.end() && it->first == end + have;
         it = heap->free_extents_.find(end + have)) {
      have += it->second.length;
    }
    if (have < grow) return false;
    size_t taken = 0;
    while (taken < grow) {
      auto it = heap->free_extents_.find(end + taken);
      size_t len = it->second.length;
      bool dirty = it->second.dirty, stale = it->second.stale;
      EraseFreeLocked(heap, it);
      if (taken + len > grow) InsertFreeLocked(heap, end + grow, taken + len - grow, dirty, stale);
      if (stale) std::memset(heap->segment_->base() + end + taken, 0, std::min(len, grow - taken));
      taken += len;
    }
  }
  span->length = need;
  heap->live_bytes_.fetch_add(delta, std::memory_order_relaxed);
  NoteLive(delta);
  CheckInvariantsLocked();
  if (new_size > old_size || need != new_size) std::memset(p + new_size, 0, need - new_size);
  return true;
}

void Arena::ZeroUnusedSlotsLocked(Span* span) {
  SegmentHeap* heap = span->heap;
  uint8_t* base = heap->segment_->base() + span->offset;
  const size_t slot_size = ClassSize(span->size_class);
  if (span->live == 0) {
    (void)heap->segment_->Punch(span->offset, span->length);
    return;
  }
  for (uint32_t s : span->free_slots) std::memset(base + size_t{s} * slot_size, 0, slot_size);
  // Never handed out, but the pages may be reused: zero the partial page, punch the rest.
  size_t unused = size_t{span->next_unused} * slot_size;
  size_t page_end = std::min(RoundUp(unused, kPageSize), span->length);
  std::memset(base + unused, 0, page_end - unused);
  (void)heap->segment_->Punch(span->offset + page_end, span->length - page_end);
}

arrow::Status Arena::Freeze(SegmentHeap* heap, bool seal, bool keep_free) {
  if (heap->inherited_) return arrow::Status::Invalid("zerrow: a segment inherited through fork() cannot be frozen");
  auto shard_locks = LockAllShards();
  std::lock_guard lock(large_mu_);
  ARROW_RETURN_NOT_OK(FreezeLocked(heap, /*punch_free=*/seal || !keep_free));
  if (seal && !heap->sealed_) {
    ARROW_RETURN_NOT_OK(heap->segment_->SealWrites());
    heap->sealed_ = true;
  }
  return arrow::Status::OK();
}

arrow::Status Arena::FreezeLocked(SegmentHeap* heap, bool punch_free) {
  if (heap->frozen_.load(std::memory_order_acquire)) return arrow::Status::OK();
  heap->frozen_.store(true, std::memory_order_release);
  for (Span* span : heap->slabs_) {
    if (span->in_partial_list) {
      RemoveFrom(shards_[span->shard].partial[span->size_class], span);
      span->in_partial_list = false;
    }
    ZeroUnusedSlotsLocked(span);
  }
  while (!heap->free_extents_.empty()) {
    auto it = heap->free_extents_.begin();
    if (it->second.dirty) {
      if (punch_free) {
        ARROW_RETURN_NOT_OK(heap->segment_->Punch(it->first, it->second.length));
      } else {
        std::memset(heap->segment_->base() + it->first, 0, it->second.length);
      }
    }
    EraseFreeLocked(heap, it);
  }
  CheckInvariantsLocked();
  // A frozen file never changes size, so a consumer's mapping can never go past its end.
  return heap->segment_->SealSize();
}

void Arena::LockForFork() {
  for (auto& shard : shards_) shard.mu.lock();
  large_mu_.lock();
}

void Arena::UnlockAfterFork() {
  large_mu_.unlock();
  for (int i = kShards; i-- > 0;) shards_[i].mu.unlock();
}

void Arena::FreezeAtFork(bool child) {
  // Both sides stop allocating from the heaps in use at fork(): in the child they
  // are the parent's, mapped copy-on-write; in the parent, the child reads the pages
  // it has not written from the same files, so what the parent frees there must be
  // neither reused nor punched while the child maps them. The free memory is
  // forgotten, untouched. In the parent an emptied heap is then lent, and comes
  // back once the lease probe finds no other holder: the child gone.
  for (auto& shard : shards_)
    for (auto& bin : shard.partial) {
      for (Span* span : bin) span->in_partial_list = false;
      bin.clear();
    }
  for (SegmentHeap* heap : heaps_) {
    if (child) heap->inherited_ = true;
    heap->frozen_.store(true, std::memory_order_release);
    while (!heap->free_extents_.empty()) EraseFreeLocked(heap, heap->free_extents_.begin());
  }
  CheckInvariantsLocked();
}

void Arena::DecayLocked() {
  // By default keep as much free memory resident as the arena ever had live:
  // a loop that allocates and frees big temporaries reuses warm pages instead
  // of faulting them in again, and the footprint stays within twice the peak.
  int64_t limit = options_.retain_bytes >= 0 ? options_.retain_bytes
                                             : std::max(kMinRetain, peak_live_bytes_.load(std::memory_order_relaxed));
  int64_t excess = retained_.load(std::memory_order_relaxed) - limit;
  if (excess <= 0) return;
  // A little below the bound, so that every free does not punch; only that
  // much, taken from the tails of the largest dirty extents (few syscalls).
  excess += limit / 16;
  std::vector<std::tuple<SegmentHeap*, size_t, size_t>> cuts;  // heap, extent offset, bytes to punch
  for (auto it = dirty_index_.rbegin(); it != dirty_index_.rend() && excess > 0; ++it) {
    auto [len, heap, off] = *it;
    size_t cut = std::min(len, RoundUp(static_cast<size_t>(excess), kPageSize));
    cuts.emplace_back(heap, off, cut);
    excess -= static_cast<int64_t>(cut);
  }
  for (auto [heap, off, cut] : cuts) PunchTailLocked(heap, off, cut);
}

void Arena::ReleaseRetained() {
  auto shard_locks = LockAllShards();
  std::lock_guard lock(large_mu_);
  for (int i = 0; i < kShards; ++i) {
    for (auto& bin : shards_[i].partial) {
      std::vector<Span*> empty;
      for (Span* s : bin)
        if (s->live == 0) empty.push_back(s);
      for (Span* s : empty) ReleaseSlabLocked(shards_[i], s);
    }
  }
  std::vector<std::pair<SegmentHeap*, size_t>> dirty;
  for (auto [len, heap, off] : dirty_index_) dirty.emplace_back(heap, off);
  for (auto [heap, off] : dirty) PunchLocked(heap, off);
  CheckInvariantsLocked();
}

void Arena::NoteLive(int64_t delta) {
  int64_t now = live_bytes_.fetch_add(delta, std::memory_order_relaxed) + delta;
  int64_t peak = peak_live_bytes_.load(std::memory_order_relaxed);
  while (now > peak && !peak_live_bytes_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void Arena::Retire() { retired_.store(true, std::memory_order_release); }

void Arena::Reopen() { retired_.store(false, std::memory_order_release); }

void Arena::ExpectBytes(size_t bytes) {
  std::lock_guard lock(large_mu_);
  expected_bytes_ = bytes;
  adopted_warm_ = 0;
}

std::vector<const void*> Arena::EmptyHeapBases(bool only_collectable) {
  std::lock_guard lock(large_mu_);
  std::vector<const void*> out;
  for (SegmentHeap* h : heaps_) {
    if (h->live_allocations_.load(std::memory_order_acquire) != 0) continue;
    if (only_collectable && !(h->frozen_.load() || retired())) continue;
    out.push_back(h->segment_->base());
  }
  return out;
}

std::array<std::unique_lock<std::mutex>, Arena::kShards> Arena::LockAllShards() {
  std::array<std::unique_lock<std::mutex>, kShards> locks;
  for (int i = 0; i < kShards; ++i) locks[i] = std::unique_lock(shards_[i].mu);
  return locks;
}

bool Arena::UnlinkEmptyHeapLocked(SegmentHeap* heap) {
  auto it = std::find(heaps_.begin(), heaps_.end(), heap);
  if (it == heaps_.end() || heap->live_allocations_.load(std::memory_order_acquire) != 0) return false;
  heaps_.erase(it);
  // Every slab is empty: its pages become a dirty free extent again.
  std::vector<Span*> slabs;
  slabs.swap(heap->slabs_);
  for (Span* s : slabs) {
    if (s->in_partial_list) RemoveFrom(shards_[s->shard].partial[s->size_class], s);
    for (size_t p = 0; p < s->length / kPageSize; ++p) heap->pages_.Set(s->offset / kPageSize + p, nullptr);
    InsertFreeLocked(heap, s->offset, s->length, /*dirty=*/true);
    delete s;
  }
  // The extent map stays with the heap (it says which parts are dirty).
  for (auto& [off, fe] : heap->free_extents_) {
    IndexOf(fe.dirty).erase(IndexKey{fe.length, heap, off});
    if (fe.dirty) retained_.fetch_sub(static_cast<int64_t>(fe.length), std::memory_order_relaxed);
  }
  CheckInvariantsLocked();
  return true;
}

bool Arena::DestroyHeapRegistryLocked(SegmentHeap* heap, bool only_collectable) {
  auto shard_locks = LockAllShards();
  std::lock_guard lock(large_mu_);
  if (only_collectable && !(heap->frozen_.load() || retired())) return false;
  if (!UnlinkEmptyHeapLocked(heap)) return false;
  registry_->RemoveHeapLocked(heap);
  delete heap;
  return true;
}

bool Arena::DetachHeapRegistryLocked(SegmentHeap* heap) {
  auto shard_locks = LockAllShards();
  std::lock_guard lock(large_mu_);
  const bool frozen = heap->frozen_.load(std::memory_order_acquire);
  if (frozen ? (heap->sealed_ || heap->inherited_) : !retired()) return false;
  if (!UnlinkEmptyHeapLocked(heap)) return false;
  heap->arena_ = nullptr;
  return true;
}

void Arena::AdoptLocked(SegmentHeap* heap) {
  // What the previous scope left must not reach this one's consumers: its
  // bytes are zeroed as they are handed out (cheaper than faulting fresh pages).
  size_t dirty = 0;
  for (auto& [off, fe] : heap->free_extents_) {
    fe.stale = fe.dirty;
    IndexOf(fe.dirty).insert(IndexKey{fe.length, heap, off});
    if (fe.dirty) dirty += fe.length;
  }
  retained_.fetch_add(static_cast<int64_t>(dirty), std::memory_order_relaxed);
  adopted_warm_ += dirty;
  heap->arena_ = this;
  heaps_.push_back(heap);
  CheckInvariantsLocked();
}

#ifdef ZERROW_DEBUG_INVARIANTS
namespace {
[[noreturn]] void Broken(const char* invariant, const SegmentHeap* heap, size_t offset) {
  std::fprintf(stderr, "zerrow: arena invariant broken: %s (heap %p, offset %zu)\n", invariant,
               static_cast<const void*>(heap), offset);
  std::abort();
}
}  // namespace

void Arena::CheckInvariantsLocked() const {
  int64_t dirty_bytes = 0;
  size_t dirty_count = 0, clean_count = 0;
  for (const SegmentHeap* h : heaps_) {
    if (h->arena_ != this) Broken("heap of this arena points to another", h, 0);
    const bool frozen = h->frozen_.load(std::memory_order_acquire);
    if ((h->sealed_ || h->inherited_) && !frozen) Broken("sealed or inherited heap not frozen", h, 0);
    if (frozen && !h->free_extents_.empty()) Broken("frozen heap has free extents", h, 0);
    if (h->live_allocations_.load() < 0 || h->live_bytes_.load() < 0) Broken("negative heap live counter", h, 0);
    size_t end = 0;
    const FreeExtent* prev = nullptr;
    for (const auto& [off, fe] : h->free_extents_) {
      if (fe.length == 0 || off % kPageSize != 0 || fe.length % kPageSize != 0) Broken("extent not page-granular", h, off);
      if (off < end) Broken("free extents overlap", h, off);
      if (off + fe.length > h->segment_->size()) Broken("free extent past the segment end", h, off);
      if (prev != nullptr && off == end && prev->dirty == fe.dirty) Broken("adjacent extents of one kind unmerged", h, off);
      if (fe.stale && !fe.dirty) Broken("stale extent not dirty", h, off);
      if (!(fe.dirty ? dirty_index_ : clean_index_).count(IndexKey{fe.length, const_cast<SegmentHeap*>(h), off}))
        Broken("free extent missing from its size index", h, off);
      if (fe.dirty) {
        dirty_bytes += static_cast<int64_t>(fe.length);
        ++dirty_count;
      } else {
        ++clean_count;
      }
      end = off + fe.length;
      prev = &fe;
    }
  }
  if (dirty_count != dirty_index_.size() || clean_count != clean_index_.size())
    Broken("size index holds extents no heap has", nullptr, 0);
  if (retained_.load(std::memory_order_relaxed) != dirty_bytes) Broken("retained != dirty free bytes", nullptr, 0);
  if (live_bytes_.load(std::memory_order_relaxed) < 0) Broken("negative live bytes", nullptr, 0);
}
#endif

bool Arena::empty() {
  std::lock_guard lock(large_mu_);
  return heaps_.empty();
}

}  // namespace zerrow
