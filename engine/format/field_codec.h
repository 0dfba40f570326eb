// The tag-length-value encoding of metadata payloads (docs/format.md,
// "Metadata encoding"), as two visitors over one schema (schema.h): a
// FieldWriter appends fields, a FieldReader decodes one field into the
// member its tag names. Because both walk the same Fields() function, the
// encoder and decoder cannot disagree about a tag, a type or a limit.
//
// Internal to engine/format. Values, not thread-safe.
#pragma once

#include <cerrno>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "engine/base/status.h"
#include "engine/format/context.h"
#include "engine/format/format_constants.h"

namespace stasis::format::internal {

// `S` is T or const T: one Fields() template serves encoding and decoding.
template <class S, class T>
concept Is = std::same_as<std::remove_const_t<S>, T>;

// --- little-endian fixed-width integers --------------------------------------

inline void StoreU16(char* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void StoreU32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void StoreU64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline uint16_t LoadU16(const char* p) {
  uint16_t v = 0;
  for (int i = 1; i >= 0; --i) v = static_cast<uint16_t>((v << 8) | static_cast<uint8_t>(p[i]));
  return v;
}
inline uint32_t LoadU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
inline uint64_t LoadU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
inline void PutU32(std::string* out, uint32_t v) {
  char b[4];
  StoreU32(b, v);
  out->append(b, 4);
}
inline void PutU64(std::string* out, uint64_t v) {
  char b[8];
  StoreU64(b, v);
  out->append(b, 8);
}

// --- encoding ----------------------------------------------------------------

// Appends fields to a string. Values beyond a limit make status() an EINVAL
// error naming the field; the output is then garbage and must be dropped.
class FieldWriter {
 public:
  static constexpr bool kWrites = true;
  explicit FieldWriter(std::string* out) : out_(out) {}

  void U32(uint32_t tag, const char*, uint32_t v) {
    Header(tag, 4);
    PutU32(out_, v);
  }
  void U64(uint32_t tag, const char*, uint64_t v) {
    Header(tag, 8);
    PutU64(out_, v);
  }
  void I32(uint32_t tag, const char* name, int32_t v) { U32(tag, name, static_cast<uint32_t>(v)); }
  void I64(uint32_t tag, const char* name, int64_t v) { U64(tag, name, static_cast<uint64_t>(v)); }

  // Text of at most `max` bytes.
  void Text(uint32_t tag, const char* name, const std::string& s, size_t max) {
    if (s.size() > max) {
      Fail(name,
           "is " + std::to_string(s.size()) + " bytes, over the limit of " + std::to_string(max));
      return;
    }
    Raw(tag, s.data(), s.size());
  }
  // A path: at most kMaxPathLength bytes, no NUL.
  void Path(uint32_t tag, const char* name, const std::string& s) {
    if (s.find('\0') != std::string::npos) {
      Fail(name, "contains a NUL byte");
      return;
    }
    Text(tag, name, s, kMaxPathLength);
  }
  void Bytes(uint32_t tag, const char* name, const std::string& s) {
    Text(tag, name, s, kMaxMetaLength);
  }
  void Bytes(uint32_t tag, const char* name, const std::vector<uint8_t>& v) {
    if (v.size() > kMaxMetaLength) {
      Fail(name, "is " + std::to_string(v.size()) + " bytes, over the limit of " +
                     std::to_string(kMaxMetaLength));
      return;
    }
    Raw(tag, v.data(), v.size());
  }
  void RepeatedU32(uint32_t tag, const char* name, const std::vector<uint32_t>& v, size_t max) {
    if (!CountOk(name, v.size(), max)) return;
    for (uint32_t x : v) U32(tag, name, x);
  }
  void RepeatedText(uint32_t tag, const char* name, const std::vector<std::string>& v,
                    size_t max_length, size_t max) {
    if (!CountOk(name, v.size(), max)) return;
    for (const std::string& s : v) Text(tag, name, s, max_length);
  }
  // Page runs as packed (u64 start, u64 npages) records.
  void Runs(uint32_t tag, const char* name, const std::vector<PageRun>& runs) {
    if (!CountOk(name, runs.size(), kMaxMetaLength / kPageRunSize)) return;
    Header(tag, runs.size() * kPageRunSize);
    for (const PageRun& r : runs) {
      PutU64(out_, r.start);
      PutU64(out_, r.npages);
    }
  }

  template <class T>
  void Message(uint32_t tag, const char* name, const T& m) {
    size_t at = out_->size();
    Header(tag, 0);
    bool was_ok = status_.ok();
    Fields(*this, m);
    if (was_ok && !status_.ok()) status_ = status_.Prefixed(name);
    size_t length = out_->size() - at - kFieldHeaderSize;
    if (length > kMaxMetaLength) {
      Fail(name, "encodes to " + std::to_string(length) + " bytes, over the limit");
      return;
    }
    StoreU32(out_->data() + at + 4, static_cast<uint32_t>(length));
  }
  template <class T>
  void RepeatedMessage(uint32_t tag, const char* name, const std::vector<T>& v, size_t max) {
    if (!CountOk(name, v.size(), max)) return;
    for (size_t i = 0; i < v.size() && status_.ok(); ++i) {
      Message(tag, name, v[i]);
      if (!status_.ok()) {
        // "mapping: path: ..." -> "mapping[3]: path: ..."
        std::string m = status_.message();
        std::string head = std::string(name) + ": ";
        if (m.compare(0, head.size(), head) == 0) m.erase(0, head.size());
        status_ = Status::Error(EINVAL, std::string(name) + "[" + std::to_string(i) + "]: " + m);
      }
    }
  }

  const Status& status() const { return status_; }

 private:
  void Header(uint32_t tag, size_t length) {
    PutU32(out_, tag);
    PutU32(out_, static_cast<uint32_t>(length));
  }
  void Raw(uint32_t tag, const void* data, size_t n) {
    Header(tag, n);
    out_->append(static_cast<const char*>(data), n);
  }
  bool CountOk(const char* name, size_t count, size_t max) {
    if (count <= max) return true;
    Fail(name,
         "has " + std::to_string(count) + " entries, over the limit of " + std::to_string(max));
    return false;
  }
  void Fail(const char* name, const std::string& what) {
    if (status_.ok()) status_ = Status::Error(EINVAL, std::string(name) + " " + what);
  }

  std::string* out_;
  Status status_;
};

// --- decoding ----------------------------------------------------------------

// Decodes one field (tag, value) into whichever member the schema names with
// that tag; other members are left alone, so an unknown tag is skipped.
// `seen` tracks singular tags of the enclosing message to refuse duplicates.
class FieldReader {
 public:
  static constexpr bool kWrites = false;
  FieldReader(uint32_t tag, std::string_view value, uint64_t* seen)
      : tag_(tag), value_(value), seen_(seen) {}

  void U32(uint32_t tag, const char* name, uint32_t& v) {
    if (Take(tag, name, true) && Fixed(name, 4)) v = LoadU32(value_.data());
  }
  void U64(uint32_t tag, const char* name, uint64_t& v) {
    if (Take(tag, name, true) && Fixed(name, 8)) v = LoadU64(value_.data());
  }
  void I32(uint32_t tag, const char* name, int32_t& v) {
    if (Take(tag, name, true) && Fixed(name, 4)) v = static_cast<int32_t>(LoadU32(value_.data()));
  }
  void I64(uint32_t tag, const char* name, int64_t& v) {
    if (Take(tag, name, true) && Fixed(name, 8)) v = static_cast<int64_t>(LoadU64(value_.data()));
  }
  void Text(uint32_t tag, const char* name, std::string& s, size_t max) {
    if (Take(tag, name, true) && Bounded(name, max)) s.assign(value_);
  }
  void Path(uint32_t tag, const char* name, std::string& s) {
    if (!Take(tag, name, true) || !Bounded(name, kMaxPathLength)) return;
    if (value_.find('\0') != std::string_view::npos) {
      Fail(name, "contains a NUL byte");
      return;
    }
    s.assign(value_);
  }
  void Bytes(uint32_t tag, const char* name, std::string& s) {
    if (Take(tag, name, true)) s.assign(value_);
  }
  void Bytes(uint32_t tag, const char* name, std::vector<uint8_t>& v) {
    if (Take(tag, name, true)) v.assign(value_.begin(), value_.end());
  }
  void RepeatedU32(uint32_t tag, const char* name, std::vector<uint32_t>& v, size_t max) {
    if (Take(tag, name, false) && Room(name, v.size(), max) && Fixed(name, 4)) {
      v.push_back(LoadU32(value_.data()));
    }
  }
  void RepeatedText(uint32_t tag, const char* name, std::vector<std::string>& v, size_t max_length,
                    size_t max) {
    if (Take(tag, name, false) && Room(name, v.size(), max) && Bounded(name, max_length)) {
      v.emplace_back(value_);
    }
  }
  void Runs(uint32_t tag, const char* name, std::vector<PageRun>& runs) {
    if (!Take(tag, name, true)) return;
    if (value_.size() % kPageRunSize != 0) {
      Fail(name, "length " + std::to_string(value_.size()) + " is not a multiple of " +
                     std::to_string(kPageRunSize));
      return;
    }
    runs.resize(value_.size() / kPageRunSize);  // paid for by bytes present
    for (size_t i = 0; i < runs.size(); ++i) {
      runs[i].start = LoadU64(value_.data() + i * kPageRunSize);
      runs[i].npages = LoadU64(value_.data() + i * kPageRunSize + 8);
    }
  }
  template <class T>
  void Message(uint32_t tag, const char* name, T& m) {
    if (!Take(tag, name, true)) return;
    Status s = DecodeMessage(value_, &m);
    if (!s.ok()) status_ = s.Prefixed(name);
  }
  template <class T>
  void RepeatedMessage(uint32_t tag, const char* name, std::vector<T>& v, size_t max) {
    if (!Take(tag, name, false) || !Room(name, v.size(), max)) return;
    v.emplace_back();
    Status s = DecodeMessage(value_, &v.back());
    if (!s.ok()) status_ = s.Prefixed(std::string(name) + "[" + std::to_string(v.size() - 1) + "]");
  }

  const Status& status() const { return status_; }

  template <class T>
  static Status DecodeMessage(std::string_view in, T* m);

 private:
  bool Take(uint32_t tag, const char* name, bool singular) {
    if (tag != tag_ || !status_.ok()) return false;
    if (singular) {
      uint64_t bit = uint64_t{1} << tag;  // known tags are <= kMaxKnownTag
      if (*seen_ & bit) {
        Fail(name, "appears twice");
        return false;
      }
      *seen_ |= bit;
    }
    return true;
  }
  bool Fixed(const char* name, size_t size) {
    if (value_.size() == size) return true;
    Fail(name,
         "has length " + std::to_string(value_.size()) + ", expected " + std::to_string(size));
    return false;
  }
  bool Bounded(const char* name, size_t max) {
    if (value_.size() <= max) return true;
    Fail(name, "is " + std::to_string(value_.size()) + " bytes, over the limit of " +
                   std::to_string(max));
    return false;
  }
  bool Room(const char* name, size_t count, size_t max) {
    if (count < max) return true;
    Fail(name, "has more than " + std::to_string(max) + " entries");
    return false;
  }
  void Fail(const char* name, const std::string& what) {
    if (status_.ok()) status_ = Status::Corrupt(std::string(name) + " " + what);
  }

  uint32_t tag_;
  std::string_view value_;
  uint64_t* seen_;
  Status status_;
};

// Walks the fields of one message, handing each to `fields(FieldReader&)`.
// Refuses a field header or value that runs past the message, and tag 0.
template <class F>
Status DecodeFields(std::string_view in, F&& fields) {
  uint64_t seen = 0;
  size_t pos = 0;
  while (pos < in.size()) {
    size_t left = in.size() - pos;
    if (left < kFieldHeaderSize) {
      return Status::Corrupt("field at byte " + std::to_string(pos) +
                             " of its message is cut short (" + std::to_string(left) +
                             " bytes left)");
    }
    uint32_t tag = LoadU32(in.data() + pos);
    uint32_t length = LoadU32(in.data() + pos + 4);
    if (tag == 0) return Status::Corrupt("field at byte " + std::to_string(pos) + " has tag 0");
    if (length > left - kFieldHeaderSize) {
      return Status::Corrupt("field " + std::to_string(tag) + " at byte " + std::to_string(pos) +
                             " claims " + std::to_string(length) + " bytes, only " +
                             std::to_string(left - kFieldHeaderSize) + " left in its message");
    }
    FieldReader reader(tag, in.substr(pos + kFieldHeaderSize, length), &seen);
    fields(reader);
    if (!reader.status().ok()) return reader.status();
    pos += kFieldHeaderSize + length;
  }
  return Status::Ok();
}

template <class T>
Status FieldReader::DecodeMessage(std::string_view in, T* m) {
  return DecodeFields(in, [m](FieldReader& r) { Fields(r, *m); });
}

// Encodes the fields `fields(FieldWriter&)` visits, appending to `out`.
template <class F>
Status EncodeFields(std::string* out, F&& fields) {
  FieldWriter writer(out);
  fields(writer);
  return writer.status();
}

}  // namespace stasis::format::internal
