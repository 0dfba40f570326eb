// Every number that defines the bytes of a context file, format version 1.
// docs/format.md is the specification in prose; this header is its
// machine-readable half and must change together with it (as LevelDB's
// db/log_format.h goes with doc/log_format.md). Only engine/format includes
// it: the rest of stasis sees context.h and context_io.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/format/context.h"

namespace stasis::format {

// --- file header (docs/format.md, "File header") ----------------------------

// PNG-style: a high byte catches 7-bit transfers, CR LF catches line-ending
// conversion, ^Z stops DOS `type`.
inline constexpr char kFileMagic[8] = {'\x89', 'S', 'C', 'X', '\r', '\n', '\x1a', '\n'};
inline constexpr uint32_t kFileHeaderSize = 64;

namespace file_header {
inline constexpr size_t kMagic = 0;               // 8 bytes
inline constexpr size_t kVersion = 8;             // u32, kFormatVersion
inline constexpr size_t kHeaderSize = 12;         // u32, kFileHeaderSize
inline constexpr size_t kSectionHeaderSize = 16;  // u32, kSectionHeaderSize
inline constexpr size_t kFlags = 20;              // u32, 0 in version 1
inline constexpr size_t kPageSize = 24;           // u32, kPageSize
inline constexpr size_t kReserved = 28;           // 32 bytes of zero
inline constexpr size_t kHeaderCrc = 60;          // u32, CRC32C of bytes [0, 60)
}  // namespace file_header

// --- section header (docs/format.md, "Sections") ----------------------------

inline constexpr uint32_t kSectionHeaderSize = 32;
inline constexpr uint32_t kSectionMagic = 0x54434553;  // "SECT" in file order
inline constexpr uint16_t kSectionVersion = 1;         // of every v1 section type
inline constexpr uint16_t kMaxSectionType = 10;        // SectionType::kParentPages

namespace section_header {
inline constexpr size_t kMagic = 0;           // u32, kSectionMagic
inline constexpr size_t kType = 4;            // u16, SectionType
inline constexpr size_t kVersion = 6;         // u16, kSectionVersion
inline constexpr size_t kFlags = 8;           // u32, 0 in version 1
inline constexpr size_t kMetaLength = 12;     // u32, metadata bytes after the header
inline constexpr size_t kPayloadLength = 16;  // u64, all bytes after the header
inline constexpr size_t kMetaCrc = 24;        // u32, CRC32C of the metadata
inline constexpr size_t kHeaderCrc = 28;      // u32, CRC32C of bytes [0, 28)
}  // namespace section_header

// A Pages section ends with the CRC32C of its whole payload (metadata,
// padding, page data).
inline constexpr uint32_t kPagesTrailerSize = 4;

// --- metadata fields (docs/format.md, "Metadata encoding") ------------------

// Each field: u32 tag, u32 length, `length` bytes. Tag 0 is invalid; tags of
// known fields are below 64.
inline constexpr size_t kFieldHeaderSize = 8;
inline constexpr uint32_t kMaxKnownTag = 63;

// --- limits: what a reader accepts (and so what a writer may produce) -------

inline constexpr uint32_t kMaxMetaLength = 64u << 20;  // one section's metadata
inline constexpr size_t kMaxPathLength = 4096;         // PATH_MAX
inline constexpr size_t kMaxNameLength = 4096;         // comm, hostname, versions
inline constexpr size_t kMaxStringLength = 1u << 20;   // one argv string
inline constexpr size_t kMaxArgs = 1u << 16;
inline constexpr size_t kMaxProcesses = 1u << 22;  // pid_max limit
inline constexpr size_t kMaxThreads = 1u << 22;    // per process
inline constexpr size_t kMaxGroups = 65536;        // NGROUPS_MAX
inline constexpr size_t kMaxRlimits = 64;
inline constexpr size_t kMaxSigactions = 64;
inline constexpr size_t kMaxPosixTimers = 4096;
inline constexpr size_t kMaxSeccompFilters = 512;
inline constexpr size_t kMaxMappings = 1u << 20;  // per process
inline constexpr size_t kMaxFiles = 1u << 20;     // per process
inline constexpr size_t kPageRunSize = 16;        // u64 start, u64 npages
inline constexpr size_t kSiginfoSize = 128;       // pending signal records
// x86-64 user space (4-level paging): page runs and mappings end below it.
inline constexpr uint64_t kUserSpaceEnd = 0x800000000000ull;

// --- field tags, one enum per encoded struct ---------------------------------

namespace tag {

enum Image : uint32_t {
  kImageStasisVersion = 1,
  kImageHostname = 2,
  kImageKernelRelease = 3,
  kImageCreatedUnixNs = 4,
  kImageCheckpointUid = 5,
  kImageRootPid = 6,
  kImageScope = 7,
  kImageCpuXfeatures = 8,
  kImageArgv = 9,  // repeated
  kImageJob = 10,
  kImageStep = 11,
  kImageEpoch = 12,
  kImageNodeIndex = 13,
  kImageToken = 14,        // u64, left out when 0
  kImageParentToken = 15,  // u64, left out when 0
  kImageParent = 16,       // text, left out when empty
};

enum Tree : uint32_t {
  kTreeProcess = 1,  // repeated ProcessEntry
};

enum ProcessEntry : uint32_t {
  kEntryPid = 1,
  kEntryPpid = 2,
  kEntryPgid = 3,
  kEntrySid = 4,
  kEntryFlags = 5,
  kEntryExitCode = 6,
  kEntryTid = 7,  // repeated
  kEntryTask = 8,
};

enum Process : uint32_t {
  kProcessPid = 1,
  kProcessComm = 2,
  kProcessExePath = 3,
  kProcessExeId = 4,  // FileId
  kProcessCwd = 5,
  kProcessRoot = 6,
  kProcessUmask = 7,
  kProcessPersonality = 8,
  kProcessRlimit = 9,  // repeated Rlimit
  kProcessCmdline = 10,
  kProcessEnviron = 11,
  kProcessAuxv = 12,
  kProcessMm = 13,         // MmFields
  kProcessCreds = 14,      // Credentials
  kProcessSigaction = 15,  // repeated SigAction
  kProcessPendingShared = 16,
  kProcessBlockedUnused = 17,
  kProcessItimerReal = 18,     // ItimerValue
  kProcessItimerVirtual = 19,  // ItimerValue
  kProcessItimerProf = 20,     // ItimerValue
  kProcessPdeathsig = 21,
  kProcessDumpable = 22,
  kProcessTimerslackNs = 23,
  kProcessNoNewPrivs = 24,
  kProcessExitSignal = 25,
  kProcessChildSubreaper = 26,
  kProcessPosixTimer = 27,     // repeated PosixTimer
  kProcessSeccompFilter = 28,  // repeated SeccompFilter, oldest first
  kProcessCttyPty = 29,
  kProcessTtyPgrp = 30,
};

enum SeccompFilter : uint32_t { kSeccompProgram = 1, kSeccompFlags = 2 };

enum PosixTimer : uint32_t {
  kPosixTimerId = 1,
  kPosixTimerClock = 2,
  kPosixTimerNotify = 3,  // SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID
  kPosixTimerSigno = 4,
  kPosixTimerSigval = 5,
  kPosixTimerTid = 6,  // SIGEV_THREAD_ID: the thread, as the process sees it
  kPosixTimerValueNs = 7,
  kPosixTimerIntervalNs = 8,
};

enum Rlimit : uint32_t { kRlimitCur = 1, kRlimitMax = 2 };

enum SigAction : uint32_t {
  kSigActionHandler = 1,
  kSigActionFlags = 2,
  kSigActionRestorer = 3,
  kSigActionMask = 4,
};

enum MmFields : uint32_t {
  kMmStartCode = 1,
  kMmEndCode = 2,
  kMmStartData = 3,
  kMmEndData = 4,
  kMmStartBrk = 5,
  kMmBrk = 6,
  kMmStartStack = 7,
  kMmArgStart = 8,
  kMmArgEnd = 9,
  kMmEnvStart = 10,
  kMmEnvEnd = 11,
};

enum FileId : uint32_t {
  kFileIdDev = 1,
  kFileIdIno = 2,
  kFileIdSize = 3,
  kFileIdMtimeNs = 4,
  kFileIdMode = 5,
};

enum Credentials : uint32_t {
  kCredsRuid = 1,
  kCredsEuid = 2,
  kCredsSuid = 3,
  kCredsFsuid = 4,
  kCredsRgid = 5,
  kCredsEgid = 6,
  kCredsSgid = 7,
  kCredsFsgid = 8,
  kCredsGroup = 9,  // repeated
};

enum ItimerValue : uint32_t { kItimerIntervalUs = 1, kItimerValueUs = 2 };

enum Mappings : uint32_t {
  kMappingsPid = 1,
  kMappingsMapping = 2,  // repeated Mapping
};

enum Mapping : uint32_t {
  kMappingStart = 1,
  kMappingEnd = 2,
  kMappingProt = 3,
  kMappingFlags = 4,
  kMappingKind = 5,
  kMappingPgoff = 6,
  kMappingPath = 7,
  kMappingFileId = 8,  // FileId
  kMappingShmemId = 9,
};

enum SharedMemory : uint32_t {
  kShmId = 1,
  kShmSize = 2,
  kShmKind = 3,
  kShmName = 4,
  kShmSysvKey = 5,
  kShmSysvMode = 6,
};

enum Thread : uint32_t {
  kThreadPid = 1,
  kThreadInfo = 2,  // ThreadInfo
};

enum ThreadInfo : uint32_t {
  kThreadTid = 1,
  kThreadComm = 2,
  kThreadGpregs = 3,
  kThreadXsave = 4,
  kThreadSigmask = 5,
  kThreadPending = 6,
  kThreadAltstackSp = 7,
  kThreadAltstackSize = 8,
  kThreadAltstackFlags = 9,
  kThreadClearTidAddress = 10,
  kThreadRobustList = 11,
  kThreadRobustListLen = 12,
  kThreadRseqAddress = 13,
  kThreadRseqLength = 14,
  kThreadRseqSignature = 15,
  kThreadState = 16,
  kThreadTimerslackNs = 17,
};

enum Files : uint32_t {
  kFilesPid = 1,
  kFilesFile = 2,  // repeated FileDesc
};

enum FileDesc : uint32_t {
  kFileFd = 1,
  kFileFdFlags = 2,
  kFileKind = 3,
  kFileOpenFlags = 4,
  kFilePos = 5,
  kFilePath = 6,
  kFileFileId = 7,  // FileId
  kFileObjectId = 8,
  kFilePeerId = 9,
  kFilePipeSize = 10,
  kFileData = 11,
  kFileSockType = 12,
  kFileSockState = 13,
  kFileSockInode = 14,
  kFileTcp = 15,  // bytes: an encoded TcpState (tcp_state.h), TCP sockets only
  kFileOutsideState = 16,
  kFileOutsidePeer = 17,
};

enum Pages : uint32_t {
  kPagesOwnerKind = 1,
  kPagesOwnerId = 2,
  kPagesRuns = 3,   // packed: kPageRunSize bytes per run
  kPagesCodec = 4,  // u32 PageCodec; only in version 2 (compressed) sections
};

enum ParentPages : uint32_t {
  kParentPagesPid = 1,
  kParentPagesRuns = 2,  // packed like kPagesRuns
};

enum End : uint32_t {
  kEndSectionCount = 1,
  kEndProcessCount = 2,
  kEndThreadCount = 3,
  kEndSharedCount = 4,
  kEndPageBytes = 5,
};

}  // namespace tag
}  // namespace stasis::format
