// MANIFEST encoding and strict parsing; see manifest.h and docs/format.md.
#include "engine/format/manifest.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <set>

#include "engine/format/crc32c.h"

namespace stasis::format {
namespace {

constexpr size_t kMaxToken = 128 * 1024;
constexpr size_t kMaxArgs = 4096;
constexpr size_t kMaxNameBytes = 255;

bool PlainByte(unsigned char c) { return c > 0x20 && c < 0x7f && c != '%' && c != '='; }

// A value as one token: bytes outside printable ASCII, '%', '=' and spaces
// as %XX; the empty string as a lone "%".
std::string Escape(std::string_view s) {
  if (s.empty()) return "%";
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (PlainByte(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is not produced by Escape, so not accepted
}

bool Unescape(std::string_view token, std::string* out) {
  out->clear();
  if (token == "%") return true;
  if (token.empty() || token.size() > kMaxToken * 3) return false;
  for (size_t i = 0; i < token.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(token[i]);
    if (c == '%') {
      if (i + 2 >= token.size()) return false;
      int hi = HexValue(token[i + 1]), lo = HexValue(token[i + 2]);
      if (hi < 0 || lo < 0) return false;
      unsigned char v = static_cast<unsigned char>(hi * 16 + lo);
      if (PlainByte(v)) return false;  // one spelling per value
      out->push_back(static_cast<char>(v));
      i += 2;
    } else if (PlainByte(c)) {
      out->push_back(static_cast<char>(c));
    } else {
      return false;
    }
  }
  return out->size() <= kMaxToken;
}

bool ParseU64(std::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 20) return false;
  if (s.size() > 1 && s[0] == '0') return false;  // one spelling per value
  uint64_t r = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (r > (UINT64_MAX - d) / 10) return false;
    r = r * 10 + d;
  }
  *v = r;
  return true;
}

bool ParseU32(std::string_view s, uint32_t* v) {
  uint64_t r;
  if (!ParseU64(s, &r) || r > UINT32_MAX) return false;
  *v = static_cast<uint32_t>(r);
  return true;
}

// Exactly eight lower-case hex digits.
bool ParseHex32(std::string_view s, uint32_t* v) {
  if (s.size() != 8) return false;
  uint32_t r = 0;
  for (char c : s) {
    int d = HexValue(c);
    if (d < 0) return false;
    r = (r << 4) | static_cast<uint32_t>(d);
  }
  *v = r;
  return true;
}

bool SafeText(std::string_view s) {
  if (s.size() > kMaxNameBytes) return false;
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return false;
  return true;
}

// At most kMaxSplit tokens, the last one holding the rest of the line: more
// than any valid line has, and a line of spaces costs no more than that.
constexpr size_t kMaxSplit = kMaxArgs + 3;

std::vector<std::string_view> Split(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i <= line.size()) {
    size_t sp = out.size() + 1 < kMaxSplit ? line.find(' ', i) : std::string_view::npos;
    if (sp == std::string_view::npos) sp = line.size();
    out.push_back(line.substr(i, sp - i));
    i = sp + 1;
  }
  return out;
}

std::string Hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "%08x", v);
  return b;
}

// Reads the manifest line by line; every error names the line.
class Parser {
 public:
  explicit Parser(std::string_view bytes) : bytes_(bytes) {}

  Status Error(const std::string& what) const {
    return Status::Corrupt("line " + std::to_string(line_no_) + ": " + what);
  }
  // The next line's tokens; false at the end of the bytes.
  bool Next(std::vector<std::string_view>* tokens, std::string_view* raw) {
    if (pos_ >= bytes_.size()) {
      ++line_no_;  // errors name the missing line
      return false;
    }
    size_t nl = bytes_.find('\n', pos_);
    if (nl == std::string_view::npos) {
      unterminated_ = true;
      nl = bytes_.size();
    }
    line_start_ = pos_;
    *raw = bytes_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    ++line_no_;
    *tokens = Split(*raw);
    return true;
  }
  // A line "<key> <one value>".
  Result<std::string> Value(const char* key) {
    std::vector<std::string_view> t;
    std::string_view raw;
    if (!Next(&t, &raw)) return Error(std::string("ends before '") + key + "'");
    if (t[0] != key)
      return Error(std::string("expected '") + key + "', got '" + Escape(t[0].substr(0, 40)) + "'");
    if (t.size() != 2) return Error(std::string("'") + key + "' needs exactly one value");
    std::string v;
    if (!Unescape(t[1], &v)) return Error(std::string("bad value for '") + key + "'");
    return v;
  }
  size_t line_start() const { return line_start_; }
  bool unterminated() const { return unterminated_; }
  bool at_end() const { return pos_ >= bytes_.size(); }

 private:
  std::string_view bytes_;
  size_t pos_ = 0, line_start_ = 0;
  int line_no_ = 0;
  bool unterminated_ = false;
};

// "key=value" tokens of a node or file line, each key exactly once.
bool KeyValue(std::string_view token, const char* key, std::string* value) {
  size_t klen = std::char_traits<char>::length(key);
  if (token.size() <= klen || token.substr(0, klen) != key || token[klen] != '=') return false;
  return Unescape(token.substr(klen + 1), value);
}

// The lines of the encoding (EncodeManifest): 1 "stasis-manifest", 2 job,
// 3 step, 4 epoch, 5 uid, 6 created, 7 stasis-version, 8 format-version,
// 9 nodes, then a node and a command line per node, a file line per node.
constexpr int kFirstNodeLine = 10;

// Checks what the line-by-line parse cannot: values, uniqueness, the files
// against the nodes. Sets *line to the line of the problem in the encoding.
Status CheckManifest(const Manifest& m, int* line) {
  *line = 2;
  if (m.job.empty() || !SafeText(m.job)) return Status::Corrupt("bad job id");
  *line = 3;
  if (!SafeText(m.step)) return Status::Corrupt("bad step id");
  *line = 4;
  if (m.epoch == 0) return Status::Corrupt("epoch must be at least 1");
  *line = 7;
  if (m.stasis_version.empty() || !SafeText(m.stasis_version))
    return Status::Corrupt("bad stasis version");
  *line = 8;
  if (m.format_version == 0) return Status::Corrupt("bad format version");
  *line = 9;
  if (m.nodes.empty() || m.nodes.size() > kMaxManifestNodes)
    return Status::Corrupt("node count " + std::to_string(m.nodes.size()) + " out of range");
  if (m.files.size() != m.nodes.size())
    return Status::Corrupt(std::to_string(m.nodes.size()) + " nodes but " +
                           std::to_string(m.files.size()) + " files");
  std::set<uint32_t> tasks;
  std::set<std::string> names;
  size_t total_tasks = 0;
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    const ManifestNode& n = m.nodes[i];
    *line = kFirstNodeLine + 2 * static_cast<int>(i);
    if (n.index != i)
      return Status::Corrupt("node " + std::to_string(i) + " has index " + std::to_string(n.index));
    if (n.host.empty() || !SafeText(n.host))
      return Status::Corrupt("bad host of node " + std::to_string(i));
    if (!IsSafeEpochFileName(n.file))
      return Status::Corrupt("bad file name for node " + std::to_string(i));
    if (!names.insert(n.file).second)
      return Status::Corrupt("file " + n.file + " named by two nodes");
    if (n.tasks.empty()) return Status::Corrupt("node " + std::to_string(i) + " has no task");
    total_tasks += n.tasks.size();
    if (total_tasks > kMaxManifestTasks) return Status::Corrupt("too many tasks");
    for (uint32_t t : n.tasks)
      if (!tasks.insert(t).second)
        return Status::Corrupt("task " + std::to_string(t) + " on two nodes");
    *line = kFirstNodeLine + 2 * static_cast<int>(i) + 1;
    if (n.argv.size() > kMaxArgs)
      return Status::Corrupt("command of node " + std::to_string(i) + " too long");
    for (const auto& a : n.argv)
      if (a.size() > kMaxToken) return Status::Corrupt("argument too long");
    const ManifestFile& f = m.files[i];
    *line = kFirstNodeLine + 2 * static_cast<int>(m.nodes.size()) + static_cast<int>(i);
    if (f.name != n.file)
      return Status::Corrupt("file " + std::to_string(i) + " is '" + Escape(f.name) + "', node " +
                             std::to_string(i) + " names '" + n.file + "'");
  }
  *line = 0;
  return Status::Ok();
}

}  // namespace

bool IsSafeEpochFileName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes || name[0] == '.' || name == kManifestName)
    return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Result<std::string> EncodeManifest(const Manifest& m) {
  int line;
  if (Status s = CheckManifest(m, &line); !s.ok())
    return Status::Error(EINVAL, "cannot write manifest: " + s.message());
  std::string out;
  out += "stasis-manifest " + std::to_string(kManifestVersion) + "\n";
  out += "job " + Escape(m.job) + "\n";
  out += "step " + Escape(m.step) + "\n";
  out += "epoch " + std::to_string(m.epoch) + "\n";
  out += "uid " + std::to_string(m.uid) + "\n";
  out += "created " + std::to_string(m.created_unix_ns) + "\n";
  out += "stasis-version " + Escape(m.stasis_version) + "\n";
  out += "format-version " + std::to_string(m.format_version) + "\n";
  out += "nodes " + std::to_string(m.nodes.size()) + "\n";
  for (const ManifestNode& n : m.nodes) {
    out += "node " + std::to_string(n.index) + " host=" + Escape(n.host) +
           " file=" + Escape(n.file) + " tasks=";
    for (size_t i = 0; i < n.tasks.size(); ++i) {
      if (i) out += ',';
      out += std::to_string(n.tasks[i]);
    }
    out += "\n";
    out += "command " + std::to_string(n.index);
    for (const auto& a : n.argv) out += " " + Escape(a);
    out += "\n";
  }
  for (const ManifestFile& f : m.files)
    out += "file " + Escape(f.name) + " size=" + std::to_string(f.size) +
           " crc32c=" + Hex32(f.crc32c) + "\n";
  out += "end crc32c=" + Hex32(Crc32c(0, out.data(), out.size())) + "\n";
  if (out.size() > kMaxManifestBytes) return Status::Error(EINVAL, "manifest too large");
  return out;
}

Result<Manifest> ParseManifest(std::string_view bytes) {
  if (bytes.size() > kMaxManifestBytes) {
    // The line that crosses the limit.
    auto line = 1 + std::count(bytes.begin(), bytes.begin() + kMaxManifestBytes, '\n');
    return Status::Corrupt("line " + std::to_string(line) + ": manifest of " +
                           std::to_string(bytes.size()) + " bytes is too large (limit " +
                           std::to_string(kMaxManifestBytes) + ")");
  }
  Parser p(bytes);
  Manifest m;
  {
    std::vector<std::string_view> t;
    std::string_view raw;
    if (!p.Next(&t, &raw) || t.size() != 2 || t[0] != "stasis-manifest")
      return p.Error("not a stasis manifest");
    uint32_t version;
    if (!ParseU32(t[1], &version) || version == 0) return p.Error("bad manifest version");
    if (version > kManifestVersion)
      return Status::Error(ENOTSUP, "line 1: manifest version " + std::to_string(version) +
                                        " is newer than this stasis reads (" +
                                        std::to_string(kManifestVersion) + ")");
  }
  auto text = [&](const char* key, std::string* out) -> Status {
    auto v = p.Value(key);
    if (!v) return v.error();
    if (!SafeText(*v)) return p.Error(std::string("bad value for '") + key + "'");
    *out = std::move(*v);
    return Status::Ok();
  };
  auto number = [&](const char* key, uint64_t* out, uint64_t max) -> Status {
    auto v = p.Value(key);
    if (!v) return v.error();
    if (!ParseU64(*v, out) || *out > max)
      return p.Error(std::string("bad number for '") + key + "'");
    return Status::Ok();
  };
  uint64_t n64;
  STASIS_RETURN_IF_ERROR(text("job", &m.job));
  STASIS_RETURN_IF_ERROR(text("step", &m.step));
  STASIS_RETURN_IF_ERROR(number("epoch", &m.epoch, UINT64_MAX));
  STASIS_RETURN_IF_ERROR(number("uid", &n64, UINT32_MAX));
  m.uid = static_cast<uint32_t>(n64);
  STASIS_RETURN_IF_ERROR(number("created", &m.created_unix_ns, UINT64_MAX));
  STASIS_RETURN_IF_ERROR(text("stasis-version", &m.stasis_version));
  STASIS_RETURN_IF_ERROR(number("format-version", &n64, UINT32_MAX));
  m.format_version = static_cast<uint32_t>(n64);
  uint64_t nodes;
  STASIS_RETURN_IF_ERROR(number("nodes", &nodes, kMaxManifestNodes));
  if (nodes == 0) return p.Error("no nodes");

  std::vector<std::string_view> t;
  std::string_view raw;
  for (uint64_t i = 0; i < nodes; ++i) {
    ManifestNode n;
    if (!p.Next(&t, &raw)) return p.Error("ends before node " + std::to_string(i));
    if (t[0] != "node" || t.size() != 5)
      return p.Error("expected 'node " + std::to_string(i) + "'");
    if (!ParseU32(t[1], &n.index) || n.index != i)
      return p.Error("expected node " + std::to_string(i));
    if (!KeyValue(t[2], "host", &n.host) || !KeyValue(t[3], "file", &n.file))
      return p.Error("node " + std::to_string(i) + " needs host= and file=");
    if (t[4].substr(0, 6) != "tasks=" || t[4].size() == 6)
      return p.Error("node " + std::to_string(i) + " needs tasks=");
    for (std::string_view rest = t[4].substr(6);;) {
      size_t comma = rest.find(',');
      uint32_t task;
      if (!ParseU32(rest.substr(0, comma), &task)) return p.Error("bad task list");
      n.tasks.push_back(task);
      if (n.tasks.size() > kMaxManifestTasks) return p.Error("too many tasks");
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
    if (!p.Next(&t, &raw)) return p.Error("ends before the command of node " + std::to_string(i));
    uint32_t index;
    if (t[0] != "command" || t.size() < 2 || !ParseU32(t[1], &index) || index != i)
      return p.Error("expected 'command " + std::to_string(i) + "'");
    if (t.size() - 2 > kMaxArgs) return p.Error("command too long");
    for (size_t k = 2; k < t.size(); ++k) {
      std::string a;
      if (!Unescape(t[k], &a)) return p.Error("bad command argument " + std::to_string(k - 2));
      n.argv.push_back(std::move(a));
    }
    m.nodes.push_back(std::move(n));
  }
  for (uint64_t i = 0; i < nodes; ++i) {
    ManifestFile f;
    if (!p.Next(&t, &raw)) return p.Error("ends before file " + std::to_string(i));
    std::string size, crc;
    if (t[0] != "file" || t.size() != 4 || !Unescape(t[1], &f.name) ||
        !KeyValue(t[2], "size", &size) || !KeyValue(t[3], "crc32c", &crc))
      return p.Error("expected 'file NAME size=N crc32c=X'");
    if (!ParseU64(size, &f.size) || !ParseHex32(crc, &f.crc32c))
      return p.Error("bad size or crc32c of " + Escape(f.name));
    m.files.push_back(std::move(f));
  }
  if (!p.Next(&t, &raw)) return p.Error("ends before 'end' (truncated?)");
  size_t covered = p.line_start();
  std::string crc;
  uint32_t want;
  if (t.size() != 2 || t[0] != "end" || !KeyValue(t[1], "crc32c", &crc) || !ParseHex32(crc, &want))
    return p.Error("expected 'end crc32c=X'");
  if (p.unterminated()) return p.Error("last line has no newline (truncated?)");
  if (!p.at_end()) return p.Error("bytes after 'end'");
  uint32_t got = Crc32c(0, bytes.data(), covered);
#if !defined(STASIS_FORMAT_FUZZING)
  if (got != want)
    return p.Error("checksum mismatch (manifest " + Hex32(want) + ", content " + Hex32(got) +
                   "): the manifest was changed");
#else
  (void)got;
#endif
  int line;
  if (Status s = CheckManifest(m, &line); !s.ok())
    return Status::Corrupt("line " + std::to_string(line) + ": " + s.message());
  return m;
}

}  // namespace stasis::format
