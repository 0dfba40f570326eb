// Shared memory, both directions: anonymous shared mappings, memfds, POSIX
// and SysV shared memory, hugetlb and unlinked files saved by value; each
// object saved once with its pages and recreated once at restore.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "engine/agent/agent_abi.h"
#include "engine/base/fd.h"
#include "engine/core/capture_internal.h"
#include "engine/core/procfs.h"
#include "engine/core/restore_internal.h"
#include "engine/format/context_io.h"

namespace stasis::core {
namespace capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

// Notes an object saved once per context: shared anonymous memory, a memfd
// or an unlinked file. `e` is a mapping of it (or, for an fd, only its
// inode); `open_path` reaches the object itself (map_files or fd link).
Status Capturer::NoteSharedMemory(ProcState* p, const MapsEntry& e, format::SharedMemoryKind kind,
                                  const std::string& name, const std::string& open_path) {
  Shm& shm = shms_[e.inode];
  if (shm.pid == 0) {
    shm.info.id = e.inode;
    shm.info.kind = kind;
    shm.info.name = name;
    shm.pid = p->pid;
    shm.entry = e;
  }
  if (!shm.fd) {
    // The object itself (map_files needs root or CAP_CHECKPOINT_RESTORE): its
    // full size and every page, also those only other processes touched.
    shm.fd.reset(::open(open_path.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st;
    if (shm.fd && ::fstat(shm.fd.get(), &st) == 0) {
      shm.info.size = std::max(shm.info.size, static_cast<uint64_t>(st.st_size));
      shm.info.sysv_mode = st.st_mode & 07777;
      shm.pid = p->pid;
      shm.entry = e;
    }
  }
  if (!shm.fd && (shm.pid != p->pid || e.end == 0))
    return Status::Error(EPERM, "cannot checkpoint " + Pid(p->pid) + ": cannot read " +
                                    (name.empty() ? std::string("shared memory") : name) +
                                    " (needs root when several processes share it)");
  if ((kind == format::kShmAnon || kind == format::kShmMemfd || kind == format::kShmHugetlb) &&
      e.end > e.start)
    shm.info.size = std::max(
        shm.info.size, (e.offset + (e.end - e.start) + kPageSize - 1) / kPageSize * kPageSize);
  return Status::Ok();
}

// Key, mode (with SHM_DEST when it is marked for removal) and size of a
// SysV segment, from /proc/sysvipc/shm.
Status Capturer::NoteSysvSegment(uint64_t shmid, const std::string& where) {
  STASIS_ASSIGN_OR_RETURN(std::string text, ReadFileToString("/proc/sysvipc/shm"));
  size_t pos = text.find('\n');
  while (pos != std::string::npos && pos + 1 < text.size()) {
    long long key = 0;
    unsigned long long id = 0, size = 0;
    unsigned mode = 0;
    if (sscanf(text.c_str() + pos + 1, "%lld %llu %o %llu", &key, &id, &mode, &size) == 4 &&
        id == shmid) {
      Shm& shm = shms_[kSysvIdBase + shmid];
      shm.info.sysv_key = key;
      shm.info.sysv_mode = mode;
      shm.info.size = size;  // exact: shmget gets the same size back
      return Status::Ok();
    }
    pos = text.find('\n', pos + 1);
  }
  return Status::Error(ENOENT, "cannot checkpoint " + where + ": SysV segment " +
                                   std::to_string(shmid) + " not found");
}

Status Capturer::WriteSharedMemory(format::ContextWriter* writer, uint64_t* page_bytes) {
  std::unique_ptr<char[]> chunk(new char[kReadChunk]);
  // Not a structured binding: clang 14 cannot capture one in a lambda.
  for (auto& entry : shms_) {
    const auto& id = entry.first;
    auto& shm = entry.second;
    STASIS_RETURN_IF_ERROR(writer->WriteSharedMemory(shm.info));
    const format::PageOwner owner{format::PageOwner::kSharedMemory, id};
    std::vector<PageRun> runs;
    std::string data;
    auto flush = [&]() -> Status {
      if (runs.empty()) return Status::Ok();
      STASIS_RETURN_IF_ERROR(writer->BeginPages(owner, runs));
      STASIS_RETURN_IF_ERROR(writer->AppendPageData(data.data(), data.size()));
      STASIS_RETURN_IF_ERROR(writer->EndPages());
      *page_bytes += data.size();
      runs.clear();
      data.clear();
      return Status::Ok();
    };
    // Reads [off, off+len) of the object, keeping the non-zero pages.
    auto take = [&](uint64_t off, uint64_t len, auto read) -> Status {
      while (len > 0) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(len, kReadChunk));
        STASIS_RETURN_IF_ERROR(read(off, chunk.get(), n));
        for (size_t k = 0; k < n; k += kPageSize) {
          const char* page = chunk.get() + k;
          if (IsZeroPage(page)) {
            ++zero_skipped_;
            continue;
          }
          uint64_t at = off + k;
          if (!runs.empty() && runs.back().start + runs.back().npages * kPageSize == at)
            runs.back().npages++;
          else
            runs.push_back({at, 1});
          data.append(page, kPageSize);
          if (data.size() >= kBatchBytes) STASIS_RETURN_IF_ERROR(flush());
        }
        off += n;
        len -= n;
      }
      return Status::Ok();
    };
    if (shm.fd) {
      auto read = [&](uint64_t off, char* buf, size_t n) -> Status {
        ssize_t r = ::pread(shm.fd.get(), buf, n, static_cast<off_t>(off));
        if (r < 0) return Status::FromErrno(errno, "read shared memory of " + Pid(shm.pid));
        if (static_cast<size_t>(r) < n) std::memset(buf + r, 0, n - static_cast<size_t>(r));
        return Status::Ok();
      };
      off_t pos = 0;
      const off_t size = static_cast<off_t>(shm.info.size);
      while (pos < size) {
        off_t data_at = ::lseek(shm.fd.get(), pos, SEEK_DATA);
        if (data_at < 0 && errno != ENXIO) {
          // No SEEK_DATA here (hugetlbfs): read it all, zero pages skipped.
          STASIS_RETURN_IF_ERROR(
              take(static_cast<uint64_t>(pos), static_cast<uint64_t>(size - pos), read));
          break;
        }
        if (data_at < 0) break;  // ENXIO: no more data
        off_t hole = ::lseek(shm.fd.get(), data_at, SEEK_HOLE);
        if (hole < 0 || hole > size) hole = size;
        uint64_t lo = static_cast<uint64_t>(data_at) & ~(kPageSize - 1);
        uint64_t hi = (static_cast<uint64_t>(hole) + kPageSize - 1) & ~(kPageSize - 1);
        STASIS_RETURN_IF_ERROR(take(lo, hi - lo, read));
        pos = static_cast<off_t>(hi);
      }
    } else {
      // Only one process maps it: read its window through /proc/PID/mem.
      ProcState* p = by_pid_[shm.pid];
      const MapsEntry& e = shm.entry;
      auto read = [&](uint64_t off, char* buf, size_t n) -> Status {
        return p->mem.Read(e.start + (off - e.offset), buf, n);
      };
      STASIS_RETURN_IF_ERROR(take(e.offset, e.end - e.start, read));
    }
    STASIS_RETURN_IF_ERROR(flush());
  }
  return Status::Ok();
}

}  // namespace capture

namespace restore {

using format::FileDesc;
using format::Mapping;

// One object per saved segment, created by the restorer and mapped by every
// process that shared it. Anonymous shared memory is recreated as a real
// MAP_SHARED|MAP_ANONYMOUS object (same "/dev/zero" identity in maps) when
// /proc/self/map_files can be opened (root); otherwise as a memfd.
Status Restorer::CreateSharedMemory(const format::SharedMemory& shm) {
  // libcr's agent block comes back as a memfd of its name, sealed at its
  // size as libcr seals it (checkpointers map only sealed blocks).
  const bool agent =
      (shm.kind == format::kShmMemfd && shm.name == STASIS_AGENT_MEMFD_NAME) ||
      (shm.kind == format::kShmFileByValue && shm.name == "/memfd:" STASIS_AGENT_MEMFD_NAME);
  if (agent) agent_shm_ids_.insert(shm.id);
  if (shm.size > (1ull << 46) ||
      ((shm.kind == format::kShmAnon || shm.kind == format::kShmMemfd ||
        shm.kind == format::kShmPosix || shm.kind == format::kShmHugetlb) &&
       (shm.size == 0 || shm.size % kPageSize != 0)))
    return Status::Corrupt("shared memory " + std::to_string(shm.id) + " has a bad size");
  UniqueFd fd;
  if (shm.kind == format::kShmFileByValue && !agent) {
    // An unlinked file: recreated under its old name (so /proc shows the same
    // "NAME (deleted)") and unlinked again; a temporary name if it is taken.
    std::string path = Relocate(shm.name);
    mode_t mode = shm.sysv_mode ? shm.sysv_mode & 0777 : 0600;
    fd.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (fd) {
      ::unlink(path.c_str());
    } else {
      size_t slash = path.rfind('/');
      std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
      fd.reset(::open(dir.c_str(), O_RDWR | O_TMPFILE | O_CLOEXEC, mode));
      if (!fd) fd.reset(::open("/tmp", O_RDWR | O_TMPFILE | O_CLOEXEC, mode));
      if (!fd) return Status::FromErrno(errno, "recreate unlinked file " + path);
    }
    if (::ftruncate(fd.get(), static_cast<off_t>(shm.size)) != 0)
      return Status::FromErrno(errno, "size recreated file " + path);
  } else if (shm.kind == format::kShmSysv) {
    // A new SysV segment with the old key when it is free (else private);
    // processes attach it with shmat at their old addresses.
    int mode = static_cast<int>(shm.sysv_mode & 0777);
    int id = -1;
    // The old shmid when the kernel lets us choose it (root; racy only
    // against other creators of SysV segments in the same instant).
    const int old_id = static_cast<int>(shm.id & 0xffffffffu);
    if (::geteuid() == 0) {
      UniqueFd next(::open("/proc/sys/kernel/shm_next_id", O_WRONLY | O_CLOEXEC));
      std::string v = std::to_string(old_id);
      if (next) (void)!::write(next.get(), v.data(), v.size());
    }
    if (shm.sysv_key != 0) {
      // The very segment may have outlived its processes (SysV segments do):
      // same key, same id, size and nobody attached: refill and reuse it.
      int left = ::shmget(static_cast<key_t>(shm.sysv_key), 0, 0);
      struct shmid_ds ds;
      if (left == old_id && ::shmctl(left, IPC_STAT, &ds) == 0 && ds.shm_nattch == 0 &&
          ds.shm_segsz == shm.size)
        id = left;
    }
    if (id < 0 && shm.sysv_key != 0)
      id = ::shmget(static_cast<key_t>(shm.sysv_key), shm.size, IPC_CREAT | IPC_EXCL | mode);
    if (id < 0) id = ::shmget(IPC_PRIVATE, shm.size, IPC_CREAT | mode);
    if (id < 0) return Status::FromErrno(errno, "create SysV shared memory");
    sysv_ids_[shm.id] = id;
    if (shm.sysv_mode & 01000 /* SHM_DEST */) sysv_remove_.push_back(id);
    void* m = ::shmat(id, nullptr, 0);
    if (m == reinterpret_cast<void*>(-1)) return Status::FromErrno(errno, "attach SysV segment");
    uint64_t a = reinterpret_cast<uint64_t>(m);
    uint64_t rounded = (shm.size + kPageSize - 1) / kPageSize * kPageSize;
    std::string mf = "/proc/self/map_files/" + ToHex(a) + "-" + ToHex(a + rounded);
    fd.reset(::open(mf.c_str(), O_RDWR | O_CLOEXEC));
    ::shmdt(m);
    if (!fd) return Status::FromErrno(errno, "open SysV segment (needs root)");
  } else if (shm.kind == format::kShmHugetlb) {
    // Huge pages: hugetlbfs has no write(), so the pages go in through a
    // mapping the restorer keeps until the end.
    void* m = ::mmap(nullptr, shm.size, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (m == MAP_FAILED)
      return Status::FromErrno(errno, "create shared huge-page memory of " +
                                          std::to_string(shm.size >> 20) +
                                          " MiB (free huge pages?)");
    uint64_t a = reinterpret_cast<uint64_t>(m);
    std::string mf = "/proc/self/map_files/" + ToHex(a) + "-" + ToHex(a + shm.size);
    fd.reset(::open(mf.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) {
      ::munmap(m, shm.size);
      return Status::FromErrno(errno, "open shared huge-page memory (needs root)");
    }
    shm_maps_[shm.id] = {m, shm.size};
  } else if (shm.kind == format::kShmAnon) {
    void* m = ::mmap(nullptr, shm.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return Status::FromErrno(errno, "create shared memory");
    uint64_t a = reinterpret_cast<uint64_t>(m);
    std::string mf = "/proc/self/map_files/" + ToHex(a) + "-" + ToHex(a + shm.size);
    fd.reset(::open(mf.c_str(), O_RDWR | O_CLOEXEC));
    ::munmap(m, shm.size);
  }
  if (!fd) {
    std::string name = agent                           ? STASIS_AGENT_MEMFD_NAME
                       : shm.kind == format::kShmMemfd ? shm.name
                                                       : "stasis-shared";
    fd.reset(static_cast<int>(
        ::syscall(SYS_memfd_create, name.c_str(), MFD_CLOEXEC | (agent ? MFD_ALLOW_SEALING : 0))));
    if (!fd) return Status::FromErrno(errno, "create memfd " + name);
    if (::ftruncate(fd.get(), static_cast<off_t>(shm.size)) != 0)
      return Status::FromErrno(errno, "size memfd " + name);
    if (agent && ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
      return Status::FromErrno(errno, "seal memfd " + name);
  }
  shm_size_[shm.id] = shm.size;
  shm_[shm.id] = std::move(fd);
  return Status::Ok();
}

Status Restorer::WriteSharedPages() {
  const format::PagesHeader& h = reader_.pages();
  auto it = shm_.find(h.owner.id);
  if (it == shm_.end()) return Status::Corrupt("pages for an unknown shared memory segment");
  std::vector<char> buf;
  for (const format::PageRun& run : h.runs) {
    uint64_t off = run.start, left = run.npages * kPageSize;
    const uint64_t size = shm_size_[h.owner.id];
    if (off + left > (size + kPageSize - 1) / kPageSize * kPageSize || off + left < off)
      return Status::Corrupt("shared memory pages beyond the segment's size");
    while (left > 0) {
      const char* data = nullptr;
      STASIS_ASSIGN_OR_RETURN(size_t n, NextPageBytes(left, &buf, &data));
      // The last page of a file may reach past its end: write only up to it.
      size_t w = static_cast<size_t>(std::min<uint64_t>(n, size > off ? size - off : 0));
      auto mapped = shm_maps_.find(h.owner.id);
      if (mapped != shm_maps_.end()) {
        std::memcpy(static_cast<char*>(mapped->second.first) + off, data, w);
      } else if (w && ::pwrite(it->second.get(), data, w, static_cast<off_t>(off)) !=
                          static_cast<ssize_t>(w))
        return Status::FromErrno(errno, "write shared memory");
      result_.page_bytes += n;
      off += n;
      left -= n;
    }
  }
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core
