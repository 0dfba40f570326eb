/* An Open MPI ring for the cluster tests (`srun --mpi=pmix`, several
 * nodes): every round each rank sends a message to the next rank and
 * receives one from the previous (MPI_Irecv + MPI_Send + MPI_Wait), with
 * sizes cycling through 1 B, 4 KiB, 64 KiB and 1 MiB (eager and rendezvous
 * over btl/tcp between nodes, vader within one). Each message's bytes are a
 * function of (round, sender); the receiver checks every byte and folds them
 * into its running checksum. Rank 0 decides when to stop (the file argv[1]
 * exists, or argv[2] seconds have passed) and tells the others with
 * MPI_Bcast each round. At the end an MPI_Allreduce of the checksums is
 * compared with what every rank computes the ring should have carried.
 * Prints "rank R of S on HOST round N" about twice a second, then "ring ok:
 * S ranks, N rounds, checksum X" (rank 0) and exits 0; "RING BAD ..." and
 * exit 3 on a wrong byte or checksum. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const int kSizes[] = {1, 4096, 65536, 1 << 20};
#define NSIZES ((int)(sizeof kSizes / sizeof kSizes[0]))

static uint8_t byte_of(uint64_t round, int sender, size_t i) {
  uint64_t x = round * 0x9e3779b97f4a7c15ull + (uint64_t)sender * 0xc2b2ae3d27d4eb4full + i;
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 32;
  return (uint8_t)x;
}

static uint64_t fold(uint64_t sum, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; ++i) sum = (sum ^ p[i]) * 0x100000001b3ull;
  return sum;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  const char *stop_file = argc > 1 ? argv[1] : "";
  const double max_seconds = argc > 2 ? atof(argv[2]) : 10;
  setvbuf(stdout, NULL, _IOLBF, 0);
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  uint8_t *out = malloc(1 << 20), *in = malloc(1 << 20);
  if (!out || !in) MPI_Abort(MPI_COMM_WORLD, 2);
  uint64_t sum = 0xcbf29ce484222325ull;
  const double t0 = now();
  double said = 0;
  uint64_t round = 0;
  for (;; ++round) {
    const size_t n = (size_t)kSizes[round % NSIZES];
    for (size_t i = 0; i < n; ++i) out[i] = byte_of(round, rank, i);
    MPI_Request req;
    MPI_Irecv(in, (int)n, MPI_BYTE, prev, (int)(round & 0x7fff), MPI_COMM_WORLD, &req);
    MPI_Send(out, (int)n, MPI_BYTE, next, (int)(round & 0x7fff), MPI_COMM_WORLD);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
    for (size_t i = 0; i < n; ++i) {
      if (in[i] != byte_of(round, prev, i)) {
        printf("RING BAD: rank %d round %llu byte %zu from rank %d\n", rank,
               (unsigned long long)round, i, prev);
        MPI_Abort(MPI_COMM_WORLD, 3);
      }
    }
    sum = fold(sum, in, n);
    int stop = 0;
    if (rank == 0)
      stop = (stop_file[0] && access(stop_file, F_OK) == 0) || now() - t0 > max_seconds;
    MPI_Bcast(&stop, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (stop) break;
    if (now() - said >= 0.5) {
      said = now();
      printf("rank %d of %d on %s round %llu\n", rank, size, host, (unsigned long long)round);
    }
  }
  const uint64_t rounds = round + 1;
  /* What every rank received: the ring carried (r, prev(q)) to each q. */
  uint64_t mine_expected = 0xcbf29ce484222325ull;
  for (uint64_t r = 0; r < rounds; ++r) {
    const size_t n = (size_t)kSizes[r % NSIZES];
    for (size_t i = 0; i < n; ++i) out[i] = byte_of(r, prev, i);
    mine_expected = fold(mine_expected, out, n);
  }
  unsigned long long pair[2] = {sum, mine_expected}, total[2] = {0, 0};
  MPI_Allreduce(pair, total, 2, MPI_UNSIGNED_LONG_LONG, MPI_BXOR, MPI_COMM_WORLD);
  int bad = sum != mine_expected || total[0] != total[1];
  if (bad)
    printf("RING BAD: rank %d checksum %016llx, expected %016llx (all: %016llx vs %016llx)\n", rank,
           (unsigned long long)sum, (unsigned long long)mine_expected, total[0], total[1]);
  else if (rank == 0)
    printf("ring ok: %d ranks, %llu rounds, checksum %016llx\n", size, (unsigned long long)rounds,
           total[0]);
  free(out);
  free(in);
  MPI_Finalize();
  return bad ? 3 : 0;
}
