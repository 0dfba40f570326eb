// The engine's public entry points: checkpoint a process tree into a
// context stream, restore a tree from one. This is the whole surface the
// CLI, stasisd and libcr use; nothing here knows Slurm or PMIx.
//
// Both calls run in the calling process (the "embedded engine"). They are
// synchronous and not reentrant: one checkpoint or restore per process at a
// time (ptrace ties tracees to the tracing thread).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/io.h"
#include "engine/base/status.h"
#include "engine/format/context.h"

namespace stasis::core {

// What happens to the checkpointed processes once the context is written
// (BLCR's cr_checkpoint --cont/--stop/--term/--kill). On failure the
// processes always continue.
enum class AfterCheckpoint { kContinue, kStop, kTerm, kKill };

// One task of a Slurm step on this node: the top of a tree (a child of
// slurmstepd) and the step's global task id.
struct TaskRoot {
  pid_t pid = 0;
  uint32_t task = 0;
  bool operator==(const TaskRoot&) const = default;
};

// Where memory maps, pages, registers, signal masks and open files are read
// from: /dev/stasis (kmod/, kernel_capture.h) or /proc and ptrace. kAuto
// uses the module when it is loaded and usable.
enum class CaptureBackend { kAuto, kKernel, kUser };

// What a checkpoint does with a socket that leads outside it. A restart can
// give such a socket back only closed, so a connection saved that way is
// not continued: the program sees its peer gone.
enum class OutsideSockets {
  // Every one fails the checkpoint, naming it (cr_checkpoint's default).
  kRefuse,
  // A listening or never-connected socket is saved as closed (no peer and
  // no byte in flight is lost; a listener accepts no more connections
  // after a restart: every `srun --mpi=pmix` task inherits slurmstepd's
  // PMIx listener and never uses it); a connected one fails the
  // checkpoint, since it would come back closed. Slurm epochs: an epoch that cannot be
  // restarted is never called complete.
  kCloseUnconnected,
  // Every one is saved as closed (cr_checkpoint --close-sockets: the user
  // accepts that connections come back closed).
  kCloseAll,
};

struct CheckpointOptions {
  pid_t target = 0;
  format::ScopeKind scope = format::kScopeTree;
  // Several trees in one context (a step's local tasks): when not empty,
  // `target` and `scope` are ignored and every task's whole tree is
  // captured, its top-level process marked with the task id.
  std::vector<TaskRoot> tasks;
  AfterCheckpoint after = AfterCheckpoint::kContinue;
  std::vector<std::string> tool_argv;  // recorded in the image
  // BLCR's --save-exe/--save-private/--save-shared/--save-all: files
  // mapped by value (content in the context) instead of by reference, so a
  // restart works after they are deleted. Unlinked files are always saved.
  bool save_exe = false;
  bool save_private = false;
  bool save_shared = false;
  // Sockets leading outside the checkpoint (network sockets, UNIX sockets
  // whose peer no process of the checkpoint holds): refused, or saved as
  // closed (the restored end reads EOF). See OutsideSockets; the one place
  // that decides is MaySaveOutsideSocket (fd/outside_socket.h).
  OutsideSockets outside_sockets = OutsideSockets::kRefuse;
  // Folders whose files will not exist at restart (a Slurm step's PMIx
  // server folder, removed with the step): a mapping or an open fd of a file
  // under one of them fails the checkpoint with one line naming the
  // process, the file and `note` (what the folder is).
  struct TransientDir {
    std::string path;  // absolute, no trailing slash
    std::string note;  // "the step's PMIx server folder, removed when the step ends"
    bool operator==(const TransientDir&) const = default;
  };
  std::vector<TransientDir> transient_dirs;
  // The job is about to end (preemption, time limit, scontrol checkpoint
  // vacate/requeue): libcr agents see STASIS_AGENT_RQ_FINAL, and the PMIx
  // agent delivers PMIX_JCTRL_PREEMPT_ALERT before PMIX_JCTRL_CHECKPOINT.
  bool final = false;
  // Page data compression (--compress): kCodecNone, kCodecLz4 or kCodecZstd,
  // on compress_threads threads (0 = one per core).
  format::PageCodec compress = format::kCodecNone;
  int compress_level = 0;
  int compress_threads = 0;
  // BLCR's --signal NUM: sent to every checkpointed process once the
  // context is complete (with after == kContinue).
  int after_signal = 0;
  // For libcr callbacks (cr_get_checkpoint_info): who asked, and where the
  // context goes. requester 0 = the calling process.
  pid_t requester = 0;
  std::string dest;
  // How long the processes' checkpoint callbacks may take; 0 = unbounded.
  double callback_timeout_seconds = 0;
  // When owner_uid >= 0: every process of the scope, forwarded ones
  // included, must be one this requester could ptrace itself (the kernel's
  // rule, procfs.h CheckMayTrace: all its uids owner_uid, all its gids
  // owner_gid, dumpable, no capability outside owner_caps), else EPERM
  // naming the process; checked before any of its checkpoint callbacks is
  // touched and again once it is frozen. stasisd sets them from its
  // client (uid, gid and permitted capabilities); the embedded engine
  // relies on the kernel's ptrace checks instead (-1).
  int64_t owner_uid = -1;
  int64_t owner_gid = -1;
  uint64_t owner_caps = 0;
  // The checkpointing tool, left out of the scope with what it started
  // (BLCR's behaviour). 0 = the calling process; stasisd names its client.
  pid_t checkpointer = 0;
  // Put every thread's registers and mask back before the context is
  // written (they stay stopped), so a checkpointer killed during the write
  // leaves processes that continue unharmed. stasisd's workers set it.
  // Off by default: with it, zdtm_signals fails more often under CPU load
  // (7-11/20 against 2/20 with two busy loops; not yet understood).
  bool settle_before_write = false;
  // Where the context belongs in a checkpoint store (engine/store),
  // recorded in its header so a file moved to another node or epoch is
  // refused at restart. epoch 0 = a lone context file.
  std::string job, step;
  uint64_t epoch = 0;
  uint32_t node_index = 0;
  // Called once everything is captured, before the first byte is written,
  // with an upper bound of the context's size: the store checks the free
  // space here, so a checkpoint that cannot fit fails before it writes.
  std::function<Status(uint64_t estimated_bytes)> before_write;
  // Called once every process's checkpoint callbacks are done and before
  // anything is frozen (a multi-node epoch's barrier: no node freezes before
  // every node is quiesced). An error aborts: the callbacks learn it, no
  // process was frozen.
  std::function<Status()> after_callbacks;
  // Where the state is read from (stasis.yaml capture_backend, cr_checkpoint
  // --backend).
  CaptureBackend capture_backend = CaptureBackend::kAuto;
  // Copy-on-write snapshot (cr_checkpoint --no-snapshot turns it off): when
  // the tree continues after the checkpoint, each process forks a copy of
  // itself that never runs, and the tree runs again as soon as the shared
  // objects are written; its private pages are read from the copies while
  // the context is written. Not with the kernel backend, nor when a process
  // has private memory a fork does not copy (then: frozen throughout, and
  // CheckpointStats::snapshot_note says why).
  bool snapshot = true;
  // Called once everything is captured (and snapshotted, when it could be)
  // and before the tree may run again (a multi-node epoch's second barrier:
  // no node runs on before every node is frozen). Called whether or not a
  // snapshot was taken (`snapshot`; else `why_not`, empty when none was
  // asked for); an error aborts (the tree resumes untouched).
  std::function<Status(bool snapshot, const std::string& why_not)> before_release;
  // Dirty tracking and incremental contexts (dirty_track.h). `track`: each
  // process tracks its writes from this capture on, which the context's
  // Image token names. With `parent_token` (the token of the context that
  // `parent` names; parent is recorded as given, relative to the new
  // file's folder unless absolute): pages unchanged since that capture are
  // not stored but named as the parent's (ParentPages), in every process
  // whose tracking is intact since then; the others are stored whole
  // (CheckpointStats::track_note says why). Implies track.
  bool track = false;
  uint64_t parent_token = 0;
  std::string parent;
  // Tuning and test knobs (the tools fill them from STASIS_* variables,
  // daemon/config.h KnobsFromEnvironment; the engine reads no environment).
  // An incremental capture with at most this many bytes to write is written
  // frozen rather than from a snapshot (STASIS_FROZEN_WRITE_BYTES).
  uint64_t frozen_write_bytes = 256u << 20;
  // How long one wait for a traced thread may take (STASIS_PTRACE_TIMEOUT).
  double ptrace_timeout_seconds = 60;
};

struct CheckpointStats {
  uint32_t processes = 0;
  uint32_t threads = 0;
  uint64_t bytes = 0;       // context bytes written
  uint64_t page_bytes = 0;  // memory bytes saved
  uint64_t zero_pages_skipped = 0;
  uint64_t estimated_bytes = 0;  // what before_write was told
  double callbacks_seconds = 0;  // libcr callbacks, before anything is frozen
  double freeze_seconds = 0;     // from the first seize to all stopped
  double pause_seconds = 0;      // from the first seize to resumed (or killed)
  double total_seconds = 0;
  bool kernel_backend = false;         // the capture went through /dev/stasis
  bool snapshot = false;               // pages were read from copy-on-write snapshots
  std::string snapshot_note;           // why no snapshot was taken, when one was asked
  uint64_t token = 0;                  // the Image token (tracking set up), or 0
  bool incremental = false;            // the context names a parent
  uint64_t parent_page_bytes = 0;      // memory left to the parent context
  uint32_t incremental_processes = 0;  // processes whose unchanged pages are the parent's
  std::string track_note;  // why tracking or an incremental capture was not (fully) done
  std::vector<pid_t> pids;
};

// Freezes the target scope, captures it into `sink` and, once the stream is
// complete and `finalize` (if given: fsync + rename by the caller) has
// succeeded, applies `after`. On any error the processes are resumed
// untouched and the error names the process and what failed.
using FinalizeFn = Status (*)(void* arg);
Result<CheckpointStats> Checkpoint(const CheckpointOptions& options, ByteSink* sink,
                                   FinalizeFn finalize = nullptr, void* finalize_arg = nullptr);

enum class AfterRestore { kRun, kStop, kTerm, kKill };

class LazyPages;

struct RestoreOptions {
  bool restore_pids = true;  // false: --no-restore-pid
  AfterRestore after = AfterRestore::kRun;
  // --relocate OLD=NEW: path prefixes rewritten for files, exe, cwd.
  std::vector<std::pair<std::string, std::string>> relocate;
  // Where fds that led outside the checkpoint are reattached.
  int stdin_fd = 0, stdout_fd = 1, stderr_fd = 2;
  // A context of several tasks (a Slurm step's node file): the stdio of
  // each task of the new step. Every task of the context must have an entry
  // and no other, else nothing is built (the error names both sets); each
  // task's fds that led outside are reattached to its own stdio.
  struct TaskStdio {
    uint32_t task = 0;
    int stdin_fd = 0, stdout_fd = 1, stderr_fd = 2;
    // Variables of the new task (SLURM_JOB_ID, PMIX_*...): in every
    // process of the task, an environment entry of the same name (in the
    // environment array exec left on the stack, which getenv() reads until
    // the program itself changes its environment) is pointed at the new
    // value. Names the old environment lacks are not added.
    std::vector<std::pair<std::string, std::string>> env;
  };
  std::vector<TaskStdio> task_stdio;
  // The context file's path, for libcr's cr_get_restart_info().
  std::string source_path;
  // The restorer holds capabilities the restored tree must not keep
  // (stasisd restoring for a user with CAP_CHECKPOINT_RESTORE only): every
  // restored thread's capability sets are cleared before it runs.
  bool drop_capabilities = false;
  // Restoring for a client in its sandbox (stasisd): these seccomp filters
  // (the client's, oldest first) are installed in every restored process
  // before its own, so they are the outermost; and each process's limits
  // from the context are clamped to the restorer's own hard limits (the
  // client's): soft <= hard <= ours.
  std::vector<format::SeccompFilter> outer_seccomp_filters;
  bool clamp_limits = false;
  // Called once every process is built, right before the tree is let go
  // (nothing of it has run yet; after this, a failure leaves it running).
  std::function<void()> before_release;
  // Called with the context's header before anything is built (a store
  // checks the context is the node and epoch it expects), and once the
  // whole context is read, before anything runs (a store checks the file's
  // size and checksum against its manifest). An error kills the tree.
  std::function<Status(const format::ImageInfo&)> check_image;
  std::function<Status()> before_run;
  // Lazy restart (cr_restart --lazy): the page data of private anonymous
  // memory (but the stack) is not read now; the tree runs as soon as the
  // rest is in place and this server brings the pages (lazy_pages.h). The
  // source must be able to Skip (a regular file), else pages are read now.
  std::shared_ptr<LazyPages> lazy;
  // An incremental context's parent, as its Image records it (`recorded`),
  // for the context at `child` (source_path, then each parent in turn):
  // sets *resolved to the file's path. Unset: `recorded` resolved against
  // the child's folder unless absolute, opened like any context file (no
  // symlinks, the caller's own unless root).
  std::function<Result<std::unique_ptr<ByteSource>>(
      const std::string& child, const std::string& recorded, std::string* resolved)>
      open_parent;
  // Files that may have been written again since the checkpoint with the
  // same content (a requeued job's batch script, which Slurm writes anew
  // into its spool): an fd's file with another inode is accepted at such a
  // path when its size is the saved one, instead of being refused.
  std::vector<std::string> rewritten_ok;
  // Regular files the new job opened again for the restored processes (a
  // requeued batch script's output file, which Slurm truncates or appends
  // to per --open-mode): an fd of the context on one of these paths shares
  // the given open file (a dup) instead of being reopened at its old offset.
  std::vector<std::pair<std::string, int>> reattach_files;
  // Test knobs (the tools fill them, daemon/config.h KnobsFromEnvironment;
  // the engine reads no environment). How long one wait for a traced thread
  // may take (STASIS_PTRACE_TIMEOUT).
  double ptrace_timeout_seconds = 60;
  // POSIX timers get their ids as kernels before Linux 6.16 hand them out
  // (in increasing order, gaps used up by placeholders), even where the
  // kernel could take the ids asked for (STASIS_TIMER_IDS=count).
  bool timer_ids_by_count = false;
};

struct RestoreResult {
  pid_t root_pid = 0;  // the restored root (pid in our namespace)
  pid_t wait_pid = 0;  // our child to wait for: the root, or the
                       // init of the fresh pid namespace
  uint32_t processes = 0;
  uint32_t threads = 0;
  uint64_t page_bytes = 0;
  double seconds = 0;
  bool in_new_pid_namespace = false;
  std::vector<TaskRoot> tasks;  // each task's restored top-level process
  uint64_t lazy_bytes = 0;      // page data left to the lazy server
  uint64_t parent_bytes = 0;    // page data read from parent contexts
  uint32_t parents = 0;         // parent contexts read (an incremental chain)
  std::vector<pid_t> pids;      // every restored process
};

// Reads a context from `source` and rebuilds its tree as children of the
// caller. Nothing runs until the whole context has been read and every
// checksum verified; on any error everything built so far is killed.
Result<RestoreResult> Restore(ByteSource* source, const RestoreOptions& options);

}  // namespace stasis::core
