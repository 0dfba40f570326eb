// Unit tests of the MANIFEST of a checkpoint epoch (engine/format/manifest.h):
// round trips, an encoder that refuses exactly what the parser refuses, and
// refusal, with a one-line "line N: ..." message, of every damaged, edited or
// non-canonical manifest. Also generates the manifest_fuzzer seed corpus.
#include "engine/format/manifest.h"

#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/format/crc32c.h"
#include "test/unit/alloc_probe.h"
#include "test/unit/test_util.h"

namespace stasis::format {
namespace {

Manifest FullManifest() {
  Manifest m;
  m.job = "4242";
  m.step = "batch";
  m.epoch = 7;
  m.uid = 1000;
  m.created_unix_ns = 1700000000123456789ull;
  m.stasis_version = "0.1.0";
  m.format_version = 1;
  m.nodes = {
      {0,
       "node-a",
       "node-a.ctx",
       {0, 1, 2, 3},
       {"/opt/my app/bin/solver", "--input=in put.dat", "100%", "", "h\xc3\xa9llo w\xc3\xb6rld",
        "tab\there", "new\nline", "=", "%", " "}},
      {1, "node-b.cluster", "node-b.ctx", {4, 5, 6, 7}, {"./a.out"}},
      {2, "n\xc5\x93ud-c", "node_c.ctx", {11, 8, UINT32_MAX}, {}},
  };
  m.files = {{"node-a.ctx", 123456, 0xdeadbeef},
             {"node-b.ctx", 0, 0},
             {"node_c.ctx", UINT64_MAX, 0xffffffff}};
  return m;
}

Manifest MinimalManifest() {
  Manifest m;
  m.job = "j";
  m.step = "";
  m.epoch = 1;
  m.stasis_version = "0.1.0";
  m.format_version = 1;
  m.nodes = {{0, "h", "n", {0}, {}}};
  m.files = {{"n", 0, 0}};
  return m;
}

Manifest WideManifest(uint32_t nodes, uint32_t tasks_per_node) {
  Manifest m = FullManifest();
  m.nodes.clear();
  m.files.clear();
  for (uint32_t i = 0; i < nodes; ++i) {
    ManifestNode n;
    n.index = i;
    n.host = "cn" + std::to_string(1000 + i);
    n.file = "node" + std::to_string(i) + ".ctx";
    for (uint32_t t = 0; t < tasks_per_node; ++t) n.tasks.push_back(i * tasks_per_node + t);
    n.argv = {"srun", "./lulesh2.0", "-s", std::to_string(i)};
    m.files.push_back({n.file, 4096ull * (i + 1), 0x01020304u * (i + 1)});
    m.nodes.push_back(std::move(n));
  }
  return m;
}

std::string Encoded(const Manifest& m) {
  Result<std::string> bytes = EncodeManifest(m);
  EXPECT_TRUE(bytes) << bytes.error().ToString();
  return bytes ? *bytes : std::string();
}

std::string Hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "%08" PRIx32, v);
  return b;
}

// Recomputes the checksum on the last line after an edit, so that what
// refuses the edit is the structure check behind the checksum.
std::string Reseal(std::string text) {
  size_t end = text.rfind("\nend crc32c=");
  EXPECT_NE(end, std::string::npos);
  if (end == std::string::npos) return text;
  text.resize(end + 1);
  return text + "end crc32c=" + Hex32(Crc32c(0, text.data(), text.size())) + "\n";
}

// `text` with the first `from` replaced by `to`; fails the test if absent.
std::string Edit(const std::string& text, const std::string& from, const std::string& to) {
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "no '" << from << "' in the manifest";
  if (at == std::string::npos) return text;
  return text.substr(0, at) + to + text.substr(at + from.size());
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t nl = text.find('\n', i);
    out.push_back(text.substr(i, nl - i + 1));
    i = nl + 1;
  }
  return out;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l;
  return out;
}

// A refusal is one line, names the line ("line N: ..."), and has `code`.
::testing::AssertionResult Refused(std::string_view bytes, int code = EBADMSG, int line = 0,
                                   const std::string& contains = "") {
  Result<Manifest> m = ParseManifest(bytes);
  if (m) return ::testing::AssertionFailure() << "accepted";
  const Status& e = m.error();
  if (e.code() != code)
    return ::testing::AssertionFailure()
           << "code " << e.code() << ", want " << code << ": " << e.message();
  if (e.message().find('\n') != std::string::npos)
    return ::testing::AssertionFailure() << "message spans lines: " << e.message();
  if (e.message().rfind("line ", 0) != 0)
    return ::testing::AssertionFailure() << "message does not name the line: " << e.message();
  if (line > 0 && e.message().rfind("line " + std::to_string(line) + ": ", 0) != 0)
    return ::testing::AssertionFailure() << "want line " << line << ": " << e.message();
  if (!contains.empty() && e.message().find(contains) == std::string::npos)
    return ::testing::AssertionFailure() << "want '" << contains << "': " << e.message();
  return ::testing::AssertionSuccess() << e.message();
}

// --- round trips ---------------------------------------------------------------

TEST(Manifest, RoundTripsEveryField) {
  for (const Manifest& m : {FullManifest(), MinimalManifest(), WideManifest(100, 8)}) {
    std::string bytes = Encoded(m);
    Result<Manifest> back = ParseManifest(bytes);
    ASSERT_TRUE(back) << back.error().ToString();
    EXPECT_EQ(*back, m);
    EXPECT_EQ(Encoded(*back), bytes);  // and the bytes are the one spelling
  }
}

TEST(Manifest, RoundTripsExtremeValues) {
  Manifest m = FullManifest();
  m.epoch = UINT64_MAX;
  m.uid = UINT32_MAX;
  m.created_unix_ns = 0;
  m.format_version = UINT32_MAX;
  m.job = std::string(255, '\xff');
  m.step = "%=% =";
  m.nodes[0].argv = {""};
  m.nodes[1].argv = std::vector<std::string>(4096, "x");
  m.nodes[2].argv = {std::string(128 * 1024, '\x80')};
  m.files[1].name = m.nodes[1].file = std::string(255, 'z');
  Result<Manifest> back = ParseManifest(Encoded(m));
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, m);
}

TEST(Manifest, IsReadableText) {
  std::string bytes = Encoded(MinimalManifest());
  const std::string head =
      "stasis-manifest 1\n"
      "job j\n"
      "step %\n"
      "epoch 1\n"
      "uid 0\n"
      "created 0\n"
      "stasis-version 0.1.0\n"
      "format-version 1\n"
      "nodes 1\n"
      "node 0 host=h file=n tasks=0\n"
      "command 0\n"
      "file n size=0 crc32c=00000000\n";
  ASSERT_EQ(bytes.substr(0, head.size()), head);
  EXPECT_EQ(bytes.substr(head.size()),
            "end crc32c=" + Hex32(Crc32c(0, head.data(), head.size())) + "\n");

  std::string full = Encoded(FullManifest());
  EXPECT_NE(full.find("\ncommand 0 /opt/my%20app/bin/solver --input%3din%20put.dat 100%25 % "
                      "h%c3%a9llo%20w%c3%b6rld tab%09here new%0aline %3d %25 %20\n"),
            std::string::npos)
      << full;
  EXPECT_NE(full.find("\nnode 2 host=n%c5%93ud-c file=node_c.ctx tasks=11,8,4294967295\n"),
            std::string::npos);
  EXPECT_NE(full.find("\ncommand 2\n"), std::string::npos);
}

// --- the encoder refuses what the parser refuses ---------------------------------

// The documented encoding (docs/format.md), written without any check, so
// that the parser can be shown what EncodeManifest refuses to write.
std::string RawEncode(const Manifest& m) {
  auto esc = [](std::string_view s) {
    if (s.empty()) return std::string("%");
    std::string out;
    for (unsigned char c : s) {
      if (c > 0x20 && c < 0x7f && c != '%' && c != '=')
        out.push_back(static_cast<char>(c));
      else
        out += "%" + Hex32(c).substr(6);
    }
    return out;
  };
  std::string out = "stasis-manifest 1\njob " + esc(m.job) + "\nstep " + esc(m.step) + "\nepoch " +
                    std::to_string(m.epoch) + "\nuid " + std::to_string(m.uid) + "\ncreated " +
                    std::to_string(m.created_unix_ns) + "\nstasis-version " +
                    esc(m.stasis_version) + "\nformat-version " + std::to_string(m.format_version) +
                    "\nnodes " + std::to_string(m.nodes.size()) + "\n";
  for (const ManifestNode& n : m.nodes) {
    out += "node " + std::to_string(n.index) + " host=" + esc(n.host) + " file=" + esc(n.file) +
           " tasks=";
    for (size_t i = 0; i < n.tasks.size(); ++i) out += (i ? "," : "") + std::to_string(n.tasks[i]);
    out += "\ncommand " + std::to_string(n.index);
    for (const auto& a : n.argv) out += " " + esc(a);
    out += "\n";
  }
  for (const ManifestFile& f : m.files)
    out += "file " + esc(f.name) + " size=" + std::to_string(f.size) +
           " crc32c=" + Hex32(f.crc32c) + "\n";
  return out + "end crc32c=" + Hex32(Crc32c(0, out.data(), out.size())) + "\n";
}

TEST(Manifest, RawEncodeIsTheEncoding) {
  for (const Manifest& m : {FullManifest(), MinimalManifest(), WideManifest(5, 3)})
    EXPECT_EQ(RawEncode(m), Encoded(m));
}

struct BadCase {
  const char* name;
  std::function<void(Manifest*)> edit;
};

std::vector<BadCase> BadManifests() {
  auto rename = [](size_t node, std::string name) {
    return [node, name](Manifest* m) { m->nodes[node].file = m->files[node].name = name; };
  };
  return {
      {"empty file name", rename(1, "")},
      {"dot file", rename(1, ".hidden")},
      {"dot dot", rename(1, "..")},
      {"MANIFEST itself", rename(1, "MANIFEST")},
      {"slash", rename(1, "a/b.ctx")},
      {"parent", rename(1, "../x.ctx")},
      {"space", rename(1, "a b.ctx")},
      {"newline", rename(1, "a\nb.ctx")},
      {"non-ASCII", rename(1, "n\xc5\x93ud.ctx")},
      {"256 bytes", rename(1, std::string(256, 'a'))},
      {"two nodes, one file", rename(1, "node-a.ctx")},
      {"task on two nodes", [](Manifest* m) { m->nodes[2].tasks[1] = 3; }},
      {"task twice on a node", [](Manifest* m) { m->nodes[1].tasks[3] = 4; }},
      {"node without tasks", [](Manifest* m) { m->nodes[1].tasks.clear(); }},
      {"node index skipped", [](Manifest* m) { m->nodes[2].index = 3; }},
      {"nodes out of order", [](Manifest* m) { std::swap(m->nodes[0], m->nodes[1]); }},
      {"file of another node", [](Manifest* m) { m->files[1].name = "node-a.ctx"; }},
      {"files out of order", [](Manifest* m) { std::swap(m->files[0], m->files[1]); }},
      {"file not named by a node", [](Manifest* m) { m->files[2].name = "other.ctx"; }},
      {"a file missing", [](Manifest* m) { m->files.pop_back(); }},
      {"a file too many",
       [](Manifest* m) {
         m->files.push_back({"extra.ctx", 1, 1});
       }},
      {"zero epoch", [](Manifest* m) { m->epoch = 0; }},
      {"no nodes",
       [](Manifest* m) {
         m->nodes.clear();
         m->files.clear();
       }},
      {"empty job", [](Manifest* m) { m->job = ""; }},
      {"job with a control byte", [](Manifest* m) { m->job = "a\x1b[2Jb"; }},
      {"job of 256 bytes", [](Manifest* m) { m->job = std::string(256, 'j'); }},
      {"step with a newline", [](Manifest* m) { m->step = "0\n"; }},
      {"empty host", [](Manifest* m) { m->nodes[1].host = ""; }},
      {"host with DEL", [](Manifest* m) { m->nodes[1].host = "a\x7f"; }},
      {"empty stasis version", [](Manifest* m) { m->stasis_version = ""; }},
      {"zero format version", [](Manifest* m) { m->format_version = 0; }},
      {"4097 arguments", [](Manifest* m) { m->nodes[0].argv.assign(4097, "x"); }},
      {"argument over 128 KiB",
       [](Manifest* m) { m->nodes[0].argv.push_back(std::string(128 * 1024 + 1, 'x')); }},
  };
}

TEST(Manifest, EncodeRefusesWhatParseRefuses) {
  for (const BadCase& c : BadManifests()) {
    SCOPED_TRACE(c.name);
    Manifest m = FullManifest();
    c.edit(&m);
    Result<std::string> bytes = EncodeManifest(m);
    ASSERT_FALSE(bytes);
    EXPECT_EQ(bytes.error().code(), EINVAL);
    EXPECT_EQ(bytes.error().message().find('\n'), std::string::npos) << bytes.error().message();
    EXPECT_TRUE(Refused(RawEncode(m)));
  }
}

TEST(Manifest, ParseNamesTheLineOfAnInconsistency) {
  // 3 nodes: lines 10-15 are the nodes and commands, 16-18 the files.
  struct {
    const char* name;
    std::function<void(Manifest*)> edit;
    int line;
    const char* contains;
  } cases[] = {
      {"zero epoch", [](Manifest* m) { m->epoch = 0; }, 4, "epoch"},
      {"empty job", [](Manifest* m) { m->job = ""; }, 2, "job"},
      {"empty stasis version", [](Manifest* m) { m->stasis_version = ""; }, 7, "version"},
      {"zero format version", [](Manifest* m) { m->format_version = 0; }, 8, "format version"},
      {"task on two nodes", [](Manifest* m) { m->nodes[2].tasks[1] = 3; }, 14, "task 3"},
      {"two nodes, one file",
       [](Manifest* m) { m->nodes[2].file = m->files[2].name = "node-a.ctx"; }, 14, "node-a.ctx"},
      {"empty host", [](Manifest* m) { m->nodes[1].host = ""; }, 12, "host"},
      {"file of another node", [](Manifest* m) { m->files[1].name = "node-a.ctx"; }, 17,
       "node-a.ctx"},
      {"files out of order", [](Manifest* m) { std::swap(m->files[0], m->files[1]); }, 16,
       "node-b.ctx"},
      {"file with a newline", [](Manifest* m) { m->files[2].name = "x\ny"; }, 18, "x%0ay"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    Manifest m = FullManifest();
    c.edit(&m);
    EXPECT_TRUE(Refused(RawEncode(m), EBADMSG, c.line, c.contains));
  }
}

// --- damaged and edited bytes ------------------------------------------------------

TEST(Manifest, RefusesEverySingleByteFlip) {
  const std::string good = Encoded(FullManifest());
  for (size_t i = 0; i < good.size(); ++i) {
    for (int x = 1; x < 256; ++x) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ x);
      Result<Manifest> m = ParseManifest(bad);
      ASSERT_FALSE(m) << "flip 0x" << std::hex << x << " at " << std::dec << i << " accepted";
      int code = m.error().code();
      ASSERT_TRUE(code == EBADMSG || code == ENOTSUP) << m.error().message();
      ASSERT_TRUE(Refused(bad, code)) << "flip at " << i;
    }
  }
}

// With the checksum recomputed, a flip is either refused by the structure
// checks or is another valid manifest, whose encoding is exactly those bytes.
TEST(Manifest, EveryResealedByteFlipIsRefusedOrCanonical) {
  const std::string good = Encoded(FullManifest());
  const size_t covered = good.rfind("end crc32c=");
  size_t accepted = 0;
  for (size_t i = 0; i + 1 < covered; ++i) {  // not the '\n' before "end"
    for (int x = 1; x < 256; ++x) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ x);
      bad = Reseal(bad);
      Result<Manifest> m = ParseManifest(bad);
      if (!m) {
        ASSERT_TRUE(Refused(bad, m.error().code())) << "flip at " << i;
        continue;
      }
      ++accepted;
      ASSERT_NE(*m, FullManifest()) << "flip at " << i << " parsed to the same manifest";
      Result<std::string> again = EncodeManifest(*m);
      ASSERT_TRUE(again) << again.error().ToString();
      ASSERT_EQ(*again, bad) << "flip at " << i << " is a second spelling";
    }
  }
  EXPECT_GT(accepted, 0u);  // digits and names: other valid manifests
}

TEST(Manifest, RefusesEveryTruncation) {
  const std::string good = Encoded(FullManifest());
  for (size_t n = 0; n < good.size(); ++n) EXPECT_TRUE(Refused(good.substr(0, n))) << n;
  EXPECT_TRUE(Refused("", EBADMSG, 1, "not a stasis manifest"));
  EXPECT_TRUE(Refused(good.substr(0, good.size() - 1), EBADMSG, 19, "no newline"));
  EXPECT_TRUE(Refused(good.substr(0, good.rfind("end ")), EBADMSG, 19, "end"));
}

TEST(Manifest, RefusesAppendedBytes) {
  const std::string good = Encoded(FullManifest());
  for (std::string tail : std::vector<std::string>{"\n", " ", "x", std::string(1, '\0'), "\r\n",
                                                   "end crc32c=00000000\n"})
    EXPECT_TRUE(Refused(good + tail, EBADMSG, 19, "after 'end'")) << tail;
  EXPECT_TRUE(Refused(good + good, EBADMSG, 19));
  EXPECT_TRUE(Refused(Edit(good, "\nend crc32c=", " x\nend crc32c=")));
}

TEST(Manifest, RefusesANewerVersion) {
  const std::string good = Encoded(FullManifest());
  EXPECT_TRUE(Refused(Reseal(Edit(good, "stasis-manifest 1\n", "stasis-manifest 2\n")), ENOTSUP, 1,
                      "newer"));
  EXPECT_TRUE(
      Refused(Edit(good, "stasis-manifest 1\n", "stasis-manifest 4294967295\n"), ENOTSUP, 1));
  for (const char* v : {"0", "01", "-1", "1.0", "", "4294967296", "x"})
    EXPECT_TRUE(Refused(
        Reseal(Edit(good, "stasis-manifest 1\n", std::string("stasis-manifest ") + v + "\n")),
        EBADMSG, 1))
        << v;
  EXPECT_TRUE(Refused(Reseal(Edit(good, "stasis-manifest", "stasis-manifesto")), EBADMSG, 1));
}

TEST(Manifest, RefusesLinesOutOfOrder) {
  const std::vector<std::string> lines = Lines(Encoded(FullManifest()));
  ASSERT_EQ(lines.size(), 19u);
  auto swapped = [&](size_t a, size_t b) {  // 0-based
    std::vector<std::string> l = lines;
    std::swap(l[a], l[b]);
    return Reseal(Join(l));
  };
  EXPECT_TRUE(Refused(swapped(1, 2), EBADMSG, 2, "expected 'job'"));
  EXPECT_TRUE(Refused(swapped(0, 1), EBADMSG, 1));
  EXPECT_TRUE(Refused(swapped(7, 8), EBADMSG, 8, "expected 'format-version'"));
  EXPECT_TRUE(Refused(swapped(9, 10), EBADMSG, 10, "node 0"));      // command before node
  EXPECT_TRUE(Refused(swapped(9, 11), EBADMSG, 10, "node 0"));      // node 1 before node 0
  EXPECT_TRUE(Refused(swapped(10, 12), EBADMSG, 11, "command 0"));  // node 0, node 1
  EXPECT_TRUE(Refused(swapped(14, 15), EBADMSG, 15, "command 2"));  // file before a command
  EXPECT_TRUE(Refused(swapped(15, 16), EBADMSG, 16));               // file lines swapped
  {
    std::vector<std::string> l = lines;  // node 0 and node 1 blocks swapped
    std::swap(l[9], l[11]);
    std::swap(l[10], l[12]);
    EXPECT_TRUE(Refused(Reseal(Join(l)), EBADMSG, 10, "node 0"));
  }
  {
    std::vector<std::string> l = lines;  // files before nodes
    std::vector<std::string> moved(l.begin() + 15, l.begin() + 18);
    l.erase(l.begin() + 15, l.begin() + 18);
    l.insert(l.begin() + 9, moved.begin(), moved.end());
    EXPECT_TRUE(Refused(Reseal(Join(l)), EBADMSG, 10));
  }
  EXPECT_TRUE(Refused(swapped(17, 18), EBADMSG, 18, "expected 'file"));  // 'end' too early
}

TEST(Manifest, RefusesDuplicateAndMissingLines) {
  const std::vector<std::string> lines = Lines(Encoded(FullManifest()));
  auto with = [&](std::function<void(std::vector<std::string>*)> f) {
    std::vector<std::string> l = lines;
    f(&l);
    return Reseal(Join(l));
  };
  // node 0 twice
  EXPECT_TRUE(Refused(with([](auto* l) { l->insert(l->begin() + 10, (*l)[9]); }), EBADMSG, 11,
                      "command 0"));
  // node 1 and its command twice (and "nodes 4")
  EXPECT_TRUE(Refused(with([](auto* l) {
                        l->insert(l->begin() + 13, {(*l)[11], (*l)[12]});
                        (*l)[8] = "nodes 4\n";
                      }),
                      EBADMSG, 14, "node 2"));
  // renumbered copy of node 1: its tasks and file are taken
  EXPECT_TRUE(Refused(with([](auto* l) {
                        l->insert(l->begin() + 15, {Edit((*l)[11], "node 1", "node 3"),
                                                    Edit((*l)[12], "command 1", "command 3")});
                        l->insert(l->begin() + 20, (*l)[18]);
                        (*l)[8] = "nodes 4\n";
                      }),
                      EBADMSG, 16));
  // a header line twice, one missing
  EXPECT_TRUE(Refused(with([](auto* l) { l->insert(l->begin() + 2, (*l)[1]); }), EBADMSG, 3,
                      "expected 'step'"));
  EXPECT_TRUE(
      Refused(with([](auto* l) { l->erase(l->begin() + 5); }), EBADMSG, 6, "expected 'created'"));
  // a file line twice, or missing, or "nodes" disagreeing with the node lines
  EXPECT_TRUE(Refused(with([](auto* l) { l->insert(l->begin() + 16, (*l)[15]); }), EBADMSG, 19,
                      "expected 'end"));
  EXPECT_TRUE(
      Refused(with([](auto* l) { l->erase(l->begin() + 17); }), EBADMSG, 18, "expected 'file"));
  EXPECT_TRUE(Refused(with([](auto* l) { (*l)[8] = "nodes 2\n"; }), EBADMSG, 14, "file"));
  EXPECT_TRUE(Refused(with([](auto* l) { (*l)[8] = "nodes 4\n"; }), EBADMSG, 16, "node 3"));
  EXPECT_TRUE(Refused(with([](auto* l) { (*l)[8] = "nodes 0\n"; }), EBADMSG, 9, "no nodes"));
}

TEST(Manifest, RefusesAFileLineNamingAnotherFile) {
  const std::string good = Encoded(FullManifest());
  EXPECT_TRUE(Refused(Reseal(Edit(good, "file node-b.ctx ", "file node-a.ctx ")), EBADMSG, 17,
                      "node-b.ctx"));
  EXPECT_TRUE(Refused(Reseal(Edit(good, "file node_c.ctx ", "file node_c.ctx2 ")), EBADMSG, 18));
  EXPECT_TRUE(Refused(Reseal(Edit(good, "file node_c.ctx ", "file node_c%0a ")), EBADMSG, 18));
  EXPECT_TRUE(Refused(Reseal(Edit(good, "file node-a.ctx ", "file ../node-a.ctx ")), EBADMSG, 16));
}

TEST(Manifest, RefusesOversizedInput) {
  const std::string good = Encoded(FullManifest());
  std::string big = good + std::string(kMaxManifestBytes + 1 - good.size(), '\n');
  EXPECT_TRUE(Refused(big, EBADMSG, 0, "too large"));
  // A manifest that only fits without the limit: a node's command of
  // 4096 arguments of 1500 bytes (4500 escaped): 18 MiB.
  Manifest m = FullManifest();
  m.nodes[1].argv.assign(4096, std::string(1500, '\x01'));
  EXPECT_FALSE(EncodeManifest(m));
  EXPECT_TRUE(Refused(RawEncode(m), EBADMSG, 0, "too large"));
}

// What encodes to exactly the limit parses; one byte more neither encodes
// nor parses.
TEST(Manifest, EncodeAndParseShareTheSizeLimit) {
  Manifest m = FullManifest();
  const size_t arg = 128 * 1024;  // the longest argument
  size_t room = kMaxManifestBytes - Encoded(m).size();
  for (; room > arg + 1; room -= arg + 1) m.nodes[1].argv.push_back(std::string(arg, 'a'));
  m.nodes[1].argv.push_back(std::string(room - 1, 'a'));
  Result<std::string> exact = EncodeManifest(m);
  ASSERT_TRUE(exact) << exact.error().ToString();
  EXPECT_EQ(exact->size(), kMaxManifestBytes);
  EXPECT_TRUE(ParseManifest(*exact));
  m.nodes[1].argv.back() += "a";
  EXPECT_FALSE(EncodeManifest(m));
  EXPECT_TRUE(Refused(RawEncode(m), EBADMSG, 0, "too large"));
}

TEST(Manifest, LongLinesAllocateLittle) {
  std::string good = Encoded(FullManifest());
  const std::string filler(kMaxManifestBytes - good.size() - 16, ' ');
  // Spaces are separators: 16 million empty tokens on one line.
  std::string spaces = Edit(good, "\ncommand 1 ./a.out", "\ncommand 1 ./a.out" + filler);
  // One token of 16 MiB where a key is expected.
  std::string token = Edit(good, "\njob ", "\n" + std::string(filler.size(), 'j') + " ");
  for (const std::string* bytes : {&spaces, &token}) {
    stasis::testing::AllocationProbe probe;
    EXPECT_TRUE(Refused(*bytes));
    EXPECT_LT(probe.largest(), 1u << 20);
  }
}

TEST(Manifest, RefusesCrlfLineEndings) {
  const std::string good = Encoded(FullManifest());
  std::string crlf;
  for (char c : good) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  EXPECT_TRUE(Refused(crlf, EBADMSG, 1));
  EXPECT_TRUE(Refused(Reseal(crlf), EBADMSG, 1));
  // Only the last line, or only one line in the middle.
  std::string last = good.substr(0, good.size() - 1) + "\r\n";
  EXPECT_TRUE(Refused(last, EBADMSG, 19));
  EXPECT_TRUE(Refused(Reseal(Edit(good, "\nuid 1000\n", "\nuid 1000\r\n")), EBADMSG, 5));
  EXPECT_TRUE(Refused(Reseal(Edit(good, " ./a.out\n", " ./a.out\r\n")), EBADMSG, 13));
}

TEST(Manifest, RefusesUpperCaseHex) {
  const std::string good = Encoded(FullManifest());
  // The checksum, in upper case: the same value, another spelling.
  std::string end = good.substr(good.rfind("end crc32c="));
  std::string upper = end;
  for (char& c : upper)
    if (c >= 'a' && c <= 'f') c = static_cast<char>(c - 'a' + 'A');
  if (upper != end) {
    EXPECT_TRUE(Refused(Edit(good, end, upper), EBADMSG, 19));
  }
  EXPECT_TRUE(Refused(Reseal(Edit(good, "crc32c=deadbeef", "crc32c=DEADBEEF")), EBADMSG, 16));
  EXPECT_TRUE(Refused(Reseal(Edit(good, "h%c3%a9llo", "h%C3%A9llo")), EBADMSG, 11));
  EXPECT_TRUE(Refused(Reseal(Edit(good, "host=n%c5%93ud-c", "host=n%C5%93ud-c")), EBADMSG, 14));
}

TEST(Manifest, RefusesOtherSpellings) {
  const std::string good = Encoded(FullManifest());
  struct {
    const char* from;
    const char* to;
    int line;
  } cases[] = {
      {"\nepoch 7\n", "\nepoch 07\n", 4},
      {"\nepoch 7\n", "\nepoch +7\n", 4},
      {"\nepoch 7\n", "\nepoch 18446744073709551616\n", 4},
      {"\nuid 1000\n", "\nuid 4294967296\n", 5},
      {"\njob 4242\n", "\njob %34242\n", 2},  // an escaped plain byte
      {"\njob 4242\n", "\njob 4242%\n", 2},   // a cut escape
      {"\njob 4242\n", "\njob  4242\n", 2},   // two spaces
      {"\njob 4242\n", "\njob 4242 \n", 2},   // trailing space
      {"\njob 4242\n", "\njob\t4242\n", 2},   // a tab
      {"\njob 4242\n", "\njob 42=42\n", 2},   // a bare '='
      {"\njob 4242\n", "\njob 4242\n\n", 3},  // an empty line
      {"\nstep batch\n", "\nstep \n", 3},     // empty is "%"
      {"tasks=0,1,2,3\n", "tasks=0,1,,2,3\n", 10},
      {"tasks=0,1,2,3\n", "tasks=0,1,2,3,\n", 10},
      {"tasks=0,1,2,3\n", "tasks=\n", 10},
      {"tasks=0,1,2,3\n", "tasks=0,01,2,3\n", 10},
      {" host=node-a ", " host=node-a  ", 10},
      {" host=node-a file=node-a.ctx ", " file=node-a.ctx host=node-a ", 10},
      {" host=node-a ", " host= ", 10},
      {" host=node-a ", " Host=node-a ", 10},
      {"size=0 ", "size=00 ", 17},
      {"size=0 ", "size=% ", 17},
      {"crc32c=deadbeef", "crc32c=deadbee", 16},
      {"crc32c=deadbeef", "crc32c=0deadbeef", 16},
      {"\ncommand 2\n", "\ncommand 2 \n", 15},
      {"\ncommand 2\n", "\ncommand\n", 15},
      {"\ncommand 2\n", "\ncommand 02\n", 15},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.from) + " -> " + c.to);
    EXPECT_TRUE(Refused(Reseal(Edit(good, c.from, c.to)), EBADMSG, c.line));
  }
}

TEST(Manifest, RefusesAnEditedManifest) {
  const std::string good = Encoded(FullManifest());
  EXPECT_TRUE(Refused(Edit(good, "\nuid 1000\n", "\nuid 0\n"), EBADMSG, 19, "checksum"));
  EXPECT_TRUE(Refused(Edit(good, "size=123456 ", "size=123457 "), EBADMSG, 19, "checksum"));
}

// --- seed corpus of manifest_fuzzer ------------------------------------------------

TEST(ManifestCorpus, SeedsAreWhatTheEncoderProduces) {
  std::vector<std::pair<std::string, std::string>> seeds = {
      {"full.seed", Encoded(FullManifest())},
      {"minimal.seed", Encoded(MinimalManifest())},
      {"wide.seed", Encoded(WideManifest(8, 4))},
  };
  for (const auto& [name, bytes] : seeds) {
    testing::ExpectGoldenFile(std::string(STASIS_MANIFEST_CORPUS_DIR) + "/" + name, bytes,
                              "EncodeManifest");
    EXPECT_TRUE(ParseManifest(bytes)) << name;
  }
}

}  // namespace
}  // namespace stasis::format
