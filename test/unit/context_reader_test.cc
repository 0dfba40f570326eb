// ContextReader against damaged and hostile files: every single-byte flip,
// every truncation, appended bytes, wrong versions, reordered, dropped and
// forged sections, and lengths that claim more than the file holds. Each
// must be refused with EBADMSG and a message naming the section and byte.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/format/context_io.h"
#include "engine/format/crc32c.h"
#include "engine/format/field_codec.h"
#include "engine/format/format_constants.h"
#include "engine/format/schema.h"
#include "test/unit/alloc_probe.h"
#include "test/unit/test_util.h"

namespace stasis::format {
namespace {

using internal::FieldWriter;
using internal::StoreU16;
using internal::StoreU32;
using internal::StoreU64;
using testing::BuildSection;
using testing::Encode;
using testing::FindSection;
using testing::MetaOf;
using testing::RawSection;
using testing::Replace;
using testing::Reseal;

Status ReadStatus(const std::string& bytes, bool load_pages = true) {
  MemorySource source(bytes.data(), bytes.size());
  Result<Context> got = ReadContext(&source, load_pages);
  return got.status();
}

// The message of a refused read (fails the test if the read succeeded).
std::string Refusal(const std::string& bytes) {
  Status s = ReadStatus(bytes);
  EXPECT_FALSE(s.ok()) << "read of a damaged file succeeded";
  EXPECT_EQ(s.code(), EBADMSG) << s.ToString();
  return s.message();
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::string At(const RawSection& s) {
  return " section at byte " + std::to_string(s.offset) + ": ";
}

template <class F>
std::string Meta(F&& fields) {
  std::string out;
  EXPECT_TRUE(internal::EncodeFields(&out, fields).ok());
  return out;
}

// --- exhaustive damage ---------------------------------------------------------------

TEST(ContextReader, AcceptsTheUndamagedFiles) {
  for (const Context& ctx :
       {testing::MakeTinyContext(), testing::MakeSmallContext(), testing::MakeFullContext()}) {
    Status s = ReadStatus(Encode(ctx));
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
}

TEST(ContextReader, RejectsEverySingleByteFlip) {
  // Header, every section type, padding, page data and trailers.
  std::string good = Encode(testing::MakeSmallContext());
  ASSERT_GT(good.size(), 3 * kPageSize);
  for (size_t i = 0; i < good.size(); ++i) {
    for (uint8_t mask : {static_cast<uint8_t>(1u << (i % 8)), uint8_t{0xff}}) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      Status s = ReadStatus(bad);
      ASSERT_FALSE(s.ok()) << "flip of byte " << i << " with " << int{mask} << " accepted";
      ASSERT_EQ(s.code(), EBADMSG) << s.ToString();
    }
  }
}

TEST(ContextReader, RejectsEveryTruncation) {
  std::string good = Encode(testing::MakeSmallContext());
  for (size_t n = 0; n < good.size(); ++n) {
    Status s = ReadStatus(good.substr(0, n));
    ASSERT_FALSE(s.ok()) << "truncation to " << n << " bytes accepted";
    ASSERT_EQ(s.code(), EBADMSG) << s.ToString();
  }
  // And without loading pages.
  for (size_t n = 0; n < good.size(); n += 7) {
    ASSERT_FALSE(ReadStatus(good.substr(0, n), false).ok()) << n;
  }
}

TEST(ContextReader, NamesTheTruncatedPart) {
  std::string good = Encode(testing::MakeTinyContext());
  EXPECT_EQ(Refusal(""), "file header: truncated (0 of 64 bytes present)");
  RawSection end = FindSection(good, SectionType::kEnd);
  EXPECT_EQ(Refusal(good.substr(0, end.offset)),
            "section at byte " + std::to_string(end.offset) +
                ": truncated: the file ends without an End section");
  EXPECT_EQ(Refusal(good.substr(0, end.offset + 10)),
            "section at byte " + std::to_string(end.offset) +
                ": truncated in the section header (10 of 32 bytes present)");
  EXPECT_EQ(Refusal(good.substr(0, good.size() - 1)),
            "End" + At(end) + "truncated in metadata (" + std::to_string(end.meta_length - 1) +
                " of " + std::to_string(end.meta_length) + " bytes present)");
}

TEST(ContextReader, RejectsAppendedBytes) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection end = FindSection(good, SectionType::kEnd);
  EXPECT_EQ(Refusal(good + "x"), "End" + At(end) + "1 bytes follow the End section");
  EXPECT_EQ(Refusal(good + std::string(4096, '\0')),
            "End" + At(end) + "at least 64 bytes follow the End section");
  EXPECT_FALSE(ReadStatus(good + good).ok());
}

// --- header and section framing --------------------------------------------------------

TEST(ContextReader, RejectsWrongVersion) {
  std::string bad = Encode(testing::MakeTinyContext());
  StoreU32(bad.data() + file_header::kVersion, 2);
  testing::FixFileHeaderCrc(&bad);
  EXPECT_EQ(Refusal(bad),
            "file header: unsupported format version 2 (this stasis reads version 1)");
}

TEST(ContextReader, RejectsWrongSectionVersion) {
  std::string bad = Encode(testing::MakeTinyContext());
  RawSection tree = FindSection(bad, SectionType::kTree);
  StoreU16(bad.data() + tree.offset + section_header::kVersion, 3);
  Reseal(&bad, tree);
  EXPECT_EQ(Refusal(bad),
            "Tree" + At(tree) + "unsupported section version 3 (this stasis reads version 1)");
}

TEST(ContextReader, RejectsBadMagic) {
  EXPECT_EQ(
      Refusal("#!/bin/sh\necho this is a script, not a context file\n" + std::string(100, ' ')),
      "file header: bad magic: not a stasis context file");
}

TEST(ContextReader, RejectsChecksumMismatch) {
  std::string bad = Encode(testing::MakeFullContext());
  RawSection thread = FindSection(bad, SectionType::kThread, 1);
  bad[thread.offset + kSectionHeaderSize + 20] ^= 0x10;
  EXPECT_TRUE(StartsWith(Refusal(bad), "Thread" + At(thread) + "checksum mismatch (metadata"))
      << Refusal(bad);
}

TEST(ContextReader, RejectsHeaderChecksumMismatch) {
  std::string bad = Encode(testing::MakeTinyContext());
  RawSection process = FindSection(bad, SectionType::kProcess);
  bad[process.offset + section_header::kPayloadLength] ^= 0x01;
  EXPECT_TRUE(StartsWith(Refusal(bad), "section at byte " + std::to_string(process.offset) +
                                           ": checksum mismatch (section header"))
      << Refusal(bad);
  std::string bad_file = Encode(testing::MakeTinyContext());
  bad_file[file_header::kFlags] = 1;
  EXPECT_TRUE(StartsWith(Refusal(bad_file), "file header: checksum mismatch")) << Refusal(bad_file);
}

TEST(ContextReader, RejectsPageDataChecksumMismatch) {
  std::string bad = Encode(testing::MakeSmallContext());
  RawSection pages = FindSection(bad, SectionType::kPages, 1);
  bad[FindSection(bad, SectionType::kEnd).offset - 200] ^= 0x01;  // in its page data
  EXPECT_TRUE(StartsWith(Refusal(bad), "Pages" + At(pages) + "checksum mismatch (page data"))
      << Refusal(bad);
}

TEST(ContextReader, RejectsNonZeroPadding) {
  std::string bad = Encode(testing::MakeSmallContext());
  RawSection pages = FindSection(bad, SectionType::kPages);
  size_t pad_at = pages.offset + kSectionHeaderSize + pages.meta_length + 5;
  bad[pad_at] = 1;
  Reseal(&bad, pages);  // even with every checksum right
  EXPECT_EQ(Refusal(bad), "Pages" + At(pages) + "padding is not zero");
}

TEST(ContextReader, RejectsUnknownSectionType) {
  std::string bad = Encode(testing::MakeTinyContext());
  RawSection tree = FindSection(bad, SectionType::kTree);
  StoreU16(bad.data() + tree.offset + section_header::kType, 42);
  Reseal(&bad, tree);
  EXPECT_EQ(Refusal(bad),
            "section at byte " + std::to_string(tree.offset) + ": unknown section type 42");
}

TEST(ContextReader, RejectsPagesPayloadLengthThatDisagreesWithRuns) {
  std::string bad = Encode(testing::MakeSmallContext());
  RawSection pages = FindSection(bad, SectionType::kPages);
  StoreU64(bad.data() + pages.offset + section_header::kPayloadLength, pages.size);
  Reseal(&bad, pages);
  EXPECT_TRUE(StartsWith(Refusal(bad), "Pages" + At(pages) + "payload length")) << Refusal(bad);
}

// --- order and cross-references ---------------------------------------------------------------

TEST(ContextReader, RejectsSectionsOutOfOrder) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection mappings = FindSection(good, SectionType::kMappings);
  RawSection files = FindSection(good, SectionType::kFiles);
  ASSERT_EQ(mappings.offset + mappings.size, files.offset);
  std::string bad = good.substr(0, mappings.offset) + good.substr(files.offset, files.size) +
                    good.substr(mappings.offset, mappings.size) +
                    good.substr(files.offset + files.size);
  EXPECT_EQ(Refusal(bad), "Files section at byte " + std::to_string(mappings.offset) +
                              ": out of order: expected Mappings of pid 1, found Files");

  // Tree before Image cannot even start: Begin wants the Image.
  RawSection image = FindSection(good, SectionType::kImage);
  RawSection tree = FindSection(good, SectionType::kTree);
  std::string swapped = good.substr(0, image.offset) + good.substr(tree.offset, tree.size) +
                        good.substr(image.offset, image.size) +
                        good.substr(tree.offset + tree.size);
  EXPECT_EQ(Refusal(swapped), "Tree section at byte 64: out of order: expected Image, found Tree");
}

TEST(ContextReader, RejectsPidNotInTheTree) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection mappings = FindSection(good, SectionType::kMappings);
  uint32_t pid = 999;
  std::vector<Mapping> none;
  std::string forged =
      BuildSection(SectionType::kMappings,
                   Meta([&](FieldWriter& w) { internal::MappingsFields(w, pid, none); }));
  EXPECT_EQ(Refusal(Replace(good, mappings, forged)),
            "Mappings" + At(mappings) + "pid 999 is not in the Tree");

  RawSection process = FindSection(good, SectionType::kProcess);
  ProcessInfo stranger;
  stranger.pid = 4242;
  std::string forged_process =
      BuildSection(SectionType::kProcess, Meta([&](FieldWriter& w) { Fields(w, stranger); }));
  EXPECT_EQ(Refusal(Replace(good, process, forged_process)),
            "Process" + At(process) + "pid 4242 is not in the Tree");
}

TEST(ContextReader, RejectsAProcessMissingFromTheFile) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection tree = FindSection(good, SectionType::kTree);
  ProcessTree two = testing::MakeTinyContext().tree;
  ProcessEntry second;
  second.pid = 2;
  second.ppid = 1;
  second.tids = {2};
  two.processes.push_back(second);
  std::string bad = Replace(
      good, tree, BuildSection(SectionType::kTree, Meta([&](FieldWriter& w) { Fields(w, two); })));
  RawSection end = FindSection(bad, SectionType::kEnd);
  EXPECT_EQ(Refusal(bad), "End" + At(end) + "End before the Process of pid 2");
}

TEST(ContextReader, RejectsAProcessAppearingTwice) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection process = FindSection(good, SectionType::kProcess);
  RawSection end = FindSection(good, SectionType::kEnd);
  // Process, Mappings, Files, Thread of pid 1 once more before End.
  std::string block = good.substr(process.offset, end.offset - process.offset);
  std::string bad = good.substr(0, end.offset) + block + good.substr(end.offset);
  EXPECT_EQ(Refusal(bad), "Process section at byte " + std::to_string(end.offset) +
                              ": pid 1 appears a second time");
}

TEST(ContextReader, RejectsThreadsThatDoNotMatchTheTree) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection thread = FindSection(good, SectionType::kThread);
  uint32_t pid = 1;
  ThreadInfo other;
  other.tid = 77;
  std::string forged = BuildSection(
      SectionType::kThread, Meta([&](FieldWriter& w) { internal::ThreadFields(w, pid, other); }));
  EXPECT_EQ(Refusal(Replace(good, thread, forged)),
            "Thread" + At(thread) + "tid 77 of pid 1 does not match the Tree: expected tid 1");
  // A second Thread section for a one-thread process.
  ThreadInfo again;
  again.tid = 1;
  std::string extra = BuildSection(
      SectionType::kThread, Meta([&](FieldWriter& w) { internal::ThreadFields(w, pid, again); }));
  RawSection end = FindSection(good, SectionType::kEnd);
  std::string bad = good.substr(0, end.offset) + extra + good.substr(end.offset);
  EXPECT_EQ(Refusal(bad), "Thread section at byte " + std::to_string(end.offset) +
                              ": pid 1 has more Thread sections than its 1 tids in the Tree");
}

TEST(ContextReader, RejectsADroppedThreadSection) {
  std::string good = Encode(testing::MakeFullContext());
  RawSection second = FindSection(good, SectionType::kThread, 1);
  std::string bad = Replace(good, second, "");
  EXPECT_EQ(Refusal(bad), "ParentPages section at byte " + std::to_string(second.offset) +
                              ": out of order: expected Thread 101 of pid 100, found ParentPages");
}

TEST(ContextReader, RejectsADroppedPagesSection) {
  // The last Pages section precedes End, so nothing else moves: only the
  // End totals notice.
  std::string good = Encode(testing::MakeSmallContext());
  RawSection pages = FindSection(good, SectionType::kPages, 1);
  std::string bad = Replace(good, pages, "");
  RawSection end = FindSection(bad, SectionType::kEnd);
  std::string message = Refusal(bad);
  EXPECT_TRUE(StartsWith(message, "End" + At(end) + "totals do not match the file")) << message;
  EXPECT_NE(message.find("page bytes 8192 vs 4096"), std::string::npos) << message;
}

TEST(ContextReader, RejectsPageRunsOutsideTheMappings) {
  std::string bad = Encode(testing::MakeSmallContext());
  RawSection pages = FindSection(bad, SectionType::kPages, 1);
  std::string meta = MetaOf(bad, pages);
  // The runs field is last: its first u64 is the start of run 0.
  size_t start_at = meta.size() - kPageRunSize;
  StoreU64(bad.data() + pages.offset + kSectionHeaderSize + start_at, 0x7fff0000);
  Reseal(&bad, pages);
  EXPECT_EQ(
      Refusal(bad),
      "Pages" + At(pages) + "run[0] (0x7fff0000-0x7fff1000) is not inside the mappings of pid 10");
}

TEST(ContextReader, SkipsUnknownFieldsOfANewerWriter) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection image = FindSection(good, SectionType::kImage);
  std::string meta = MetaOf(good, image);
  std::string future;
  internal::PutU32(&future, 50);
  internal::PutU32(&future, 5);
  future += "hello";
  std::string bad = Replace(good, image, BuildSection(SectionType::kImage, meta + future));
  Status s = ReadStatus(bad);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(ContextReader, RejectsADuplicatedField) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection image = FindSection(good, SectionType::kImage);
  std::string meta = MetaOf(good, image);
  std::string dup;
  internal::PutU32(&dup, tag::kImageRootPid);
  internal::PutU32(&dup, 4);
  internal::PutU32(&dup, 1);
  std::string bad = Replace(good, image, BuildSection(SectionType::kImage, meta + dup));
  EXPECT_EQ(Refusal(bad), "Image section at byte 64: root_pid appears twice");
}

// --- hostile lengths ------------------------------------------------------------------

TEST(ContextReader, RejectsMetadataLengthOverTheLimit) {
  std::string bad = Encode(testing::MakeTinyContext());
  RawSection tree = FindSection(bad, SectionType::kTree);
  StoreU32(bad.data() + tree.offset + section_header::kMetaLength, 0xfffffff0u);
  StoreU64(bad.data() + tree.offset + section_header::kPayloadLength, 0xfffffff0u);
  char* h = bad.data() + tree.offset;
  StoreU32(h + section_header::kHeaderCrc, Crc32c(0, h, section_header::kHeaderCrc));
  EXPECT_EQ(Refusal(bad),
            "Tree" + At(tree) + "metadata length 4294967280 is over the limit of 67108864");
}

TEST(ContextReader, RejectsHugeClaimedLengthsWithoutAllocatingThem) {
  // A Tree section that claims 60 MiB of metadata; 100 bytes follow.
  std::string bad = Encode(testing::MakeTinyContext());
  RawSection tree = FindSection(bad, SectionType::kTree);
  const uint32_t claimed = 60u << 20;
  char* h = bad.data() + tree.offset;
  StoreU32(h + section_header::kMetaLength, claimed);
  StoreU64(h + section_header::kPayloadLength, claimed);
  StoreU32(h + section_header::kHeaderCrc, Crc32c(0, h, section_header::kHeaderCrc));
  bad.resize(tree.offset + kSectionHeaderSize + 100);
  {
    stasis::testing::AllocationProbe probe;
    EXPECT_EQ(Refusal(bad),
              "Tree" + At(tree) + "truncated in metadata (100 of 62914560 bytes present)");
    EXPECT_LT(probe.largest(), size_t{1} << 20);
  }

  // Page runs that claim 64 GiB of page data; the file ends after the
  // Pages header and padding.
  Context ctx = testing::MakeSmallContext();
  ctx.shared.clear();
  ctx.shared_runs.clear();
  ctx.shared_page_data.clear();
  ctx.processes[0].mappings[0].start = 0x100000000;
  ctx.processes[0].mappings[0].end = 0x1100000000;
  StringSink sink;
  ContextWriter w(&sink);
  ASSERT_TRUE(w.Begin(ctx.image).ok());
  ASSERT_TRUE(w.WriteTree(ctx.tree).ok());
  const ProcessImage& p = ctx.processes[0];
  ASSERT_TRUE(w.WriteProcess(p.info).ok());
  ASSERT_TRUE(w.WriteMappings(10, p.mappings).ok());
  ASSERT_TRUE(w.WriteFiles(10, p.files).ok());
  ASSERT_TRUE(w.WriteThread(10, p.threads[0]).ok());
  ASSERT_TRUE(w.BeginPages({PageOwner::kProcess, 10}, {{0x100000000, 1u << 24}}).ok());
  std::string page(kPageSize, 'x');
  ASSERT_TRUE(w.AppendPageData(page.data(), page.size()).ok());
  RawSection pages = FindSection(sink.bytes(), SectionType::kPages);
  {
    stasis::testing::AllocationProbe probe;
    EXPECT_EQ(Refusal(sink.bytes()),
              "Pages" + At(pages) + "truncated in page data (4096 of 68719476736 bytes present)");
    EXPECT_LE(probe.largest(), size_t{4} << 20);
  }
}

TEST(ContextReader, RejectsHugeFieldLengthInsideValidMetadata) {
  std::string good = Encode(testing::MakeTinyContext());
  RawSection image = FindSection(good, SectionType::kImage);
  std::string meta;
  internal::PutU32(&meta, tag::kImageHostname);
  internal::PutU32(&meta, 0x7fffffff);
  meta += "abc";
  EXPECT_EQ(Refusal(Replace(good, image, BuildSection(SectionType::kImage, meta))),
            "Image section at byte 64: field 2 at byte 0 claims 2147483647 bytes, only 3 left in "
            "its message");
}

}  // namespace
}  // namespace stasis::format
