// The TCP socket payload (engine/format/tcp_state.h): a full state survives
// encode and decode; a payload cut anywhere, or garbled, is refused with a
// message that says so.
#include "engine/format/tcp_state.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <string>

#include "engine/format/context_io.h"
#include "test/unit/test_util.h"

namespace stasis::format {
namespace {

TcpState Sample() {
  TcpState s;
  s.state = 1;
  s.peer_place = kTcpPeerHere;
  s.peer_inode = 123456;
  s.local = {AF_INET6, std::string(15, '\0') + '\1', 40001, 0};
  s.remote = {AF_INET6, std::string(15, '\0') + '\1', 5000, 0};
  s.flags = kTcpReuseAddr | kTcpNoDelay | kTcpOptTimestamps | kTcpOptSack | kTcpOptWscale;
  s.sndbuf = 65536;
  s.rcvbuf = 131072;
  s.keepidle = 7200;
  s.keepintvl = 75;
  s.keepcnt = 9;
  s.send_seq = 0xfffffff0u;  // wraps within the queue
  s.recv_seq = 17;
  for (int i = 0; i < 70000; ++i) s.send_queue.push_back(static_cast<char>(i * 7));
  s.recv_queue = std::string("\0received\0", 10);
  s.unsent = 30000;
  s.mss_clamp = 65483;
  s.snd_wscale = 7;
  s.rcv_wscale = 7;
  s.timestamp = 99;
  s.snd_wl1 = 1;
  s.snd_wnd = 2;
  s.max_window = 3;
  s.rcv_wnd = 4;
  s.rcv_wup = 5;
  return s;
}

TEST(TcpState, RoundTrip) {
  TcpState s = Sample();
  auto bytes = EncodeTcpState(s);
  ASSERT_TRUE(bytes) << bytes.error().message();
  auto back = DecodeTcpState(*bytes);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, s);
  // A listener and a fresh socket too.
  TcpState l;
  l.state = 10;
  l.local = {AF_INET, std::string("\x7f\0\0\1", 4), 5000, 0};
  l.backlog = 128;
  auto lb = EncodeTcpState(l);
  ASSERT_TRUE(lb);
  auto lback = DecodeTcpState(*lb);
  ASSERT_TRUE(lback) << lback.error().message();
  EXPECT_EQ(*lback, l);
  TcpState fresh;
  fresh.state = 7;
  auto fb = EncodeTcpState(fresh);
  ASSERT_TRUE(fb);
  EXPECT_TRUE(DecodeTcpState(*fb));
}

TEST(TcpState, RefusesEveryTruncation) {
  auto bytes = EncodeTcpState(Sample());
  ASSERT_TRUE(bytes);
  // Every cut, field boundaries included (the end field catches those).
  for (size_t n = 0; n < bytes->size(); n += (n < 200 ? 1 : 997)) {
    auto r = DecodeTcpState(std::string_view(*bytes).substr(0, n));
    ASSERT_FALSE(r) << "a payload cut to " << n << " of " << bytes->size() << " bytes decoded";
    EXPECT_NE(r.error().message().find("TCP payload"), std::string::npos) << r.error().message();
  }
  auto r = DecodeTcpState(std::string_view(*bytes).substr(0, bytes->size() - 1));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("cut short or garbled"), std::string::npos)
      << r.error().message();
}

TEST(TcpState, RefusesGarbledPayloads) {
  auto corrupt = [](TcpState s) {
    auto b = EncodeTcpState(s);
    EXPECT_TRUE(b);
    return DecodeTcpState(*b);
  };
  TcpState s = Sample();
  s.unsent = static_cast<uint32_t>(s.send_queue.size() + 1);
  EXPECT_FALSE(corrupt(s));
  s = Sample();
  s.local.addr = "abc";  // IPv6 needs 16 bytes
  EXPECT_FALSE(corrupt(s));
  s = Sample();
  s.state = 3;  // SYN_RECV is never saved
  EXPECT_FALSE(corrupt(s));
  s = Sample();
  s.remote.family = 0;
  s.remote.addr.clear();
  s.remote.port = 0;
  EXPECT_FALSE(corrupt(s));
  s = Sample();
  s.snd_wscale = 15;
  EXPECT_FALSE(corrupt(s));
  // A flipped length byte inside the message.
  auto b = EncodeTcpState(Sample());
  ASSERT_TRUE(b);
  std::string bad = *b;
  bad[4] = '\x7f';  // the first field's length
  auto r = DecodeTcpState(bad);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("TCP payload"), std::string::npos) << r.error().message();
}

// A context whose TCP connection names a peer that is not there (or not
// connected back to it) is refused whole: restore rebuilds both ends
// together and would otherwise leave one in repair mode.
TEST(TcpState, ContextRefusesAConnectionWithoutItsPeer) {
  Context ctx = testing::MakeFullContext();
  StringSink ok;
  ASSERT_TRUE(testing::WriteContext(ctx, &ok).ok());
  for (auto& p : ctx.processes)
    for (auto& f : p.files)
      if (f.kind == kFileTcpSocket && f.sock_inode == 4245) {
        TcpState t = DecodeTcpState(f.tcp).value();
        t.peer_inode = 999;
        f.tcp = EncodeTcpState(t).value();
      }
  StringSink sink;
  Status s = testing::WriteContext(ctx, &sink);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("names peer"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace stasis::format
