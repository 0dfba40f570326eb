// The lazy restart page server; see lazy_pages.h.
#include "engine/core/lazy_pages.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "engine/base/io.h"
#include "engine/core/restore_internal.h"
#include "engine/format/crc32c.h"

namespace stasis::core {

namespace {

constexpr uint64_t kPage = 4096;
constexpr size_t kFaultChunk = 16 * kPage;  // read around a fault
constexpr size_t kStreamChunk = 4u << 20;   // background reads

struct Section {
  pid_t pid;
  std::vector<format::PageRun> runs;
  uint64_t data_offset, trailer_offset;
  uint32_t crc_seed;
};

struct Remap {
  uint64_t from, to, len;
};

// One address space: its userfaultfd and how its memory moved since it was
// restored (all bookkeeping in the addresses of the checkpoint).
struct Space {
  pid_t pid = 0;  // whose sections it serves (a forked child serves its parent's)
  UniqueFd uffd;
  std::vector<Remap> remaps;
  std::map<uint64_t, uint64_t> removed;  // [start, end), checkpoint addresses
  bool gone = false;

  uint64_t ToOriginal(uint64_t a) const {
    for (auto it = remaps.rbegin(); it != remaps.rend(); ++it)
      if (a >= it->to && a < it->to + it->len) a = it->from + (a - it->to);
    return a;
  }
  uint64_t ToCurrent(uint64_t a) const {
    for (const Remap& r : remaps)
      if (a >= r.from && a < r.from + r.len) a = r.to + (a - r.from);
    return a;
  }
  bool Removed(uint64_t a, uint64_t n) const {
    auto it = removed.upper_bound(a);
    if (it != removed.begin()) {
      auto prev = std::prev(it);
      if (prev->second > a) return true;
    }
    return it != removed.end() && it->first < a + n;
  }
  void Remove(uint64_t cur_start, uint64_t cur_end) {
    if (remaps.empty()) {
      removed[cur_start] = std::max(removed[cur_start], cur_end);
      return;
    }
    for (uint64_t a = cur_start; a < cur_end; a += kPage) {
      uint64_t o = ToOriginal(a);
      removed[o] = std::max(removed[o], o + kPage);
    }
  }
};

}  // namespace

struct LazyPages::Impl {
  UniqueFd file;
  std::string name;
  std::vector<Section> sections;
  // Per pid: pieces sorted by address, for faults.
  std::map<pid_t, std::vector<Piece>> pieces;
  std::vector<std::unique_ptr<Space>> spaces;
  UniqueFd wake;  // eventfd: streaming may start, or stop
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  bool stream = false, stop = false, finished = false;
  std::vector<pid_t> tree;
  Status error;
  std::function<void(const Status&)> on_done;
  std::atomic<uint64_t> faults{0}, streamed{0};
  std::vector<char> buf;

  Status ReadAt(uint64_t offset, void* buf, size_t n) const;
  Status Copy(Space* s, uint64_t dst, const char* src, uint64_t len, bool* exists);
  void Wake(Space* s, uint64_t addr, uint64_t len) {
    struct uffdio_range r = {addr, len};
    (void)::ioctl(s->uffd.get(), UFFDIO_WAKE, &r);
  }
  Status ServeFault(Space* s, uint64_t addr);
  // Copy that waits out EAGAIN by reading the events that cause it.
  Status CopyRetrying(Space* s, uint64_t dst, const char* src, uint64_t len, bool* exists) {
    for (;;) {
      Status st = Copy(s, dst, src, len, exists);
      if (st.code() != EAGAIN) return st;
      STASIS_RETURN_IF_ERROR(EventsOnly(s));
    }
  }
  // Reads the waiting messages of `s`: events are applied, faults kept in
  // `deferred` for later (serving them here could recurse).
  Status EventsOnly(Space* s);
  Status Apply(Space* s, const struct uffd_msg& m);
  std::deque<std::pair<Space*, uint64_t>> deferred;
  Status Drain(Space* s);
  Status PollOnce(int timeout_ms);
  Status Stream();
  void Run();
  void Fail(Status s) {
    std::lock_guard<std::mutex> lock(mu);
    if (error.ok()) error = std::move(s);
  }
};

LazyPages::LazyPages(UniqueFd file, std::string name) : impl_(std::make_unique<Impl>()) {
  impl_->file = std::move(file);
  impl_->name = std::move(name);
}

LazyPages::~LazyPages() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  if (impl_->wake) {
    uint64_t one = 1;
    (void)!::write(impl_->wake.get(), &one, sizeof one);
  }
  if (impl_->thread.joinable()) impl_->thread.join();
}

uint64_t LazyPages::Features() {
  return UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE |
         UFFD_FEATURE_EVENT_UNMAP;
}

void LazyPages::AddSection(pid_t pid, std::vector<format::PageRun> runs, uint64_t data_offset,
                           uint64_t trailer_offset, uint32_t crc_seed) {
  uint64_t off = data_offset;
  auto& list = impl_->pieces[pid];
  for (const format::PageRun& r : runs) {
    list.push_back({r.start, r.npages * kPage, off});
    off += r.npages * kPage;
  }
  std::sort(list.begin(), list.end(),
            [](const Piece& a, const Piece& b) { return a.addr < b.addr; });
  impl_->sections.push_back({pid, std::move(runs), data_offset, trailer_offset, crc_seed});
}

std::vector<LazyPages::Piece> LazyPages::PiecesOf(pid_t pid) const {
  auto it = impl_->pieces.find(pid);
  return it == impl_->pieces.end() ? std::vector<Piece>{} : it->second;
}

Status LazyPages::ReadAt(uint64_t offset, void* buf, size_t n) const {
  return impl_->ReadAt(offset, buf, n);
}

Status LazyPages::Impl::ReadAt(uint64_t offset, void* buf, size_t n) const {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::pread(file.get(), p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::FromErrno(errno, "read " + name);
    if (r == 0) return Status::Corrupt(name + ": truncated in page data (lazy restart)");
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

Status LazyPages::Adopt(pid_t pid, UniqueFd uffd) {
  auto s = std::make_unique<Space>();
  s->pid = pid;
  s->uffd = std::move(uffd);
  impl_->spaces.push_back(std::move(s));
  return Status::Ok();
}

// UFFDIO_COPY of whole pages; *exists when some page was there already (the
// rest is then copied page by page).
Status LazyPages::Impl::Copy(Space* s, uint64_t dst, const char* src, uint64_t len, bool* exists) {
  struct uffdio_copy c;
  std::memset(&c, 0, sizeof c);
  c.dst = dst;
  c.src = reinterpret_cast<uint64_t>(src);
  c.len = len;
  if (::ioctl(s->uffd.get(), UFFDIO_COPY, &c) == 0) return Status::Ok();
  int err = errno;
  if (err == EEXIST || (c.copy < 0 && -c.copy == EEXIST)) {
    *exists = true;
    for (uint64_t o = 0; o < len; o += kPage) {
      for (;;) {
        std::memset(&c, 0, sizeof c);
        c.dst = dst + o;
        c.src = reinterpret_cast<uint64_t>(src + o);
        c.len = kPage;
        if (::ioctl(s->uffd.get(), UFFDIO_COPY, &c) == 0 || errno == EEXIST || errno == ENOENT)
          break;
        if (errno == EAGAIN) {
          // The address space is changing (fork, mremap, madvise): its
          // event must be read before anything can be copied.
          STASIS_RETURN_IF_ERROR(EventsOnly(s));
          continue;
        }
        if (errno == ESRCH) {
          s->gone = true;
          return Status::Ok();
        }
        return Status::FromErrno(errno,
                                 "lazy restart: copy a page into pid " + std::to_string(s->pid));
      }
    }
    return Status::Ok();
  }
  if (err == EAGAIN) return Status::Error(EAGAIN, "address space changing");
  if (err == ENOENT) return Status::Ok();  // unmapped: an event says so
  if (err == ESRCH) {
    s->gone = true;
    return Status::Ok();
  }
  return Status::FromErrno(err, "lazy restart: copy pages into pid " + std::to_string(s->pid));
}

Status LazyPages::Impl::ServeFault(Space* s, uint64_t addr) {
  faults++;
  const uint64_t cur = addr & ~(kPage - 1);
  const uint64_t orig = s->ToOriginal(cur);
  const auto& list = pieces[s->pid];
  auto it = std::upper_bound(list.begin(), list.end(), orig,
                             [](uint64_t a, const Piece& p) { return a < p.addr; });
  const Piece* hit = nullptr;
  if (it != list.begin()) {
    const Piece& p = *std::prev(it);
    if (orig < p.addr + p.bytes) hit = &p;
  }
  if (!hit || s->Removed(orig, kPage)) {
    // Never saved (zero at the checkpoint) or dropped since: a zero page.
    for (;;) {
      struct uffdio_zeropage z;
      std::memset(&z, 0, sizeof z);
      z.range = {cur, kPage};
      if (::ioctl(s->uffd.get(), UFFDIO_ZEROPAGE, &z) == 0) break;
      if (errno == EAGAIN) {
        STASIS_RETURN_IF_ERROR(EventsOnly(s));
        continue;
      }
      if (errno == EEXIST)
        Wake(s, cur, kPage);
      else if (errno == ESRCH)
        s->gone = true;
      else if (errno != ENOENT)
        return Status::FromErrno(
            errno, "lazy restart: map a zero page into pid " + std::to_string(s->pid));
      break;
    }
    return Status::Ok();
  }
  // Up to kFaultChunk from the fault on, within the piece, when nothing in
  // between moved or was removed.
  uint64_t len = kPage;
  if (s->remaps.empty()) {
    len = std::min<uint64_t>(kFaultChunk, hit->addr + hit->bytes - orig);
    while (len > kPage && s->Removed(orig, len)) len -= kPage;
  }
  if (buf.size() < len) buf.resize(std::max<size_t>(len, kStreamChunk));
  STASIS_RETURN_IF_ERROR(ReadAt(orig - hit->addr + hit->offset, buf.data(), len));
  bool exists = false;
  // No fault is served while this copy waits out EAGAIN (EventsOnly defers
  // them), so buf stays ours.
  STASIS_RETURN_IF_ERROR(CopyRetrying(s, cur, buf.data(), len, &exists));
  if (exists) Wake(s, cur, kPage);
  return Status::Ok();
}

// Every message waiting on one userfaultfd.
Status LazyPages::Impl::Drain(Space* s) {
  for (;;) {
    struct uffd_msg m;
    ssize_t r = ::read(s->uffd.get(), &m, sizeof m);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) return Status::Ok();
    if (r < 0) return Status::FromErrno(errno, "lazy restart: read a userfaultfd event");
    if (r == 0) {
      s->gone = true;
      return Status::Ok();
    }
    STASIS_RETURN_IF_ERROR(Apply(s, m));
  }
}

Status LazyPages::Impl::EventsOnly(Space* s) {
  for (;;) {
    struct uffd_msg m;
    ssize_t r = ::read(s->uffd.get(), &m, sizeof m);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) {
      // Nothing waiting yet: the event is on its way.
      struct pollfd p = {s->uffd.get(), POLLIN, 0};
      (void)::poll(&p, 1, 10);
      return Status::Ok();
    }
    if (r < 0) return Status::FromErrno(errno, "lazy restart: read a userfaultfd event");
    if (r == 0) {
      s->gone = true;
      return Status::Ok();
    }
    if (m.event == UFFD_EVENT_PAGEFAULT) {
      deferred.emplace_back(s, static_cast<uint64_t>(m.arg.pagefault.address));
      continue;
    }
    STASIS_RETURN_IF_ERROR(Apply(s, m));
  }
}

Status LazyPages::Impl::Apply(Space* s, const struct uffd_msg& m) {
  {
    switch (m.event) {
      case UFFD_EVENT_PAGEFAULT:
        STASIS_RETURN_IF_ERROR(ServeFault(s, m.arg.pagefault.address));
        break;
      case UFFD_EVENT_FORK: {
        // The child's memory is its parent's: same pages still missing.
        auto child = std::make_unique<Space>();
        child->pid = s->pid;
        child->uffd.reset(static_cast<int>(m.arg.fork.ufd));
        ::fcntl(child->uffd.get(), F_SETFL, ::fcntl(child->uffd.get(), F_GETFL) | O_NONBLOCK);
        ::fcntl(child->uffd.get(), F_SETFD, FD_CLOEXEC);
        child->remaps = s->remaps;
        child->removed = s->removed;
        spaces.push_back(std::move(child));
        break;
      }
      case UFFD_EVENT_REMAP:
        s->remaps.push_back({m.arg.remap.from, m.arg.remap.to, m.arg.remap.len});
        break;
      case UFFD_EVENT_REMOVE:
      case UFFD_EVENT_UNMAP:
        s->Remove(m.arg.remove.start, m.arg.remove.end);
        break;
      default:
        break;
    }
  }
  return Status::Ok();
}

// Waits up to timeout_ms for faults or events and serves them all.
Status LazyPages::Impl::PollOnce(int timeout_ms) {
  std::vector<struct pollfd> fds;
  fds.push_back({wake.get(), POLLIN, 0});
  for (auto& s : spaces)
    if (!s->gone) fds.push_back({s->uffd.get(), POLLIN, 0});
  int n = ::poll(fds.data(), fds.size(), timeout_ms);
  if (n < 0 && errno == EINTR) return Status::Ok();
  if (n < 0) return Status::FromErrno(errno, "lazy restart: poll");
  if (fds[0].revents & POLLIN) {
    uint64_t v;
    (void)!::read(wake.get(), &v, sizeof v);
  }
  // Index by position: spaces may grow (fork) while we serve.
  size_t count = spaces.size();
  for (size_t i = 0, k = 1; i < count && k < fds.size(); ++i) {
    if (spaces[i]->gone) continue;
    if (fds[k].revents & (POLLIN | POLLERR | POLLHUP))
      STASIS_RETURN_IF_ERROR(Drain(spaces[i].get()));
    ++k;
  }
  while (!deferred.empty()) {
    auto [s, addr] = deferred.front();
    deferred.pop_front();
    if (!s->gone) STASIS_RETURN_IF_ERROR(ServeFault(s, addr));
  }
  return Status::Ok();
}

// Every recorded section, in file order, into every space that serves its
// pid; faults go first between chunks. Each section's CRC is checked.
Status LazyPages::Impl::Stream() {
  std::vector<size_t> order(sections.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return sections[a].data_offset < sections[b].data_offset; });
  if (buf.size() < kStreamChunk) buf.resize(kStreamChunk);
  std::vector<char> chunk(kStreamChunk);
  // The file read ahead in order on a thread of its own (O_DIRECT, a new
  // open file description: ours stays for pread), so that reading overlaps
  // copying; what lies between the lazy sections is read and dropped.
  std::unique_ptr<ByteSource> ahead;
  UniqueFd again(
      ::open(("/proc/self/fd/" + std::to_string(file.get())).c_str(), O_RDONLY | O_CLOEXEC));
  if (again) ahead.reset(new PrefetchSource(std::move(again), name));
  uint64_t ahead_pos = 0;
  // Up to n bytes of the file at `off` (in order): a pointer into the
  // read-ahead, or into `chunk` through pread.
  auto fetch = [&](uint64_t off, size_t n, const char** data) -> Result<size_t> {
    if (ahead && off >= ahead_pos) {
      while (ahead_pos < off) {
        size_t skip = static_cast<size_t>(std::min<uint64_t>(off - ahead_pos, chunk.size()));
        STASIS_ASSIGN_OR_RETURN(size_t got, ahead->Read(chunk.data(), skip));
        if (got == 0) return Status::Corrupt(name + ": truncated in page data (lazy restart)");
        ahead_pos += got;
      }
      STASIS_ASSIGN_OR_RETURN(size_t got, ahead->ReadInPlace(data, n));
      if (got == 0) return Status::Corrupt(name + ": truncated in page data (lazy restart)");
      ahead_pos += got;
      return got;
    }
    STASIS_RETURN_IF_ERROR(ReadAt(off, chunk.data(), n));
    *data = chunk.data();
    return n;
  };
  for (size_t idx : order) {
    const Section& sec = sections[idx];
    uint32_t crc = sec.crc_seed;
    size_t run = 0;
    uint64_t run_off = 0, off = sec.data_offset;
    while (off < sec.trailer_offset) {
      const char* data = nullptr;
      STASIS_ASSIGN_OR_RETURN(
          size_t n,
          fetch(off,
                static_cast<size_t>(std::min<uint64_t>(kStreamChunk, sec.trailer_offset - off)),
                &data));
      crc = format::Crc32c(crc, data, n);
      size_t done = 0;
      while (done < n && run < sec.runs.size()) {
        const format::PageRun& r = sec.runs[run];
        uint64_t take = std::min<uint64_t>(r.npages * kPage - run_off, n - done);
        uint64_t orig = r.start + run_off;
        // By index: a fork while we copy adds a space, which must get this
        // piece too (what the parent lacked when it forked, the child lacks).
        for (size_t si = 0; si < spaces.size(); ++si) {
          Space* s = spaces[si].get();
          if (s->gone || s->pid != sec.pid) continue;
          // Page by page where memory moved or was removed; else in one go.
          if (s->remaps.empty() && !s->Removed(orig, take)) {
            bool exists = false;
            STASIS_RETURN_IF_ERROR(CopyRetrying(s, orig, data + done, take, &exists));
            continue;
          }
          for (uint64_t o = 0; o < take; o += kPage) {
            if (s->Removed(orig + o, kPage)) continue;
            bool exists = false;
            STASIS_RETURN_IF_ERROR(
                CopyRetrying(s, s->ToCurrent(orig + o), data + done + o, kPage, &exists));
          }
        }
        done += take;
        run_off += take;
        if (run_off == r.npages * kPage) {
          ++run;
          run_off = 0;
        }
      }
      off += n;
      streamed += n;
      STASIS_RETURN_IF_ERROR(PollOnce(0));
    }
    char trailer[4];
    STASIS_RETURN_IF_ERROR(ReadAt(sec.trailer_offset, trailer, sizeof trailer));
    uint32_t stored;
    std::memcpy(&stored, trailer, 4);
    if (stored != crc)
      return Status::Corrupt(name + ": checksum mismatch in the page data at byte " +
                             std::to_string(sec.data_offset) +
                             " (lazy restart: the tree is killed)");
  }
  return Status::Ok();
}

void LazyPages::Impl::Run() {
  Status s;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stop || stream) break;
    }
    s = PollOnce(100);
    if (!s.ok()) break;
  }
  bool go;
  {
    std::lock_guard<std::mutex> lock(mu);
    go = stream && !stop;
  }
  if (s.ok() && go) s = Stream();
  if (!s.ok()) {
    Fail(s);
    std::vector<pid_t> kill;
    {
      std::lock_guard<std::mutex> lock(mu);
      kill = tree;
    }
    for (pid_t p : kill) ::kill(p, SIGKILL);
  }
  // Every page is in (or we failed): the registrations go with the fds.
  for (auto& sp : spaces) sp->uffd.reset();
  std::function<void(const Status&)> fn;
  Status result;
  {
    std::lock_guard<std::mutex> lock(mu);
    finished = true;
    cv.notify_all();
    fn = on_done;
    result = error;
  }
  if (fn) fn(result);
}

void LazyPages::OnDone(std::function<void(const Status&)> fn) {
  Status result;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (!impl_->finished) {
      impl_->on_done = std::move(fn);
      return;
    }
    result = impl_->error;
  }
  fn(result);
}

Status LazyPages::Start() {
  impl_->wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl_->wake) return Status::FromErrno(errno, "lazy restart: eventfd");
  impl_->thread = std::thread([this] { impl_->Run(); });
  return Status::Ok();
}

void LazyPages::StartStreaming(std::vector<pid_t> tree) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->tree = std::move(tree);
    impl_->stream = true;
  }
  uint64_t one = 1;
  (void)!::write(impl_->wake.get(), &one, sizeof one);
}

Status LazyPages::Wait() {
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->cv.wait(lock, [&] { return impl_->finished; });
  return impl_->error;
}

bool LazyPages::done() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->finished;
}

uint64_t LazyPages::faults_served() const { return impl_->faults; }
uint64_t LazyPages::bytes_streamed() const { return impl_->streamed; }

namespace restore {

// Can the current Pages section of `p` be left to the lazy server? Version 1
// data, every run in private anonymous memory other than the stack.
bool Restorer::LazyEligible(const RProc* p) const {
  if (!options_.lazy || !p->mm_built || (p->entry.flags & format::kProcZombie)) return false;
  const format::PagesHeader& h = reader_.pages();
  if (h.codec != format::kCodecNone || h.runs.empty()) return false;
  for (const format::PageRun& run : h.runs) {
    uint64_t end = run.start + run.npages * kPageSize;
    bool inside = false;
    for (const Mapping& m : p->mappings)
      if (m.kind == format::kMapAnon && !(m.flags & format::kMapStack) && m.start <= run.start &&
          end <= m.end)
        inside = true;
    if (!inside) return false;
  }
  return true;
}

// Before anything of `p` runs: its lazy pages that are present already
// (the kernel wrote thread ids into them while threads were created) get
// their saved content now, as an eager restore would; then a userfaultfd
// made inside the process is registered on its private anonymous mappings
// and handed to the server.
Status Restorer::SetUpLazy(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  if (p->entry.flags & format::kProcZombie) return Status::Ok();
  std::vector<LazyPages::Piece> pieces = options_.lazy->PiecesOf(static_cast<pid_t>(p->entry.pid));
  if (pieces.empty()) return Status::Ok();
  UniqueFd pagemap(
      ::open(("/proc/" + std::to_string(p->pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return Status::FromErrno(errno, "open pagemap of " + who);
  std::vector<uint64_t> pm;
  std::vector<char> page(kPageSize);
  for (const LazyPages::Piece& piece : pieces) {
    pm.resize(piece.bytes / kPageSize);
    ssize_t n = ::pread(pagemap.get(), pm.data(), pm.size() * 8,
                        static_cast<off_t>(piece.addr / kPageSize * 8));
    if (n != static_cast<ssize_t>(pm.size() * 8))
      return Status::FromErrno(errno ? errno : EIO, "read pagemap of " + who);
    for (size_t i = 0; i < pm.size(); ++i) {
      if (!(pm[i] & (1ull << 63))) continue;
      STASIS_RETURN_IF_ERROR(
          options_.lazy->ReadAt(piece.offset + i * kPageSize, page.data(), kPageSize));
      STASIS_RETURN_IF_ERROR(p->mem.Write(piece.addr + i * kPageSize, page.data(), kPageSize));
    }
  }
  STASIS_ASSIGN_OR_RETURN(long fd, Call(p, SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0)
    return Status::FromErrno(
        static_cast<int>(-fd),
        "lazy restart: userfaultfd in " + who + " (needs root, or vm.unprivileged_userfaultfd=1)");
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, p->pid, 0)));
  UniqueFd uffd(
      pidfd ? static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), static_cast<int>(fd), 0))
            : -1);
  int saved = errno;
  (void)Call(p, SYS_close, static_cast<uint64_t>(fd));
  if (!uffd) return Status::FromErrno(saved, "lazy restart: take the userfaultfd of " + who);
  struct uffdio_api api = {UFFD_API, LazyPages::Features(), 0};
  if (::ioctl(uffd.get(), UFFDIO_API, &api) != 0)
    return Status::FromErrno(errno, "lazy restart: UFFDIO_API for " + who);
  for (const Mapping& m : p->mappings) {
    if (m.kind != format::kMapAnon || (m.flags & format::kMapStack)) continue;
    struct uffdio_register reg;
    std::memset(&reg, 0, sizeof reg);
    reg.range = {m.start, m.end - m.start};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) == 0) continue;
    // Not registrable: its pages now, eagerly.
    for (const LazyPages::Piece& piece : pieces) {
      if (piece.addr < m.start || piece.addr >= m.end) continue;
      std::vector<char> data(piece.bytes);
      STASIS_RETURN_IF_ERROR(options_.lazy->ReadAt(piece.offset, data.data(), data.size()));
      STASIS_RETURN_IF_ERROR(p->mem.Write(piece.addr, data.data(), data.size()));
    }
  }
  return options_.lazy->Adopt(static_cast<pid_t>(p->entry.pid), std::move(uffd));
}

}  // namespace restore

}  // namespace stasis::core
