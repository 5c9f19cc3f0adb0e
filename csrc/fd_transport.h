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

arrow::Status SendDescriptor(int sock, std::string_view descriptor, const std::vector<int>& fds);

struct Received {
  std::string descriptor;
  std::vector<int> fds;  // owned by the caller
};
// Blocks until a whole message arrived; fails cleanly on EOF or a malformed frame.
arrow::Result<Received> RecvDescriptor(int sock);

}  // namespace zerrow
