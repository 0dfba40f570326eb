// CRC32C: a slicing-by-8 table version for any CPU and an SSE4.2 version
// that hides the 3-cycle latency of the crc32 instruction by running three
// independent streams over adjacent blocks and folding them together with
// precomputed "append N zero bytes" tables. All tables are computed at
// compile time; the only runtime state is the cpuid-based choice, made once.
#include "engine/format/crc32c.h"

#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace stasis::format {
namespace {

// The Castagnoli polynomial, bit-reflected: bit 31 is the x^0 coefficient.
constexpr uint32_t kPoly = 0x82F63B78u;

// Polynomial product a * b mod P in the reflected representation.
constexpr uint32_t MulMod(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (int i = 0; i < 32; ++i) {
    if (a & 0x80000000u) product ^= b;
    a <<= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;  // b *= x
  }
  return product;
}

// x^k mod P.
constexpr uint32_t XPowMod(uint64_t k) {
  uint32_t result = 0x80000000u;  // x^0
  uint32_t base = 0x40000000u;    // x^1
  while (k != 0) {
    if (k & 1) result = MulMod(result, base);
    base = MulMod(base, base);
    k >>= 1;
  }
  return result;
}

struct SliceTables {
  uint32_t t[8][256];
};

// t[k][b]: the raw CRC register after byte b followed by k zero bytes.
constexpr SliceTables MakeSliceTables() {
  SliceTables tables{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    tables.t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t prev = tables.t[k - 1][i];
      tables.t[k][i] = (prev >> 8) ^ tables.t[0][prev & 0xff];
    }
  }
  return tables;
}

constexpr SliceTables kSlice = MakeSliceTables();

inline uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;  // x86-64 is little-endian; the CRC consumes bytes in memory order
}

// `state` is the raw register (already inverted by the caller).
uint32_t ExtendSoftware(uint32_t state, const uint8_t* p, size_t n) {
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    state = (state >> 8) ^ kSlice.t[0][(state ^ *p++) & 0xff];
    --n;
  }
  while (n >= 8) {
    uint64_t w = LoadLe64(p) ^ state;
    state = kSlice.t[7][w & 0xff] ^ kSlice.t[6][(w >> 8) & 0xff] ^ kSlice.t[5][(w >> 16) & 0xff] ^
            kSlice.t[4][(w >> 24) & 0xff] ^ kSlice.t[3][(w >> 32) & 0xff] ^
            kSlice.t[2][(w >> 40) & 0xff] ^ kSlice.t[1][(w >> 48) & 0xff] ^ kSlice.t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    state = (state >> 8) ^ kSlice.t[0][(state ^ *p++) & 0xff];
    --n;
  }
  return state;
}

#if defined(__x86_64__)

// Block sizes of the three-stream loop: long blocks for bulk data, short
// ones so that buffers of a few KiB also get the parallel speed.
constexpr size_t kLongBlock = 8192;
constexpr size_t kShortBlock = 256;

// Multiplies a raw register by x^(8 * bytes): the effect of appending that
// many zero bytes, as four table lookups.
struct ShiftTable {
  uint32_t t[4][256];
};

constexpr ShiftTable MakeShiftTable(size_t bytes) {
  ShiftTable table{};
  const uint32_t factor = XPowMod(8 * static_cast<uint64_t>(bytes));
  for (int k = 0; k < 4; ++k) {
    for (uint32_t b = 0; b < 256; ++b) table.t[k][b] = MulMod(factor, b << (8 * k));
  }
  return table;
}

constexpr ShiftTable kShiftLong = MakeShiftTable(kLongBlock);
constexpr ShiftTable kShiftShort = MakeShiftTable(kShortBlock);

inline uint32_t Shift(const ShiftTable& table, uint32_t state) {
  return table.t[0][state & 0xff] ^ table.t[1][(state >> 8) & 0xff] ^
         table.t[2][(state >> 16) & 0xff] ^ table.t[3][state >> 24];
}

// Three streams over [p, p+block), [p+block, p+2block), [p+2block, p+3block),
// the second and third starting from 0, folded as
// crc(a||b||c) = shift(shift(crc(a)) ^ crc0(b)) ^ crc0(c).
__attribute__((target("sse4.2"))) inline uint64_t ThreeStreams(uint64_t c0, const uint8_t* p,
                                                               size_t block,
                                                               const ShiftTable& shift) {
  uint64_t c1 = 0, c2 = 0;
  const uint8_t* end = p + block;
  for (; p < end; p += 16) {
    c0 = _mm_crc32_u64(c0, LoadLe64(p));
    c1 = _mm_crc32_u64(c1, LoadLe64(p + block));
    c2 = _mm_crc32_u64(c2, LoadLe64(p + 2 * block));
    c0 = _mm_crc32_u64(c0, LoadLe64(p + 8));
    c1 = _mm_crc32_u64(c1, LoadLe64(p + block + 8));
    c2 = _mm_crc32_u64(c2, LoadLe64(p + 2 * block + 8));
  }
  uint32_t folded = Shift(shift, static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
  return Shift(shift, folded) ^ static_cast<uint32_t>(c2);
}

__attribute__((target("sse4.2"))) uint32_t ExtendHardware(uint32_t state, const uint8_t* p,
                                                          size_t n) {
  uint64_t c = state;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  while (n >= 3 * kLongBlock) {
    c = ThreeStreams(c, p, kLongBlock, kShiftLong);
    p += 3 * kLongBlock;
    n -= 3 * kLongBlock;
  }
  while (n >= 3 * kShortBlock) {
    c = ThreeStreams(c, p, kShortBlock, kShiftShort);
    p += 3 * kShortBlock;
    n -= 3 * kShortBlock;
  }
  while (n >= 8) {
    c = _mm_crc32_u64(c, LoadLe64(p));
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  return static_cast<uint32_t>(c);
}

#endif  // __x86_64__

using ExtendFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);

ExtendFn ChooseExtend() {
#if defined(__x86_64__)
  if (Crc32cHardwareAvailable()) return ExtendHardware;
#endif
  return ExtendSoftware;
}

}  // namespace

bool Crc32cHardwareAvailable() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("sse4.2");
#else
  return false;
#endif
}

uint32_t Crc32cSoftware(uint32_t crc, const void* data, size_t n) {
  return ~ExtendSoftware(~crc, static_cast<const uint8_t*>(data), n);
}

uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n) {
#if defined(__x86_64__)
  return ~ExtendHardware(~crc, static_cast<const uint8_t*>(data), n);
#else
  return Crc32cSoftware(crc, data, n);
#endif
}

uint32_t Crc32c(uint32_t crc, const void* data, size_t n) {
  static const ExtendFn extend = ChooseExtend();
  return ~extend(~crc, static_cast<const uint8_t*>(data), n);
}

}  // namespace stasis::format
