// TCP socket payload codec; see tcp_state.h and docs/format.md.
#include "engine/format/tcp_state.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include "engine/format/field_codec.h"

namespace stasis::format {
namespace internal {

template <class V, class S>
requires Is<S, TcpAddress>
void Fields(V& v, S& m) {
  v.U32(tcp_tag::kAddrFamily, "family", m.family);
  v.Text(tcp_tag::kAddrAddr, "addr", m.addr, 16);
  v.U32(tcp_tag::kAddrPort, "port", m.port);
  v.U32(tcp_tag::kAddrScopeId, "scope_id", m.scope_id);
}

template <class V, class S>
requires Is<S, TcpState>
void Fields(V& v, S& m) {
  v.U32(tcp_tag::kState, "state", m.state);
  v.U32(tcp_tag::kPeerPlace, "peer_place", m.peer_place);
  v.U64(tcp_tag::kPeerInode, "peer_inode", m.peer_inode);
  v.Message(tcp_tag::kLocal, "local", m.local);
  v.Message(tcp_tag::kRemote, "remote", m.remote);
  v.U32(tcp_tag::kBacklog, "backlog", m.backlog);
  v.U32(tcp_tag::kFlags, "flags", m.flags);
  v.U32(tcp_tag::kSndbuf, "sndbuf", m.sndbuf);
  v.U32(tcp_tag::kRcvbuf, "rcvbuf", m.rcvbuf);
  v.U32(tcp_tag::kKeepidle, "keepidle", m.keepidle);
  v.U32(tcp_tag::kKeepintvl, "keepintvl", m.keepintvl);
  v.U32(tcp_tag::kKeepcnt, "keepcnt", m.keepcnt);
  v.U32(tcp_tag::kSendSeq, "send_seq", m.send_seq);
  v.U32(tcp_tag::kRecvSeq, "recv_seq", m.recv_seq);
  v.Bytes(tcp_tag::kSendQueue, "send_queue", m.send_queue);
  v.Bytes(tcp_tag::kRecvQueue, "recv_queue", m.recv_queue);
  v.U32(tcp_tag::kUnsent, "unsent", m.unsent);
  v.U32(tcp_tag::kMssClamp, "mss_clamp", m.mss_clamp);
  v.U32(tcp_tag::kSndWscale, "snd_wscale", m.snd_wscale);
  v.U32(tcp_tag::kRcvWscale, "rcv_wscale", m.rcv_wscale);
  v.U32(tcp_tag::kTimestamp, "timestamp", m.timestamp);
  v.U32(tcp_tag::kSndWl1, "snd_wl1", m.snd_wl1);
  v.U32(tcp_tag::kSndWnd, "snd_wnd", m.snd_wnd);
  v.U32(tcp_tag::kMaxWindow, "max_window", m.max_window);
  v.U32(tcp_tag::kRcvWnd, "rcv_wnd", m.rcv_wnd);
  v.U32(tcp_tag::kRcvWup, "rcv_wup", m.rcv_wup);
}

}  // namespace internal

namespace {

constexpr size_t kEndFieldSize = kFieldHeaderSize + 8;

Status CheckAddress(const TcpAddress& a, const char* which) {
  const std::string name = std::string("TCP payload: ") + which + " address";
  if (a.family == 0) {
    if (!a.addr.empty() || a.port) return Status::Corrupt(name + " has no family but a value");
    return Status::Ok();
  }
  if (a.family != AF_INET && a.family != AF_INET6)
    return Status::Corrupt(name + " has unknown family " + std::to_string(a.family));
  size_t want = a.family == AF_INET ? 4 : 16;
  if (a.addr.size() != want)
    return Status::Corrupt(name + " is " + std::to_string(a.addr.size()) + " bytes, want " +
                           std::to_string(want));
  if (a.port > 65535) return Status::Corrupt(name + " has port " + std::to_string(a.port));
  return Status::Ok();
}

}  // namespace

Result<std::string> EncodeTcpState(const TcpState& s) {
  std::string out;
  STASIS_RETURN_IF_ERROR(internal::EncodeFields(&out, [&](internal::FieldWriter& w) {
                           Fields(w, s);
                         }).Prefixed("TCP payload"));
  const uint64_t before = out.size();
  internal::PutU32(&out, tcp_tag::kEnd);
  internal::PutU32(&out, 8);
  internal::PutU64(&out, before);
  return out;
}

Result<TcpState> DecodeTcpState(std::string_view in) {
  // The last field is the end mark: a payload cut anywhere loses it.
  if (in.size() < kEndFieldSize)
    return Status::Corrupt("TCP payload is " + std::to_string(in.size()) +
                           " bytes, too short to hold its end field");
  const char* end = in.data() + in.size() - kEndFieldSize;
  if (internal::LoadU32(end) != tcp_tag::kEnd || internal::LoadU32(end + 4) != 8 ||
      internal::LoadU64(end + 8) != in.size() - kEndFieldSize)
    return Status::Corrupt("TCP payload of " + std::to_string(in.size()) +
                           " bytes does not end with its end field (cut short or garbled)");
  TcpState s;
  Status st = internal::DecodeFields(in.substr(0, in.size() - kEndFieldSize),
                                     [&](internal::FieldReader& r) { Fields(r, s); });
  if (!st.ok()) return st.Prefixed("TCP payload");
  if (s.state != 1 && s.state != 7 && s.state != 10)
    return Status::Corrupt("TCP payload: unknown state " + std::to_string(s.state));
  if (s.peer_place > kTcpPeerOtherNode)
    return Status::Corrupt("TCP payload: unknown peer place " + std::to_string(s.peer_place));
  STASIS_RETURN_IF_ERROR(CheckAddress(s.local, "local"));
  STASIS_RETURN_IF_ERROR(CheckAddress(s.remote, "remote"));
  if (s.state == 1 && (s.local.family == 0 || s.remote.family != s.local.family))
    return Status::Corrupt("TCP payload: a connection without both addresses of one family");
  if (s.state == 10 && s.local.family == 0)
    return Status::Corrupt("TCP payload: a listener without a local address");
  if (s.unsent > s.send_queue.size())
    return Status::Corrupt("TCP payload: " + std::to_string(s.unsent) +
                           " unsent bytes in a send queue of " +
                           std::to_string(s.send_queue.size()));
  if (s.state != 1 && (!s.send_queue.empty() || !s.recv_queue.empty()))
    return Status::Corrupt("TCP payload: queued data on a socket that is not connected");
  if (s.snd_wscale > 14 || s.rcv_wscale > 14)
    return Status::Corrupt("TCP payload: window scale over 14");
  return s;
}

std::string TcpAddressText(const TcpAddress& a) {
  if (a.family == 0) return "unbound";
  char buf[INET6_ADDRSTRLEN] = "?";
  if (a.addr.size() == (a.family == AF_INET ? 4u : 16u))
    ::inet_ntop(static_cast<int>(a.family), a.addr.data(), buf, sizeof buf);
  std::string host = a.family == AF_INET6 ? "[" + std::string(buf) + "]" : std::string(buf);
  return host + ":" + std::to_string(a.port);
}

}  // namespace stasis::format
