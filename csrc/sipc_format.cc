#include "sipc_format.h"

#include <cstring>

#include <arrow/status.h>

namespace zerrow::sipc {
namespace {

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));  // x86-64/aarch64: little-endian
  }
  void Bytes(std::string_view b) { out_.append(b); }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  arrow::Status Get(T* v, const char* what) {
    if (in_.size() - pos_ < sizeof(T)) return Truncated(what);
    std::memcpy(v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return arrow::Status::OK();
  }
  arrow::Status Bytes(size_t n, std::string* out, const char* what) {
    if (in_.size() - pos_ < n) return Truncated(what);
    out->assign(in_.data() + pos_, n);
    pos_ += n;
    return arrow::Status::OK();
  }
  // A count of items of at least `min_item` bytes each must fit in what is left.
  arrow::Status Count(uint32_t* n, size_t min_item, const char* what) {
    ARROW_RETURN_NOT_OK(Get(n, what));
    if (static_cast<uint64_t>(*n) * min_item > in_.size() - pos_)
      return arrow::Status::Invalid("SIPC descriptor: ", what, " count ", *n, " exceeds the descriptor size");
    return arrow::Status::OK();
  }
  size_t left() const { return in_.size() - pos_; }

 private:
  arrow::Status Truncated(const char* what) const {
    return arrow::Status::Invalid("SIPC descriptor: truncated at byte ", pos_, " reading ", what);
  }
  std::string_view in_;
  size_t pos_ = 0;
};

constexpr size_t kNodeFixed = 8 * 3 + 4 * 3;
constexpr size_t kBufferRefSize = 4 + 8 + 8;

void PutNode(Writer& w, const RawNode& n) {
  w.Put<int64_t>(n.length);
  w.Put<int64_t>(n.null_count);
  w.Put<int64_t>(n.offset);
  w.Put<uint32_t>(static_cast<uint32_t>(n.buffers.size()));
  w.Put<uint32_t>(static_cast<uint32_t>(n.children.size()));
  w.Put<int32_t>(n.dictionary);
  for (const auto& b : n.buffers) {
    w.Put<int32_t>(b.segment);
    w.Put<uint64_t>(b.offset);
    w.Put<uint64_t>(b.length);
  }
  for (const auto& c : n.children) PutNode(w, c);
}

arrow::Status GetNode(Reader& r, RawNode* n, uint32_t depth) {
  if (depth > kMaxDepth) return arrow::Status::Invalid("SIPC descriptor: nesting deeper than ", kMaxDepth);
  uint32_t nbuffers = 0, nchildren = 0;
  ARROW_RETURN_NOT_OK(r.Get(&n->length, "node length"));
  ARROW_RETURN_NOT_OK(r.Get(&n->null_count, "node null count"));
  ARROW_RETURN_NOT_OK(r.Get(&n->offset, "node offset"));
  ARROW_RETURN_NOT_OK(r.Get(&nbuffers, "buffer count"));
  ARROW_RETURN_NOT_OK(r.Get(&nchildren, "child count"));
  ARROW_RETURN_NOT_OK(r.Get(&n->dictionary, "dictionary index"));
  if (n->length < 0 || n->offset < 0 || n->null_count < -1 || n->null_count > n->length)
    return arrow::Status::Invalid("SIPC descriptor: node has length ", n->length, ", offset ", n->offset,
                                  ", null count ", n->null_count);
  if (static_cast<uint64_t>(nbuffers) * kBufferRefSize > r.left())
    return arrow::Status::Invalid("SIPC descriptor: buffer count ", nbuffers, " exceeds the descriptor size");
  if (static_cast<uint64_t>(nchildren) * kNodeFixed > r.left())
    return arrow::Status::Invalid("SIPC descriptor: child count ", nchildren, " exceeds the descriptor size");
  n->buffers.resize(nbuffers);
  for (auto& b : n->buffers) {
    ARROW_RETURN_NOT_OK(r.Get(&b.segment, "buffer segment"));
    ARROW_RETURN_NOT_OK(r.Get(&b.offset, "buffer offset"));
    ARROW_RETURN_NOT_OK(r.Get(&b.length, "buffer length"));
  }
  n->children.resize(nchildren);
  for (auto& c : n->children) ARROW_RETURN_NOT_OK(GetNode(r, &c, depth + 1));
  return arrow::Status::OK();
}

}  // namespace

std::string Encode(const RawDescriptor& d) {
  Writer w;
  w.Bytes(std::string_view(kMagic, 4));
  w.Put<uint16_t>(kVersion);
  w.Put<uint8_t>(static_cast<uint8_t>(d.kind));
  w.Put<uint8_t>(d.flags);
  w.Put<int64_t>(d.num_rows);
  w.Put<uint32_t>(static_cast<uint32_t>(d.segments.size()));
  for (const auto& s : d.segments) {
    w.Put<uint8_t>(s.kind);
    w.Put<uint64_t>(s.min_size);
  }
  w.Put<uint32_t>(static_cast<uint32_t>(d.schema.size()));
  w.Bytes(d.schema);
  w.Put<uint32_t>(static_cast<uint32_t>(d.dictionaries.size()));
  for (const auto& n : d.dictionaries) PutNode(w, n);
  w.Put<uint32_t>(static_cast<uint32_t>(d.columns.size()));
  for (const auto& col : d.columns) {
    w.Put<uint32_t>(static_cast<uint32_t>(col.size()));
    for (const auto& n : col) PutNode(w, n);
  }
  return w.Take();
}

arrow::Result<RawDescriptor> Parse(std::string_view bytes) {
  Reader r(bytes);
  RawDescriptor d;
  char magic[4];
  for (char& c : magic) ARROW_RETURN_NOT_OK(r.Get(&c, "magic"));
  if (std::memcmp(magic, kMagic, 4) != 0) return arrow::Status::Invalid("SIPC descriptor: bad magic (not a zerrow descriptor)");
  uint16_t version;
  ARROW_RETURN_NOT_OK(r.Get(&version, "version"));
  if (version != kVersion)
    return arrow::Status::NotImplemented("SIPC descriptor: version ", version, " is not supported (this reader knows ",
                                         kVersion, ")");
  uint8_t kind;
  ARROW_RETURN_NOT_OK(r.Get(&kind, "object kind"));
  if (kind < 1 || kind > 4) return arrow::Status::Invalid("SIPC descriptor: unknown object kind ", int{kind});
  d.kind = static_cast<ObjectKind>(kind);
  ARROW_RETURN_NOT_OK(r.Get(&d.flags, "flags"));
  if (d.flags & ~kSealed) return arrow::Status::Invalid("SIPC descriptor: unknown flags ", int{d.flags});
  ARROW_RETURN_NOT_OK(r.Get(&d.num_rows, "row count"));
  if (d.num_rows < 0) return arrow::Status::Invalid("SIPC descriptor: negative row count");
  uint32_t n;
  ARROW_RETURN_NOT_OK(r.Count(&n, 9, "segment"));
  if (n > kMaxSegments) return arrow::Status::Invalid("SIPC descriptor: ", n, " segments, more than ", kMaxSegments);
  d.segments.resize(n);
  for (auto& s : d.segments) {
    ARROW_RETURN_NOT_OK(r.Get(&s.kind, "segment kind"));
    ARROW_RETURN_NOT_OK(r.Get(&s.min_size, "segment size"));
    if (s.kind < 1 || s.kind > kSpillFileKind) return arrow::Status::Invalid("SIPC descriptor: unknown segment kind ", int{s.kind});
  }
  uint32_t schema_len;
  ARROW_RETURN_NOT_OK(r.Get(&schema_len, "schema length"));
  ARROW_RETURN_NOT_OK(r.Bytes(schema_len, &d.schema, "schema"));
  ARROW_RETURN_NOT_OK(r.Count(&n, kNodeFixed, "dictionary"));
  d.dictionaries.resize(n);
  for (auto& node : d.dictionaries) ARROW_RETURN_NOT_OK(GetNode(r, &node, 0));
  ARROW_RETURN_NOT_OK(r.Count(&n, 4, "column"));
  d.columns.resize(n);
  for (auto& col : d.columns) {
    uint32_t chunks;
    ARROW_RETURN_NOT_OK(r.Count(&chunks, kNodeFixed, "chunk"));
    col.resize(chunks);
    for (auto& node : col) ARROW_RETURN_NOT_OK(GetNode(r, &node, 0));
  }
  if (r.left() != 0) return arrow::Status::Invalid("SIPC descriptor: ", r.left(), " trailing bytes");
  return d;
}

namespace {

void AddReferences(const RawNode& node, ReferenceTotals* totals) {
  for (const auto& b : node.buffers)
    if (b.segment >= 0) {
      totals->nbytes += static_cast<int64_t>(b.length);
      totals->nbuffers += 1;
    }
  for (const auto& child : node.children) AddReferences(child, totals);
}

}  // namespace

arrow::Result<std::string> MarkSpilled(std::string_view bytes) {
  ARROW_ASSIGN_OR_RAISE(auto d, Parse(bytes));
  for (auto& s : d.segments) s.kind = kSpillFileKind;
  return Encode(d);
}

arrow::Result<std::vector<uint8_t>> SegmentKinds(std::string_view bytes) {
  ARROW_ASSIGN_OR_RAISE(auto d, Parse(bytes));
  std::vector<uint8_t> kinds;
  for (const auto& s : d.segments) kinds.push_back(s.kind);
  return kinds;
}

arrow::Result<ReferenceTotals> Totals(std::string_view bytes) {
  ARROW_ASSIGN_OR_RAISE(auto d, Parse(bytes));
  ReferenceTotals totals;
  for (const auto& node : d.dictionaries) AddReferences(node, &totals);
  for (const auto& column : d.columns)
    for (const auto& node : column) AddReferences(node, &totals);
  return totals;
}

}  // namespace zerrow::sipc
