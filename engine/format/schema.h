// The schema of every metadata payload: for each struct of context.h, one
// Fields() function listing its members with their tag, name, encoding and
// limit. FieldWriter and FieldReader (field_codec.h) both walk these lists,
// so this file, together with the tags of format_constants.h, is the
// definition of the metadata bytes; docs/format.md describes it in prose.
//
// Rules: every member of every struct is listed (test/unit checks it); a new
// member gets a new tag, never a reused one; fields are written in the order
// listed, always, even at their default value.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/format/context.h"
#include "engine/format/context_io.h"
#include "engine/format/field_codec.h"
#include "engine/format/format_constants.h"

namespace stasis::format::internal {

// The End section's payload: totals of what came before it.
struct EndCounts {
  uint64_t section_count = 0;  // sections before End, Image included
  uint64_t process_count = 0;
  uint64_t thread_count = 0;
  uint64_t shared_count = 0;
  uint64_t page_bytes = 0;  // page data bytes of all Pages sections
  bool operator==(const EndCounts&) const = default;
};

// --- nested structs ----------------------------------------------------------

// Is V the encoder (fields at their default may then be left out)?
template <class V>
constexpr bool WritesOnly() {
  if constexpr (requires { V::kWrites; })
    return V::kWrites;
  else
    return false;
}

template <class V, class S>
requires Is<S, FileId>
void Fields(V& v, S& m) {
  v.U64(tag::kFileIdDev, "dev", m.dev);
  v.U64(tag::kFileIdIno, "ino", m.ino);
  v.U64(tag::kFileIdSize, "size", m.size);
  v.I64(tag::kFileIdMtimeNs, "mtime_ns", m.mtime_ns);
  v.U32(tag::kFileIdMode, "mode", m.mode);
}

template <class V, class S>
requires Is<S, ProcessEntry>
void Fields(V& v, S& m) {
  v.U32(tag::kEntryPid, "pid", m.pid);
  v.U32(tag::kEntryPpid, "ppid", m.ppid);
  v.U32(tag::kEntryPgid, "pgid", m.pgid);
  v.U32(tag::kEntrySid, "sid", m.sid);
  v.U32(tag::kEntryFlags, "flags", m.flags);
  v.I32(tag::kEntryExitCode, "exit_code", m.exit_code);
  v.RepeatedU32(tag::kEntryTid, "tid", m.tids, kMaxThreads);
  v.U32(tag::kEntryTask, "task", m.task);
}

template <class V, class S>
requires Is<S, Rlimit>
void Fields(V& v, S& m) {
  v.U64(tag::kRlimitCur, "cur", m.cur);
  v.U64(tag::kRlimitMax, "max", m.max);
}

template <class V, class S>
requires Is<S, SigAction>
void Fields(V& v, S& m) {
  v.U64(tag::kSigActionHandler, "handler", m.handler);
  v.U64(tag::kSigActionFlags, "flags", m.flags);
  v.U64(tag::kSigActionRestorer, "restorer", m.restorer);
  v.U64(tag::kSigActionMask, "mask", m.mask);
}

template <class V, class S>
requires Is<S, MmFields>
void Fields(V& v, S& m) {
  v.U64(tag::kMmStartCode, "start_code", m.start_code);
  v.U64(tag::kMmEndCode, "end_code", m.end_code);
  v.U64(tag::kMmStartData, "start_data", m.start_data);
  v.U64(tag::kMmEndData, "end_data", m.end_data);
  v.U64(tag::kMmStartBrk, "start_brk", m.start_brk);
  v.U64(tag::kMmBrk, "brk", m.brk);
  v.U64(tag::kMmStartStack, "start_stack", m.start_stack);
  v.U64(tag::kMmArgStart, "arg_start", m.arg_start);
  v.U64(tag::kMmArgEnd, "arg_end", m.arg_end);
  v.U64(tag::kMmEnvStart, "env_start", m.env_start);
  v.U64(tag::kMmEnvEnd, "env_end", m.env_end);
}

template <class V, class S>
requires Is<S, Credentials>
void Fields(V& v, S& m) {
  v.U32(tag::kCredsRuid, "ruid", m.ruid);
  v.U32(tag::kCredsEuid, "euid", m.euid);
  v.U32(tag::kCredsSuid, "suid", m.suid);
  v.U32(tag::kCredsFsuid, "fsuid", m.fsuid);
  v.U32(tag::kCredsRgid, "rgid", m.rgid);
  v.U32(tag::kCredsEgid, "egid", m.egid);
  v.U32(tag::kCredsSgid, "sgid", m.sgid);
  v.U32(tag::kCredsFsgid, "fsgid", m.fsgid);
  v.RepeatedU32(tag::kCredsGroup, "group", m.groups, kMaxGroups);
}

template <class V, class S>
requires Is<S, ItimerValue>
void Fields(V& v, S& m) {
  v.U64(tag::kItimerIntervalUs, "interval_us", m.interval_us);
  v.U64(tag::kItimerValueUs, "value_us", m.value_us);
}

template <class V, class S>
requires Is<S, SeccompFilter>
void Fields(V& v, S& m) {
  v.Bytes(tag::kSeccompProgram, "program", m.program);
  v.U64(tag::kSeccompFlags, "flags", m.flags);
}

template <class V, class S>
requires Is<S, PosixTimer>
void Fields(V& v, S& m) {
  v.I32(tag::kPosixTimerId, "id", m.id);
  v.I32(tag::kPosixTimerClock, "clock", m.clock);
  v.U32(tag::kPosixTimerNotify, "notify", m.notify);
  v.U32(tag::kPosixTimerSigno, "signo", m.signo);
  v.U64(tag::kPosixTimerSigval, "sigval", m.sigval);
  v.U32(tag::kPosixTimerTid, "tid", m.tid);
  v.U64(tag::kPosixTimerValueNs, "value_ns", m.value_ns);
  v.U64(tag::kPosixTimerIntervalNs, "interval_ns", m.interval_ns);
}

template <class V, class S>
requires Is<S, Mapping>
void Fields(V& v, S& m) {
  v.U64(tag::kMappingStart, "start", m.start);
  v.U64(tag::kMappingEnd, "end", m.end);
  v.U32(tag::kMappingProt, "prot", m.prot);
  v.U32(tag::kMappingFlags, "flags", m.flags);
  v.U32(tag::kMappingKind, "kind", m.kind);
  v.U64(tag::kMappingPgoff, "pgoff", m.pgoff);
  v.Path(tag::kMappingPath, "path", m.path);
  v.Message(tag::kMappingFileId, "file_id", m.file_id);
  v.U64(tag::kMappingShmemId, "shmem_id", m.shmem_id);
}

template <class V, class S>
requires Is<S, ThreadInfo>
void Fields(V& v, S& m) {
  v.U32(tag::kThreadTid, "tid", m.tid);
  v.Text(tag::kThreadComm, "comm", m.comm, kMaxNameLength);
  v.Bytes(tag::kThreadGpregs, "gpregs", m.gpregs);
  v.Bytes(tag::kThreadXsave, "xsave", m.xsave);
  v.U64(tag::kThreadSigmask, "sigmask", m.sigmask);
  v.Bytes(tag::kThreadPending, "pending", m.pending);
  v.U64(tag::kThreadAltstackSp, "altstack_sp", m.altstack_sp);
  v.U64(tag::kThreadAltstackSize, "altstack_size", m.altstack_size);
  v.U32(tag::kThreadAltstackFlags, "altstack_flags", m.altstack_flags);
  v.U64(tag::kThreadClearTidAddress, "clear_tid_address", m.clear_tid_address);
  v.U64(tag::kThreadRobustList, "robust_list", m.robust_list);
  v.U64(tag::kThreadRobustListLen, "robust_list_len", m.robust_list_len);
  v.U64(tag::kThreadRseqAddress, "rseq_address", m.rseq_address);
  v.U32(tag::kThreadRseqLength, "rseq_length", m.rseq_length);
  v.U32(tag::kThreadRseqSignature, "rseq_signature", m.rseq_signature);
  v.U32(tag::kThreadState, "state", m.state);
  v.U64(tag::kThreadTimerslackNs, "timerslack_ns", m.timerslack_ns);
}

template <class V, class S>
requires Is<S, FileDesc>
void Fields(V& v, S& m) {
  v.I32(tag::kFileFd, "fd", m.fd);
  v.U32(tag::kFileFdFlags, "fd_flags", m.fd_flags);
  v.U32(tag::kFileKind, "kind", m.kind);
  v.U32(tag::kFileOpenFlags, "open_flags", m.open_flags);
  v.U64(tag::kFilePos, "pos", m.pos);
  v.Path(tag::kFilePath, "path", m.path);
  v.Message(tag::kFileFileId, "file_id", m.file_id);
  v.U64(tag::kFileObjectId, "object_id", m.object_id);
  v.U64(tag::kFilePeerId, "peer_id", m.peer_id);
  v.U32(tag::kFilePipeSize, "pipe_size", m.pipe_size);
  v.Bytes(tag::kFileData, "data", m.data);
  v.U32(tag::kFileSockType, "sock_type", m.sock_type);
  v.U32(tag::kFileSockState, "sock_state", m.sock_state);
  v.U64(tag::kFileSockInode, "sock_inode", m.sock_inode);
  // Written only when set: contexts without TCP sockets keep their bytes.
  if (!WritesOnly<V>() || !m.tcp.empty()) v.Bytes(tag::kFileTcp, "tcp", m.tcp);
  // Written only when set: contexts without outside sockets keep their bytes.
  if (!WritesOnly<V>() || m.outside_state)
    v.U32(tag::kFileOutsideState, "outside_state", m.outside_state);
  if (!WritesOnly<V>() || !m.outside_peer.empty())
    v.Path(tag::kFileOutsidePeer, "outside_peer", m.outside_peer);
}

// --- whole section payloads --------------------------------------------------

template <class V, class S>
requires Is<S, ImageInfo>
void Fields(V& v, S& m) {
  v.Text(tag::kImageStasisVersion, "stasis_version", m.stasis_version, kMaxNameLength);
  v.Text(tag::kImageHostname, "hostname", m.hostname, kMaxNameLength);
  v.Text(tag::kImageKernelRelease, "kernel_release", m.kernel_release, kMaxNameLength);
  v.U64(tag::kImageCreatedUnixNs, "created_unix_ns", m.created_unix_ns);
  v.U32(tag::kImageCheckpointUid, "checkpoint_uid", m.checkpoint_uid);
  v.U32(tag::kImageRootPid, "root_pid", m.root_pid);
  v.U32(tag::kImageScope, "scope", m.scope);
  v.U64(tag::kImageCpuXfeatures, "cpu_xfeatures", m.cpu_xfeatures);
  v.RepeatedText(tag::kImageArgv, "argv", m.argv, kMaxStringLength, kMaxArgs);
  v.Text(tag::kImageJob, "job", m.job, kMaxNameLength);
  v.Text(tag::kImageStep, "step", m.step, kMaxNameLength);
  v.U64(tag::kImageEpoch, "epoch", m.epoch);
  v.U32(tag::kImageNodeIndex, "node_index", m.node_index);
  // Written only when set: contexts without tracking keep their bytes.
  if (!WritesOnly<V>() || m.token) v.U64(tag::kImageToken, "token", m.token);
  if (!WritesOnly<V>() || m.parent_token)
    v.U64(tag::kImageParentToken, "parent_token", m.parent_token);
  if (!WritesOnly<V>() || !m.parent.empty()) v.Path(tag::kImageParent, "parent", m.parent);
}

template <class V, class S>
requires Is<S, ProcessTree>
void Fields(V& v, S& m) {
  v.RepeatedMessage(tag::kTreeProcess, "process", m.processes, kMaxProcesses);
}

template <class V, class S>
requires Is<S, ProcessInfo>
void Fields(V& v, S& m) {
  v.U32(tag::kProcessPid, "pid", m.pid);
  v.Text(tag::kProcessComm, "comm", m.comm, kMaxNameLength);
  v.Path(tag::kProcessExePath, "exe_path", m.exe_path);
  v.Message(tag::kProcessExeId, "exe_id", m.exe_id);
  v.Path(tag::kProcessCwd, "cwd", m.cwd);
  v.Path(tag::kProcessRoot, "root", m.root);
  v.U32(tag::kProcessUmask, "umask", m.umask);
  v.U32(tag::kProcessPersonality, "personality", m.personality);
  v.RepeatedMessage(tag::kProcessRlimit, "rlimit", m.rlimits, kMaxRlimits);
  v.Bytes(tag::kProcessCmdline, "cmdline", m.cmdline);
  v.Bytes(tag::kProcessEnviron, "environ", m.environ);
  v.Bytes(tag::kProcessAuxv, "auxv", m.auxv);
  v.Message(tag::kProcessMm, "mm", m.mm);
  v.Message(tag::kProcessCreds, "creds", m.creds);
  v.RepeatedMessage(tag::kProcessSigaction, "sigaction", m.sigactions, kMaxSigactions);
  v.Bytes(tag::kProcessPendingShared, "pending_shared", m.pending_shared);
  v.U64(tag::kProcessBlockedUnused, "blocked_unused", m.blocked_unused);
  v.Message(tag::kProcessItimerReal, "itimer_real", m.itimer_real);
  v.Message(tag::kProcessItimerVirtual, "itimer_virtual", m.itimer_virtual);
  v.Message(tag::kProcessItimerProf, "itimer_prof", m.itimer_prof);
  v.U32(tag::kProcessPdeathsig, "pdeathsig", m.pdeathsig);
  v.U32(tag::kProcessDumpable, "dumpable", m.dumpable);
  v.U64(tag::kProcessTimerslackNs, "timerslack_ns", m.timerslack_ns);
  v.U32(tag::kProcessNoNewPrivs, "no_new_privs", m.no_new_privs);
  v.U32(tag::kProcessExitSignal, "exit_signal", m.exit_signal);
  v.U32(tag::kProcessChildSubreaper, "child_subreaper", m.child_subreaper);
  v.RepeatedMessage(tag::kProcessPosixTimer, "posix_timer", m.posix_timers, kMaxPosixTimers);
  v.RepeatedMessage(tag::kProcessSeccompFilter, "seccomp_filter", m.seccomp_filters,
                    kMaxSeccompFilters);
  // Written only when set: contexts without a pty keep their bytes.
  if (!WritesOnly<V>() || m.ctty_pty) v.U32(tag::kProcessCttyPty, "ctty_pty", m.ctty_pty);
  if (!WritesOnly<V>() || m.tty_pgrp) v.U32(tag::kProcessTtyPgrp, "tty_pgrp", m.tty_pgrp);
}

template <class V, class S>
requires Is<S, SharedMemory>
void Fields(V& v, S& m) {
  v.U64(tag::kShmId, "id", m.id);
  v.U64(tag::kShmSize, "size", m.size);
  v.U32(tag::kShmKind, "kind", m.kind);
  v.Path(tag::kShmName, "name", m.name);
  v.I64(tag::kShmSysvKey, "sysv_key", m.sysv_key);
  v.U32(tag::kShmSysvMode, "sysv_mode", m.sysv_mode);
}

template <class V, class S>
requires Is<S, EndCounts>
void Fields(V& v, S& m) {
  v.U64(tag::kEndSectionCount, "section_count", m.section_count);
  v.U64(tag::kEndProcessCount, "process_count", m.process_count);
  v.U64(tag::kEndThreadCount, "thread_count", m.thread_count);
  v.U64(tag::kEndSharedCount, "shared_count", m.shared_count);
  v.U64(tag::kEndPageBytes, "page_bytes", m.page_bytes);
}

// Sections about one process carry its pid next to the payload proper.
// These take the parts separately so the writer encodes without copying.

template <class V, class Pid, class Vec>
void MappingsFields(V& v, Pid& pid, Vec& mappings) {
  v.U32(tag::kMappingsPid, "pid", pid);
  v.RepeatedMessage(tag::kMappingsMapping, "mapping", mappings, kMaxMappings);
}

template <class V, class Pid, class Vec>
void FilesFields(V& v, Pid& pid, Vec& files) {
  v.U32(tag::kFilesPid, "pid", pid);
  v.RepeatedMessage(tag::kFilesFile, "file", files, kMaxFiles);
}

template <class V, class Pid, class Thread>
void ThreadFields(V& v, Pid& pid, Thread& thread) {
  v.U32(tag::kThreadPid, "pid", pid);
  v.Message(tag::kThreadInfo, "thread", thread);
}

template <class V, class Pid, class Runs>
void ParentPagesFields(V& v, Pid& pid, Runs& runs) {
  v.U32(tag::kParentPagesPid, "pid", pid);
  v.Runs(tag::kParentPagesRuns, "runs", runs);
}

template <class V, class Owner, class Runs>
void PagesFields(V& v, Owner& owner, Runs& runs, uint32_t& codec) {
  v.U32(tag::kPagesOwnerKind, "owner_kind", owner.kind);
  v.U64(tag::kPagesOwnerId, "owner_id", owner.id);
  v.Runs(tag::kPagesRuns, "runs", runs);
  if (codec != 0 || !V::kWrites) v.U32(tag::kPagesCodec, "codec", codec);
}

}  // namespace stasis::format::internal
