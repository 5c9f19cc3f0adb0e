// What share() exports and attach() rebuilds: a table, record batch, array or
// chunked array, held uniformly as a schema plus columns of chunks.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <arrow/array.h>
#include <arrow/array/data.h>
#include <arrow/chunked_array.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>
#include <arrow/table.h>
#include <arrow/type.h>

#include "sipc_format.h"

namespace zerrow {

struct SharedObject {
  sipc::ObjectKind kind = sipc::ObjectKind::kTable;
  // For arrays and chunked arrays: one field named "" holding the type.
  std::shared_ptr<arrow::Schema> schema;
  int64_t num_rows = 0;
  std::vector<std::vector<std::shared_ptr<arrow::ArrayData>>> columns;  // columns x chunks
};

SharedObject FromTable(const std::shared_ptr<arrow::Table>& table);
SharedObject FromRecordBatch(const std::shared_ptr<arrow::RecordBatch>& batch);
SharedObject FromArray(const std::shared_ptr<arrow::Array>& array);
SharedObject FromChunkedArray(const std::shared_ptr<arrow::ChunkedArray>& chunked);

// Each returns an error unless `object.kind` is the matching kind.
arrow::Result<std::shared_ptr<arrow::Table>> ToTable(const SharedObject& object);
arrow::Result<std::shared_ptr<arrow::RecordBatch>> ToRecordBatch(const SharedObject& object);
arrow::Result<std::shared_ptr<arrow::Array>> ToArray(const SharedObject& object);
arrow::Result<std::shared_ptr<arrow::ChunkedArray>> ToChunkedArray(const SharedObject& object);

}  // namespace zerrow
