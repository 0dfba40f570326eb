// The ordering and cross-reference rules of a context file; see validator.h
// and docs/format.md, "Order and cross-references".
#include "engine/format/validator.h"

#include <algorithm>
#include <string>

#include "engine/format/fd_payloads.h"
#include "engine/format/format_constants.h"
#include "engine/format/tcp_state.h"

namespace stasis::format::internal {
namespace {

std::string Hex(uint64_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s;
  do {
    s.insert(s.begin(), kDigits[v & 0xf]);
    v >>= 4;
  } while (v != 0);
  return "0x" + s;
}

std::string Str(uint64_t v) { return std::to_string(v); }

Status CheckSiginfo(const char* what, size_t size) {
  if (size % kSiginfoSize == 0) return Status::Ok();
  return Status::Corrupt(std::string(what) + " is " + Str(size) + " bytes, not a whole number of " +
                         Str(kSiginfoSize) + "-byte siginfo records");
}

// Runs sorted, non-overlapping (also with `*end` from earlier sections of
// the same owner), page aligned, non-empty and below `limit`. Advances *end
// and sums the pages.
Status CheckRuns(const std::vector<PageRun>& runs, uint64_t limit, uint64_t* end, uint64_t* pages) {
  uint64_t last = *end, total = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const PageRun& r = runs[i];
    std::string where =
        "run[" + Str(i) + "] (start " + Hex(r.start) + ", " + Str(r.npages) + " pages): ";
    if (r.start % kPageSize != 0) return Status::Corrupt(where + "start is not page aligned");
    if (r.npages == 0) return Status::Corrupt(where + "has no pages");
    if (r.start >= limit || r.npages > (limit - r.start) / kPageSize) {
      return Status::Corrupt(where + "ends beyond " + Hex(limit));
    }
    if (r.start < last) {
      return Status::Corrupt(where + "starts below the end " + Hex(last) + " of the run before it");
    }
    last = r.start + r.npages * kPageSize;
    total += r.npages;  // runs are disjoint below limit <= 2^47: no overflow
  }
  *end = last;
  *pages = total;
  return Status::Ok();
}

// The typed payload of the fd's kind (fd_payloads.h) decodes.
Status CheckPayload(const FileDesc& f) {
  switch (f.kind) {
    case kFileTimerfd:
      return DecodeTimerfdState(f.data).status();
    case kFileEpoll:
      return DecodeEpollTargets(f.data).status();
    case kFileEventfd:
      return DecodeEventfdState(f.data).status();
    case kFilePtyMaster:
    case kFilePtySlave:
      return DecodeTerminalState(f.data).status();
    case kFileUnixSocket:
      return DecodeSocketQueue(f.data).status();
    default:
      return Status::Ok();
  }
}

}  // namespace

Status ContextValidator::Unexpected(SectionType found) const {
  std::string want;
  switch (stage_) {
    case Stage::kImage:
      want = "Image";
      break;
    case Stage::kTree:
      want = "Tree";
      break;
    case Stage::kShared:
      want = "SharedMemory or Process of pid " + Str(tree_.processes[0].pid);
      break;
    case Stage::kMappings:
      want = "Mappings of pid " + Str(Current().pid);
      break;
    case Stage::kFiles:
      want = "Files of pid " + Str(Current().pid);
      break;
    case Stage::kThreads:
      if (!ProcessComplete()) {
        want = "Thread " + Str(Current().tids[threads_seen_]) + " of pid " + Str(Current().pid);
      } else if (processes_seen_ < tree_.processes.size()) {
        want = "Pages of pid " + Str(Current().pid) + " or Process of pid " +
               Str(tree_.processes[processes_seen_].pid);
      } else {
        want = "Pages of pid " + Str(Current().pid) + " or End";
      }
      break;
    case Stage::kDone:
      return Status::Corrupt(std::string(SectionName(found)) + " section after End");
  }
  return Status::Corrupt("out of order: expected " + want + ", found " + SectionName(found));
}

Status ContextValidator::CheckCurrentPid(uint64_t pid) const {
  if (pid == Current().pid) return Status::Ok();
  if (pid > UINT32_MAX || pid_index_.count(static_cast<uint32_t>(pid)) == 0) {
    return Status::Corrupt("pid " + Str(pid) + " is not in the Tree");
  }
  return Status::Corrupt("is for pid " + Str(pid) + " but follows the Process of pid " +
                         Str(Current().pid));
}

bool ContextValidator::ProcessComplete() const {
  return stage_ == Stage::kThreads && threads_seen_ == Current().tids.size();
}

Status ContextValidator::Image(const ImageInfo& image) {
  if (stage_ != Stage::kImage) return Unexpected(SectionType::kImage);
  if (image.scope > kScopeSid) return Status::Corrupt("unknown scope " + Str(image.scope));
  if ((image.parent_token != 0) != !image.parent.empty())
    return Status::Corrupt(image.parent.empty() ? "a parent token without a parent path"
                                                : "a parent path without a parent token");
  has_parent_ = image.parent_token != 0;
  stage_ = Stage::kTree;
  counts_.section_count++;
  return Status::Ok();
}

Status ContextValidator::Tree(const ProcessTree& tree) {
  if (stage_ != Stage::kTree) return Unexpected(SectionType::kTree);
  if (tree.processes.empty()) return Status::Corrupt("the Tree has no process");
  std::unordered_map<uint32_t, size_t> index;
  std::unordered_set<uint32_t> tids, tasks;
  for (size_t i = 0; i < tree.processes.size(); ++i) {
    const ProcessEntry& e = tree.processes[i];
    std::string where = "process[" + Str(i) + "] (pid " + Str(e.pid) + "): ";
    if (e.pid == 0) return Status::Corrupt(where + "pid 0");
    if (!index.emplace(e.pid, i).second) return Status::Corrupt(where + "pid listed twice");
    if (e.tids.empty() || e.tids[0] != e.pid) {
      return Status::Corrupt(where + "the first tid must be the pid");
    }
    for (uint32_t tid : e.tids) {
      if (tid == 0 || !tids.insert(tid).second) {
        return Status::Corrupt(where + "tid " + Str(tid) + " is 0 or listed twice");
      }
    }
    if (e.ppid == e.pid) return Status::Corrupt(where + "is its own parent");
    if (e.flags & kProcTask) {
      if (e.ppid != 0) return Status::Corrupt(where + "heads a task but has a parent");
      if (!tasks.insert(e.task).second)
        return Status::Corrupt(where + "task " + Str(e.task) + " is listed twice");
    } else if (e.task != 0) {
      return Status::Corrupt(where + "has a task number but heads no task");
    }
  }
  for (size_t i = 0; i < tree.processes.size(); ++i) {
    const ProcessEntry& e = tree.processes[i];
    auto parent = index.find(e.ppid);
    if (parent != index.end() && parent->second > i) {
      return Status::Corrupt("process[" + Str(i) + "] (pid " + Str(e.pid) +
                             "): listed before its parent pid " + Str(e.ppid));
    }
  }
  tree_ = tree;
  pid_index_ = std::move(index);
  stage_ = Stage::kShared;
  counts_.section_count++;
  return Status::Ok();
}

Status ContextValidator::Shared(const SharedMemory& shm) {
  if (stage_ != Stage::kShared) return Unexpected(SectionType::kSharedMemory);
  if (shm.id == 0) return Status::Corrupt("shared memory id 0");
  if (shm_ids_.count(shm.id) != 0) {
    return Status::Corrupt("shared memory id " + Str(shm.id) + " appears twice");
  }
  if (shm.kind > kShmLastKind)
    return Status::Corrupt("unknown shared memory kind " + Str(shm.kind));
  if (shm.size > kUserSpaceEnd) {
    return Status::Corrupt("shared memory size " + Str(shm.size) + " is larger than user space");
  }
  shm_ids_.insert(shm.id);
  have_shm_ = true;
  shm_id_ = shm.id;
  shm_limit_ = (shm.size + kPageSize - 1) / kPageSize * kPageSize;
  pages_end_ = 0;
  counts_.section_count++;
  counts_.shared_count++;
  return Status::Ok();
}

Status ContextValidator::Process(const ProcessInfo& process) {
  if (stage_ != Stage::kShared && !ProcessComplete()) return Unexpected(SectionType::kProcess);
  auto it = pid_index_.find(process.pid);
  if (it == pid_index_.end())
    return Status::Corrupt("pid " + Str(process.pid) + " is not in the Tree");
  if (processes_seen_ >= tree_.processes.size() || it->second != processes_seen_) {
    if (it->second < processes_seen_) {
      return Status::Corrupt("pid " + Str(process.pid) + " appears a second time");
    }
    return Status::Corrupt("pid " + Str(process.pid) + " is out of Tree order: expected pid " +
                           Str(tree_.processes[processes_seen_].pid));
  }
  STASIS_RETURN_IF_ERROR(CheckSiginfo("pending_shared", process.pending_shared.size()));
  processes_seen_++;
  threads_seen_ = 0;
  have_shm_ = false;
  ranges_.clear();
  anon_ranges_.clear();
  parent_seen_ = false;
  parent_runs_.clear();
  stage_ = Stage::kMappings;
  counts_.section_count++;
  counts_.process_count++;
  return Status::Ok();
}

Status ContextValidator::Mappings(uint32_t pid, const std::vector<Mapping>& mappings) {
  if (stage_ != Stage::kMappings) return Unexpected(SectionType::kMappings);
  STASIS_RETURN_IF_ERROR(CheckCurrentPid(pid));
  uint64_t prev_end = 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges, anon;
  ranges.reserve(mappings.size());
  for (size_t i = 0; i < mappings.size(); ++i) {
    const Mapping& m = mappings[i];
    std::string where = "mapping[" + Str(i) + "] (" + Hex(m.start) + "-" + Hex(m.end) + "): ";
    if (m.start >= m.end) return Status::Corrupt(where + "empty or reversed");
    if (m.start % kPageSize != 0 || m.end % kPageSize != 0) {
      return Status::Corrupt(where + "not page aligned");
    }
    if (m.kind > kMapFileByValue) return Status::Corrupt(where + "unknown kind " + Str(m.kind));
    if (m.end > kUserSpaceEnd && m.kind != kMapVsyscall) {
      return Status::Corrupt(where + "beyond user space");
    }
    if (m.start < prev_end) return Status::Corrupt(where + "overlaps or precedes the one before");
    if (m.pgoff % kPageSize != 0) {
      return Status::Corrupt(where + "file offset " + Str(m.pgoff) + " is not page aligned");
    }
    if ((m.kind == kMapSharedAnon || m.kind == kMapSysvShm || m.kind == kMapFileByValue) &&
        shm_ids_.count(m.shmem_id) == 0) {
      return Status::Corrupt(where + "shared memory id " + Str(m.shmem_id) +
                             " has no SharedMemory section");
    }
    prev_end = m.end;
    ranges.emplace_back(m.start, m.end);
    if (m.kind == kMapAnon && !(m.flags & kMapShared)) anon.emplace_back(m.start, m.end);
  }
  ranges_ = std::move(ranges);
  anon_ranges_ = std::move(anon);
  stage_ = Stage::kFiles;
  counts_.section_count++;
  return Status::Ok();
}

Status ContextValidator::Files(uint32_t pid, const std::vector<FileDesc>& files) {
  if (stage_ != Stage::kFiles) return Unexpected(SectionType::kFiles);
  STASIS_RETURN_IF_ERROR(CheckCurrentPid(pid));
  std::vector<int32_t> fds;
  fds.reserve(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    const FileDesc& f = files[i];
    std::string where = "file[" + Str(i) + "] (fd " + std::to_string(f.fd) + "): ";
    if (f.fd < 0) return Status::Corrupt(where + "negative fd");
    if (f.kind == kFileTcpSocket) {  // its own payload, checked whole by its decoder
      auto tcp = DecodeTcpState(f.tcp);
      if (!tcp) return Status::Corrupt(where + tcp.error().message());
      if (tcp->peer_place == kTcpPeerHere) {
        auto [it, added] = tcp_peers_.emplace(f.sock_inode, tcp->peer_inode);
        if (!added && it->second != tcp->peer_inode)
          return Status::Corrupt(where + "TCP socket " + Str(f.sock_inode) + " names two peers");
      }
      fds.push_back(f.fd);
      continue;
    }
    if (f.kind > kFilePtySlave) return Status::Corrupt(where + "unknown kind " + Str(f.kind));
    if ((f.kind == kFilePtyMaster || f.kind == kFilePtySlave) && f.pos > (1u << 20))
      return Status::Corrupt(where + "pty index " + Str(f.pos));
    STASIS_RETURN_IF_ERROR(CheckPayload(f).Prefixed(where.substr(0, where.size() - 2)));
    if (f.outside_state != 0 && f.outside_state != kOutsideConnected &&
        f.outside_state != kOutsideUnconnected && f.outside_state != kOutsideListening)
      return Status::Corrupt(where + "unknown outside_state " + Str(f.outside_state));
    if ((f.outside_state || !f.outside_peer.empty()) &&
        (f.kind != kFileUnixSocket || !(f.fd_flags & kFdOutside)))
      return Status::Corrupt(
          where + "outside_state or outside_peer on an fd that is not a socket saved as closed");
    fds.push_back(f.fd);
  }
  std::sort(fds.begin(), fds.end());
  auto dup = std::adjacent_find(fds.begin(), fds.end());
  if (dup != fds.end()) return Status::Corrupt("fd " + std::to_string(*dup) + " listed twice");
  stage_ = Stage::kThreads;
  counts_.section_count++;
  return Status::Ok();
}

Status ContextValidator::Thread(uint32_t pid, const ThreadInfo& thread) {
  if (stage_ != Stage::kThreads || ProcessComplete()) {
    if (stage_ == Stage::kThreads && pid == Current().pid) {
      return Status::Corrupt("pid " + Str(pid) + " has more Thread sections than its " +
                             Str(Current().tids.size()) + " tids in the Tree");
    }
    return Unexpected(SectionType::kThread);
  }
  STASIS_RETURN_IF_ERROR(CheckCurrentPid(pid));
  uint32_t want = Current().tids[threads_seen_];
  if (thread.tid != want) {
    return Status::Corrupt("tid " + Str(thread.tid) + " of pid " + Str(pid) +
                           " does not match the Tree: expected tid " + Str(want));
  }
  STASIS_RETURN_IF_ERROR(CheckSiginfo("pending", thread.pending.size()));
  threads_seen_++;
  counts_.section_count++;
  counts_.thread_count++;
  if (threads_seen_ == Current().tids.size()) pages_end_ = 0;
  return Status::Ok();
}

Status ContextValidator::CheckRunsInMappings(
    const std::vector<PageRun>& runs, const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
    const char* which) const {
  for (size_t i = 0; i < runs.size(); ++i) {
    uint64_t start = runs[i].start, end = start + runs[i].npages * kPageSize;
    // First mapping ending above start; it must begin at or below start and
    // be followed by adjacent mappings up to end.
    auto it = std::upper_bound(
        ranges.begin(), ranges.end(), start,
        [](uint64_t a, const std::pair<uint64_t, uint64_t>& r) { return a < r.second; });
    bool covered = it != ranges.end() && it->first <= start;
    while (covered && it->second < end) {
      auto next = it + 1;
      covered = next != ranges.end() && next->first == it->second;
      it = next;
    }
    if (!covered) {
      return Status::Corrupt("run[" + Str(i) + "] (" + Hex(start) + "-" + Hex(end) +
                             ") is not inside the " + which + "mappings of pid " +
                             Str(Current().pid));
    }
  }
  return Status::Ok();
}

Status ContextValidator::Pages(const PageOwner& owner, const std::vector<PageRun>& runs,
                               uint64_t* data_bytes) {
  uint64_t end = pages_end_, pages = 0;
  if (owner.kind == PageOwner::kSharedMemory) {
    if (stage_ != Stage::kShared || !have_shm_) return Unexpected(SectionType::kPages);
    if (owner.id != shm_id_) {
      return Status::Corrupt("pages of shared memory " + Str(owner.id) +
                             " follow the SharedMemory section of id " + Str(shm_id_));
    }
    STASIS_RETURN_IF_ERROR(CheckRuns(runs, shm_limit_, &end, &pages));
  } else if (owner.kind == PageOwner::kProcess) {
    if (!ProcessComplete()) return Unexpected(SectionType::kPages);
    STASIS_RETURN_IF_ERROR(CheckCurrentPid(owner.id));
    STASIS_RETURN_IF_ERROR(CheckRuns(runs, kUserSpaceEnd, &end, &pages));
    STASIS_RETURN_IF_ERROR(CheckRunsInMappings(runs, ranges_, ""));
    STASIS_RETURN_IF_ERROR(CheckNotInParent(runs));
  } else {
    return Status::Corrupt("unknown page owner kind " + Str(owner.kind));
  }
  pages_end_ = end;
  *data_bytes = pages * kPageSize;
  counts_.section_count++;
  counts_.page_bytes += *data_bytes;
  return Status::Ok();
}

Status ContextValidator::ParentPages(uint32_t pid, const std::vector<PageRun>& runs) {
  if (!ProcessComplete()) return Unexpected(SectionType::kParentPages);
  STASIS_RETURN_IF_ERROR(CheckCurrentPid(pid));
  if (!has_parent_) return Status::Corrupt("the Image names no parent context");
  if (parent_seen_) return Status::Corrupt("a second ParentPages section for pid " + Str(pid));
  if (pages_end_ != 0) return Status::Corrupt("follows Pages of pid " + Str(pid));
  uint64_t end = 0, pages = 0;
  STASIS_RETURN_IF_ERROR(CheckRuns(runs, kUserSpaceEnd, &end, &pages));
  STASIS_RETURN_IF_ERROR(CheckRunsInMappings(runs, anon_ranges_, "private anonymous "));
  parent_seen_ = true;
  parent_runs_ = runs;
  counts_.section_count++;
  return Status::Ok();
}

// No run of a Pages section overlaps a run the parent holds.
Status ContextValidator::CheckNotInParent(const std::vector<PageRun>& runs) const {
  if (parent_runs_.empty()) return Status::Ok();
  for (size_t i = 0; i < runs.size(); ++i) {
    const uint64_t start = runs[i].start, end = start + runs[i].npages * kPageSize;
    // First parent run ending above start.
    auto it = std::upper_bound(
        parent_runs_.begin(), parent_runs_.end(), start,
        [](uint64_t a, const PageRun& r) { return a < r.start + r.npages * kPageSize; });
    if (it != parent_runs_.end() && it->start < end)
      return Status::Corrupt("run[" + Str(i) + "] (" + Hex(start) + "-" + Hex(end) +
                             ") overlaps pages the parent context holds (" + Hex(it->start) + ", " +
                             Str(it->npages) + " pages)");
  }
  return Status::Ok();
}

Status ContextValidator::End(EndCounts* counts) {
  if (stage_ == Stage::kDone || (stage_ != Stage::kShared && !ProcessComplete())) {
    return Unexpected(SectionType::kEnd);
  }
  if (processes_seen_ < tree_.processes.size()) {
    return Status::Corrupt("End before the Process of pid " +
                           Str(tree_.processes[processes_seen_].pid));
  }
  for (const auto& [inode, peer] : tcp_peers_) {
    auto back = tcp_peers_.find(peer);
    if (back == tcp_peers_.end() || back->second != inode)
      return Status::Corrupt("TCP socket " + Str(inode) + " names peer " + Str(peer) +
                             ", which is not a TCP socket connected to it in this context");
  }
  stage_ = Stage::kDone;
  *counts = counts_;
  return Status::Ok();
}

}  // namespace stasis::format::internal
