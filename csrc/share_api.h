// Status-returning entry points for the Python bindings (they cannot hold an
// arrow::Result across Cython easily). No Python here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fd_transport.h"
#include "share_export.h"
#include "share_import.h"
#include "shared_object.h"
#include "zerrow_pool.h"

namespace zerrow::api {

inline arrow::Status Share(const SharedObject& object, bool seal, bool strict_exposure, bool keep_free,
                           ShareResult* out) {
  ARROW_ASSIGN_OR_RAISE(*out, zerrow::Share(*ZerrowPool::Instance(), object, ShareOptions{seal, strict_exposure, keep_free}));
  return arrow::Status::OK();
}

struct Attached {
  int kind = 0;  // sipc::ObjectKind
  std::shared_ptr<arrow::Table> table;
  std::shared_ptr<arrow::RecordBatch> batch;
  std::shared_ptr<arrow::Array> array;
  std::shared_ptr<arrow::ChunkedArray> chunked;
};

inline arrow::Status Attach(const std::string& descriptor, const std::vector<int>& fds, bool validate_full,
                            Attached* out) {
  ARROW_ASSIGN_OR_RAISE(auto object, zerrow::Attach(*ZerrowPool::Instance(), descriptor, fds, AttachOptions{validate_full}));
  out->kind = static_cast<int>(object.kind);
  switch (object.kind) {
    case sipc::ObjectKind::kTable: {
      ARROW_ASSIGN_OR_RAISE(out->table, ToTable(object));
      return out->table->Validate();
    }
    case sipc::ObjectKind::kRecordBatch: {
      ARROW_ASSIGN_OR_RAISE(out->batch, ToRecordBatch(object));
      return out->batch->Validate();
    }
    case sipc::ObjectKind::kArray: {
      ARROW_ASSIGN_OR_RAISE(out->array, ToArray(object));
      return arrow::Status::OK();
    }
    case sipc::ObjectKind::kChunkedArray: {
      ARROW_ASSIGN_OR_RAISE(out->chunked, ToChunkedArray(object));
      return arrow::Status::OK();
    }
  }
  return arrow::Status::Invalid("zerrow: unknown object kind");
}

// Totals of a descriptor's buffer references (for a share received without attaching).
inline arrow::Status Describe(const std::string& descriptor, int64_t* nbytes, int64_t* nbuffers) {
  ARROW_ASSIGN_OR_RAISE(auto d, sipc::Parse(descriptor));
  *nbytes = *nbuffers = 0;
  auto visit = [&](const sipc::RawNode& n, auto&& self) -> void {
    for (const auto& b : n.buffers)
      if (b.segment >= 0) {
        *nbytes += static_cast<int64_t>(b.length);
        *nbuffers += 1;
      }
    for (const auto& c : n.children) self(c, self);
  };
  for (const auto& n : d.dictionaries) visit(n, visit);
  for (const auto& col : d.columns)
    for (const auto& n : col) visit(n, visit);
  return arrow::Status::OK();
}

inline arrow::Status Recv(int sock, int timeout_ms, Received* out) {
  ARROW_ASSIGN_OR_RAISE(*out, RecvDescriptor(sock, timeout_ms));
  return arrow::Status::OK();
}

}  // namespace zerrow::api
