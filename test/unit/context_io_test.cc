// ContextWriter / ContextReader / ReadContext / CopyContext on valid input:
// round trips of every field, the streaming reader API, page data
// alignment, and everything the writer refuses to produce.
#include "engine/format/context_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "engine/format/format_constants.h"
#include "test/unit/test_util.h"

namespace stasis::format {
namespace {

using testing::Encode;
using testing::MakeFullContext;
using testing::MakeSmallContext;
using testing::MakeTinyContext;
using testing::WriteContext;

Result<Context> Read(const std::string& bytes, bool load_pages = true) {
  MemorySource source(bytes.data(), bytes.size());
  return ReadContext(&source, load_pages);
}

#define ASSERT_OK(expr)                    \
  do {                                     \
    ::stasis::Status s_ = (expr);          \
    ASSERT_TRUE(s_.ok()) << s_.ToString(); \
  } while (0)

// --- round trips -------------------------------------------------------------------

TEST(ContextRoundTrip, FullContextKeepsEveryField) {
  Context want = MakeFullContext();
  for (size_t runs_per_section : {1, 2, 1000}) {
    std::string bytes = Encode(want, runs_per_section);
    Result<Context> got = Read(bytes);
    ASSERT_TRUE(got) << got.error().ToString();
    want.file_bytes = bytes.size();
    EXPECT_EQ(got->image, want.image);
    EXPECT_EQ(got->tree, want.tree);
    EXPECT_EQ(got->shared, want.shared);
    EXPECT_EQ(got->shared_runs, want.shared_runs);
    EXPECT_EQ(got->shared_page_data, want.shared_page_data);
    ASSERT_EQ(got->processes.size(), want.processes.size());
    for (size_t i = 0; i < want.processes.size(); ++i) {
      EXPECT_EQ(got->processes[i].info, want.processes[i].info);
      EXPECT_EQ(got->processes[i].mappings, want.processes[i].mappings);
      EXPECT_EQ(got->processes[i].files, want.processes[i].files);
      EXPECT_EQ(got->processes[i].threads, want.processes[i].threads);
      EXPECT_EQ(got->processes[i].page_runs, want.processes[i].page_runs);
      EXPECT_EQ(got->processes[i].page_bytes, want.processes[i].page_bytes);
      EXPECT_TRUE(got->processes[i].page_data == want.processes[i].page_data);
    }
    EXPECT_TRUE(*got == want);
  }
}

TEST(ContextRoundTrip, WithoutPagesKeepsRunsAndSizes) {
  Context want = MakeFullContext();
  std::string bytes = Encode(want);
  Result<Context> got = Read(bytes, /*load_pages=*/false);
  ASSERT_TRUE(got) << got.error().ToString();
  for (size_t i = 0; i < want.processes.size(); ++i) {
    EXPECT_TRUE(got->processes[i].page_data.empty());
    EXPECT_EQ(got->processes[i].page_runs, want.processes[i].page_runs);
    EXPECT_EQ(got->processes[i].page_bytes, want.processes[i].page_bytes);
  }
  EXPECT_EQ(got->shared_page_data, std::vector<std::string>{""});
  EXPECT_EQ(got->file_bytes, bytes.size());
}

TEST(ContextRoundTrip, TinyAndSmallContexts) {
  for (Context want : {MakeTinyContext(), MakeSmallContext()}) {
    std::string bytes = Encode(want);
    want.file_bytes = bytes.size();
    Result<Context> got = Read(bytes);
    ASSERT_TRUE(got) << got.error().ToString();
    EXPECT_TRUE(*got == want);
  }
}

TEST(ContextRoundTrip, BytesDoNotDependOnChunking) {
  Context ctx = MakeFullContext();
  std::string reference = Encode(ctx);
  for (size_t chunk : {size_t{1}, size_t{4095}, size_t{4096}, size_t{1} << 20}) {
    StringSink sink;
    ASSERT_OK(WriteContext(ctx, &sink, 1000, chunk));
    EXPECT_TRUE(sink.bytes() == reference) << "chunk " << chunk;
  }
}

TEST(ContextRoundTrip, ShortReadsFromTheSource) {
  Context want = MakeFullContext();
  std::string bytes = Encode(want);
  want.file_bytes = bytes.size();
  for (size_t max_read : {1, 7, 4096}) {
    testing::TricklingSource source(bytes, max_read);
    Result<Context> got = ReadContext(&source, true);
    ASSERT_TRUE(got) << got.error().ToString();
    EXPECT_TRUE(*got == want);
  }
}

TEST(ContextRoundTrip, CopyContextIsByteIdentical) {
  std::string bytes = Encode(MakeFullContext(), 2);
  MemorySource source(bytes.data(), bytes.size());
  StringSink sink;
  ASSERT_OK(CopyContext(&source, &sink));
  EXPECT_TRUE(sink.bytes() == bytes);
}

TEST(ContextRoundTrip, ThroughARealFile) {
  const char* tmp = getenv("TMPDIR");
  std::string path = std::string(tmp ? tmp : "/tmp") + "/stasis-format-test-XXXXXX";
  int fd = mkstemp(path.data());
  ASSERT_GE(fd, 0);
  Context want = MakeFullContext();
  {
    FdSink sink(UniqueFd(fd), path, 8192);  // small buffer: direct and buffered writes
    ASSERT_OK(WriteContext(want, &sink));
    ASSERT_OK(sink.Sync());
    want.file_bytes = sink.Offset();
  }
  FdSource source(UniqueFd(open(path.c_str(), O_RDONLY | O_CLOEXEC)), path, 8192);
  Result<Context> got = ReadContext(&source, true);
  unlink(path.c_str());
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_TRUE(*got == want);
}

// --- the streaming reader -------------------------------------------------------------

TEST(ContextReader, StreamsSectionsInFileOrder) {
  Context ctx = MakeFullContext();
  std::string bytes = Encode(ctx);
  MemorySource source(bytes.data(), bytes.size());
  ContextReader reader(&source);
  Result<ImageInfo> image = reader.Begin();
  ASSERT_TRUE(image) << image.error().ToString();
  EXPECT_EQ(*image, ctx.image);
  std::vector<std::string> order;
  for (;;) {
    Result<SectionType> type = reader.Next();
    ASSERT_TRUE(type) << type.error().ToString();
    std::string name = SectionName(*type);
    if (*type == SectionType::kMappings || *type == SectionType::kThread ||
        *type == SectionType::kFiles) {
      name += ":" + std::to_string(reader.section_pid());
    }
    if (*type == SectionType::kPages) {
      const PagesHeader& pages = reader.pages();
      name += ":" + std::to_string(pages.owner.kind) + "/" + std::to_string(pages.owner.id);
      EXPECT_EQ(reader.page_data_remaining(), pages.data_bytes);
      EXPECT_EQ(reader.offset() % kPageSize, 0u);
      // Read it in uneven pieces.
      std::string data(pages.data_bytes, '\0');
      size_t at = 0;
      while (at < data.size()) {
        size_t n = std::min<size_t>(data.size() - at, 3000);
        ASSERT_OK(reader.ReadPageData(data.data() + at, n));
        at += n;
      }
      EXPECT_EQ(reader.page_data_remaining(), 0u);
    }
    order.push_back(name);
    if (*type == SectionType::kEnd) break;
  }
  EXPECT_EQ(order,
            (std::vector<std::string>{
                "Tree", "SharedMemory", "Pages:1/7", "Process", "Mappings:100", "Files:100",
                "Thread:100", "Thread:100", "ParentPages", "Pages:0/100", "Process", "Mappings:102",
                "Files:102", "Thread:102", "ParentPages", "Pages:0/102", "End"}));
  EXPECT_EQ(reader.offset(), bytes.size());
  Result<SectionType> after = reader.Next();
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code(), EINVAL);
}

TEST(ContextReader, NextRequiresPageDataToBeConsumed) {
  std::string bytes = Encode(MakeSmallContext());
  MemorySource source(bytes.data(), bytes.size());
  ContextReader reader(&source);
  ASSERT_TRUE(reader.Begin());
  ASSERT_EQ(*reader.Next(), SectionType::kTree);
  ASSERT_EQ(*reader.Next(), SectionType::kSharedMemory);
  ASSERT_EQ(*reader.Next(), SectionType::kPages);
  Result<SectionType> early = reader.Next();
  ASSERT_FALSE(early);
  EXPECT_EQ(early.error().code(), EINVAL);
  char too_much[kPageSize + 1];
  EXPECT_EQ(reader.ReadPageData(too_much, sizeof(too_much)).code(), EINVAL);
  // Misuse changed nothing: the reader goes on.
  ASSERT_OK(reader.SkipPageData());
  EXPECT_EQ(*reader.Next(), SectionType::kProcess);
}

TEST(ContextReader, PageDataStartsAtAlignedFileOffsets) {
  Context ctx = MakeFullContext();
  std::string bytes = Encode(ctx, 1);  // one Pages section per run
  MemorySource source(bytes.data(), bytes.size());
  ContextReader reader(&source);
  ASSERT_TRUE(reader.Begin());
  int pages_sections = 0;
  for (;;) {
    Result<SectionType> type = reader.Next();
    ASSERT_TRUE(type) << type.error().ToString();
    if (*type == SectionType::kEnd) break;
    if (*type != SectionType::kPages) continue;
    ++pages_sections;
    uint64_t at = reader.offset();
    EXPECT_EQ(at % kPageSize, 0u) << "page data of section " << pages_sections;
    std::string data(reader.pages().data_bytes, '\0');
    ASSERT_OK(reader.ReadPageData(data.data(), data.size()));
    EXPECT_TRUE(bytes.compare(at, data.size(), data) == 0);
  }
  EXPECT_EQ(pages_sections, 2 + 6 + 6);
}

TEST(ContextWriter, AlignsPageDataRelativeToTheFileStart) {
  // A sink that already holds bytes: offsets count from the file header.
  StringSink sink;
  sink.bytes() = "xyz";
  ASSERT_OK(WriteContext(MakeSmallContext(), &sink));
  std::string bytes = sink.bytes().substr(3);
  EXPECT_TRUE(bytes == Encode(MakeSmallContext()));
}

// --- what the writer refuses ----------------------------------------------------------

// Writes the small context up to (not including) its process Pages section.
void WriteUpToProcessPages(ContextWriter* w, const Context& ctx) {
  ASSERT_OK(w->Begin(ctx.image));
  ASSERT_OK(w->WriteTree(ctx.tree));
  const ProcessImage& p = ctx.processes[0];
  ASSERT_OK(w->WriteProcess(p.info));
  ASSERT_OK(w->WriteMappings(p.info.pid, p.mappings));
  ASSERT_OK(w->WriteFiles(p.info.pid, p.files));
  ASSERT_OK(w->WriteThread(p.info.pid, p.threads[0]));
}

Context SmallWithBigMapping() {
  Context ctx = MakeSmallContext();
  ctx.shared.clear();
  ctx.shared_runs.clear();
  ctx.shared_page_data.clear();
  ctx.processes[0].mappings[0].start = 0x100000;
  ctx.processes[0].mappings[0].end = 0x200000;
  return ctx;
}

Status TryRuns(const std::vector<PageRun>& runs) {
  Context ctx = SmallWithBigMapping();
  StringSink sink;
  ContextWriter w(&sink);
  WriteUpToProcessPages(&w, ctx);
  return w.BeginPages({PageOwner::kProcess, 10}, runs);
}

TEST(ContextWriter, RefusesBadPageRuns) {
  EXPECT_TRUE(TryRuns({{0x100000, 1}, {0x102000, 2}}).ok());
  EXPECT_TRUE(TryRuns({}).ok());
  struct Case {
    std::vector<PageRun> runs;
    const char* message;
  } cases[] = {
      {{{0x102000, 1}, {0x100000, 1}}, "run[1] (start 0x100000, 1 pages): starts below the end"},
      {{{0x100000, 2}, {0x101000, 1}}, "run[1] (start 0x101000, 1 pages): starts below the end"},
      {{{0x100800, 1}}, "start is not page aligned"},
      {{{0x100000, 0}}, "has no pages"},
      {{{0x1ff000, 2}}, "is not inside the mappings of pid 10"},
      {{{0x7ffffffff000, 2}}, "ends beyond 0x800000000000"},
      {{{0x100000, uint64_t{1} << 62}}, "ends beyond"},
  };
  for (const Case& c : cases) {
    Status s = TryRuns(c.runs);
    EXPECT_EQ(s.code(), EINVAL);
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s.message();
    EXPECT_EQ(s.message().rfind("write Pages section: ", 0), 0u) << s.message();
  }
}

TEST(ContextWriter, RefusesWrongAmountOfPageData) {
  Context ctx = SmallWithBigMapping();
  std::string page(kPageSize * 2, 'p');
  {
    StringSink sink;
    ContextWriter w(&sink);
    WriteUpToProcessPages(&w, ctx);
    ASSERT_OK(w.BeginPages({PageOwner::kProcess, 10}, {{0x100000, 1}}));
    Status s = w.AppendPageData(page.data(), kPageSize + 1);
    EXPECT_EQ(s.code(), EINVAL);
    EXPECT_EQ(w.Finish().message(), s.message()) << "errors are final";
  }
  {
    StringSink sink;
    ContextWriter w(&sink);
    WriteUpToProcessPages(&w, ctx);
    ASSERT_OK(w.BeginPages({PageOwner::kProcess, 10}, {{0x100000, 2}}));
    ASSERT_OK(w.AppendPageData(page.data(), kPageSize));
    Status s = w.EndPages();
    EXPECT_EQ(s.message(), "write Pages section: EndPages with 4096 bytes of page data missing");
  }
  {
    StringSink sink;
    ContextWriter w(&sink);
    WriteUpToProcessPages(&w, ctx);
    ASSERT_OK(w.BeginPages({PageOwner::kProcess, 10}, {{0x100000, 1}}));
    Status s = w.Finish();
    EXPECT_NE(s.message().find("the Pages section is still open"), std::string::npos);
  }
}

TEST(ContextWriter, RefusesSectionsOutOfOrder) {
  Context ctx = MakeTinyContext();
  const ProcessImage& p = ctx.processes[0];
  StringSink sink;
  ContextWriter w(&sink);
  ASSERT_OK(w.Begin(ctx.image));
  ASSERT_OK(w.WriteTree(ctx.tree));
  ASSERT_OK(w.WriteProcess(p.info));
  Status s = w.WriteFiles(1, p.files);
  EXPECT_EQ(s.message(),
            "write Files section: out of order: expected Mappings of pid 1, found Files");
  EXPECT_EQ(s.code(), EINVAL);
}

TEST(ContextWriter, RefusesPidNotInTree) {
  Context ctx = MakeTinyContext();
  StringSink sink;
  ContextWriter w(&sink);
  ASSERT_OK(w.Begin(ctx.image));
  ASSERT_OK(w.WriteTree(ctx.tree));
  ProcessInfo stranger;
  stranger.pid = 999;
  EXPECT_EQ(w.WriteProcess(stranger).message(),
            "write Process section: pid 999 is not in the Tree");
}

TEST(ContextWriter, RefusesThreadsThatDoNotMatchTheTree) {
  Context ctx = MakeFullContext();
  const ProcessImage& p = ctx.processes[0];
  StringSink sink;
  ContextWriter w(&sink);
  ASSERT_OK(w.Begin(ctx.image));
  ASSERT_OK(w.WriteTree(ctx.tree));
  ASSERT_OK(w.WriteSharedMemory(ctx.shared[0]));
  ASSERT_OK(w.WriteProcess(p.info));
  ASSERT_OK(w.WriteMappings(100, p.mappings));
  ASSERT_OK(w.WriteFiles(100, p.files));
  ASSERT_OK(w.WriteThread(100, p.threads[0]));
  // Process 102 before thread 101 of process 100.
  EXPECT_EQ(w.WriteProcess(ctx.processes[1].info).message(),
            "write Process section: out of order: expected Thread 101 of pid 100, found Process");
}

TEST(ContextWriter, RefusesFinishBeforeEveryProcess) {
  Context ctx = MakeFullContext();
  StringSink sink;
  ContextWriter w(&sink);
  ASSERT_OK(w.Begin(ctx.image));
  ASSERT_OK(w.WriteTree(ctx.tree));
  EXPECT_EQ(w.Finish().message(), "write End section: End before the Process of pid 100");
}

TEST(ContextWriter, RefusesBadTrees) {
  auto refuse = [](ProcessTree tree) {
    StringSink sink;
    ContextWriter w(&sink);
    EXPECT_TRUE(w.Begin(ImageInfo{}).ok());
    return w.WriteTree(tree).message();
  };
  ProcessEntry a;
  a.pid = 5;
  a.tids = {5};
  ProcessEntry b = a;
  b.pid = 6;
  b.tids = {6};
  b.ppid = 5;
  EXPECT_EQ(refuse({}), "write Tree section: the Tree has no process");
  EXPECT_EQ(refuse({{a, a}}), "write Tree section: process[1] (pid 5): pid listed twice");
  EXPECT_EQ(refuse({{b, a}}),
            "write Tree section: process[0] (pid 6): listed before its parent pid 5");
  ProcessEntry c = a;
  c.tids = {6, 5};
  EXPECT_EQ(refuse({{c}}), "write Tree section: process[0] (pid 5): the first tid must be the pid");
  ProcessEntry d = b;
  d.tids = {6, 5};
  EXPECT_EQ(refuse({{a, d}}), "write Tree section: process[1] (pid 6): tid 5 is 0 or listed twice");
}

TEST(ContextWriter, RefusesMappingOfUnknownSharedMemory) {
  Context ctx = MakeTinyContext();
  Mapping m;
  m.start = 0x1000;
  m.end = 0x2000;
  m.kind = kMapSharedAnon;
  m.shmem_id = 3;
  StringSink sink;
  ContextWriter w(&sink);
  ASSERT_OK(w.Begin(ctx.image));
  ASSERT_OK(w.WriteTree(ctx.tree));
  ASSERT_OK(w.WriteProcess(ctx.processes[0].info));
  EXPECT_EQ(w.WriteMappings(1, {m}).message(),
            "write Mappings section: mapping[0] (0x1000-0x2000): shared memory id 3 has no "
            "SharedMemory section");
}

TEST(ContextWriter, RefusesOverlongStrings) {
  ImageInfo image;
  image.hostname = std::string(kMaxNameLength + 1, 'h');
  StringSink sink;
  ContextWriter w(&sink);
  EXPECT_EQ(w.Begin(image).message(),
            "write Image section: hostname is 4097 bytes, over the limit of 4096");
  EXPECT_EQ(sink.bytes().size(), 0u);
}

TEST(ContextWriter, ReturnsSinkErrorsAndStops) {
  Context ctx = MakeFullContext();
  for (int fail_at = 0; fail_at < 40; ++fail_at) {
    testing::FailingSink sink(fail_at);
    Status s = WriteContext(ctx, &sink);
    if (sink.writes() <= fail_at) {
      EXPECT_TRUE(s.ok());
      break;
    }
    EXPECT_EQ(s.code(), ENOSPC) << fail_at;
    EXPECT_EQ(s.message(), "write test sink: No space left on device");
  }
}

TEST(ContextReader, ReportsSourceErrors) {
  std::string bytes = Encode(MakeFullContext());
  for (size_t ok_bytes : {size_t{0}, size_t{10}, size_t{100}, size_t{5000}, bytes.size() - 1}) {
    testing::FailingSource source(bytes, ok_bytes);
    Result<Context> got = ReadContext(&source, true);
    ASSERT_FALSE(got);
    EXPECT_EQ(got.error().code(), EIO);
    EXPECT_NE(got.error().message().find("Input/output error"), std::string::npos)
        << got.error().message();
  }
}

// Incremental contexts: ParentPages names pages the parent context holds.
Status TryParentPages(const std::vector<PageRun>& parent, const std::vector<PageRun>& own,
                      bool has_parent = true, bool pages_first = false) {
  Context ctx = SmallWithBigMapping();
  if (has_parent) {
    ctx.image.parent_token = 77;
    ctx.image.parent = "../1/node0.ctx";
  }
  StringSink sink;
  ContextWriter w(&sink);
  WriteUpToProcessPages(&w, ctx);
  std::string page(kPageSize * 4, 'p');
  auto pages = [&]() -> Status {
    if (own.empty()) return Status::Ok();
    STASIS_RETURN_IF_ERROR(w.BeginPages({PageOwner::kProcess, 10}, own));
    uint64_t n = 0;
    for (const PageRun& r : own) n += r.npages;
    STASIS_RETURN_IF_ERROR(w.AppendPageData(page.data(), n * kPageSize));
    return w.EndPages();
  };
  if (pages_first) STASIS_RETURN_IF_ERROR(pages());
  STASIS_RETURN_IF_ERROR(w.WriteParentPages(10, parent));
  if (!pages_first) STASIS_RETURN_IF_ERROR(pages());
  STASIS_RETURN_IF_ERROR(w.Finish());
  // What was written reads back, parent runs included.
  STASIS_ASSIGN_OR_RETURN(Context back, Read(sink.bytes()));
  EXPECT_EQ(back.processes[0].parent_runs, parent);
  EXPECT_EQ(back.image.parent, "../1/node0.ctx");
  return Status::Ok();
}

TEST(ContextWriter, WritesAndRefusesParentPages) {
  EXPECT_TRUE(TryParentPages({{0x100000, 2}, {0x104000, 1}}, {{0x102000, 2}, {0x105000, 1}}).ok());
  EXPECT_TRUE(TryParentPages({{0x100000, 1}}, {}).ok());
  struct Case {
    std::vector<PageRun> parent, own;
    bool has_parent, pages_first;
    const char* message;
  } cases[] = {
      {{{0x100000, 2}},
       {{0x101000, 1}},
       true,
       false,
       "write Pages section: run[0] (0x101000-0x102000) overlaps pages the parent context holds "
       "(0x100000, 2 pages)"},
      {{{0x1ff000, 2}},
       {},
       true,
       false,
       "write ParentPages section: run[0] (0x1ff000-0x201000) is not inside the private anonymous "
       "mappings of pid 10"},
      {{{0x100000, 1}},
       {},
       false,
       false,
       "write ParentPages section: the Image names no parent context"},
      {{{0x100000, 1}},
       {{0x101000, 1}},
       true,
       true,
       "write ParentPages section: follows Pages of pid 10"},
      {{{0x102000, 1}, {0x100000, 1}}, {}, true, false, "starts below the end"},
  };
  for (const Case& c : cases) {
    Status s = TryParentPages(c.parent, c.own, c.has_parent, c.pages_first);
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s.message();
  }
  // A shared mapping cannot hold parent pages.
  Context ctx = SmallWithBigMapping();
  ctx.image.parent_token = 77;
  ctx.image.parent = "p.ctx";
  ctx.processes[0].mappings[0].flags = kMapShared;
  StringSink sink;
  ContextWriter w(&sink);
  WriteUpToProcessPages(&w, ctx);
  EXPECT_NE(w.WriteParentPages(10, {{0x100000, 1}}).message().find("private anonymous"),
            std::string::npos);
  // The token and the path come together.
  ImageInfo half;
  half.parent_token = 5;
  StringSink sink2;
  ContextWriter w2(&sink2);
  EXPECT_EQ(w2.Begin(half).message(), "write Image section: a parent token without a parent path");
}

}  // namespace
}  // namespace stasis::format
