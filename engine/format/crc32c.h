// CRC32C (Castagnoli, the iSCSI/ext4/LevelDB polynomial), the checksum of
// every header, metadata payload and page-data run in a context file
// (docs/format.md). Page data of multi-GiB checkpoints goes through it, so
// on CPUs with SSE4.2 it runs three interleaved crc32 instruction streams
// (tens of GB/s); elsewhere a slicing-by-8 table version is used. The
// choice is made once, at first use, from cpuid. All functions are pure and
// thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace stasis::format {

// Extends `crc` (the CRC32C of the bytes so far; 0 for none) by n bytes:
// Crc32c(Crc32c(0, a), b) == Crc32c(0, a || b). The result is the standard
// CRC32C value: Crc32c(0, "123456789", 9) == 0xE3069283.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// The two implementations behind Crc32c, exposed for tests and benchmarks.
// Crc32cHardware must only be called when Crc32cHardwareAvailable().
uint32_t Crc32cSoftware(uint32_t crc, const void* data, size_t n);
uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n);
bool Crc32cHardwareAvailable();

}  // namespace stasis::format
