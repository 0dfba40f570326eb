// The progress line of cr_checkpoint and cr_restart; see progress.h.
#include "engine/cli/progress.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>

#include "engine/cli/cli_common.h"

namespace stasis::cli {

std::string SizeText(uint64_t bytes) {
  char buf[32];
  if (bytes >= (1ull << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / 1073741824.0);
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  return buf;
}

namespace {

std::string Duration(double s) {
  char buf[32];
  long t = static_cast<long>(s + 0.5);
  if (t < 1) t = 1;
  if (t < 100)
    std::snprintf(buf, sizeof buf, "%ld s", t);
  else if (t < 6000)
    std::snprintf(buf, sizeof buf, "%ld min", (t + 30) / 60);
  else
    std::snprintf(buf, sizeof buf, "%ld h %ld min", (t + 30) / 3600, (t + 30) / 60 % 60);
  return buf;
}

// The one Progress drawing now (g_end_progress ends it).
std::mutex g_current_mu;
Progress* g_current = nullptr;

void EndCurrent() {
  std::lock_guard<std::mutex> lock(g_current_mu);
  if (g_current) g_current->Stop();
}

}  // namespace

std::string ProgressLine(const char* tool, uint64_t done, uint64_t total, bool approx,
                         double rate) {
  std::string line = std::string(tool) + ": " + SizeText(done);
  const bool with_total = total > 0 && done <= total;
  if (with_total) line += std::string(" of ") + (approx ? "~" : "") + SizeText(total);
  if (rate > 0) {
    char buf[32];
    const double mib = rate / 1048576.0;
    std::snprintf(buf, sizeof buf, mib < 10 ? ", %.1f MiB/s" : ", %.0f MiB/s", mib);
    line += buf;
    if (with_total && done < total) line += ", ~" + Duration((total - done) / rate) + " left";
  }
  return line;
}

void RateMeter::Add(double t, uint64_t done) {
  samples_.emplace_back(t, done);
  // Keep one sample at or before the window's start.
  while (samples_.size() > 2 && samples_[1].first <= t - window_) samples_.pop_front();
}

double RateMeter::Rate() const {
  if (samples_.size() < 2) return 0;
  const auto& [t0, d0] = samples_.front();
  const auto& [t1, d1] = samples_.back();
  if (t1 - t0 < 0.1 || d1 < d0) return 0;
  return (d1 - d0) / (t1 - t0);
}

Progress::Progress(const char* tool, Probe done, bool enabled)
    : tool_(tool), done_(std::move(done)) {
  if (!enabled || !::isatty(STDERR_FILENO)) return;
  if (const char* d = std::getenv("STASIS_PROGRESS_DELAY")) {
    char* end = nullptr;
    double v = std::strtod(d, &end);
    if (end != d && v >= 0) delay_ = v;
  }
  {
    std::lock_guard<std::mutex> lock(g_current_mu);
    g_current = this;
  }
  g_end_progress = EndCurrent;
  thread_ = std::thread([this] { Loop(); });
}

Progress::~Progress() {
  Stop();
  std::lock_guard<std::mutex> lock(g_current_mu);
  if (g_current == this) {
    g_current = nullptr;
    g_end_progress = nullptr;
  }
}

void Progress::SetTotal(uint64_t total, bool approx) {
  approx_ = approx;
  total_ = total;
}

void Progress::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    EraseLocked();
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Progress::Note(const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  EraseLocked();
  std::fprintf(stderr, "%s: %s\n", tool_, message.c_str());
  std::fflush(stderr);
}

void Progress::DrawLocked(const std::string& line) {
  std::string out = "\r" + line + "\033[K";
  (void)!::write(STDERR_FILENO, out.data(), out.size());
  drawn_ = true;
}

void Progress::EraseLocked() {
  if (!drawn_) return;
  static const char kErase[] = "\r\033[K";
  (void)!::write(STDERR_FILENO, kErase, sizeof kErase - 1);
  drawn_ = false;
}

void Progress::Loop() {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  RateMeter meter;
  auto last_draw = start - std::chrono::seconds(1);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    // Sampled often until the first line, then four lines a second.
    cv_.wait_for(lock, std::chrono::milliseconds(drawn_ ? 250 : 50));
    if (stop_) break;
    lock.unlock();
    std::optional<uint64_t> done = done_();
    const auto now = Clock::now();
    const double t = std::chrono::duration<double>(now - start).count();
    lock.lock();
    if (stop_) break;
    if (!done) continue;
    meter.Add(t, *done);
    if (t < delay_ || *done == 0) continue;
    if (drawn_ && now - last_draw < std::chrono::milliseconds(240)) continue;
    DrawLocked(ProgressLine(tool_, *done, total_, approx_, meter.Rate()));
    last_draw = now;
  }
}

Result<size_t> CountingSource::Read(void* data, size_t n) {
  auto r = inner_->Read(data, n);
  if (r) count_->fetch_add(*r, std::memory_order_relaxed);
  return r;
}

Result<size_t> CountingSource::ReadInPlace(const char** data, size_t n) {
  auto r = inner_->ReadInPlace(data, n);
  if (r) count_->fetch_add(*r, std::memory_order_relaxed);
  return r;
}

Result<uint64_t> CountingSource::Skip(uint64_t n) {
  auto r = inner_->Skip(n);
  if (r) count_->fetch_add(*r, std::memory_order_relaxed);
  return r;
}

uint64_t LargestRecentFile(const std::vector<std::string>& paths, const timespec& since) {
  uint64_t best = 0;
  for (const std::string& p : paths) {
    struct stat st;
    if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (st.st_mtim.tv_sec < since.tv_sec ||
        (st.st_mtim.tv_sec == since.tv_sec && st.st_mtim.tv_nsec < since.tv_nsec))
      continue;
    if (static_cast<uint64_t>(st.st_size) > best) best = static_cast<uint64_t>(st.st_size);
  }
  return best;
}

std::vector<std::string> ContextFileCandidates(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::vector<std::string> out = {path};
  const std::string prefix = "." + base + ".tmp.";
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name.compare(0, prefix.size(), prefix) == 0) out.push_back(dir + "/" + name);
    }
    ::closedir(d);
  }
  return out;
}

std::vector<std::string> EpochNodeCandidates(const std::string& jobdir,
                                             const std::string& node_file) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(jobdir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      out.push_back(jobdir + "/" + name + "/" + node_file);
    }
    ::closedir(d);
  }
  return out;
}

uint64_t TreeResidentBytes(pid_t pid) {
  uint64_t total = 0;
  std::set<pid_t> seen;
  std::vector<pid_t> todo = {pid};
  while (!todo.empty() && seen.size() < 100000) {
    pid_t p = todo.back();
    todo.pop_back();
    if (!seen.insert(p).second) continue;
    const std::string proc = "/proc/" + std::to_string(p);
    std::ifstream status(proc + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.compare(0, 6, "VmRSS:") == 0) {
        total += std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
        break;
      }
    }
    if (DIR* d = ::opendir((proc + "/task").c_str())) {
      while (struct dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream children(proc + "/task/" + e->d_name + "/children");
        for (long c; children >> c;) todo.push_back(static_cast<pid_t>(c));
      }
      ::closedir(d);
    }
  }
  return total;
}

}  // namespace stasis::cli
