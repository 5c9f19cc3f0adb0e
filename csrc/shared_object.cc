#include "shared_object.h"

namespace zerrow {
namespace {

std::vector<std::shared_ptr<arrow::ArrayData>> ChunksOf(const arrow::ChunkedArray& chunked) {
  std::vector<std::shared_ptr<arrow::ArrayData>> out;
  for (const auto& chunk : chunked.chunks()) out.push_back(chunk->data());
  return out;
}

std::shared_ptr<arrow::Schema> OneField(const std::shared_ptr<arrow::DataType>& type) {
  return arrow::schema({arrow::field("", type)});
}

arrow::Status Expect(const SharedObject& object, sipc::ObjectKind kind, const char* name) {
  if (object.kind != kind) return arrow::Status::TypeError("zerrow: the shared object is not a ", name);
  return arrow::Status::OK();
}

std::shared_ptr<arrow::ChunkedArray> Column(const SharedObject& object, size_t i) {
  arrow::ArrayVector chunks;
  for (const auto& data : object.columns[i]) chunks.push_back(arrow::MakeArray(data));
  return std::make_shared<arrow::ChunkedArray>(std::move(chunks), object.schema->field(static_cast<int>(i))->type());
}

}  // namespace

SharedObject FromTable(const std::shared_ptr<arrow::Table>& table) {
  SharedObject o{sipc::ObjectKind::kTable, table->schema(), table->num_rows(), {}};
  for (const auto& col : table->columns()) o.columns.push_back(ChunksOf(*col));
  return o;
}

SharedObject FromRecordBatch(const std::shared_ptr<arrow::RecordBatch>& batch) {
  SharedObject o{sipc::ObjectKind::kRecordBatch, batch->schema(), batch->num_rows(), {}};
  for (int i = 0; i < batch->num_columns(); ++i) o.columns.push_back({batch->column_data(i)});
  return o;
}

SharedObject FromArray(const std::shared_ptr<arrow::Array>& array) {
  return SharedObject{sipc::ObjectKind::kArray, OneField(array->type()), array->length(), {{array->data()}}};
}

SharedObject FromChunkedArray(const std::shared_ptr<arrow::ChunkedArray>& chunked) {
  return SharedObject{sipc::ObjectKind::kChunkedArray, OneField(chunked->type()), chunked->length(),
                      {ChunksOf(*chunked)}};
}

arrow::Result<std::shared_ptr<arrow::Table>> ToTable(const SharedObject& object) {
  ARROW_RETURN_NOT_OK(Expect(object, sipc::ObjectKind::kTable, "table"));
  std::vector<std::shared_ptr<arrow::ChunkedArray>> columns;
  for (size_t i = 0; i < object.columns.size(); ++i) columns.push_back(Column(object, i));
  return arrow::Table::Make(object.schema, std::move(columns), object.num_rows);
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> ToRecordBatch(const SharedObject& object) {
  ARROW_RETURN_NOT_OK(Expect(object, sipc::ObjectKind::kRecordBatch, "record batch"));
  std::vector<std::shared_ptr<arrow::ArrayData>> columns;
  for (const auto& col : object.columns) columns.push_back(col.at(0));
  return arrow::RecordBatch::Make(object.schema, object.num_rows, std::move(columns));
}

arrow::Result<std::shared_ptr<arrow::Array>> ToArray(const SharedObject& object) {
  ARROW_RETURN_NOT_OK(Expect(object, sipc::ObjectKind::kArray, "array"));
  return arrow::MakeArray(object.columns.at(0).at(0));
}

arrow::Result<std::shared_ptr<arrow::ChunkedArray>> ToChunkedArray(const SharedObject& object) {
  ARROW_RETURN_NOT_OK(Expect(object, sipc::ObjectKind::kChunkedArray, "chunked array"));
  return Column(object, 0);
}

}  // namespace zerrow
