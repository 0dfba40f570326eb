// The checkpoint store; see store.h for the layout and the commit protocol.
#include "engine/store/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <set>
#include <thread>

#include "engine/format/context_io.h"
#include "engine/format/crc32c.h"

namespace stasis::store {
namespace {

constexpr char kManifestTemp[] = ".MANIFEST.tmp";

std::string Mib(uint64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", static_cast<double>(bytes) / 1048576.0);
  return b;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Epoch folders are named by their number: decimal, no leading zero.
bool ParseEpochName(const char* name, uint64_t* epoch) {
  size_t len = std::strlen(name);
  if (len == 0 || len > 19 || name[0] == '0') return false;
  uint64_t v = 0;
  for (size_t i = 0; i < len; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    v = v * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  *epoch = v;
  return true;
}

// The names in a folder (not "." and ".."), with their d_type.
Result<std::vector<std::pair<std::string, unsigned char>>> ReadNames(int dirfd) {
  int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) return Status::FromErrno(errno, "dup folder fd");
  DIR* d = ::fdopendir(dup);
  if (!d) {
    int e = errno;
    ::close(dup);
    return Status::FromErrno(e, "read folder");
  }
  ::rewinddir(d);
  std::vector<std::pair<std::string, unsigned char>> out;
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    out.emplace_back(e->d_name, e->d_type);
  }
  int err = errno;
  ::closedir(d);
  if (err) return Status::FromErrno(err, "read folder");
  return out;
}

// An error that a file of a shared file system gives while a server is down
// or unreachable (GlusterFS: ENOENT for a file on a brick it cannot reach).
bool MaybeUnreachable(int err) {
  return err == ENOENT || err == ENOTCONN || err == EIO || err == ESTALE || err == EHOSTDOWN ||
         err == EHOSTUNREACH || err == ETIMEDOUT;
}

Status CheckOwner(const struct stat& st, const Access& access, const std::string& path) {
  if (access.any_owner || st.st_uid == access.uid) return Status::Ok();
  return Status::Error(EPERM, path + " belongs to uid " + std::to_string(st.st_uid) +
                                  ", not to uid " + std::to_string(access.uid) + "; refusing it");
}

// A folder of the store: a real folder, ours, closed to group and others
// for writing (anyone who can write in it could swap our files).
Status CheckFolder(int fd, const Access& access, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (!S_ISDIR(st.st_mode)) return Status::Error(ENOTDIR, path + " is not a folder");
  STASIS_RETURN_IF_ERROR(CheckOwner(st, access, path));
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return Status::Error(EPERM,
                         path + " is writable by group or others; refusing it (chmod 700 it)");
  return Status::Ok();
}

void SplitPath(std::string path, std::string* parent, std::string* name) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) {
    *parent = ".";
    *name = path;
  } else {
    *parent = slash == 0 ? "/" : path.substr(0, slash);
    *name = path.substr(slash + 1);
  }
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

}  // namespace

Access Access::Caller() {
  Access a;
  a.uid = ::geteuid();
  a.any_owner = a.uid == 0;
  return a;
}

const char* EpochStateName(EpochState state) {
  switch (state) {
    case EpochState::kComplete:
      return "complete";
    case EpochState::kIncomplete:
      return "incomplete";
    case EpochState::kCorrupt:
      return "corrupt";
  }
  return "?";
}

Result<UniqueFd> OpenOwnedFile(int dirfd, const std::string& name, const Access& access,
                               const std::string& shown_path) {
  STASIS_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegularNoFollow(dirfd, name, shown_path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + shown_path);
  STASIS_RETURN_IF_ERROR(CheckOwner(st, access, shown_path));
  return fd;
}

// --- JobFolder --------------------------------------------------------------

Result<JobFolder> JobFolder::Open(Env* env, const std::string& path, bool create, Access access) {
  JobFolder job;
  job.env_ = env;
  job.access_ = access;
  std::string parent;
  SplitPath(path, &parent, &job.job_);
  if (job.job_.empty() || job.job_ == "." || job.job_ == ".." || job.job_ == "/")
    return Status::Error(EINVAL, "'" + path + "' does not name a job folder");
  job.path_ = JoinPath(parent, job.job_);
  auto parent_fd = env->OpenDir(AT_FDCWD, parent, true);
  if (!parent_fd && parent_fd.error().code() == ENOENT && create) {
    // The checkpoint root is created like mkdir -p, 0700 for what we add.
    for (size_t slash = parent.find('/', 1);; slash = parent.find('/', slash + 1)) {
      std::string prefix = slash == std::string::npos ? parent : parent.substr(0, slash);
      Status made = env->MakeDir(AT_FDCWD, prefix);
      if (!made.ok() && made.code() != EEXIST)
        return Status::Error(made.code(),
                             "create checkpoint folder " + prefix + ": " + made.message());
      if (slash == std::string::npos) break;
    }
    parent_fd = env->OpenDir(AT_FDCWD, parent, true);
  }
  if (!parent_fd) {
    if (parent_fd.error().code() == ENOENT)
      return Status::Error(ENOENT, "checkpoint folder " + parent + " does not exist");
    return parent_fd.error();
  }
  auto fd = env->OpenDir(parent_fd->get(), job.job_, false);
  if (!fd && fd.error().code() == ENOENT && create) {
    STASIS_RETURN_IF_ERROR(env->MakeDir(parent_fd->get(), job.job_));
    STASIS_RETURN_IF_ERROR(env->SyncDir(parent_fd->get()));
    fd = env->OpenDir(parent_fd->get(), job.job_, false);
  }
  if (!fd) {
    if (fd.error().code() == ELOOP)
      return Status::Error(ELOOP, job.path_ + " is a symbolic link; refusing it");
    if (fd.error().code() == ENOENT) return Status::Error(ENOENT, job.path_ + " does not exist");
    return Status::Error(fd.error().code(), job.path_ + ": " + fd.error().message());
  }
  STASIS_RETURN_IF_ERROR(CheckFolder(fd->get(), access, job.path_));
  job.fd_ = std::move(*fd);
  return job;
}

Result<EpochInfo> JobFolder::Inspect(uint64_t epoch) const {
  EpochInfo info;
  info.epoch = epoch;
  std::string name = std::to_string(epoch);
  info.path = JoinPath(path_, name);
  auto corrupt = [&](const std::string& why) {
    info.state = EpochState::kCorrupt;
    info.problem = why;
    return info;
  };
  struct stat st;
  if (::fstatat(fd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    return Status::FromErrno(errno, "stat " + info.path);
  if (S_ISLNK(st.st_mode)) return corrupt("is a symbolic link");
  if (!S_ISDIR(st.st_mode)) return corrupt("is not a folder");
  info.time_unix = st.st_mtime;
  auto dir = env_->OpenDir(fd_.get(), name, false);
  if (!dir) return corrupt(dir.error().message());
  if (Status s = CheckFolder(dir->get(), access_, info.path); !s.ok()) return corrupt(s.message());
  auto names = ReadNames(dir->get());
  if (!names) return corrupt(names.error().message());
  bool have_manifest = false;
  for (const auto& [n, type] : *names) {
    if (n == format::kManifestName) have_manifest = true;
    struct stat fst;
    if (::fstatat(dir->get(), n.c_str(), &fst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(fst.st_mode) &&
        n != format::kManifestName && n != kManifestTemp)
      info.bytes += static_cast<uint64_t>(fst.st_size);
  }
  if (!have_manifest) {
    info.state = EpochState::kIncomplete;
    info.problem = "no MANIFEST (interrupted, or still being written)";
    return info;
  }
  std::string manifest_path = JoinPath(info.path, format::kManifestName);
  auto mfd = OpenOwnedFile(dir->get(), format::kManifestName, access_, manifest_path);
  if (!mfd) return corrupt(mfd.error().message());
  std::string bytes;
  char buf[65536];
  for (;;) {
    ssize_t r = ::read(mfd->get(), buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return corrupt("read MANIFEST: " + std::string(std::strerror(errno)));
    if (r == 0) break;
    bytes.append(buf, static_cast<size_t>(r));
    if (bytes.size() > format::kMaxManifestBytes) return corrupt("MANIFEST is too large");
  }
  auto manifest = format::ParseManifest(bytes);
  if (!manifest) return corrupt("MANIFEST " + manifest.error().message());
  info.manifest = std::move(*manifest);
  info.have_manifest = true;
  info.time_unix = static_cast<int64_t>(info.manifest.created_unix_ns / 1000000000);
  if (info.manifest.epoch != epoch)
    return corrupt("MANIFEST is for epoch " + std::to_string(info.manifest.epoch) + ", not " +
                   name);
  for (const auto& f : info.manifest.files) {
    struct stat fst;
    if (::fstatat(dir->get(), f.name.c_str(), &fst, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err = errno;
      info.file_missing = MaybeUnreachable(err);
      return corrupt(err == ENOENT ? f.name + " is missing"
                                   : "stat " + f.name + ": " + std::strerror(err));
    }
    if (S_ISLNK(fst.st_mode)) return corrupt(f.name + " is a symbolic link");
    if (!S_ISREG(fst.st_mode)) return corrupt(f.name + " is not a regular file");
    if (!access_.any_owner && fst.st_uid != access_.uid)
      return corrupt(f.name + " belongs to uid " + std::to_string(fst.st_uid));
    if (static_cast<uint64_t>(fst.st_size) != f.size)
      return corrupt(f.name + " has " + std::to_string(fst.st_size) + " bytes, the MANIFEST says " +
                     std::to_string(f.size));
  }
  info.state = EpochState::kComplete;
  return info;
}

Result<std::vector<EpochInfo>> JobFolder::List() const {
  auto names = ReadNames(fd_.get());
  if (!names) return Status::Error(names.error().code(), path_ + ": " + names.error().message());
  std::vector<uint64_t> epochs;
  for (const auto& [n, type] : *names) {
    uint64_t e;
    if (ParseEpochName(n.c_str(), &e)) epochs.push_back(e);
  }
  std::sort(epochs.begin(), epochs.end());
  std::vector<EpochInfo> out;
  for (uint64_t e : epochs) {
    auto info = Inspect(e);
    if (!info) {
      if (info.error().code() == ENOENT) continue;  // removed meanwhile
      return info.error();
    }
    out.push_back(std::move(*info));
  }
  return out;
}

// --- NodeFileSink -------------------------------------------------------------

NodeFileSink::NodeFileSink(std::unique_ptr<WritableFile> file, const WriteOptions& options)
    : file_(std::move(file)), options_(options) {
  options_.chunk = std::max<size_t>(options_.chunk / 4096 * 4096, 4096);
  options_.depth = std::max<size_t>(options_.depth, 1);
  // One chunk being filled, one lent out, plus `depth` in flight.
  for (size_t i = 0; i < options_.depth + 2; ++i) {
    void* mem = nullptr;
    if (::posix_memalign(&mem, 4096, options_.chunk) != 0) std::abort();
    buffers_.push_back(static_cast<char*>(mem));
  }
  free_ = buffers_;
  start_ = Now();
}

NodeFileSink::~NodeFileSink() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  for (char* b : buffers_) std::free(b);
}

void NodeFileSink::WriterLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopped and drained
    Chunk c = queue_.front();
    queue_.pop_front();
    busy_ = true;
    bool skip = !error_.ok() || stop_;  // stopping: the file is abandoned
    lock.unlock();
    Status s;
    if (!skip) {
      crc_ = format::Crc32c(crc_, c.data, c.used);
      s = file_->Append(c.data, c.used);
      flushed_ += c.used;
      if (s.ok() && options_.bandwidth) {
        // Sleep until the average rate is back under the cap.
        double due =
            start_ + static_cast<double>(flushed_) / static_cast<double>(options_.bandwidth);
        double wait = due - Now();
        if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
      }
    }
    lock.lock();
    if (!s.ok() && error_.ok()) error_ = s;
    free_.push_back(c.data);
    busy_ = false;
    cv_.notify_all();
  }
}

Status NodeFileSink::Failed() {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

Status NodeFileSink::TakeFree(char** buffer) {
  std::unique_lock<std::mutex> lock(mu_);
  if (free_.empty()) {
    double t = Now();
    cv_.wait(lock, [&] { return !free_.empty(); });
    stalled_ += Now() - t;
  }
  *buffer = free_.back();
  free_.pop_back();
  return error_;
}

Status NodeFileSink::Submit() {
  if (current_.used == 0) return Status::Ok();
  std::lock_guard<std::mutex> lock(mu_);
  if (!writer_.joinable()) writer_ = std::thread([this] { WriterLoop(); });
  queue_.push_back(current_);
  current_ = Chunk();
  cv_.notify_all();
  return error_;
}

Status NodeFileSink::Drain() {
  STASIS_RETURN_IF_ERROR(Submit());
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
  return error_;
}

Status NodeFileSink::Write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    if (!current_.data) STASIS_RETURN_IF_ERROR(TakeFree(&current_.data));
    size_t take = std::min(n, options_.chunk - current_.used);
    std::memcpy(current_.data + current_.used, p, take);
    current_.used += take;
    offset_ += take;
    p += take;
    n -= take;
    if (current_.used == options_.chunk) STASIS_RETURN_IF_ERROR(Submit());
  }
  return Status::Ok();
}

char* NodeFileSink::Borrow(size_t* size) {
  char* b = nullptr;
  if (!TakeFree(&b).ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(b);
    *size = 0;
    return nullptr;
  }
  *size = options_.chunk;
  return b;
}

Status NodeFileSink::WriteBorrowed(char* buffer, size_t n) {
  if (n == 0) {  // given back unused
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(buffer);
    return error_;
  }
  // What was buffered before goes first, then the borrowed buffer as a
  // chunk of its own (page data starts aligned, so both stay aligned).
  if (current_.used == 0 && current_.data) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(current_.data);
    current_ = Chunk();
  }
  STASIS_RETURN_IF_ERROR(Submit());
  current_ = Chunk{buffer, n};
  offset_ += n;
  return Submit();
}

Status NodeFileSink::Sync() {
  STASIS_RETURN_IF_ERROR(Drain());
  return file_->Sync();
}

Result<format::ManifestFile> NodeFileSink::Finish() {
  STASIS_RETURN_IF_ERROR(Sync());
  format::ManifestFile f;
  f.name = file_->name();
  f.size = offset_;
  f.crc32c = crc_;
  return f;
}

// --- EpochWriter ----------------------------------------------------------------

std::string EpochWriter::NodeFileName(uint32_t node) {
  return "node" + std::to_string(node) + ".ctx";
}

std::string EpochWriter::path() const { return JoinPath(job_->path(), std::to_string(epoch_)); }

Result<std::unique_ptr<EpochWriter>> EpochWriter::Begin(JobFolder* job,
                                                        const WriteOptions& options) {
  auto names = ReadNames(job->fd());
  if (!names)
    return Status::Error(names.error().code(), job->path() + ": " + names.error().message());
  uint64_t newest = 0;
  for (const auto& [n, type] : *names) {
    uint64_t e;
    if (ParseEpochName(n.c_str(), &e)) newest = std::max(newest, e);
  }
  Env* env = job->env();
  for (uint64_t e = newest + 1; e < newest + 100; ++e) {
    Status s = env->MakeDir(job->fd(), std::to_string(e));
    if (!s.ok() && s.code() == EEXIST) continue;  // another writer took it
    if (!s.ok()) return Status::Error(s.code(), job->path() + ": " + s.message());
    std::unique_ptr<EpochWriter> w(new EpochWriter(job, e, options));
    w->created_dir_ = true;
    STASIS_RETURN_IF_ERROR(env->SyncDir(job->fd()));
    auto dir = env->OpenDir(job->fd(), std::to_string(e), false);
    if (!dir) return Status::Error(dir.error().code(), w->path() + ": " + dir.error().message());
    STASIS_RETURN_IF_ERROR(CheckFolder(dir->get(), job->access(), w->path()));
    w->dir_ = std::move(*dir);
    return w;
  }
  return Status::Error(EEXIST,
                       job->path() + ": no free epoch number after " + std::to_string(newest));
}

Result<std::unique_ptr<EpochWriter>> EpochWriter::Join(JobFolder* job, uint64_t epoch,
                                                       const WriteOptions& options) {
  std::unique_ptr<EpochWriter> w(new EpochWriter(job, epoch, options));
  auto dir = job->env()->OpenDir(job->fd(), std::to_string(epoch), false);
  if (!dir) return Status::Error(dir.error().code(), w->path() + ": " + dir.error().message());
  STASIS_RETURN_IF_ERROR(CheckFolder(dir->get(), job->access(), w->path()));
  w->dir_ = std::move(*dir);
  return w;
}

EpochWriter::~EpochWriter() {
  if (committed_ || keep_) return;
  if (!dir_) {  // Begin failed right after its mkdir
    if (created_dir_ && job_->env()->Remove(job_->fd(), std::to_string(epoch_), true).ok())
      (void)job_->env()->SyncDir(job_->fd());
    return;
  }
  // Best effort, MANIFEST first: what a crash here leaves is incomplete.
  Env* env = job_->env();
  sinks_.clear();
  std::stable_partition(created_.begin(), created_.end(),
                        [](const std::string& n) { return n == format::kManifestName; });
  bool removed_manifest = false;
  for (const auto& name : created_) {
    bool ok = env->Remove(dir_.get(), name, false).ok();
    if (name == format::kManifestName && ok) removed_manifest = true;
  }
  if (removed_manifest) (void)env->SyncDir(dir_.get());
  if (created_dir_) {
    dir_.reset();
    if (env->Remove(job_->fd(), std::to_string(epoch_), true).ok()) (void)env->SyncDir(job_->fd());
  }
}

Result<NodeFileSink*> EpochWriter::CreateNodeFile(uint32_t node) {
  std::string name = NodeFileName(node);
  auto file = job_->env()->NewFile(dir_.get(), name, options_.strategy);
  if (!file) return Status::Error(file.error().code(), path() + ": " + file.error().message());
  created_.push_back(name);
  sinks_.push_back(std::make_unique<NodeFileSink>(std::move(*file), options_));
  return sinks_.back().get();
}

Status CheckFreeSpace(Env* env, int fd, uint64_t bytes, const std::string& where) {
  auto free_bytes = env->FreeBytes(fd);
  if (!free_bytes)
    return Status::Error(free_bytes.error().code(), where + ": " + free_bytes.error().message());
  uint64_t need = bytes + bytes / 50 + (1u << 20);
  if (need > *free_bytes)
    return Status::Error(ENOSPC, "not enough space for the checkpoint in " + where + ": about " +
                                     Mib(need) + " needed, " + Mib(*free_bytes) + " free");
  return Status::Ok();
}

// The commit without rename flags: `from` (written whole and fsynced) gets
// its final name `to` by link(2), which fails with EEXIST rather than
// replace, and then loses its temporary name. A link whose reply was lost
// and that the NFS client sent again finds its own work: EEXIST, but `to`
// is `from`'s inode (same st_dev and st_ino), which is success. Any other
// EEXIST is a file we did not write and is never touched. Both names are in
// created_ while both exist, MANIFEST first, so a failure from here on
// removes the MANIFEST before anything else.
Status EpochWriter::LinkIntoPlace(Env* env, int dirfd, const std::string& from,
                                  const std::string& to) {
  struct stat mine;
  if (::fstatat(dirfd, from.c_str(), &mine, AT_SYMLINK_NOFOLLOW) != 0)
    return Status::FromErrno(errno, path() + ": stat " + from);
  Status s = env->Link(dirfd, from, to);
  if (!s.ok() && s.code() == EEXIST) {
    struct stat there;
    if (::fstatat(dirfd, to.c_str(), &there, AT_SYMLINK_NOFOLLOW) != 0 ||
        there.st_dev != mine.st_dev || there.st_ino != mine.st_ino)
      return Status::Error(EEXIST, path() + ": " + to +
                                       " exists already and is not the file written as " + from +
                                       "; not replacing it");
    s = Status::Ok();  // our own link, sent twice
  }
  if (!s.ok()) return Status::Error(s.code(), path() + ": " + s.message());
  created_.insert(created_.begin(), to);
  s = env->Remove(dirfd, from, false);
  if (!s.ok() && s.code() != ENOENT)  // ENOENT: an unlink sent twice
    return Status::Error(s.code(), path() + ": " + s.message());
  if (auto it = std::find(created_.begin(), created_.end(), from); it != created_.end())
    created_.erase(it);
  return Status::Ok();
}

Status EpochWriter::CheckSpace(uint64_t bytes) {
  return CheckFreeSpace(job_->env(), dir_.get(), bytes, path());
}

Status EpochWriter::Commit(format::Manifest* m) {
  Env* env = job_->env();
  if (m->job.empty()) m->job = job_->job();
  m->epoch = epoch_;
  m->format_version = format::kFormatVersion;
  if (m->stasis_version.empty()) m->stasis_version = STASIS_VERSION;
  if (m->created_unix_ns == 0)
    m->created_unix_ns =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
  for (const auto& f : m->files) {
    struct stat st;
    std::string shown = JoinPath(path(), f.name);
    if (::fstatat(dir_.get(), f.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      return Status::FromErrno(errno, "stat " + shown);
    if (!S_ISREG(st.st_mode) || st.st_uid != job_->access().uid)
      return Status::Error(
          EPERM, shown + " is not a regular file of uid " + std::to_string(job_->access().uid));
    if (static_cast<uint64_t>(st.st_size) != f.size)
      return Status::Error(EIO, shown + " has " + std::to_string(st.st_size) + " bytes, " +
                                    std::to_string(f.size) + " were written");
  }
  auto bytes = format::EncodeManifest(*m);
  if (!bytes) return bytes.error();
  {
    auto file = env->NewFile(dir_.get(), kManifestTemp, WriteStrategy::kBuffered);
    if (!file) return Status::Error(file.error().code(), path() + ": " + file.error().message());
    created_.push_back(kManifestTemp);
    STASIS_RETURN_IF_ERROR((*file)->Append(bytes->data(), bytes->size()));
    STASIS_RETURN_IF_ERROR((*file)->Sync());
  }
  Status s = env->Rename(dir_.get(), kManifestTemp, format::kManifestName);
  if (s.ok()) {
    created_.back() = format::kManifestName;
  } else if (RenameFlagsRefused(s.code())) {
    // GlusterFS's FUSE client, NFS: no rename flags. A hard link never
    // replaces either (docs/design.md, "Commit without rename flags").
    STASIS_RETURN_IF_ERROR(LinkIntoPlace(env, dir_.get(), kManifestTemp, format::kManifestName));
  } else {
    return Status::Error(s.code(), path() + ": " + s.message());
  }
  s = env->SyncDir(dir_.get());
  if (!s.ok()) return Status::Error(s.code(), path() + ": " + s.message());
  committed_ = true;
  return Status::Ok();
}

// --- removal and retention ------------------------------------------------------

Status RemoveEpoch(JobFolder* job, uint64_t epoch) {
  Env* env = job->env();
  std::string name = std::to_string(epoch);
  std::string path = JoinPath(job->path(), name);
  struct stat st;
  if (::fstatat(job->fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    return Status::FromErrno(errno, "stat " + path);
  if (!S_ISDIR(st.st_mode)) return env->Remove(job->fd(), name, false);  // a planted link or file
  auto dir = env->OpenDir(job->fd(), name, false);
  if (!dir) return Status::Error(dir.error().code(), path + ": " + dir.error().message());
  struct stat dst;
  if (::fstat(dir->get(), &dst) != 0) return Status::FromErrno(errno, "stat " + path);
  if (dst.st_uid != job->access().uid && !job->access().any_owner)
    return Status::Error(
        EPERM, path + " belongs to uid " + std::to_string(dst.st_uid) + "; not removing it");
  Status s = env->Remove(dir->get(), format::kManifestName, false);
  if (s.ok())
    STASIS_RETURN_IF_ERROR(env->SyncDir(dir->get()));
  else if (s.code() != ENOENT)
    return Status::Error(s.code(), path + ": " + s.message());
  auto names = ReadNames(dir->get());
  if (!names) return Status::Error(names.error().code(), path + ": " + names.error().message());
  for (const auto& [n, type] : *names) {
    struct stat fst;
    if (::fstatat(dir->get(), n.c_str(), &fst, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(fst.st_mode))
      return Status::Error(
          ENOTEMPTY, path + " holds a folder " + n + " stasis did not write; not removing it");
    s = env->Remove(dir->get(), n, false);
    if (!s.ok()) return Status::Error(s.code(), path + ": " + s.message());
  }
  dir->reset();
  s = env->Remove(job->fd(), name, true);
  if (!s.ok()) return Status::Error(s.code(), job->path() + ": " + s.message());
  return env->SyncDir(job->fd());
}

uint64_t ParentEpochOf(const std::string& recorded) {
  // "../<digits>/node<digits>.ctx"
  if (recorded.rfind("../", 0) != 0) return 0;
  size_t slash = recorded.find('/', 3);
  if (slash == std::string::npos || slash == 3 || slash > 3 + 19) return 0;
  uint64_t epoch = 0;
  for (size_t i = 3; i < slash; ++i) {
    if (recorded[i] < '0' || recorded[i] > '9') return 0;
    epoch = epoch * 10 + static_cast<uint64_t>(recorded[i] - '0');
  }
  const std::string file = recorded.substr(slash + 1);
  if (file.rfind("node", 0) != 0 || file.size() < 9 ||
      file.compare(file.size() - 4, 4, ".ctx") != 0)
    return 0;
  for (size_t i = 4; i + 4 < file.size(); ++i)
    if (file[i] < '0' || file[i] > '9') return 0;
  return epoch;
}

Result<format::ImageInfo> ReadNodeImage(const JobFolder& job, uint64_t epoch,
                                        const std::string& file) {
  const std::string name = std::to_string(epoch) + "/" + file;
  const std::string shown = JoinPath(job.path(), name);
  STASIS_ASSIGN_OR_RETURN(UniqueFd fd, OpenOwnedFile(job.fd(), name, job.access(), shown));
  FdSource source(std::move(fd), shown, 64u << 10);
  format::ContextReader reader(&source);
  auto image = reader.Begin();
  if (!image) return image.error().Prefixed(shown);
  return *image;
}

Result<uint32_t> ParentLinks(const JobFolder& job, uint64_t epoch, const std::string& file,
                             format::ImageInfo image, uint32_t limit) {
  uint32_t links = 0;
  while (!image.parent.empty() && links < limit) {
    const uint64_t d = ParentEpochOf(image.parent);
    if (d == 0 || d >= epoch)
      return Status::Error(EBADMSG,
                           file + " names a parent outside its job folder: " + image.parent);
    auto up = ReadNodeImage(job, d, file);
    if (!up) return up.error().Prefixed(file + ": its parent in epoch " + std::to_string(d));
    if (up->token != image.parent_token)
      return Status::Error(EBADMSG, file + ": its parent in epoch " + std::to_string(d) +
                                        " is not the file it was taken after (token mismatch)");
    ++links;
    image = *up;
    epoch = d;
  }
  return links;
}

ParentChoice ChooseParent(const JobFolder& job, uint64_t new_epoch, uint32_t node,
                          const std::string& step, uint32_t full_every) {
  ParentChoice c;
  if (full_every <= 1) {
    c.why_full = "incremental epochs are off";
    return c;
  }
  auto epochs = job.List();
  if (!epochs) {
    c.why_full = epochs.error().message();
    return c;
  }
  const EpochInfo* prev = nullptr;
  for (const EpochInfo& e : *epochs)
    if (e.state == EpochState::kComplete && e.epoch < new_epoch) prev = &e;
  if (!prev) {
    c.why_full = "no complete epoch before it";
    return c;
  }
  const std::string file = EpochWriter::NodeFileName(node);
  auto image = ReadNodeImage(job, prev->epoch, file);
  if (!image) {
    c.why_full = image.error().message();
    return c;
  }
  if (image->token == 0 || image->step != step) {
    c.why_full = "epoch " + std::to_string(prev->epoch) +
                 (image->token == 0 ? " was not taken tracking" : " is of step " + image->step);
    return c;
  }
  // Links below the parent, down to a full context.
  auto below = ParentLinks(job, prev->epoch, file, *image, full_every);
  if (!below) {
    c.why_full = "the chain below epoch " + std::to_string(prev->epoch) +
                 " is broken: " + below.error().message();
    return c;
  }
  const uint32_t links = *below;
  // The new context would make the chain links + 2 long (full included).
  if (links + 2 > full_every) {
    c.why_full = "a full epoch every " + std::to_string(full_every);
    return c;
  }
  c.epoch = prev->epoch;
  c.recorded = "../" + std::to_string(prev->epoch) + "/" + file;
  c.token = image->token;
  return c;
}

Result<std::vector<uint64_t>> Prune(JobFolder* job, uint32_t keep) {
  if (keep == 0) return Status::Error(EINVAL, "retention must keep at least one epoch");
  auto epochs = job->List();
  if (!epochs) return epochs.error();
  std::vector<uint64_t> complete;
  for (const auto& e : *epochs)
    if (e.state == EpochState::kComplete) complete.push_back(e.epoch);
  std::vector<uint64_t> removed;
  if (complete.empty()) return removed;
  uint64_t newest = complete.back();
  // The kept epochs and, down their chains, every parent they need.
  std::set<uint64_t> needed(complete.end() - std::min<size_t>(keep, complete.size()),
                            complete.end());
  // Among the newest `keep` epochs with a MANIFEST, one whose files are only
  // missing may be complete again once a server is back.
  std::vector<uint64_t> committed;
  for (const auto& e : *epochs)
    if (e.have_manifest && e.manifest.epoch == e.epoch) committed.push_back(e.epoch);
  for (size_t i = committed.size() - std::min<size_t>(keep, committed.size()); i < committed.size();
       ++i) {
    auto info = std::find_if(epochs->begin(), epochs->end(),
                             [&](const EpochInfo& x) { return x.epoch == committed[i]; });
    if (info->file_missing) needed.insert(committed[i]);
  }
  uint64_t keep_below = 0;  // a kept node file unreadable: its parents are unknown
  std::vector<uint64_t> todo(needed.begin(), needed.end());
  while (!todo.empty()) {
    const uint64_t e = todo.back();
    todo.pop_back();
    auto info = std::find_if(epochs->begin(), epochs->end(),
                             [e](const EpochInfo& i) { return i.epoch == e; });
    if (info == epochs->end() || !info->have_manifest) continue;
    for (const format::ManifestFile& f : info->manifest.files) {
      auto image = ReadNodeImage(*job, e, f.name);
      if (!image && MaybeUnreachable(image.error().code())) keep_below = std::max(keep_below, e);
      const uint64_t d = image ? ParentEpochOf(image->parent) : 0;
      if (d != 0 && d < e && needed.insert(d).second) todo.push_back(d);
    }
  }
  for (const auto& e : *epochs) {
    bool remove;
    if (needed.count(e.epoch) || e.epoch < keep_below)
      remove = false;
    else if (e.state == EpochState::kComplete)
      remove = true;
    else
      remove = e.epoch < newest;
    if (!remove) continue;
    STASIS_RETURN_IF_ERROR(RemoveEpoch(job, e.epoch));
    removed.push_back(e.epoch);
  }
  return removed;
}

// --- verification and restart ---------------------------------------------------

VerifyingSource::VerifyingSource(std::unique_ptr<ByteSource> inner, std::string name, uint64_t size,
                                 uint32_t crc32c)
    : inner_(std::move(inner)), name_(std::move(name)), size_(size), want_(crc32c) {}

Result<size_t> VerifyingSource::Read(void* data, size_t n) {
  auto r = inner_->Read(data, n);
  if (r && *r) crc_ = format::Crc32c(crc_, data, *r);
  return r;
}

Result<size_t> VerifyingSource::ReadInPlace(const char** data, size_t n) {
  auto r = inner_->ReadInPlace(data, n);
  if (r && *r) crc_ = format::Crc32c(crc_, *data, *r);
  return r;
}

Status VerifyingSource::Finish() {
  char buf[65536];
  for (;;) {
    auto r = Read(buf, sizeof buf);
    if (!r) return r.error();
    if (*r == 0) break;
  }
  if (inner_->Offset() != size_)
    return Status::Corrupt(name_ + ": " + std::to_string(inner_->Offset()) +
                           " bytes, the MANIFEST says " + std::to_string(size_) +
                           " (truncated or appended to)");
  if (crc_ != want_)
    return Status::Corrupt(
        name_ + ": checksum does not match the MANIFEST (the file was changed or swapped)");
  return Status::Ok();
}

Status CheckContextIdentity(const format::ImageInfo& image, const format::Manifest& m,
                            uint32_t node, const std::string& name) {
  if (image.epoch != m.epoch || image.node_index != node || image.job != m.job)
    return Status::Corrupt(name + ": header says job '" + image.job + "' epoch " +
                           std::to_string(image.epoch) + " node " +
                           std::to_string(image.node_index) + ", the MANIFEST job '" + m.job +
                           "' epoch " + std::to_string(m.epoch) + " node " + std::to_string(node) +
                           " (files swapped or copied between epochs)");
  return Status::Ok();
}

Result<std::vector<std::string>> VerifyEpoch(const JobFolder& job, const EpochInfo& epoch) {
  std::vector<std::string> problems;
  if (!epoch.have_manifest) {
    problems.push_back(epoch.problem);
    return problems;
  }
  auto dir = job.env()->OpenDir(job.fd(), std::to_string(epoch.epoch), false);
  if (!dir) return Status::Error(dir.error().code(), epoch.path + ": " + dir.error().message());
  for (size_t i = 0; i < epoch.manifest.nodes.size(); ++i) {
    const auto& f = epoch.manifest.files[i];
    std::string shown = JoinPath(epoch.path, f.name);
    auto fd = OpenOwnedFile(dir->get(), f.name, job.access(), shown);
    if (!fd) {
      problems.push_back(fd.error().message());
      continue;
    }
    VerifyingSource source(std::make_unique<PrefetchSource>(std::move(*fd), shown), f.name, f.size,
                           f.crc32c);
    auto ctx = format::ReadContext(&source, false);
    if (!ctx) {
      problems.push_back(f.name + ": " + ctx.error().message());
      continue;
    }
    if (Status s = source.Finish(); !s.ok()) {
      problems.push_back(s.message());
      continue;
    }
    if (Status s =
            CheckContextIdentity(ctx->image, epoch.manifest, static_cast<uint32_t>(i), f.name);
        !s.ok())
      problems.push_back(s.message());
    // An incremental file restarts only with its whole chain: each parent
    // there, with the token it was taken after (their own checksums are
    // verified with their epochs).
    auto chain = ParentLinks(job, epoch.epoch, f.name, ctx->image, 1000);
    if (!chain) problems.push_back(chain.error().message());
  }
  return problems;
}

bool IsEpochFolder(int dirfd) {
  auto names = ReadNames(dirfd);
  if (!names) return false;
  for (const auto& [n, type] : *names)
    if (n == format::kManifestName || n == kManifestTemp ||
        (n.rfind("node", 0) == 0 && n.size() > 8 && n.compare(n.size() - 4, 4, ".ctx") == 0))
      return true;
  return false;
}

namespace {

// The numbered entries of `dirfd` that are folders or links; `readable`
// false when the folder cannot be read.
std::vector<std::string> NumberedFolders(int dirfd, bool* readable) {
  std::vector<std::string> out;
  auto names = ReadNames(dirfd);
  *readable = names.has_value();
  if (!names) return out;
  for (const auto& [n, type] : *names) {
    uint64_t e;
    struct stat st;
    if (ParseEpochName(n.c_str(), &e) &&
        ::fstatat(dirfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        (S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode)))
      out.push_back(n);
  }
  return out;
}

// Counts a folder's numbered children that hold numbered folders
// themselves (jobs) and that do not (epochs).
void ClassifyChildren(int dirfd, int* jobs, int* epochs) {
  bool readable;
  for (const auto& child : NumberedFolders(dirfd, &readable)) {
    UniqueFd fd(::openat(dirfd, child.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) continue;
    bool child_readable;
    if (!NumberedFolders(fd.get(), &child_readable).empty())
      ++*jobs;
    else if (child_readable)
      ++*epochs;
  }
}

}  // namespace

Result<std::vector<std::string>> FindJobFolders(const std::string& path_in, const Access& access) {
  std::string path = path_in;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  UniqueFd top(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!top) return Status::FromErrno(errno, "open " + path);
  int jobs = 0, epochs = 0;
  ClassifyChildren(top.get(), &jobs, &epochs);
  if (epochs > 0 && jobs == 0) return std::vector<std::string>{path};
  auto names = ReadNames(top.get());
  if (!names) return Status::Error(names.error().code(), path + ": " + names.error().message());
  std::vector<std::string> out;
  for (const auto& [n, type] : *names) {
    struct stat st;
    if (::fstatat(top.get(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
      continue;
    if (!access.any_owner && st.st_uid != access.uid) continue;
    UniqueFd fd(::openat(top.get(), n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    bool readable;
    if (fd && !NumberedFolders(fd.get(), &readable).empty()) out.push_back(JoinPath(path, n));
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<RestartSelection> SelectForRestart(Env* env, const std::string& path,
                                          std::optional<uint32_t> node, Access access,
                                          uint64_t older_than) {
  auto top = env->OpenDir(AT_FDCWD, path, true);
  if (!top) return Status::Error(top.error().code(), path + ": " + top.error().message());
  std::string parent, name;
  SplitPath(path, &parent, &name);
  uint64_t epoch_number = 0;
  struct stat st;
  bool is_epoch = IsEpochFolder(top->get());
  if (is_epoch && !ParseEpochName(name.c_str(), &epoch_number)) epoch_number = 0;
  RestartSelection sel;
  Result<JobFolder> job = Status::Ok();
  if (is_epoch) {
    if (epoch_number == 0)
      return Status::Error(EINVAL, path + " holds a MANIFEST but is not named by an epoch number");
    job = JobFolder::Open(env, parent, false, access);
    if (!job) return job.error();
    auto info = job->Inspect(epoch_number);
    if (!info) return info.error();
    if (info->state != EpochState::kComplete)
      return Status::Error(
          info->state == EpochState::kIncomplete ? ENOENT : EBADMSG,
          "epoch " + info->path + " is " + EpochStateName(info->state) + ": " + info->problem);
    sel.epoch = std::move(*info);
  } else {
    job = JobFolder::Open(env, path, false, access);
    if (!job) return job.error();
    auto epochs = job->List();
    if (!epochs) return epochs.error();
    for (auto it = epochs->rbegin(); it != epochs->rend(); ++it) {
      if (older_than && it->epoch >= older_than) continue;
      if (it->state == EpochState::kComplete) {
        sel.epoch = std::move(*it);
        sel.chose_newest = true;
        break;
      }
      sel.skipped.push_back(*it);
    }
    if (!sel.chose_newest) {
      std::string why = "no complete checkpoint in " + job->path();
      if (!sel.skipped.empty()) {
        why += " (";
        for (size_t i = 0; i < sel.skipped.size() && i < 3; ++i)
          why += (i ? "; " : "") + std::string("epoch ") + std::to_string(sel.skipped[i].epoch) +
                 " " + EpochStateName(sel.skipped[i].state) + ": " + sel.skipped[i].problem;
        why += ")";
      }
      return Status::Error(ENOENT, why);
    }
  }
  const auto& m = sel.epoch.manifest;
  uint32_t index;
  if (node) {
    if (*node >= m.nodes.size())
      return Status::Error(EINVAL, "epoch " + sel.epoch.path + " has " +
                                       std::to_string(m.nodes.size()) +
                                       " nodes; there is no node " + std::to_string(*node));
    index = *node;
  } else if (m.nodes.size() == 1) {
    index = 0;
  } else {
    return Status::Error(EINVAL, "epoch " + sel.epoch.path + " has " +
                                     std::to_string(m.nodes.size()) +
                                     " nodes; name one with --node");
  }
  sel.node = m.nodes[index];
  sel.file = m.files[index];
  sel.file_path = JoinPath(sel.epoch.path, sel.file.name);
  auto dir = env->OpenDir(job->fd(), std::to_string(sel.epoch.epoch), false);
  if (!dir) return Status::Error(dir.error().code(), sel.epoch.path + ": " + dir.error().message());
  auto fd = OpenOwnedFile(dir->get(), sel.file.name, access, sel.file_path);
  if (!fd) return fd.error();
  if (::fstat(fd->get(), &st) != 0) return Status::FromErrno(errno, "stat " + sel.file_path);
  if (static_cast<uint64_t>(st.st_size) != sel.file.size)
    return Status::Corrupt(sel.file_path + ": " + std::to_string(st.st_size) +
                           " bytes, the MANIFEST says " + std::to_string(sel.file.size) +
                           " (truncated or appended to)");
  ::posix_fadvise(fd->get(), 0, 0, POSIX_FADV_SEQUENTIAL);  // read once, front to back
  sel.fd = std::move(*fd);
  return sel;
}

}  // namespace stasis::store

namespace stasis::store {

Result<PreparedRestart> PrepareRestart(RestartSelection sel) {
  PreparedRestart out;
  struct stat st;
  if (::fstat(sel.fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + sel.file_path);
  out.owner = st.st_uid;
  out.group = st.st_gid;
  for (const auto& skipped : sel.skipped)
    out.notes.push_back("skipping epoch " + std::to_string(skipped.epoch) + " (" +
                        EpochStateName(skipped.state) + ": " + skipped.problem + ")");
  char when[64] = "?";
  time_t t = static_cast<time_t>(sel.epoch.time_unix);
  struct tm tm;
  if (::localtime_r(&t, &tm)) std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
  out.notes.push_back("restarting from " + sel.file_path + " (epoch " +
                      std::to_string(sel.epoch.epoch) + ", taken " + when + ", node " +
                      std::to_string(sel.node.index) + " of " +
                      std::to_string(sel.epoch.manifest.nodes.size()) + ": " + sel.node.host + ")");
  out.path = sel.file_path;
  out.epoch = sel.epoch.epoch;
  out.from_job_folder = sel.chose_newest;
  out.source = std::make_unique<VerifyingSource>(
      std::make_unique<PrefetchSource>(std::move(sel.fd), sel.file_path), sel.file_path,
      sel.file.size, sel.file.crc32c);
  VerifyingSource* vs = out.source.get();
  format::Manifest manifest = std::move(sel.epoch.manifest);
  uint32_t index = sel.node.index;
  std::string shown = sel.file_path;
  out.check_image = [manifest = std::move(manifest), index, shown](const format::ImageInfo& image) {
    return CheckContextIdentity(image, manifest, index, shown);
  };
  out.before_run = [vs]() { return vs->Finish(); };
  return out;
}

Status RestoreFromFolder(Env* env, const std::string& path, std::optional<uint32_t> node,
                         Access access, const std::function<void(const std::string&)>& note,
                         const std::function<Status(PreparedRestart&)>& restore) {
  uint64_t older_than = 0;
  for (;;) {
    auto sel = SelectForRestart(env, path, node, access, older_than);
    if (!sel) return sel.error();
    auto prep = PrepareRestart(std::move(*sel));
    if (!prep) return prep.error();
    for (const auto& n : prep->notes) note(n);
    Status s = restore(*prep);
    if (s.ok() || !prep->from_job_folder || s.code() != EBADMSG) return s;
    note(s.message() + "; trying an older epoch");
    older_than = prep->epoch;
  }
}

}  // namespace stasis::store
