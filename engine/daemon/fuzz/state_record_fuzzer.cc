// libFuzzer target for stasisd's state-record reader
// (engine/daemon/state_record.h): what a restarted stasisd reads from its
// state folder before it removes a killed worker's leftover file. Any byte
// string goes through DecodeStateRecord; what is accepted must re-encode to
// a record that decodes to the same value, and its paths and name must be
// what cleanup relies on (absolute paths, a plain name, no NUL).
//
// Run: state_record_fuzzer -max_total_time=60 engine/daemon/fuzz/state_record_corpus
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "engine/daemon/state_record.h"

namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "state_record_fuzzer: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stasis::daemon;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = DecodeStateRecord(in);
  if (!r) return 0;
  if (r->path.empty() || r->path[0] != '/' || r->path.find('\0') != std::string::npos)
    Die("accepted a path that is not absolute");
  if (r->has_file() &&
      (r->folder.empty() || r->folder[0] != '/' || r->name.find('/') != std::string::npos ||
       r->name.find('\0') != std::string::npos || r->name == "." || r->name == ".."))
    Die("accepted a folder or name cleanup could misuse");
  if (r->worker == 0) Die("accepted a record without a worker pid");
  std::string again = EncodeStateRecord(*r);
  for (char c : again.substr(again.find('\n') + 1))  // after "stasis-state 1"
    if (c != '\n' && (c < 0x21 || c > 0x7e)) Die("encoder wrote a raw byte");
  auto back = DecodeStateRecord(again);
  if (!back) Die("re-encoded record does not decode");
  if (!(*back == *r)) Die("record round trip changed it");
  if (EncodeStateRecord(*back) != again) Die("encoding is not canonical");
  return 0;
}
