// A failed system call as an arrow::Status that keeps its errno, as Arrow's own
// I/O code does (arrow::internal::IOErrorFromErrno): ErrnoFromStatus reads it
// back, and the Python layer hands it on as the exception's errno (_share.pxi).
#pragma once

#include <cerrno>
#include <cstring>

#include <arrow/status.h>
#include <arrow/util/io_util.h>

namespace zerrow {

// IOError "zerrow: <what>: <strerror(err)>" carrying err (by default errno now).
inline arrow::Status ErrnoError(const char* what, int err = errno) {
  return arrow::internal::IOErrorFromErrno(err, "zerrow: ", what, ": ", std::strerror(err));
}

}  // namespace zerrow
