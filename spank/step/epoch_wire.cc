// The key=value codec of the epoch protocol (epoch_wire.h).
#include "spank/step/epoch_wire.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace stasis::step {

std::string Escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c <= 0x20 || c >= 0x7f || c == '%' || c == '=') {
      char b[4];
      std::snprintf(b, sizeof b, "%%%02X", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::strtoul(s.substr(i + 1, 2).c_str(), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}
std::string EncodeFields(const Fields& f) {
  std::string out;
  for (const auto& [k, v] : f) out += k + "=" + Escape(v) + "\n";
  return out;
}
Fields DecodeFields(const std::string& text) {
  Fields f;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t eq = line.find('=');
    if (eq != std::string::npos) f[line.substr(0, eq)] = Unescape(line.substr(eq + 1));
  }
  return f;
}

std::string EncodeReport(const NodeReport& r) {
  Fields f;
  f["ok"] = r.ok ? "1" : "0";
  f["message"] = r.message;
  f["node"] = std::to_string(r.node);
  f["host"] = r.host;
  std::string tasks, argv;
  for (uint32_t t : r.tasks) tasks += (tasks.empty() ? "" : ",") + std::to_string(t);
  for (const auto& a : r.argv) argv += (argv.empty() ? "" : " ") + Escape(a);
  f["tasks"] = tasks;
  f["argv"] = argv;
  f["size"] = std::to_string(r.size);
  f["crc"] = std::to_string(r.crc);
  return EncodeFields(f);
}

NodeReport DecodeReport(const std::string& text) {
  Fields f = DecodeFields(text);
  NodeReport r;
  r.ok = f["ok"] == "1";
  r.message = f["message"];
  r.node = static_cast<uint32_t>(std::strtoul(f["node"].c_str(), nullptr, 10));
  r.host = f["host"];
  std::istringstream t(f["tasks"]);
  std::string item;
  while (std::getline(t, item, ','))
    if (!item.empty())
      r.tasks.push_back(static_cast<uint32_t>(std::strtoul(item.c_str(), nullptr, 10)));
  std::istringstream a(f["argv"]);
  while (a >> item) r.argv.push_back(Unescape(item));
  r.size = std::strtoull(f["size"].c_str(), nullptr, 10);
  r.crc = static_cast<uint32_t>(std::strtoul(f["crc"].c_str(), nullptr, 10));
  return r;
}

// The two fences after every node has written (or failed): every rank
// reports, rank 0 commits the MANIFEST if all are good, every rank learns

}  // namespace stasis::step
