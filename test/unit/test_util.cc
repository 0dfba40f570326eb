// Sample contexts and byte surgery for the engine/format tests; see
// test_util.h.
#include "test/unit/test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "engine/format/crc32c.h"
#include "engine/format/field_codec.h"
#include "engine/format/format_constants.h"
#include "engine/format/tcp_state.h"

namespace stasis::format::testing {

using internal::LoadU16;
using internal::LoadU32;
using internal::LoadU64;
using internal::StoreU16;
using internal::StoreU32;
using internal::StoreU64;

std::string PseudoRandomBytes(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<char>(x >> 24);
  }
  return out;
}

namespace {

std::vector<uint8_t> Blob(size_t n, uint32_t seed) {
  std::string s = PseudoRandomBytes(n, seed);
  return std::vector<uint8_t>(s.begin(), s.end());
}

FileId MakeFileId(uint64_t seed) {
  FileId id;
  id.dev = 0x801 + seed;
  id.ino = 123456 + seed;
  id.size = 4096 * 3 + seed;
  id.mtime_ns = -1700000000123456789LL + static_cast<int64_t>(seed);
  id.mode = 0100755;
  return id;
}

ThreadInfo MakeThread(uint32_t tid) {
  ThreadInfo t;
  t.tid = tid;
  t.comm = "worker-" + std::to_string(tid);
  t.gpregs = Blob(216, tid);
  t.xsave = Blob(1088, tid + 1);
  t.sigmask = 0x0000000000010002ull;
  t.pending = Blob(2 * kSiginfoSize, tid + 2);
  t.altstack_sp = 0x7f00dead0000ull;
  t.altstack_size = 65536;
  t.altstack_flags = 2;  // SS_DISABLE
  t.clear_tid_address = 0x7f00beef09d0ull + tid;
  t.robust_list = 0x7f00beef09e0ull + tid;
  t.robust_list_len = 24;
  t.rseq_address = 0x7f00beef0fe0ull + tid;
  t.rseq_length = 32;
  t.rseq_signature = 0x53053053;
  t.timerslack_ns = 50001;
  t.state = 1;
  return t;
}

ProcessInfo MakeProcess(uint32_t pid) {
  ProcessInfo p;
  p.pid = pid;
  p.comm = "solver";
  p.exe_path = "/opt/app/bin/solver";
  p.exe_id = MakeFileId(pid);
  p.cwd = "/scratch/run42";
  p.root = "/chroot";
  p.umask = 077;
  p.personality = 0x0040000;  // ADDR_NO_RANDOMIZE
  for (uint64_t i = 0; i < 16; ++i) p.rlimits.push_back({i + 1, i + 1000});
  p.cmdline = std::string("solver\0--steps=10\0", 18);
  p.environ = std::string("HOME=/home/u\0PATH=/bin\0", 23);
  p.auxv = PseudoRandomBytes(368, pid);
  p.mm = {0x400000,       0x401000,       0x601000,       0x602000,       0x603000,      0x604000,
          0x7ffc00000000, 0x7ffc00001000, 0x7ffc00001100, 0x7ffc00001100, 0x7ffc00001200};
  p.creds.ruid = 1000;
  p.creds.euid = 1001;
  p.creds.suid = 1002;
  p.creds.fsuid = 1003;
  p.creds.rgid = 2000;
  p.creds.egid = 2001;
  p.creds.sgid = 2002;
  p.creds.fsgid = 2003;
  p.creds.groups = {10, 20, 4242};
  for (uint64_t sig = 1; sig <= 64; ++sig) {
    p.sigactions.push_back(
        {sig == 2 ? 1 : 0x401234 + sig, 0x04000000 | sig, 0x7f0000001000 + sig, 1ull << (sig - 1)});
  }
  p.pending_shared = Blob(kSiginfoSize, pid + 7);
  p.blocked_unused = 7;
  p.itimer_real = {1000, 2000};
  p.itimer_virtual = {3000, 4000};
  p.itimer_prof = {5000, 6000};
  p.pdeathsig = 9;
  p.dumpable = 2;
  p.timerslack_ns = 50001;
  p.no_new_privs = 1;
  p.exit_signal = 10;
  p.child_subreaper = 1;
  p.posix_timers = {{0, 1, 0, 35, 0xabc, 0, 300000000000ull, 200000000000ull},
                    {4, 0, 4 | 0, 32, 0x7f0000002000, pid + 1, 1, 30000000}};
  p.seccomp_filters = {
      {std::string("\x20\x00\x00\x00\x00\x00\x00\x00\x06\x00\x00\x00\x00\x00\xff\x7f", 16), 2}};
  p.ctty_pty = 4;
  p.tty_pgrp = pid;
  return p;
}

}  // namespace

Context MakeFullContext() {
  Context ctx;
  ImageInfo& img = ctx.image;
  img.stasis_version = "0.1.0-test";
  img.hostname = "n0042.cluster";
  img.kernel_release = "6.1.0-18-amd64";
  img.created_unix_ns = 1712345678901234567ull;
  img.checkpoint_uid = 1000;
  img.root_pid = 100;
  img.scope = kScopeSid;
  img.cpu_xfeatures = 0x2e7;
  img.argv = {"stasis", "checkpoint", "--pid", "100", ""};
  img.job = "4242";
  img.step = "0";
  img.epoch = 7;
  img.node_index = 3;
  img.token = 0x5eed5eed12345678ull;
  img.parent_token = 0x0123456789abcdefull;
  img.parent = "../6/node3.ctx";

  ProcessEntry root;
  root.pid = 100;
  root.ppid = 0;
  root.pgid = 100;
  root.sid = 99;
  root.flags = kProcIsRoot | kProcStopped | kProcTask;
  root.task = 5;
  root.exit_code = -3;
  root.tids = {100, 101};
  ProcessEntry child;
  child.pid = 102;
  child.ppid = 100;
  child.pgid = 100;
  child.sid = 99;
  child.flags = kProcZombie;
  child.exit_code = 256;
  child.tids = {102};
  ctx.tree.processes = {root, child};

  SharedMemory shm;
  shm.id = 7;
  shm.size = 3 * kPageSize + 100;
  shm.kind = 1;
  shm.name = "/memfd:ring (deleted)";
  shm.sysv_key = -5;
  shm.sysv_mode = 0600;
  ctx.shared.push_back(shm);
  ctx.shared_runs.push_back({{0, 1}, {2 * kPageSize, 2}});
  ctx.shared_page_data.push_back(PseudoRandomBytes(3 * kPageSize, 77));

  for (const ProcessEntry& e : ctx.tree.processes) {
    ProcessImage pi;
    pi.info = MakeProcess(e.pid);
    Mapping text;
    text.start = 0x400000;
    text.end = 0x402000;
    text.prot = 5;
    text.flags = kMapPrivate;
    text.kind = kMapFile;
    text.pgoff = 0x1000;
    text.path = "/opt/app/bin/solver";
    text.file_id = MakeFileId(e.pid + 1);
    text.shmem_id = 0;
    Mapping data;
    data.start = 0x402000;
    data.end = 0x404000;
    data.prot = 3;
    data.flags = kMapPrivate;
    data.kind = kMapFileByValue;
    data.pgoff = 0x2000;
    data.path = "/opt/app/lib/libdata.so (deleted)";
    data.file_id = MakeFileId(e.pid + 4);
    data.shmem_id = 7;  // the file's content is the SharedMemory of id 7
    Mapping heap;
    heap.start = 0x600000;
    heap.end = 0x610000;
    heap.prot = 3;
    heap.flags = kMapPrivate | kMapHeap;
    heap.kind = kMapAnon;
    heap.pgoff = 0x600000;
    Mapping ring;
    ring.start = 0x7f0000000000;
    ring.end = 0x7f0000004000;
    ring.prot = 3;
    ring.flags = kMapShared;
    ring.kind = kMapSharedAnon;
    ring.path = "/memfd:ring (deleted)";
    ring.shmem_id = 7;
    Mapping stack;
    stack.start = 0x7ffc00000000;
    stack.end = 0x7ffc00021000;
    stack.prot = 3;
    stack.flags = kMapPrivate | kMapGrowsDown | kMapStack | kMapLocked | kMapDontFork | kMapHugetlb;
    stack.kind = kMapAnon;
    Mapping vsyscall;
    vsyscall.start = 0xffffffffff600000ull;
    vsyscall.end = 0xffffffffff601000ull;
    vsyscall.prot = 4;
    vsyscall.kind = kMapVsyscall;
    pi.mappings = {text, data, heap, ring, stack, vsyscall};

    FileDesc tty;
    tty.fd = 0;
    tty.fd_flags = kFdOutside;
    tty.kind = kFileTty;
    tty.open_flags = 02;
    tty.pos = 17;
    tty.path = "/dev/pts/3";
    tty.file_id = MakeFileId(e.pid + 2);
    tty.object_id = 11;
    tty.peer_id = 12;
    tty.pipe_size = 0;
    FileDesc pipe;
    pipe.fd = 5;
    pipe.fd_flags = kFdCloexec;
    pipe.kind = kFilePipe;
    pipe.open_flags = 01;
    pipe.pos = 0;
    pipe.path = "pipe:[4242]";
    pipe.file_id = MakeFileId(e.pid + 3);
    pipe.object_id = 13;
    pipe.peer_id = 4242;
    pipe.pipe_size = 65536;
    pipe.data = "buffered bytes in the pipe";
    pipe.sock_type = 1;
    pipe.sock_state = 1;
    pipe.sock_inode = 4243;
    pi.files = {tty, pipe};
    // A TCP connection saved as closed (cr_checkpoint --close-sockets).
    FileDesc net;
    net.fd = 6;
    net.fd_flags = kFdOutside;
    net.kind = kFileUnixSocket;
    net.open_flags = 02;
    net.path = "TCP 10.0.0.1:40000 -> 10.0.0.2:1024";
    net.file_id = MakeFileId(e.pid + 4);
    net.object_id = 16;
    net.sock_type = 1;
    net.sock_state = 7;
    net.sock_inode = 4246;
    net.outside_state = kOutsideConnected;
    net.outside_peer = "10.0.0.2:1024";
    pi.files.push_back(net);
    {  // A TCP connection with both queues (issue 20).
      FileDesc tcp;
      tcp.fd = 7;
      tcp.kind = kFileTcpSocket;
      tcp.path = "TCP 127.0.0.1:40000 to 127.0.0.1:5000";
      tcp.object_id = 14;
      tcp.sock_type = 1;
      tcp.sock_state = 1;
      tcp.sock_inode = 4244;
      TcpState t;
      t.state = 1;
      t.peer_place = kTcpPeerHere;
      t.peer_inode = 4245;
      t.local = {2, std::string("\x7f\0\0\1", 4), 40000, 0};
      t.remote = {2, std::string("\x7f\0\0\1", 4), 5000, 0};
      t.send_queue = "unacked then unsent";
      t.unsent = 6;
      t.recv_queue = "received";
      tcp.tcp = EncodeTcpState(t).value();
      pi.files.push_back(tcp);
      // ... and its other end (each names the other).
      std::swap(t.local, t.remote);
      t.peer_inode = 4244;
      tcp.fd = 8;
      tcp.object_id = 15;
      tcp.sock_inode = 4245;
      tcp.tcp = EncodeTcpState(t).value();
      pi.files.push_back(tcp);
    }

    for (uint32_t tid : e.tids) pi.threads.push_back(MakeThread(tid));

    // Runs in the text mapping, across text and data (adjacent mappings),
    // touching each other, at the end of the heap and in the stack.
    pi.page_runs = {{0x400000, 1}, {0x401000, 2}, {0x600000, 1},
                    {0x602000, 3}, {0x60f000, 1}, {0x7ffc00020000, 1}};
    for (const PageRun& r : pi.page_runs) pi.page_bytes += r.npages * kPageSize;
    pi.page_data = PseudoRandomBytes(pi.page_bytes, e.pid);
    // Heap pages the parent context holds, between the heap's own runs.
    pi.parent_runs = {{0x601000, 1}, {0x605000, 4}};
    ctx.processes.push_back(std::move(pi));
  }
  return ctx;
}

Context MakeSmallContext() {
  Context ctx;
  ctx.image.stasis_version = "0.1.0";
  ctx.image.hostname = "n1";
  ctx.image.root_pid = 10;
  ProcessEntry e;
  e.pid = 10;
  e.tids = {10};
  ctx.tree.processes = {e};
  SharedMemory shm;
  shm.id = 1;
  shm.size = kPageSize;
  ctx.shared = {shm};
  ctx.shared_runs = {{{0, 1}}};
  ctx.shared_page_data = {PseudoRandomBytes(kPageSize, 1)};
  ProcessImage pi;
  pi.info.pid = 10;
  pi.info.comm = "a";
  Mapping m;
  m.start = 0x10000;
  m.end = 0x12000;
  m.prot = 3;
  pi.mappings = {m};
  FileDesc f;
  f.fd = 1;
  f.kind = kFileCharDevice;
  f.path = "/dev/null";
  pi.files = {f};
  ThreadInfo t;
  t.tid = 10;
  t.gpregs = Blob(216, 3);
  pi.threads = {t};
  pi.page_runs = {{0x11000, 1}};
  pi.page_bytes = kPageSize;
  pi.page_data = PseudoRandomBytes(kPageSize, 2);
  ctx.processes = {pi};
  return ctx;
}

Context MakeTinyContext() {
  Context ctx;
  ctx.image.stasis_version = "0.1.0";
  ProcessEntry e;
  e.pid = 1;
  e.tids = {1};
  ctx.tree.processes = {e};
  ProcessImage pi;
  pi.info.pid = 1;
  ThreadInfo t;
  t.tid = 1;
  pi.threads = {t};
  ctx.processes = {pi};
  return ctx;
}

namespace {

Status WritePages(ContextWriter* w, const PageOwner& owner, const std::vector<PageRun>& runs,
                  const std::string& data, size_t runs_per_section, size_t chunk) {
  size_t at = 0;
  for (size_t i = 0; i < runs.size(); i += runs_per_section) {
    std::vector<PageRun> part(runs.begin() + i,
                              runs.begin() + std::min(runs.size(), i + runs_per_section));
    uint64_t bytes = 0;
    for (const PageRun& r : part) bytes += r.npages * kPageSize;
    STASIS_RETURN_IF_ERROR(w->BeginPages(owner, part));
    for (uint64_t done = 0; done < bytes;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, bytes - done));
      STASIS_RETURN_IF_ERROR(w->AppendPageData(data.data() + at, n));
      at += n;
      done += n;
    }
    STASIS_RETURN_IF_ERROR(w->EndPages());
  }
  return Status::Ok();
}

}  // namespace

Status WriteContext(const Context& ctx, ByteSink* sink, size_t runs_per_section, size_t chunk,
                    PageCodec codec, int threads) {
  ContextWriter w(sink);
  w.SetCompression(codec, 0, threads);
  STASIS_RETURN_IF_ERROR(w.Begin(ctx.image));
  STASIS_RETURN_IF_ERROR(w.WriteTree(ctx.tree));
  for (size_t i = 0; i < ctx.shared.size(); ++i) {
    STASIS_RETURN_IF_ERROR(w.WriteSharedMemory(ctx.shared[i]));
    if (!ctx.shared_runs[i].empty()) {
      STASIS_RETURN_IF_ERROR(WritePages(&w, {PageOwner::kSharedMemory, ctx.shared[i].id},
                                        ctx.shared_runs[i], ctx.shared_page_data[i],
                                        runs_per_section, chunk));
    }
  }
  for (const ProcessImage& p : ctx.processes) {
    uint32_t pid = p.info.pid;
    STASIS_RETURN_IF_ERROR(w.WriteProcess(p.info));
    STASIS_RETURN_IF_ERROR(w.WriteMappings(pid, p.mappings));
    STASIS_RETURN_IF_ERROR(w.WriteFiles(pid, p.files));
    for (const ThreadInfo& t : p.threads) STASIS_RETURN_IF_ERROR(w.WriteThread(pid, t));
    if (!p.parent_runs.empty()) STASIS_RETURN_IF_ERROR(w.WriteParentPages(pid, p.parent_runs));
    if (!p.page_runs.empty()) {
      STASIS_RETURN_IF_ERROR(WritePages(&w, {PageOwner::kProcess, pid}, p.page_runs, p.page_data,
                                        runs_per_section, chunk));
    }
  }
  return w.Finish();
}

std::string Encode(const Context& ctx, size_t runs_per_section) {
  StringSink sink;
  Status s = WriteContext(ctx, &sink, runs_per_section);
  if (!s.ok()) {
    std::cerr << "Encode: " << s.ToString() << "\n";
    std::abort();
  }
  return sink.bytes();
}

std::vector<RawSection> SplitSections(const std::string& file) {
  std::vector<RawSection> out;
  uint64_t at = kFileHeaderSize;
  while (at + kSectionHeaderSize <= file.size()) {
    const char* h = file.data() + at;
    RawSection s;
    s.offset = at;
    s.type = static_cast<SectionType>(LoadU16(h + section_header::kType));
    s.meta_length = LoadU32(h + section_header::kMetaLength);
    s.size = kSectionHeaderSize + LoadU64(h + section_header::kPayloadLength);
    out.push_back(s);
    at += s.size;
  }
  return out;
}

std::string MetaOf(const std::string& file, const RawSection& section) {
  return file.substr(section.offset + kSectionHeaderSize, section.meta_length);
}

std::string BuildSection(SectionType type, const std::string& meta) {
  char h[kSectionHeaderSize];
  StoreU32(h + section_header::kMagic, kSectionMagic);
  StoreU16(h + section_header::kType, static_cast<uint16_t>(type));
  StoreU16(h + section_header::kVersion, kSectionVersion);
  StoreU32(h + section_header::kFlags, 0);
  StoreU32(h + section_header::kMetaLength, static_cast<uint32_t>(meta.size()));
  StoreU64(h + section_header::kPayloadLength, meta.size());
  StoreU32(h + section_header::kMetaCrc, Crc32c(0, meta.data(), meta.size()));
  StoreU32(h + section_header::kHeaderCrc, Crc32c(0, h, section_header::kHeaderCrc));
  return std::string(h, sizeof(h)) + meta;
}

void FixFileHeaderCrc(std::string* file) {
  StoreU32(file->data() + file_header::kHeaderCrc,
           Crc32c(0, file->data(), file_header::kHeaderCrc));
}

void Reseal(std::string* file, const RawSection& section) {
  char* h = file->data() + section.offset;
  const char* meta = h + kSectionHeaderSize;
  uint32_t meta_crc = Crc32c(0, meta, section.meta_length);
  StoreU32(h + section_header::kMetaCrc, meta_crc);
  StoreU32(h + section_header::kHeaderCrc, Crc32c(0, h, section_header::kHeaderCrc));
  if (section.type == SectionType::kPages) {
    uint64_t payload = section.size - kSectionHeaderSize - kPagesTrailerSize;
    StoreU32(h + kSectionHeaderSize + payload, Crc32c(0, meta, payload));
  }
}

RawSection FindSection(const std::string& file, SectionType type, int nth) {
  for (const RawSection& s : SplitSections(file)) {
    if (s.type == type && nth-- == 0) return s;
  }
  ADD_FAILURE() << "no " << SectionName(type) << " section";
  return RawSection{};
}

std::string Replace(const std::string& file, const RawSection& section,
                    const std::string& replacement) {
  return file.substr(0, section.offset) + replacement + file.substr(section.offset + section.size);
}

Result<size_t> FailingSource::Read(void* data, size_t n) {
  if (pos_ >= ok_bytes_) return Status::Error(EIO, "read test source: Input/output error");
  size_t take = std::min({n, ok_bytes_ - pos_, data_.size() - pos_});
  std::memcpy(data, data_.data() + pos_, take);
  pos_ += take;
  return take;
}

Result<size_t> TricklingSource::Read(void* data, size_t n) {
  size_t take = std::min({n, max_read_, data_.size() - pos_});
  std::memcpy(data, data_.data() + pos_, take);
  pos_ += take;
  return take;
}

Status FailingSink::Write(const void* data, size_t n) {
  if (writes_++ == fail_at_)
    return Status::Error(ENOSPC, "write test sink: No space left on device");
  bytes_.append(static_cast<const char*>(data), n);
  return Status::Ok();
}

void ExpectGoldenFile(const std::string& path, const std::string& bytes, const std::string& what) {
  if (std::getenv("STASIS_UPDATE_FUZZ_CORPUS") != nullptr) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << "write " << path;
    return;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in.good()) << path << " is missing; regenerate with STASIS_UPDATE_FUZZ_CORPUS=1";
  std::stringstream content;
  content << in.rdbuf();
  EXPECT_TRUE(content.str() == bytes)
      << path << " differs from what " << what << " writes now: the v1 bytes changed. If that "
      << "is intended, update the docs and regenerate with STASIS_UPDATE_FUZZ_CORPUS=1";
}

}  // namespace stasis::format::testing
