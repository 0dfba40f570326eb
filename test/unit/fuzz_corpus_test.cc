// The seed corpus of engine/format/fuzz is generated here: each seed is a
// small valid context written by ContextWriter, and this test checks that
// the committed files are still exactly what the writer produces (a golden
// test of the v1 bytes). The files end in .seed, not .ctx, because the
// repository ignores *.ctx (checkpoint output). After an intentional format change, regenerate
// with STASIS_UPDATE_FUZZ_CORPUS=1 set in the environment of
// `stasis_unit_tests --gtest_filter='FuzzCorpus.*'`.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "engine/format/context_io.h"
#include "test/unit/test_util.h"

namespace stasis::format {
namespace {

std::vector<std::pair<std::string, std::string>> Seeds() {
  Context rich = testing::MakeFullContext();
  rich.shared_runs[0].clear();
  for (ProcessImage& p : rich.processes) p.page_runs.clear();
  // Compressed (version 2) Pages sections: one page that compresses, one
  // that does not (stored raw in its block).
  Context small = testing::MakeSmallContext();
  small.processes[0].page_runs = {{0x10000, 1}, {0x11000, 1}};
  small.processes[0].page_bytes = 2 * kPageSize;
  small.processes[0].page_data = std::string(kPageSize / 2, 'x') + std::string(kPageSize / 2, 'y') +
                                 testing::PseudoRandomBytes(kPageSize, 3);
  auto compressed = [&](PageCodec codec) {
    StringSink sink;
    Status s = testing::WriteContext(small, &sink, 1, 1000, codec, 1);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return sink.bytes();
  };
  return {
      {"tiny.seed", testing::Encode(testing::MakeTinyContext())},
      {"small_with_pages.seed", testing::Encode(testing::MakeSmallContext())},
      {"every_field_no_pages.seed", testing::Encode(rich)},
      {"small_lz4.seed", compressed(kCodecLz4)},
      {"small_zstd.seed", compressed(kCodecZstd)},
  };
}

TEST(FuzzCorpus, SeedsAreWhatTheWriterProduces) {
  for (const auto& [name, bytes] : Seeds()) {
    testing::ExpectGoldenFile(std::string(STASIS_FUZZ_CORPUS_DIR) + "/" + name, bytes,
                              "ContextWriter");
    MemorySource source(bytes.data(), bytes.size());
    Result<Context> ctx = ReadContext(&source, true);
    EXPECT_TRUE(ctx) << name << ": " << ctx.error().ToString();
  }
}

}  // namespace
}  // namespace stasis::format
