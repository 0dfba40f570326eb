// The in-memory model of a context file: what stasis knows about a
// checkpointed process tree. engine/format turns these structs into bytes
// and back (context_io.h); engine/core fills them at capture and consumes
// them at restore. The byte layout is specified in docs/format.md;
// nothing outside engine/format knows it.
//
// All structs are plain values, comparable with ==. Integers are host-order
// here; the encoding is little-endian. Fields added later get new tags in the encoding, so old
// readers skip them and new readers see defaults in old files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace stasis::format {

inline constexpr uint64_t kPageSize = 4096;

// --- whole image -----------------------------------------------------------

struct ImageInfo {
  std::string stasis_version;  // "0.1.0"
  std::string hostname;        // node that wrote the context
  std::string kernel_release;  // uname -r of the checkpointing kernel
  uint64_t created_unix_ns = 0;
  uint32_t checkpoint_uid = 0;    // who took the checkpoint
  uint32_t root_pid = 0;          // pid of the root of the tree (its own ns)
  uint32_t scope = 0;             // ScopeKind
  uint64_t cpu_xfeatures = 0;     // XCR0 of the checkpointing CPU
  std::vector<std::string> argv;  // command line of the checkpointing tool
  // Where the context belongs in a checkpoint store (engine/store): job,
  // step, epoch (0 = a lone context file, not part of an epoch) and node.
  std::string job;
  std::string step;
  uint64_t epoch = 0;
  uint32_t node_index = 0;
  // Incremental contexts (docs/format.md, "Incremental contexts"): `token`
  // names this capture (random, non-zero when the capture set up dirty
  // tracking, so that a later context can reference it); a context with
  // ParentPages sections names its parent by `parent_token` (the parent's
  // `token`) and `parent` (its path, relative to this file's folder unless
  // absolute).
  uint64_t token = 0;
  uint64_t parent_token = 0;
  std::string parent;
  bool operator==(const ImageInfo&) const = default;
};

enum ScopeKind : uint32_t { kScopeTree = 0, kScopePid = 1, kScopePgid = 2, kScopeSid = 3 };

// --- process tree ----------------------------------------------------------

enum ProcessFlags : uint32_t {
  kProcStopped = 1u << 0,  // was in group stop (SIGSTOP) at checkpoint
  kProcZombie = 1u << 1,   // exited, not yet reaped by its parent
  kProcIsRoot = 1u << 2,   // root of the checkpointed tree
  kProcTask = 1u << 3,     // root of one task's tree; `task` says which
};

struct ProcessEntry {
  uint32_t pid = 0;
  uint32_t ppid = 0;  // 0 when the parent is outside the checkpoint
  uint32_t pgid = 0;
  uint32_t sid = 0;
  uint32_t flags = 0;          // ProcessFlags
  int32_t exit_code = 0;       // for zombies: wait status
  std::vector<uint32_t> tids;  // tids[0] == pid
  // With kProcTask: the task (a Slurm step's global task id) whose tree
  // this top-level process heads. A context may hold several tasks' trees.
  uint32_t task = 0;
  bool operator==(const ProcessEntry&) const = default;
};

struct ProcessTree {
  std::vector<ProcessEntry> processes;  // parents before children
  bool operator==(const ProcessTree&) const = default;
};

// --- one process -----------------------------------------------------------

struct Rlimit {
  uint64_t cur = 0;
  uint64_t max = 0;
  bool operator==(const Rlimit&) const = default;
};

struct SigAction {
  uint64_t handler = 0;  // SIG_DFL (0), SIG_IGN (1) or an address
  uint64_t flags = 0;    // SA_* as the kernel keeps them
  uint64_t restorer = 0;
  uint64_t mask = 0;
  bool operator==(const SigAction&) const = default;
};

// The mm fields that prctl(PR_SET_MM_MAP) restores.
struct MmFields {
  uint64_t start_code = 0, end_code = 0, start_data = 0, end_data = 0;
  uint64_t start_brk = 0, brk = 0, start_stack = 0;
  uint64_t arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
  bool operator==(const MmFields&) const = default;
};

struct FileId {  // identity of a file to detect changes
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint32_t mode = 0;
  bool operator==(const FileId&) const = default;
};

struct Credentials {
  uint32_t ruid = 0, euid = 0, suid = 0, fsuid = 0;
  uint32_t rgid = 0, egid = 0, sgid = 0, fsgid = 0;
  std::vector<uint32_t> groups;
  bool operator==(const Credentials&) const = default;
};

struct ItimerValue {
  uint64_t interval_us = 0;
  uint64_t value_us = 0;
  bool operator==(const ItimerValue&) const = default;
};

// A POSIX timer (timer_create): what /proc/PID/timers shows and what
// timer_gettime gave at the checkpoint (time left, not an absolute time).
// How the page data of a Pages section is stored: version 1 sections are
// raw (kCodecNone); version 2 sections hold compressed blocks.
enum PageCodec : uint32_t { kCodecNone = 0, kCodecLz4 = 1, kCodecZstd = 2 };

struct PosixTimer {
  int32_t id = 0;
  int32_t clock = 0;
  uint32_t notify = 0;  // SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4
  uint32_t signo = 0;
  uint64_t sigval = 0;
  uint32_t tid = 0;
  uint64_t value_ns = 0;  // 0: disarmed
  uint64_t interval_ns = 0;
  bool operator==(const PosixTimer&) const = default;
};

// A seccomp filter: the classic BPF program (struct sock_filter, 8 bytes an
// instruction) and the flags it was installed with.
struct SeccompFilter {
  std::string program;
  uint64_t flags = 0;
  bool operator==(const SeccompFilter&) const = default;
};

struct ProcessInfo {
  uint32_t pid = 0;
  std::string comm;      // /proc/PID/comm
  std::string exe_path;  // /proc/PID/exe target
  FileId exe_id;
  std::string cwd;
  std::string root;  // chroot, "/" usually
  uint32_t umask = 022;
  uint32_t personality = 0;
  std::vector<Rlimit> rlimits;  // RLIM_NLIMITS entries
  std::string cmdline;          // raw /proc/PID/cmdline bytes (NUL separated)
  std::string environ;          // raw /proc/PID/environ bytes
  std::string auxv;             // raw /proc/PID/auxv bytes
  MmFields mm;
  Credentials creds;
  std::vector<SigAction> sigactions;    // index 0 is signal 1 ... 63 entries
  std::vector<uint8_t> pending_shared;  // siginfo_t records, 128 bytes each
  uint64_t blocked_unused = 0;          // reserved
  ItimerValue itimer_real, itimer_virtual, itimer_prof;
  uint32_t pdeathsig = 0;
  uint32_t dumpable = 1;
  uint64_t timerslack_ns = 0;
  uint32_t no_new_privs = 0;
  uint32_t exit_signal = 17;     // SIGCHLD usually
  uint32_t child_subreaper = 0;  // PR_SET_CHILD_SUBREAPER
  std::vector<PosixTimer> posix_timers;
  std::vector<SeccompFilter> seccomp_filters;  // oldest first; all threads share them
  uint32_t ctty_pty = 0;  // session leader: 1 + the index of its controlling pty, when
                          // that pty's master is in the checkpoint; else 0
  uint32_t tty_pgrp = 0;  // then: the terminal's foreground process group
  bool operator==(const ProcessInfo&) const = default;
};

// --- memory ----------------------------------------------------------------

enum MappingKind : uint32_t {
  kMapAnon = 0,        // private anonymous (incl. [heap], [stack], guards)
  kMapFile = 1,        // backed by a file that exists by path
  kMapSharedAnon = 2,  // MAP_SHARED|MAP_ANONYMOUS, memfd, /dev/shm: see shmem_id
  kMapVdso = 3,
  kMapVvar = 4,
  kMapVvarVclock = 5,
  kMapVsyscall = 6,
  kMapSysvShm = 7,
  kMapFileByValue = 8,  // file content saved in the context (unlinked, --save-*)
};

enum MappingFlags : uint32_t {
  kMapPrivate = 1u << 0,
  kMapShared = 1u << 1,
  kMapGrowsDown = 1u << 2,  // [stack] and MAP_GROWSDOWN
  kMapHeap = 1u << 3,       // [heap]
  kMapStack = 1u << 4,      // [stack]
  kMapLocked = 1u << 5,
  kMapDontFork = 1u << 6,
  kMapHugetlb = 1u << 7,
  // VMA flags that /proc/PID/maps does not show (smaps "VmFlags"), kept so
  // that restored VMAs split and behave as the originals did.
  kMapNoHugepage = 1u << 8,   // nh: MADV_NOHUGEPAGE (MAP_STACK implies it)
  kMapHugepage = 1u << 9,     // hg: MADV_HUGEPAGE
  kMapDontDump = 1u << 10,    // dd: MADV_DONTDUMP
  kMapWipeOnFork = 1u << 11,  // wf: MADV_WIPEONFORK
  kMapNoReserve = 1u << 12,   // nr: MAP_NORESERVE
  kMapMergeable = 1u << 13,   // mg: MADV_MERGEABLE
};

struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;
  uint32_t prot = 0;   // PROT_READ|PROT_WRITE|PROT_EXEC
  uint32_t flags = 0;  // MappingFlags
  uint32_t kind = kMapAnon;
  uint64_t pgoff = 0;  // offset in the file, bytes
  std::string path;    // backing file ("" for anonymous)
  FileId file_id;
  uint64_t shmem_id = 0;  // kMapSharedAnon/kMapSysvShm: SharedMemory id
  bool operator==(const Mapping&) const = default;
};

// A run of saved pages: [start, start + npages * kPageSize).
struct PageRun {
  uint64_t start = 0;
  uint64_t npages = 0;
  bool operator==(const PageRun&) const = default;
};

// What a SharedMemory segment is (and how the restore makes it again).
enum SharedMemoryKind : uint32_t {
  kShmAnon = 0,         // MAP_SHARED|MAP_ANONYMOUS memory
  kShmMemfd = 1,        // a memfd (name: its name)
  kShmPosix = 2,        // a POSIX shm object (name: the /dev/shm path); not written yet
  kShmSysv = 3,         // a SysV segment (name: key text; sysv_key, sysv_mode)
  kShmFileByValue = 4,  // an unlinked (or --save-*) file, content by value; name = old path
  kShmHugetlb = 5,      // MAP_SHARED|MAP_HUGETLB anonymous memory
};
inline constexpr uint32_t kShmLastKind = kShmHugetlb;

// A segment of memory shared between processes, stored once per context.
struct SharedMemory {
  uint64_t id = 0;  // referenced by Mapping::shmem_id
  uint64_t size = 0;
  uint32_t kind = kShmAnon;  // SharedMemoryKind
  std::string name;          // memfd name, /dev/shm path, or SysV key text
  int64_t sysv_key = 0;
  uint32_t sysv_mode = 0;
  bool operator==(const SharedMemory&) const = default;
};

// --- threads ---------------------------------------------------------------

struct ThreadInfo {
  uint32_t tid = 0;
  std::string comm;             // thread name
  std::vector<uint8_t> gpregs;  // struct user_regs_struct (x86-64)
  std::vector<uint8_t> xsave;   // NT_X86_XSTATE buffer
  uint64_t sigmask = 0;
  std::vector<uint8_t> pending;  // siginfo_t records, 128 bytes each
  uint64_t altstack_sp = 0;
  uint64_t altstack_size = 0;
  uint32_t altstack_flags = 0;     // SS_DISABLE etc.
  uint64_t clear_tid_address = 0;  // set_tid_address
  uint64_t robust_list = 0;
  uint64_t robust_list_len = 0;
  uint64_t rseq_address = 0;  // 0 when not registered
  uint32_t rseq_length = 0;
  uint32_t rseq_signature = 0;
  uint32_t state = 0;          // reserved
  uint64_t timerslack_ns = 0;  // per-thread timer slack (0: not saved)
  bool operator==(const ThreadInfo&) const = default;
};

// --- files -----------------------------------------------------------------

enum FileKind : uint32_t {
  kFileRegular = 0,
  kFileDirectory = 1,
  kFileCharDevice = 2,  // /dev/null, /dev/zero, /dev/urandom, ...
  kFileTty = 3,         // a terminal: reattached to /dev/tty or stdio
  kFilePipe = 4,
  kFileFifo = 5,
  kFileUnixSocket = 6,
  kFileOther = 7,       // anything else: refused at checkpoint
  kFileEpoll = 8,       // data: EpollTarget records (fd_payloads.h)
  kFileEventfd = 9,     // pos: the counter; data: EventfdState
  kFileSignalfd = 10,   // pos: the signal mask
  kFileTimerfd = 11,    // data: TimerfdState (clock, flags, unread expirations,
                        //       time left, interval)
  kFilePtyMaster = 12,  // a pty master (/dev/ptmx) of the checkpoint: pos = its index,
                        // data = TerminalState (termios2 and window size)
  kFilePtySlave = 13,   // /dev/pts/<pos> whose master is in the checkpoint; data as above
  kFileTcpSocket = 14,  // a TCP socket (IPv4/IPv6): `tcp` holds its TcpState (tcp_state.h)
};

enum FdFlags : uint32_t {
  kFdCloexec = 1u << 0,
  kFdOutside = 1u << 1,     // pipe/socket whose peer is outside the checkpoint
  kFdUnlinked = 1u << 2,    // file was deleted: data saved by value
  kFdPeerClosed = 1u << 3,  // pipe whose other end no process holds
};

// A socket's state, FileDesc::sock_state: the kernel's TCP_* numbers, which
// sock_diag reports for every socket family (a UNIX socket is connected,
// closed or listening).
enum SocketState : uint32_t {
  kSockEstablished = 1,  // connected
  kSockSynSent = 2,
  kSockSynRecv = 3,
  kSockFinWait1 = 4,
  kSockFinWait2 = 5,
  kSockTimeWait = 6,
  kSockClose = 7,  // not connected, or its peer has closed
  kSockCloseWait = 8,
  kSockLastAck = 9,
  kSockListen = 10,
  kSockClosing = 11,
};

// FileDesc::outside_state (the states sock_diag and /proc/net/tcp use).
enum OutsideState : uint32_t {
  kOutsideConnected = 1,    // a connection: it comes back closed, its peer lost
  kOutsideUnconnected = 7,  // never connected (or closed): nothing is lost
  kOutsideListening = 10,   // a listener: comes back closed, accepts no more
};

struct FileDesc {
  int32_t fd = 0;
  uint32_t fd_flags = 0;       // FdFlags
  uint32_t kind = kFileOther;  // FileKind
  uint32_t open_flags = 0;     // O_* from fdinfo
  uint64_t pos = 0;
  std::string path;
  FileId file_id;
  uint64_t object_id = 0;  // same open file description => same id
  uint64_t peer_id = 0;    // pipes/sockets: the shared object (pipe inode)
  uint32_t pipe_size = 0;
  std::string data;         // buffered pipe/FIFO data; the payload of the
                            // kinds in fd_payloads.h (socket receive queue,
                            // epoll targets, timerfd, eventfd, terminal)
  uint32_t sock_type = 0;   // SOCK_STREAM/SOCK_DGRAM/SOCK_SEQPACKET
  uint32_t sock_state = 0;  // SocketState, as sock_diag reports it
  uint64_t sock_inode = 0;  // the socket's own inode (peer_id is its peer's)
  std::string tcp;          // kFileTcpSocket: the encoded TcpState (tcp_state.h)
  // A socket saved as closed (kFdOutside): what it was at the checkpoint,
  // kOutsideConnected, kOutsideUnconnected or kOutsideListening (0: not
  // recorded, a context of an older stasis), and its peer's address (TCP/UDP
  // "host:port", a UNIX socket's bound name; may be empty).
  uint32_t outside_state = 0;
  std::string outside_peer;
  bool operator==(const FileDesc&) const = default;
};

}  // namespace stasis::format
