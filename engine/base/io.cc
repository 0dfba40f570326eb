// Buffered fd sinks and sources; see io.h.
#include "engine/base/io.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace stasis {

Result<size_t> ByteSource::ReadInPlace(const char** data, size_t n) {
  (void)data;
  (void)n;
  return Status::Error(ENOTSUP, "this source has no buffers to lend");
}

Result<uint64_t> ByteSource::Skip(uint64_t n) {
  (void)n;
  return Status::Error(ENOTSUP, "this source cannot skip");
}

// --- PrefetchSource -------------------------------------------------------------

PrefetchSource::PrefetchSource(UniqueFd fd, std::string name, size_t chunk, size_t depth)
    : fd_(std::move(fd)),
      name_(std::move(name)),
      chunk_(std::max<size_t>(chunk / 4096 * 4096, 4096)) {
  for (size_t i = 0; i < std::max<size_t>(depth, 1) + 2; ++i) {
    void* mem = nullptr;
    if (::posix_memalign(&mem, 4096, chunk_) != 0) std::abort();
    buffers_.push_back(static_cast<char*>(mem));
  }
  free_ = buffers_;
  reader_ = std::thread([this] { ReaderLoop(); });
}

PrefetchSource::~PrefetchSource() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  reader_.join();
  for (char* b : buffers_) std::free(b);
}

void PrefetchSource::ReaderLoop() {
  const int fd = fd_.get();
  struct stat st;
  off_t at = ::lseek(fd, 0, SEEK_CUR);
  const bool positioned = at >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  // O_DIRECT needs aligned offsets, lengths and buffers: from an aligned
  // start, whole chunks are; a short read (the end) ends the file anyway.
  bool direct = false;
  if (positioned && at % 4096 == 0) {
    int flags = ::fcntl(fd, F_GETFL);
    direct = flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
  }
  if (positioned && !direct) ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  for (;;) {
    char* buf;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !free_.empty(); });
      if (stop_) return;
      buf = free_.back();
      free_.pop_back();
    }
    Chunk c;
    c.data = buf;
    while (c.len < chunk_) {
      ssize_t r = positioned ? ::pread(fd, buf + c.len, chunk_ - c.len, at)
                             : ::read(fd, buf + c.len, chunk_ - c.len);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EINVAL && direct) {  // the file system refused after all
        int flags = ::fcntl(fd, F_GETFL);
        if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_DIRECT);
        direct = false;
        continue;
      }
      if (r < 0) {
        c.error = Status::FromErrno(errno, "read " + name_);
        break;
      }
      if (r == 0) break;
      c.len += static_cast<size_t>(r);
      at += r;
      if (direct && static_cast<size_t>(r) % 4096 != 0) {  // the end, or a short read
        int flags = ::fcntl(fd, F_GETFL);
        if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_DIRECT);
        direct = false;
      }
    }
    if (positioned) ::lseek(fd, at, SEEK_SET);  // the fd's offset follows what was read
    const bool last = c.len < chunk_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.push_back(c);
    }
    cv_.notify_all();
    if (last) return;  // the end of the file, or an error: nothing follows
  }
}

Status PrefetchSource::Next() {
  std::unique_lock<std::mutex> lock(mu_);
  // The chunk before the current one goes back to the reader; the current
  // one stays readable through the next call too (see ReadInPlace).
  if (prev_) free_.push_back(prev_);
  prev_ = cur_.data;
  cur_ = Chunk();
  pos_ = 0;
  cv_.notify_all();
  cv_.wait(lock, [&] { return !ready_.empty(); });
  cur_ = ready_.front();
  ready_.pop_front();
  if (!cur_.error.ok()) return cur_.error;
  if (cur_.len < chunk_) eof_ = true;
  return Status::Ok();
}

Result<size_t> PrefetchSource::ReadInPlace(const char** data, size_t n) {
  if (n == 0) return size_t{0};
  if (pos_ == cur_.len) {
    if (eof_ || (cur_.data && !cur_.error.ok())) {
      if (!cur_.error.ok()) return cur_.error;
      return size_t{0};
    }
    STASIS_RETURN_IF_ERROR(Next());
    if (cur_.len == 0) return size_t{0};
  }
  size_t take = std::min(n, cur_.len - pos_);
  *data = cur_.data + pos_;
  pos_ += take;
  offset_ += take;
  return take;
}

Result<size_t> PrefetchSource::Read(void* data, size_t n) {
  const char* from = nullptr;
  STASIS_ASSIGN_OR_RETURN(size_t got, ReadInPlace(&from, n));
  if (got) std::memcpy(data, from, got);
  return got;
}

Status ByteSink::WriteBorrowed(char* buffer, size_t n) {
  (void)buffer;
  (void)n;
  return Status::Error(ENOTSUP, "this sink lends no buffers");
}

Status ReadFully(ByteSource* source, void* data, size_t n, const char* what) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < n) {
    Result<size_t> r = source->Read(p + done, n - done);
    if (!r) return r.error();
    if (*r == 0) {
      return Status::Corrupt(std::string("truncated: end of data inside ") + what + " at byte " +
                             std::to_string(source->Offset()));
    }
    done += *r;
  }
  return Status::Ok();
}

FdSink::FdSink(UniqueFd fd, std::string name, size_t buffer_size)
    : fd_(std::move(fd)), name_(std::move(name)), capacity_(buffer_size) {
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, capacity_) != 0) mem = nullptr;
  buffer_.reset(static_cast<char*>(mem));
  if (!buffer_) capacity_ = 0;
}

FdSink::~FdSink() {
  // The buffer_ deleter is delete[], which posix_memalign memory must not
  // use: release it by hand.
  free(buffer_.release());
}

Result<UniqueFd> OpenRegularNoFollow(int dirfd, const std::string& name, const std::string& shown) {
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ELOOP) return Status::Error(ELOOP, shown + " is a symbolic link; refusing it");
    return Status::FromErrno(errno, "open " + shown);
  }
  UniqueFd owned(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + shown);
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, shown + " is not a regular file");
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return owned;
}

Status WriteFully(int fd, const void* data, size_t n, const std::string& name) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + name);
    }
    if (w == 0) return Status::Error(EIO, "write " + name + ": wrote nothing");
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Status SendWithFds(int sock, const void* data, size_t n, const std::vector<int>& fds,
                   const std::string& what) {
  if (fds.size() > 8) return Status::Error(EINVAL, "too many fds for one message to " + what);
  struct iovec iov = {const_cast<void*>(data), n};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  if (!fds.empty()) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    if (::sendmsg(sock, &msg, MSG_NOSIGNAL) >= 0) return Status::Ok();
    if (errno != EINTR) return Status::FromErrno(errno, "send to " + what);
  }
}

Status FdSink::WriteRaw(const void* data, size_t n) {
  return WriteFully(fd_.get(), data, n, name_);
}

Status FdSink::Write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  if (used_ + n > capacity_) {
    STASIS_RETURN_IF_ERROR(Flush());
    if (n >= capacity_) {
      STASIS_RETURN_IF_ERROR(WriteRaw(p, n));
      offset_ += n;
      return Status::Ok();
    }
  }
  std::memcpy(buffer_.get() + used_, p, n);
  used_ += n;
  offset_ += n;
  return Status::Ok();
}

Status FdSink::Flush() {
  if (used_ == 0) return Status::Ok();
  Status s = WriteRaw(buffer_.get(), used_);
  used_ = 0;
  return s;
}

Status FdSink::Sync() {
  STASIS_RETURN_IF_ERROR(Flush());
  if (::fsync(fd_.get()) != 0) return Status::FromErrno(errno, "fsync " + name_);
  return Status::Ok();
}

FdSource::FdSource(UniqueFd fd, std::string name, size_t buffer_size)
    : fd_(std::move(fd)),
      name_(std::move(name)),
      buffer_(new char[buffer_size]),
      capacity_(buffer_size) {}

Result<size_t> FdSource::Read(void* data, size_t n) {
  if (n == 0) return size_t{0};
  char* out = static_cast<char*>(data);
  if (begin_ == end_) {
    // Large reads bypass the buffer.
    if (n >= capacity_) {
      for (;;) {
        ssize_t r = ::read(fd_.get(), out, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return Status::FromErrno(errno, "read " + name_);
        offset_ += static_cast<uint64_t>(r);
        return static_cast<size_t>(r);
      }
    }
    for (;;) {
      ssize_t r = ::read(fd_.get(), buffer_.get(), capacity_);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Status::FromErrno(errno, "read " + name_);
      begin_ = 0;
      end_ = static_cast<size_t>(r);
      break;
    }
    if (end_ == 0) return size_t{0};
  }
  size_t take = std::min(n, end_ - begin_);
  std::memcpy(out, buffer_.get() + begin_, take);
  begin_ += take;
  offset_ += take;
  return take;
}

Result<uint64_t> FdSource::Skip(uint64_t n) {
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0 || !S_ISREG(st.st_mode))
    return Status::Error(ENOTSUP, name_ + " is not a regular file: cannot skip");
  uint64_t buffered = std::min<uint64_t>(n, end_ - begin_);
  begin_ += buffered;
  uint64_t rest = n - buffered;
  off_t here = ::lseek(fd_.get(), 0, SEEK_CUR);
  if (here < 0) return Status::FromErrno(errno, "seek " + name_);
  uint64_t room = static_cast<uint64_t>(st.st_size) > static_cast<uint64_t>(here)
                      ? static_cast<uint64_t>(st.st_size) - static_cast<uint64_t>(here)
                      : 0;
  rest = std::min(rest, room);
  if (rest && ::lseek(fd_.get(), static_cast<off_t>(rest), SEEK_CUR) < 0)
    return Status::FromErrno(errno, "seek " + name_);
  offset_ += buffered + rest;
  return buffered + rest;
}

Result<size_t> MemorySource::Read(void* data, size_t n) {
  size_t take = std::min(n, size_ - pos_);
  if (take > 0) std::memcpy(data, data_ + pos_, take);
  pos_ += take;
  return take;
}

}  // namespace stasis
