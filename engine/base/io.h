// Byte streams: the only way stasis moves context bytes to or from storage.
//
// ByteSink and ByteSource are the OS interface that tests control (in the
// style of LevelDB's Env): a test wraps a real sink to make the Nth write
// fail or report ENOSPC and checks that nothing already durable is lost.
// Implementations are not thread-safe; one writer or reader owns each.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"

namespace stasis {

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  // Writes all n bytes or fails.
  virtual Status Write(const void* data, size_t n) = 0;
  // Makes everything written so far durable (fsync).
  virtual Status Sync() = 0;
  // Bytes accepted so far.
  virtual uint64_t Offset() const = 0;

  // Zero-copy bulk data, for sinks that write from buffers of their own (a
  // pipelined file sink). Borrow lends an aligned buffer of *size bytes
  // (waiting for one to come free), or returns nullptr when the sink has no
  // such buffers: then use Write. WriteBorrowed writes the first n bytes of
  // a borrowed buffer after everything written before; the buffer belongs
  // to the sink again from that call on, whatever it returns.
  virtual char* Borrow(size_t* size) {
    *size = 0;
    return nullptr;
  }
  virtual Status WriteBorrowed(char* buffer, size_t n);
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Reads up to n bytes; returns 0 only at the end of the stream.
  virtual Result<size_t> Read(void* data, size_t n) = 0;
  // Bytes consumed so far.
  virtual uint64_t Offset() const = 0;
  // Zero-copy reads, for sources with buffers of their own: points *data at
  // up to n next bytes, returns how many (0 at the end). The bytes stay
  // valid through the next call too (so a reader may read a trailer before
  // it uses them), not longer. ENOTSUP: use Read.
  virtual Result<size_t> ReadInPlace(const char** data, size_t n);
  // Moves past the next n bytes without reading them (a seek), when the
  // source can; ENOTSUP otherwise. Short only at the end of the stream.
  virtual Result<uint64_t> Skip(uint64_t n);
};

// Writes all n bytes to fd (retrying short writes and EINTR); errors name `name`.
Status WriteFully(int fd, const void* data, size_t n, const std::string& name);

// Sends one packet (SOCK_SEQPACKET or datagram) with up to 8 fds beside it
// as SCM_RIGHTS; retries EINTR. `what` names the peer in the error.
Status SendWithFds(int sock, const void* data, size_t n, const std::vector<int>& fds,
                   const std::string& what);

// Opens `name` in `dirfd` (AT_FDCWD: a path) read-only, never through a
// symbolic link and never blocking on a FIFO; only a regular file is
// accepted. `shown` names it in errors.
Result<UniqueFd> OpenRegularNoFollow(int dirfd, const std::string& name, const std::string& shown);

// Reads exactly n bytes; a short stream is an error naming `what`.
Status ReadFully(ByteSource* source, void* data, size_t n, const char* what);

// A sink writing to an owned fd, buffering into large aligned writes.
class FdSink : public ByteSink {
 public:
  // `name` is used in error messages only.
  FdSink(UniqueFd fd, std::string name, size_t buffer_size = 4 << 20);
  ~FdSink() override;
  Status Write(const void* data, size_t n) override;
  Status Sync() override;  // flushes the buffer, then fsync
  uint64_t Offset() const override { return offset_; }
  Status Flush();
  int fd() const { return fd_.get(); }
  UniqueFd ReleaseFd() { return std::move(fd_); }

 private:
  Status WriteRaw(const void* data, size_t n);
  UniqueFd fd_;
  std::string name_;
  std::unique_ptr<char[]> buffer_;
  size_t capacity_;
  size_t used_ = 0;
  uint64_t offset_ = 0;
};

// A source reading from an owned fd with a read-ahead buffer.
class FdSource : public ByteSource {
 public:
  FdSource(UniqueFd fd, std::string name, size_t buffer_size = 4 << 20);
  Result<size_t> Read(void* data, size_t n) override;
  Result<uint64_t> Skip(uint64_t n) override;  // lseek on a regular file
  uint64_t Offset() const override { return offset_; }
  const std::string& name() const { return name_; }

 private:
  UniqueFd fd_;
  std::string name_;
  std::unique_ptr<char[]> buffer_;
  size_t capacity_;
  size_t begin_ = 0, end_ = 0;
  uint64_t offset_ = 0;
};

// A source over a file read ahead by a thread of its own: `depth` aligned
// chunks in flight, read with O_DIRECT where the file system allows it (the
// data goes from the disk to our buffers without the page cache), so the
// caller's work overlaps the disk's. Reads from the fd's current offset.
class PrefetchSource : public ByteSource {
 public:
  PrefetchSource(UniqueFd fd, std::string name, size_t chunk = 8u << 20, size_t depth = 3);
  ~PrefetchSource() override;
  Result<size_t> Read(void* data, size_t n) override;
  Result<size_t> ReadInPlace(const char** data, size_t n) override;
  uint64_t Offset() const override { return offset_; }
  const std::string& name() const { return name_; }

 private:
  struct Chunk {
    char* data = nullptr;
    size_t len = 0;
    Status error;
  };
  void ReaderLoop();
  Status Next();  // makes `cur_` the next chunk (waits for it)
  UniqueFd fd_;
  std::string name_;
  size_t chunk_;
  std::vector<char*> buffers_;
  Chunk cur_;
  char* prev_ = nullptr;
  size_t pos_ = 0;
  bool eof_ = false;
  uint64_t offset_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> ready_;
  std::vector<char*> free_;
  bool stop_ = false;
  std::thread reader_;
};

// A sink into memory (tests, the protocol).
class StringSink : public ByteSink {
 public:
  Status Write(const void* data, size_t n) override {
    bytes_.append(static_cast<const char*>(data), n);
    return Status::Ok();
  }
  Status Sync() override { return Status::Ok(); }
  uint64_t Offset() const override { return bytes_.size(); }
  const std::string& bytes() const { return bytes_; }
  std::string& bytes() { return bytes_; }

 private:
  std::string bytes_;
};

// A source over a borrowed byte range (tests, fuzzers, the protocol).
class MemorySource : public ByteSource {
 public:
  MemorySource(const void* data, size_t size)
      : data_(static_cast<const char*>(data)), size_(size) {}
  Result<size_t> Read(void* data, size_t n) override;
  uint64_t Offset() const override { return pos_; }

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace stasis
