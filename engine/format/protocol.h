// The engine protocol (DESIGN.md contract 3): the messages a client (the
// command-line tools, libcr through cr_checkpoint, the SPANK plugin) and
// stasisd exchange over the node's Unix socket. Defined once here, with its
// only encoder and decoder; docs/protocol.md describes the bytes in prose.
//
// A message is one SOCK_SEQPACKET packet: a 12-byte header (u32 magic, u16
// version, u16 op, u32 payload length, little-endian) and a payload of
// tag-length-value fields, the encoding of context metadata
// (docs/format.md). File descriptors travel beside a message as SCM_RIGHTS,
// announced by Request::attached. The caller's identity is never part of a
// message: stasisd takes it from the socket (SO_PEERCRED).
//
// Decoding is strict and bounded: a packet over kMaxMessageSize, a wrong
// magic or version, a length that disagrees with the packet, an unknown op,
// a malformed field or a request that does not make sense for its op is an
// error that names what was wrong. Unknown tags are skipped (a newer client
// may send optional fields an older stasisd ignores).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/status.h"

namespace stasis::format::proto {

inline constexpr uint32_t kMagic = 0x51525453;  // "STRQ" in packet order
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHeaderSize = 12;
inline constexpr size_t kMaxMessageSize = 64 * 1024;  // header included

enum class Op : uint16_t {
  kPing = 1,        // -> Reply{server}
  kCheckpoint = 2,  // target/scope/path or attached dest fd -> Reply{stats}
  kRestart = 3,     // path (context file, epoch or job folder) + attached stdio
                    //   -> Reply{kStarted}, Reply{kExited}
  kStatus = 4,      // request_id, or 0 for all visible -> Reply{requests}
  kCancel = 5,      // request_id -> Reply
  kList = 6,        // path (a folder) -> Reply{files}
  kDelete = 7,      // path (a context file) -> Reply
  kCommit = 8,      // client -> worker of a held checkpoint (kFlagHold): the
                    //   epoch is durable, apply `after` -> Reply{stats}
  kProceed = 9,     // client -> worker of a kFlagBarrier checkpoint: every node
                    //   is quiesced, freeze now
  kReply = 64,      // stasisd's answer to any of the above
};
const char* OpName(Op op);

// Request::flags
inline constexpr uint32_t kFlagSaveExe = 1u << 0;
inline constexpr uint32_t kFlagSavePrivate = 1u << 1;
inline constexpr uint32_t kFlagSaveShared = 1u << 2;
inline constexpr uint32_t kFlagCloseSockets = 1u << 3;
inline constexpr uint32_t kFlagNoRestorePid = 1u << 4;
inline constexpr uint32_t kFlagNoWait = 1u << 5;  // checkpoint: reply once queued
inline constexpr uint32_t kFlagNode = 1u << 6;  // restart from a store folder: Request::node given
// checkpoint into a store node file (attached dest): once the context is
// durable, reply kReplyWritten (size, CRC32C) and hold the processes frozen
// until the client sends kCommit (its MANIFEST is durable); a hang-up instead
// resumes them untouched.
inline constexpr uint32_t kFlagHold = 1u << 7;
// with kFlagHold: once the processes' callbacks are done and before anything
// is frozen, reply kReplyQuiesced and wait for kProceed (a multi-node epoch
// freezes no node before every node is quiesced); a hang-up aborts.
inline constexpr uint32_t kFlagBarrier = 1u << 8;
// with kFlagHold: once the processes are frozen and captured (and, when they
// continue, snapshotted copy-on-write), reply kReplyFrozen and wait for
// kProceed; only then may they run again while their pages are written. A
// multi-node epoch lets no node run on before every node is frozen. Sent
// whether a snapshot could be taken or not; a hang-up aborts.
inline constexpr uint32_t kFlagSnapshot = 1u << 9;
// checkpoint: the job is about to end (CheckpointOptions::final).
inline constexpr uint32_t kFlagFinal = 1u << 10;
// checkpoint: track writes from this capture on (core::CheckpointOptions::
// track); with parent_token/parent, an incremental context.
inline constexpr uint32_t kFlagTrack = 1u << 11;
// checkpoint: a listening or never-connected socket leading outside is
// saved as closed, a connected one refused (core::OutsideSockets::
// kCloseUnconnected); with kFlagCloseSockets as well, kFlagCloseSockets wins.
inline constexpr uint32_t kFlagCloseUnconnected = 1u << 12;
inline constexpr uint32_t kKnownFlags = (1u << 13) - 1;

// Request::attached: the fds sent with the message, in this order.
inline constexpr uint32_t kAttachDest = 1u << 0;   // one fd: the context goes there
inline constexpr uint32_t kAttachStdio = 1u << 1;  // three fds: restart's stdin/out/err
int AttachedFdCount(uint32_t attached);

// Request::write_mode (store::WriteMode)
inline constexpr uint32_t kWriteAtomic = 0, kWriteClobber = 1, kWriteBackup = 2;

inline constexpr size_t kMaxRelocations = 256;
inline constexpr size_t kMaxArgs = 256;
inline constexpr size_t kMaxArgLength = 4096;
inline constexpr size_t kMaxTasks = 4096;
inline constexpr size_t kMaxTransientDirs = 64;

struct Request {
  Op op = Op::kPing;
  uint32_t target = 0;        // checkpoint: the pid the scope is taken from
  uint32_t scope = 0;         // format::ScopeKind
  uint32_t after = 0;         // core::AfterCheckpoint or core::AfterRestore
  uint32_t flags = 0;         // kFlag*
  uint32_t after_signal = 0;  // checkpoint: signal sent once complete
  uint32_t requester = 0;     // libcr: the process that asked (its callbacks see it)
  uint32_t write_mode = 0;    // kWrite*
  uint32_t attached = 0;      // kAttach*
  uint64_t request_id = 0;    // status, cancel
  uint64_t time_limit_ms = 0;
  uint64_t callback_timeout_ms = 0;
  std::string path;                   // destination, source, folder or file
  std::vector<std::string> relocate;  // restart: "OLD=NEW"
  std::vector<std::string> argv;      // the client's command line, recorded
  uint32_t node = 0;                  // restart from a store folder (kFlagNode), or the
                                      // node a held checkpoint is (its store identity)
  std::string job;                    // held checkpoint: store identity (job, epoch)
  uint64_t epoch = 0;
  std::string step;  // held checkpoint: the Slurm step ("0", "batch")
  // Checkpoint of a step's local tasks, one tree each, into one context:
  // task_pids[i] heads global task task_ids[i]; target = task_pids[0].
  std::vector<uint32_t> task_pids, task_ids;
  uint32_t compress = 0;        // checkpoint: format::PageCodec of the page data
  uint32_t compress_level = 0;  // zstd level / lz4 acceleration, 0 = the codec's fast default
  uint64_t parent_token = 0;    // checkpoint: incremental against this capture
  std::string parent;           // ... whose file is recorded as this
  // checkpoint: folders whose files will not exist at restart, and what
  // each is (core::CheckpointOptions::transient_dirs), as parallel lists
  std::vector<std::string> transient_dirs, transient_notes;
  bool operator==(const Request&) const = default;
};

// What stasisd knows of one request (status).
struct RequestInfo {
  uint64_t id = 0;
  uint32_t op = 0;
  uint32_t state = 0;  // kStateQueued / kStateRunning / kStateDone
  uint32_t uid = 0;
  uint32_t client_pid = 0;
  uint32_t target = 0;
  int32_t code = 0;
  uint64_t bytes = 0;
  uint64_t elapsed_ms = 0;
  std::string path;
  std::string message;
  bool operator==(const RequestInfo&) const = default;
};
inline constexpr uint32_t kStateQueued = 1, kStateRunning = 2, kStateDone = 3;
const char* StateName(uint32_t state);

struct FileEntry {
  std::string path;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint32_t uid = 0;
  bool operator==(const FileEntry&) const = default;
};

// Reply::kind: one request may be answered by several replies; the last
// one is kFinal (or kExited for a restart).
inline constexpr uint32_t kReplyFinal = 0;
inline constexpr uint32_t kReplyQueued = 1;   // waiting for a free slot
inline constexpr uint32_t kReplyStarted = 2;  // restart: the tree runs (root_pid)
inline constexpr uint32_t kReplyExited = 3;   // restart: the root ended (exit_status)
inline constexpr uint32_t kReplyWritten =
    4;  // held checkpoint: durable (bytes, crc32c); send kCommit
inline constexpr uint32_t kReplyQuiesced =
    5;  // kFlagBarrier: callbacks done, nothing frozen; send kProceed
inline constexpr uint32_t kReplyFrozen = 6;  // kFlagSnapshot: frozen and snapshotted; send kProceed

inline constexpr size_t kMaxListed = 1024;

struct Reply {
  int32_t code = 0;  // 0, or an errno value naming the failure class
  uint32_t kind = kReplyFinal;
  std::string message;  // one line: the error, or what was done
  uint64_t request_id = 0;
  uint32_t processes = 0, threads = 0;
  uint64_t bytes = 0, page_bytes = 0;
  uint64_t pause_us = 0, total_us = 0, callbacks_us = 0;
  uint32_t root_pid = 0;
  uint32_t new_pid_namespace = 0;
  int32_t exit_status = 0;  // restart: the root's wait status
  std::string server;       // ping: "stasisd <version> protocol <n>"
  std::vector<uint32_t> pids;
  std::vector<RequestInfo> requests;
  std::vector<FileEntry> files;
  uint32_t crc32c = 0;  // kReplyWritten: of the whole context written
  // checkpoint: pages written from copy-on-write snapshots (1), or why not
  uint32_t snapshot = 0;
  std::string snapshot_note;
  // checkpoint: memory left to the parent context, and what dirty tracking
  // could not do (CheckpointStats::track_note)
  uint64_t parent_bytes = 0;
  std::string track_note;
  bool operator==(const Reply&) const = default;
};

// Encoders fail only on values over the limits (EINVAL naming the field).
Result<std::string> EncodeRequest(const Request& r);
Result<std::string> EncodeReply(const Reply& r);

// Decoders: the whole packet, header included. Errors are EPROTO (wrong
// version), EMSGSIZE (too big) or EBADMSG (anything malformed), with a
// message naming the problem.
Result<Request> DecodeRequest(std::string_view packet);
Result<Reply> DecodeReply(std::string_view packet);

// Only the header: the op a packet claims (for replying to an undecodable
// request with the right error).
Result<Op> PeekOp(std::string_view packet);

}  // namespace stasis::format::proto
