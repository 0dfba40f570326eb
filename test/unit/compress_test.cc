// Compressed page data (version 2 Pages sections, ContextWriter::
// SetCompression): the same context comes back byte for byte whichever
// codec and thread count wrote it; in-place reads keep the previous block
// valid; damaged compressed data is refused, never half-read.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "engine/format/context_io.h"
#include "engine/format/field_codec.h"
#include "engine/format/format_constants.h"
#include "test/unit/test_util.h"

namespace stasis::format {
namespace {

using internal::LoadU16;

// One process with ~9 MiB of pages: compressible, random and zero pages
// in runs that cross the writer's 4 MiB groups.
Context BigContext() {
  Context ctx = testing::MakeSmallContext();
  ProcessImage& p = ctx.processes[0];
  p.mappings[0].start = 0x100000;
  p.mappings[0].end = 0x100000 + (4000ull << 12);
  p.page_runs = {
      {0x100000, 1500}, {0x100000 + (1600ull << 12), 700}, {0x100000 + (2400ull << 12), 10}};
  std::string data;
  for (size_t i = 0; i < 1500; ++i) data += std::string(kPageSize, static_cast<char>('a' + i % 7));
  data += testing::PseudoRandomBytes(700 * kPageSize, 9);
  data += std::string(10 * kPageSize, '\0');
  p.page_data = data;
  p.page_bytes = data.size();
  return ctx;
}

std::string EncodeWith(const Context& ctx, PageCodec codec, int threads, size_t chunk = 100000) {
  StringSink sink;
  Status s = testing::WriteContext(ctx, &sink, 1000, chunk, codec, threads);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return sink.bytes();
}

// Runs as a list of pages, so that cuts at group boundaries do not matter.
std::vector<uint64_t> Pages(const std::vector<PageRun>& runs) {
  std::vector<uint64_t> out;
  for (const PageRun& r : runs)
    for (uint64_t i = 0; i < r.npages; ++i) out.push_back(r.start + i * kPageSize);
  return out;
}

TEST(Compression, EveryCodecAndThreadCountGivesTheSameContext) {
  const Context want = BigContext();
  const std::string plain = EncodeWith(want, kCodecNone, 1);
  for (PageCodec codec : {kCodecLz4, kCodecZstd}) {
    for (int threads : {1, 3}) {
      SCOPED_TRACE("codec " + std::to_string(codec) + ", threads " + std::to_string(threads));
      std::string bytes = EncodeWith(want, codec, threads);
      MemorySource src(bytes.data(), bytes.size());
      Result<Context> got = ReadContext(&src, true);
      ASSERT_TRUE(got) << got.error().ToString();
      ASSERT_EQ(got->processes.size(), 1u);
      EXPECT_TRUE(got->processes[0].page_data == want.processes[0].page_data);
      EXPECT_EQ(Pages(got->processes[0].page_runs), Pages(want.processes[0].page_runs));
      EXPECT_EQ(got->processes[0].info, want.processes[0].info);
      EXPECT_TRUE(got->shared_page_data == want.shared_page_data);
      // The compressible third shrank; the file is smaller than plain.
      EXPECT_LT(bytes.size(), plain.size() - 5 * 1000 * kPageSize);
      int v2 = 0;
      for (const auto& sec : testing::SplitSections(bytes))
        if (sec.type == SectionType::kPages &&
            LoadU16(bytes.data() + sec.offset + section_header::kVersion) == 2)
          ++v2;
      EXPECT_GE(v2, 3) << "page data in 4 MiB groups, each a version 2 section";
    }
  }
}

TEST(Compression, InPlaceReadsKeepThePreviousPiece) {
  const Context want = BigContext();
  std::string bytes = EncodeWith(want, kCodecLz4, 2);
  MemorySource src(bytes.data(), bytes.size());
  ContextReader r(&src);
  ASSERT_TRUE(r.Begin());
  std::string got;
  const char* prev = nullptr;
  std::string prev_copy;
  for (;;) {
    Result<SectionType> t = r.Next();
    ASSERT_TRUE(t) << t.error().ToString();
    if (*t == SectionType::kEnd) break;
    if (*t != SectionType::kPages || r.pages().owner.kind != PageOwner::kProcess) {
      ASSERT_TRUE(r.SkipPageData().ok());
      continue;
    }
    while (r.page_data_remaining() > 0) {
      const char* p = nullptr;
      size_t want_n = std::min<uint64_t>(r.page_data_remaining(), 300000);
      Result<size_t> n = r.ReadPageDataInPlace(&p, want_n);
      ASSERT_TRUE(n) << n.error().ToString();
      // The piece lent by the read before is still intact.
      if (prev) {
        EXPECT_EQ(std::memcmp(prev, prev_copy.data(), prev_copy.size()), 0);
      }
      got.append(p, *n);
      prev = p;
      prev_copy.assign(p, *n);
    }
    prev = nullptr;
  }
  EXPECT_TRUE(got == want.processes[0].page_data);
}

TEST(Compression, DamagedBlocksAreRefused) {
  const Context want = BigContext();
  std::string bytes = EncodeWith(want, kCodecZstd, 1);
  testing::RawSection pages;
  int seen = 0;
  for (const auto& sec : testing::SplitSections(bytes))
    if (sec.type == SectionType::kPages &&
        LoadU16(bytes.data() + sec.offset + section_header::kVersion) == 2 && seen++ == 0)
      pages = sec;
  ASSERT_GT(pages.size, 0u);
  // A flipped byte inside the first compressed block.
  std::string bad = bytes;
  bad[pages.offset + pages.size - 100] ^= 0x40;
  MemorySource src(bad.data(), bad.size());
  Result<Context> got = ReadContext(&src, true);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), EBADMSG) << got.error().ToString();
  // Cut short inside it.
  std::string cut = bytes.substr(0, pages.offset + pages.size / 2);
  MemorySource src2(cut.data(), cut.size());
  got = ReadContext(&src2, false);
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().message().find("truncated"), std::string::npos) << got.error().ToString();
}

}  // namespace
}  // namespace stasis::format
