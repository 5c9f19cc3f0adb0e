#include "share_export.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include <arrow/buffer.h>
#include <arrow/extension_type.h>
#include <arrow/ipc/writer.h>

#include "buffer_walk.h"
#include "cow_guard.h"
#include "segment_heap.h"
#include "segment_registry.h"
#include "size_classes.h"
#include "zerrow_pool.h"

namespace zerrow {
namespace {

std::mutex hook_mu;
std::shared_ptr<ForeignMemoryHook> hook;

struct Placement {
  std::shared_ptr<Segment> segment;
  uint64_t offset = 0;
  SegmentHeap* heap = nullptr;  // own pool memory, to be frozen
  bool copied = false;
  int64_t exposed = 0;          // from the foreign hook
  int64_t copied_bytes = 0;     // edges the foreign hook copied
};

using BufferKey = std::pair<const uint8_t*, int64_t>;

struct BufferKeyHash {
  size_t operator()(const BufferKey& k) const {
    return std::hash<const void*>()(k.first) * 31 + std::hash<int64_t>()(k.second);
  }
};

// Total length of the union of [offset, offset+length) ranges.
int64_t UnionLength(std::vector<std::pair<uint64_t, uint64_t>> ranges) {
  std::sort(ranges.begin(), ranges.end());
  int64_t total = 0;
  uint64_t cur_start = 0, cur_end = 0;
  bool open = false;
  for (auto [off, len] : ranges) {
    if (open && off <= cur_end) {
      cur_end = std::max(cur_end, off + len);
      continue;
    }
    if (open) total += static_cast<int64_t>(cur_end - cur_start);
    cur_start = off;
    cur_end = off + len;
    open = true;
  }
  if (open) total += static_cast<int64_t>(cur_end - cur_start);
  return total;
}

// Types the Arrow IPC Schema message cannot carry faithfully.
arrow::Status CheckShareable(const arrow::DataType& type) {
  if (type.id() == arrow::Type::DICTIONARY) {
    const auto& value = *static_cast<const arrow::DictionaryType&>(type).value_type();
    if (value.id() == arrow::Type::DICTIONARY)
      return arrow::Status::NotImplemented("zerrow: cannot share ", type.ToString(),
                                           ": a dictionary whose values are themselves dictionary-encoded");
    return CheckShareable(value);
  }
  if (type.id() == arrow::Type::EXTENSION)
    return CheckShareable(*static_cast<const arrow::ExtensionType&>(type).storage_type());
  for (const auto& child : type.fields()) ARROW_RETURN_NOT_OK(CheckShareable(*child->type()));
  return arrow::Status::OK();
}

class Exporter {
 public:
  Exporter(ZerrowPool& pool, const ShareOptions& options) : pool_(pool), options_(options) {}

  arrow::Result<ShareResult> Run(const SharedObject& object) {
    EnsureCowHandler();
    for (const auto& field : object.schema->fields()) ARROW_RETURN_NOT_OK(CheckShareable(*field->type()));
    // Pass 1: where does every buffer lie?
    for (const auto& col : object.columns)
      for (const auto& chunk : col) ARROW_RETURN_NOT_OK(PlaceAll(*chunk));
    ARROW_RETURN_NOT_OK(PlaceForeign());
    for (auto [seg, heap] : heaps_) ARROW_RETURN_NOT_OK(pool_.Freeze(heap, options_.seal, options_.keep_free));

    // Pass 2: the descriptor.
    desc_.kind = object.kind;
    desc_.flags = options_.seal ? sipc::kSealed : 0;
    desc_.num_rows = object.num_rows;
    ARROW_ASSIGN_OR_RAISE(auto schema_buf, arrow::ipc::SerializeSchema(*object.schema));
    desc_.schema = schema_buf->ToString();
    for (const auto& col : object.columns) {
      auto& out = desc_.columns.emplace_back();
      for (const auto& chunk : col) out.push_back(Node(*chunk));
    }
    result_.descriptor = sipc::Encode(desc_);
    for (const auto& seg : segments_) {
      auto fd = seg->OpenReadOnly();
      if (!fd.ok()) {
        for (int f : result_.fds) close(f);
        return fd.status();
      }
      result_.fds.push_back(*fd);
    }
    result_.bytes_exposed = Exposed();
    return std::move(result_);
  }

 private:
  arrow::Status PlaceAll(const arrow::ArrayData& data) {
    arrow::Status st;
    VisitBuffers(data, [&](const std::shared_ptr<arrow::Buffer>& b) {
      if (st.ok()) st = Place(*b);
    });
    return st;
  }

  arrow::Status Place(const arrow::Buffer& b) {
    if (b.size() == 0) return arrow::Status::OK();
    if (!b.is_cpu()) return arrow::Status::NotImplemented("zerrow: cannot share a buffer that is not in CPU memory");
    BufferKey key{b.data(), b.size()};
    if (placements_.count(key)) return arrow::Status::OK();
    Placement p;
    auto r = pool_.registry().Resolve(b.data());
    if (r && r->heap && r->heap->inherited()) {
      // The parent's memory, copy-on-write here: our pages may differ from the file.
      to_copy_.push_back(&b);
    } else if (r && r->offset + static_cast<uint64_t>(b.size()) <= r->segment->size()) {
      p.segment = std::move(r->segment);
      p.offset = r->offset;
      p.heap = r->heap;
      if (p.heap) heaps_.emplace(p.segment.get(), p.heap);
    } else {
      foreign_.push_back(&b);
    }
    placements_.emplace(key, std::move(p));
    return arrow::Status::OK();
  }

  // Foreign buffers go to the hook (the kernel module) first; whatever it
  // declines, and buffers in segments inherited through fork(), is copied
  // once, into a fresh memfd that holds nothing else.
  arrow::Status PlaceForeign() {
    std::vector<std::optional<ForeignPlacement>> placed(foreign_.size());
    if (auto hook = foreign_.empty() ? nullptr : GetForeignMemoryHook()) {
      std::vector<ForeignRange> ranges;
      for (const arrow::Buffer* b : foreign_) ranges.push_back({b->data(), static_cast<size_t>(b->size())});
      ARROW_ASSIGN_OR_RAISE(placed, hook->Place(ranges, options_));
      if (placed.size() != foreign_.size()) return arrow::Status::Invalid("zerrow: foreign-memory hook lost buffers");
    }
    for (size_t i = 0; i < foreign_.size(); ++i) {
      Placement& p = placements_.at(BufferKey{foreign_[i]->data(), foreign_[i]->size()});
      if (placed[i]) {
        p.segment = std::move(placed[i]->segment);
        p.offset = placed[i]->offset;
        p.exposed = placed[i]->exposed_bytes;
        p.copied_bytes = placed[i]->copied_bytes;
      } else {
        to_copy_.push_back(foreign_[i]);
      }
    }
    if (to_copy_.empty()) return arrow::Status::OK();
    for (const arrow::Buffer* b : to_copy_) {
      Placement& p = placements_.at(BufferKey{b->data(), b->size()});
      p.copied = true;
      p.offset = RoundUp(copy_bytes_, kMinAlignment);
      copy_bytes_ = p.offset + static_cast<uint64_t>(b->size());
    }
    ARROW_ASSIGN_OR_RAISE(auto seg, Segment::Create(RoundUp(copy_bytes_, kPageSize)));
    for (const arrow::Buffer* b : to_copy_) {
      Placement& p = placements_.at(BufferKey{b->data(), b->size()});
      std::memcpy(seg->base() + p.offset, b->data(), static_cast<size_t>(b->size()));
      p.segment = seg;
    }
    ARROW_RETURN_NOT_OK(seg->SealWrites());
    return arrow::Status::OK();
  }

  int32_t SegmentIndex(const std::shared_ptr<Segment>& seg) {
    auto [it, fresh] = segment_index_.emplace(seg.get(), static_cast<int32_t>(segments_.size()));
    if (fresh) {
      segments_.push_back(seg);
      desc_.segments.push_back(sipc::SegmentEntry{static_cast<uint8_t>(seg->kind()), seg->size()});
    }
    return it->second;
  }

  sipc::BufferRef Ref(const std::shared_ptr<arrow::Buffer>& b) {
    if (!b) return sipc::BufferRef{};
    if (b->size() == 0) return sipc::BufferRef{-2, 0, 0};
    const Placement& p = placements_.at(BufferKey{b->data(), b->size()});
    auto len = static_cast<uint64_t>(b->size());
    result_.nbytes += b->size();
    result_.nbuffers += 1;
    if (p.copied) {
      result_.bytes_copied += b->size();
    } else {
      result_.bytes_zero_copy += b->size() - p.copied_bytes;
      result_.bytes_copied += p.copied_bytes;
    }
    ranges_[p.segment.get()].emplace_back(p.offset, len);
    return sipc::BufferRef{SegmentIndex(p.segment), p.offset, len};
  }

  sipc::RawNode Node(const arrow::ArrayData& data) {
    sipc::RawNode n;
    n.length = data.length;
    n.null_count = data.null_count.load();
    n.offset = data.offset;
    for (const auto& b : data.buffers) n.buffers.push_back(Ref(b));
    for (const auto& c : data.child_data) n.children.push_back(Node(*c));
    if (data.dictionary) n.dictionary = Dictionary(data.dictionary);
    return n;
  }

  // Dictionaries are described once per descriptor however many chunks use them.
  int32_t Dictionary(const std::shared_ptr<arrow::ArrayData>& dict) {
    auto it = dictionary_index_.find(dict.get());
    if (it != dictionary_index_.end()) return it->second;
    sipc::RawNode n = Node(*dict);  // nested dictionaries get lower indices
    auto index = static_cast<int32_t>(desc_.dictionaries.size());
    desc_.dictionaries.push_back(std::move(n));
    dictionary_index_.emplace(dict.get(), index);
    return index;
  }

  int64_t Exposed() const {
    int64_t exposed = 0;
    for (const auto& [seg, ranges] : ranges_) {
      int64_t referenced = UnionLength(ranges);
      int64_t readable = 0;
      if (auto h = heaps_.find(seg); h != heaps_.end()) {
        readable = h->second->live_bytes();
      } else if (!seg->owned() || seg->kind() == SegmentKind::kKernelFile) {
        readable = seg->ResidentBytes();  // re-shared or placed: whatever it holds
      }
      exposed += std::max<int64_t>(0, readable - referenced);
    }
    for (const auto& [key, p] : placements_) exposed += p.exposed;
    return exposed;
  }

  ZerrowPool& pool_;
  const ShareOptions options_;
  std::unordered_map<BufferKey, Placement, BufferKeyHash> placements_;
  std::unordered_map<const Segment*, SegmentHeap*> heaps_;  // own pool segments, to freeze
  std::vector<const arrow::Buffer*> foreign_;  // in no zerrow segment
  std::vector<const arrow::Buffer*> to_copy_;  // declined by the hook, or inherited through fork()
  uint64_t copy_bytes_ = 0;

  sipc::RawDescriptor desc_;
  std::vector<std::shared_ptr<Segment>> segments_;
  std::unordered_map<const Segment*, int32_t> segment_index_;
  std::unordered_map<const arrow::ArrayData*, int32_t> dictionary_index_;
  std::map<const Segment*, std::vector<std::pair<uint64_t, uint64_t>>> ranges_;
  ShareResult result_;
};

}  // namespace

arrow::Result<ShareResult> Share(ZerrowPool& pool, const SharedObject& object, const ShareOptions& options) {
  Exporter exporter(pool, options);
  return exporter.Run(object);
}

void SetForeignMemoryHook(std::shared_ptr<ForeignMemoryHook> h) {
  std::lock_guard lock(hook_mu);
  hook = std::move(h);
}

std::shared_ptr<ForeignMemoryHook> GetForeignMemoryHook() {
  std::lock_guard lock(hook_mu);
  return hook;
}

}  // namespace zerrow
