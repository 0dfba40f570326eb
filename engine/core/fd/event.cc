// Event fds, both directions: epoll (its registrations), eventfd (the
// counter), signalfd (the mask) and timerfd (clock, time left, interval,
// unread expirations). All four are created inside the restored process by
// injected calls.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "engine/core/capture_internal.h"
#include "engine/core/fd/fd_kind.h"
#include "engine/core/restore_internal.h"
#include "engine/format/fd_payloads.h"

namespace stasis::core {
namespace {

using format::FileDesc;

// _IOW('T', 0, u64): sets a timerfd's count of unread expirations.
constexpr uint64_t kTfdIocSetTicks = 0x40085400;

bool AnonInode(const std::string& link, const char* name) { return link == name; }

Result<std::string> FdInfoText(const FdSeen& s) {
  return ReadFileToString(s.proc + "/fdinfo/" + std::to_string(s.fd));
}

Status CaptureEpoll(capture::Capturer*, capture::ProcState*, const FdSeen& s, FileDesc* f) {
  f->kind = format::kFileEpoll;
  STASIS_ASSIGN_OR_RETURN(std::string text, FdInfoText(s));
  std::vector<format::EpollTarget> targets;
  size_t pos = 0;
  while ((pos = text.find("tfd:", pos)) != std::string::npos) {
    unsigned tfd = 0, events = 0;
    unsigned long long data = 0;
    if (sscanf(text.c_str() + pos, "tfd: %u events: %x data: %llx", &tfd, &events, &data) == 3)
      targets.push_back({tfd, events, data});
    pos += 4;
  }
  f->data = format::EncodeEpollTargets(targets);
  return Status::Ok();
}

Status CaptureEventfd(capture::Capturer*, capture::ProcState*, const FdSeen& s, FileDesc* f) {
  f->kind = format::kFileEventfd;
  STASIS_ASSIGN_OR_RETURN(std::string text, FdInfoText(s));
  auto count = StatusField(text, "eventfd-count");
  if (count) f->pos = strtoull(count->c_str(), nullptr, 16);
  auto semaphore = StatusField(text, "eventfd-semaphore");  // Linux 6.5+
  f->data = format::EncodeEventfdState({semaphore && atoi(semaphore->c_str()) == 1});
  return Status::Ok();
}

Status CaptureSignalfd(capture::Capturer*, capture::ProcState*, const FdSeen& s, FileDesc* f) {
  f->kind = format::kFileSignalfd;
  STASIS_ASSIGN_OR_RETURN(std::string text, FdInfoText(s));
  auto mask = StatusField(text, "sigmask");
  if (!mask)
    return Status::Error(EPROTO, "cannot checkpoint " + s.where + ": no sigmask in its fdinfo");
  f->pos = strtoull(mask->c_str(), nullptr, 16);
  return Status::Ok();
}

// What fdinfo shows: the clock, expirations not yet read, the settime
// flags, the time left and the interval.
Status CaptureTimerfd(capture::Capturer* cap, capture::ProcState* p, const FdSeen& s, FileDesc* f) {
  const std::string& where = s.where;
  const int fd = s.fd;
  f->kind = format::kFileTimerfd;
  STASIS_ASSIGN_OR_RETURN(std::string text, FdInfoText(s));
  auto clock = StatusField(text, "clockid");
  auto ticks = StatusField(text, "ticks");
  auto flags = StatusField(text, "settime flags");
  auto value = StatusField(text, "it_value");
  auto interval = StatusField(text, "it_interval");
  long long vs = 0, vn = 0, is = 0, in = 0;
  if (!clock || !ticks || !flags || !value || !interval ||
      sscanf(value->c_str(), "(%lld, %lld)", &vs, &vn) != 2 ||
      sscanf(interval->c_str(), "(%lld, %lld)", &is, &in) != 2)
    return Status::Error(EPROTO, "cannot checkpoint " + where + ": unreadable timerfd fdinfo");
  format::TimerfdState t = {static_cast<int32_t>(atoi(clock->c_str())),
                            static_cast<uint32_t>(strtoul(flags->c_str(), nullptr, 8)),
                            strtoull(ticks->c_str(), nullptr, 10),
                            static_cast<uint64_t>(vs * 1000000000LL + vn),
                            static_cast<uint64_t>(is * 1000000000LL + in)};
  if (t.ticks > 0) {
    // A periodic timerfd counts one expiration (and shows no time left)
    // until it is read, when it is forwarded over the ones it missed:
    // read the real count in the process, and put it back.
    if (p->unseized)
      return Status::Error(ENOTSUP,
                           "cannot checkpoint " + where +
                               " while its debugger holds the process: "
                               "reading a timerfd's expirations needs a call in the process");
    Tracee* leader = p->threads[0].get();
    STASIS_ASSIGN_OR_RETURN(
        long r, cap->Inject(p, leader, SYS_read, static_cast<uint64_t>(fd), p->scratch, 8));
    if (r == 8) {
      STASIS_RETURN_IF_ERROR(cap->ReadScratch(p, &t.ticks, sizeof t.ticks));
      STASIS_ASSIGN_OR_RETURN(r, cap->Inject(p, leader, SYS_ioctl, static_cast<uint64_t>(fd),
                                             kTfdIocSetTicks, p->scratch));
      if (r != 0)
        return Status::FromErrno(
            static_cast<int>(-r),
            "cannot checkpoint " + where + ": put back the expirations of its timerfd");
      STASIS_ASSIGN_OR_RETURN(text, FdInfoText(s));
      value = StatusField(text, "it_value");
      if (value && sscanf(value->c_str(), "(%lld, %lld)", &vs, &vn) == 2)
        t.value_ns = static_cast<uint64_t>(vs * 1000000000LL + vn);
    }
  }
  f->data = format::EncodeTimerfdState(t);
  return Status::Ok();
}

Result<long> CreateEpoll(restore::Restorer* r, restore::RProc* p, const FileDesc& f) {
  const std::string who = restore::Pid(p->entry.pid);
  return Checked(r->Call(p, SYS_epoll_create1, O_CLOEXEC),
                 "create epoll for fd " + std::to_string(f.fd) + " of " + who);
}

// Once every fd is in place: the epoll's registrations again.
Status RegisterEpoll(restore::Restorer* r, restore::RProc* p, const FileDesc& e) {
  const std::string who = restore::Pid(p->entry.pid);
  auto targets = format::DecodeEpollTargets(e.data);
  if (!targets) return targets.error().Prefixed("epoll fd " + std::to_string(e.fd) + " of " + who);
  for (const format::EpollTarget& t : *targets) {
    // struct epoll_event, packed on x86-64.
    struct {
      uint32_t events;
      uint64_t data;
    } __attribute__((packed)) ev = {t.events, t.data};
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + restore::kOffArgs, &ev, sizeof ev));
    STASIS_RETURN_IF_ERROR(
        Checked(r->Call(p, SYS_epoll_ctl, static_cast<uint64_t>(e.fd), 1 /* EPOLL_CTL_ADD */, t.fd,
                        p->scratch + restore::kOffArgs),
                "re-register fd " + std::to_string(t.fd) + " in epoll fd " + std::to_string(e.fd) +
                    " of " + who)
            .status());
  }
  return Status::Ok();
}

// Made in the restorer and handed over like a pipe (cached by object id),
// so that processes and fds that shared one eventfd share it again; the
// counter is written, as eventfd() takes only 32 bits of it. An empty data
// payload (older contexts) means no EFD_SEMAPHORE.
Result<UniqueFd> OpenEventfd(restore::Restorer*, const restore::RProc*, const FileDesc& f) {
  auto state = format::DecodeEventfdState(f.data);
  if (!state) return state.error().Prefixed("eventfd fd " + std::to_string(f.fd));
  const bool semaphore = state->semaphore;
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | ((f.open_flags & O_NONBLOCK) ? EFD_NONBLOCK : 0) |
                               (semaphore ? EFD_SEMAPHORE : 0)));
  if (!fd || (f.pos && ::write(fd.get(), &f.pos, sizeof f.pos) != sizeof f.pos))
    return Status::FromErrno(errno, "cannot restore eventfd fd " + std::to_string(f.fd));
  return fd;
}

Result<long> CreateSignalfd(restore::Restorer* r, restore::RProc* p, const FileDesc& f) {
  const std::string who = restore::Pid(p->entry.pid);
  uint64_t mask = f.pos;
  STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + restore::kOffArgs, &mask, sizeof mask));
  return Checked(
      r->Call(p, SYS_signalfd4, static_cast<uint64_t>(-1), p->scratch + restore::kOffArgs, 8,
              (f.open_flags & O_NONBLOCK) | O_CLOEXEC),
      "create signalfd for fd " + std::to_string(f.fd) + " of " + who);
}

// Re-armed with the time it had left (relative: an absolute timer's
// TFD_TIMER_CANCEL_ON_SET is not kept); unread expirations are put back with
// TFD_IOC_SET_TICKS.
Result<long> CreateTimerfd(restore::Restorer* r, restore::RProc* p, const FileDesc& f) {
  const std::string who = restore::Pid(p->entry.pid);
  auto state = format::DecodeTimerfdState(f.data);
  if (!state) return state.error().Prefixed("timerfd fd " + std::to_string(f.fd) + " of " + who);
  format::TimerfdState t = *state;
  STASIS_ASSIGN_OR_RETURN(long got,
                          Checked(r->Call(p, SYS_timerfd_create, static_cast<uint64_t>(t.clock),
                                          (f.open_flags & O_NONBLOCK) | O_CLOEXEC),
                                  "create timerfd for fd " + std::to_string(f.fd) + " of " + who));
  if (!t.value_ns && t.interval_ns) t.value_ns = t.interval_ns;  // due now: next period
  if (t.value_ns) {
    int64_t its[4] = {static_cast<int64_t>(t.interval_ns / 1000000000),
                      static_cast<int64_t>(t.interval_ns % 1000000000),
                      static_cast<int64_t>(t.value_ns / 1000000000),
                      static_cast<int64_t>(t.value_ns % 1000000000)};
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + restore::kOffArgs, its, sizeof its));
    STASIS_RETURN_IF_ERROR(Checked(r->Call(p, SYS_timerfd_settime, static_cast<uint64_t>(got), 0,
                                           p->scratch + restore::kOffArgs, 0),
                                   "arm timerfd fd " + std::to_string(f.fd) + " of " + who)
                               .status());
  }
  if (t.ticks) {
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + restore::kOffArgs, &t.ticks, sizeof t.ticks));
    STASIS_RETURN_IF_ERROR(Checked(r->Call(p, SYS_ioctl, static_cast<uint64_t>(got),
                                           kTfdIocSetTicks, p->scratch + restore::kOffArgs),
                                   "put back " + std::to_string(t.ticks) +
                                       " unread expirations of timerfd fd " + std::to_string(f.fd) +
                                       " of " + who)
                               .status());
  }
  return got;
}

}  // namespace

extern const FdKindOps kFdEpoll = {format::kFileEpoll,
                                   "epoll",
                                   [](const struct stat&, const std::string& link) {
                                     return AnonInode(link, "anon_inode:[eventpoll]");
                                   },
                                   CaptureEpoll,
                                   nullptr,
                                   CreateEpoll,
                                   RegisterEpoll};

extern const FdKindOps kFdEventfd = {format::kFileEventfd,
                                     "eventfd",
                                     [](const struct stat&, const std::string& link) {
                                       return AnonInode(link, "anon_inode:[eventfd]");
                                     },
                                     CaptureEventfd,
                                     OpenEventfd,
                                     nullptr,
                                     nullptr};

extern const FdKindOps kFdSignalfd = {format::kFileSignalfd,
                                      "signalfd",
                                      [](const struct stat&, const std::string& link) {
                                        return AnonInode(link, "anon_inode:[signalfd]");
                                      },
                                      CaptureSignalfd,
                                      nullptr,
                                      CreateSignalfd,
                                      nullptr};

extern const FdKindOps kFdTimerfd = {format::kFileTimerfd,
                                     "timerfd",
                                     [](const struct stat&, const std::string& link) {
                                       return AnonInode(link, "anon_inode:[timerfd]");
                                     },
                                     CaptureTimerfd,
                                     nullptr,
                                     CreateTimerfd,
                                     nullptr};

}  // namespace stasis::core
