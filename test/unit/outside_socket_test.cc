// The rule for sockets leading outside a checkpoint (which may be saved as
// closed) and what a network socket is, read from real sockets of this
// process on the loopback interface.
#include "engine/core/fd/outside_socket.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "engine/base/fd.h"
#include "engine/format/context.h"

namespace stasis::core {
namespace {

uint16_t PortOf(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  return ntohs(a.sin_port);
}

uint64_t InodeOf(int fd) {
  struct stat st;
  EXPECT_EQ(::fstat(fd, &st), 0);
  return static_cast<uint64_t>(st.st_ino);
}

OutsideSocket Inspect(int fd) {
  OutsideSocket s;
  std::string why;
  EXPECT_TRUE(InspectNetSocket(::getpid(), fd, InodeOf(fd), &s, &why)) << why;
  return s;
}

TEST(OutsideSocket, ListenersAndUnconnectedMaySaveConnectionsNot) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  a.sin_port = htons(PortOf(listener.get()));
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  UniqueFd served(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(served);
  UniqueFd unbound(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UniqueFd udp(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  UniqueFd udp_connected(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(udp_connected.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);

  const std::string port = std::to_string(PortOf(listener.get()));
  OutsideSocket l = Inspect(listener.get());
  EXPECT_EQ(l.state, format::kOutsideListening);
  EXPECT_EQ(l.Text(), "TCP 127.0.0.1:" + port + " listening");
  OutsideSocket c = Inspect(client.get());
  EXPECT_EQ(c.state, format::kOutsideConnected);
  EXPECT_EQ(c.peer, "127.0.0.1:" + port);
  EXPECT_EQ(c.Text(), "TCP " + c.local + " -> 127.0.0.1:" + port);
  OutsideSocket u = Inspect(unbound.get());
  EXPECT_EQ(u.state, format::kOutsideUnconnected);
  EXPECT_EQ(u.Text(), "TCP (unbound)");
  EXPECT_EQ(Inspect(udp.get()).state, format::kOutsideUnconnected);
  EXPECT_EQ(Inspect(udp_connected.get()).state, format::kOutsideConnected);
  EXPECT_EQ(Inspect(udp_connected.get()).family, "UDP");

  for (const OutsideSocket* s : {&l, &u}) {
    EXPECT_TRUE(MaySaveOutsideSocket(OutsideSockets::kCloseUnconnected, *s)) << s->Text();
    EXPECT_TRUE(MaySaveOutsideSocket(OutsideSockets::kCloseAll, *s));
    EXPECT_FALSE(MaySaveOutsideSocket(OutsideSockets::kRefuse, *s));
  }
  EXPECT_FALSE(MaySaveOutsideSocket(OutsideSockets::kCloseUnconnected, c));
  EXPECT_FALSE(MaySaveOutsideSocket(OutsideSockets::kRefuse, c));
  EXPECT_TRUE(MaySaveOutsideSocket(OutsideSockets::kCloseAll, c));

  // The peer of the client is the accepted socket, held by this process.
  struct stat st;
  ASSERT_EQ(::fstat(served.get(), &st), 0);
  EXPECT_EQ(FindTcpPeerInode(::getpid(), c), static_cast<uint64_t>(st.st_ino));
  std::string comm;
  EXPECT_EQ(FindSocketHolder(static_cast<uint64_t>(st.st_ino), &comm), ::getpid());
  EXPECT_FALSE(comm.empty());
}

// Without the socket itself (an fd number it is not at: pidfd_getfd fails),
// the same from /proc/net by inode.
TEST(OutsideSocket, FromProcNetWhenTheSocketCannotBeTaken) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  a.sin_port = htons(PortOf(listener.get()));
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const int nowhere = 1 << 20;
  OutsideSocket l, c;
  std::string why;
  ASSERT_TRUE(InspectNetSocket(::getpid(), nowhere, InodeOf(listener.get()), &l, &why)) << why;
  EXPECT_EQ(l.Text(), Inspect(listener.get()).Text());
  EXPECT_EQ(l.state, format::kOutsideListening);
  ASSERT_TRUE(InspectNetSocket(::getpid(), nowhere, InodeOf(client.get()), &c, &why)) << why;
  EXPECT_EQ(c.Text(), Inspect(client.get()).Text());
  EXPECT_EQ(c.state, format::kOutsideConnected);
  UniqueFd unbound(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_FALSE(InspectNetSocket(::getpid(), nowhere, InodeOf(unbound.get()), &c, &why));
  EXPECT_NE(why.find("cannot read"), std::string::npos) << why;
}

TEST(OutsideSocket, OtherFamiliesAreRefusedByName) {
  UniqueFd nl(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
  ASSERT_TRUE(nl);
  OutsideSocket s;
  std::string why;
  EXPECT_FALSE(InspectNetSocket(::getpid(), nl.get(), InodeOf(nl.get()), &s, &why));
  EXPECT_NE(why.find("family 16"), std::string::npos) << why;
  EXPECT_NE(why.find("not a UNIX, TCP or UDP socket"), std::string::npos) << why;
}

}  // namespace
}  // namespace stasis::core
