// Private pages, both directions: which pages a capture stores (pagemap,
// zero pages, incremental parents) and writes; at restore, the pages written
// through /proc/PID/mem and the pages an incremental context leaves to its
// parents.
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>

#include "engine/base/fd.h"
#include "engine/core/capture_internal.h"
#include "engine/core/context_file.h"
#include "engine/core/ptrace.h"
#include "engine/core/restore_internal.h"
#include "engine/format/context_io.h"

namespace stasis::core {
namespace capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

namespace {

// Does this pagemap entry name a page the context must hold? Swapped pages
// and present private pages; for file mappings only the privately
// modified (anonymous) ones, the rest comes back from the file.
bool PageWanted(uint64_t entry, bool anon) {
  bool present = entry & (1ull << 63);
  bool swapped = entry & (1ull << 62);
  bool file_or_shared = entry & (1ull << 61);
  if (swapped) return true;
  if (!present) return false;
  return anon || !file_or_shared;
}

}  // namespace

bool MappingHasPages(const Mapping& m) {
  return (m.kind == format::kMapAnon || m.kind == format::kMapFile ||
          m.kind == format::kMapFileByValue) &&
         !(m.flags & format::kMapShared);
}

bool IsZeroPage(const char* page) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(page);
  uint64_t acc = 0;
  for (size_t i = 0; i < kPageSize / 8; i += 8) {
    acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
    if (acc) return false;
  }
  return acc == 0;
}

Result<uint64_t> Capturer::PageBytesToStore(ProcState* p, uint64_t enough) {
  uint64_t bytes = 0;
  for (const PageRun& r : p->dirty_runs) bytes += r.npages * kPageSize;
  UniqueFd pagemap(
      ::open(("/proc/" + std::to_string(p->pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return Status::FromErrno(errno, "open pagemap of " + Pid(p->pid));
  std::vector<uint64_t> pm;
  for (const Mapping& m : p->mappings) {
    if (bytes > enough) break;
    if (!MappingHasPages(m) || m.start == p->scratch_address || p->incremental_maps.count(m.start))
      continue;
    pm.resize((m.end - m.start) / kPageSize);
    ssize_t n = ::pread(pagemap.get(), pm.data(), pm.size() * 8,
                        static_cast<off_t>(m.start / kPageSize * 8));
    if (n != static_cast<ssize_t>(pm.size() * 8))
      return Status::FromErrno(n < 0 ? errno : EIO, "read pagemap of " + Pid(p->pid));
    for (uint64_t e : pm)
      if (PageWanted(e, m.kind == format::kMapAnon)) bytes += kPageSize;
  }
  return bytes;
}

Result<uint64_t> Capturer::EstimateBytes() {
  // Metadata: a generous 64 KiB per process and 4 KiB per mapping.
  uint64_t bytes = 1u << 20;
  for (auto& [id, shm] : shms_) bytes += shm.info.size;
  for (auto& p : procs_) {
    bytes += 64u << 10;
    if (p->zombie) continue;
    bytes += 4096 * p->mappings.size();
    STASIS_ASSIGN_OR_RETURN(uint64_t pages, PageBytesToStore(p.get()));
    bytes += pages;
  }
  return bytes;
}

Status Capturer::WritePages(ProcState* p, format::ContextWriter* writer, uint64_t* page_bytes) {
  if (kernel_)
    return kernel_->WritePages(
        p->pid, p->mappings,
        [p](const Mapping& m) { return MappingHasPages(m) && m.start != p->scratch_address; },
        writer, page_bytes, &zero_skipped_);
  // From the snapshot when there is one: same mappings, same pages, frozen
  // at the moment it was taken while the process itself runs on.
  const pid_t src = p->snap ? p->snap : p->pid;
  const ProcessMemory& mem = p->snap ? p->snap_mem : p->mem;
  // An incremental context: pages unchanged since the parent are named, not
  // stored (Track() found them); the data below skips them.
  if (p->incremental)
    STASIS_RETURN_IF_ERROR(writer->WriteParentPages(static_cast<uint32_t>(p->pid), p->parent_runs));
  size_t parent_at = 0;
  auto in_parent = [&](uint64_t addr) {
    const std::vector<PageRun>& runs = p->parent_runs;
    while (parent_at < runs.size() &&
           runs[parent_at].start + runs[parent_at].npages * kPageSize <= addr)
      ++parent_at;
    return parent_at < runs.size() && runs[parent_at].start <= addr;
  };
  UniqueFd pagemap(
      ::open(("/proc/" + std::to_string(src) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return Status::FromErrno(errno, "open pagemap of " + Pid(src));
  // Pages are read straight into the batch, zero pages squeezed out in
  // place. When the sink lends its aligned buffers, the batch is one of
  // them and goes to the file without another copy.
  ByteSink* sink = writer->sink();
  size_t cap = 0;
  char* batch = sink->Borrow(&cap);
  const bool lent = batch != nullptr;
  std::unique_ptr<char[]> own;
  if (!lent) {
    own.reset(new char[kBatchBytes]);
    batch = own.get();
    cap = kBatchBytes;
  }
  cap = cap / kPageSize * kPageSize;
  std::vector<PageRun> runs;
  size_t used = 0;
  auto flush = [&]() -> Status {
    if (runs.empty()) return Status::Ok();
    STASIS_RETURN_IF_ERROR(
        writer->BeginPages({format::PageOwner::kProcess, static_cast<uint64_t>(p->pid)}, runs));
    if (lent) {
      char* full = batch;
      batch = nullptr;
      STASIS_RETURN_IF_ERROR(writer->AppendBorrowedPageData(full, used));
    } else {
      STASIS_RETURN_IF_ERROR(writer->AppendPageData(batch, used));
    }
    STASIS_RETURN_IF_ERROR(writer->EndPages());
    *page_bytes += used;
    runs.clear();
    used = 0;
    if (lent) {
      size_t got = 0;
      batch = sink->Borrow(&got);
      if (!batch || got / kPageSize * kPageSize != cap)
        return Status::Error(EIO, "the context sink stopped lending buffers");
    }
    return Status::Ok();
  };
  // Gives an unused lent buffer back, on every path out.
  struct GiveBack {
    ByteSink* sink;
    char** batch;
    bool lent;
    ~GiveBack() {
      if (lent && *batch) (void)sink->WriteBorrowed(*batch, 0);
    }
  } give_back{sink, &batch, lent};
  std::vector<uint64_t> pm;
  // Queued reads into the batch (from `used` to `read_end`), then settled:
  // read, zero pages squeezed out, runs noted.
  struct Seg {
    uint64_t addr;
    size_t off;
    uint64_t npages;
    bool anon;
  };
  std::vector<Seg> segs;
  size_t read_end = used;
  std::vector<struct iovec> local, remote;
  auto settle = [&]() -> Status {
    if (segs.empty()) return Status::Ok();
    bool done = false;
    if (segs.size() > 1) {
      local.clear();
      remote.clear();
      size_t total = 0;
      for (const Seg& g : segs) {
        local.push_back({batch + g.off, g.npages * kPageSize});
        remote.push_back({reinterpret_cast<void*>(g.addr), g.npages * kPageSize});
        total += g.npages * kPageSize;
      }
      ssize_t r =
          ::process_vm_readv(src, local.data(), local.size(), remote.data(), remote.size(), 0);
      done = r == static_cast<ssize_t>(total);
    }
    for (const Seg& g : segs)
      if (!done) STASIS_RETURN_IF_ERROR(mem.Read(g.addr, batch + g.off, g.npages * kPageSize));
    // Squeeze out zero pages: `keep` is where the next kept page goes.
    char* keep = batch + used;
    for (const Seg& g : segs) {
      const char* dst = batch + g.off;
      for (uint64_t k = 0; k < g.npages; ++k) {
        const char* page = dst + k * kPageSize;
        if (g.anon && IsZeroPage(page)) {
          ++zero_skipped_;
          continue;
        }
        if (keep != page) std::memmove(keep, page, kPageSize);
        keep += kPageSize;
        const uint64_t at = g.addr + k * kPageSize;
        if (!runs.empty() && runs.back().start + runs.back().npages * kPageSize == at)
          runs.back().npages++;
        else
          runs.push_back({at, 1});
      }
    }
    used = static_cast<size_t>(keep - batch);
    segs.clear();
    return Status::Ok();
  };
  for (const Mapping& m : p->mappings) {
    if (!MappingHasPages(m)) continue;  // shared: by reference or stored once
    if (m.start == p->scratch_address) continue;
    bool anon = m.kind == format::kMapAnon;
    uint64_t npages = (m.end - m.start) / kPageSize;
    pm.resize(npages);
    if (p->incremental_maps.count(m.start)) {
      // Tracked: the written pages Track() listed (present at the freeze),
      // not another walk of the page tables.
      std::fill(pm.begin(), pm.end(), 0);
      auto d = std::lower_bound(
          p->dirty_runs.begin(), p->dirty_runs.end(), m.start,
          [](const PageRun& r, uint64_t a) { return r.start + r.npages * kPageSize <= a; });
      for (; d != p->dirty_runs.end() && d->start < m.end; ++d) {
        const uint64_t s0 = std::max(d->start, m.start),
                       e0 = std::min(d->start + d->npages * kPageSize, m.end);
        for (uint64_t a = s0; a < e0; a += kPageSize) pm[(a - m.start) / kPageSize] = 1ull << 63;
      }
    } else {
      ssize_t n = ::pread(pagemap.get(), pm.data(), npages * 8,
                          static_cast<off_t>(m.start / kPageSize * 8));
      if (n != static_cast<ssize_t>(npages * 8))
        return Status::FromErrno(n < 0 ? errno : EIO, "read pagemap of " + Pid(p->pid));
    }
    // Page k of the mapping is stored: present (or swapped) and not the
    // parent's. Addresses are asked in increasing order (in_parent's cursor).
    auto wanted = [&](uint64_t k) {
      return PageWanted(pm[k], anon) && !in_parent(m.start + k * kPageSize);
    };
    // Reads are queued and done together: contiguous ones through
    // /proc/PID/mem one by one (see ProcessMemory::Read), and in a tracked
    // mapping, where the written pages lie scattered, up to 1024 at a time
    // with process_vm_readv, but only from the process itself: in a
    // snapshot it would unshare every page it reads (measured: 207 MiB of
    // scattered pages read in 0.72 s against 0.23 s one by one, 0.14 s
    // batched from the frozen process).
    const bool scattered = !p->snap && p->incremental_maps.count(m.start) != 0;
    uint64_t i = 0;
    while (i < npages) {
      if (!wanted(i)) {
        ++i;
        continue;
      }
      if (read_end == cap) {
        STASIS_RETURN_IF_ERROR(settle());
        if (used == cap) STASIS_RETURN_IF_ERROR(flush());
        read_end = used;
      }
      const uint64_t room = (cap - read_end) / kPageSize;
      uint64_t j = i;
      while (j < npages && wanted(j) && j - i < room) ++j;
      segs.push_back({m.start + i * kPageSize, read_end, j - i, anon});
      read_end += (j - i) * kPageSize;
      if (!scattered || segs.size() == 1024) {
        STASIS_RETURN_IF_ERROR(settle());
        read_end = used;
      }
      i = j;
    }
    STASIS_RETURN_IF_ERROR(settle());
    read_end = used;
  }
  return flush();
}

}  // namespace capture

namespace restore {

using format::FileDesc;
using format::Mapping;

namespace {

// The parts of sorted runs `a` that lie in sorted runs `b`.
std::vector<format::PageRun> IntersectRuns(const std::vector<format::PageRun>& a,
                                           const std::vector<format::PageRun>& b) {
  std::vector<format::PageRun> out;
  size_t j = 0;
  for (const format::PageRun& r : a) {
    const uint64_t rs = r.start, re = r.start + r.npages * kPageSize;
    while (j < b.size() && b[j].start + b[j].npages * kPageSize <= rs) ++j;
    for (size_t k = j; k < b.size() && b[k].start < re; ++k) {
      const uint64_t s = std::max(rs, b[k].start),
                     e = std::min(re, b[k].start + b[k].npages * kPageSize);
      if (s < e) out.push_back({s, (e - s) / kPageSize});
    }
  }
  return out;
}

}  // namespace

// The next up to `left` bytes of page data: in place from a source that
// lends its buffers (no copy), else read into `buf`.
Result<size_t> Restorer::NextPageBytes(uint64_t left, std::vector<char>* buf, const char** data) {
  size_t n = static_cast<size_t>(std::min<uint64_t>(left, 8u << 20));
  if (in_place_) {
    auto got = reader_.ReadPageDataInPlace(data, n);
    if (got || got.error().code() != ENOTSUP) return got;
    in_place_ = false;
  }
  buf->resize(n);
  STASIS_RETURN_IF_ERROR(reader_.ReadPageData(buf->data(), n));
  *data = buf->data();
  return n;
}

Status Restorer::WritePages(RProc* p) {
  const format::PagesHeader& h = reader_.pages();
  if (!p || !p->mm_built)
    return Status::Corrupt("page data for a process whose memory map was not read");
  // Every byte of every run must lie in a saved mapping that takes page
  // data (a run may span adjacent mappings).
  const Mapping* last = nullptr;
  for (const format::PageRun& run : h.runs) {
    uint64_t end = run.start + run.npages * kPageSize;
    uint64_t cursor = run.start;
    while (cursor < end) {
      const Mapping* hit = nullptr;
      if (last && last->start <= cursor && cursor < last->end) hit = last;
      for (size_t i = 0; !hit && i < p->mappings.size(); ++i) {
        const Mapping& m = p->mappings[i];
        if (m.start <= cursor && cursor < m.end &&
            (m.kind == format::kMapAnon || m.kind == format::kMapFile ||
             m.kind == format::kMapFileByValue))
          hit = &m;
      }
      if (!hit) break;
      last = hit;
      cursor = std::min(end, hit->end);
    }
    if (cursor < end || end < run.start)
      return Status::Corrupt("page data at " + ToHex(run.start) + " of " + Pid(p->entry.pid) +
                             " lies outside its saved mappings");
  }
  // The page data is contiguous in the file while the runs scatter it: each
  // span read (up to 8 MiB, in place when the source lends its buffers) is
  // written with one process_vm_writev over all the runs it covers, not one
  // call per run (half-zero memory has runs of one page).
  std::vector<char> buf;
  std::vector<struct iovec> remote;
  size_t run = 0;
  uint64_t run_off = 0, left = h.data_bytes;
  while (left > 0) {
    const char* data = nullptr;
    STASIS_ASSIGN_OR_RETURN(size_t n, NextPageBytes(left, &buf, &data));
    size_t done = 0, flushed = 0;
    remote.clear();
    while (done < n) {
      if (run >= h.runs.size()) return Status::Corrupt("page data beyond its runs");
      const format::PageRun& r = h.runs[run];
      uint64_t take = std::min<uint64_t>(r.npages * kPageSize - run_off, n - done);
      remote.push_back({reinterpret_cast<void*>(r.start + run_off), static_cast<size_t>(take)});
      done += take;
      run_off += take;
      if (run_off == r.npages * kPageSize) {
        ++run;
        run_off = 0;
      }
      if (remote.size() == 1024 || done == n) {
        STASIS_RETURN_IF_ERROR(p->mem.WriteScattered(data + flushed, remote));
        flushed = done;
        remote.clear();
      }
    }
    result_.page_bytes += n;
    left -= n;
  }
  return Status::Ok();
}

Status Restorer::ApplyParents(const format::ImageInfo& image) {
  std::map<uint32_t, std::vector<format::PageRun>> need = std::move(parent_needed_);
  std::string child = options_.source_path, recorded = image.parent;
  uint64_t token = image.parent_token;
  std::vector<char> buf(8u << 20);
  for (int depth = 1; !need.empty(); ++depth) {
    if (depth > 1000) return Status::Corrupt("the chain of parent contexts is longer than 1000");
    std::string path;
    std::unique_ptr<ByteSource> source;
    if (options_.open_parent) {
      STASIS_ASSIGN_OR_RETURN(source, options_.open_parent(child, recorded, &path));
    } else {
      path = ResolveParent(child, recorded);
      auto opened = OpenContextForRead(path);
      // A missing parent makes this context unusable, like a damaged one
      // (EBADMSG: a restart from a job folder then tries an older epoch).
      if (!opened)
        return Status::Error(opened.error().code() == ENOENT ? EBADMSG : opened.error().code(),
                             "parent context of " + child + ": " + opened.error().message());
      source = std::move(*opened);
    }
    const std::string what = "parent context " + path + " (of " + child + ")";
    format::ContextReader r(source.get());
    auto pimg = r.Begin();
    if (!pimg) return Status::Error(pimg.error().code(), what + ": " + pimg.error().message());
    if (pimg->token != token)
      return Status::Error(EBADMSG,
                           what + " is not the context this one was taken after (its token is " +
                               ToHex(pimg->token) + ", expected " + ToHex(token) +
                               "): replaced or taken again since");
    result_.parents++;
    std::map<uint32_t, std::vector<format::PageRun>> next;
    for (;;) {
      auto type = r.Next();
      if (!type) return Status::Error(type.error().code(), what + ": " + type.error().message());
      if (*type == format::SectionType::kEnd) break;
      if (*type == format::SectionType::kParentPages) {
        auto it = need.find(r.section_pid());
        if (it != need.end()) {
          std::vector<format::PageRun> still = IntersectRuns(it->second, r.parent_runs());
          if (!still.empty()) next[it->first] = std::move(still);
        }
        continue;
      }
      if (*type != format::SectionType::kPages) continue;
      const format::PagesHeader& h = r.pages();
      auto it = h.owner.kind == format::PageOwner::kProcess
                    ? need.find(static_cast<uint32_t>(h.owner.id))
                    : need.end();
      if (it == need.end()) {
        Status s = r.SkipPageData();
        if (!s.ok()) return Status::Error(s.code(), what + ": " + s.message());
        continue;
      }
      RProc* p = by_pid_.at(it->first);
      const std::vector<format::PageRun>& want = it->second;
      size_t w = 0;
      for (const format::PageRun& run : h.runs) {
        const uint64_t end = run.start + run.npages * kPageSize;
        for (uint64_t at = run.start; at < end;) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(end - at, buf.size()));
          Status s = r.ReadPageData(buf.data(), n);
          if (!s.ok()) return Status::Error(s.code(), what + ": " + s.message());
          // The wanted parts of [at, at + n).
          while (w < want.size() && want[w].start + want[w].npages * kPageSize <= at) ++w;
          for (size_t k = w; k < want.size() && want[k].start < at + n; ++k) {
            const uint64_t s0 = std::max(at, want[k].start);
            const uint64_t e0 = std::min(at + n, want[k].start + want[k].npages * kPageSize);
            if (s0 >= e0) continue;
            STASIS_RETURN_IF_ERROR(p->mem.Write(s0, buf.data() + (s0 - at), e0 - s0));
            result_.parent_bytes += e0 - s0;
            result_.page_bytes += e0 - s0;
          }
          at += n;
        }
      }
    }
    need = std::move(next);
    child = path;
    recorded = pimg->parent;
    token = pimg->parent_token;
    if (!need.empty() && token == 0)
      return Status::Corrupt(
          what + " names no parent, yet holds parent pages");  // the validator prevents it
  }
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core
