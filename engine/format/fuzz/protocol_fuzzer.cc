// libFuzzer target for the engine protocol's decoders (what stasisd reads
// from any local user). Any byte string goes through DecodeRequest and
// DecodeReply; what is accepted must re-encode and decode to the same value
// (the decoder accepts nothing the encoder could not have written).
//
// Run: protocol_fuzzer -max_total_time=60 engine/format/fuzz/protocol_corpus
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engine/format/protocol.h"

namespace {

[[noreturn]] void Die(const char* what, const stasis::Status& s) {
  std::fprintf(stderr, "protocol_fuzzer: %s: %s\n", what, s.ToString().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stasis::format::proto;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto req = DecodeRequest(in);
  if (req) {
    auto again = EncodeRequest(*req);
    if (!again) Die("accepted request does not re-encode", again.error());
    auto back = DecodeRequest(*again);
    if (!back) Die("re-encoded request does not decode", back.error());
    if (!(*back == *req)) Die("request round trip changed it", stasis::Status::Error(EIO, "diff"));
  }
  auto reply = DecodeReply(in);
  if (reply) {
    auto again = EncodeReply(*reply);
    if (!again) Die("accepted reply does not re-encode", again.error());
    auto back = DecodeReply(*again);
    if (!back || !(*back == *reply)) Die("reply round trip changed it", back.status());
  }
  (void)PeekOp(in);
  return 0;
}
