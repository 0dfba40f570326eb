// Streaming writer and reader of context files (format v1, docs/format.md).
//
// A context file is a header followed by checksummed sections, written in
// one pass and readable in one pass (no seeks), so a restore can start
// before the whole file has arrived:
//
//   header | Image | Tree | { SharedMemory, Pages(shmem) }*
//          | per process, parents first: Process, Mappings, Files, Thread*,
//            Pages(process)* | End
//
// The writer never produces a file a reader would refuse; the reader trusts
// no length, count, offset or path from the file: a truncated, corrupted or
// hostile file yields a Status (EBADMSG) naming the section and byte offset,
// never a crash, a hang or an allocation the file did not pay for.
//
// Neither class owns its sink/source; both are single-threaded. A writer's
// first error (EINVAL for a section it refuses, or the sink's error) is
// final: every later call returns it and the output must be discarded. A
// reader's first corrupt-data or I/O error is final likewise; a reader call
// made in the wrong state (EINVAL, e.g. Next with page data unread) changes
// nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/io.h"
#include "engine/base/status.h"
#include "engine/format/context.h"

namespace stasis::format {

inline constexpr uint32_t kFormatVersion = 1;

enum class SectionType : uint32_t {
  kImage = 1,
  kTree = 2,
  kProcess = 3,
  kMappings = 4,
  kThread = 5,
  kFiles = 6,
  kSharedMemory = 7,
  kPages = 8,
  kEnd = 9,
  kParentPages = 10,
};
const char* SectionName(SectionType type);

// Whose memory a Pages section holds.
struct PageOwner {
  enum Kind : uint32_t { kProcess = 0, kSharedMemory = 1 };
  uint32_t kind = kProcess;
  uint64_t id = 0;  // pid or SharedMemory::id
  bool operator==(const PageOwner&) const = default;
};

class ContextWriter {
 public:
  explicit ContextWriter(ByteSink* sink);
  ~ContextWriter();

  Status Begin(const ImageInfo& image);
  Status WriteTree(const ProcessTree& tree);
  Status WriteSharedMemory(const SharedMemory& shm);
  Status WriteProcess(const ProcessInfo& process);
  Status WriteMappings(uint32_t pid, const std::vector<Mapping>& mappings);
  Status WriteFiles(uint32_t pid, const std::vector<FileDesc>& files);
  Status WriteThread(uint32_t pid, const ThreadInfo& thread);

  // An incremental context (the Image names a parent): the pages of `pid`
  // whose content is the parent context's (there as page data, parent
  // runs of its own, or absent = zero). Once per process, after its
  // Threads and before its Pages, which must not overlap these runs.
  Status WriteParentPages(uint32_t pid, const std::vector<PageRun>& runs);

  // Page data: BeginPages with the runs (sorted, non-overlapping, page
  // aligned), then exactly sum(npages) * kPageSize bytes through
  // AppendPageData in any chunking, then EndPages. Page data starts at a
  // kPageSize-aligned offset of the file.
  Status BeginPages(const PageOwner& owner, const std::vector<PageRun>& runs);
  Status AppendPageData(const void* data, size_t n);
  // The same for a buffer lent by the sink (ByteSink::Borrow): checksummed,
  // then handed back to the sink to be written without a copy.
  Status AppendBorrowedPageData(char* buffer, size_t n);
  ByteSink* sink() const;
  Status EndPages();

  // Writes the End section. Does not sync: the caller owns durability.
  Status Finish();

  // From now on page data is compressed (codec kCodecLz4 or kCodecZstd;
  // kCodecNone turns it off): cut into groups of at most 4 MiB, each one
  // version 2 Pages section with one block, compressed on `threads`
  // threads (inline when threads <= 1) and written in order. A block that
  // does not shrink is stored raw. `level`: zstd's level (0 = 1), lz4's
  // acceleration (0 = 1). Call before the first BeginPages.
  void SetCompression(PageCodec codec, int level, int threads);

  uint64_t bytes_written() const;
  uint64_t page_bytes_written() const;  // raw page data, as the runs count it
  uint64_t stored_page_bytes() const;   // compressed blocks as stored

 private:
  struct State;
  // The checks of every page data append (`what` names the call).
  Status CheckAppend(size_t n, const char* what);
  Status AppendToGroups(const char* data, size_t n);
  std::unique_ptr<State> state_;
};

// Where the page data of a Pages section that was skipped unread lies in
// the stream (lazy restart serves it later by offset): the data (version 1:
// the runs' bytes; version 2: the blocks) runs from data_offset to
// trailer_offset, where the u32 trailer is; crc_seed is the CRC32C of the
// metadata and padding, to be continued over the data and compared with
// the trailer.
struct SkippedPages {
  uint64_t data_offset = 0;
  uint64_t trailer_offset = 0;
  uint32_t crc_seed = 0;
  uint16_t version = 1;
};

// A Pages section header, as the reader hands it out.
struct PagesHeader {
  PageOwner owner;
  std::vector<PageRun> runs;
  uint64_t data_bytes = 0;      // sum(npages) * kPageSize
  uint32_t codec = kCodecNone;  // how the data is stored (the reader decompresses)
  bool operator==(const PagesHeader&) const = default;
};

class ContextReader {
 public:
  explicit ContextReader(ByteSource* source);
  ~ContextReader();

  // Reads and checks the file header and the Image section.
  Result<ImageInfo> Begin();

  // Reads the next section header and, for metadata sections, its payload
  // (checksum verified). After kPages, the page data must be consumed with
  // ReadPageData/SkipPageData before calling Next again. Returns kEnd once,
  // after which the stream must be at its end (trailing bytes are an error).
  Result<SectionType> Next();

  // The decoded payload of the section Next last returned.
  const ProcessTree& tree() const;
  const SharedMemory& shared_memory() const;
  const ProcessInfo& process() const;
  uint32_t section_pid() const;  // pid a Mappings/Files/Thread section is for
  const std::vector<Mapping>& mappings() const;
  const std::vector<FileDesc>& files() const;
  const ThreadInfo& thread() const;
  const PagesHeader& pages() const;
  const std::vector<PageRun>& parent_runs() const;  // of a ParentPages section

  // Reads the next n bytes of the current Pages section's data. The
  // section's checksum is verified when its last byte is read; a mismatch
  // is returned from that call. Reading past the data is an error.
  Status ReadPageData(void* data, size_t n);
  Status SkipPageData();
  // Moves past the current section's page data and trailer without reading
  // them (the source must Skip: a regular file); their checksum is then the
  // caller's to verify, from what this returns.
  Result<SkippedPages> SkipPageDataUnverified();
  // ReadPageData without a copy, from a source that lends its buffers
  // (ByteSource::ReadInPlace): points *data at up to n next bytes of page
  // data (checksummed like ReadPageData), valid until the next read.
  // ENOTSUP when the source cannot: use ReadPageData.
  Result<size_t> ReadPageDataInPlace(const char** data, size_t n);
  uint64_t page_data_remaining() const;

  uint64_t offset() const;  // bytes consumed from the source

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Everything a context holds, loaded at once (stasis show/verify, tests).
struct ProcessImage {
  ProcessInfo info;
  std::vector<Mapping> mappings;
  std::vector<FileDesc> files;
  std::vector<ThreadInfo> threads;
  std::vector<PageRun> page_runs;  // all runs of all Pages sections
  std::string page_data;           // only filled when load_pages is true
  uint64_t page_bytes = 0;
  uint32_t page_codecs = 0;          // bit 1 << PageCodec of every Pages section
  std::vector<PageRun> parent_runs;  // pages the parent context holds
  bool operator==(const ProcessImage&) const = default;
};

struct Context {
  ImageInfo image;
  ProcessTree tree;
  std::vector<SharedMemory> shared;
  std::vector<std::vector<PageRun>> shared_runs;  // parallel to shared
  std::vector<std::string> shared_page_data;      // parallel to shared; load_pages only
  std::vector<ProcessImage> processes;            // in file order
  uint64_t file_bytes = 0;
  bool operator==(const Context&) const = default;
};

// Reads a whole context, verifying every checksum and every cross-reference
// (each Process has a Tree entry, Mappings/Threads follow their Process,
// shmem ids exist). With load_pages false the page data is checked and
// discarded.
Result<Context> ReadContext(ByteSource* source, bool load_pages);

// "none", "lz4", "lz4:N" (acceleration), "zstd", "zstd:N" (level 1..19):
// what --compress takes. The error names the accepted forms.
Status ParseCompression(std::string_view text, PageCodec* codec, int* level);

// Do these first bytes of a file start a stasis context (the 8-byte magic)?
// A cheap sniff for listings; it verifies nothing else.
bool HasContextMagic(std::string_view first_bytes);

// Reads a context from `source` and writes it to `sink` section by section,
// verifying everything ReadContext verifies and holding at most one
// section's metadata and a 1 MiB page buffer in memory (staging a context
// from local disk to the parallel file system). The copy has the same
// sections; unknown fields of a newer writer are dropped, and compressed
// page data is written back uncompressed. On error the sink
// holds a partial copy. Does not sync.
Status CopyContext(ByteSource* source, ByteSink* sink);

}  // namespace stasis::format
