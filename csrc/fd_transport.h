// Sending a descriptor and its fds over an AF_UNIX socket (SCM_RIGHTS), in as
// many messages as the kernel's per-message fd limit requires.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <arrow/result.h>
#include <arrow/status.h>

namespace zerrow {

constexpr size_t kMaxFdsPerMessage = 250;  // the kernel's SCM_MAX_FD is 253
constexpr uint64_t kMaxDescriptorBytes = uint64_t{1} << 30;

// The peer closed the connection (between messages or inside one): attached to
// the IOError so that callers tell it from other failures without its message.
class ConnectionClosedDetail final : public arrow::StatusDetail {
 public:
  const char* type_id() const override;
  std::string ToString() const override;
};
bool IsConnectionClosed(const arrow::Status& status);

// timeout_ms applies to a non-blocking socket: how long to wait for it to be
// ready at each step (-1: forever). Failures are IOErrors with errno
// (ErrnoError; ETIMEDOUT for a timeout).
arrow::Status SendDescriptor(int sock, std::string_view descriptor, const std::vector<int>& fds,
                             int timeout_ms = -1);

struct Received {
  std::string descriptor;
  std::vector<int> fds;  // owned by the caller
};
// Blocks until a whole message arrived; fails cleanly on EOF (ConnectionClosedDetail)
// or a malformed frame (IOError naming the problem).
arrow::Result<Received> RecvDescriptor(int sock, int timeout_ms = -1);

}  // namespace zerrow
