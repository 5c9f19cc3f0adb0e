#include "fd_transport.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <algorithm>
#include <cstring>

#include "errno_status.h"

namespace zerrow {
namespace {

constexpr uint32_t kFrameMagic = 0x5a52574d;  // "MWRZ"

struct FrameHeader {
  uint32_t magic;
  uint32_t nfds;
  uint64_t descriptor_len;
};

arrow::Status ConnectionClosed(const char* message) {
  return arrow::Status(arrow::StatusCode::IOError, message, std::make_shared<ConnectionClosedDetail>());
}

// Waits until a non-blocking socket is ready.
arrow::Status Wait(int sock, short events, int timeout_ms) {
  struct pollfd p{sock, events, 0};
  for (;;) {
    int n = poll(&p, 1, timeout_ms);
    if (n > 0) return arrow::Status::OK();
    if (n == 0) return arrow::internal::IOErrorFromErrno(ETIMEDOUT, "zerrow: timed out");
    if (errno != EINTR) return ErrnoError("poll");
  }
}

// One sendmsg of `len` bytes of `data`, carrying `nfds` fds on its first byte.
arrow::Status SendWithFds(int sock, const char* data, size_t len, const int* fds, size_t nfds, int timeout_ms) {
  size_t sent = 0;
  while (sent < len) {
    struct iovec iov{const_cast<char*>(data + sent), len - sent};
    struct msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    if (sent == 0 && nfds > 0) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
      std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        ARROW_RETURN_NOT_OK(Wait(sock, POLLOUT, timeout_ms));
        continue;
      }
      return ErrnoError("sendmsg");
    }
    sent += static_cast<size_t>(n);
  }
  return arrow::Status::OK();
}

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) close(fd);
  fds.clear();
}

// Reads exactly len bytes; fds that arrive alongside are appended to *fds.
arrow::Status RecvExact(int sock, char* data, size_t len, std::vector<int>* fds, int timeout_ms,
                        bool mid_message) {
  size_t got = 0;
  while (got < len) {
    struct iovec iov{data + got, len - got};
    struct msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        ARROW_RETURN_NOT_OK(Wait(sock, POLLIN, timeout_ms));
        continue;
      }
      return ErrnoError("recvmsg");
    }
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds->push_back(fd);
        }
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) return arrow::Status::IOError("zerrow: received more fds than fit; message dropped");
    if (n == 0) {
      return got == 0 && !mid_message
                 ? ConnectionClosed("zerrow: connection closed")
                 : ConnectionClosed("zerrow: connection closed in the middle of a message");
    }
    got += static_cast<size_t>(n);
  }
  return arrow::Status::OK();
}

}  // namespace

const char* ConnectionClosedDetail::type_id() const { return "zerrow::ConnectionClosedDetail"; }

std::string ConnectionClosedDetail::ToString() const { return "the peer closed the connection"; }

bool IsConnectionClosed(const arrow::Status& status) {
  return status.detail() != nullptr && std::strcmp(status.detail()->type_id(), ConnectionClosedDetail().type_id()) == 0;
}

arrow::Status SendDescriptor(int sock, std::string_view descriptor, const std::vector<int>& fds, int timeout_ms) {
  FrameHeader h{kFrameMagic, static_cast<uint32_t>(fds.size()), descriptor.size()};
  size_t first = std::min(fds.size(), kMaxFdsPerMessage);
  ARROW_RETURN_NOT_OK(SendWithFds(sock, reinterpret_cast<const char*>(&h), sizeof(h), fds.data(), first, timeout_ms));
  ARROW_RETURN_NOT_OK(SendWithFds(sock, descriptor.data(), descriptor.size(), nullptr, 0, timeout_ms));
  // Further fds ride on one marker byte each batch.
  for (size_t i = first; i < fds.size(); i += kMaxFdsPerMessage) {
    char marker = 'F';
    ARROW_RETURN_NOT_OK(SendWithFds(sock, &marker, 1, fds.data() + i, std::min(kMaxFdsPerMessage, fds.size() - i), timeout_ms));
  }
  return arrow::Status::OK();
}

arrow::Result<Received> RecvDescriptor(int sock, int timeout_ms) {
  Received out;
  FrameHeader h;
  auto st = RecvExact(sock, reinterpret_cast<char*>(&h), sizeof(h), &out.fds, timeout_ms, false);
  if (st.ok() && h.magic != kFrameMagic) st = arrow::Status::IOError("zerrow: not a zerrow message (bad frame magic)");
  if (st.ok() && h.descriptor_len > kMaxDescriptorBytes)
    st = arrow::Status::IOError("zerrow: descriptor of ", h.descriptor_len, " bytes is too large");
  // Grow the buffer as bytes arrive: a bogus length must not cost memory up front.
  constexpr size_t kStep = size_t{1} << 20;
  while (st.ok() && out.descriptor.size() < h.descriptor_len) {
    size_t at = out.descriptor.size();
    size_t n = std::min<uint64_t>(kStep, h.descriptor_len - at);
    out.descriptor.resize(at + n);
    st = RecvExact(sock, out.descriptor.data() + at, n, &out.fds, timeout_ms, true);
  }
  while (st.ok() && out.fds.size() < h.nfds) {
    char marker;
    st = RecvExact(sock, &marker, 1, &out.fds, timeout_ms, true);
    if (st.ok() && marker != 'F') st = arrow::Status::IOError("zerrow: malformed fd continuation");
  }
  if (st.ok() && out.fds.size() != h.nfds)
    st = arrow::Status::IOError("zerrow: expected ", h.nfds, " fds, received ", out.fds.size());
  if (!st.ok()) {
    CloseAll(out.fds);
    return st;
  }
  return out;
}

}  // namespace zerrow
