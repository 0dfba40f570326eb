// CRC32C: known vectors (RFC 3720 B.4) for both implementations, and the
// SSE4.2 version against the table version on random buffers, lengths,
// alignments and incremental splits.
#include "engine/format/crc32c.h"

#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <string>
#include <vector>

namespace stasis::format {
namespace {

struct Vector {
  std::string data;
  uint32_t crc;
};

std::vector<Vector> KnownVectors() {
  std::string ascending(32, '\0'), descending(32, '\0');
  for (int i = 0; i < 32; ++i) {
    ascending[i] = static_cast<char>(i);
    descending[i] = static_cast<char>(31 - i);
  }
  return {
      {"", 0x00000000},
      {"123456789", 0xE3069283},
      {std::string(32, '\0'), 0x8A9136AA},
      {std::string(32, '\xff'), 0x62A8AB43},
      {ascending, 0x46DD794E},
      {descending, 0x113FDB5C},
  };
}

TEST(Crc32c, SoftwareMatchesKnownVectors) {
  for (const Vector& v : KnownVectors()) {
    EXPECT_EQ(Crc32cSoftware(0, v.data.data(), v.data.size()), v.crc) << v.data.size();
  }
}

TEST(Crc32c, HardwareMatchesKnownVectors) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "CPU without SSE4.2";
  for (const Vector& v : KnownVectors()) {
    EXPECT_EQ(Crc32cHardware(0, v.data.data(), v.data.size()), v.crc) << v.data.size();
  }
}

TEST(Crc32c, DispatchMatchesKnownVectors) {
  for (const Vector& v : KnownVectors()) {
    EXPECT_EQ(Crc32c(0, v.data.data(), v.data.size()), v.crc) << v.data.size();
  }
}

TEST(Crc32c, HardwareMatchesSoftwareOnRandomBuffers) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "CPU without SSE4.2";
  std::mt19937_64 rng(42);
  std::vector<uint8_t> buf(3 * 8192 * 2 + 4096);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  // Lengths around every block boundary of the three-stream loop.
  std::vector<size_t> lengths = {
      0,   1,   7,   8,    9,     15,    16,    17,          255,   256,
      767, 768, 769, 1000, 24575, 24576, 24577, 24576 + 768, 49152, buf.size() - 7};
  for (int i = 0; i < 300; ++i) lengths.push_back(rng() % (buf.size() - 8));
  for (size_t n : lengths) {
    for (size_t offset = 0; offset < 8; ++offset) {
      uint32_t seed = static_cast<uint32_t>(rng());
      ASSERT_EQ(Crc32cHardware(seed, buf.data() + offset, n),
                Crc32cSoftware(seed, buf.data() + offset, n))
          << "n=" << n << " offset=" << offset;
    }
  }
}

TEST(Crc32c, IncrementalEqualsOneShot) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(100000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  uint32_t whole = Crc32c(0, buf.data(), buf.size());
  for (int i = 0; i < 50; ++i) {
    size_t cut = rng() % buf.size();
    uint32_t crc = Crc32c(0, buf.data(), cut);
    crc = Crc32c(crc, buf.data() + cut, buf.size() - cut);
    EXPECT_EQ(crc, whole) << cut;
    EXPECT_EQ(
        Crc32cSoftware(Crc32cSoftware(0, buf.data(), cut), buf.data() + cut, buf.size() - cut),
        whole);
  }
}

TEST(Crc32c, IsFastOnPageData) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "CPU without SSE4.2";
  std::vector<uint8_t> buf(64 << 20, 0x5a);
  uint32_t crc = 0;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) crc = Crc32c(crc, buf.data(), buf.size());
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double gbps = 4.0 * buf.size() / seconds / 1e9;
  RecordProperty("crc32c_gb_per_s", std::to_string(gbps));
  std::printf("crc32c: %.1f GB/s\n", gbps);
  // Loose bound: even a loaded CI machine or a sanitizer build does 0.5 GB/s.
  EXPECT_GT(gbps, 0.5);
}

}  // namespace
}  // namespace stasis::format
