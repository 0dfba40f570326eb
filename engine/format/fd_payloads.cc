// The typed fd payloads of FileDesc::data; see fd_payloads.h and
// docs/format.md, "Files".
#include "engine/format/fd_payloads.h"

#include "engine/format/field_codec.h"

namespace stasis::format {
namespace {

using internal::LoadU32;
using internal::LoadU64;
using internal::PutU32;
using internal::PutU64;

inline void PutU16(std::string* out, uint16_t v) {
  char b[2];
  internal::StoreU16(b, v);
  out->append(b, 2);
}

Status WrongSize(const char* what, size_t size, size_t want) {
  return Status::Corrupt(std::string(what) + " of " + std::to_string(size) + " bytes, not " +
                         std::to_string(want));
}

}  // namespace

std::string EncodeTimerfdState(const TimerfdState& s) {
  std::string out;
  out.reserve(kTimerfdStateSize);
  PutU32(&out, static_cast<uint32_t>(s.clock));
  PutU32(&out, s.flags);
  PutU64(&out, s.ticks);
  PutU64(&out, s.value_ns);
  PutU64(&out, s.interval_ns);
  return out;
}

Result<TimerfdState> DecodeTimerfdState(std::string_view data) {
  if (data.size() != kTimerfdStateSize)
    return WrongSize("timerfd state", data.size(), kTimerfdStateSize);
  const char* p = data.data();
  TimerfdState s;
  s.clock = static_cast<int32_t>(LoadU32(p));
  s.flags = LoadU32(p + 4);
  s.ticks = LoadU64(p + 8);
  s.value_ns = LoadU64(p + 16);
  s.interval_ns = LoadU64(p + 24);
  return s;
}

std::string EncodeEpollTargets(const std::vector<EpollTarget>& targets) {
  std::string out;
  out.reserve(targets.size() * kEpollTargetSize);
  for (const EpollTarget& t : targets) {
    PutU32(&out, t.fd);
    PutU32(&out, t.events);
    PutU64(&out, t.data);
  }
  return out;
}

Result<std::vector<EpollTarget>> DecodeEpollTargets(std::string_view data) {
  if (data.size() % kEpollTargetSize != 0)
    return Status::Corrupt("epoll targets of " + std::to_string(data.size()) +
                           " bytes, not a whole number of " + std::to_string(kEpollTargetSize) +
                           "-byte records");
  std::vector<EpollTarget> out(data.size() / kEpollTargetSize);
  for (size_t i = 0; i < out.size(); ++i) {
    const char* p = data.data() + i * kEpollTargetSize;
    out[i] = {LoadU32(p), LoadU32(p + 4), LoadU64(p + 8)};
  }
  return out;
}

std::string EncodeEventfdState(const EventfdState& s) {
  return s.semaphore ? std::string(1, '\1') : std::string();
}

Result<EventfdState> DecodeEventfdState(std::string_view data) {
  if (data.empty()) return EventfdState{};
  if (data.size() == 1 && data[0] == '\1') return EventfdState{true};
  return Status::Corrupt("eventfd state of " + std::to_string(data.size()) +
                         " bytes, not empty or the byte 1");
}

std::string EncodeTerminalState(const TerminalState& s) {
  std::string out;
  out.reserve(kTerminalStateSize);
  PutU32(&out, s.iflag);
  PutU32(&out, s.oflag);
  PutU32(&out, s.cflag);
  PutU32(&out, s.lflag);
  out.push_back(static_cast<char>(s.line));
  for (uint8_t c : s.cc) out.push_back(static_cast<char>(c));
  PutU32(&out, s.ispeed);
  PutU32(&out, s.ospeed);
  PutU16(&out, s.rows);
  PutU16(&out, s.cols);
  PutU16(&out, s.xpixel);
  PutU16(&out, s.ypixel);
  return out;
}

Result<TerminalState> DecodeTerminalState(std::string_view data) {
  if (data.size() != kTerminalStateSize)
    return WrongSize("terminal state", data.size(), kTerminalStateSize);
  const char* p = data.data();
  TerminalState s;
  s.iflag = LoadU32(p);
  s.oflag = LoadU32(p + 4);
  s.cflag = LoadU32(p + 8);
  s.lflag = LoadU32(p + 12);
  s.line = static_cast<uint8_t>(p[16]);
  for (size_t i = 0; i < sizeof s.cc; ++i) s.cc[i] = static_cast<uint8_t>(p[17 + i]);
  s.ispeed = LoadU32(p + 36);
  s.ospeed = LoadU32(p + 40);
  s.rows = internal::LoadU16(p + 44);
  s.cols = internal::LoadU16(p + 46);
  s.xpixel = internal::LoadU16(p + 48);
  s.ypixel = internal::LoadU16(p + 50);
  return s;
}

void AppendSocketQueueRecord(std::string* data, std::string_view message) {
  PutU32(data, static_cast<uint32_t>(message.size()));
  data->append(message);
}

std::string EncodeSocketQueue(const std::vector<std::string_view>& messages) {
  std::string out;
  for (std::string_view m : messages) AppendSocketQueueRecord(&out, m);
  return out;
}

Result<std::vector<std::string_view>> DecodeSocketQueue(std::string_view data) {
  std::vector<std::string_view> out;
  size_t off = 0;
  while (off < data.size()) {
    if (data.size() - off < 4)
      return Status::Corrupt("socket queue: " + std::to_string(data.size() - off) +
                             " bytes after record " + std::to_string(out.size()) +
                             ", too few for a length");
    const uint32_t len = LoadU32(data.data() + off);
    off += 4;
    if (len > data.size() - off)
      return Status::Corrupt("socket queue: record " + std::to_string(out.size()) + " of " +
                             std::to_string(len) + " bytes overruns the " +
                             std::to_string(data.size() - off) + " bytes left");
    out.push_back(data.substr(off, len));
    off += len;
  }
  return out;
}

}  // namespace stasis::format
