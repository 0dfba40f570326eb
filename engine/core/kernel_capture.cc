// The kernel capture backend (see kernel_capture.h): ioctls on /dev/stasis,
// records parsed into the engine's capture pieces.
#include "engine/core/kernel_capture.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "kmod/include/uapi/stasis_kmod.h"

namespace stasis::core {
namespace {

constexpr uint64_t kPageSize = format::kPageSize;
constexpr uint64_t kBatchBytes = 64u << 20;  // page data per Pages section

std::string Pid(pid_t p) { return "pid " + std::to_string(p); }

const char* IoctlName(unsigned long request) {
  switch (request) {
    case STASIS_IOC_VMAS:
      return "memory map";
    case STASIS_IOC_THREADS:
      return "threads";
    case STASIS_IOC_FILES:
      return "open files";
    case STASIS_IOC_PAGES:
      return "pages";
    case STASIS_IOC_TASKSTATE:
      return "handlers, timers and altstacks";
    default:
      return "ioctl";
  }
}

// A reader over a record stream that never trusts a length from it.
class Records {
 public:
  explicit Records(const std::string& bytes) : data_(bytes) {}
  bool done() const { return pos_ == data_.size(); }
  template <typename T>
  bool Take(T* out) {
    if (data_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(out, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool TakeBytes(size_t n, std::string* out, size_t align = 1) {
    size_t padded = (n + align - 1) / align * align;
    if (padded < n || data_.size() - pos_ < padded) return false;
    out->assign(data_.data() + pos_, n);
    pos_ += padded;
    return true;
  }
  bool TakeVector(size_t n, std::vector<uint8_t>* out) {
    if (data_.size() - pos_ < n) return false;
    out->assign(data_.begin() + static_cast<std::ptrdiff_t>(pos_),
                data_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
    pos_ += n;
    return true;
  }

 private:
  const std::string& data_;
  size_t pos_ = 0;
};

uint32_t VmFlagsToMappingFlags(uint64_t f) {
  uint32_t out = 0;
  if (f & STASIS_VM_GROWSDOWN) out |= format::kMapGrowsDown;
  if (f & STASIS_VM_LOCKED) out |= format::kMapLocked;
  if (f & STASIS_VM_DONTCOPY) out |= format::kMapDontFork;
  if (f & STASIS_VM_NOHUGEPAGE) out |= format::kMapNoHugepage;
  if (f & STASIS_VM_HUGEPAGE) out |= format::kMapHugepage;
  if (f & STASIS_VM_DONTDUMP) out |= format::kMapDontDump;
  if (f & STASIS_VM_WIPEONFORK) out |= format::kMapWipeOnFork;
  if (f & STASIS_VM_NORESERVE) out |= format::kMapNoReserve;
  if (f & STASIS_VM_MERGEABLE) out |= format::kMapMergeable;
  if (f & STASIS_VM_HUGETLB) out |= format::kMapHugetlb;
  return out;
}

}  // namespace

Result<CaptureBackend> ParseCaptureBackend(const std::string& text) {
  if (text == "auto") return CaptureBackend::kAuto;
  if (text == "kernel") return CaptureBackend::kKernel;
  if (text == "user") return CaptureBackend::kUser;
  return Status::Error(EINVAL, "capture backend '" + text + "' is not one of auto, kernel, user");
}

const char* CaptureBackendName(CaptureBackend backend) {
  switch (backend) {
    case CaptureBackend::kAuto:
      return "auto";
    case CaptureBackend::kKernel:
      return "kernel";
    case CaptureBackend::kUser:
      return "user";
  }
  return "?";
}

const KernelThread* KernelTask::Thread(uint32_t tid) const {
  for (const KernelThread& t : threads)
    if (t.tid == tid) return &t;
  return nullptr;
}

const KernelFile* KernelTask::File(int fd) const {
  for (const KernelFile& f : files)
    if (f.fd == fd) return &f;
  return nullptr;
}

Status ApplyKernelThread(const KernelTask& task, const StopInfo& first_stop, bool was_stopped,
                         format::ThreadInfo* ti) {
  const KernelThread* kt = task.Thread(ti->tid);
  if (!kt)
    return Status::Error(EAGAIN, "thread " + std::to_string(ti->tid) +
                                     " is not in the kernel capture (it appeared meanwhile)");
  if (kt->gpregs.size() != sizeof(Regs))
    return Status::Error(EPROTO, "kernel capture of thread " + std::to_string(ti->tid) + ": " +
                                     std::to_string(kt->gpregs.size()) +
                                     " bytes of registers, want " + std::to_string(sizeof(Regs)));
  Regs regs;
  std::memcpy(&regs, kt->gpregs.data(), sizeof regs);
  regs = RegsAsCaptured(regs, first_stop);
  ti->gpregs.assign(reinterpret_cast<const uint8_t*>(&regs),
                    reinterpret_cast<const uint8_t*>(&regs) + sizeof regs);
  ti->xsave = kt->xsave;
  ti->sigmask = kt->blocked;
  ti->pending.clear();
  for (size_t off = 0; off + STASIS_SIGINFO_SIZE <= kt->pending.size();
       off += STASIS_SIGINFO_SIZE) {
    int32_t signo = 0;
    std::memcpy(&signo, &kt->pending[off], sizeof signo);
    if (was_stopped && signo == SIGSTOP) continue;
    ti->pending.insert(
        ti->pending.end(), kt->pending.begin() + static_cast<std::ptrdiff_t>(off),
        kt->pending.begin() + static_cast<std::ptrdiff_t>(off + STASIS_SIGINFO_SIZE));
  }
  return Status::Ok();
}

Result<std::unique_ptr<KernelCapture>> KernelCapture::Open(CaptureBackend backend,
                                                           const std::string& device) {
  if (backend == CaptureBackend::kUser) return std::unique_ptr<KernelCapture>();
  UniqueFd dev(::open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (!dev) {
    if (backend == CaptureBackend::kAuto) return std::unique_ptr<KernelCapture>();
    return Status::FromErrno(errno, "capture backend kernel: open " + device +
                                        " (is stasis.ko loaded? see kmod/README)");
  }
  struct stasis_version v {};
  v.size = sizeof v;
  if (::ioctl(dev.get(), STASIS_IOC_VERSION, &v) != 0 || v.version != STASIS_KMOD_VERSION ||
      v.task_req_size != sizeof(struct stasis_task_req) ||
      v.pages_req_size != sizeof(struct stasis_pages_req)) {
    if (backend == CaptureBackend::kAuto) return std::unique_ptr<KernelCapture>();
    return Status::Error(EPROTO, "capture backend kernel: " + device +
                                     " speaks another ioctl version than this engine (module " +
                                     std::to_string(v.version) + ", engine " +
                                     std::to_string(STASIS_KMOD_VERSION) + "): rebuild one");
  }
  UniqueFd memfd(::memfd_create("stasis-kcapture", MFD_CLOEXEC));
  if (!memfd) return Status::FromErrno(errno, "capture backend kernel: memfd_create");
  return std::unique_ptr<KernelCapture>(new KernelCapture(std::move(dev), std::move(memfd)));
}

KernelCapture::~KernelCapture() {
  if (map_) ::munmap(map_, map_size_);
}

// Maps [0, size) of the memfd, reusing the mapping while it is big enough.
// The memfd is never truncated, so the mapping stays valid.
Status KernelCapture::MapMemfd(uint64_t size) {
  if (map_ && map_size_ >= size) return Status::Ok();
  if (map_) ::munmap(map_, map_size_);
  map_ = nullptr;
  // A batch holds kBatchBytes of data plus at most one record header per page.
  uint64_t want = std::max<uint64_t>(size, kBatchBytes + kBatchBytes / kPageSize * 16 + kPageSize);
  struct stat st;
  if (::fstat(memfd_.get(), &st) != 0) return Status::FromErrno(errno, "stat the capture memfd");
  if (static_cast<uint64_t>(st.st_size) < want &&
      ::ftruncate(memfd_.get(), static_cast<off_t>(want)) != 0)
    return Status::FromErrno(errno, "size the capture memfd");
  void* m = ::mmap(nullptr, want, PROT_READ, MAP_SHARED, memfd_.get(), 0);
  if (m == MAP_FAILED) return Status::FromErrno(errno, "map the capture memfd");
  map_ = m;
  map_size_ = want;
  return Status::Ok();
}

Result<std::string> KernelCapture::ReadRecords(unsigned long request, pid_t pid) {
  if (::lseek(memfd_.get(), 0, SEEK_SET) != 0)
    return Status::FromErrno(errno, "rewind the capture memfd");
  struct stasis_task_req req {};
  req.size = sizeof req;
  req.pid = pid;
  req.fd = memfd_.get();
  if (::ioctl(dev_.get(), request, &req) != 0)
    return Status::FromErrno(
        errno, std::string("kernel capture of the ") + IoctlName(request) + " of " + Pid(pid));
  std::string out(req.bytes, '\0');
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        ::pread(memfd_.get(), out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::FromErrno(n < 0 ? errno : EIO, "read the capture memfd");
    done += static_cast<size_t>(n);
  }
  return out;
}

Result<KernelTask> KernelCapture::CaptureTask(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string vmas, ReadRecords(STASIS_IOC_VMAS, pid));
  STASIS_ASSIGN_OR_RETURN(std::string threads, ReadRecords(STASIS_IOC_THREADS, pid));
  STASIS_ASSIGN_OR_RETURN(std::string files, ReadRecords(STASIS_IOC_FILES, pid));
  STASIS_ASSIGN_OR_RETURN(KernelTask task, ParseKernelTask(pid, vmas, threads, files));
  // Handlers, brk, the real itimer, prctl values and altstacks, read before
  // any call is injected; a module without this ioctl leaves them to the
  // injected calls.
  auto state = ReadRecords(STASIS_IOC_TASKSTATE, pid);
  if (state) {
    STASIS_ASSIGN_OR_RETURN(task.state, ParseKernelTaskState(pid, *state));
  } else if (state.error().code() != ENOTTY) {
    return state.error();
  }
  // The vsyscall page is the kernel's gate area, outside every mm's VMA
  // tree (get_gate_vma is not exported): when this kernel has one, every
  // process maps it at the same place, so our own map says where.
  if (gate_ == nullptr) {
    gate_ = std::make_unique<std::vector<MapsEntry>>();
    auto self = ReadMaps(::getpid());
    if (self.has_value())
      for (const MapsEntry& e : *self)
        if (e.path == "[vsyscall]") gate_->push_back(e);
  }
  for (const MapsEntry& e : *gate_) {
    task.maps.push_back(e);
    task.vmflags.push_back(0);
  }
  return task;
}

void ApplyKernelProcessState(const KernelTaskState& state, format::ProcessInfo* info) {
  info->mm.brk = state.brk;
  info->sigactions = state.actions;
  info->itimer_real = {state.itimer_real_interval_ns / 1000, state.itimer_real_value_ns / 1000};
  info->pdeathsig = state.pdeath_signal;
  info->child_subreaper = state.child_subreaper;
  info->dumpable = state.dumpable;
  info->timerslack_ns = state.timer_slack_ns;
}

void ApplyKernelThreadState(const KernelTaskState::ThreadState& state, format::ThreadInfo* ti) {
  ti->altstack_sp = state.altstack_sp;
  ti->altstack_flags = static_cast<uint32_t>(state.altstack_flags);
  ti->altstack_size = state.altstack_size;
  ti->timerslack_ns = state.timer_slack_ns;
  ti->clear_tid_address = state.clear_child_tid;
  ti->rseq_address = state.rseq;
  ti->rseq_length = state.rseq_len;
  ti->rseq_signature = state.rseq_sig;
}

Result<KernelTaskState> ParseKernelTaskState(pid_t pid, const std::string& records) {
  KernelTaskState st;
  const std::string bad =
      "kernel capture of " + Pid(pid) + ": malformed handlers, timers and altstacks";
  Records r(records);
  struct stasis_taskstate_rec rec;
  if (!r.Take(&rec) || rec.nthreads > 4194304 || rec.pad != 0) return Status::Corrupt(bad);
  st.have = true;
  st.brk = rec.brk;
  st.itimer_real_value_ns = rec.itimer_real_value_ns;
  st.itimer_real_interval_ns = rec.itimer_real_interval_ns;
  st.timer_slack_ns = rec.timer_slack_ns;
  st.pdeath_signal = rec.pdeath_signal;
  st.child_subreaper = rec.child_subreaper;
  st.dumpable = rec.dumpable;
  st.cpu_itimers = rec.flags & STASIS_TASKSTATE_CPU_ITIMERS;
  for (const auto& a : rec.action) st.actions.push_back({a.handler, a.flags, a.restorer, a.mask});
  for (uint32_t i = 0; i < rec.nthreads; ++i) {
    struct stasis_threadstate_rec t;
    if (!r.Take(&t) || t.tid <= 0) return Status::Corrupt(bad);
    st.threads[static_cast<uint32_t>(t.tid)] = {
        t.altstack_sp,     t.altstack_size, t.altstack_flags, t.timer_slack_ns,
        t.clear_child_tid, t.rseq,          t.rseq_len,       t.rseq_sig};
  }
  if (!r.done()) return Status::Corrupt(bad);
  return st;
}

Result<KernelTask> ParseKernelTask(pid_t pid, const std::string& vmas, const std::string& threads,
                                   const std::string& files) {
  KernelTask task;
  const std::string bad = "kernel capture of " + Pid(pid) + ": malformed ";
  for (Records r(vmas); !r.done();) {
    struct stasis_vma_rec v;
    std::string path;
    if (!r.Take(&v) || v.path_len > STASIS_MAX_PATH || !r.TakeBytes(v.path_len, &path, 8) ||
        v.start >= v.end)
      return Status::Corrupt(bad + "VMA record");
    MapsEntry e;
    e.start = v.start;
    e.end = v.end;
    e.read = v.flags & STASIS_VM_READ;
    e.write = v.flags & STASIS_VM_WRITE;
    e.exec = v.flags & STASIS_VM_EXEC;
    e.shared = v.flags & STASIS_VM_MAYSHARE;  // /proc/PID/maps shows 's' for VM_MAYSHARE
    e.offset = v.pgoff;
    e.dev_major = v.dev_major;
    e.dev_minor = v.dev_minor;
    e.inode = v.ino;
    e.path = path;
    task.maps.push_back(std::move(e));
    task.vmflags.push_back(VmFlagsToMappingFlags(v.flags));
  }

  bool shared_seen = false;
  for (Records r(threads); !r.done();) {
    struct stasis_thread_rec t;
    if (!r.Take(&t) || t.gpregs_len > 4096 || t.xstate_len > (1u << 20) ||
        t.npending > (1u << 20) || shared_seen)
      return Status::Corrupt(bad + "thread record");
    KernelThread kt;
    kt.tid = static_cast<uint32_t>(t.tid);
    kt.state = t.state;
    kt.blocked = t.blocked;
    if (!r.TakeVector(t.gpregs_len, &kt.gpregs) || !r.TakeVector(t.xstate_len, &kt.xsave) ||
        !r.TakeVector(static_cast<size_t>(t.npending) * STASIS_SIGINFO_SIZE, &kt.pending))
      return Status::Corrupt(bad + "thread record");
    if (t.tid == 0) {
      task.shared_pending = std::move(kt.pending);
      shared_seen = true;
    } else {
      task.threads.push_back(std::move(kt));
    }
  }
  if (!shared_seen) return Status::Corrupt(bad + "thread list (no shared pending record)");

  for (Records r(files); !r.done();) {
    struct stasis_file_rec f;
    KernelFile kf;
    if (!r.Take(&f) || f.path_len > STASIS_MAX_PATH || !r.TakeBytes(f.path_len, &kf.path, 8) ||
        f.fd < 0)
      return Status::Corrupt(bad + "file record");
    kf.fd = f.fd;
    kf.cloexec = f.fd_flags & 1;
    kf.f_flags = f.f_flags;
    kf.pos = f.pos;
    kf.st.st_mode = f.mode;
    kf.st.st_dev = f.dev;
    kf.st.st_ino = f.ino;
    kf.st.st_rdev = f.rdev;
    kf.st.st_size = static_cast<off_t>(f.fsize);
    kf.st.st_nlink = f.nlink;
    kf.st.st_mtim.tv_sec = f.mtime_ns / 1000000000;
    kf.st.st_mtim.tv_nsec = f.mtime_ns % 1000000000;
    if (kf.st.st_mtim.tv_nsec < 0) {
      kf.st.st_mtim.tv_nsec += 1000000000;
      kf.st.st_mtim.tv_sec -= 1;
    }
    kf.file_id = f.file_id;
    task.files.push_back(std::move(kf));
  }
  return task;
}

Status KernelCapture::WritePages(pid_t pid, const std::vector<format::Mapping>& mappings,
                                 const std::function<bool(const format::Mapping&)>& wanted,
                                 format::ContextWriter* writer, uint64_t* page_bytes,
                                 uint64_t* zero_pages) {
  uint64_t used = 0;  // bytes in the memfd
  auto flush = [&]() -> Status {
    if (used == 0) return Status::Ok();
    STASIS_RETURN_IF_ERROR(MapMemfd(used));
    const char* base = static_cast<const char*>(map_);
    // Two passes over the records: the runs first (BeginPages needs them),
    // then the data, straight from the memfd.
    std::vector<format::PageRun> runs;
    std::vector<std::pair<uint64_t, uint64_t>> pieces;  // offset, length
    uint64_t off = 0, data = 0;
    Status s;
    while (off < used) {
      struct stasis_page_rec rec;
      if (used - off < sizeof rec) {
        s = Status::Corrupt("kernel capture of " + Pid(pid) + ": truncated page record");
        break;
      }
      std::memcpy(&rec, base + off, sizeof rec);
      off += sizeof rec;
      if (rec.npages == 0 || rec.npages > (used - off) / kPageSize || rec.start % kPageSize) {
        s = Status::Corrupt("kernel capture of " + Pid(pid) + ": malformed page record");
        break;
      }
      if (!runs.empty() && runs.back().start + runs.back().npages * kPageSize == rec.start)
        runs.back().npages += rec.npages;
      else
        runs.push_back({rec.start, rec.npages});
      pieces.push_back({off, rec.npages * kPageSize});
      off += rec.npages * kPageSize;
      data += rec.npages * kPageSize;
    }
    if (s.ok())
      s = writer->BeginPages({format::PageOwner::kProcess, static_cast<uint64_t>(pid)}, runs);
    for (size_t i = 0; s.ok() && i < pieces.size(); ++i)
      s = writer->AppendPageData(base + pieces[i].first, pieces[i].second);
    if (s.ok()) s = writer->EndPages();
    if (!s.ok()) return s;
    *page_bytes += data;
    used = 0;
    if (::lseek(memfd_.get(), 0, SEEK_SET) != 0)  // its pages stay allocated for the next batch
      return Status::FromErrno(errno, "rewind the capture memfd");
    return Status::Ok();
  };
  if (::lseek(memfd_.get(), 0, SEEK_SET) != 0)
    return Status::FromErrno(errno, "rewind the capture memfd");
  for (const format::Mapping& m : mappings) {
    if (!wanted(m)) continue;
    uint64_t addr = m.start;
    while (addr < m.end) {
      if (used + kPageSize > kBatchBytes) STASIS_RETURN_IF_ERROR(flush());
      struct stasis_pages_req req {};
      req.size = sizeof req;
      req.pid = pid;
      req.fd = memfd_.get();
      req.start = addr;
      req.end = m.end;
      // Data budget: what is left of this batch (record headers come on top).
      req.max_bytes = (kBatchBytes - used) / kPageSize * kPageSize;
      req.flags = m.kind == format::kMapAnon ? STASIS_PAGES_SKIP_ZERO : STASIS_PAGES_ANON_ONLY;
      if (::ioctl(dev_.get(), STASIS_IOC_PAGES, &req) != 0)
        return Status::FromErrno(errno, "kernel capture of the pages of " + Pid(pid) + " at " +
                                            ToHex(addr) + "-" + ToHex(m.end));
      if (req.next <= addr || req.next > m.end)
        return Status::Corrupt("kernel capture of " + Pid(pid) +
                               ": the module made no progress at " + ToHex(addr));
      used += req.bytes;
      *zero_pages += req.zero_pages;
      addr = req.next;
    }
  }
  return flush();
}

}  // namespace stasis::core
