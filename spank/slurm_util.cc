#include "spank/slurm_util.h"

#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace stasis::spank {
namespace {

bool ParseU32(const std::string& s, uint32_t* out) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  *out = static_cast<uint32_t>(std::strtoul(s.c_str(), nullptr, 10));
  return true;
}

bool IsStepName(const std::string& s) {
  uint32_t n;
  return s == "batch" || s == "extern" || s == "interactive" || ParseU32(s, &n);
}

}  // namespace

Result<std::vector<ListedTask>> ParseListPids(const std::string& output, const std::string& job,
                                              const std::string& step) {
  std::istringstream in(output);
  std::string line;
  std::vector<ListedTask> out;
  bool header = false;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string pid, j, s, local, global;
    if (!(f >> pid >> j >> s >> local >> global)) continue;
    if (pid == "PID") {
      header = true;
      continue;
    }
    if (j != job || s != step || local == "-" || global == "-") continue;
    ListedTask t;
    uint32_t p = 0;
    if (!ParseU32(pid, &p) || p == 0 || !ParseU32(local, &t.local_id) ||
        !ParseU32(global, &t.global_id))
      return Status::Error(EBADMSG, "scontrol listpids: cannot read the line '" + line + "'");
    t.pid = static_cast<pid_t>(p);
    out.push_back(t);
  }
  if (!header) return Status::Error(EBADMSG, "scontrol listpids: no PID header in its output");
  return out;
}

Result<uint32_t> TasksOnNode(const std::string& spec, uint32_t node) {
  std::istringstream in(spec);
  std::string part;
  uint64_t first = 0;
  while (std::getline(in, part, ',')) {
    uint32_t count = 0, repeat = 1;
    size_t paren = part.find("(x");
    if (paren != std::string::npos) {
      if (part.back() != ')' ||
          !ParseU32(part.substr(paren + 2, part.size() - paren - 3), &repeat) || repeat == 0)
        return Status::Error(EINVAL, "bad tasks-per-node list '" + spec + "'");
      part = part.substr(0, paren);
    }
    if (!ParseU32(part, &count))
      return Status::Error(EINVAL, "bad tasks-per-node list '" + spec + "'");
    if (node < first + repeat) return count;
    first += repeat;
  }
  return Status::Error(EINVAL,
                       "tasks-per-node list '" + spec + "' has no node " + std::to_string(node));
}

bool ParseJobStep(const std::string& text, std::string* job, std::string* step) {
  size_t dot = text.find('.');
  std::string j = text.substr(0, dot), s = dot == std::string::npos ? "" : text.substr(dot + 1);
  uint32_t n;
  if (!ParseU32(j, &n) || n == 0) return false;
  if (dot != std::string::npos && !IsStepName(s)) return false;
  *job = j;
  *step = s;
  return true;
}

std::map<std::string, std::string> ParseEnviron(const std::string& raw) {
  std::map<std::string, std::string> out;
  size_t at = 0;
  while (at < raw.size()) {
    size_t end = raw.find('\0', at);
    if (end == std::string::npos) end = raw.size();
    std::string kv = raw.substr(at, end - at);
    size_t eq = kv.find('=');
    if (eq != std::string::npos && eq > 0) out.emplace(kv.substr(0, eq), kv.substr(eq + 1));
    at = end + 1;
  }
  return out;
}

std::string NameRefusedPeer(
    std::string message,
    const std::function<std::string(const std::string& peer, bool on_other_host)>& what_of) {
  const size_t arrow = message.find(" -> ");
  const size_t is = message.find(" is connected to ", arrow == std::string::npos ? 0 : arrow);
  if (arrow == std::string::npos || is == std::string::npos) return message;
  const size_t end = message.find(';', is);
  if (end == std::string::npos) return message;
  const std::string peer = message.substr(arrow + 4, is - arrow - 4);
  const bool other_host =
      message.compare(is, end - is, " is connected to a process on another host") == 0;
  std::string what = what_of(peer, other_host);
  if (!what.empty()) message.insert(end, " (" + what + ")");
  return message;
}

std::string NodeWithAddress(const std::string& show_node, const std::string& addr) {
  std::istringstream lines(show_node);
  std::string line;
  while (std::getline(lines, line)) {
    std::string name, at, w;
    std::istringstream words(line);
    while (words >> w) {
      if (w.rfind("NodeName=", 0) == 0) name = w.substr(9);
      if (w.rfind("NodeAddr=", 0) == 0) at = w.substr(9);
    }
    if (!name.empty() && !addr.empty() && at == addr) return name;
  }
  return "";
}

}  // namespace stasis::spank
