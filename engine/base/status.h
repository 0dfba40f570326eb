// Status and Result<T>: how every stasis layer reports failure.
//
// A Status is either ok or an error made of an errno-style code and a
// one-line message that names what was being done and to what
// ("open /pfs/ckpt/1/2/node.ctx: Permission denied"). Result<T> holds a T or
// a Status; its member names follow std::expected (has_value, value, error)
// so that a later switch to std::expected is an alias. Both are plain values:
// copyable, movable, not thread-safe to mutate from two threads.
#pragma once

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

namespace stasis {

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  // An error with an errno-style code (EINVAL, EIO, ...) and a message.
  static Status Error(int code, std::string message) {
    Status s;
    s.code_ = code == 0 ? EIO : code;
    s.message_ = std::move(message);
    return s;
  }
  // An error for a failed system call: "<what>: <strerror(err)>".
  static Status FromErrno(int err, const std::string& what) {
    return Error(err, what + ": " + std::strerror(err));
  }
  // A corrupt or hostile context file or message.
  static Status Corrupt(std::string message) { return Error(EBADMSG, std::move(message)); }

  bool ok() const { return code_ == 0; }
  explicit operator bool() const { return ok(); }
  int code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const { return ok() ? "ok" : message_; }

  // Adds context in front of the message: "<context>: <message>".
  Status Prefixed(const std::string& context) const {
    if (ok()) return *this;
    return Error(code_, context + ": " + message_);
  }

 private:
  int code_ = 0;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.ok()) status_ = Status::Error(EIO, "Result built from an ok Status");
  }

  bool has_value() const { return value_.has_value(); }
  explicit operator bool() const { return has_value(); }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  const Status& error() const { return status_; }
  Status status() const { return has_value() ? Status::Ok() : status_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace stasis

// Returns early from the enclosing function if the expression is an error.
#define STASIS_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::stasis::Status stasis_status_ = (expr);        \
    if (!stasis_status_.ok()) return stasis_status_; \
  } while (0)

#define STASIS_CONCAT_INNER(a, b) a##b
#define STASIS_CONCAT(a, b) STASIS_CONCAT_INNER(a, b)
// Declares `lhs` from a Result<T>, returning its error early.
#define STASIS_ASSIGN_OR_RETURN(lhs, expr)                  \
  auto STASIS_CONCAT(stasis_result_, __LINE__) = (expr);    \
  if (!STASIS_CONCAT(stasis_result_, __LINE__).has_value()) \
    return STASIS_CONCAT(stasis_result_, __LINE__).error(); \
  lhs = std::move(STASIS_CONCAT(stasis_result_, __LINE__).value())
