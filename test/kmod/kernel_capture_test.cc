// Unit tests of the engine side of the kernel backend that need no module:
// the record parser (never trusts a length or count from the module) and
// the capture_backend setting.
#include "engine/core/kernel_capture.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "kmod/include/uapi/stasis_kmod.h"

namespace stasis::core {
namespace {

template <typename T>
void Put(std::string* out, const T& v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof v);
}

void PutPadded(std::string* out, const std::string& bytes) {
  out->append(bytes);
  out->append((8 - bytes.size() % 8) % 8, '\0');
}

std::string Vma(uint64_t start, uint64_t end, uint64_t flags, const std::string& path,
                uint32_t kind = STASIS_VMA_FILE) {
  std::string out;
  struct stasis_vma_rec v {};
  v.start = start;
  v.end = end;
  v.flags = flags;
  v.pgoff = 0x2000;
  v.ino = 77;
  v.dev_major = 8;
  v.dev_minor = 1;
  v.kind = kind;
  v.path_len = static_cast<uint32_t>(path.size());
  Put(&out, v);
  PutPadded(&out, path);
  return out;
}

std::string Thread(int32_t tid, uint32_t npending, size_t regs = 216) {
  std::string out;
  struct stasis_thread_rec t {};
  t.tid = tid;
  t.state = 2;
  t.blocked = 0x800;
  t.gpregs_len = static_cast<uint32_t>(regs);
  t.npending = npending;
  Put(&out, t);
  out.append(regs, '\x11');
  out.append(static_cast<size_t>(npending) * STASIS_SIGINFO_SIZE, '\x22');
  return out;
}

std::string File(int32_t fd, const std::string& path) {
  std::string out;
  struct stasis_file_rec f {};
  f.fd = fd;
  f.fd_flags = 1;
  f.f_flags = 02;
  f.mode = 0100644;
  f.pos = 1234;
  f.mtime_ns = 1500000001;
  f.path_len = static_cast<uint32_t>(path.size());
  f.file_id = 1;
  Put(&out, f);
  PutPadded(&out, path);
  return out;
}

TEST(KernelCapture, ParsesRecords) {
  std::string vmas = Vma(0x400000, 0x401000, STASIS_VM_READ | STASIS_VM_EXEC, "/bin/x") +
                     Vma(0x7f0000000000, 0x7f0000010000,
                         STASIS_VM_READ | STASIS_VM_WRITE | STASIS_VM_MAYSHARE | STASIS_VM_DONTDUMP,
                         "/dev/zero (deleted)") +
                     Vma(0x7ffff000, 0x80000000, STASIS_VM_READ | STASIS_VM_GROWSDOWN, "[stack]",
                         STASIS_VMA_STACK);
  std::string threads = Thread(10, 1) + Thread(11, 0) + Thread(0, 2, 0);
  std::string files = File(0, "/dev/null") + File(7, "pipe:[123]");
  auto task = ParseKernelTask(10, vmas, threads, files);
  ASSERT_TRUE(task.has_value()) << task.error().message();
  ASSERT_EQ(task->maps.size(), 3u);
  EXPECT_EQ(task->maps[0].path, "/bin/x");
  EXPECT_TRUE(task->maps[0].exec && task->maps[0].read && !task->maps[0].write);
  EXPECT_FALSE(task->maps[0].shared);
  EXPECT_EQ(task->maps[0].offset, 0x2000u);
  EXPECT_EQ(task->maps[0].inode, 77u);
  EXPECT_TRUE(task->maps[1].shared);
  EXPECT_EQ(task->maps[1].path, "/dev/zero (deleted)");
  EXPECT_EQ(task->vmflags[1], static_cast<uint32_t>(format::kMapDontDump));
  EXPECT_EQ(task->vmflags[2], static_cast<uint32_t>(format::kMapGrowsDown));
  ASSERT_EQ(task->threads.size(), 2u);
  EXPECT_EQ(task->threads[0].tid, 10u);
  EXPECT_EQ(task->threads[0].gpregs.size(), 216u);
  EXPECT_EQ(task->threads[0].pending.size(), 128u);
  EXPECT_EQ(task->threads[0].blocked, 0x800u);
  EXPECT_EQ(task->shared_pending.size(), 256u);
  ASSERT_EQ(task->files.size(), 2u);
  EXPECT_EQ(task->files[1].fd, 7);
  EXPECT_EQ(task->files[1].path, "pipe:[123]");
  EXPECT_TRUE(task->files[0].cloexec);
  EXPECT_EQ(task->files[0].pos, 1234u);
  EXPECT_EQ(task->files[0].st.st_mtim.tv_sec, 1);
  EXPECT_EQ(task->files[0].st.st_mtim.tv_nsec, 500000001);
  EXPECT_EQ(task->File(7), &task->files[1]);
  EXPECT_EQ(task->Thread(11), &task->threads[1]);
  EXPECT_EQ(task->Thread(12), nullptr);
}

TEST(KernelCapture, RefusesTruncatedAndHostileRecords) {
  const std::string shared = Thread(0, 0, 0);
  const std::string vma = Vma(0x1000, 0x2000, STASIS_VM_READ, "/x");
  struct Case {
    std::string name, vmas, threads, files, want;
  } cases[] = {
      {"truncated VMA", vma.substr(0, vma.size() - 9), shared, "", "malformed VMA record"},
      {"VMA path past the end", Vma(0x1000, 0x2000, 0, "/x").substr(0, sizeof(stasis_vma_rec) + 1),
       shared, "", "malformed VMA record"},
      {"empty VMA", Vma(0x2000, 0x2000, 0, ""), shared, "", "malformed VMA record"},
      {"huge pending count", vma, Thread(5, 0).replace(24, 4, "\xff\xff\xff\x7f", 4) + shared, "",
       "malformed thread record"},
      {"pending past the end", vma, Thread(5, 3).substr(0, 400) + shared, "",
       "malformed thread record"},
      {"no shared record", vma, Thread(5, 0), "", "no shared pending record"},
      {"record after the shared one", vma, shared + Thread(5, 0), "", "malformed thread record"},
      {"truncated file", vma, shared, File(3, "/etc/passwd").substr(0, 20),
       "malformed file record"},
      {"negative fd", vma, shared, File(-4, "/x"), "malformed file record"},
  };
  for (const Case& c : cases) {
    auto task = ParseKernelTask(42, c.vmas, c.threads, c.files);
    ASSERT_FALSE(task.has_value()) << c.name;
    EXPECT_NE(task.error().message().find(c.want), std::string::npos)
        << c.name << ": " << task.error().message();
    EXPECT_NE(task.error().message().find("pid 42"), std::string::npos) << c.name;
  }
}

TEST(KernelCapture, ApplyKernelThread) {
  KernelTask task;
  KernelThread kt;
  kt.tid = 7;
  kt.blocked = 0x4;
  Regs regs{};
  regs.rax = static_cast<unsigned long long>(-4);  // -EINTR from epoll_wait (232) at a group stop
  regs.orig_rax = 232;
  kt.gpregs.assign(reinterpret_cast<const uint8_t*>(&regs),
                   reinterpret_cast<const uint8_t*>(&regs) + sizeof regs);
  kt.xsave.assign(64, 3);
  for (int32_t sig : {19 /* SIGSTOP */, 35}) {
    std::vector<uint8_t> info(128, 0);
    std::memcpy(info.data(), &sig, sizeof sig);
    kt.pending.insert(kt.pending.end(), info.begin(), info.end());
  }
  task.threads.push_back(kt);
  StopInfo group_stop;
  group_stop.kind = StopInfo::kGroupStop;

  format::ThreadInfo ti;
  ti.tid = 7;
  ASSERT_TRUE(ApplyKernelThread(task, group_stop, true, &ti).ok());
  Regs out;
  ASSERT_EQ(ti.gpregs.size(), sizeof out);
  std::memcpy(&out, ti.gpregs.data(), sizeof out);
  EXPECT_EQ(static_cast<long>(out.rax), -514);  // recorded as -ERESTARTNOHAND
  EXPECT_EQ(ti.sigmask, 0x4u);
  EXPECT_EQ(ti.xsave, kt.xsave);
  ASSERT_EQ(ti.pending.size(), 128u);  // the stopped process's SIGSTOP is dropped
  EXPECT_EQ(ti.pending[0], 35);

  ASSERT_TRUE(ApplyKernelThread(task, group_stop, false, &ti).ok());
  EXPECT_EQ(ti.pending.size(), 256u);  // not stopped: kept

  ti.tid = 8;
  EXPECT_EQ(ApplyKernelThread(task, group_stop, false, &ti).code(), EAGAIN);
  task.threads[0].gpregs.resize(100);
  ti.tid = 7;
  EXPECT_EQ(ApplyKernelThread(task, group_stop, false, &ti).code(), EPROTO);
}

TEST(KernelCapture, BackendSetting) {
  EXPECT_EQ(*ParseCaptureBackend("auto"), CaptureBackend::kAuto);
  EXPECT_EQ(*ParseCaptureBackend("kernel"), CaptureBackend::kKernel);
  EXPECT_EQ(*ParseCaptureBackend("user"), CaptureBackend::kUser);
  auto bad = ParseCaptureBackend("fast");
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().message(), "capture backend 'fast' is not one of auto, kernel, user");
  // No module here: user and auto need none, kernel names why it fails.
  auto user = KernelCapture::Open(CaptureBackend::kUser, "/nonexistent/stasis");
  ASSERT_TRUE(user.has_value());
  EXPECT_EQ(*user, nullptr);
  auto autob = KernelCapture::Open(CaptureBackend::kAuto, "/nonexistent/stasis");
  ASSERT_TRUE(autob.has_value());
  EXPECT_EQ(*autob, nullptr);
  auto kernel = KernelCapture::Open(CaptureBackend::kKernel, "/nonexistent/stasis");
  ASSERT_FALSE(kernel.has_value());
  EXPECT_NE(kernel.error().message().find("open /nonexistent/stasis"), std::string::npos);
}

}  // namespace
}  // namespace stasis::core
