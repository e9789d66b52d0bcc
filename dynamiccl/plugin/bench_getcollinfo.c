/* Benchmark of the dynamiccl tuner plugin: getCollInfo (and getCollInfo + getChunkSize) time per call,
 * table load time.
 *
 *   bench_getcollinfo PLUGIN.so INSTRUMENTED.so TABLE NRANKS NNODES ANCHOR_COLL ANCHOR_BYTES
 *                     [CALLS_PER_BATCH BATCHES]
 *
 * dlopens both variants as NCCL does (ABI v6).  The instrumented one (the same code plus dynamiccl's
 * entry points) times the table's loading, which needs its parser and its reset:
 *   - parse: dynamiccl_tuner_parse on the table text held in memory (median of 21);
 *   - first init: reset, then init of the first communicator, which reads the file, parses it and
 *     builds the communicator's index (median of 21); next init: a second communicator on the
 *     already loaded table (the index only);
 * and replays the timed calls afterwards to count the share a rule decided.  The production one,
 * which NCCL loads, is timed:
 *   - getCollInfo: calls with (collective, nBytes) drawn from a precomputed array of 8,192 calls
 *     (log-uniform sizes 1 KiB .. 4 GiB; the step's anchor every 96th call, so that the position
 *     counter runs and position rules match).  As NCCL builds a fresh cost table for every call,
 *     each call first copies a realistic 7x3 table (-1 for cells NCCL cannot run or has disabled)
 *     into a local one and sets nChannels to 0.  Batches of CALLS_PER_BATCH calls are timed with
 *     clock_gettime(CLOCK_MONOTONIC); each measured batch is paired with an adjacent batch doing
 *     only the copy (the overhead) over the same calls, and net = measured - overhead.
 *   - getCollInfo + getChunkSize ("mixed_chunk"): the same calls, each followed, as NCCL's scheduler
 *     does for a task (NVIDIA/nccl src/enqueue.cc, calcCollChunking), by NCCL's arg-min over the
 *     table the plugin left and getChunkSize for that cell and the call's bytes (NCCL's chunk
 *     131072 passed in); the overhead batches do the copy and the arg-min, NCCL's own work.
 * Prints one JSON object: per-call ns (the median and 99th percentile over batches of the batch's
 * time / CALLS_PER_BATCH) of the measured, overhead and net batches, for the mixed calls (with and
 * without getChunkSize) and per collective, plus the load times, the share of calls a rule decided
 * and the share of getChunkSize calls given a rule's chunk.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tuner.h"

#define NA DCCL_NUM_ALGORITHMS
#define NP DCCL_NUM_PROTOCOLS
#define N_CALLS 8192 /* a power of two */
#define STEP_CALLS 96
#define REPEATS 21
#define N_CLASSES 64

typedef long (*parse_fn)(const char*, size_t, char*, size_t, long*);
typedef int (*reset_fn)(void);
typedef void (*stats_fn)(dccl_counters_t*, dccl_decision_t*);
typedef int (*supported_fn)(int, int, int);

static supported_fn g_supported;

static void* need(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  if (!p) {
    fprintf(stderr, "bench_getcollinfo: dlsym(%s): %s\n", name, dlerror());
    exit(2);
  }
  return p;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t g_rng = 0x853c49e6748fea9bULL;
static uint64_t rnd(void) {
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return g_rng * 2685821657736338717ULL;
}

static void quiet_logger(dccl_log_level_t level, unsigned long flags, const char* file, int line,
                         const char* fmt, ...) {
  (void)flags, (void)file, (void)line, (void)fmt;
  if (level == DCCL_LOG_WARN) fprintf(stderr, "bench_getcollinfo: the plugin warned (bad table?)\n");
}

/* ------------------------------------------------------------------------------------------ */

typedef struct {
  int coll;
  uint64_t nbytes;
  const float* cost; /* NCCL's table for this collective and size class */
} call_t;

/* NCCL's cost tables, one per (collective, log2 size class): latency + size / bandwidth in µs;
 * -1 where NCCL cannot run the cell, and for NVLS/CollNet (absent on this pretend machine). */
static float g_costs[DCCL_NUM_TUNABLE_FUNCS][N_CLASSES][NA * NP];

static void make_costs(int nranks) {
  static const float lat[NP] = {6.8f, 14.0f, 8.4f};
  static const float bw[NA] = {20.0f, 40.0f, 60.0f, 55.0f, 150.0f, 120.0f, 35.0f};
  static const float eff[NP] = {0.5f, 0.92f, 1.0f};
  for (int c = 0; c < DCCL_NUM_TUNABLE_FUNCS; c++)
    for (int k = 0; k < N_CLASSES; k++)
      for (int a = 0; a < NA; a++)
        for (int p = 0; p < NP; p++) {
          int absent = a == DCCL_ALGO_COLLNET_DIRECT || a == DCCL_ALGO_COLLNET_CHAIN || a == DCCL_ALGO_NVLS;
          float steps = a == DCCL_ALGO_RING ? 2.0f * (float)(nranks - 1) : 2.0f * (float)(a + 1);
          double bytes = k >= 63 ? 9.2e18 : (double)(1ULL << k);
          g_costs[c][k][a * NP + p] = (!g_supported(c, a, p) || absent) ? DCCL_ALGO_PROTO_IGNORE
              : lat[p] * steps * 0.3f + (float)(bytes / (1000.0 * bw[a] * eff[p]));
        }
}

static int size_class(uint64_t n) { return n ? 63 - __builtin_clzll(n) : 0; }

static void make_calls(call_t* calls, int only_coll, int anchor_coll, uint64_t anchor_bytes) {
  for (int i = 0; i < N_CALLS; i++) {
    call_t* c = &calls[i];
    if (only_coll < 0 && i % STEP_CALLS == 0) {
      c->coll = anchor_coll;
      c->nbytes = anchor_bytes;
    } else {
      c->coll = only_coll >= 0 ? only_coll : (int)(rnd() % DCCL_NUM_TUNABLE_FUNCS);
      int e = 10 + (int)(rnd() % 22); /* 1 KiB .. 4 GiB */
      c->nbytes = (1ULL << e) + (rnd() & ((1ULL << e) - 1) & ~255ULL);
    }
    c->cost = g_costs[c->coll][size_class(c->nbytes)];
  }
}

/* NCCL's pick after the tuner: the first minimum non-negative cell, algorithm-major. */
static int nccl_argmin(const float* table) {
  int best = -1;
  for (int i = 0; i < NA * NP; i++)
    if (table[i] >= 0.0f && (best < 0 || table[i] < table[best])) best = i;
  return best;
}

static int g_chunk; /* batches also ask getChunkSize, as NCCL's scheduler does */

/* One batch of n calls from calls[start...]; with_plugin 0 = only NCCL's per-call work (the table
 * copy; with g_chunk also its arg-min). */
static uint64_t batch(const dccl_tuner_v6_t* v6, void* ctx, const call_t* calls, unsigned start, int n,
                      int with_plugin) {
  float table[NA * NP];
  int nch;
  size_t chunk;
  uint64_t t0 = now_ns();
  for (int i = 0; i < n; i++) {
    const call_t* c = &calls[(start + (unsigned)i) & (N_CALLS - 1)];
    memcpy(table, c->cost, sizeof(table));
    nch = 0;
    if (with_plugin)
      v6->getCollInfo(ctx, (dccl_func_t)c->coll, c->nbytes, 1, (float**)table, NA, NP, 0, &nch);
    if (g_chunk) {
      int cell = nccl_argmin(table);
      chunk = 131072;
      if (with_plugin && cell >= 0)
        v6->getChunkSize(ctx, (dccl_func_t)c->coll, c->nbytes, cell / NP, cell % NP, nch ? nch : 1, &chunk);
      __asm__ volatile("" : : "r"(&chunk), "r"(cell) : "memory");
    }
    __asm__ volatile("" : : "r"(table), "r"(&nch) : "memory"); /* keep the copy in both loops */
  }
  return now_ns() - t0;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double quantile(double* v, int n, double q) { /* v sorted */
  int i = (int)(q * (n - 1) + 0.5);
  return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static void print_stats(const char* name, double* v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  printf("\"%s\": {\"median\": %.2f, \"p99\": %.2f}", name, quantile(v, n, 0.5), quantile(v, n, 0.99));
}

#define WARMUP_BATCHES 50

/* Paired measured / overhead batches; prints {"measured": ..., "overhead": ..., "net": ...}. */
static void measure(const dccl_tuner_v6_t* v6, void* ctx, const call_t* calls, int per_batch, int batches) {
  double* measured = malloc((size_t)batches * sizeof(double));
  double* overhead = malloc((size_t)batches * sizeof(double));
  double* net = malloc((size_t)batches * sizeof(double));
  if (!measured || !overhead || !net) exit(2);
  unsigned start = 0;
  for (int w = 0; w < WARMUP_BATCHES; w++) batch(v6, ctx, calls, (unsigned)w * (unsigned)per_batch, per_batch, 1);
  for (int b = 0; b < batches; b++) {
    int plugin_first = b & 1; /* alternate the order, so that neither side always runs warm */
    uint64_t t_plugin, t_copy;
    if (plugin_first) {
      t_plugin = batch(v6, ctx, calls, start, per_batch, 1);
      t_copy = batch(v6, ctx, calls, start, per_batch, 0);
    } else {
      t_copy = batch(v6, ctx, calls, start, per_batch, 0);
      t_plugin = batch(v6, ctx, calls, start, per_batch, 1);
    }
    measured[b] = (double)t_plugin / per_batch;
    overhead[b] = (double)t_copy / per_batch;
    net[b] = measured[b] - overhead[b];
    start += (unsigned)per_batch;
  }
  printf("{\"calls\": %lld, ", (long long)batches * per_batch);
  print_stats("measured", measured, batches);
  printf(", ");
  print_stats("overhead", overhead, batches);
  printf(", ");
  print_stats("net", net, batches);
  printf("}");
  free(measured), free(overhead), free(net);
}

static double median_of(double* v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return v[n / 2];
}

/* The calls measure() hands the plugin, in its order, without the clock or the copy-only batches. */
static void replay(const dccl_tuner_v6_t* v6, void* ctx, const call_t* calls, int per_batch, int batches) {
  for (int w = 0; w < WARMUP_BATCHES; w++) batch(v6, ctx, calls, (unsigned)w * (unsigned)per_batch, per_batch, 1);
  for (int b = 0; b < batches; b++) batch(v6, ctx, calls, (unsigned)b * (unsigned)per_batch, per_batch, 1);
}

static void* open_comm(const dccl_tuner_v6_t* v6, int nranks, int nnodes, uint64_t id) {
  void* ctx = NULL;
  dccl_nvl_domain_info_v5_t nvl = {nnodes, nranks / nnodes, nranks / nnodes};
  static unsigned char constants[4096]; /* opaque to the plugin */
  if (v6->init(&ctx, id, (size_t)nranks, (size_t)nnodes, quiet_logger, &nvl,
                 (dccl_tuner_constants_v5_t*)constants) != DCCL_SUCCESS || !ctx) {
    fprintf(stderr, "bench_getcollinfo: init failed\n");
    exit(2);
  }
  return ctx;
}

static void* open_library(const char* path) {
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "bench_getcollinfo: dlopen: %s\n", dlerror());
    exit(2);
  }
  return lib;
}

int main(int argc, char** argv) {
  if (argc != 8 && argc != 10) {
    fprintf(stderr, "usage: %s PLUGIN.so INSTRUMENTED.so TABLE NRANKS NNODES ANCHOR_COLL ANCHOR_BYTES "
            "[CALLS_PER_BATCH BATCHES]\n", argv[0]);
    return 2;
  }
  const char* table_path = argv[3];
  int nranks = atoi(argv[4]), nnodes = atoi(argv[5]), anchor_coll = atoi(argv[6]);
  uint64_t anchor_bytes = strtoull(argv[7], NULL, 10);
  int per_batch = argc == 10 ? atoi(argv[8]) : 100, batches = argc == 10 ? atoi(argv[9]) : 20000;
  const dccl_tuner_v6_t* production = need(open_library(argv[1]), "ncclTunerPlugin_v6");
  void* lib = open_library(argv[2]);
  const dccl_tuner_v6_t* instrumented = need(lib, "ncclTunerPlugin_v6");
  parse_fn parse;
  reset_fn reset;
  stats_fn stats;
  *(void**)&parse = need(lib, "dynamiccl_tuner_parse");
  *(void**)&reset = need(lib, "dynamiccl_tuner_reset");
  *(void**)&stats = need(lib, "dynamiccl_tuner_stats");
  *(void**)&g_supported = need(lib, "dynamiccl_tuner_supported");

  /* the table's text, for parse alone */
  FILE* f = fopen(table_path, "rb");
  if (!f) {
    perror(table_path);
    return 2;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* text = malloc((size_t)size + 1);
  if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) return 2;
  fclose(f);
  char err[DCCL_ERR_BYTES];
  long steps = 0, rules = parse(text, (size_t)size, err, sizeof(err), &steps);
  if (rules < 0) {
    fprintf(stderr, "bench_getcollinfo: the table is invalid: %s\n", err);
    return 2;
  }
  double parse_ns[REPEATS], first_ns[REPEATS], next_ns[REPEATS];
  for (int r = 0; r < REPEATS; r++) {
    uint64_t t0 = now_ns();
    parse(text, (size_t)size, err, sizeof(err), NULL);
    parse_ns[r] = (double)(now_ns() - t0);
  }

  setenv(DCCL_TABLE_ENV, table_path, 1);
  void* counted = NULL; /* the instrumented communicator, for the share of calls a rule decided */
  for (int r = 0; r < REPEATS; r++) {
    if (counted) instrumented->finalize(counted);
    if (reset() != 0) return 2;
    uint64_t t0 = now_ns();
    counted = open_comm(instrumented, nranks, nnodes, 1);
    first_ns[r] = (double)(now_ns() - t0);
    t0 = now_ns();
    void* second = open_comm(instrumented, nranks, nnodes, 2);
    next_ns[r] = (double)(now_ns() - t0);
    instrumented->finalize(second);
  }
  void* ctx = open_comm(production, nranks, nnodes, 1);

  make_costs(nranks);
  call_t* calls = malloc(N_CALLS * sizeof(call_t));
  if (!calls) return 2;
  static const char* const names[DCCL_NUM_TUNABLE_FUNCS] = {"broadcast", "reduce", "allgather", "reducescatter",
                                                            "allreduce"};
  printf("{\"rules\": %ld, \"step_lines\": %ld, \"table_bytes\": %ld, \"nranks\": %d, \"nnodes\": %d, "
         "\"calls_per_batch\": %d, \"batches\": %d, ", rules, steps, size, nranks, nnodes, per_batch, batches);
  printf("\"parse_us\": %.1f, \"first_init_us\": %.1f, \"next_init_us\": %.1f, ", median_of(parse_ns, REPEATS) / 1e3,
         median_of(first_ns, REPEATS) / 1e3, median_of(next_ns, REPEATS) / 1e3);
  make_calls(calls, -1, anchor_coll, anchor_bytes);
  printf("\"mixed\": ");
  measure(production, ctx, calls, per_batch, batches);
  g_chunk = 1;
  printf(", \"mixed_chunk\": ");
  measure(production, ctx, calls, per_batch, batches);
  dccl_counters_t before, after;
  stats(&before, NULL);
  replay(instrumented, counted, calls, per_batch, batches);
  stats(&after, NULL);
  g_chunk = 0;
  long long chunk_calls = after.chunk_calls - before.chunk_calls;
  printf(", \"chunked_fraction\": %.4f", (double)(after.chunk_set - before.chunk_set) /
                                         (double)(chunk_calls ? chunk_calls : 1));
  printf(", \"ruled_fraction\": %.4f, \"per_collective\": {",
         (double)(after.ruled - before.ruled) / (double)(after.calls - before.calls ? after.calls - before.calls : 1));
  for (int c = 0; c < DCCL_NUM_TUNABLE_FUNCS; c++) {
    make_calls(calls, c, anchor_coll, anchor_bytes);
    printf("%s\"%s\": ", c ? ", " : "", names[c]);
    measure(production, ctx, calls, per_batch, batches / 4);
  }
  printf("}}\n");
  production->finalize(ctx);
  instrumented->finalize(counted);
  free(calls);
  free(text);
  return 0;
}
