// The memory map, both directions: the VMAs with their VmFlags at capture;
// at restore, the inherited mappings removed, the vDSO moved, and every VMA
// mapped again (anonymous, file, shared, SysV).
#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <cstring>
#include <map>

#include "engine/base/fd.h"
#include "engine/core/capture_internal.h"
#include "engine/core/dirty_track.h"
#include "engine/core/procfs.h"
#include "engine/core/restore_internal.h"
#include "engine/format/format_constants.h"

namespace stasis::core {
namespace capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

bool IsDeleted(const std::string& path) {
  static const std::string kDeleted = " (deleted)";
  return path.size() >= kDeleted.size() &&
         path.compare(path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0;
}

// VmFlags of every VMA, in maps order, as MappingFlags bits.
Result<std::vector<uint32_t>> ReadVmFlags(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/smaps", 1u << 30));
  std::vector<uint32_t> out;
  size_t pos = 0;
  while ((pos = text.find("VmFlags:", pos)) != std::string::npos) {
    size_t eol = text.find('\n', pos);
    std::string line = text.substr(pos + 8, eol - pos - 8);
    uint32_t f = 0;
    for (size_t i = 0; i + 1 < line.size(); ++i) {
      if (line[i] == ' ') continue;
      std::string code = line.substr(i, 2);
      i += 2;
      if (code == "gd")
        f |= format::kMapGrowsDown;
      else if (code == "lo")
        f |= format::kMapLocked;
      else if (code == "dc")
        f |= format::kMapDontFork;
      else if (code == "nh")
        f |= format::kMapNoHugepage;
      else if (code == "hg")
        f |= format::kMapHugepage;
      else if (code == "dd")
        f |= format::kMapDontDump;
      else if (code == "wf")
        f |= format::kMapWipeOnFork;
      else if (code == "nr")
        f |= format::kMapNoReserve;
      else if (code == "mg")
        f |= format::kMapMergeable;
      else if (code == "ht")
        f |= format::kMapHugetlb;
      else if (code == "um")
        f |= kVmUffdMissing;
      else if (code == "uw")
        f |= kVmUffdWp;
    }
    out.push_back(f);
    pos = eol;
  }
  return out;
}

Status Capturer::CaptureMappings(ProcState* p) {
  const std::vector<uint32_t>& vmflags = p->vmflags;
  if (vmflags.size() != p->maps.size())
    return Status::Error(EAGAIN, "memory map of " + Pid(p->pid) + " changed while being read");
  size_t index = 0;
  for (const MapsEntry& e : p->maps) {
    uint32_t extra = vmflags[index++];
    Mapping m;
    m.start = e.start;
    m.end = e.end;
    m.prot = (e.read ? PROT_READ : 0) | (e.write ? PROT_WRITE : 0) | (e.exec ? PROT_EXEC : 0);
    m.flags = (e.shared ? format::kMapShared : format::kMapPrivate) | extra;
    m.pgoff = e.offset;
    const std::string where = Pid(p->pid) + " mapping " + ToHex(e.start) + "-" + ToHex(e.end);
    if (e.path == kTrackAreaMaps && !e.shared && e.end - e.start == kTrackAreaSize) {
      // stasis's own (dirty_track.h): never part of the context.
      p->track_area = e.start;
      p->track_valid = p->mem.Read(e.start, &p->track, sizeof p->track).ok() &&
                       std::memcmp(p->track.magic, kTrackMagic, sizeof kTrackMagic) == 0 &&
                       p->track.version == 1;
      continue;
    }
    if (!options_.transient_dirs.empty() && !e.path.empty() && e.path[0] == '/')
      CheckTransient(p, "", IsDeleted(e.path) ? e.path.substr(0, e.path.size() - 10) : e.path);
    if (e.path == "[vdso]") {
      m.kind = format::kMapVdso;
    } else if (e.path == "[vvar]") {
      m.kind = format::kMapVvar;
    } else if (e.path == "[vvar_vclock]") {
      m.kind = format::kMapVvarVclock;
    } else if (e.path == "[vsyscall]") {
      m.kind = format::kMapVsyscall;
    } else if (e.path == "[heap]") {
      m.kind = format::kMapAnon;
      m.flags |= format::kMapHeap;
    } else if (e.path == "[stack]") {
      m.kind = format::kMapAnon;
      m.flags |= format::kMapStack;
    } else if (e.path == "/anon_hugepage (deleted)" || e.path == "/anon_hugepage") {
      // MAP_HUGETLB anonymous memory: private pages go with the process,
      // a shared segment is saved once like other shared memory.
      if (!e.shared) {
        m.kind = format::kMapAnon;
      } else {
        m.kind = format::kMapSharedAnon;
        m.shmem_id = e.inode;
        STASIS_RETURN_IF_ERROR(NoteSharedMemory(p, e, format::kShmHugetlb, "",
                                                "/proc/" + std::to_string(p->pid) + "/map_files/" +
                                                    ToHex(e.start) + "-" + ToHex(e.end)));
      }
    } else if (e.shared && (e.path == "/dev/zero (deleted)" || e.path.rfind("/memfd:", 0) == 0 ||
                            e.path == "/dev/zero")) {
      // Shared anonymous memory or a memfd: saved once per context.
      m.kind = format::kMapSharedAnon;
      m.shmem_id = e.inode;
      bool memfd = e.path.rfind("/memfd:", 0) == 0;
      std::string name;
      if (memfd) {
        name = e.path.substr(7);
        if (IsDeleted(name)) name.resize(name.size() - 10);
      }
      STASIS_RETURN_IF_ERROR(NoteSharedMemory(
          p, e, memfd ? format::kShmMemfd : format::kShmAnon, name,
          "/proc/" + std::to_string(p->pid) + "/map_files/" + ToHex(e.start) + "-" + ToHex(e.end)));
    } else if (e.path.empty() || e.path.rfind("[anon", 0) == 0) {
      if (e.shared)
        return Status::Error(ENOTSUP, "cannot checkpoint " + where +
                                          ": shared anonymous memory is not supported yet");
      m.kind = format::kMapAnon;
    } else if (e.path[0] == '[') {
      return Status::Error(ENOTSUP,
                           "cannot checkpoint " + where + ": unknown special mapping " + e.path);
    } else {
      if (e.path.rfind("/SYSV", 0) == 0) {
        // SysV shared memory: the inode is the shmid.
        // Ids are shmids offset past inode numbers (shmid 0 is valid).
        m.kind = format::kMapSysvShm;
        MapsEntry seg = e;
        seg.inode = kSysvIdBase + e.inode;
        m.shmem_id = seg.inode;
        STASIS_RETURN_IF_ERROR(NoteSharedMemory(p, seg, format::kShmSysv, "",
                                                "/proc/" + std::to_string(p->pid) + "/map_files/" +
                                                    ToHex(e.start) + "-" + ToHex(e.end)));
        STASIS_RETURN_IF_ERROR(NoteSysvSegment(e.inode, where));
        p->mappings.push_back(std::move(m));
        continue;
      }
      const bool is_exe = e.path == p->info.exe_path;
      const bool by_choice = (is_exe && options_.save_exe) ||
                             (!e.shared && options_.save_private) ||
                             (e.shared && options_.save_shared);
      if (IsDeleted(e.path) || e.inode == 0 || by_choice) {
        // A deleted file: its content is saved once, by value.
        m.kind = format::kMapFileByValue;
        m.path = IsDeleted(e.path) ? e.path.substr(0, e.path.size() - 10) : e.path;
        m.shmem_id = e.inode;
        STASIS_RETURN_IF_ERROR(NoteSharedMemory(p, e, format::kShmFileByValue, m.path,
                                                "/proc/" + std::to_string(p->pid) + "/map_files/" +
                                                    ToHex(e.start) + "-" + ToHex(e.end)));
        p->mappings.push_back(std::move(m));
        continue;
      }
      m.kind = format::kMapFile;
      m.path = e.path;
      struct stat st;
      if (::stat(e.path.c_str(), &st) != 0)
        return Status::FromErrno(errno, "cannot checkpoint " + where + ": stat " + e.path);
      if (static_cast<uint64_t>(st.st_ino) != e.inode)
        return Status::Error(ENOTSUP, "cannot checkpoint " + where + ": " + e.path +
                                          " was replaced by another file since it was mapped");
      m.file_id = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                   static_cast<uint64_t>(st.st_size),
                   st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, st.st_mode};
    }
    if (e.start <= p->stat.start_stack && p->stat.start_stack < e.end && m.kind == format::kMapAnon)
      m.flags |= format::kMapStack;
    if ((m.flags & format::kMapHugetlb) && m.kind == format::kMapFile &&
        (m.flags & format::kMapShared) == 0)
      return Status::Error(ENOTSUP,
                           "cannot checkpoint " + where +
                               ": private mappings of hugetlbfs files are not supported yet");
    p->mappings.push_back(std::move(m));
  }
  return Status::Ok();
}

}  // namespace capture

namespace restore {

using format::FileDesc;
using format::Mapping;

Status Restorer::MoveVdso(RProc* p, const std::vector<MapsEntry>& current) {
  // Saved and current [vvar], [vvar_vclock], [vdso] blocks.
  auto kind_of = [](const std::string& path) -> int {
    if (path == "[vvar]") return format::kMapVvar;
    if (path == "[vvar_vclock]") return format::kMapVvarVclock;
    if (path == "[vdso]") return format::kMapVdso;
    return -1;
  };
  std::map<int, Interval> cur, want;
  for (const MapsEntry& e : current) {
    int k = kind_of(e.path);
    if (k >= 0) cur[k] = {e.start, e.end};
  }
  for (const Mapping& m : p->mappings) {
    if (m.kind == format::kMapVdso || m.kind == format::kMapVvar ||
        m.kind == format::kMapVvarVclock)
      want[static_cast<int>(m.kind)] = {m.start, m.end};
  }
  if (want.empty()) {
    for (auto& [k, iv] : cur) {
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_munmap, iv.lo, iv.hi - iv.lo), "unmap vDSO of " + Pid(p->pid))
              .status());
    }
    return Status::Ok();
  }
  for (auto& [k, iv] : want) {
    if (!cur.count(k) || cur[k].hi - cur[k].lo != iv.hi - iv.lo)
      return Status::Error(ENOTSUP, "cannot restore " + Pid(p->entry.pid) +
                                        ": this kernel's vDSO layout differs from the "
                                        "checkpointing kernel's");
  }
  // Move to a temporary place free in both layouts, then to the target.
  std::vector<Interval> busy;
  for (const MapsEntry& e : current) busy.push_back({e.start, e.end});
  for (const Mapping& m : p->mappings) busy.push_back({m.start, m.end});
  uint64_t total = 0;
  for (auto& [k, iv] : cur) total += iv.hi - iv.lo;
  uint64_t tmp = FindFree(busy, total, 0x200000000ull);
  if (!tmp) return Status::Error(ENOMEM, "no room to move the vDSO of " + Pid(p->pid));
  std::map<int, uint64_t> at;
  for (auto& [k, iv] : cur) {
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_mremap, iv.lo, iv.hi - iv.lo, iv.hi - iv.lo,
                                        MREMAP_MAYMOVE | MREMAP_FIXED, tmp),
                                   "move vDSO of " + Pid(p->pid))
                               .status());
    at[k] = tmp;
    tmp += iv.hi - iv.lo;
  }
  for (auto& [k, iv] : cur) {
    if (!want.count(k)) {
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_munmap, at[k], iv.hi - iv.lo), "unmap vDSO part of " + Pid(p->pid))
              .status());
      continue;
    }
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_mremap, at[k], iv.hi - iv.lo, iv.hi - iv.lo,
                                        MREMAP_MAYMOVE | MREMAP_FIXED, want[k].lo),
                                   "move vDSO of " + Pid(p->pid) + " to 0x" + ToHex(want[k].lo))
                               .status());
  }
  return Status::Ok();
}

Status Restorer::BuildAddressSpace(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  for (const Mapping& m : p->mappings) {
    if (m.start >= m.end || (m.start | m.end) % kPageSize != 0 ||
        (m.end > kUserTop && m.kind != format::kMapVsyscall))
      return Status::Corrupt("mapping " + ToHex(m.start) + "-" + ToHex(m.end) + " of " + who +
                             " is not a valid user range");
  }
  STASIS_ASSIGN_OR_RETURN(std::vector<MapsEntry> current, ReadMaps(p->pid));
  // 1. Keep the scratch area out of the way of the saved layout.
  std::vector<Interval> target;
  for (const Mapping& m : p->mappings)
    if (m.kind != format::kMapVsyscall) target.push_back({m.start, m.end});
  bool clash = false;
  for (const Interval& iv : target)
    clash |= iv.lo < p->scratch + kScratchSize && p->scratch < iv.hi;
  if (clash) {
    std::vector<Interval> busy = target;
    for (const MapsEntry& e : current) busy.push_back({e.start, e.end});
    uint64_t to = FindFree(busy, kScratchSize, 0x100000000ull);
    if (!to) return Status::Error(ENOMEM, "no room for the restorer in " + who);
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_mremap, p->scratch, kScratchSize, kScratchSize,
                                        MREMAP_MAYMOVE | MREMAP_FIXED, to),
                                   "move restorer scratch in " + who)
                               .status());
    p->scratch = to;
    STASIS_ASSIGN_OR_RETURN(current, ReadMaps(p->pid));
  }
  // 2. Drop everything inherited except scratch and the vDSO family.
  for (const MapsEntry& e : current) {
    if (e.start == p->scratch || e.path == "[vdso]" || e.path == "[vvar]" ||
        e.path == "[vvar_vclock]" || e.path == "[vsyscall]")
      continue;
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_munmap, e.start, e.end - e.start), "unmap inherited memory of " + who)
            .status());
  }
  STASIS_RETURN_IF_ERROR(MoveVdso(p, current));
  // 3. Map every saved VMA.
  for (const Mapping& m : p->mappings) {
    uint64_t len = m.end - m.start;
    int flags = MAP_FIXED | ((m.flags & format::kMapShared) ? MAP_SHARED : MAP_PRIVATE);
    if (m.flags & format::kMapGrowsDown) flags |= MAP_GROWSDOWN;
    if (m.flags & format::kMapNoReserve) flags |= MAP_NORESERVE;
    if ((m.flags & format::kMapHugetlb) && m.kind == format::kMapAnon) flags |= MAP_HUGETLB;
    switch (m.kind) {
      case format::kMapVdso:
      case format::kMapVvar:
      case format::kMapVvarVclock:
      case format::kMapVsyscall:
        continue;
      case format::kMapAnon: {
        STASIS_RETURN_IF_ERROR(
            Checked(
                Call(p, SYS_mmap, m.start, len, m.prot,
                     static_cast<uint64_t>(flags | MAP_ANONYMOUS), static_cast<uint64_t>(-1), 0),
                "map memory " + ToHex(m.start) + "-" + ToHex(m.end) + " of " + who)
                .status());
        break;
      }
      case format::kMapFile: {
        std::string path = Relocate(m.path);
        struct stat st;
        if (::stat(path.c_str(), &st) != 0)
          return Status::FromErrno(errno, "cannot restore " + who + ": mapped file " + path);
        // A relocated file is a copy: its size must match, its mtime may not.
        const bool relocated = path != m.path;
        if (static_cast<uint64_t>(st.st_size) != m.file_id.size ||
            (!relocated &&
             st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec != m.file_id.mtime_ns))
          return Status::Error(ESTALE, "cannot restore " + who + ": mapped file " + path +
                                           " changed since the checkpoint (size or mtime)");
        STASIS_ASSIGN_OR_RETURN(uint64_t path_addr, PutPath(p, path));
        bool rw = (m.flags & format::kMapShared) && (m.prot & PROT_WRITE);
        STASIS_ASSIGN_OR_RETURN(
            long fd, Checked(Call(p, SYS_openat, static_cast<uint64_t>(AT_FDCWD), path_addr,
                                  rw ? O_RDWR : O_RDONLY),
                             "open " + path + " in " + who));
        STASIS_ASSIGN_OR_RETURN(
            long r, Call(p, SYS_mmap, m.start, len, m.prot, static_cast<uint64_t>(flags),
                         static_cast<uint64_t>(fd), m.pgoff));
        STASIS_ASSIGN_OR_RETURN(long c, Call(p, SYS_close, static_cast<uint64_t>(fd)));
        (void)c;
        STASIS_RETURN_IF_ERROR(SysErr(r, "map " + path + " at " + ToHex(m.start) + " in " + who));
        break;
      }
      case format::kMapSysvShm: {
        auto it = sysv_ids_.find(m.shmem_id);
        if (it == sysv_ids_.end())
          return Status::Corrupt("mapping of unknown SysV segment in " + who);
        uint64_t shmflg = (m.prot & PROT_WRITE) ? 0 : SHM_RDONLY;
        if (m.prot & PROT_EXEC) shmflg |= SHM_EXEC;
        STASIS_ASSIGN_OR_RETURN(
            long r, Checked(Call(p, SYS_shmat, static_cast<uint64_t>(it->second), m.start, shmflg),
                            "attach SysV segment at " + ToHex(m.start) + " in " + who));
        if (static_cast<uint64_t>(r) != m.start || m.pgoff != 0)
          return Status::Error(ENOTSUP, "cannot restore " + who + ": partial SysV attachment");
        // The segment may be larger than this (split) mapping: trim the rest.
        uint64_t seg = (shm_size_[m.shmem_id] + kPageSize - 1) & ~(kPageSize - 1);
        if (seg > len) (void)Call(p, SYS_munmap, m.end, seg - len);
        STASIS_ASSIGN_OR_RETURN(r, Checked(Call(p, SYS_mprotect, m.start, len, m.prot),
                                           "protect SysV segment in " + who));
        break;
      }
      case format::kMapSharedAnon:
      case format::kMapFileByValue: {
        auto it = shm_.find(m.shmem_id);
        if (it == shm_.end()) return Status::Corrupt("mapping of unknown shared memory in " + who);
        // A VMA keeps its open file: map a read-only one unless the mapping
        // writes through (else the copy of an executable counts as written).
        UniqueFd ro;
        int give = it->second.get();
        if (m.kind == format::kMapFileByValue &&
            !((m.flags & format::kMapShared) && (m.prot & PROT_WRITE))) {
          std::string self = "/proc/self/fd/" + std::to_string(it->second.get());
          ro.reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
          if (!ro) return Status::FromErrno(errno, "reopen saved copy of " + m.path);
          give = ro.get();
        }
        STASIS_ASSIGN_OR_RETURN(
            long fd, Checked(Call(p, SYS_pidfd_getfd, static_cast<uint64_t>(self_pidfd_.get()),
                                  static_cast<uint64_t>(give), 0),
                             "hand shared memory to " + who));
        STASIS_ASSIGN_OR_RETURN(
            long r, Call(p, SYS_mmap, m.start, len, m.prot, static_cast<uint64_t>(flags),
                         static_cast<uint64_t>(fd), m.pgoff));
        (void)Call(p, SYS_close, static_cast<uint64_t>(fd));
        STASIS_RETURN_IF_ERROR(SysErr(r, "map shared memory at " + ToHex(m.start) + " in " + who));
        break;
      }
      default:
        return Status::Error(ENOTSUP, "cannot restore " + who + ": mapping kind " +
                                          std::to_string(m.kind) + " is not supported yet");
    }
    static const struct {
      uint32_t flag;
      int advice;
    } kAdvice[] = {
        {format::kMapNoHugepage, MADV_NOHUGEPAGE}, {format::kMapHugepage, MADV_HUGEPAGE},
        {format::kMapDontDump, MADV_DONTDUMP},     {format::kMapWipeOnFork, MADV_WIPEONFORK},
        {format::kMapDontFork, MADV_DONTFORK},     {format::kMapMergeable, MADV_MERGEABLE}};
    for (const auto& a : kAdvice) {
      if (!(m.flags & a.flag)) continue;
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_madvise, m.start, len, static_cast<uint64_t>(a.advice)),
                  "restore memory advice of " + ToHex(m.start) + " in " + who)
              .status());
    }
    if (m.flags & format::kMapLocked) {
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_mlock, m.start, len), "lock memory " + ToHex(m.start) + " in " + who)
              .status());
    }
  }
  p->mm_built = true;
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core
