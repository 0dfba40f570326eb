// The metadata schema (schema.h): every member of every struct in
// context.h has a tag, tags are unique, and the TLV decoder follows the
// documented rules for unknown, duplicated, short and oversized fields.
#include "engine/format/schema.h"

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/format/field_codec.h"
#include "test/unit/test_util.h"

namespace stasis::format::internal {
namespace {

// --- counting the members of an aggregate (C++20, no reflection) -------------

struct AnyInit {
  template <class T>
  operator T() const;  // never defined: used in unevaluated contexts only
};

template <class T, class... A>
constexpr size_t CountMembers() {
  if constexpr (requires { T{A{}..., AnyInit{}}; }) {
    return CountMembers<T, A..., AnyInit>();
  } else {
    return sizeof...(A);
  }
}

// --- visitors over the schema --------------------------------------------------

// Records (tag, name) of every field a Fields() function lists.
struct NameCollector {
  std::vector<std::pair<uint32_t, std::string>> fields;
  template <class... A>
  void Add(uint32_t tag, const char* name, A&&...) {
    fields.emplace_back(tag, name);
  }
  template <class... A>
  void U32(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void U64(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void I32(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void I64(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void Text(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void Path(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void Bytes(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void RepeatedU32(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void RepeatedText(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void Runs(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void Message(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
  template <class... A>
  void RepeatedMessage(uint32_t t, const char* n, A&&... a) {
    Add(t, n, a...);
  }
};

template <class T>
std::vector<std::pair<uint32_t, std::string>> SchemaOf() {
  NameCollector c;
  T value{};
  Fields(c, value);
  return c.fields;
}

template <class T>
void ExpectSchemaCoversStruct(const char* type) {
  auto fields = SchemaOf<T>();
  EXPECT_EQ(fields.size(), CountMembers<T>())
      << type << ": a member has no tag in schema.h (or a tag names no member)";
  std::set<uint32_t> tags;
  for (const auto& [tag, name] : fields) {
    EXPECT_TRUE(tags.insert(tag).second) << type << "." << name << ": tag " << tag << " reused";
    EXPECT_GE(tag, 1u) << type << "." << name;
    EXPECT_LE(tag, kMaxKnownTag) << type << "." << name;
  }
}

TEST(Schema, EveryMemberOfEveryStructHasATag) {
  ExpectSchemaCoversStruct<ImageInfo>("ImageInfo");
  ExpectSchemaCoversStruct<ProcessEntry>("ProcessEntry");
  ExpectSchemaCoversStruct<ProcessTree>("ProcessTree");
  ExpectSchemaCoversStruct<Rlimit>("Rlimit");
  ExpectSchemaCoversStruct<SigAction>("SigAction");
  ExpectSchemaCoversStruct<MmFields>("MmFields");
  ExpectSchemaCoversStruct<FileId>("FileId");
  ExpectSchemaCoversStruct<Credentials>("Credentials");
  ExpectSchemaCoversStruct<ItimerValue>("ItimerValue");
  ExpectSchemaCoversStruct<ProcessInfo>("ProcessInfo");
  ExpectSchemaCoversStruct<Mapping>("Mapping");
  ExpectSchemaCoversStruct<SharedMemory>("SharedMemory");
  ExpectSchemaCoversStruct<ThreadInfo>("ThreadInfo");
  ExpectSchemaCoversStruct<FileDesc>("FileDesc");
  ExpectSchemaCoversStruct<EndCounts>("EndCounts");
  // PageRun is a packed record (two u64), PageOwner two Pages fields.
  EXPECT_EQ(CountMembers<PageRun>(), kPageRunSize / 8);
  EXPECT_EQ(CountMembers<PageOwner>(), 2u);
}

// --- "every field of the sample is set" ---------------------------------------

// Encoded bytes of each top-level field of a message, by tag.
template <class T>
std::map<uint32_t, std::string> EncodedByTag(const T& m) {
  std::string bytes;
  EXPECT_TRUE(EncodeFields(&bytes, [&](FieldWriter& w) { Fields(w, m); }).ok());
  std::map<uint32_t, std::string> out;
  size_t pos = 0;
  while (pos + kFieldHeaderSize <= bytes.size()) {
    uint32_t tag = LoadU32(bytes.data() + pos);
    uint32_t len = LoadU32(bytes.data() + pos + 4);
    out[tag] += std::to_string(len) + ":" + bytes.substr(pos + kFieldHeaderSize, len);
    pos += kFieldHeaderSize + len;
  }
  return out;
}

using UnsetList = std::vector<std::string>;

template <class T>
void CollectUnset(const std::vector<const T*>& objects, const std::string& path, UnsetList* unset);

// Gathers the nested messages of many objects, per tag, typed.
struct NestedCollector {
  struct Nested {
    std::string name;
    std::vector<const void*> objects;
    std::function<void(const std::vector<const void*>&, const std::string&, UnsetList*)> check;
  };
  std::map<uint32_t, Nested> nested;

  template <class T>
  static void CheckErased(const std::vector<const void*>& objects, const std::string& path,
                          UnsetList* unset) {
    std::vector<const T*> typed;
    for (const void* o : objects) typed.push_back(static_cast<const T*>(o));
    CollectUnset(typed, path, unset);
  }
  template <class T>
  void Message(uint32_t tag, const char* name, const T& m) {
    Nested& n = nested[tag];
    n.name = name;
    n.objects.push_back(&m);
    n.check = &CheckErased<T>;
  }
  template <class T>
  void RepeatedMessage(uint32_t tag, const char* name, const std::vector<T>& v, size_t) {
    Nested& n = nested[tag];
    n.name = std::string(name) + "[]";
    for (const T& m : v) n.objects.push_back(&m);
    n.check = &CheckErased<T>;
  }
  template <class... A>
  void U32(A&&...) {}
  template <class... A>
  void U64(A&&...) {}
  template <class... A>
  void I32(A&&...) {}
  template <class... A>
  void I64(A&&...) {}
  template <class... A>
  void Text(A&&...) {}
  template <class... A>
  void Path(A&&...) {}
  template <class... A>
  void Bytes(A&&...) {}
  template <class... A>
  void RepeatedU32(A&&...) {}
  template <class... A>
  void RepeatedText(A&&...) {}
  template <class... A>
  void Runs(A&&...) {}
};

// A field is "set" when at least one of `objects` encodes it differently
// from a default-constructed struct.
template <class T>
void CollectUnset(const std::vector<const T*>& objects, const std::string& path, UnsetList* unset) {
  if (objects.empty()) {
    unset->push_back(path + " (no instance)");
    return;
  }
  T defaults{};
  std::map<uint32_t, std::string> base = EncodedByTag(defaults);
  std::set<uint32_t> set;
  for (const T* o : objects) {
    for (const auto& [tag, bytes] : EncodedByTag(*o)) {
      if (base[tag] != bytes) set.insert(tag);
    }
  }
  for (const auto& [tag, name] : SchemaOf<T>()) {
    if (set.count(tag) == 0) unset->push_back(path + "." + name);
  }
  NestedCollector nc;
  for (const T* o : objects) Fields(nc, *o);
  for (auto& [tag, n] : nc.nested) n.check(n.objects, path + "." + n.name, unset);
}

template <class T>
UnsetList Unset(const std::vector<T>& objects, const std::string& path) {
  std::vector<const T*> ptrs;
  for (const T& o : objects) ptrs.push_back(&o);
  UnsetList unset;
  CollectUnset(ptrs, path, &unset);
  return unset;
}

TEST(Schema, FullSampleSetsEveryField) {
  Context ctx = testing::MakeFullContext();
  std::vector<ProcessInfo> infos;
  std::vector<Mapping> mappings;
  std::vector<FileDesc> files;
  std::vector<ThreadInfo> threads;
  for (const ProcessImage& p : ctx.processes) {
    infos.push_back(p.info);
    mappings.insert(mappings.end(), p.mappings.begin(), p.mappings.end());
    files.insert(files.end(), p.files.begin(), p.files.end());
    threads.insert(threads.end(), p.threads.begin(), p.threads.end());
  }
  UnsetList unset;
  for (const UnsetList& u :
       {Unset(std::vector<ImageInfo>{ctx.image}, "image"),
        Unset(std::vector<ProcessTree>{ctx.tree}, "tree"), Unset(ctx.shared, "shared"),
        Unset(infos, "process"), Unset(mappings, "mapping"), Unset(files, "file"),
        Unset(threads, "thread")}) {
    unset.insert(unset.end(), u.begin(), u.end());
  }
  EXPECT_TRUE(unset.empty()) << "fields left at their default in MakeFullContext: "
                             << ::testing::PrintToString(unset);
}

// --- decoder rules ----------------------------------------------------------------

std::string Field(uint32_t tag, const std::string& value) {
  std::string out;
  PutU32(&out, tag);
  PutU32(&out, static_cast<uint32_t>(value.size()));
  return out + value;
}
std::string U32Value(uint32_t v) {
  std::string s;
  PutU32(&s, v);
  return s;
}
std::string U64Value(uint64_t v) {
  std::string s;
  PutU64(&s, v);
  return s;
}

TEST(FieldDecoder, SkipsUnknownTags) {
  std::string in = Field(tag::kRlimitCur, U64Value(5)) + Field(40, "future field") +
                   Field(1000000, "") + Field(tag::kRlimitMax, U64Value(9));
  Rlimit r;
  ASSERT_TRUE(FieldReader::DecodeMessage(in, &r).ok());
  EXPECT_EQ(r.cur, 5u);
  EXPECT_EQ(r.max, 9u);
}

TEST(FieldDecoder, AbsentFieldsKeepDefaults) {
  ProcessInfo p;
  ASSERT_TRUE(FieldReader::DecodeMessage(Field(tag::kProcessPid, U32Value(3)), &p).ok());
  ProcessInfo want;
  want.pid = 3;
  EXPECT_EQ(p, want);
  EXPECT_EQ(p.umask, 022u);
  EXPECT_EQ(p.exit_signal, 17u);
}

TEST(FieldDecoder, RejectsDuplicateSingularTag) {
  std::string in = Field(tag::kRlimitCur, U64Value(5)) + Field(tag::kRlimitCur, U64Value(6));
  Rlimit r;
  Status s = FieldReader::DecodeMessage(in, &r);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "cur appears twice");
}

TEST(FieldDecoder, AcceptsRepeatedTags) {
  std::string in = Field(tag::kCredsGroup, U32Value(1)) + Field(tag::kCredsGroup, U32Value(2));
  Credentials c;
  ASSERT_TRUE(FieldReader::DecodeMessage(in, &c).ok());
  EXPECT_EQ(c.groups, (std::vector<uint32_t>{1, 2}));
}

TEST(FieldDecoder, RejectsWrongIntegerLength) {
  Rlimit r;
  Status s = FieldReader::DecodeMessage(Field(tag::kRlimitCur, U32Value(5)), &r);
  EXPECT_EQ(s.message(), "cur has length 4, expected 8");
}

TEST(FieldDecoder, RejectsLengthPastEnd) {
  std::string in = Field(tag::kRlimitCur, U64Value(5));
  StoreU32(in.data() + 4, 0xffffffffu);
  Rlimit r;
  Status s = FieldReader::DecodeMessage(in, &r);
  EXPECT_EQ(s.code(), EBADMSG);
  EXPECT_NE(s.message().find("claims 4294967295 bytes, only 8 left"), std::string::npos)
      << s.message();
}

TEST(FieldDecoder, RejectsCutHeaderAndTagZero) {
  Rlimit r;
  EXPECT_FALSE(FieldReader::DecodeMessage(std::string("\x01\x00\x00", 3), &r).ok());
  EXPECT_FALSE(FieldReader::DecodeMessage(Field(0, ""), &r).ok());
}

TEST(FieldDecoder, NamesNestedFieldInErrors) {
  std::string bad_mode = Field(tag::kFileIdMode, U64Value(1));  // u32 field, 8 bytes
  std::string mapping = Field(tag::kMappingFileId, bad_mode);
  std::string in = Field(tag::kMappingsMapping, "") + Field(tag::kMappingsMapping, mapping);
  uint32_t pid = 0;
  std::vector<Mapping> v;
  Status s = DecodeFields(in, [&](FieldReader& r) { MappingsFields(r, pid, v); });
  EXPECT_EQ(s.message(), "mapping[1]: file_id: mode has length 8, expected 4");
}

TEST(FieldDecoder, RejectsPathWithNulAndOverlongPath) {
  Mapping m;
  EXPECT_EQ(
      FieldReader::DecodeMessage(Field(tag::kMappingPath, std::string("/a\0b", 4)), &m).message(),
      "path contains a NUL byte");
  EXPECT_FALSE(
      FieldReader::DecodeMessage(Field(tag::kMappingPath, std::string(kMaxPathLength + 1, 'a')), &m)
          .ok());
  EXPECT_TRUE(
      FieldReader::DecodeMessage(Field(tag::kMappingPath, std::string(kMaxPathLength, 'a')), &m)
          .ok());
}

TEST(FieldDecoder, RejectsTooManyRepeatedEntries) {
  std::string in;
  for (size_t i = 0; i <= kMaxRlimits; ++i) in += Field(tag::kProcessRlimit, "");
  ProcessInfo p;
  Status s = FieldReader::DecodeMessage(in, &p);
  EXPECT_EQ(s.message(), "rlimit has more than 64 entries");
}

TEST(FieldDecoder, RejectsRunsNotMultipleOfRecord) {
  PageOwner owner;
  std::vector<PageRun> runs;
  uint32_t codec = 0;
  Status s = DecodeFields(Field(tag::kPagesRuns, std::string(17, '\0')),
                          [&](FieldReader& r) { PagesFields(r, owner, runs, codec); });
  EXPECT_EQ(s.message(), "runs length 17 is not a multiple of 16");
}

TEST(FieldEncoder, RefusesWhatTheDecoderWouldRefuse) {
  Mapping m;
  m.path = std::string("x\0y", 3);
  std::string out;
  Status s = EncodeFields(&out, [&](FieldWriter& w) { Fields(w, m); });
  EXPECT_EQ(s.code(), EINVAL);
  EXPECT_EQ(s.message(), "path contains a NUL byte");

  ThreadInfo t;
  t.comm = std::string(kMaxNameLength + 1, 'c');
  out.clear();
  EXPECT_FALSE(EncodeFields(&out, [&](FieldWriter& w) { Fields(w, t); }).ok());

  std::vector<Mapping> many(3);
  many[2].path = std::string(kMaxPathLength + 1, 'p');
  uint32_t pid = 1;
  out.clear();
  s = EncodeFields(&out, [&](FieldWriter& w) { MappingsFields(w, pid, many); });
  EXPECT_EQ(s.message(), "mapping[2]: path is 4097 bytes, over the limit of 4096");
}

TEST(FieldEncoder, DecodeOfEncodeIsIdentity) {
  Context ctx = testing::MakeFullContext();
  const ProcessInfo& p = ctx.processes[0].info;
  std::string bytes;
  ASSERT_TRUE(EncodeFields(&bytes, [&](FieldWriter& w) { Fields(w, p); }).ok());
  ProcessInfo back;
  ASSERT_TRUE(FieldReader::DecodeMessage(bytes, &back).ok());
  EXPECT_EQ(back, p);
  std::string again;
  ASSERT_TRUE(EncodeFields(&again, [&](FieldWriter& w) { Fields(w, back); }).ok());
  EXPECT_EQ(again, bytes);
}

}  // namespace
}  // namespace stasis::format::internal
