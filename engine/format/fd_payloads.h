// The typed payloads some kinds of fd keep in FileDesc::data
// (docs/format.md, "Files"): their structs and the only code that turns
// them into bytes and back. engine/core fills and reads these structs; it
// never packs or parses FileDesc::data itself.
//
// Each Decode takes the payload as stored and refuses a payload of the
// wrong size or shape with an EBADMSG Status that names the kind and what
// is wrong; the caller prefixes the fd. Encode never fails: every value of
// the struct has an encoding. Encode(Decode(bytes)) == bytes for every
// payload Decode accepts (test/unit/golden_context_test.cc checks it on
// contexts written by earlier releases).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/status.h"

namespace stasis::format {

// --- kFileTimerfd ---------------------------------------------------------
// 32 bytes: i32 clock, u32 settime flags, u64 unread expirations,
// u64 ns left (0: disarmed, or due), u64 interval ns.
struct TimerfdState {
  int32_t clock = 0;         // CLOCK_* given to timerfd_create
  uint32_t flags = 0;        // TFD_TIMER_* given to timerfd_settime
  uint64_t ticks = 0;        // expirations not yet read
  uint64_t value_ns = 0;     // time left
  uint64_t interval_ns = 0;  // 0: one-shot
  bool operator==(const TimerfdState&) const = default;
};
inline constexpr size_t kTimerfdStateSize = 32;
std::string EncodeTimerfdState(const TimerfdState& state);
Result<TimerfdState> DecodeTimerfdState(std::string_view data);

// --- kFileEpoll -----------------------------------------------------------
// One 16-byte record per registered fd: u32 fd, u32 events, u64 data
// (epoll_event.data as the program gave it).
struct EpollTarget {
  uint32_t fd = 0;
  uint32_t events = 0;  // EPOLL* flags
  uint64_t data = 0;
  bool operator==(const EpollTarget&) const = default;
};
inline constexpr size_t kEpollTargetSize = 16;
std::string EncodeEpollTargets(const std::vector<EpollTarget>& targets);
Result<std::vector<EpollTarget>> DecodeEpollTargets(std::string_view data);

// --- kFileEventfd ---------------------------------------------------------
// Empty, or the one byte 1 for EFD_SEMAPHORE (the counter is in `pos`).
struct EventfdState {
  bool semaphore = false;
  bool operator==(const EventfdState&) const = default;
};
std::string EncodeEventfdState(const EventfdState& state);
Result<EventfdState> DecodeEventfdState(std::string_view data);

// --- kFilePtyMaster, kFilePtySlave ----------------------------------------
// 52 bytes: the terminal's settings as Linux's struct termios2 on x86-64
// (44 bytes: u32 c_iflag, c_oflag, c_cflag, c_lflag; u8 c_line; u8 c_cc[19];
// u32 c_ispeed, c_ospeed), then its struct winsize (u16 ws_row, ws_col,
// ws_xpixel, ws_ypixel).
struct TerminalState {
  uint32_t iflag = 0, oflag = 0, cflag = 0, lflag = 0;
  uint8_t line = 0;
  uint8_t cc[19] = {};
  uint32_t ispeed = 0, ospeed = 0;
  uint16_t rows = 0, cols = 0, xpixel = 0, ypixel = 0;
  bool operator==(const TerminalState&) const = default;
};
inline constexpr size_t kTerminalStateSize = 52;
std::string EncodeTerminalState(const TerminalState& state);
Result<TerminalState> DecodeTerminalState(std::string_view data);

// --- kFileUnixSocket ------------------------------------------------------
// The receive queue: {u32 length, length bytes} records, back to back. A
// stream socket has one record (its queued bytes); a datagram or seqpacket
// socket one per message, oldest first. Empty: nothing queued.
void AppendSocketQueueRecord(std::string* data, std::string_view message);
std::string EncodeSocketQueue(const std::vector<std::string_view>& messages);
// The messages, as views into `data` (valid while it is).
Result<std::vector<std::string_view>> DecodeSocketQueue(std::string_view data);

}  // namespace stasis::format
