// storage_write: how fast the checkpoint store writes one node's context
// file with each write strategy, against the raw disk in the same run, and
// what each leaves behind in the page cache. The store's default strategy
// (store::WriteOptions) should be chosen from these figures.
//
// Each configuration (buffered, streaming and direct at the default chunk,
// then the default strategy at 1, 8 and 32 MiB chunks) writes SIZE bytes of
// random (incompressible) data the way a checkpoint does: EpochWriter::Begin,
// CreateNodeFile, NodeFileSink::Write in 1 MiB pieces and Finish (which
// fsyncs), in a fresh job folder under FOLDER that is removed afterwards.
// The raw disk is `dd if=/dev/zero bs=1M conv=fsync` of the same size into
// the same folder. Before each run, SIZE goes through the page cache into a
// file removed unsynced, so that every run finds warm memory (see
// WarmPageCache), and one untimed store write precedes the first round.
// Everything runs ROUNDS times, interleaved, and the table
// gives the medians: seconds, MB/s (10^6 bytes), the ratio to dd's time
// (lower is better; 1.0 = the disk's raw bandwidth), how much of the file
// is still in the page cache afterwards (mincore), and the peak of Dirty in
// /proc/meminfo while writing (system-wide, sampled every 20 ms). Streaming and direct
// exist so that a checkpoint does not fill the node's page cache with dirty
// pages that stall the application later.
//
//   storage_write [SIZE] [FOLDER] [ROUNDS]     (defaults: 1G /tmp 3)
//
// SIZE takes K, M, G suffixes (powers of 1024) and must be whole MiB.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/store/store.h"

extern char** environ;

namespace {

using stasis::Result;
using stasis::Status;
using stasis::UniqueFd;
namespace store = stasis::store;

constexpr uint64_t kMiB = 1u << 20;
constexpr size_t kPiece = 1u << 20;         // bytes per NodeFileSink::Write
constexpr size_t kRandomBytes = 64u << 20;  // the reused random data
constexpr auto kSampleEvery = std::chrono::milliseconds(20);

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const char* StrategyName(store::WriteStrategy s) {
  switch (s) {
    case store::WriteStrategy::kBuffered:
      return "buffered";
    case store::WriteStrategy::kStreaming:
      return "streaming";
    case store::WriteStrategy::kDirect:
      return "direct";
  }
  return "?";
}

// "1G", "64M", "512K" or bytes; 0 when malformed.
uint64_t ParseSize(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno || end == s.c_str()) return 0;
  std::string suffix(end);
  int shift = -1;
  if (suffix.empty())
    shift = 0;
  else if (suffix == "K" || suffix == "k")
    shift = 10;
  else if (suffix == "M" || suffix == "m")
    shift = 20;
  else if (suffix == "G" || suffix == "g")
    shift = 30;
  if (shift < 0 || v > (UINT64_MAX >> shift)) return 0;
  return static_cast<uint64_t>(v) << shift;
}

// Dirty bytes in /proc/meminfo.
uint64_t DirtyBytes() {
  UniqueFd fd(::open("/proc/meminfo", O_RDONLY | O_CLOEXEC));
  if (!fd) return 0;
  char buf[8192];
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = std::strstr(buf, "\nDirty:");
  return p ? std::strtoull(p + 7, nullptr, 10) * 1024 : 0;
}

// Samples Dirty from a thread every 20 ms until Stop(); keeps the peak.
class DirtySampler {
 public:
  DirtySampler()
      : thread_([this](std::stop_token stop) {
          while (!stop.stop_requested()) {
            Sample();
            std::this_thread::sleep_for(kSampleEvery);
          }
        }) {}
  uint64_t Stop() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
    Sample();
    return peak_;
  }

 private:
  void Sample() {
    uint64_t d = DirtyBytes();
    uint64_t p = peak_.load();
    while (d > p && !peak_.compare_exchange_weak(p, d)) {
    }
  }
  std::atomic<uint64_t> peak_{0};
  std::jthread thread_;  // last: starts once peak_ exists
};

// Bytes of `path` in the page cache (mincore over a mapping that is never
// touched, so measuring brings nothing in).
Result<uint64_t> CachedBytes(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return Status::FromErrno(errno, "open " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (st.st_size == 0) return uint64_t{0};
  size_t size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return Status::FromErrno(errno, "mmap " + path);
  size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  int rc = ::mincore(map, size, resident.data());
  int err = errno;
  ::munmap(map, size);
  if (rc != 0) return Status::FromErrno(err, "mincore " + path);
  uint64_t pages = static_cast<uint64_t>(
      std::count_if(resident.begin(), resident.end(), [](unsigned char c) { return c & 1; }));
  return std::min<uint64_t>(pages * page, size);
}

// A folder of our own under FOLDER for one run, removed afterwards.
class RunFolder {
 public:
  static Result<RunFolder> Create(const std::string& parent) {
    std::string tmpl = parent + "/stasis-storage-write.XXXXXX";
    if (!::mkdtemp(tmpl.data())) return Status::FromErrno(errno, "create a folder in " + parent);
    RunFolder f;
    f.path_ = tmpl;
    return f;
  }
  RunFolder(RunFolder&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  RunFolder& operator=(RunFolder&&) = delete;
  ~RunFolder() {
    if (path_.empty()) return;
    ::unlink((path_ + "/ddtest").c_str());
    ::unlink((path_ + "/warmup").c_str());
    if (::rmdir(path_.c_str()) != 0)
      std::fprintf(stderr, "storage_write: could not remove %s: %s\n", path_.c_str(),
                   std::strerror(errno));
  }
  const std::string& path() const { return path_; }

 private:
  RunFolder() = default;
  std::string path_;
};

// This VM hands memory that was freed a while ago back to its host (free
// page reporting), and touching it again is slower than the disk
// (PLATFORM.md): the first write through the page cache after a pause
// measured 2-5 s for 1 GiB where dd takes 0.6 s. So before every run
// `bytes` go through the page cache into a file that is removed unsynced
// (no disk I/O): the run then finds just-freed memory, as on a real node.
// (Touching and freeing anonymous memory instead did not help.)
Status WarmPageCache(const std::string& folder, uint64_t bytes, const std::vector<char>& data) {
  std::string path = folder + "/warmup";
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno(errno, "create " + path);
  Status status;
  for (uint64_t off = 0; off < bytes && status.ok(); off += kPiece) {
    ssize_t w = ::write(fd.get(), data.data() + off % data.size(), kPiece);
    if (w < 0)
      status = Status::FromErrno(errno, "write " + path);
    else if (static_cast<size_t>(w) != kPiece)
      status = Status::Error(EIO, "short write to " + path);
  }
  ::unlink(path.c_str());
  return status;
}

struct Sample {
  double seconds = 0;
  uint64_t cached = 0;  // bytes of the file in the page cache afterwards
  uint64_t dirty = 0;   // peak Dirty while writing
};

// dd if=/dev/zero of=<folder>/ddtest bs=1M count=<MiB> conv=fsync, timed.
Result<Sample> RunDd(const RunFolder& dir, uint64_t bytes) {
  std::string of = "of=" + dir.path() + "/ddtest";
  std::string count = "count=" + std::to_string(bytes / kMiB);
  std::vector<std::string> args = {"dd",  "if=/dev/zero", of,           "bs=1M",
                                   count, "conv=fsync",   "status=none"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  Sample s;
  DirtySampler dirty;
  double t0 = Now();
  pid_t pid;
  if (int e = ::posix_spawnp(&pid, "dd", nullptr, nullptr, argv.data(), environ); e != 0)
    return Status::FromErrno(e, "run dd");
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Status::FromErrno(errno, "wait for dd");
  }
  s.seconds = Now() - t0;
  s.dirty = dirty.Stop();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return Status::Error(EIO, "dd failed");
  auto cached = CachedBytes(dir.path() + "/ddtest");
  if (!cached) return cached.error();
  s.cached = *cached;
  return s;
}

struct Config {
  store::WriteStrategy strategy;
  size_t chunk;
};

// One node file of `bytes` through the store, timed from Begin to Finish.
// The run folder is the job folder.
Result<Sample> RunStore(const RunFolder& dir, const Config& config, uint64_t bytes,
                        const std::vector<char>& data) {
  auto job =
      store::JobFolder::Open(store::DefaultEnv(), dir.path(), false, store::Access::Caller());
  if (!job) return job.error();
  store::WriteOptions options;
  options.strategy = config.strategy;
  options.chunk = config.chunk;

  Sample s;
  DirtySampler dirty;
  double t0 = Now();
  auto writer = store::EpochWriter::Begin(&*job, options);
  if (!writer) return writer.error();
  auto sink = (*writer)->CreateNodeFile(0);
  if (!sink) return sink.error();
  for (uint64_t off = 0; off < bytes; off += kPiece) {
    STASIS_RETURN_IF_ERROR((*sink)->Write(data.data() + off % data.size(), kPiece));
  }
  auto file = (*sink)->Finish();
  if (!file) return file.error();
  s.seconds = Now() - t0;
  s.dirty = dirty.Stop();
  if (file->size != bytes)
    return Status::Error(EIO, "the store wrote " + std::to_string(file->size) + " bytes");
  auto cached = CachedBytes((*writer)->path() + "/" + store::EpochWriter::NodeFileName(0));
  if (!cached) return cached.error();
  s.cached = *cached;
  return s;  // the writer, not committed, removes its file and epoch folder
}

template <typename T>
T Median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Row {
  std::string name, chunk;
  std::vector<Sample> samples;
  template <typename T>
  T MedianOf(T Sample::*field) const {
    std::vector<T> v;
    for (const auto& s : samples) v.push_back(s.*field);
    return Median(v);
  }
};

// One run of row `i` (0 = dd, else configs[i - 1]) in a fresh folder. It
// starts from the same state every time: nothing of the previous run dirty
// (or being discarded), warm memory for the page cache.
Result<Sample> RunOne(const std::string& folder, size_t i, const std::vector<Config>& configs,
                      uint64_t bytes, const std::vector<char>& data) {
  auto dir = RunFolder::Create(folder);
  if (!dir) return dir.error();
  ::sync();
  STASIS_RETURN_IF_ERROR(WarmPageCache(dir->path(), bytes, data));
  return i == 0 ? RunDd(*dir, bytes) : RunStore(*dir, configs[i - 1], bytes, data);
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "storage_write: %s\n", message.c_str());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 4 ||
      (argc > 1 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0))) {
    std::fprintf(stderr, "usage: storage_write [SIZE] [FOLDER] [ROUNDS]   (defaults: 1G /tmp 3)\n");
    return 2;
  }
  uint64_t bytes = ParseSize(argc > 1 ? argv[1] : "1G");
  std::string folder = argc > 2 ? argv[2] : "/tmp";
  int rounds = argc > 3 ? std::atoi(argv[3]) : 3;
  if (bytes == 0 || bytes % kMiB) Die("SIZE must be a whole number of MiB, e.g. 1G or 64M");
  if (rounds < 1) Die("ROUNDS must be at least 1");

  // The configurations: every strategy at the default chunk, then the
  // default strategy at the other chunks. '*' marks the store's default.
  const store::WriteOptions defaults;
  std::vector<Config> configs;
  for (auto s : {store::WriteStrategy::kBuffered, store::WriteStrategy::kStreaming,
                 store::WriteStrategy::kDirect})
    configs.push_back({s, defaults.chunk});
  for (size_t chunk : {size_t{1} << 20, size_t{8} << 20, size_t{32} << 20})
    if (chunk != defaults.chunk) configs.push_back({defaults.strategy, chunk});

  std::vector<Row> rows;
  rows.push_back({"dd conv=fsync", "1 MiB", {}});
  for (const auto& c : configs) {
    bool is_default = c.strategy == defaults.strategy && c.chunk == defaults.chunk;
    rows.push_back({std::string(StrategyName(c.strategy)) + (is_default ? " *" : ""),
                    std::to_string(c.chunk / kMiB) + " MiB",
                    {}});
  }

  std::vector<char> data(kRandomBytes);
  std::mt19937_64 rng(std::random_device{}());
  for (size_t i = 0; i + 8 <= data.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(data.data() + i, &v, 8);
  }

  std::fprintf(stderr, "storage_write: %llu MiB to %s, %d rounds\n",
               static_cast<unsigned long long>(bytes / kMiB), folder.c_str(), rounds);
  // The first write through the store in this process was always slower
  // (0.2 s for 64 MiB where the later ones took 0.05 s): one untimed first.
  if (auto s = RunOne(folder, 1, configs, bytes, data); !s) Die("warm-up: " + s.error().message());
  for (int round = 1; round <= rounds; ++round) {
    for (size_t i = 0; i < rows.size(); ++i) {
      auto s = RunOne(folder, i, configs, bytes, data);
      if (!s) Die(rows[i].name + " " + rows[i].chunk + ": " + s.error().message());
      rows[i].samples.push_back(*s);
      std::fprintf(
          stderr,
          "  round %d  %-14s %-7s %7.3f s  %7.1f MB/s  cached %6.1f MiB  dirty peak %6.1f MiB\n",
          round, rows[i].name.c_str(), rows[i].chunk.c_str(), s->seconds,
          static_cast<double>(bytes) / 1e6 / s->seconds, static_cast<double>(s->cached) / kMiB,
          static_cast<double>(s->dirty) / kMiB);
    }
  }

  double dd = rows[0].MedianOf(&Sample::seconds);
  std::printf(
      "%llu MiB written to %s, medians of %d rounds; ratio = time / dd's time (lower is better)\n",
      static_cast<unsigned long long>(bytes / kMiB), folder.c_str(), rounds);
  std::printf("%-14s %-7s %8s %8s %6s %11s %15s\n", "write", "chunk", "seconds", "MB/s", "ratio",
              "cached MiB", "dirty peak MiB");
  for (const auto& r : rows) {
    double t = r.MedianOf(&Sample::seconds);
    std::printf("%-14s %-7s %8.3f %8.1f %6.2f %11.1f %15.1f\n", r.name.c_str(), r.chunk.c_str(), t,
                static_cast<double>(bytes) / 1e6 / t, t / dd,
                static_cast<double>(r.MedianOf(&Sample::cached)) / kMiB,
                static_cast<double>(r.MedianOf(&Sample::dirty)) / kMiB);
  }
  std::printf(
      "* = the store's default (store::WriteOptions); MB = 10^6 bytes; cached = the file's bytes\n"
      "in the page cache after the write; dirty peak = highest Dirty in /proc/meminfo during it\n"
      "(system-wide: other writers on the machine show up in it)\n");
  return 0;
}
