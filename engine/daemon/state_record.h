// stasisd's state records (<state_dir>/req-*.req): what a restarted stasisd
// needs to clean up after the worker of a killed one. One record per
// checkpoint into a path, written by stasisd when the worker starts and
// completed by the worker once its file exists.
//
// The record is text, `key=value` lines after a version line, but every
// value is escaped: a byte outside printable ASCII (0x21..0x7e), and `%`
// itself, is written as %XX (upper-case hex). So no byte of a path (which
// may hold any byte but NUL) can end a line or forge a key. The reader is
// strict: a wrong version line, an unknown or repeated key, a bad escape, a
// value out of range, a missing field or a record over kMaxStateRecordSize
// is an error, and the record is not acted on.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/status.h"

namespace stasis::daemon {

inline constexpr size_t kMaxStateRecordSize = 64 * 1024;
inline constexpr size_t kMaxStateGroups = 1024;

struct StateRecord {
  uint64_t id = 0;      // stasisd's request id
  uint32_t worker = 0;  // the worker's pid
  uint32_t uid = 0;     // the requester, as SO_PEERCRED said
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // its supplementary groups (SO_PEERGROUPS)
  uint32_t mode = 0;             // proto::kWrite* of the request
  std::string path;              // the destination as requested (for the log)
  // Set by the worker once the file it writes exists; until then (all
  // empty/0) cleanup has nothing verified to act on.
  std::string folder;  // the folder it is in, resolved (absolute, no symlinks)
  uint64_t folder_dev = 0, folder_ino = 0;
  std::string name;  // the file's name in that folder
  uint64_t file_dev = 0, file_ino = 0;

  bool has_file() const { return !name.empty(); }
  bool operator==(const StateRecord&) const = default;
};

// %XX-escapes every byte outside 0x21..0x7e and `%`; the reverse refuses
// anything the escaper could not have written (lower-case hex, an escaped
// byte that needed none, a raw byte that needed one).
std::string EscapeStateValue(std::string_view raw);
Result<std::string> UnescapeStateValue(std::string_view escaped);

// Encoding is canonical (fixed key order); Decode(Encode(r)) == r for
// every valid record, and Encode(Decode(text)) decodes to the same record.
std::string EncodeStateRecord(const StateRecord& r);
Result<StateRecord> DecodeStateRecord(std::string_view text);

// Writes `r` to `path` atomically (a temporary file in the same folder,
// fsync, rename), mode 0600, never following a symlink.
Status WriteStateRecordFile(const std::string& path, const StateRecord& r);
// Reads and decodes the record `name` in the folder `dirfd`: a regular
// file (no symlink), at most kMaxStateRecordSize bytes.
Result<StateRecord> ReadStateRecordFile(int dirfd, const std::string& name);

}  // namespace stasis::daemon
