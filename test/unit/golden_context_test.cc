// Contexts written by an earlier release (test/golden/, see its README.md)
// must still be read by this one, byte for byte the same. For each file:
// it reads and validates whole; CopyContext writes it back to the very same
// bytes (so every metadata section decodes and re-encodes as it was); every
// typed fd payload (fd_payloads.h) decodes, re-encodes to its stored bytes,
// and holds what the program that was checkpointed built (its known
// state: timer periods, epoll data, terminal settings, queued messages,
// shared memory kinds).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "engine/format/context_io.h"
#include "engine/format/fd_payloads.h"
#include "engine/format/kind_names.h"

namespace stasis::format {
namespace {

const char* const kGolden[] = {"fd_timers",  "eventfd",     "pty",
                               "socketpair", "unix_listen", "shm_kinds"};

std::string ReadGolden(const std::string& name) {
  std::ifstream in(std::string(STASIS_GOLDEN_DIR) + "/" + name + ".golden", std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << name << ".golden";
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Context Load(const std::string& name) {
  std::string bytes = ReadGolden(name);
  MemorySource source(bytes.data(), bytes.size());
  Result<Context> ctx = ReadContext(&source, false);
  EXPECT_TRUE(ctx) << name << ": " << ctx.error().ToString();
  return ctx ? *ctx : Context{};
}

std::vector<const FileDesc*> FilesOfKind(const Context& ctx, uint32_t kind) {
  std::vector<const FileDesc*> out;
  for (const ProcessImage& p : ctx.processes)
    for (const FileDesc& f : p.files)
      if (f.kind == kind) out.push_back(&f);
  return out;
}

// Decode, then Encode gives the stored bytes back; a payload one byte
// shorter is refused.
template <class Decode, class Encode>
void ExpectRoundTrip(const std::string& name, const FileDesc& f, Decode decode, Encode encode,
                     bool empty_ok) {
  auto d = decode(f.data);
  ASSERT_TRUE(d) << name << " fd " << f.fd << " (" << FileKindName(f.kind)
                 << "): " << d.error().ToString();
  EXPECT_EQ(encode(*d), f.data) << name << " fd " << f.fd << " (" << FileKindName(f.kind) << ")";
  if (!f.data.empty() && !(empty_ok && f.data.size() == 1)) {
    auto shorter = decode(std::string_view(f.data).substr(0, f.data.size() - 1));
    EXPECT_FALSE(shorter) << name << " fd " << f.fd << ": a payload one byte short decodes";
  }
}

TEST(GoldenContext, ReadsAndCopiesToTheSameBytes) {
  for (const char* name : kGolden) {
    SCOPED_TRACE(name);
    std::string bytes = ReadGolden(name);
    ASSERT_FALSE(bytes.empty());
    EXPECT_LT(bytes.size(), 2u << 20) << "golden files stay small";
    MemorySource source(bytes.data(), bytes.size());
    StringSink sink;
    Status s = CopyContext(&source, &sink);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_TRUE(sink.bytes() == bytes) << "CopyContext changed bytes of " << name << ".golden ("
                                       << sink.bytes().size() << " against " << bytes.size() << ")";
  }
}

TEST(GoldenContext, EveryTypedPayloadRoundTrips) {
  size_t payloads = 0;
  for (const char* name : kGolden) {
    Context ctx = Load(name);
    for (const ProcessImage& p : ctx.processes) {
      for (const FileDesc& f : p.files) {
        switch (f.kind) {
          case kFileTimerfd:
            ExpectRoundTrip(name, f, DecodeTimerfdState, EncodeTimerfdState, false);
            break;
          case kFileEpoll:
            ExpectRoundTrip(name, f, DecodeEpollTargets, EncodeEpollTargets, false);
            break;
          case kFileEventfd:
            ExpectRoundTrip(name, f, DecodeEventfdState, EncodeEventfdState, true);
            break;
          case kFilePtyMaster:
          case kFilePtySlave:
            ExpectRoundTrip(name, f, DecodeTerminalState, EncodeTerminalState, false);
            break;
          case kFileUnixSocket:
            ExpectRoundTrip(name, f, DecodeSocketQueue, EncodeSocketQueue, false);
            break;
          default:
            continue;
        }
        ++payloads;
      }
    }
  }
  EXPECT_GE(payloads, 20u);
}

TEST(GoldenContext, TimerfdsHoldTheirTimers) {
  Context ctx = Load("fd_timers");
  std::vector<TimerfdState> timers;
  for (const FileDesc* f : FilesOfKind(ctx, kFileTimerfd))
    timers.push_back(*DecodeTimerfdState(f->data));
  ASSERT_EQ(timers.size(), 2u);
  std::sort(timers.begin(), timers.end(), [](const TimerfdState& a, const TimerfdState& b) {
    return a.interval_ns < b.interval_ns;
  });
  // t1: CLOCK_MONOTONIC, 300 s one-shot; t2: every 20 ms, never read.
  EXPECT_EQ(timers[0].clock, 1);
  EXPECT_EQ(timers[0].interval_ns, 0u);
  EXPECT_GT(timers[0].value_ns, 0u);
  EXPECT_LE(timers[0].value_ns, 300000000000u);
  EXPECT_EQ(timers[1].clock, 1);
  EXPECT_EQ(timers[1].interval_ns, 20000000u);
  EXPECT_GE(timers[1].ticks, 1u);
  ASSERT_EQ(FilesOfKind(ctx, kFileSignalfd).size(), 1u);
  EXPECT_NE(FilesOfKind(ctx, kFileSignalfd)[0]->pos & (1u << (10 - 1)), 0u) << "SIGUSR1";
}

TEST(GoldenContext, EpollHoldsItsTargets) {
  Context ctx = Load("eventfd");
  auto epolls = FilesOfKind(ctx, kFileEpoll);
  ASSERT_EQ(epolls.size(), 2u);  // the root's, and the child's copy
  for (const FileDesc* e : epolls) {
    auto targets = DecodeEpollTargets(e->data);
    ASSERT_TRUE(targets);
    ASSERT_EQ(targets->size(), 2u);
    std::vector<uint64_t> data;
    for (const EpollTarget& t : *targets) {
      EXPECT_EQ(t.events & 1u, 1u) << "EPOLLIN";
      data.push_back(t.data);
    }
    std::sort(data.begin(), data.end());
    EXPECT_EQ(data, (std::vector<uint64_t>{0x1d1e, 0x5eed0000e7e7f00dULL}));
  }
  int semaphores = 0;
  for (const FileDesc* f : FilesOfKind(ctx, kFileEventfd))
    semaphores += DecodeEventfdState(f->data)->semaphore;
  // The EFD_SEMAPHORE eventfd, in the root and the child (the writing
  // kernel, 6.18, shows the flag; Linux 6.5+ does).
  EXPECT_EQ(semaphores, 2);
}

TEST(GoldenContext, PtyHoldsItsTerminal) {
  Context ctx = Load("pty");
  auto masters = FilesOfKind(ctx, kFilePtyMaster);
  auto slaves = FilesOfKind(ctx, kFilePtySlave);
  ASSERT_EQ(masters.size(), 1u);
  ASSERT_GE(slaves.size(), 2u);  // the root's and the child's
  auto t = DecodeTerminalState(masters[0]->data);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->rows, 33);
  EXPECT_EQ(t->cols, 101);
  EXPECT_EQ(t->ispeed, 38400u);
  EXPECT_EQ(t->ospeed, 38400u);
  EXPECT_EQ(t->cc[6], 1) << "VMIN";
  EXPECT_EQ(t->cc[5], 0) << "VTIME";
  for (const FileDesc* s : slaves) {
    EXPECT_EQ(s->pos, masters[0]->pos);
    EXPECT_EQ(s->data, masters[0]->data);
  }
}

TEST(GoldenContext, SocketsHoldTheirQueues) {
  Context ctx = Load("socketpair");
  std::vector<size_t> stream, dgram;
  for (const FileDesc* f : FilesOfKind(ctx, kFileUnixSocket)) {
    EXPECT_EQ(f->sock_state, kSockEstablished) << SocketStateName(f->sock_state);
    auto q = DecodeSocketQueue(f->data);
    ASSERT_TRUE(q);
    for (std::string_view m : *q)
      (f->sock_type == SOCK_STREAM ? stream : dgram).push_back(m.size());
  }
  std::sort(stream.begin(), stream.end());
  std::sort(dgram.begin(), dgram.end());
  EXPECT_EQ(stream, (std::vector<size_t>{7000, 10000}));
  EXPECT_EQ(dgram, (std::vector<size_t>{1, 7, 100, 500, 2000}));

  Context listen = Load("unix_listen");
  int listening = 0, connected = 0;
  size_t queued = 0;
  for (const FileDesc* f : FilesOfKind(listen, kFileUnixSocket)) {
    listening += f->sock_state == kSockListen;
    connected += f->sock_state == kSockEstablished;
    auto q = DecodeSocketQueue(f->data);
    ASSERT_TRUE(q);
    for (std::string_view m : *q) queued += m.size();
  }
  EXPECT_GE(listening, 1);
  EXPECT_EQ(connected, 2);
  EXPECT_EQ(queued, 5000u);
}

TEST(GoldenContext, SharedMemoryKinds) {
  auto kinds = [](const Context& ctx) {
    std::vector<std::string> out;
    for (const SharedMemory& s : ctx.shared) out.push_back(SharedMemoryKindName(s.kind));
    std::sort(out.begin(), out.end());
    return out;
  };
  // test/golden/shm_kinds.c: 2 pages anonymous, a 3-page memfd, a 1-page
  // SysV segment, a 5000-byte unlinked file.
  Context ctx = Load("shm_kinds");
  EXPECT_EQ(kinds(ctx), (std::vector<std::string>{"anon", "file-by-value", "memfd", "sysv"}));
  for (const SharedMemory& s : ctx.shared) {
    switch (s.kind) {
      case kShmAnon:
        EXPECT_EQ(s.size, 2 * kPageSize);
        break;
      case kShmMemfd:
        EXPECT_EQ(s.name, "golden-memfd");
        EXPECT_EQ(s.size, 3 * kPageSize);
        break;
      case kShmSysv:
        EXPECT_EQ(s.size, kPageSize);
        break;
      case kShmFileByValue:
        EXPECT_EQ(s.size, 5000u);
        EXPECT_NE(s.name.find("/unlinked"), std::string::npos) << s.name;
        break;
    }
  }
}

TEST(FdPayloads, RefuseGarbledInput) {
  EXPECT_FALSE(DecodeTimerfdState(std::string(33, '\0')));
  EXPECT_FALSE(DecodeEpollTargets(std::string(17, '\0')));
  EXPECT_FALSE(DecodeEventfdState("\2"));
  EXPECT_FALSE(DecodeEventfdState(std::string(2, '\1')));
  EXPECT_FALSE(DecodeTerminalState(std::string(44, '\0')));
  std::string q;
  AppendSocketQueueRecord(&q, "hello");
  EXPECT_EQ(DecodeSocketQueue(q)->size(), 1u);
  EXPECT_FALSE(DecodeSocketQueue(q + "ab"));                   // a partial length
  EXPECT_FALSE(DecodeSocketQueue(q.substr(0, q.size() - 1)));  // a short record
  auto error = DecodeSocketQueue(std::string("\xff\0\0\0", 4));
  ASSERT_FALSE(error);
  EXPECT_NE(error.error().message().find("overruns"), std::string::npos)
      << error.error().ToString();
  EXPECT_EQ(error.error().code(), EBADMSG);
}

TEST(FdPayloads, EncodeIsLittleEndianAndFieldsInOrder) {
  TimerfdState t{-2, 1, 3, 4, 5};
  std::string b = EncodeTimerfdState(t);
  ASSERT_EQ(b.size(), kTimerfdStateSize);
  EXPECT_EQ(b.substr(0, 4), std::string("\xfe\xff\xff\xff", 4));
  EXPECT_EQ(b[4], 1);
  EXPECT_EQ(b[8], 3);
  EXPECT_EQ(b[16], 4);
  EXPECT_EQ(b[24], 5);
  EXPECT_EQ(*DecodeTimerfdState(b), t);
  TerminalState s;
  s.iflag = 1;
  s.line = 2;
  s.cc[18] = 3;
  s.ospeed = 4;
  s.rows = 5;
  s.ypixel = 6;
  b = EncodeTerminalState(s);
  ASSERT_EQ(b.size(), kTerminalStateSize);
  EXPECT_EQ(b[0], 1);
  EXPECT_EQ(b[16], 2);
  EXPECT_EQ(b[35], 3);
  EXPECT_EQ(b[40], 4);
  EXPECT_EQ(b[44], 5);
  EXPECT_EQ(b[50], 6);
  EXPECT_EQ(*DecodeTerminalState(b), s);
  EXPECT_EQ(EncodeEpollTargets({{7, 1, 0x0102030405060708ULL}}),
            std::string("\7\0\0\0\1\0\0\0\x08\x07\x06\x05\x04\x03\x02\x01", 16));
}

}  // namespace
}  // namespace stasis::format
