// stasisd's state records; see state_record.h.
#include "engine/daemon/state_record.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <map>

#include "engine/base/fd.h"

namespace stasis::daemon {
namespace {

constexpr std::string_view kVersionLine = "stasis-state 1\n";
constexpr size_t kMaxPath = 4096;
constexpr size_t kMaxName = 255;

bool NeedsEscape(unsigned char c) { return c < 0x21 || c > 0x7e || c == '%'; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;  // lower case is not canonical
}

Status Bad(const std::string& key, const std::string& what) {
  return Status::Corrupt("state record: " + key + ": " + what);
}

// Decimal, canonical (no sign, no leading zero), at most `max`.
Result<uint64_t> Number(const std::string& key, std::string_view s, uint64_t max) {
  if (s.empty() || s.size() > 20) return Bad(key, "not a number");
  if (s.size() > 1 && s[0] == '0') return Bad(key, "leading zero");
  uint64_t n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return Bad(key, "not a number");
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (n > (UINT64_MAX - d) / 10) return Bad(key, "out of range");
    n = n * 10 + d;
  }
  if (n > max) return Bad(key, "out of range");
  return n;
}

Status AbsolutePath(const std::string& key, const std::string& p) {
  if (p.empty() || p[0] != '/') return Bad(key, "not an absolute path");
  if (p.size() > kMaxPath) return Bad(key, "too long");
  if (p.find('\0') != std::string::npos) return Bad(key, "holds a NUL byte");
  return Status::Ok();
}

std::string Join(const std::vector<uint32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

std::string EscapeStateValue(std::string_view raw) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(raw.size());
  for (char ch : raw) {
    auto c = static_cast<unsigned char>(ch);
    if (NeedsEscape(c)) {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

Result<std::string> UnescapeStateValue(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    auto c = static_cast<unsigned char>(in[i]);
    if (c == '%') {
      if (i + 2 >= in.size()) return Status::Corrupt("state record: a cut escape");
      int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return Status::Corrupt("state record: a bad escape");
      auto b = static_cast<unsigned char>(hi << 4 | lo);
      if (!NeedsEscape(b)) return Status::Corrupt("state record: a needless escape");
      out += static_cast<char>(b);
      i += 2;
    } else if (NeedsEscape(c)) {
      return Status::Corrupt("state record: an unescaped byte " + std::to_string(c));
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string EncodeStateRecord(const StateRecord& r) {
  std::string s(kVersionLine);
  auto line = [&](const char* key, const std::string& value) {
    s += key;
    s += '=';
    s += EscapeStateValue(value);
    s += '\n';
  };
  line("id", std::to_string(r.id));
  line("worker", std::to_string(r.worker));
  line("uid", std::to_string(r.uid));
  line("gid", std::to_string(r.gid));
  line("groups", Join(r.groups));
  line("mode", std::to_string(r.mode));
  line("path", r.path);
  if (r.has_file()) {
    line("folder", r.folder);
    line("folder_dev", std::to_string(r.folder_dev));
    line("folder_ino", std::to_string(r.folder_ino));
    line("name", r.name);
    line("file_dev", std::to_string(r.file_dev));
    line("file_ino", std::to_string(r.file_ino));
  }
  return s;
}

Result<StateRecord> DecodeStateRecord(std::string_view text) {
  if (text.size() > kMaxStateRecordSize)
    return Status::Corrupt("state record: over the size limit");
  if (text.substr(0, kVersionLine.size()) != kVersionLine)
    return Status::Corrupt("state record: no 'stasis-state 1' line");
  text.remove_prefix(kVersionLine.size());
  static const char* const kRequired[] = {"id", "worker", "uid", "gid", "groups", "mode", "path"};
  static const char* const kFile[] = {"folder", "folder_dev", "folder_ino",
                                      "name",   "file_dev",   "file_ino"};
  std::map<std::string, std::string> kv;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return Status::Corrupt("state record: a cut line");
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) return Status::Corrupt("state record: a line without '='");
    std::string key(line.substr(0, eq));
    bool known = false;
    for (const char* k : kRequired) known = known || key == k;
    for (const char* k : kFile) known = known || key == k;
    if (!known) return Status::Corrupt("state record: unknown key");
    if (kv.count(key)) return Bad(key, "appears twice");
    STASIS_ASSIGN_OR_RETURN(std::string value, UnescapeStateValue(line.substr(eq + 1)));
    kv[key] = std::move(value);
  }
  for (const char* k : kRequired)
    if (!kv.count(k)) return Bad(k, "missing");
  size_t file_keys = 0;
  for (const char* k : kFile) file_keys += kv.count(k);
  if (file_keys != 0 && file_keys != std::size(kFile))
    return Status::Corrupt("state record: the file's fields are incomplete");

  StateRecord r;
  STASIS_ASSIGN_OR_RETURN(r.id, Number("id", kv["id"], UINT64_MAX));
  STASIS_ASSIGN_OR_RETURN(uint64_t worker, Number("worker", kv["worker"], INT_MAX));
  if (worker == 0) return Bad("worker", "no pid");
  r.worker = static_cast<uint32_t>(worker);
  STASIS_ASSIGN_OR_RETURN(uint64_t uid, Number("uid", kv["uid"], UINT32_MAX - 1));
  STASIS_ASSIGN_OR_RETURN(uint64_t gid, Number("gid", kv["gid"], UINT32_MAX - 1));
  r.uid = static_cast<uint32_t>(uid);
  r.gid = static_cast<uint32_t>(gid);
  const std::string& groups = kv["groups"];
  for (size_t pos = 0; !groups.empty();) {
    size_t comma = groups.find(',', pos);
    std::string_view one = std::string_view(groups).substr(
        pos, comma == std::string::npos ? std::string::npos : comma - pos);
    STASIS_ASSIGN_OR_RETURN(uint64_t g, Number("groups", one, UINT32_MAX - 1));
    if (r.groups.size() >= kMaxStateGroups) return Bad("groups", "too many");
    r.groups.push_back(static_cast<uint32_t>(g));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  STASIS_ASSIGN_OR_RETURN(uint64_t mode, Number("mode", kv["mode"], 2));
  r.mode = static_cast<uint32_t>(mode);
  r.path = kv["path"];
  STASIS_RETURN_IF_ERROR(AbsolutePath("path", r.path));
  if (file_keys) {
    r.folder = kv["folder"];
    STASIS_RETURN_IF_ERROR(AbsolutePath("folder", r.folder));
    r.name = kv["name"];
    if (r.name.empty() || r.name.size() > kMaxName || r.name == "." || r.name == ".." ||
        r.name.find_first_of(std::string("/\0", 2)) != std::string::npos)
      return Bad("name", "not a file name");
    STASIS_ASSIGN_OR_RETURN(r.folder_dev, Number("folder_dev", kv["folder_dev"], UINT64_MAX));
    STASIS_ASSIGN_OR_RETURN(r.folder_ino, Number("folder_ino", kv["folder_ino"], UINT64_MAX));
    STASIS_ASSIGN_OR_RETURN(r.file_dev, Number("file_dev", kv["file_dev"], UINT64_MAX));
    STASIS_ASSIGN_OR_RETURN(r.file_ino, Number("file_ino", kv["file_ino"], UINT64_MAX));
  }
  return r;
}

Status WriteStateRecordFile(const std::string& path, const StateRecord& r) {
  std::string text = EncodeStateRecord(r);
  if (text.size() > kMaxStateRecordSize) return Status::Error(EINVAL, "state record too big");
  std::string temp = path + ".tmp";
  ::unlink(temp.c_str());
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno(errno, "create " + temp);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      ::unlink(temp.c_str());
      return Status::FromErrno(err, "write " + temp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0 || ::rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    return Status::FromErrno(err, "write " + path);
  }
  return Status::Ok();
}

Result<StateRecord> ReadStateRecordFile(int dirfd, const std::string& name) {
  UniqueFd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return Status::FromErrno(errno, "open " + name);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + name);
  if (!S_ISREG(st.st_mode)) return Status::Corrupt(name + " is not a regular file");
  if (st.st_size > static_cast<off_t>(kMaxStateRecordSize))
    return Status::Corrupt(name + " is over the size limit");
  std::string text(kMaxStateRecordSize + 1, '\0');
  size_t got = 0;
  while (got < text.size()) {
    ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "read " + name);
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  text.resize(got);
  auto r = DecodeStateRecord(text);
  if (!r) return r.error().Prefixed(name);
  return r;
}

}  // namespace stasis::daemon
