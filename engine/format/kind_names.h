// Human-readable names of the kinds a context records: what `stasis show`
// prints and messages name. Short, lower case, stable (scripts read them).
#pragma once

#include <cstdint>

namespace stasis::format {

// FileKind: "file", "dir", "chardev", "tty", "pipe", "fifo", "unix", "epoll",
// ..., "other" for kFileOther and unknown numbers.
const char* FileKindName(uint32_t kind);
// MappingKind: "anon", "file", "shmem", "vdso", ..., "?" when unknown.
const char* MappingKindName(uint32_t kind);
// SharedMemoryKind: "anon", "memfd", "posix-shm", "sysv", "file-by-value",
// "hugetlb", "?" when unknown.
const char* SharedMemoryKindName(uint32_t kind);
// SocketState: "connected", "closed", "listening", the TCP names for the
// others ("syn-sent", ...), "?" when unknown.
const char* SocketStateName(uint32_t state);

}  // namespace stasis::format
