// libFuzzer target for the context reader: any byte string goes through
// ReadContext (with and without page data) and CopyContext. Built with
// STASIS_FORMAT_FUZZING, which makes the reader ignore checksum mismatches
// so that mutations reach the decoders and validators behind them.
//
// Beyond "no crash, no leak, no UB", it checks two properties:
//   - whatever the reader accepts, the writer accepts too (CopyContext
//     succeeds) and the copy reads back to the same Context (but for the
//     codecs: the copy is not compressed);
//   - copying is idempotent: copy(copy(x)) == copy(x), byte for byte.
//
// Run: context_reader_fuzzer -max_total_time=60 engine/format/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "engine/base/io.h"
#include "engine/format/context_io.h"

namespace {

[[noreturn]] void Die(const char* what, const stasis::Status& s) {
  std::fprintf(stderr, "context_reader_fuzzer: %s: %s\n", what, s.ToString().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stasis;
  using namespace stasis::format;

  MemorySource skim_source(data, size);
  Result<Context> skim = ReadContext(&skim_source, /*load_pages=*/false);

  MemorySource full_source(data, size);
  Result<Context> full = ReadContext(&full_source, /*load_pages=*/true);
  if (skim.has_value() != full.has_value()) {
    Die("load_pages changes acceptance", skim ? full.error() : skim.error());
  }

  MemorySource copy_source(data, size);
  StringSink copy;
  Status copied = CopyContext(&copy_source, &copy);
  if (copied.ok() != full.has_value()) {
    Die("CopyContext and ReadContext disagree", copied.ok() ? full.error() : copied);
  }
  if (!copied.ok()) return 0;

  MemorySource reread_source(copy.bytes().data(), copy.bytes().size());
  Result<Context> reread = ReadContext(&reread_source, true);
  if (!reread) Die("the copy does not read back", reread.error());
  reread->file_bytes = full->file_bytes;  // unknown fields were dropped
  // The copy's page data is not compressed (CopyContext writes plain
  // sections); the runs and bytes are the same.
  for (size_t i = 0; i < reread->processes.size() && i < full->processes.size(); ++i)
    reread->processes[i].page_codecs = full->processes[i].page_codecs;
  if (!(*reread == *full)) Die("the copy reads back differently", Status::Ok());

  MemorySource again_source(copy.bytes().data(), copy.bytes().size());
  StringSink again;
  Status s = CopyContext(&again_source, &again);
  if (!s.ok()) Die("copying the copy failed", s);
  if (again.bytes() != copy.bytes()) Die("copy is not idempotent", Status::Ok());
  return 0;
}
