#include "engine/core/agent_client.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <thread>

#include "engine/agent/agent_abi.h"
#include "engine/agent/include/blcr_common.h"
#include "engine/base/fd.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"

namespace stasis::core {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kAgentLink[] = "/memfd:" STASIS_AGENT_MEMFD_NAME " (deleted)";

uint32_t Load(const volatile uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void Store(volatile uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
void Wake(volatile uint32_t* p) {
  ::syscall(SYS_futex, p, FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}
void WaitFor(volatile uint32_t* p, uint32_t seen, int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  ::syscall(SYS_futex, p, FUTEX_WAIT, seen, &ts, nullptr, 0);
}

std::string CodeName(int code) {
  switch (code) {
    case CR_ETEMPFAIL:
      return "CR_ETEMPFAIL";
    case CR_EPERMFAIL:
      return "CR_EPERMFAIL";
    default:
      return "code " + std::to_string(code);
  }
}

}  // namespace

int BlcrScope(format::ScopeKind scope) {
  switch (scope) {
    case format::kScopePid:
      return CR_SCOPE_PROC;
    case format::kScopePgid:
      return CR_SCOPE_PGRP;
    case format::kScopeSid:
      return CR_SCOPE_SESS;
    case format::kScopeTree:
      return CR_SCOPE_TREE;
  }
  return CR_SCOPE_TREE;
}

struct AgentSession::Agent {
  pid_t pid = 0;
  UniqueFd fd;
  stasis_agent_block* blk = nullptr;
  bool posted = false;    // we sent it a request
  bool finished = false;  // and told it the outcome
  TraceCreds creds;       // its credentials when we sent the request
  ~Agent() {
    if (blk) ::munmap(blk, STASIS_AGENT_BLOCK_SIZE);
  }
};

AgentSession::AgentSession(AgentRequest request) : request_(std::move(request)) {}

AgentSession::~AgentSession() { Finish(CR_ETEMPFAIL); }

// A block is mapped only from a memfd sealed against shrinking: the process
// owns the memfd and could otherwise truncate it while we hold the mapping,
// and our next access would die of SIGBUS. With F_SEAL_SHRINK the size
// checked here can only grow, so the whole mapping stays backed.
namespace {
Result<void*> MapSealedBlock(int fd) {
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK))
    return Status::Error(EPERM, "its agent block is not sealed against shrinking (F_SEAL_SHRINK)");
  struct stat st;
  if (::fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(STASIS_AGENT_BLOCK_SIZE))
    return Status::Error(EPERM, "its agent block is smaller than " +
                                    std::to_string(STASIS_AGENT_BLOCK_SIZE) + " bytes");
  void* p = ::mmap(nullptr, STASIS_AGENT_BLOCK_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "map its agent block");
  return p;
}
}  // namespace

// Opens the agent block of `pid`, if it has one that is its own (a raw
// fork without libcr's atfork handler would share its parent's).
Result<std::unique_ptr<AgentSession::Agent>> AgentSession::FindAgentBlock(pid_t pid) {
  auto fds = ListFds(pid);
  if (!fds) return std::unique_ptr<Agent>();
  const std::string proc = "/proc/" + std::to_string(pid) + "/fd/";
  for (int fd : *fds) {
    auto link = ReadLink(proc + std::to_string(fd));
    if (!link || *link != kAgentLink) continue;
    UniqueFd f(::open((proc + std::to_string(fd)).c_str(), O_RDWR | O_CLOEXEC));
    if (!f) return std::unique_ptr<Agent>();
    auto p = MapSealedBlock(f.get());
    if (!p)
      return Status::Error(p.error().code(),
                           "cannot run the checkpoint callbacks of pid " + std::to_string(pid) +
                               ": " + p.error().message() +
                               " (a libcr older than this engine, or not libcr's)");
    auto a = std::make_unique<AgentSession::Agent>();
    a->pid = pid;
    a->fd = std::move(f);
    a->blk = static_cast<stasis_agent_block*>(*p);
    if (a->blk->magic != STASIS_AGENT_MAGIC || a->blk->version != STASIS_AGENT_VERSION ||
        a->blk->pid != InnermostPid(pid))
      return std::unique_ptr<Agent>();
    return a;
  }
  return std::unique_ptr<Agent>();
}

Status AgentSession::Prepare(const std::vector<pid_t>& pids,
                             const std::map<pid_t, UniqueFd>& pidfds_for_perm) {
  const auto deadline = request_.timeout_seconds > 0
                            ? Clock::now() + std::chrono::milliseconds(
                                                 static_cast<long>(request_.timeout_seconds * 1000))
                            : Clock::time_point::max();
  std::vector<Agent*> waiting;
  for (pid_t pid : pids) {
    auto st = ReadStat(pid);
    if (!st || st->state == 'Z') continue;
    auto found = FindAgentBlock(pid);
    if (!found) return found.error();
    std::unique_ptr<Agent> agent = std::move(*found);
    if (!agent) continue;
    // Opened through /proc/PID: still the checked process only while the
    // pidfd taken before its check names a live process (a pid is reused
    // only after its process is gone).
    auto pinned = pidfds_for_perm.find(pid);
    if (pinned == pidfds_for_perm.end() || !PidfdAlive(pinned->second.get())) continue;
    stasis_agent_block* b = agent->blk;
    uint32_t flags = b->flags;
    bool named = pid == request_.target &&
                 (request_.scope == format::kScopePid || request_.scope == format::kScopeTree);
    if ((flags & STASIS_AGENT_F_OMIT) || ((flags & STASIS_AGENT_F_OMIT_UNLESS_TARGET) && !named)) {
      omitted_.insert(pid);
      continue;
    }
    // A stopped process cannot run callbacks: it is checkpointed as it is.
    if (!(flags & STASIS_AGENT_F_ACTIVE) || st->state == 'T' || st->state == 't') continue;
    // One checkpointer at a time; the kernel drops the lock if we die.
    bool locked = false;
    for (int i = 0; i < 100 && !locked; ++i) {
      locked = ::flock(agent->fd.get(), LOCK_EX | LOCK_NB) == 0;
      if (!locked) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!locked)
      return Status::Error(
          EBUSY, "pid " + std::to_string(pid) + " is already being checkpointed; retry later");
    // The previous checkpoint's callbacks may still be finishing.
    auto idle_by = Clock::now() + std::chrono::seconds(10);
    while (Load(&b->state) != STASIS_AGENT_ST_IDLE) {
      if (Clock::now() > idle_by)
        return Status::Error(EBUSY, "pid " + std::to_string(pid) +
                                        ": callbacks of its previous checkpoint are still running");
      WaitFor(&b->state, Load(&b->state), 10);
    }
    // Its credentials bound what it may forward to: taken now, and its
    // forwards refused if they differ when we read them (a setuid exec).
    auto creds = ReadTraceCreds(pid);
    if (!creds) continue;  // gone
    agent->creds = *creds;
    b->requester = request_.requester;
    b->target = request_.target;
    b->scope = BlcrScope(request_.scope);
    b->signal = request_.signal;
    Store(&b->request_flags, request_.final ? STASIS_AGENT_RQ_FINAL : 0u);
    std::snprintf(b->dest, sizeof b->dest, "%s", request_.dest.c_str());
    b->cmd_code = 0;
    b->state_code = 0;
    b->state_perm = 0;
    __atomic_fetch_add(&b->seq, 1, __ATOMIC_ACQ_REL);
    Store(&b->cmd, STASIS_AGENT_CMD_REQUEST);
    Wake(&b->cmd);
    agent->posted = true;
    waiting.push_back(agent.get());
    agents_.push_back(std::move(agent));
  }

  // Every agent runs its callbacks up to cr_checkpoint() (or opts out, or
  // cancels the checkpoint).
  int fail_code = 0;
  bool perm = false;
  pid_t failed_pid = 0;
  for (Agent* a : waiting) {
    stasis_agent_block* b = a->blk;
    for (;;) {
      uint32_t s = Load(&b->state);
      if (s == STASIS_AGENT_ST_READY) break;
      if (s == STASIS_AGENT_ST_OMIT) {
        omitted_.insert(a->pid);
        break;
      }
      if (s == STASIS_AGENT_ST_FAILED) {
        if (!fail_code) {
          fail_code = b->state_code > 0 ? b->state_code : CR_ETEMPFAIL;
          perm = b->state_perm != 0;
          failed_pid = a->pid;
        }
        break;
      }
      auto st = ReadStat(a->pid);
      if (!st || st->state == 'Z')
        return Status::Error(ESRCH, "pid " + std::to_string(a->pid) +
                                        " exited while running its checkpoint callbacks");
      if (Clock::now() > deadline)
        return Status::Error(ETIMEDOUT, "pid " + std::to_string(a->pid) +
                                            ": checkpoint callbacks did not finish within " +
                                            std::to_string(request_.timeout_seconds) + " s");
      WaitFor(&b->state, s, 100);
    }
    if (fail_code) break;
  }
  if (fail_code) {
    Finish(fail_code);
    if (perm) {
      // Only checked processes, through the pidfd taken when they were
      // checked: a pid reused since then is not touched.
      for (const auto& [pid, pidfd] : pidfds_for_perm)
        if (!omitted_.count(pid)) (void)PidfdSignal(pidfd.get(), SIGKILL);
    }
    return Status::Error(fail_code, std::string("checkpoint cancelled by a callback of pid ") +
                                        std::to_string(failed_pid) + " (" + CodeName(fail_code) +
                                        (perm ? "; the processes were killed" : "") + ")");
  }
  for (Agent* a : waiting) {
    stasis_agent_block* b = a->blk;
    uint32_t n = std::min<uint32_t>(Load(&b->nforward), STASIS_AGENT_MAX_FORWARD);
    // What the forwarding process could trace itself bounds what it adds
    // (the caller checks each added process against these credentials):
    // the ones it had when it got the request, and still has now (an exec
    // of a setuid program in between would lend it root's reach).
    if (n) {
      auto now = ReadTraceCreds(a->pid);
      if (!now)
        return Status::Error(ESRCH, "pid " + std::to_string(a->pid) +
                                        " exited while its checkpoint callbacks were waiting");
      if (now->uid != a->creds.uid || now->gid != a->creds.gid ||
          now->cap_permitted != a->creds.cap_permitted ||
          now->cap_sys_ptrace != a->creds.cap_sys_ptrace)
        return Status::Error(EPERM, "pid " + std::to_string(a->pid) +
                                        " changed its credentials during its checkpoint callbacks; "
                                        "its cr_forward_checkpoint() is refused");
    }
    for (uint32_t i = 0; i < n; ++i) {
      format::ScopeKind kind;
      switch (b->forward[i].scope) {
        case CR_SCOPE_PROC:
          kind = format::kScopePid;
          break;
        case CR_SCOPE_PGRP:
          kind = format::kScopePgid;
          break;
        case CR_SCOPE_SESS:
          kind = format::kScopeSid;
          break;
        default:
          kind = format::kScopeTree;
          break;
      }
      forwarded_.push_back({kind, static_cast<pid_t>(b->forward[i].target), a->pid, a->creds});
    }
  }
  return Status::Ok();
}

void AgentSession::Finish(int code) {
  for (auto& a : agents_) {
    if (!a->posted || a->finished) continue;
    a->finished = true;
    stasis_agent_block* b = a->blk;
    b->cmd_code = code;
    Store(&b->cmd, code ? STASIS_AGENT_CMD_ABORT : STASIS_AGENT_CMD_CONTINUE);
    Wake(&b->cmd);
    ::flock(a->fd.get(), LOCK_UN);
  }
}

void ReportRequestResult(int block_fd, int code, const std::string& message) {
  auto p = MapSealedBlock(block_fd);
  if (!p) return;
  auto* b = static_cast<stasis_agent_block*>(*p);
  if (b->magic == STASIS_AGENT_MAGIC && b->version == STASIS_AGENT_VERSION) {
    b->req_result = code;
    std::snprintf(b->req_msg, sizeof b->req_msg, "%s", message.c_str());
    Store(&b->req_state, STASIS_AGENT_REQ_DONE);
    Wake(&b->req_state);
  }
  ::munmap(*p, STASIS_AGENT_BLOCK_SIZE);
}

Status MarkRestarted(pid_t pid, ProcessMemory* mem, uint64_t start, pid_t requester,
                     const std::string& source) {
  stasis_agent_block b;
  STASIS_RETURN_IF_ERROR(mem->Read(start, &b, sizeof b));
  if (b.magic != STASIS_AGENT_MAGIC || b.version != STASIS_AGENT_VERSION) return Status::Ok();
  b.pid = InnermostPid(pid);
  if (b.cmd == STASIS_AGENT_CMD_REQUEST) b.cmd = STASIS_AGENT_CMD_RESTART;
  if (b.req_state == STASIS_AGENT_REQ_PENDING) b.req_state = STASIS_AGENT_REQ_RESTARTED;
  b.restarts++;
  b.restart_requester = requester;
  std::snprintf(b.restart_src, sizeof b.restart_src, "%s", source.c_str());
  return mem->Write(start, &b, sizeof b);
}

uint64_t AgentEnvironAddress(ProcessMemory* mem, uint64_t start) {
  stasis_agent_block b;
  if (!mem->Read(start, &b, sizeof b).ok() || b.magic != STASIS_AGENT_MAGIC ||
      b.version != STASIS_AGENT_VERSION)
    return 0;
  return b.environ_addr;
}

}  // namespace stasis::core
