// The MANIFEST of a checkpoint epoch (<root>/<jobid>/<epoch>/MANIFEST): what
// makes an epoch exist. It names the job, step and epoch, every node with its
// tasks, its context file and the command line it ran, and every file of the
// epoch with its size and CRC32C. It is written last, after every context
// file is durable; an epoch folder without a valid MANIFEST is incomplete and
// never restarted from.
//
// The encoding is line-oriented text (people read it with `cat`), in a fixed
// order, with a CRC32C of everything before its last line, so an edited
// manifest is refused. Values are percent-escaped tokens (docs/format.md,
// "Manifest"). The parser trusts nothing: every count, index, name and size
// is checked, and the first problem is reported with its line.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/status.h"

namespace stasis::format {

inline constexpr uint32_t kManifestVersion = 1;
inline constexpr char kManifestName[] = "MANIFEST";
inline constexpr size_t kMaxManifestBytes = 16u << 20;
inline constexpr uint32_t kMaxManifestNodes = 65536;
inline constexpr uint32_t kMaxManifestTasks = 1u << 20;

struct ManifestNode {
  uint32_t index = 0;             // node i of the step (Slurm's SLURM_NODEID)
  std::string host;               // the node's hostname at checkpoint
  std::string file;               // its context file, in the epoch folder
  std::vector<uint32_t> tasks;    // global task ids (ranks) on that node
  std::vector<std::string> argv;  // command line of the node's first task
  bool operator==(const ManifestNode&) const = default;
};

struct ManifestFile {
  std::string name;
  uint64_t size = 0;
  uint32_t crc32c = 0;  // of the whole file
  bool operator==(const ManifestFile&) const = default;
};

struct Manifest {
  std::string job;     // job id (Slurm's) or the job folder's name
  std::string step;    // step id ("0", "batch"); "" off Slurm
  uint64_t epoch = 0;  // >= 1, the epoch folder's name
  uint32_t uid = 0;    // the job's owner
  uint64_t created_unix_ns = 0;
  std::string stasis_version;
  uint32_t format_version = 0;      // of the context files
  std::vector<ManifestNode> nodes;  // index order, 0..n-1
  std::vector<ManifestFile> files;  // one per node, same order
  bool operator==(const Manifest&) const = default;
};

// A name that may appear in an epoch folder: 1-255 bytes of [A-Za-z0-9._-],
// not starting with '.', not "MANIFEST".
bool IsSafeEpochFileName(std::string_view name);

// Encodes a manifest. Fails (EINVAL) for one that ParseManifest would
// refuse, so a writer can never produce an unreadable epoch.
Result<std::string> EncodeManifest(const Manifest& manifest);

// Parses and checks a manifest. Errors are EBADMSG (corrupt or edited),
// or ENOTSUP for a newer version, with "line N: ..." naming the problem.
Result<Manifest> ParseManifest(std::string_view bytes);

}  // namespace stasis::format
