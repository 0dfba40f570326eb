// libFuzzer target for the MANIFEST parser (engine/format/manifest.h): any
// byte string goes through ParseManifest. Built with STASIS_FORMAT_FUZZING,
// which makes the parser ignore a checksum mismatch so that mutations reach
// the checks behind it.
//
// Beyond "no crash, no leak, no UB", it checks:
//   - a refusal is one line, "line N: ...", EBADMSG or ENOTSUP (what
//     `stasis verify` prints);
//   - whatever parses, EncodeManifest accepts, and Parse(Encode(m)) == m;
//   - one spelling per value: the encoding is the input byte for byte, but
//     for the checksum digits (which this build does not check).
//
// Run: manifest_fuzzer -max_total_time=60 engine/format/fuzz/manifest_corpus
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/format/manifest.h"

namespace {

[[noreturn]] void Die(const char* what, const stasis::Status& s) {
  std::fprintf(stderr, "manifest_fuzzer: %s: %s\n", what, s.ToString().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stasis;
  using namespace stasis::format;
  std::string_view in(reinterpret_cast<const char*>(data), size);

  Result<Manifest> m = ParseManifest(in);
  if (!m) {
    const Status& e = m.error();
    if (e.code() != EBADMSG && e.code() != ENOTSUP) Die("unexpected error code", e);
    if (e.message().find('\n') != std::string::npos) Die("error message spans lines", e);
    if (e.message().rfind("line ", 0) != 0) Die("error message does not name the line", e);
    return 0;
  }

  Result<std::string> again = EncodeManifest(*m);
  if (!again) Die("accepted manifest does not re-encode", again.error());
  Result<Manifest> back = ParseManifest(*again);
  if (!back) Die("re-encoded manifest does not parse", back.error());
  if (!(*back == *m)) Die("round trip changed the manifest", Status::Ok());

  // Both end in "crc32c=XXXXXXXX\n": all before the digits must be equal.
  constexpr size_t kDigits = 9;
  if (in.size() != again->size() || in.size() < kDigits ||
      in.substr(0, in.size() - kDigits) !=
          std::string_view(*again).substr(0, again->size() - kDigits))
    Die("accepted bytes are not what the encoder writes", Status::Ok());
  return 0;
}
