// ContextWriter, ContextReader, ReadContext and CopyContext: the framing of
// a context file (file header, section headers, checksums, page-data
// alignment) around the metadata encoding of schema.h and the rules of
// validator.h. docs/format.md is the specification this file implements.
//
// The reader takes nothing on trust: every header is checked before its
// lengths are used, metadata is read in growing chunks so that a claimed
// length costs memory only once its bytes have arrived, and page data is
// streamed to the caller while its checksum accumulates.
#include "engine/format/context_io.h"

#include <lz4.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "engine/format/crc32c.h"
#include "engine/format/field_codec.h"
#include "engine/format/format_constants.h"
#include "engine/format/schema.h"
#include "engine/format/validator.h"

namespace stasis::format {

using internal::EndCounts;
using internal::FieldReader;
using internal::FieldWriter;
using internal::LoadU16;
using internal::LoadU32;
using internal::LoadU64;
using internal::StoreU16;
using internal::StoreU32;
using internal::StoreU64;

const char* SectionName(SectionType type) {
  switch (type) {
    case SectionType::kImage:
      return "Image";
    case SectionType::kTree:
      return "Tree";
    case SectionType::kProcess:
      return "Process";
    case SectionType::kMappings:
      return "Mappings";
    case SectionType::kThread:
      return "Thread";
    case SectionType::kFiles:
      return "Files";
    case SectionType::kSharedMemory:
      return "SharedMemory";
    case SectionType::kPages:
      return "Pages";
    case SectionType::kEnd:
      return "End";
    case SectionType::kParentPages:
      return "ParentPages";
  }
  return "unknown";
}

namespace {

// The fuzzer build accepts wrong checksums so that mutations reach the
// decoders behind them; every other check stays on.
#if defined(STASIS_FORMAT_FUZZING)
constexpr bool kVerifyChecksums = false;
#else
constexpr bool kVerifyChecksums = true;
#endif

constexpr char kZeroPage[kPageSize] = {};
constexpr size_t kCopyChunk = 1 << 20;
constexpr size_t kFirstMetaChunk = 64 << 10;

// Bytes of zero padding after a Pages section's metadata that end at
// `offset`, so that page data starts at a multiple of kPageSize.
uint64_t PaddingAt(uint64_t offset) { return (kPageSize - offset % kPageSize) % kPageSize; }

std::string Hex32(uint32_t v) {
  char buf[16];
  snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

void EncodeFileHeader(char* h) {
  std::memset(h, 0, kFileHeaderSize);
  std::memcpy(h + file_header::kMagic, kFileMagic, sizeof(kFileMagic));
  StoreU32(h + file_header::kVersion, kFormatVersion);
  StoreU32(h + file_header::kHeaderSize, kFileHeaderSize);
  StoreU32(h + file_header::kSectionHeaderSize, kSectionHeaderSize);
  StoreU32(h + file_header::kFlags, 0);
  StoreU32(h + file_header::kPageSize, static_cast<uint32_t>(kPageSize));
  StoreU32(h + file_header::kHeaderCrc, Crc32c(0, h, file_header::kHeaderCrc));
}

void EncodeSectionHeader(char* h, SectionType type, uint32_t meta_length, uint64_t payload_length,
                         uint32_t meta_crc, uint16_t version = kSectionVersion) {
  StoreU32(h + section_header::kMagic, kSectionMagic);
  StoreU16(h + section_header::kType, static_cast<uint16_t>(type));
  StoreU16(h + section_header::kVersion, version);
  StoreU32(h + section_header::kFlags, 0);
  StoreU32(h + section_header::kMetaLength, meta_length);
  StoreU64(h + section_header::kPayloadLength, payload_length);
  StoreU32(h + section_header::kMetaCrc, meta_crc);
  StoreU32(h + section_header::kHeaderCrc, Crc32c(0, h, section_header::kHeaderCrc));
}

// Compressed page data (Pages sections of version 2): blocks of
// {u32 raw_len, u32 stored_len, stored bytes}; stored_len == raw_len means
// the block is stored as is (it did not shrink).
constexpr uint16_t kCompressedPagesVersion = 2;
constexpr size_t kBlockHeaderSize = 8;
// The writer's group: one compressed section holds at most this much raw
// page data, in one block; a reader accepts blocks up to kMaxBlockBytes.
constexpr size_t kGroupBytes = 4u << 20;
constexpr size_t kMaxBlockBytes = 8u << 20;

// Compresses `n` raw bytes into `out` (resized to the stored bytes); false
// when it did not shrink them (the block is then stored raw).
bool CompressBlock(PageCodec codec, int level, const char* raw, size_t n, std::string* out) {
  if (codec == kCodecLz4) {
    out->resize(static_cast<size_t>(LZ4_compressBound(static_cast<int>(n))));
    int got = LZ4_compress_fast(raw, out->data(), static_cast<int>(n),
                                static_cast<int>(out->size()), level > 1 ? level : 1);
    if (got <= 0 || static_cast<size_t>(got) >= n) return false;
    out->resize(static_cast<size_t>(got));
    return true;
  }
  thread_local std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(),
                                                                       ZSTD_freeCCtx);
  if (!cctx) return false;
  out->resize(ZSTD_compressBound(n));
  size_t got = ZSTD_compressCCtx(cctx.get(), out->data(), out->size(), raw, n, level ? level : 1);
  if (ZSTD_isError(got) || got >= n) return false;
  out->resize(got);
  return true;
}

}  // namespace

// --- writer ------------------------------------------------------------------

// One group of page data on its way to a compressed section.
struct CompressJob {
  PageOwner owner;
  std::vector<PageRun> runs;
  std::unique_ptr<char[]> raw;
  size_t raw_len = 0;
  std::string stored;
  bool compressed = false;
  bool done = false;
};

struct ContextWriter::State {
  ByteSink* sink = nullptr;
  uint64_t base = 0;  // sink offset of the file header
  Status failed;
  internal::ContextValidator validator;
  std::string meta;  // reused encoding buffer
  uint64_t page_bytes = 0;
  // The open Pages section, between BeginPages and EndPages.
  bool in_pages = false;
  uint64_t pages_left = 0;
  uint32_t pages_crc = 0;

  // Compression (SetCompression): BeginPages cuts the runs into groups of
  // at most kGroupBytes; each filled group becomes a CompressJob, compressed
  // on `workers` (or inline without them) and written, in order, as one
  // version 2 Pages section.
  PageCodec codec = kCodecNone;
  int level = 0;
  std::vector<std::vector<PageRun>> groups;  // of the open BeginPages
  size_t group = 0;                          // the one being filled
  std::unique_ptr<CompressJob> filling;
  std::deque<std::unique_ptr<CompressJob>> queued;  // submitted, in file order
  std::vector<std::unique_ptr<char[]>> spare;       // raw buffers to reuse
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<CompressJob*> todo;
  bool stopping = false;

  ~State() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    cv.notify_all();
    for (auto& t : workers) t.join();
  }

  void Work() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return stopping || !todo.empty(); });
      if (todo.empty()) return;
      CompressJob* job = todo.front();
      todo.pop_front();
      lock.unlock();
      job->compressed = CompressBlock(codec, level, job->raw.get(), job->raw_len, &job->stored);
      lock.lock();
      job->done = true;
      cv.notify_all();
    }
  }

  // Starts compressing the filled group; writes finished ones while more
  // than `2 * workers` wait, so memory stays bounded.
  Status Submit(std::unique_ptr<CompressJob> job) {
    if (workers.empty()) {
      job->compressed = CompressBlock(codec, level, job->raw.get(), job->raw_len, &job->stored);
      job->done = true;
      return Emit(std::move(job));
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      todo.push_back(job.get());
      queued.push_back(std::move(job));
    }
    cv.notify_all();
    return Drain(2 * workers.size());
  }
  // Writes queued sections until at most `keep` wait.
  Status Drain(size_t keep) {
    while (queued.size() > keep) {
      std::unique_ptr<CompressJob> job;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return queued.front()->done; });
        job = std::move(queued.front());
        queued.pop_front();
      }
      STASIS_RETURN_IF_ERROR(Emit(std::move(job)));
    }
    return Status::Ok();
  }
  // One compressed Pages section: header (version 2), metadata with the
  // codec, padding, one block, the trailer.
  Status Emit(std::unique_ptr<CompressJob> job) {
    if (!failed.ok()) return failed;
    uint32_t c = codec;
    meta.clear();
    Status s = internal::EncodeFields(
        &meta, [&](FieldWriter& w) { internal::PagesFields(w, job->owner, job->runs, c); });
    if (!s.ok()) return Refuse(SectionType::kPages, s);
    const char* data = job->compressed ? job->stored.data() : job->raw.get();
    const uint32_t stored_len =
        static_cast<uint32_t>(job->compressed ? job->stored.size() : job->raw_len);
    uint64_t pad = PaddingAt(Offset() + kSectionHeaderSize + meta.size());
    uint32_t crc = Crc32c(0, meta.data(), meta.size());
    char header[kSectionHeaderSize];
    EncodeSectionHeader(header, SectionType::kPages, static_cast<uint32_t>(meta.size()),
                        meta.size() + pad + kBlockHeaderSize + stored_len + kPagesTrailerSize, crc,
                        kCompressedPagesVersion);
    STASIS_RETURN_IF_ERROR(Write(header, sizeof(header)));
    STASIS_RETURN_IF_ERROR(Write(meta.data(), meta.size()));
    STASIS_RETURN_IF_ERROR(Write(kZeroPage, pad));
    char block[kBlockHeaderSize];
    StoreU32(block, static_cast<uint32_t>(job->raw_len));
    StoreU32(block + 4, stored_len);
    STASIS_RETURN_IF_ERROR(Write(block, sizeof(block)));
    STASIS_RETURN_IF_ERROR(Write(data, stored_len));
    crc = Crc32c(Crc32c(Crc32c(crc, kZeroPage, pad), block, sizeof(block)), data, stored_len);
    char trailer[kPagesTrailerSize];
    StoreU32(trailer, crc);
    STASIS_RETURN_IF_ERROR(Write(trailer, sizeof(trailer)));
    stored_bytes += stored_len;
    spare.push_back(std::move(job->raw));
    return Status::Ok();
  }
  // The next group's job, with a raw buffer.
  void NextGroup(const PageOwner& owner) {
    filling.reset();
    if (group >= groups.size()) return;
    filling = std::make_unique<CompressJob>();
    filling->owner = owner;
    filling->runs = groups[group];
    if (!spare.empty()) {
      filling->raw = std::move(spare.back());
      spare.pop_back();
    } else {
      filling->raw.reset(new char[kGroupBytes]);
    }
  }
  uint64_t stored_bytes = 0;
  PageOwner c_owner;

  uint64_t Offset() const { return sink->Offset() - base; }

  // Makes `s` the final error of this writer.
  Status Fail(Status s) {
    if (failed.ok()) failed = std::move(s);
    return failed;
  }
  Status Refuse(SectionType type, const Status& s) {
    return Fail(Status::Error(
        EINVAL, std::string("write ") + SectionName(type) + " section: " + s.message()));
  }
  // The common entry check of every call; compressed sections still being
  // compressed are written first.
  Status Usable(SectionType type, bool drain = true) {
    if (!failed.ok()) return failed;
    if (in_pages) {
      return Refuse(type, Status::Error(EINVAL, "the Pages section is still open (" +
                                                    std::to_string(pages_left) +
                                                    " bytes of page data missing)"));
    }
    return drain ? Drain(0) : Status::Ok();
  }
  Status Write(const void* data, size_t n) {
    Status s = sink->Write(data, n);
    if (!s.ok()) return Fail(s);
    return Status::Ok();
  }

  // Encodes a metadata payload into `meta`, refusing it past the limits.
  template <class F>
  Status Encode(SectionType type, F&& fields) {
    meta.clear();
    Status s = internal::EncodeFields(&meta, fields);
    if (!s.ok()) return Refuse(type, s);
    if (meta.size() > kMaxMetaLength) {
      return Refuse(type, Status::Error(EINVAL, "metadata is " + std::to_string(meta.size()) +
                                                    " bytes, over the limit of " +
                                                    std::to_string(kMaxMetaLength)));
    }
    return Status::Ok();
  }
  // Writes the header and `meta` of a section whose payload is `meta`
  // plus `extra` bytes the caller writes next.
  Status WriteHeaderAndMeta(SectionType type, uint64_t extra, uint32_t meta_crc) {
    char header[kSectionHeaderSize];
    EncodeSectionHeader(header, type, static_cast<uint32_t>(meta.size()), meta.size() + extra,
                        meta_crc);
    STASIS_RETURN_IF_ERROR(Write(header, sizeof(header)));
    return Write(meta.data(), meta.size());
  }
  // A whole metadata section: validate, encode, write.
  template <class Validate, class F>
  Status Section(SectionType type, Validate&& validate, F&& fields) {
    STASIS_RETURN_IF_ERROR(Usable(type));
    STASIS_RETURN_IF_ERROR(Encode(type, fields));
    Status s = validate();
    if (!s.ok()) return Refuse(type, s);
    return WriteHeaderAndMeta(type, 0, Crc32c(0, meta.data(), meta.size()));
  }
};

ContextWriter::ContextWriter(ByteSink* sink) : state_(std::make_unique<State>()) {
  state_->sink = sink;
  state_->base = sink->Offset();
}

ContextWriter::~ContextWriter() = default;

void ContextWriter::SetCompression(PageCodec codec, int level, int threads) {
  State& st = *state_;
  st.codec = codec == kCodecLz4 || codec == kCodecZstd ? codec : kCodecNone;
  st.level = level;
  if (st.codec != kCodecNone && st.workers.empty())
    for (int i = 0; i < threads && threads > 1; ++i) st.workers.emplace_back([&st] { st.Work(); });
}

uint64_t ContextWriter::stored_page_bytes() const { return state_->stored_bytes; }

Status ContextWriter::Begin(const ImageInfo& image) {
  State& st = *state_;
  STASIS_RETURN_IF_ERROR(st.Usable(SectionType::kImage));
  STASIS_RETURN_IF_ERROR(st.Encode(SectionType::kImage, [&](FieldWriter& w) { Fields(w, image); }));
  Status s = st.validator.Image(image);
  if (!s.ok()) return st.Refuse(SectionType::kImage, s);
  char header[kFileHeaderSize];
  EncodeFileHeader(header);
  STASIS_RETURN_IF_ERROR(st.Write(header, sizeof(header)));
  return st.WriteHeaderAndMeta(SectionType::kImage, 0, Crc32c(0, st.meta.data(), st.meta.size()));
}

Status ContextWriter::WriteTree(const ProcessTree& tree) {
  return state_->Section(
      SectionType::kTree, [&] { return state_->validator.Tree(tree); },
      [&](FieldWriter& w) { Fields(w, tree); });
}

Status ContextWriter::WriteSharedMemory(const SharedMemory& shm) {
  return state_->Section(
      SectionType::kSharedMemory, [&] { return state_->validator.Shared(shm); },
      [&](FieldWriter& w) { Fields(w, shm); });
}

Status ContextWriter::WriteProcess(const ProcessInfo& process) {
  return state_->Section(
      SectionType::kProcess, [&] { return state_->validator.Process(process); },
      [&](FieldWriter& w) { Fields(w, process); });
}

Status ContextWriter::WriteMappings(uint32_t pid, const std::vector<Mapping>& mappings) {
  return state_->Section(
      SectionType::kMappings, [&] { return state_->validator.Mappings(pid, mappings); },
      [&](FieldWriter& w) { internal::MappingsFields(w, pid, mappings); });
}

Status ContextWriter::WriteFiles(uint32_t pid, const std::vector<FileDesc>& files) {
  return state_->Section(
      SectionType::kFiles, [&] { return state_->validator.Files(pid, files); },
      [&](FieldWriter& w) { internal::FilesFields(w, pid, files); });
}

Status ContextWriter::WriteThread(uint32_t pid, const ThreadInfo& thread) {
  return state_->Section(
      SectionType::kThread, [&] { return state_->validator.Thread(pid, thread); },
      [&](FieldWriter& w) { internal::ThreadFields(w, pid, thread); });
}

Status ContextWriter::WriteParentPages(uint32_t pid, const std::vector<PageRun>& runs) {
  return state_->Section(
      SectionType::kParentPages, [&] { return state_->validator.ParentPages(pid, runs); },
      [&](FieldWriter& w) { internal::ParentPagesFields(w, pid, runs); });
}

Status ContextWriter::BeginPages(const PageOwner& owner, const std::vector<PageRun>& runs) {
  State& st = *state_;
  constexpr SectionType kType = SectionType::kPages;
  // Compressed groups of earlier Pages sections may still be on their way:
  // later ones queue behind them; anything written directly waits for them.
  const bool compressing = st.codec != kCodecNone && !runs.empty();
  STASIS_RETURN_IF_ERROR(st.Usable(kType, !compressing));
  uint32_t no_codec = kCodecNone;
  STASIS_RETURN_IF_ERROR(
      st.Encode(kType, [&](FieldWriter& w) { internal::PagesFields(w, owner, runs, no_codec); }));
  uint64_t data_bytes = 0;
  if (compressing) {
    // Groups of whole pages, at most kGroupBytes each, runs cut where needed.
    st.groups.clear();
    std::vector<PageRun> cur;
    uint64_t in_cur = 0;
    for (PageRun r : runs) {
      while (r.npages > 0) {
        uint64_t room = (kGroupBytes - in_cur) / kPageSize;
        uint64_t take = std::min<uint64_t>(room, r.npages);
        cur.push_back({r.start, take});
        in_cur += take * kPageSize;
        r.start += take * kPageSize;
        r.npages -= take;
        if (in_cur == kGroupBytes) {
          st.groups.push_back(std::move(cur));
          cur.clear();
          in_cur = 0;
        }
      }
    }
    if (!cur.empty()) st.groups.push_back(std::move(cur));
    for (const auto& g : st.groups) {
      uint64_t bytes = 0;
      Status s = st.validator.Pages(owner, g, &bytes);
      if (!s.ok()) return st.Refuse(kType, s);
      data_bytes += bytes;
    }
    st.group = 0;
    st.c_owner = owner;
    st.NextGroup(owner);
    st.in_pages = true;
    st.pages_left = data_bytes;
    return Status::Ok();
  }
  Status s = st.validator.Pages(owner, runs, &data_bytes);
  if (!s.ok()) return st.Refuse(kType, s);
  uint64_t pad = PaddingAt(st.Offset() + kSectionHeaderSize + st.meta.size());
  uint32_t crc = Crc32c(0, st.meta.data(), st.meta.size());
  STASIS_RETURN_IF_ERROR(st.WriteHeaderAndMeta(kType, pad + data_bytes + kPagesTrailerSize, crc));
  STASIS_RETURN_IF_ERROR(st.Write(kZeroPage, pad));
  st.in_pages = true;
  st.pages_left = data_bytes;
  st.pages_crc = Crc32c(crc, kZeroPage, pad);
  return Status::Ok();
}

// Inside BeginPages/EndPages and within the runs' bytes.
Status ContextWriter::CheckAppend(size_t n, const char* what) {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (!st.in_pages)
    return st.Refuse(SectionType::kPages,
                     Status::Error(EINVAL, std::string(what) + " without BeginPages"));
  if (n > st.pages_left) {
    return st.Refuse(
        SectionType::kPages,
        Status::Error(EINVAL, std::string(what) + " of " + std::to_string(n) + " bytes, only " +
                                  std::to_string(st.pages_left) + " left in the runs"));
  }
  return Status::Ok();
}

// Compressed mode: the bytes go into the group being filled; a full group
// is submitted.
Status ContextWriter::AppendToGroups(const char* data, size_t n) {
  State& st = *state_;
  while (n > 0) {
    CompressJob* job = st.filling.get();
    uint64_t want = 0;
    for (const PageRun& r : job->runs) want += r.npages * kPageSize;
    size_t k = static_cast<size_t>(std::min<uint64_t>(n, want - job->raw_len));
    std::memcpy(job->raw.get() + job->raw_len, data, k);
    job->raw_len += k;
    data += k;
    n -= k;
    st.pages_left -= k;
    st.page_bytes += k;
    if (job->raw_len == want) {
      STASIS_RETURN_IF_ERROR(st.Submit(std::move(st.filling)));
      ++st.group;
      st.NextGroup(st.c_owner);
    }
  }
  return Status::Ok();
}

Status ContextWriter::AppendPageData(const void* data, size_t n) {
  State& st = *state_;
  STASIS_RETURN_IF_ERROR(CheckAppend(n, "AppendPageData"));
  if (st.filling) return AppendToGroups(static_cast<const char*>(data), n);
  STASIS_RETURN_IF_ERROR(st.Write(data, n));
  st.pages_crc = Crc32c(st.pages_crc, data, n);
  st.pages_left -= n;
  st.page_bytes += n;
  return Status::Ok();
}

Status ContextWriter::AppendBorrowedPageData(char* buffer, size_t n) {
  State& st = *state_;
  STASIS_RETURN_IF_ERROR(CheckAppend(n, "AppendBorrowedPageData"));
  if (st.filling) {
    // Copied into a group; the buffer goes back to the sink unwritten.
    Status s = AppendToGroups(buffer, n);
    Status back = st.sink->WriteBorrowed(buffer, 0);
    if (!s.ok()) return s;
    if (!back.ok()) return st.Fail(back);
    return Status::Ok();
  }
  // Checksummed before the sink owns the buffer again.
  st.pages_crc = Crc32c(st.pages_crc, buffer, n);
  Status s = st.sink->WriteBorrowed(buffer, n);
  if (!s.ok()) return st.Fail(s);
  st.pages_left -= n;
  st.page_bytes += n;
  return Status::Ok();
}

ByteSink* ContextWriter::sink() const { return state_->sink; }

Status ContextWriter::EndPages() {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (!st.in_pages) {
    return st.Refuse(SectionType::kPages, Status::Error(EINVAL, "EndPages without BeginPages"));
  }
  if (st.pages_left != 0) {
    return st.Refuse(SectionType::kPages,
                     Status::Error(EINVAL, "EndPages with " + std::to_string(st.pages_left) +
                                               " bytes of page data missing"));
  }
  if (st.codec != kCodecNone && !st.groups.empty()) {
    // Every group was submitted by the append that filled it.
    st.groups.clear();
    st.in_pages = false;
    return Status::Ok();
  }
  char trailer[kPagesTrailerSize];
  StoreU32(trailer, st.pages_crc);
  STASIS_RETURN_IF_ERROR(st.Write(trailer, sizeof(trailer)));
  st.in_pages = false;
  return Status::Ok();
}

Status ContextWriter::Finish() {
  State& st = *state_;
  STASIS_RETURN_IF_ERROR(st.Usable(SectionType::kEnd));
  EndCounts counts;
  Status s = st.validator.End(&counts);
  if (!s.ok()) return st.Refuse(SectionType::kEnd, s);
  STASIS_RETURN_IF_ERROR(st.Encode(SectionType::kEnd, [&](FieldWriter& w) { Fields(w, counts); }));
  return st.WriteHeaderAndMeta(SectionType::kEnd, 0, Crc32c(0, st.meta.data(), st.meta.size()));
}

uint64_t ContextWriter::bytes_written() const { return state_->Offset(); }
uint64_t ContextWriter::page_bytes_written() const { return state_->page_bytes; }

// --- reader ------------------------------------------------------------------

struct ContextReader::State {
  ByteSource* source = nullptr;
  uint64_t offset = 0;  // bytes consumed
  Status failed;
  bool begun = false;
  bool ended = false;
  internal::ContextValidator validator;

  // The section being read.
  SectionType type = SectionType::kImage;
  uint64_t section_offset = 0;
  std::string meta;

  // Decoded payloads.
  ImageInfo image;
  ProcessTree tree;
  SharedMemory shm;
  ProcessInfo process;
  uint32_t pid = 0;
  std::vector<Mapping> mappings;
  std::vector<FileDesc> files;
  ThreadInfo thread;
  PagesHeader pages;
  std::vector<PageRun> parent_runs;

  // Page data of the current Pages section.
  bool in_pages = false;
  uint64_t pages_left = 0;
  uint32_t pages_crc = 0;
  std::unique_ptr<char[]> skip_buffer;
  uint16_t version = kSectionVersion;  // of the section being read

  // A compressed (version 2) Pages section: stored bytes not yet read, and
  // the decompressed blocks. Two block buffers alternate, so a pointer
  // ReadPageDataInPlace lent stays valid through the next read.
  uint64_t stored_left = 0;
  std::unique_ptr<char[]> blocks[2];
  size_t block_cap[2] = {0, 0};
  int cur = 0;
  size_t block_len = 0, block_pos = 0;
  std::unique_ptr<char[]> comp;
  size_t comp_cap = 0;
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx{nullptr, ZSTD_freeDCtx};

  Status LoadBlock();
  Status ConsumedCompressed(size_t k);

  Status Fail(Status s) {
    if (failed.ok()) failed = std::move(s);
    return failed;
  }
  // "<Type> section at byte N: <what>".
  Status Corrupt(const std::string& what) {
    return Fail(Status::Corrupt(std::string(SectionName(type)) + " section at byte " +
                                std::to_string(section_offset) + ": " + what));
  }
  Status Misuse(const std::string& what) { return Status::Error(EINVAL, what); }
  // An error of the source itself keeps its code (EIO, ...).
  Status SourceError(const std::string& what, const Status& s) {
    return Fail(Status::Error(s.code(), std::string(SectionName(type)) + " section at byte " +
                                            std::to_string(section_offset) + ": " + what + ": " +
                                            s.message()));
  }

  // Reads up to n bytes, fewer only at the end of the stream.
  Result<size_t> ReadSome(void* data, size_t n) {
    char* p = static_cast<char*>(data);
    size_t done = 0;
    while (done < n) {
      Result<size_t> r = source->Read(p + done, n - done);
      if (!r) return r.error();
      if (*r == 0) break;
      done += *r;
    }
    offset += done;
    return done;
  }
  // Reads exactly n bytes of the current section; a short read is
  // "truncated in <what>".
  Status ReadExact(void* data, size_t n, const char* what) {
    Result<size_t> got = ReadSome(data, n);
    if (!got) return SourceError(std::string("reading ") + what, got.error());
    if (*got < n) {
      return Corrupt(std::string("truncated in ") + what + " (" + std::to_string(*got) + " of " +
                     std::to_string(n) + " bytes present)");
    }
    return Status::Ok();
  }

  Status ReadFileHeader();
  Status ReadSection();
  Status ReadMeta(uint32_t length, uint32_t crc);
  Status DecodeAndCheck(uint64_t payload_length);
  Status FinishPages();
  Status CheckAtEnd();
};

Status ContextReader::State::ReadFileHeader() {
  char h[kFileHeaderSize];
  Result<size_t> got = ReadSome(h, sizeof(h));
  auto fail = [&](const std::string& what) {
    return Fail(Status::Corrupt("file header: " + what));
  };
  if (!got) return Fail(got.error().Prefixed("file header"));
  if (*got >= sizeof(kFileMagic) &&
      std::memcmp(h + file_header::kMagic, kFileMagic, sizeof(kFileMagic)) != 0) {
    return fail("bad magic: not a stasis context file");
  }
  if (*got < sizeof(h)) {
    return fail("truncated (" + std::to_string(*got) + " of " + std::to_string(sizeof(h)) +
                " bytes present)");
  }
  uint32_t version = LoadU32(h + file_header::kVersion);
  if (version != kFormatVersion) {
    return fail("unsupported format version " + std::to_string(version) +
                " (this stasis reads version " + std::to_string(kFormatVersion) + ")");
  }
  uint32_t stored = LoadU32(h + file_header::kHeaderCrc);
  uint32_t actual = Crc32c(0, h, file_header::kHeaderCrc);
  if (kVerifyChecksums && stored != actual) {
    return fail("checksum mismatch (stored " + Hex32(stored) + ", computed " + Hex32(actual) + ")");
  }
  if (LoadU32(h + file_header::kHeaderSize) != kFileHeaderSize ||
      LoadU32(h + file_header::kSectionHeaderSize) != kSectionHeaderSize) {
    return fail("unexpected header sizes");
  }
  if (LoadU32(h + file_header::kFlags) != 0) {
    return fail("unknown flags " + Hex32(LoadU32(h + file_header::kFlags)));
  }
  if (LoadU32(h + file_header::kPageSize) != kPageSize) {
    return fail("page size " + std::to_string(LoadU32(h + file_header::kPageSize)) + " is not " +
                std::to_string(kPageSize));
  }
  for (size_t i = file_header::kReserved; i < file_header::kHeaderCrc; ++i) {
    if (h[i] != 0) return fail("reserved byte " + std::to_string(i) + " is not zero");
  }
  return Status::Ok();
}

Status ContextReader::State::ReadMeta(uint32_t length, uint32_t crc) {
  // Grow with the bytes actually read, never to `length` up front.
  size_t have = 0;
  meta.clear();
  while (have < length) {
    size_t step = std::min<size_t>(length - have, std::max(have, kFirstMetaChunk));
    meta.resize(have + step);
    Result<size_t> got = ReadSome(meta.data() + have, step);
    if (!got) return SourceError("reading metadata", got.error());
    have += *got;
    if (*got < step) {
      return Corrupt("truncated in metadata (" + std::to_string(have) + " of " +
                     std::to_string(length) + " bytes present)");
    }
  }
  uint32_t actual = Crc32c(0, meta.data(), meta.size());
  if (kVerifyChecksums && actual != crc) {
    return Corrupt("checksum mismatch (metadata: stored " + Hex32(crc) + ", computed " +
                   Hex32(actual) + ")");
  }
  return Status::Ok();
}

Status ContextReader::State::ReadSection() {
  section_offset = offset;
  char h[kSectionHeaderSize];
  Result<size_t> got = ReadSome(h, sizeof(h));
  auto fail = [&](const std::string& what) {
    return Fail(Status::Corrupt("section at byte " + std::to_string(section_offset) + ": " + what));
  };
  if (!got) {
    return Fail(got.error().Prefixed("section at byte " + std::to_string(section_offset)));
  }
  if (*got == 0) return fail("truncated: the file ends without an End section");
  if (*got < sizeof(h)) {
    return fail("truncated in the section header (" + std::to_string(*got) + " of " +
                std::to_string(sizeof(h)) + " bytes present)");
  }
  uint32_t magic = LoadU32(h + section_header::kMagic);
  if (magic != kSectionMagic) return fail("bad section magic " + Hex32(magic));
  uint32_t stored = LoadU32(h + section_header::kHeaderCrc);
  uint32_t actual = Crc32c(0, h, section_header::kHeaderCrc);
  if (kVerifyChecksums && stored != actual) {
    return fail("checksum mismatch (section header: stored " + Hex32(stored) + ", computed " +
                Hex32(actual) + ")");
  }
  uint16_t raw_type = LoadU16(h + section_header::kType);
  if (raw_type == 0 || raw_type > kMaxSectionType) {
    return fail("unknown section type " + std::to_string(raw_type));
  }
  type = static_cast<SectionType>(raw_type);
  version = LoadU16(h + section_header::kVersion);
  if (version != kSectionVersion &&
      !(type == SectionType::kPages && version == kCompressedPagesVersion)) {
    return Corrupt("unsupported section version " + std::to_string(version) +
                   " (this stasis reads version " + std::to_string(kSectionVersion) + ")");
  }
  uint32_t flags = LoadU32(h + section_header::kFlags);
  if (flags != 0) return Corrupt("unknown flags " + Hex32(flags));
  uint32_t meta_length = LoadU32(h + section_header::kMetaLength);
  uint64_t payload_length = LoadU64(h + section_header::kPayloadLength);
  if (meta_length > kMaxMetaLength) {
    return Corrupt("metadata length " + std::to_string(meta_length) + " is over the limit of " +
                   std::to_string(kMaxMetaLength));
  }
  if (type != SectionType::kPages && payload_length != meta_length) {
    return Corrupt("payload length " + std::to_string(payload_length) +
                   " differs from metadata length " + std::to_string(meta_length));
  }
  if (type == SectionType::kPages && payload_length < uint64_t{meta_length} + kPagesTrailerSize) {
    return Corrupt("payload length " + std::to_string(payload_length) + " is too short");
  }
  STASIS_RETURN_IF_ERROR(ReadMeta(meta_length, LoadU32(h + section_header::kMetaCrc)));
  return DecodeAndCheck(payload_length);
}

// Decodes `meta` as the payload of `type` into fresh values (absent fields
// keep their defaults), validates them, then keeps them.
Status ContextReader::State::DecodeAndCheck(uint64_t payload_length) {
  using internal::DecodeFields;
  Status s;
  switch (type) {
    case SectionType::kImage: {
      ImageInfo v;
      s = FieldReader::DecodeMessage(meta, &v);
      if (s.ok()) s = validator.Image(v);
      if (s.ok()) image = std::move(v);
      break;
    }
    case SectionType::kTree: {
      ProcessTree v;
      s = FieldReader::DecodeMessage(meta, &v);
      if (s.ok()) s = validator.Tree(v);
      if (s.ok()) tree = std::move(v);
      break;
    }
    case SectionType::kSharedMemory: {
      SharedMemory v;
      s = FieldReader::DecodeMessage(meta, &v);
      if (s.ok()) s = validator.Shared(v);
      if (s.ok()) shm = std::move(v);
      break;
    }
    case SectionType::kProcess: {
      ProcessInfo v;
      s = FieldReader::DecodeMessage(meta, &v);
      if (s.ok()) s = validator.Process(v);
      if (s.ok()) {
        process = std::move(v);
        pid = process.pid;
      }
      break;
    }
    case SectionType::kMappings: {
      uint32_t p = 0;
      std::vector<Mapping> v;
      s = DecodeFields(meta, [&](FieldReader& r) { internal::MappingsFields(r, p, v); });
      if (s.ok()) s = validator.Mappings(p, v);
      if (s.ok()) {
        pid = p;
        mappings = std::move(v);
      }
      break;
    }
    case SectionType::kFiles: {
      uint32_t p = 0;
      std::vector<FileDesc> v;
      s = DecodeFields(meta, [&](FieldReader& r) { internal::FilesFields(r, p, v); });
      if (s.ok()) s = validator.Files(p, v);
      if (s.ok()) {
        pid = p;
        files = std::move(v);
      }
      break;
    }
    case SectionType::kThread: {
      uint32_t p = 0;
      ThreadInfo v;
      s = DecodeFields(meta, [&](FieldReader& r) { internal::ThreadFields(r, p, v); });
      if (s.ok()) s = validator.Thread(p, v);
      if (s.ok()) {
        pid = p;
        thread = std::move(v);
      }
      break;
    }
    case SectionType::kParentPages: {
      uint32_t p = 0;
      std::vector<PageRun> v;
      s = DecodeFields(meta, [&](FieldReader& r) { internal::ParentPagesFields(r, p, v); });
      if (s.ok()) s = validator.ParentPages(p, v);
      if (s.ok()) {
        pid = p;
        parent_runs = std::move(v);
      }
      break;
    }
    case SectionType::kPages: {
      PagesHeader v;
      s = DecodeFields(meta,
                       [&](FieldReader& r) { internal::PagesFields(r, v.owner, v.runs, v.codec); });
      if (s.ok()) s = validator.Pages(v.owner, v.runs, &v.data_bytes);
      if (!s.ok()) break;
      uint64_t pad = PaddingAt(offset);
      const bool compressed = version == kCompressedPagesVersion;
      if (compressed != (v.codec != kCodecNone))
        return Corrupt(compressed ? "a compressed (version 2) section names no codec"
                                  : "codec " + std::to_string(v.codec) + " in a version 1 section");
      if (compressed && v.codec != kCodecLz4 && v.codec != kCodecZstd)
        return Corrupt("unknown page codec " + std::to_string(v.codec));
      uint64_t want = meta.size() + pad + v.data_bytes + kPagesTrailerSize;
      if (compressed) {
        // Blocks of stored bytes: only their end is known here.
        if (payload_length < meta.size() + pad + kPagesTrailerSize)
          return Corrupt("payload length " + std::to_string(payload_length) + " is too short");
        stored_left = payload_length - meta.size() - pad - kPagesTrailerSize;
        want = payload_length;
        block_len = block_pos = 0;
      }
      if (payload_length != want) {
        return Corrupt("payload length " + std::to_string(payload_length) + " does not match " +
                       std::to_string(v.runs.size()) + " runs of " + std::to_string(v.data_bytes) +
                       " bytes (expected " + std::to_string(want) + ")");
      }
      char padding[kPageSize];
      STASIS_RETURN_IF_ERROR(ReadExact(padding, pad, "padding"));
      if (std::memcmp(padding, kZeroPage, pad) != 0) return Corrupt("padding is not zero");
      pages = std::move(v);
      if (pages.owner.kind == PageOwner::kProcess) pid = static_cast<uint32_t>(pages.owner.id);
      in_pages = true;
      pages_left = pages.data_bytes;
      pages_crc = Crc32c(Crc32c(0, meta.data(), meta.size()), padding, pad);
      if (pages_left == 0) {
        if (compressed && stored_left != 0)
          return Corrupt(std::to_string(stored_left) + " stored bytes in a section without pages");
        return FinishPages();
      }
      break;
    }
    case SectionType::kEnd: {
      EndCounts v;
      s = FieldReader::DecodeMessage(meta, &v);
      EndCounts want;
      if (s.ok()) s = validator.End(&want);
      if (s.ok() && !(v == want)) {
        s = Status::Corrupt(
            "totals do not match the file (sections " + std::to_string(v.section_count) + " vs " +
            std::to_string(want.section_count) + ", processes " + std::to_string(v.process_count) +
            " vs " + std::to_string(want.process_count) + ", threads " +
            std::to_string(v.thread_count) + " vs " + std::to_string(want.thread_count) +
            ", shared " + std::to_string(v.shared_count) + " vs " +
            std::to_string(want.shared_count) + ", page bytes " + std::to_string(v.page_bytes) +
            " vs " + std::to_string(want.page_bytes) + "): sections were dropped or added");
      }
      if (s.ok()) return CheckAtEnd();
      break;
    }
  }
  if (!s.ok()) return Corrupt(s.message());
  return Status::Ok();
}

// The next block of a compressed section, decompressed into the block
// buffer not lent last (checksummed as stored).
Status ContextReader::State::LoadBlock() {
  if (stored_left < kBlockHeaderSize)
    return Corrupt("compressed page data ends with " + std::to_string(pages_left) +
                   " bytes of pages missing");
  char h[kBlockHeaderSize];
  STASIS_RETURN_IF_ERROR(ReadExact(h, sizeof(h), "a compressed block header"));
  pages_crc = Crc32c(pages_crc, h, sizeof(h));
  stored_left -= sizeof(h);
  const uint32_t raw_len = LoadU32(h), stored_len = LoadU32(h + 4);
  if (raw_len == 0 || raw_len % kPageSize != 0 || raw_len > kMaxBlockBytes || raw_len > pages_left)
    return Corrupt("compressed block of " + std::to_string(raw_len) +
                   " bytes (whole pages, at most " +
                   std::to_string(std::min<uint64_t>(kMaxBlockBytes, pages_left)) + ")");
  if (stored_len == 0 || stored_len > raw_len || stored_len > stored_left)
    return Corrupt("compressed block stores " + std::to_string(stored_len) + " bytes for " +
                   std::to_string(raw_len));
  const int next = 1 - cur;
  if (block_cap[next] < raw_len) {
    blocks[next].reset(new char[raw_len]);
    block_cap[next] = raw_len;
  }
  if (stored_len == raw_len) {
    STASIS_RETURN_IF_ERROR(ReadExact(blocks[next].get(), raw_len, "a stored block"));
    pages_crc = Crc32c(pages_crc, blocks[next].get(), raw_len);
  } else {
    if (comp_cap < stored_len) {
      comp.reset(new char[stored_len]);
      comp_cap = stored_len;
    }
    STASIS_RETURN_IF_ERROR(ReadExact(comp.get(), stored_len, "a compressed block"));
    pages_crc = Crc32c(pages_crc, comp.get(), stored_len);
    size_t got = 0;
    if (pages.codec == kCodecLz4) {
      int r = LZ4_decompress_safe(comp.get(), blocks[next].get(), static_cast<int>(stored_len),
                                  static_cast<int>(raw_len));
      got = r < 0 ? 0 : static_cast<size_t>(r);
    } else {
      if (!dctx) dctx.reset(ZSTD_createDCtx());
      if (!dctx) return Fail(Status::Error(ENOMEM, "create a zstd decompression context"));
      size_t r =
          ZSTD_decompressDCtx(dctx.get(), blocks[next].get(), raw_len, comp.get(), stored_len);
      got = ZSTD_isError(r) ? 0 : r;
    }
    if (got != raw_len)
      return Corrupt("compressed block does not decompress to its " + std::to_string(raw_len) +
                     " bytes");
  }
  stored_left -= stored_len;
  cur = next;
  block_len = raw_len;
  block_pos = 0;
  return Status::Ok();
}

// k bytes of the current block went to the caller.
Status ContextReader::State::ConsumedCompressed(size_t k) {
  block_pos += k;
  pages_left -= k;
  if (pages_left != 0) return Status::Ok();
  if (stored_left != 0)
    return Corrupt(std::to_string(stored_left) + " stored bytes after the last compressed block");
  return FinishPages();
}

Status ContextReader::State::FinishPages() {
  char trailer[kPagesTrailerSize];
  STASIS_RETURN_IF_ERROR(ReadExact(trailer, sizeof(trailer), "the page data checksum"));
  in_pages = false;
  uint32_t stored = LoadU32(trailer);
  if (kVerifyChecksums && stored != pages_crc) {
    return Corrupt("checksum mismatch (page data: stored " + Hex32(stored) + ", computed " +
                   Hex32(pages_crc) + ")");
  }
  return Status::Ok();
}

Status ContextReader::State::CheckAtEnd() {
  char extra[64];
  Result<size_t> got = ReadSome(extra, sizeof(extra));
  if (!got) return SourceError("reading past End", got.error());
  if (*got != 0) {
    return Corrupt(std::string(*got == sizeof(extra) ? "at least " : "") + std::to_string(*got) +
                   " bytes follow the End section");
  }
  ended = true;
  return Status::Ok();
}

ContextReader::ContextReader(ByteSource* source) : state_(std::make_unique<State>()) {
  state_->source = source;
}

ContextReader::~ContextReader() = default;

Result<ImageInfo> ContextReader::Begin() {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (st.begun) return st.Misuse("ContextReader::Begin called twice");
  st.begun = true;
  STASIS_RETURN_IF_ERROR(st.ReadFileHeader());
  STASIS_RETURN_IF_ERROR(st.ReadSection());
  return st.image;
}

Result<SectionType> ContextReader::Next() {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (!st.begun) return st.Misuse("ContextReader::Next before Begin");
  if (st.ended) return st.Misuse("ContextReader::Next after End");
  if (st.in_pages) {
    return st.Misuse("ContextReader::Next with " + std::to_string(st.pages_left) +
                     " bytes of page data unread in the Pages section at byte " +
                     std::to_string(st.section_offset));
  }
  STASIS_RETURN_IF_ERROR(st.ReadSection());
  return st.type;
}

const ProcessTree& ContextReader::tree() const { return state_->tree; }
const SharedMemory& ContextReader::shared_memory() const { return state_->shm; }
const ProcessInfo& ContextReader::process() const { return state_->process; }
uint32_t ContextReader::section_pid() const { return state_->pid; }
const std::vector<Mapping>& ContextReader::mappings() const { return state_->mappings; }
const std::vector<FileDesc>& ContextReader::files() const { return state_->files; }
const ThreadInfo& ContextReader::thread() const { return state_->thread; }
const PagesHeader& ContextReader::pages() const { return state_->pages; }
const std::vector<PageRun>& ContextReader::parent_runs() const { return state_->parent_runs; }
uint64_t ContextReader::page_data_remaining() const {
  return state_->in_pages ? state_->pages_left : 0;
}
uint64_t ContextReader::offset() const { return state_->offset; }

Status ContextReader::ReadPageData(void* data, size_t n) {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (!st.in_pages || n > st.pages_left) {
    return st.Misuse("ContextReader::ReadPageData of " + std::to_string(n) + " bytes, " +
                     std::to_string(st.in_pages ? st.pages_left : 0) + " left");
  }
  if (st.version == kCompressedPagesVersion) {
    char* out = static_cast<char*>(data);
    while (n > 0) {
      if (st.block_pos == st.block_len) STASIS_RETURN_IF_ERROR(st.LoadBlock());
      size_t k = std::min(n, st.block_len - st.block_pos);
      std::memcpy(out, st.blocks[st.cur].get() + st.block_pos, k);
      out += k;
      n -= k;
      STASIS_RETURN_IF_ERROR(st.ConsumedCompressed(k));
    }
    return Status::Ok();
  }
  Result<size_t> got = st.ReadSome(data, n);
  if (!got) return st.SourceError("reading page data", got.error());
  if (*got < n) {
    return st.Corrupt("truncated in page data (" +
                      std::to_string(st.pages.data_bytes - st.pages_left + *got) + " of " +
                      std::to_string(st.pages.data_bytes) + " bytes present)");
  }
  st.pages_crc = Crc32c(st.pages_crc, data, n);
  st.pages_left -= n;
  if (st.pages_left == 0) return st.FinishPages();
  return Status::Ok();
}

Result<size_t> ContextReader::ReadPageDataInPlace(const char** data, size_t n) {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (!st.in_pages || n > st.pages_left || n == 0) {
    return st.Misuse("ContextReader::ReadPageDataInPlace of " + std::to_string(n) + " bytes, " +
                     std::to_string(st.in_pages ? st.pages_left : 0) + " left");
  }
  if (st.version == kCompressedPagesVersion) {
    if (st.block_pos == st.block_len) STASIS_RETURN_IF_ERROR(st.LoadBlock());
    size_t k = std::min(n, st.block_len - st.block_pos);
    *data = st.blocks[st.cur].get() + st.block_pos;
    STASIS_RETURN_IF_ERROR(st.ConsumedCompressed(k));
    return k;
  }
  Result<size_t> got = st.source->ReadInPlace(data, n);
  if (!got) {
    if (got.error().code() == ENOTSUP) return got.error();
    return st.SourceError("reading page data", got.error());
  }
  if (*got == 0) {
    return st.Corrupt("truncated in page data (" +
                      std::to_string(st.pages.data_bytes - st.pages_left) + " of " +
                      std::to_string(st.pages.data_bytes) + " bytes present)");
  }
  st.offset += *got;
  st.pages_crc = Crc32c(st.pages_crc, *data, *got);
  st.pages_left -= *got;
  if (st.pages_left == 0) STASIS_RETURN_IF_ERROR(st.FinishPages());
  return *got;
}

Result<SkippedPages> ContextReader::SkipPageDataUnverified() {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (!st.in_pages || st.block_len != st.block_pos ||
      (st.version != kCompressedPagesVersion && st.pages_left != st.pages.data_bytes))
    return st.Misuse("ContextReader::SkipPageDataUnverified after page data was read");
  SkippedPages out;
  out.data_offset = st.offset;
  out.crc_seed = st.pages_crc;
  out.version = st.version;
  const uint64_t data = st.version == kCompressedPagesVersion ? st.stored_left : st.pages_left;
  out.trailer_offset = st.offset + data;
  Result<uint64_t> skipped = st.source->Skip(data + kPagesTrailerSize);
  if (!skipped) {
    if (skipped.error().code() == ENOTSUP) return skipped.error();
    return st.SourceError("skipping page data", skipped.error());
  }
  st.offset += *skipped;
  if (*skipped < data + kPagesTrailerSize)
    return st.Corrupt("truncated in page data (the file ends " +
                      std::to_string(data + kPagesTrailerSize - *skipped) + " bytes early)");
  st.in_pages = false;
  st.pages_left = 0;
  st.stored_left = 0;
  return out;
}

Status ContextReader::SkipPageData() {
  State& st = *state_;
  if (!st.failed.ok()) return st.failed;
  if (!st.in_pages) return Status::Ok();
  if (!st.skip_buffer) st.skip_buffer.reset(new char[kCopyChunk]);
  while (st.in_pages) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(st.pages_left, kCopyChunk));
    STASIS_RETURN_IF_ERROR(ReadPageData(st.skip_buffer.get(), n));
  }
  return Status::Ok();
}

Status ParseCompression(std::string_view text, PageCodec* codec, int* level) {
  std::string_view name = text.substr(0, text.find(':'));
  std::string_view arg =
      name.size() < text.size() ? text.substr(name.size() + 1) : std::string_view();
  auto bad = [&] {
    return Status::Error(
        EINVAL, "--compress=" + std::string(text) +
                    ": want none, lz4, lz4:ACCELERATION (1-20), zstd or zstd:LEVEL (1-19)");
  };
  int n = 0;
  if (!arg.empty()) {
    for (char c : arg) {
      if (c < '0' || c > '9' || n > 100000) return bad();
      n = n * 10 + (c - '0');
    }
  } else if (name.size() < text.size()) {
    return bad();
  }
  if (name == "none" && arg.empty() && name.size() == text.size()) {
    *codec = kCodecNone;
  } else if (name == "lz4" && (arg.empty() || (n >= 1 && n <= 20))) {
    *codec = kCodecLz4;
  } else if (name == "zstd" && (arg.empty() || (n >= 1 && n <= 19))) {
    *codec = kCodecZstd;
  } else {
    return bad();
  }
  *level = n;
  return Status::Ok();
}

// --- whole-file helpers --------------------------------------------------------

Result<Context> ReadContext(ByteSource* source, bool load_pages) {
  ContextReader reader(source);
  Context ctx;
  STASIS_ASSIGN_OR_RETURN(ctx.image, reader.Begin());
  for (;;) {
    STASIS_ASSIGN_OR_RETURN(SectionType type, reader.Next());
    switch (type) {
      case SectionType::kImage:  // the validator refuses a second Image
      case SectionType::kEnd:
        break;
      case SectionType::kTree:
        ctx.tree = reader.tree();
        break;
      case SectionType::kSharedMemory:
        ctx.shared.push_back(reader.shared_memory());
        ctx.shared_runs.emplace_back();
        ctx.shared_page_data.emplace_back();
        break;
      case SectionType::kProcess:
        ctx.processes.emplace_back();
        ctx.processes.back().info = reader.process();
        break;
      case SectionType::kMappings:
        ctx.processes.back().mappings = reader.mappings();
        break;
      case SectionType::kFiles:
        ctx.processes.back().files = reader.files();
        break;
      case SectionType::kThread:
        ctx.processes.back().threads.push_back(reader.thread());
        break;
      case SectionType::kParentPages:
        ctx.processes.back().parent_runs = reader.parent_runs();
        break;
      case SectionType::kPages: {
        const PagesHeader& pages = reader.pages();
        bool shared = pages.owner.kind == PageOwner::kSharedMemory;
        std::vector<PageRun>& runs =
            shared ? ctx.shared_runs.back() : ctx.processes.back().page_runs;
        runs.insert(runs.end(), pages.runs.begin(), pages.runs.end());
        if (!shared) ctx.processes.back().page_bytes += pages.data_bytes;
        if (!shared && pages.codec != kCodecNone)
          ctx.processes.back().page_codecs |= 1u << pages.codec;
        if (!load_pages) {
          STASIS_RETURN_IF_ERROR(reader.SkipPageData());
          break;
        }
        // Grow with the data actually read, not with what the runs claim.
        std::string& out = shared ? ctx.shared_page_data.back() : ctx.processes.back().page_data;
        while (reader.page_data_remaining() > 0) {
          size_t n =
              static_cast<size_t>(std::min<uint64_t>(reader.page_data_remaining(), kCopyChunk));
          size_t at = out.size();
          out.resize(at + n);
          STASIS_RETURN_IF_ERROR(reader.ReadPageData(out.data() + at, n));
        }
        break;
      }
    }
    if (type == SectionType::kEnd) break;
  }
  ctx.file_bytes = reader.offset();
  return ctx;
}

Status CopyContext(ByteSource* source, ByteSink* sink) {
  ContextReader reader(source);
  ContextWriter writer(sink);
  STASIS_ASSIGN_OR_RETURN(ImageInfo image, reader.Begin());
  STASIS_RETURN_IF_ERROR(writer.Begin(image));
  std::unique_ptr<char[]> buffer;
  for (;;) {
    STASIS_ASSIGN_OR_RETURN(SectionType type, reader.Next());
    switch (type) {
      case SectionType::kImage:
        break;
      case SectionType::kTree:
        STASIS_RETURN_IF_ERROR(writer.WriteTree(reader.tree()));
        break;
      case SectionType::kSharedMemory:
        STASIS_RETURN_IF_ERROR(writer.WriteSharedMemory(reader.shared_memory()));
        break;
      case SectionType::kProcess:
        STASIS_RETURN_IF_ERROR(writer.WriteProcess(reader.process()));
        break;
      case SectionType::kMappings:
        STASIS_RETURN_IF_ERROR(writer.WriteMappings(reader.section_pid(), reader.mappings()));
        break;
      case SectionType::kFiles:
        STASIS_RETURN_IF_ERROR(writer.WriteFiles(reader.section_pid(), reader.files()));
        break;
      case SectionType::kThread:
        STASIS_RETURN_IF_ERROR(writer.WriteThread(reader.section_pid(), reader.thread()));
        break;
      case SectionType::kParentPages:
        STASIS_RETURN_IF_ERROR(writer.WriteParentPages(reader.section_pid(), reader.parent_runs()));
        break;
      case SectionType::kPages:
        STASIS_RETURN_IF_ERROR(writer.BeginPages(reader.pages().owner, reader.pages().runs));
        if (!buffer && reader.page_data_remaining() > 0) buffer.reset(new char[kCopyChunk]);
        while (reader.page_data_remaining() > 0) {
          size_t n =
              static_cast<size_t>(std::min<uint64_t>(reader.page_data_remaining(), kCopyChunk));
          STASIS_RETURN_IF_ERROR(reader.ReadPageData(buffer.get(), n));
          STASIS_RETURN_IF_ERROR(writer.AppendPageData(buffer.get(), n));
        }
        STASIS_RETURN_IF_ERROR(writer.EndPages());
        break;
      case SectionType::kEnd:
        return writer.Finish();
    }
  }
}

bool HasContextMagic(std::string_view first_bytes) {
  return first_bytes.size() >= sizeof(kFileMagic) &&
         std::memcmp(first_bytes.data(), kFileMagic, sizeof(kFileMagic)) == 0;
}

}  // namespace stasis::format
