// The values stasis-step's helper tasks exchange through PMIx (strings
// only): lines of `key=value`, the value %-escaped, and one node's report
// of its epoch in that form. docs/protocol.md "Epochs between stasis-step
// instances" is the reference; this file must match it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace stasis::step {

// Bytes 0x00-0x20, 0x7f-0xff, '%' and '=' become %XX (upper-case hex).
std::string Escape(const std::string& s);
std::string Unescape(const std::string& s);
using Fields = std::map<std::string, std::string>;
std::string EncodeFields(const Fields& f);     // sorted by key, one "k=v\n" each
Fields DecodeFields(const std::string& text);  // lines without '=' are ignored

// One rank's outcome, as rank 0 reads it (key stasis.report).
struct NodeReport {
  bool ok = false;
  std::string message;
  uint32_t node = 0;
  std::string host;
  std::vector<uint32_t> tasks;
  std::vector<std::string> argv;
  uint64_t size = 0;
  uint32_t crc = 0;
};
std::string EncodeReport(const NodeReport& r);
NodeReport DecodeReport(const std::string& text);

}  // namespace stasis::step
