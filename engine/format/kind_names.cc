// See kind_names.h.
#include "engine/format/kind_names.h"

#include "engine/format/context.h"

namespace stasis::format {

const char* FileKindName(uint32_t kind) {
  switch (kind) {
    case kFileRegular:
      return "file";
    case kFileDirectory:
      return "dir";
    case kFileCharDevice:
      return "chardev";
    case kFileTty:
      return "tty";
    case kFilePipe:
      return "pipe";
    case kFileFifo:
      return "fifo";
    case kFileUnixSocket:
      return "unix";
    case kFileEpoll:
      return "epoll";
    case kFileEventfd:
      return "eventfd";
    case kFileSignalfd:
      return "signalfd";
    case kFileTimerfd:
      return "timerfd";
    case kFilePtyMaster:
      return "ptmx";
    case kFilePtySlave:
      return "pts";
    case kFileTcpSocket:
      return "tcp";
  }
  return "other";
}

const char* MappingKindName(uint32_t kind) {
  switch (kind) {
    case kMapAnon:
      return "anon";
    case kMapFile:
      return "file";
    case kMapSharedAnon:
      return "shmem";
    case kMapVdso:
      return "vdso";
    case kMapVvar:
      return "vvar";
    case kMapVvarVclock:
      return "vvar_vclock";
    case kMapVsyscall:
      return "vsyscall";
    case kMapSysvShm:
      return "sysv";
    case kMapFileByValue:
      return "file-by-value";
  }
  return "?";
}

const char* SharedMemoryKindName(uint32_t kind) {
  switch (kind) {
    case kShmAnon:
      return "anon";
    case kShmMemfd:
      return "memfd";
    case kShmPosix:
      return "posix-shm";
    case kShmSysv:
      return "sysv";
    case kShmFileByValue:
      return "file-by-value";
    case kShmHugetlb:
      return "hugetlb";
  }
  return "?";
}

const char* SocketStateName(uint32_t state) {
  switch (state) {
    case kSockEstablished:
      return "connected";
    case kSockSynSent:
      return "syn-sent";
    case kSockSynRecv:
      return "syn-recv";
    case kSockFinWait1:
      return "fin-wait1";
    case kSockFinWait2:
      return "fin-wait2";
    case kSockTimeWait:
      return "time-wait";
    case kSockClose:
      return "closed";
    case kSockCloseWait:
      return "close-wait";
    case kSockLastAck:
      return "last-ack";
    case kSockListen:
      return "listening";
    case kSockClosing:
      return "closing";
  }
  return "?";
}

}  // namespace stasis::format
