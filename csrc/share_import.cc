#include "share_import.h"

#include <limits>
#include <mutex>
#include <string>
#include <unordered_map>

#include <arrow/util/key_value_metadata.h>
#include <arrow/util/utf8.h>
#include <arrow/array.h>
#include <arrow/buffer.h>
#include <arrow/extension_type.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/dictionary.h>
#include <arrow/ipc/reader.h>
#include <arrow/util/bit_util.h>
#include <arrow/util/bitmap_ops.h>

#include "attach_cache.h"
#include "zerrow_pool.h"

namespace zerrow {
namespace {

// A buffer inside an attached segment; keeps the mapping alive.
class AttachedBuffer final : public arrow::Buffer {
 public:
  AttachedBuffer(std::shared_ptr<Segment> segment, uint64_t offset, uint64_t length)
      : arrow::Buffer(segment->base() + offset, static_cast<int64_t>(length)), segment_(std::move(segment)) {}

 private:
  std::shared_ptr<Segment> segment_;
};

// Field names and metadata become Python str: reject bytes that are not UTF-8
// here, as a bad descriptor, rather than as a UnicodeDecodeError later.
arrow::Status CheckMetadataUTF8(const std::shared_ptr<const arrow::KeyValueMetadata>& metadata) {
  if (metadata == nullptr) return arrow::Status::OK();
  for (int64_t i = 0; i < metadata->size(); ++i)
    if (!arrow::util::ValidateUTF8(metadata->key(i)) || !arrow::util::ValidateUTF8(metadata->value(i)))
      return arrow::Status::Invalid("SIPC descriptor: schema metadata is not valid UTF-8");
  return arrow::Status::OK();
}

arrow::Status CheckFieldUTF8(const arrow::Field& field) {
  if (!arrow::util::ValidateUTF8(field.name()))
    return arrow::Status::Invalid("SIPC descriptor: a field name is not valid UTF-8");
  ARROW_RETURN_NOT_OK(CheckMetadataUTF8(field.metadata()));
  for (const auto& child : field.type()->fields()) ARROW_RETURN_NOT_OK(CheckFieldUTF8(*child));
  return arrow::Status::OK();
}

// Schemas seen recently, so a stream of tables with one schema parses it once.
arrow::Result<std::shared_ptr<arrow::Schema>> ReadSchemaCached(const std::string& bytes) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, std::shared_ptr<arrow::Schema>>();
  {
    std::lock_guard lock(mu);
    auto it = cache->find(bytes);
    if (it != cache->end()) return it->second;
  }
  arrow::io::BufferReader reader(std::make_shared<arrow::Buffer>(bytes));
  arrow::ipc::DictionaryMemo memo;
  auto schema = arrow::ipc::ReadSchema(&reader, &memo);
  if (!schema.ok()) return arrow::Status::Invalid("SIPC descriptor: bad schema: ", schema.status().message());
  arrow::util::InitializeUTF8();
  ARROW_RETURN_NOT_OK(CheckMetadataUTF8((*schema)->metadata()));
  for (const auto& field : (*schema)->fields()) ARROW_RETURN_NOT_OK(CheckFieldUTF8(*field));
  std::lock_guard lock(mu);
  if (cache->size() >= 256) cache->clear();
  cache->emplace(bytes, *schema);
  return *schema;
}

// Arrow's array classes assume some of the layout when they are built, before
// Validate() can run (they abort or dereference null): check that first.
arrow::Status CheckBuffersPresent(const arrow::DataType& type, const arrow::DataTypeLayout& layout, int64_t length,
                                  const std::vector<std::shared_ptr<arrow::Buffer>>& buffers) {
  for (size_t i = 0; i < layout.buffers.size() && i < buffers.size(); ++i) {
    auto kind = layout.buffers[i].kind;
    if (kind == arrow::DataTypeLayout::ALWAYS_NULL && buffers[i] != nullptr)
      return arrow::Status::Invalid("SIPC descriptor: ", type.ToString(), " must not have buffer ", i);
    bool needed = i >= 1 && (kind == arrow::DataTypeLayout::FIXED_WIDTH || kind == arrow::DataTypeLayout::BITMAP);
    if (needed && length > 0 && buffers[i] == nullptr)
      return arrow::Status::Invalid("SIPC descriptor: ", type.ToString(), " of length ", length, " lacks buffer ", i);
  }
  return arrow::Status::OK();
}

// The null count of data, computed from its validity bitmap if unknown, after
// checking the bitmap covers the array.
arrow::Result<int64_t> NullCount(const arrow::ArrayData& data) {
  if (data.null_count.load() >= 0 || !data.buffers[0]) return std::max<int64_t>(data.null_count.load(), 0);
  if (data.buffers[0]->size() * 8 < data.offset + data.length)
    return arrow::Status::Invalid("SIPC descriptor: validity bitmap shorter than the array");
  return data.length - arrow::internal::CountSetBits(data.buffers[0]->data(), data.offset, data.length);
}

arrow::Status CheckBeforeMakeArray(const arrow::DataType& storage, const arrow::ArrayData& data) {
  switch (storage.id()) {
    case arrow::Type::MAP: {
      const auto& entries = *data.child_data[0];
      ARROW_ASSIGN_OR_RAISE(int64_t entry_nulls, NullCount(entries));
      if (entry_nulls != 0) return arrow::Status::Invalid("SIPC descriptor: map entries have nulls");
      ARROW_ASSIGN_OR_RAISE(int64_t key_nulls, NullCount(*entries.child_data[0]));
      if (key_nulls != 0) return arrow::Status::Invalid("SIPC descriptor: map keys have nulls");
      break;
    }
    case arrow::Type::FIXED_SIZE_LIST: {
      const int64_t size = static_cast<const arrow::FixedSizeListType&>(storage).list_size();
      const int64_t end = data.offset + data.length;
      if (size > 0 && end > data.child_data[0]->length / size)
        return arrow::Status::Invalid("SIPC descriptor: fixed-size list of ", end, " x ", size,
                                      " values has a child of ", data.child_data[0]->length);
      break;
    }
    default:
      break;
  }
  return arrow::Status::OK();
}

class Importer {
 public:
  Importer(const sipc::RawDescriptor& desc, std::vector<std::shared_ptr<Segment>> segments)
      : desc_(desc), segments_(std::move(segments)), dictionaries_(desc.dictionaries.size()) {}

  arrow::Result<std::shared_ptr<arrow::ArrayData>> Build(const sipc::RawNode& node,
                                                         const std::shared_ptr<arrow::DataType>& type,
                                                         uint32_t depth) {
    if (depth > sipc::kMaxDepth) return arrow::Status::Invalid("SIPC descriptor: nesting too deep");
    const arrow::DataType* storage = type.get();
    if (storage->id() == arrow::Type::EXTENSION)
      storage = static_cast<const arrow::ExtensionType*>(storage)->storage_type().get();
    auto layout = storage->layout();
    const size_t want = layout.buffers.size();
    const bool variadic = layout.variadic_spec.has_value();
    if (variadic ? node.buffers.size() < want : node.buffers.size() != want)
      return arrow::Status::Invalid("SIPC descriptor: ", type->ToString(), " needs ", variadic ? "at least " : "", want,
                                    " buffers, got ", node.buffers.size());
    if (node.children.size() != static_cast<size_t>(storage->num_fields()))
      return arrow::Status::Invalid("SIPC descriptor: ", type->ToString(), " has ", storage->num_fields(),
                                    " children, got ", node.children.size());
    if (node.offset > std::numeric_limits<int64_t>::max() - node.length)
      return arrow::Status::Invalid("SIPC descriptor: offset + length overflows");
    std::vector<std::shared_ptr<arrow::Buffer>> buffers;
    buffers.reserve(node.buffers.size());
    for (const auto& ref : node.buffers) {
      ARROW_ASSIGN_OR_RAISE(auto b, MakeBuffer(ref));
      buffers.push_back(std::move(b));
    }
    std::vector<std::shared_ptr<arrow::ArrayData>> children;
    for (size_t i = 0; i < node.children.size(); ++i) {
      ARROW_ASSIGN_OR_RAISE(auto c, Build(node.children[i], storage->field(static_cast<int>(i))->type(), depth + 1));
      children.push_back(std::move(c));
    }
    std::shared_ptr<arrow::ArrayData> dictionary;
    if (storage->id() == arrow::Type::DICTIONARY) {
      const auto& value_type = static_cast<const arrow::DictionaryType*>(storage)->value_type();
      ARROW_ASSIGN_OR_RAISE(dictionary, Dictionary(node.dictionary, value_type, depth));
    } else if (node.dictionary != -1) {
      return arrow::Status::Invalid("SIPC descriptor: ", type->ToString(), " is not a dictionary type");
    }
    ARROW_RETURN_NOT_OK(CheckBuffersPresent(*type, layout, node.length, buffers));
    auto data = arrow::ArrayData::Make(type, node.length, std::move(buffers), std::move(children),
                                       node.null_count < 0 ? arrow::kUnknownNullCount : node.null_count, node.offset);
    data->dictionary = std::move(dictionary);
    ARROW_RETURN_NOT_OK(CheckBeforeMakeArray(*storage, *data));
    return data;
  }

 private:
  arrow::Result<std::shared_ptr<arrow::Buffer>> MakeBuffer(const sipc::BufferRef& ref) {
    if (ref.segment == -1) return nullptr;
    if (ref.segment == -2) {
      if (ref.length != 0) return arrow::Status::Invalid("SIPC descriptor: empty buffer with a length");
      // Not null: Arrow tells an empty buffer from a missing one by its pointer.
      alignas(64) static const uint8_t kEmpty[64] = {};
      return std::make_shared<arrow::Buffer>(kEmpty, 0);
    }
    if (ref.segment < 0 || static_cast<size_t>(ref.segment) >= segments_.size())
      return arrow::Status::Invalid("SIPC descriptor: buffer refers to segment ", ref.segment, " of ", segments_.size());
    const auto& seg = segments_[static_cast<size_t>(ref.segment)];
    if (ref.offset > seg->size() || ref.length > seg->size() - ref.offset)
      return arrow::Status::Invalid("SIPC descriptor: buffer [", ref.offset, ", +", ref.length,
                                    ") lies outside its ", seg->size(), "-byte segment");
    if (ref.length > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return arrow::Status::Invalid("SIPC descriptor: buffer too long");
    return std::make_shared<AttachedBuffer>(seg, ref.offset, ref.length);
  }

  arrow::Result<std::shared_ptr<arrow::ArrayData>> Dictionary(int32_t index,
                                                              const std::shared_ptr<arrow::DataType>& type,
                                                              uint32_t depth) {
    if (index < 0 || static_cast<size_t>(index) >= dictionaries_.size())
      return arrow::Status::Invalid("SIPC descriptor: dictionary index ", index, " of ", dictionaries_.size());
    auto& slot = dictionaries_[static_cast<size_t>(index)];
    if (slot.data) {
      if (!slot.type->Equals(*type))
        return arrow::Status::Invalid("SIPC descriptor: dictionary ", index, " used with two value types");
      return slot.data;
    }
    if (slot.building) return arrow::Status::Invalid("SIPC descriptor: dictionary ", index, " refers to itself");
    slot.building = true;
    ARROW_ASSIGN_OR_RAISE(slot.data, Build(desc_.dictionaries[static_cast<size_t>(index)], type, depth + 1));
    slot.type = type;
    return slot.data;
  }

  struct DictionarySlot {
    std::shared_ptr<arrow::ArrayData> data;
    std::shared_ptr<arrow::DataType> type;
    bool building = false;
  };
  const sipc::RawDescriptor& desc_;
  std::vector<std::shared_ptr<Segment>> segments_;
  std::vector<DictionarySlot> dictionaries_;
};

arrow::Status Check(const arrow::Array& array, bool full) {
  auto st = full ? array.ValidateFull() : array.Validate();
  if (!st.ok()) return arrow::Status::Invalid("SIPC descriptor: invalid array: ", st.message());
  return st;
}

}  // namespace

arrow::Result<SharedObject> Attach(ZerrowPool& pool, std::string_view descriptor, const std::vector<int>& fds,
                                   const AttachOptions& options) {
  ARROW_ASSIGN_OR_RAISE(auto desc, sipc::Parse(descriptor));
  if (fds.size() != desc.segments.size())
    return arrow::Status::Invalid("SIPC descriptor names ", desc.segments.size(), " segments but ", fds.size(),
                                  " fds came with it");
  ARROW_ASSIGN_OR_RAISE(auto schema, ReadSchemaCached(desc.schema));
  if (desc.columns.size() != static_cast<size_t>(schema->num_fields()))
    return arrow::Status::Invalid("SIPC descriptor: ", desc.columns.size(), " columns for a schema of ",
                                  schema->num_fields(), " fields");
  const AttachTrust trust{options.validate_full, options.spill_files};
  std::vector<std::shared_ptr<Segment>> segments;
  for (size_t i = 0; i < fds.size(); ++i) {
    ARROW_ASSIGN_OR_RAISE(auto seg, AttachSegment(pool.registry(), fds[i], static_cast<SegmentKind>(desc.segments[i].kind),
                                                  desc.segments[i].min_size, trust));
    segments.push_back(std::move(seg));
  }
  Importer importer(desc, std::move(segments));
  SharedObject out;
  out.kind = desc.kind;
  out.schema = schema;
  out.num_rows = desc.num_rows;
  for (size_t c = 0; c < desc.columns.size(); ++c) {
    const auto& type = schema->field(static_cast<int>(c))->type();
    auto& col = out.columns.emplace_back();
    int64_t rows = 0;
    for (const auto& node : desc.columns[c]) {
      ARROW_ASSIGN_OR_RAISE(auto data, importer.Build(node, type, 0));
      ARROW_RETURN_NOT_OK(Check(*arrow::MakeArray(data), options.validate_full));
      rows += data->length;
      col.push_back(std::move(data));
    }
    if (rows != desc.num_rows)
      return arrow::Status::Invalid("SIPC descriptor: column ", c, " has ", rows, " rows, expected ", desc.num_rows);
  }
  bool single_chunk = desc.kind == sipc::ObjectKind::kRecordBatch || desc.kind == sipc::ObjectKind::kArray;
  bool single_column = desc.kind == sipc::ObjectKind::kArray || desc.kind == sipc::ObjectKind::kChunkedArray;
  if (single_column && out.columns.size() != 1)
    return arrow::Status::Invalid("SIPC descriptor: an array needs exactly one column");
  if (single_chunk)
    for (const auto& col : out.columns)
      if (col.size() != 1) return arrow::Status::Invalid("SIPC descriptor: a batch or array needs one chunk per column");
  return out;
}

}  // namespace zerrow
