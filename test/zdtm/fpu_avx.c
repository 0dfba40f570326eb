/* fpu_avx: vector, x87 and general registers kept live across the checkpoint.
 *
 * A worker thread runs a loop written in assembly: it loads known values into
 * xmm0-15 (SSE), ymm0-15 (AVX) or zmm0-31 and k1-k7 (AVX-512F), whichever is
 * the widest the CPU and kernel support, into all eight x87 stack registers
 * and r8-r15, sets a non-default x87 control word and MXCSR, and then spins
 * on a memory flag with nothing but integer compares and `pause`, so every
 * one of those registers must survive the checkpoint and restart exactly as
 * it was. When main (which polls $ZDTM_CHECK) sets the flag, the loop stores
 * the registers to memory and restores default control words; main compares
 * them with the values it loaded. Main keeps its own non-default MXCSR and
 * x87 control word across the checkpoint too. $ZDTM_FPU_ISA=sse or avx
 * forces a narrower variant. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zdtm.h"

struct FpuBox {
  uint8_t vec_in[32][64];
  uint8_t vec_out[32][64];
  uint64_t gpr_in[8]; /* r8..r15 */
  uint64_t gpr_out[8];
  uint16_t k_in[8]; /* k1..k7 (k0 unused) */
  uint16_t k_out[8];
  uint8_t st_in[8][16]; /* 80-bit x87 values, st0 first */
  uint8_t st_out[8][16];
  uint16_t fcw_in;
  uint16_t fcw_out;
  uint32_t mxcsr_in;
  uint32_t mxcsr_out;
  volatile int32_t entered; /* set by the loop once every register is loaded */
  volatile int32_t *flag;   /* 0: spin, 1: store and return, 2: corrupt ymm0 first */
} __attribute__((aligned(64)));

/* Offsets the assembly uses; the asserts keep them equal to the struct. */
#define OFF_VEC_IN 0
#define OFF_VEC_OUT 2048
#define OFF_GPR_IN 4096
#define OFF_GPR_OUT 4160
#define OFF_K_IN 4224
#define OFF_K_OUT 4240
#define OFF_ST_IN 4256
#define OFF_ST_OUT 4384
#define OFF_FCW_IN 4512
#define OFF_FCW_OUT 4514
#define OFF_MXCSR_IN 4516
#define OFF_MXCSR_OUT 4520
#define OFF_ENTERED 4524
#define OFF_FLAG 4528
_Static_assert(offsetof(struct FpuBox, vec_out) == OFF_VEC_OUT, "layout");
_Static_assert(offsetof(struct FpuBox, gpr_in) == OFF_GPR_IN, "layout");
_Static_assert(offsetof(struct FpuBox, gpr_out) == OFF_GPR_OUT, "layout");
_Static_assert(offsetof(struct FpuBox, k_in) == OFF_K_IN, "layout");
_Static_assert(offsetof(struct FpuBox, k_out) == OFF_K_OUT, "layout");
_Static_assert(offsetof(struct FpuBox, st_in) == OFF_ST_IN, "layout");
_Static_assert(offsetof(struct FpuBox, st_out) == OFF_ST_OUT, "layout");
_Static_assert(offsetof(struct FpuBox, fcw_in) == OFF_FCW_IN, "layout");
_Static_assert(offsetof(struct FpuBox, fcw_out) == OFF_FCW_OUT, "layout");
_Static_assert(offsetof(struct FpuBox, mxcsr_in) == OFF_MXCSR_IN, "layout");
_Static_assert(offsetof(struct FpuBox, mxcsr_out) == OFF_MXCSR_OUT, "layout");
_Static_assert(offsetof(struct FpuBox, entered) == OFF_ENTERED, "layout");
_Static_assert(offsetof(struct FpuBox, flag) == OFF_FLAG, "layout");

#define STR_(x) #x
#define STR(x) STR_(x)
#define V16 "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"
#define V32 V16 ",16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31"

/* One spin function: void name(struct FpuBox *box), box in %rdi. */
#define SPIN_FUNCTION(name, load_vec, store_vec, corrupt, leave) \
  ".globl " #name "\n.type " #name ", @function\n" #name ":\n"                          \
  "push %rbx\npush %rbp\npush %r12\npush %r13\npush %r14\npush %r15\nsub $8, %rsp\n"    \
  "fnstcw (%rsp)\nstmxcsr 4(%rsp)\n"                                                    \
  "fldcw " STR(OFF_FCW_IN) "(%rdi)\nldmxcsr " STR(OFF_MXCSR_IN) "(%rdi)\n"              \
  ".irp i,7,6,5,4,3,2,1,0\nfldt " STR(OFF_ST_IN) "+\\i*16(%rdi)\n.endr\n"              \
  load_vec                                                                              \
  ".irp i,8,9,10,11,12,13,14,15\nmov " STR(OFF_GPR_IN) "+(\\i-8)*8(%rdi), %r\\i\n.endr\n" \
  "mov " STR(OFF_FLAG) "(%rdi), %rsi\n"                                                 \
  "movl $1, " STR(OFF_ENTERED) "(%rdi)\n"                                               \
  "1: pause\nmovl (%rsi), %eax\ntestl %eax, %eax\njz 1b\n"                              \
  "cmpl $2, %eax\njne 2f\n" corrupt "\n2:\n"                                            \
  store_vec                                                                             \
  ".irp i,8,9,10,11,12,13,14,15\nmov %r\\i, " STR(OFF_GPR_OUT) "+(\\i-8)*8(%rdi)\n.endr\n" \
  ".irp i,0,1,2,3,4,5,6,7\nfstpt " STR(OFF_ST_OUT) "+\\i*16(%rdi)\n.endr\n"            \
  "fnstcw " STR(OFF_FCW_OUT) "(%rdi)\nstmxcsr " STR(OFF_MXCSR_OUT) "(%rdi)\n"           \
  "fldcw (%rsp)\nldmxcsr 4(%rsp)\n" leave                                               \
  "add $8, %rsp\npop %r15\npop %r14\npop %r13\npop %r12\npop %rbp\npop %rbx\nret\n"     \
  ".size " #name ", .-" #name "\n"

#define LOAD(insn, reg, list) \
  ".irp i," list "\n" insn " " STR(OFF_VEC_IN) "+\\i*64(%rdi), %" reg "\\i\n.endr\n"
#define STORE(insn, reg, list) \
  ".irp i," list "\n" insn " %" reg "\\i, " STR(OFF_VEC_OUT) "+\\i*64(%rdi)\n.endr\n"
#define K_LOAD ".irp i,1,2,3,4,5,6,7\nkmovw " STR(OFF_K_IN) "+\\i*2(%rdi), %k\\i\n.endr\n"
#define K_STORE ".irp i,1,2,3,4,5,6,7\nkmovw %k\\i, " STR(OFF_K_OUT) "+\\i*2(%rdi)\n.endr\n"

__asm__(".text\n" SPIN_FUNCTION(ZdtmSpinSse, LOAD("movdqu", "xmm", V16),
                                STORE("movdqu", "xmm", V16), "movdqa %xmm1, %xmm0", "")
            SPIN_FUNCTION(ZdtmSpinAvx, LOAD("vmovdqu", "ymm", V16), STORE("vmovdqu", "ymm", V16),
                          "vinsertf128 $1, %xmm1, %ymm0, %ymm0", "vzeroupper\n")
                SPIN_FUNCTION(ZdtmSpinAvx512, LOAD("vmovdqu64", "zmm", V32) K_LOAD,
                              STORE("vmovdqu64", "zmm", V32) K_STORE,
                              "vinsertf128 $1, %xmm1, %ymm0, %ymm0", "vzeroupper\n") ".previous\n");

void ZdtmSpinSse(struct FpuBox *box);
void ZdtmSpinAvx(struct FpuBox *box);
void ZdtmSpinAvx512(struct FpuBox *box);

static struct FpuBox box;
static volatile int32_t flag;
static void (*spin)(struct FpuBox *);

static void *Worker(void *arg) {
  (void)arg;
  spin(&box);
  return NULL;
}

static uint16_t GetFcw(void) {
  uint16_t v;
  __asm__ volatile("fnstcw %0" : "=m"(v));
  return v;
}
static void SetFcw(uint16_t v) { __asm__ volatile("fldcw %0" : : "m"(v)); }
static uint32_t GetMxcsr(void) {
  uint32_t v;
  __asm__ volatile("stmxcsr %0" : "=m"(v));
  return v;
}
static void SetMxcsr(uint32_t v) { __asm__ volatile("ldmxcsr %0" : : "m"(v)); }

int main(void) {
  zdtm_init("fpu_avx");
  __builtin_cpu_init();
  int nvec = 16, width = 16, nk = 0;
  const char *what = "sse: xmm0-15";
  spin = ZdtmSpinSse;
  /* $ZDTM_FPU_ISA=sse or avx forces a narrower variant (the selftest runs all). */
  const char *isa = getenv("ZDTM_FPU_ISA");
  isa = isa ? isa : "";
  if (__builtin_cpu_supports("avx512f") && !*isa) {
    spin = ZdtmSpinAvx512, nvec = 32, width = 64, nk = 8, what = "avx512f: zmm0-31, k1-k7";
  } else if (__builtin_cpu_supports("avx") && strcmp(isa, "sse") != 0) {
    spin = ZdtmSpinAvx, width = 32, what = "avx: ymm0-15";
  }

  uint64_t s = 0x6670752d61767821ULL;
  for (int r = 0; r < 32; r++)
    for (int b = 0; b < 64; b += 8) {
      uint64_t v = zdtm_xorshift64(&s);
      memcpy(&box.vec_in[r][b], &v, 8);
    }
  for (int i = 0; i < 8; i++) box.gpr_in[i] = zdtm_xorshift64(&s);
  for (int i = 1; i < 8; i++) box.k_in[i] = (uint16_t)zdtm_xorshift64(&s);
  for (int i = 0; i < 8; i++) {
    long double v = (long double)zdtm_xorshift64(&s) / (long double)(i + 3) * (i % 2 ? -1 : 1);
    memcpy(box.st_in[i], &v, 10);
  }
  box.fcw_in = 0x0a7f;   /* round up, double precision (default 0x037f) */
  box.mxcsr_in = 0xdfc0; /* FTZ, DAZ, round up (default 0x1f80) */
  box.flag = &flag;

  pthread_t worker;
  if (pthread_create(&worker, NULL, Worker, NULL) != 0) zdtm_die("pthread_create failed");
  while (!box.entered) zdtm_sleep_ms(1);

  const uint16_t main_fcw = 0x0e7f;   /* round toward zero, double precision */
  const uint32_t main_mxcsr = 0x3f80; /* round down */
  printf("fpu_avx: worker holds %s, st0-7, r8-r15, fcw %#x, mxcsr %#x\n", what, box.fcw_in,
         box.mxcsr_in);
  SetFcw(main_fcw);
  SetMxcsr(main_mxcsr);
  zdtm_ready();

  zdtm_wait_check();
  uint16_t fcw_now = GetFcw();
  uint32_t mxcsr_now = GetMxcsr();
  SetFcw(0x037f);
  SetMxcsr(0x1f80);
  flag = zdtm_corrupt_requested() ? 2 : 1;
  pthread_join(worker, NULL);

  if (fcw_now != main_fcw)
    zdtm_fail_note("main thread: x87 control word %#x, want %#x", fcw_now, main_fcw);
  if (mxcsr_now != main_mxcsr)
    zdtm_fail_note("main thread: MXCSR %#x, want %#x", mxcsr_now, main_mxcsr);
  for (int r = 0; r < nvec; r++) {
    for (int b = 0; b < width; b++) {
      if (box.vec_out[r][b] != box.vec_in[r][b]) {
        zdtm_fail_note("%cmm%d byte %d is %#x, want %#x",
                       width == 64   ? 'z'
                       : width == 32 ? 'y'
                                     : 'x',
                       r, b, box.vec_out[r][b], box.vec_in[r][b]);
        break;
      }
    }
  }
  for (int i = 0; i < 8; i++)
    if (box.gpr_out[i] != box.gpr_in[i])
      zdtm_fail_note("r%d is %#" PRIx64 ", want %#" PRIx64, i + 8, box.gpr_out[i], box.gpr_in[i]);
  for (int i = 1; i < nk; i++)
    if (box.k_out[i] != box.k_in[i])
      zdtm_fail_note("k%d is %#x, want %#x", i, box.k_out[i], box.k_in[i]);
  for (int i = 0; i < 8; i++)
    if (memcmp(box.st_out[i], box.st_in[i], 10) != 0) zdtm_fail_note("x87 st%d differs", i);
  if (box.fcw_out != box.fcw_in)
    zdtm_fail_note("worker: x87 control word %#x, want %#x", box.fcw_out, box.fcw_in);
  if (box.mxcsr_out != box.mxcsr_in)
    zdtm_fail_note("worker: MXCSR %#x, want %#x", box.mxcsr_out, box.mxcsr_in);
  zdtm_finish();
}
