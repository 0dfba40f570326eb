// The engine protocol's encoder and decoder; see protocol.h and
// docs/protocol.md. The field lists below are the definition of the
// payloads: one Fields() per struct, walked by the same FieldWriter and
// FieldReader as context metadata, so encoder and decoder cannot disagree.
#include "engine/format/protocol.h"

#include <cstdio>

#include "engine/format/field_codec.h"

namespace stasis::format::proto {
namespace {

using internal::FieldReader;
using internal::FieldWriter;
using internal::Is;
using internal::LoadU16;
using internal::LoadU32;
using internal::StoreU16;
using internal::StoreU32;

// Tags: never reuse one; a new member gets a new tag (< 64).
namespace tag {
inline constexpr uint32_t kTarget = 1, kScope = 2, kAfter = 3, kFlags = 4, kAfterSignal = 5,
                          kRequester = 6, kWriteMode = 7, kAttached = 8, kRequestId = 9,
                          kTimeLimit = 10, kCallbackTimeout = 11, kPath = 12, kRelocate = 13,
                          kArgv = 14, kNode = 15, kJob = 16, kEpoch = 17, kStep = 18, kTaskPid = 19,
                          kTaskId = 20, kCompress = 21, kCompressLevel = 22, kParentToken = 23,
                          kParent = 24, kTransientDir = 25, kTransientNote = 26;
inline constexpr uint32_t kCode = 1, kKind = 2, kMessage = 3, kReplyId = 4, kProcesses = 5,
                          kThreads = 6, kBytes = 7, kPageBytes = 8, kPauseUs = 9, kTotalUs = 10,
                          kCallbacksUs = 11, kRootPid = 12, kNewPidNs = 13, kExitStatus = 14,
                          kServer = 15, kPids = 16, kRequests = 17, kFiles = 18, kCrc32c = 19,
                          kSnapshot = 20, kSnapshotNote = 21, kParentBytes = 22, kTrackNote = 23;
inline constexpr uint32_t kInfoId = 1, kInfoOp = 2, kInfoState = 3, kInfoUid = 4,
                          kInfoClientPid = 5, kInfoTarget = 6, kInfoCode = 7, kInfoBytes = 8,
                          kInfoElapsed = 9, kInfoPath = 10, kInfoMessage = 11;
inline constexpr uint32_t kFilePath = 1, kFileSize = 2, kFileMtime = 3, kFileUid = 4;
}  // namespace tag

inline constexpr size_t kMaxMessageText = 4096;
inline constexpr size_t kMaxPids = 4096;

}  // namespace
}  // namespace stasis::format::proto

// Fields() must be found by FieldWriter/FieldReader's unqualified calls:
// they live in the codec's namespace.
namespace stasis::format::internal {

template <class V, class S>
requires Is<S, proto::Request>
void Fields(V& v, S& m) {
  namespace t = proto::tag;
  v.U32(t::kTarget, "target", m.target);
  v.U32(t::kScope, "scope", m.scope);
  v.U32(t::kAfter, "after", m.after);
  v.U32(t::kFlags, "flags", m.flags);
  v.U32(t::kAfterSignal, "after_signal", m.after_signal);
  v.U32(t::kRequester, "requester", m.requester);
  v.U32(t::kWriteMode, "write_mode", m.write_mode);
  v.U32(t::kAttached, "attached", m.attached);
  v.U64(t::kRequestId, "request_id", m.request_id);
  v.U64(t::kTimeLimit, "time_limit_ms", m.time_limit_ms);
  v.U64(t::kCallbackTimeout, "callback_timeout_ms", m.callback_timeout_ms);
  v.Path(t::kPath, "path", m.path);
  v.RepeatedText(t::kRelocate, "relocate", m.relocate, 2 * kMaxPathLength + 1,
                 proto::kMaxRelocations);
  v.RepeatedText(t::kArgv, "argv", m.argv, proto::kMaxArgLength, proto::kMaxArgs);
  v.U32(t::kNode, "node", m.node);
  v.Text(t::kJob, "job", m.job, kMaxNameLength);
  v.U64(t::kEpoch, "epoch", m.epoch);
  v.Text(t::kStep, "step", m.step, kMaxNameLength);
  v.RepeatedU32(t::kTaskPid, "task_pid", m.task_pids, proto::kMaxTasks);
  v.RepeatedU32(t::kTaskId, "task_id", m.task_ids, proto::kMaxTasks);
  // Written only when set, so that requests without compression keep
  // their bytes (and older daemons, which skip unknown tags, their meaning).
  if (!V::kWrites || m.compress) v.U32(t::kCompress, "compress", m.compress);
  if (!V::kWrites || m.compress_level) v.U32(t::kCompressLevel, "compress_level", m.compress_level);
  if (!V::kWrites || m.parent_token) v.U64(t::kParentToken, "parent_token", m.parent_token);
  if (!V::kWrites || !m.parent.empty()) v.Path(t::kParent, "parent", m.parent);
  v.RepeatedText(t::kTransientDir, "transient_dir", m.transient_dirs, kMaxPathLength,
                 proto::kMaxTransientDirs);
  v.RepeatedText(t::kTransientNote, "transient_note", m.transient_notes, proto::kMaxMessageText,
                 proto::kMaxTransientDirs);
}

template <class V, class S>
requires Is<S, proto::RequestInfo>
void Fields(V& v, S& m) {
  namespace t = proto::tag;
  v.U64(t::kInfoId, "id", m.id);
  v.U32(t::kInfoOp, "op", m.op);
  v.U32(t::kInfoState, "state", m.state);
  v.U32(t::kInfoUid, "uid", m.uid);
  v.U32(t::kInfoClientPid, "client_pid", m.client_pid);
  v.U32(t::kInfoTarget, "target", m.target);
  v.I32(t::kInfoCode, "code", m.code);
  v.U64(t::kInfoBytes, "bytes", m.bytes);
  v.U64(t::kInfoElapsed, "elapsed_ms", m.elapsed_ms);
  v.Path(t::kInfoPath, "path", m.path);
  v.Text(t::kInfoMessage, "message", m.message, proto::kMaxMessageText);
}

template <class V, class S>
requires Is<S, proto::FileEntry>
void Fields(V& v, S& m) {
  namespace t = proto::tag;
  v.Path(t::kFilePath, "path", m.path);
  v.U64(t::kFileSize, "size", m.size);
  v.I64(t::kFileMtime, "mtime_ns", m.mtime_ns);
  v.U32(t::kFileUid, "uid", m.uid);
}

template <class V, class S>
requires Is<S, proto::Reply>
void Fields(V& v, S& m) {
  namespace t = proto::tag;
  v.I32(t::kCode, "code", m.code);
  v.U32(t::kKind, "kind", m.kind);
  v.Text(t::kMessage, "message", m.message, proto::kMaxMessageText);
  v.U64(t::kReplyId, "request_id", m.request_id);
  v.U32(t::kProcesses, "processes", m.processes);
  v.U32(t::kThreads, "threads", m.threads);
  v.U64(t::kBytes, "bytes", m.bytes);
  v.U64(t::kPageBytes, "page_bytes", m.page_bytes);
  v.U64(t::kPauseUs, "pause_us", m.pause_us);
  v.U64(t::kTotalUs, "total_us", m.total_us);
  v.U64(t::kCallbacksUs, "callbacks_us", m.callbacks_us);
  v.U32(t::kRootPid, "root_pid", m.root_pid);
  v.U32(t::kNewPidNs, "new_pid_namespace", m.new_pid_namespace);
  v.I32(t::kExitStatus, "exit_status", m.exit_status);
  v.Text(t::kServer, "server", m.server, proto::kMaxMessageText);
  v.RepeatedU32(t::kPids, "pids", m.pids, proto::kMaxPids);
  v.RepeatedMessage(t::kRequests, "requests", m.requests, proto::kMaxListed);
  v.RepeatedMessage(t::kFiles, "files", m.files, proto::kMaxListed);
  v.U32(t::kCrc32c, "crc32c", m.crc32c);
  v.U32(t::kSnapshot, "snapshot", m.snapshot);
  v.Text(t::kSnapshotNote, "snapshot_note", m.snapshot_note, proto::kMaxMessageText);
  if (!V::kWrites || m.parent_bytes) v.U64(t::kParentBytes, "parent_bytes", m.parent_bytes);
  if (!V::kWrites || !m.track_note.empty())
    v.Text(t::kTrackNote, "track_note", m.track_note, proto::kMaxMessageText);
}

}  // namespace stasis::format::internal

namespace stasis::format::proto {
namespace {

bool KnownOp(uint16_t op) {
  return (op >= static_cast<uint16_t>(Op::kPing) && op <= static_cast<uint16_t>(Op::kProceed)) ||
         op == static_cast<uint16_t>(Op::kReply);
}

template <class T>
Result<std::string> Encode(Op op, const T& m) {
  std::string out(kHeaderSize, '\0');
  Status s = internal::EncodeFields(&out, [&m](FieldWriter& w) { internal::Fields(w, m); });
  if (!s.ok()) return s;
  if (out.size() > kMaxMessageSize)
    return Status::Error(EMSGSIZE, std::string(OpName(op)) + " message is " +
                                       std::to_string(out.size()) + " bytes, over the limit of " +
                                       std::to_string(kMaxMessageSize));
  StoreU32(out.data(), kMagic);
  StoreU16(out.data() + 4, kVersion);
  StoreU16(out.data() + 6, static_cast<uint16_t>(op));
  StoreU32(out.data() + 8, static_cast<uint32_t>(out.size() - kHeaderSize));
  return out;
}

// Checks the header; returns the payload.
Result<std::string_view> Payload(std::string_view packet, Op* op) {
  if (packet.size() > kMaxMessageSize)
    return Status::Error(EMSGSIZE, "message is " + std::to_string(packet.size()) +
                                       " bytes, over the limit of " +
                                       std::to_string(kMaxMessageSize));
  if (packet.size() < kHeaderSize)
    return Status::Corrupt("message is " + std::to_string(packet.size()) +
                           " bytes, shorter than the " + std::to_string(kHeaderSize) +
                           "-byte header");
  if (LoadU32(packet.data()) != kMagic) return Status::Corrupt("not a stasis message (bad magic)");
  uint16_t version = LoadU16(packet.data() + 4);
  if (version != kVersion)
    return Status::Error(EPROTO, "protocol version " + std::to_string(version) +
                                     " is not supported; this side speaks version " +
                                     std::to_string(kVersion));
  uint16_t raw_op = LoadU16(packet.data() + 6);
  if (!KnownOp(raw_op)) return Status::Corrupt("unknown operation " + std::to_string(raw_op));
  uint32_t length = LoadU32(packet.data() + 8);
  if (length != packet.size() - kHeaderSize)
    return Status::Corrupt("header says " + std::to_string(length) +
                           " payload bytes, the message has " +
                           std::to_string(packet.size() - kHeaderSize) + " (truncated?)");
  *op = static_cast<Op>(raw_op);
  return packet.substr(kHeaderSize);
}

bool HasText(const std::vector<std::string>& v, char c) {
  for (const auto& s : v)
    if (s.find(c) != std::string::npos) return true;
  return false;
}

// What each op needs to make sense.
Status CheckRequest(const Request& r) {
  std::string op = OpName(r.op);
  if (r.flags & ~kKnownFlags)
    return Status::Corrupt(op + ": unknown flags 0x" + [&] {
      char b[16];
      std::snprintf(b, sizeof b, "%x", r.flags & ~kKnownFlags);
      return std::string(b);
    }());
  if (r.attached & ~(kAttachDest | kAttachStdio))
    return Status::Corrupt(op + ": unknown attached fd kinds");
  switch (r.op) {
    case Op::kCheckpoint:
      if (r.target == 0) return Status::Corrupt("checkpoint: no target pid");
      if (r.task_pids.size() != r.task_ids.size())
        return Status::Corrupt("checkpoint: " + std::to_string(r.task_pids.size()) +
                               " task pids but " + std::to_string(r.task_ids.size()) + " task ids");
      if (!r.task_pids.empty() && (r.task_pids[0] != r.target || r.scope != 0))
        return Status::Corrupt(
            "checkpoint: with tasks, the target is the first task's pid and the scope a tree");
      for (uint32_t p : r.task_pids)
        if (p == 0 || p > (1u << 22))
          return Status::Corrupt("checkpoint: task pid " + std::to_string(p) + " is out of range");
      for (unsigned char ch : r.step)
        if (ch < 0x20 || ch == 0x7f)
          return Status::Corrupt("checkpoint: step id contains a control character");
      if (r.target > (1u << 22))
        return Status::Corrupt("checkpoint: target pid " + std::to_string(r.target) +
                               " is out of range");
      if (r.scope > 3)
        return Status::Corrupt("checkpoint: unknown scope " + std::to_string(r.scope));
      if (r.after > 3)
        return Status::Corrupt("checkpoint: unknown after-action " + std::to_string(r.after));
      if (r.after_signal > 64)
        return Status::Corrupt("checkpoint: signal " + std::to_string(r.after_signal) +
                               " is out of range");
      if (r.compress > kCodecZstd)
        return Status::Corrupt("checkpoint: unknown page codec " + std::to_string(r.compress));
      if (r.compress_level > 22)
        return Status::Corrupt("checkpoint: compression level " + std::to_string(r.compress_level) +
                               " is out of range");
      if (r.write_mode > kWriteBackup)
        return Status::Corrupt("checkpoint: unknown write mode " + std::to_string(r.write_mode));
      if (r.attached & kAttachStdio)
        return Status::Corrupt("checkpoint: stdio fds are for restart");
      if (!(r.attached & kAttachDest) && r.path.empty())
        return Status::Corrupt("checkpoint: no destination (path or fd)");
      if ((r.attached & kAttachDest) && !r.path.empty())
        return Status::Corrupt("checkpoint: both a destination path and an fd");
      if (!r.relocate.empty()) return Status::Corrupt("checkpoint: relocations are for restart");
      if (r.flags & kFlagNode) return Status::Corrupt("checkpoint: a node index is for restart");
      if ((r.flags & kFlagSnapshot) && !(r.flags & kFlagHold))
        return Status::Corrupt("checkpoint: the snapshot flag needs the hold flag");
      if ((r.flags & kFlagBarrier) && !(r.flags & kFlagHold))
        return Status::Corrupt("checkpoint: a barrier is for held checkpoints");
      if ((r.flags & kFlagHold) && !(r.attached & kAttachDest))
        return Status::Corrupt("checkpoint: a held checkpoint needs its destination fd");
      if (!(r.flags & kFlagHold) && (!r.job.empty() || !r.step.empty() || r.epoch || r.node))
        return Status::Corrupt("checkpoint: a store identity is for held checkpoints");
      for (unsigned char ch : r.job)
        if (ch < 0x20 || ch == 0x7f)
          return Status::Corrupt("checkpoint: job id contains a control character");
      if (r.transient_dirs.size() != r.transient_notes.size())
        return Status::Corrupt("checkpoint: " + std::to_string(r.transient_dirs.size()) +
                               " transient folders but " +
                               std::to_string(r.transient_notes.size()) + " notes");
      for (const auto& d : r.transient_dirs)
        if (d.size() < 2 || d[0] != '/' || d.back() == '/' || d.find('\0') != std::string::npos)
          return Status::Corrupt("checkpoint: transient folder '" + d +
                                 "' is not an absolute path without a trailing slash");
      if (HasText(r.transient_notes, '\0') || HasText(r.transient_notes, '\n'))
        return Status::Corrupt("checkpoint: a transient folder's note is not one line of text");
      return Status::Ok();
    case Op::kRestart:
      if (r.path.empty()) return Status::Corrupt("restart: no context file");
      if (r.after > 3)
        return Status::Corrupt("restart: unknown after-action " + std::to_string(r.after));
      if (r.attached & kAttachDest)
        return Status::Corrupt("restart: a destination fd is for checkpoint");
      for (const auto& s : r.relocate) {
        size_t eq = s.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == s.size())
          return Status::Corrupt("restart: relocation '" + s + "' is not OLD=NEW");
      }
      if (HasText(r.relocate, '\0'))
        return Status::Corrupt("restart: relocation contains a NUL byte");
      return Status::Ok();
    case Op::kCommit:
    case Op::kProceed:
      if (r.attached) return Status::Corrupt(op + ": takes no fds");
      return Status::Ok();
    case Op::kCancel:
      if (r.request_id == 0) return Status::Corrupt("cancel: no request id");
      [[fallthrough]];
    case Op::kPing:
    case Op::kStatus:
      if (r.attached) return Status::Corrupt(op + ": takes no fds");
      return Status::Ok();
    case Op::kList:
    case Op::kDelete:
      if (r.attached) return Status::Corrupt(op + ": takes no fds");
      if (r.path.empty()) return Status::Corrupt(op + ": no path");
      return Status::Ok();
    case Op::kReply:
      return Status::Corrupt("a reply is not a request");
  }
  return Status::Corrupt("unknown operation");
}

}  // namespace

const char* OpName(Op op) {
  switch (op) {
    case Op::kPing:
      return "ping";
    case Op::kCheckpoint:
      return "checkpoint";
    case Op::kRestart:
      return "restart";
    case Op::kStatus:
      return "status";
    case Op::kCancel:
      return "cancel";
    case Op::kList:
      return "list";
    case Op::kDelete:
      return "delete";
    case Op::kCommit:
      return "commit";
    case Op::kProceed:
      return "proceed";
    case Op::kReply:
      return "reply";
  }
  return "unknown";
}

const char* StateName(uint32_t state) {
  switch (state) {
    case kStateQueued:
      return "queued";
    case kStateRunning:
      return "running";
    case kStateDone:
      return "done";
  }
  return "unknown";
}

int AttachedFdCount(uint32_t attached) {
  return ((attached & kAttachDest) ? 1 : 0) + ((attached & kAttachStdio) ? 3 : 0);
}

Result<std::string> EncodeRequest(const Request& r) {
  if (r.op == Op::kReply) return Status::Error(EINVAL, "a reply is not a request");
  return Encode(r.op, r);
}

Result<std::string> EncodeReply(const Reply& r) { return Encode(Op::kReply, r); }

Result<Op> PeekOp(std::string_view packet) {
  Op op;
  auto payload = Payload(packet, &op);
  if (!payload) return payload.error();
  return op;
}

Result<Request> DecodeRequest(std::string_view packet) {
  Request r;
  auto payload = Payload(packet, &r.op);
  if (!payload) return payload.error();
  if (r.op == Op::kReply) return Status::Corrupt("a reply is not a request");
  Status s = FieldReader::DecodeMessage(*payload, &r);
  if (!s.ok()) return s.Prefixed(OpName(r.op));
  STASIS_RETURN_IF_ERROR(CheckRequest(r));
  return r;
}

Result<Reply> DecodeReply(std::string_view packet) {
  Op op;
  auto payload = Payload(packet, &op);
  if (!payload) return payload.error();
  if (op != Op::kReply) return Status::Corrupt(std::string("expected a reply, got ") + OpName(op));
  Reply r;
  Status s = FieldReader::DecodeMessage(*payload, &r);
  if (!s.ok()) return s.Prefixed("reply");
  return r;
}

}  // namespace stasis::format::proto
