// stasisd's state records (engine/daemon/state_record.h): hostile paths
// round-trip and cannot forge a key; the reader refuses anything the writer
// could not have written.
#include "engine/daemon/state_record.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace stasis::daemon {
namespace {

StateRecord Sample() {
  StateRecord r;
  r.id = 42;
  r.worker = 4242;
  r.uid = 1001;
  r.gid = 1002;
  r.groups = {1002, 27, 100};
  r.mode = 1;
  r.path = "/tmp/ckpt/a.ctx";
  return r;
}

StateRecord WithFile(StateRecord r) {
  r.folder = "/tmp/ckpt";
  r.folder_dev = 2049;
  r.folder_ino = 131;
  r.name = "a.ctx";
  r.file_dev = 2049;
  r.file_ino = 18446744073709551615ull;
  return r;
}

TEST(StateRecord, RoundTripsHostilePaths) {
  std::string every_byte;
  for (int c = 1; c < 256; ++c) every_byte += static_cast<char>(c);
  const std::string paths[] = {
      "/tmp/x\ntemp=/etc/shadow",
      "/tmp/q\ntemp=/root/secret/f\nworker=1\n",
      "/tmp/a=b%41%%2F%0A",
      "/tmp/\r\t\x1b[2J\x7f \xff\xfe\x80",
      "/" + every_byte.substr(0, 46) + every_byte.substr(47),  // no '/' inside a name is needed
      "/tmp/" + every_byte,
  };
  for (const std::string& p : paths) {
    StateRecord r = WithFile(Sample());
    r.path = p;
    r.folder = p;
    std::string text = EncodeStateRecord(r);
    // One line per key, nothing but printable ASCII and newlines.
    size_t lines = 1;
    for (char c : text.substr(text.find('\n') + 1)) {
      if (c == '\n')
        ++lines;
      else
        EXPECT_TRUE(c >= 0x21 && c <= 0x7e) << "raw byte " << int(c) << " in " << text;
    }
    EXPECT_EQ(lines, 14u) << text;  // version + 13 keys
    auto back = DecodeStateRecord(text);
    ASSERT_TRUE(back) << back.error().ToString();
    EXPECT_EQ(*back, r);
    EXPECT_EQ(back->path, p);
  }
}

TEST(StateRecord, EscapeIsExact) {
  EXPECT_EQ(EscapeStateValue("a b\n%="), "a%20b%0A%25=");
  EXPECT_EQ(*UnescapeStateValue("a%20b%0A%25="), "a b\n%=");
  EXPECT_FALSE(UnescapeStateValue("%0a"));  // lower case: not canonical
  EXPECT_FALSE(UnescapeStateValue("%41"));  // 'A' needs no escape
  EXPECT_FALSE(UnescapeStateValue("%2"));   // cut
  EXPECT_FALSE(UnescapeStateValue("%"));
  EXPECT_FALSE(UnescapeStateValue("a b"));  // a raw space
  EXPECT_FALSE(UnescapeStateValue("\xff"));
}

TEST(StateRecord, WithoutFileFields) {
  StateRecord r = Sample();
  r.groups.clear();
  auto back = DecodeStateRecord(EncodeStateRecord(r));
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, r);
  EXPECT_FALSE(back->has_file());
}

TEST(StateRecord, ReaderIsStrict) {
  const std::string good = EncodeStateRecord(WithFile(Sample()));
  ASSERT_TRUE(DecodeStateRecord(good));
  auto refused = [](const std::string& text) { return !DecodeStateRecord(text).has_value(); };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return t.replace(at, from.size(), to);
  };
  EXPECT_TRUE(refused(""));
  EXPECT_TRUE(refused(good.substr(good.find('\n') + 1)));                // no version line
  EXPECT_TRUE(refused(replace("stasis-state 1", "stasis-state 2")));     // another version
  EXPECT_TRUE(refused(good.substr(0, good.size() - 1)));                 // cut last line
  EXPECT_TRUE(refused(good + "temp=/etc/shadow\n"));                     // unknown key
  EXPECT_TRUE(refused(good + "worker=1\n"));                             // twice
  EXPECT_TRUE(refused(good + "path=/x\n"));                              // twice
  EXPECT_TRUE(refused(replace("uid=1001\n", "")));                       // missing
  EXPECT_TRUE(refused(replace("file_ino=18446744073709551615\n", "")));  // file fields cut
  EXPECT_TRUE(refused(replace("file_ino=18446744073709551615", "file_ino=18446744073709551616")));
  EXPECT_TRUE(refused(replace("uid=1001", "uid=01001")));
  EXPECT_TRUE(refused(replace("uid=1001", "uid=-1")));
  EXPECT_TRUE(refused(replace("uid=1001", "uid=4294967295")));
  EXPECT_TRUE(refused(replace("worker=4242", "worker=0")));
  EXPECT_TRUE(refused(replace("mode=1", "mode=3")));
  EXPECT_TRUE(refused(replace("groups=1002,27,100", "groups=1002,,100")));
  EXPECT_TRUE(refused(replace("path=/tmp/ckpt/a.ctx", "path=tmp/a")));
  EXPECT_TRUE(refused(replace("path=/tmp/ckpt/a.ctx", "path=/tmp/%00")));
  EXPECT_TRUE(refused(replace("name=a.ctx", "name=..")));
  EXPECT_TRUE(refused(replace("name=a.ctx", "name=a/b")));
  EXPECT_TRUE(refused(replace("name=a.ctx", "name=")));
  EXPECT_TRUE(refused(replace("path=/tmp/ckpt/a.ctx", "path=/tmp/ckpt/a ctx")));
  EXPECT_TRUE(refused(replace("\nid=", "\nnoequals\nid=")));
  EXPECT_TRUE(refused(good + std::string(kMaxStateRecordSize, 'x')));
  std::string many = "groups=1";
  for (size_t i = 0; i < kMaxStateGroups; ++i) many += ",1";
  EXPECT_TRUE(refused(replace("groups=1002,27,100", many)));
}

TEST(StateRecord, FileRoundTrip) {
  char dir[] = "/tmp/state_record_test.XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  StateRecord r = WithFile(Sample());
  r.path = "/tmp/evil\ntemp=/etc/passwd";
  std::string path = std::string(dir) + "/req-1-1.req";
  ASSERT_TRUE(WriteStateRecordFile(path, r).ok());
  int dfd = ::open(dir, O_RDONLY | O_DIRECTORY);
  auto back = ReadStateRecordFile(dfd, "req-1-1.req");
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, r);
  // A symlink is not followed.
  ASSERT_EQ(::symlink(path.c_str(), (std::string(dir) + "/link.req").c_str()), 0);
  EXPECT_FALSE(ReadStateRecordFile(dfd, "link.req"));
  ::close(dfd);
  ::unlink((std::string(dir) + "/link.req").c_str());
  ::unlink(path.c_str());
  ::rmdir(dir);
}

// The committed fuzz corpus: no seed crashes the reader; the valid seeds
// (named ok-*) decode and re-encode to the same bytes.
TEST(StateRecord, FuzzCorpus) {
  DIR* d = ::opendir(STASIS_STATE_RECORD_CORPUS_DIR);
  ASSERT_NE(d, nullptr);
  int valid = 0;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name[0] == '.') continue;
    std::ifstream in(std::string(STASIS_STATE_RECORD_CORPUS_DIR) + "/" + name, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    auto r = DecodeStateRecord(text.str());
    if (name.rfind("ok-", 0) == 0) {
      ASSERT_TRUE(r) << name << ": " << r.error().ToString();
      EXPECT_EQ(EncodeStateRecord(*r), text.str()) << name;
      ++valid;
    }
  }
  ::closedir(d);
  EXPECT_GE(valid, 2);
}

}  // namespace
}  // namespace stasis::daemon
