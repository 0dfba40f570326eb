// Helpers shared by the engine/format unit tests: sample contexts with every
// field set, a writer for a whole Context, byte-level surgery on context
// files (splitting into sections, rebuilding a section with valid
// checksums), and byte sources/sinks that fail on demand.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/io.h"
#include "engine/base/status.h"
#include "engine/format/context_io.h"

namespace stasis::format::testing {

// A context where every field of every struct is set to a non-default
// value: two processes (three threads), one shared memory segment with
// pages, file/anonymous/shared/vsyscall mappings, pipes and a tty. Page data
// is loaded (as ReadContext(..., true) returns it); file_bytes is 0.
Context MakeFullContext();

// One process with one thread, one mapping and one page, one shared memory
// segment with one page: a file of a few pages, for exhaustive corruption.
Context MakeSmallContext();

// One process, one thread, no mappings, no pages: under 1 KiB.
Context MakeTinyContext();

// Writes `ctx` with ContextWriter: each process's runs split into Pages
// sections of at most `runs_per_section` runs, page data appended in
// `chunk`-byte pieces.
// With a codec, page data is compressed (ContextWriter::SetCompression, on
// `threads` threads).
Status WriteContext(const Context& ctx, ByteSink* sink, size_t runs_per_section = 1000,
                    size_t chunk = 1000, PageCodec codec = kCodecNone, int threads = 1);

// WriteContext into a string; aborts the test binary on error.
std::string Encode(const Context& ctx, size_t runs_per_section = 1000);

// Deterministic pseudo-random bytes.
std::string PseudoRandomBytes(size_t n, uint32_t seed);

// --- byte surgery ------------------------------------------------------------

struct RawSection {
  uint64_t offset = 0;  // of the section header
  uint64_t size = 0;    // header + payload
  SectionType type = SectionType::kEnd;
  uint32_t meta_length = 0;
};

// Splits a well-formed file into its sections (trusts the file).
std::vector<RawSection> SplitSections(const std::string& file);

// The metadata bytes of a section.
std::string MetaOf(const std::string& file, const RawSection& section);

// A metadata section (not Pages) with correct lengths and checksums.
std::string BuildSection(SectionType type, const std::string& meta);

// Recomputes the file header checksum after editing the header.
void FixFileHeaderCrc(std::string* file);

// Recomputes every checksum of a section (metadata, header, and for Pages
// the trailer) after its bytes were edited in place.
void Reseal(std::string* file, const RawSection& section);

// The first section of `type` (fails the test if there is none).
RawSection FindSection(const std::string& file, SectionType type, int nth = 0);

// Replaces bytes [section.offset, +size) with `replacement`.
std::string Replace(const std::string& file, const RawSection& section,
                    const std::string& replacement);

// --- failing streams -----------------------------------------------------------

// A source that returns an I/O error after `ok_bytes` bytes.
class FailingSource : public ByteSource {
 public:
  FailingSource(const std::string& data, size_t ok_bytes) : data_(data), ok_bytes_(ok_bytes) {}
  Result<size_t> Read(void* data, size_t n) override;
  uint64_t Offset() const override { return pos_; }

 private:
  const std::string& data_;
  size_t ok_bytes_;
  size_t pos_ = 0;
};

// A source that hands out at most `max_read` bytes per Read (short reads).
class TricklingSource : public ByteSource {
 public:
  TricklingSource(const std::string& data, size_t max_read) : data_(data), max_read_(max_read) {}
  Result<size_t> Read(void* data, size_t n) override;
  uint64_t Offset() const override { return pos_; }

 private:
  const std::string& data_;
  size_t max_read_;
  size_t pos_ = 0;
};

// A sink whose `fail_at`-th Write (0-based) fails with ENOSPC.
class FailingSink : public ByteSink {
 public:
  explicit FailingSink(int fail_at) : fail_at_(fail_at) {}
  Status Write(const void* data, size_t n) override;
  Status Sync() override { return Status::Ok(); }
  uint64_t Offset() const override { return bytes_.size(); }
  int writes() const { return writes_; }

 private:
  int fail_at_;
  int writes_ = 0;
  std::string bytes_;
};

// Golden files (the fuzz seed corpora): with STASIS_UPDATE_FUZZ_CORPUS set
// in the environment, writes `bytes` to `path`; otherwise a test failure
// unless `path` holds exactly `bytes`. `what` names the writer in messages.
void ExpectGoldenFile(const std::string& path, const std::string& bytes, const std::string& what);

}  // namespace stasis::format::testing
