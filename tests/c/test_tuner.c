/* Drives the dynamiccl tuner plugin exactly as NCCL does, for valgrind and AddressSanitizer runs.
 *
 *   test_tuner PLUGIN.so [WORKDIR [CALLS]]  dlopen the built instrumented plugin (valgrind run)
 *   test_tuner --self [WORKDIR [CALLS]]     the instrumented plugin is linked into this program
 *                                           (-rdynamic), as the ASan/UBSan build does; same dlsym path
 *   test_tuner --production PLUGIN.so INSTRUMENTED.so [WORKDIR [CALLS]]
 *                                           the production plugin, which exports nothing else and
 *                                           has no reset: one random table for the whole process,
 *                                           every ABI compared with the reference (the instrumented
 *                                           library only answers which cells NCCL can run)
 * WORKDIR receives the table files (default: a new /tmp directory); CALLS is the number of
 * getCollInfo calls per table and ABI version (default 1500).
 *
 * For each ABI struct ncclTunerPlugin_v2 .. _v6 (looked up with dlsym): write decision tables
 * (hand-written ones with step lines and position rules, CRLF endings; random ones of 5,000 rules
 * that the plugin indexes; heavily overlapping ones, one past the index limit so that it scans
 * linearly), a missing file, a directory, an invalid file, an empty file and no table at all; set
 * DYNAMICCL_TUNER_TABLE, dynamiccl_tuner_reset, init communicators with a logger that formats its
 * variadic arguments, make many getCollInfo calls with realistic 7x3 (and NCCL 2.22's 6x3) cost
 * tables, -1 entries included, and finalize/destroy.  Every decision is compared with a reference
 * implementation of the lookup semantics written here (a linear first-match scan, the plain
 * reading of decide.c's and comm.c's header comments): the whole cost table after the call,
 * *nChannels, the rule the plugin reports, and (ABI v6) after each call a getChunkSize as NCCL's
 * scheduler makes it -- a part of that call or of an earlier one, sometimes larger, sometimes in
 * another cell -- against the reference's memory of the last decision per collective (tables with
 * chunk sizes are written in format 2, the others in format 1; one run with
 * DYNAMICCL_TUNER_NO_CHUNK=1).  Plus direct checks: a -1 cell is never set to 0, nChannels stays 0 when no
 * rule sets it, every return code is 0, one warning per bad table, the override (with its chunk),
 * getChunkSize with NULL pointers, NULL and out-of-range arguments, reset refused while a
 * communicator is open, and threads.
 *
 * Exit status 0 when every check passed, 1 otherwise (failures are printed to stderr).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tuner.h"

#define NA DCCL_NUM_ALGORITHMS
#define NP DCCL_NUM_PROTOCOLS
#define NCELLS (NA * NP)

/* ------------------------------------------------------------------------------------------ */
/* Checks                                                                                       */

static long g_checks, g_failures;

#define CHECK(cond, ...)                                                      \
  do {                                                                        \
    __atomic_fetch_add(&g_checks, 1, __ATOMIC_RELAXED);                       \
    if (!(cond)) {                                                            \
      long failures_ = __atomic_add_fetch(&g_failures, 1, __ATOMIC_RELAXED);  \
      if (failures_ <= 40) {                                                  \
        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
      }                                                                       \
    }                                                                         \
  } while (0)

static void die(const char* what) {
  fprintf(stderr, "test_tuner: %s\n", what);
  exit(2);
}

/* ------------------------------------------------------------------------------------------ */
/* The plugin, looked up as NCCL does                                                           */

typedef long (*parse_fn)(const char*, size_t, char*, size_t, long*);
typedef long (*check_file_fn)(const char*, char*, size_t, long*);
typedef int (*override_fn)(int, int, int, long long, long long);
typedef void (*stats_fn)(dccl_counters_t*, dccl_decision_t*);
typedef int (*reset_fn)(void);
typedef int (*supported_fn)(int, int, int);

static struct {
  const dccl_tuner_v2_t* v2;
  const dccl_tuner_v3_t* v3;
  const dccl_tuner_v4_t* v4;
  const dccl_tuner_v5_t* v5;
  const dccl_tuner_v6_t* v6;
  parse_fn parse;
  check_file_fn check_file;
  override_fn override;
  stats_fn stats;
  reset_fn reset;
  supported_fn supported;
} P;

static void* need(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  if (!p) {
    fprintf(stderr, "test_tuner: dlsym(%s): %s\n", name, dlerror());
    exit(2);
  }
  return p;
}

static void* open_library(const char* path) {
  void* lib = dlopen(strcmp(path, "--self") == 0 ? NULL : path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "test_tuner: dlopen(%s): %s\n", path, dlerror());
    exit(2);
  }
  return lib;
}

/* The plugin at ``path``; ``instrumented`` NULL: it is the instrumented variant, else it is the
 * production one and ``instrumented`` only answers which cells NCCL can run. */
static void load_plugin(const char* path, const char* instrumented) {
  void* lib = open_library(path);
  P.v6 = need(lib, "ncclTunerPlugin_v6");
  P.v5 = need(lib, "ncclTunerPlugin_v5");
  P.v4 = need(lib, "ncclTunerPlugin_v4");
  P.v3 = need(lib, "ncclTunerPlugin_v3");
  P.v2 = need(lib, "ncclTunerPlugin_v2");
  if (instrumented) {
    CHECK(dlsym(lib, "dynamiccl_tuner_reset") == NULL, "the production library exports dynamiccl_tuner_reset");
    *(void**)&P.supported = need(open_library(instrumented), "dynamiccl_tuner_supported");
  } else {
    *(void**)&P.parse = need(lib, "dynamiccl_tuner_parse");
    *(void**)&P.check_file = need(lib, "dynamiccl_tuner_check_file");
    *(void**)&P.override = need(lib, "dynamiccl_tuner_override");
    *(void**)&P.stats = need(lib, "dynamiccl_tuner_stats");
    *(void**)&P.reset = need(lib, "dynamiccl_tuner_reset");
    *(void**)&P.supported = need(lib, "dynamiccl_tuner_supported");
  }
  const char* names[5] = {P.v2->name, P.v3->name, P.v4->name, P.v5->name, P.v6->name};
  for (int i = 0; i < 5; i++) CHECK(names[i] && strcmp(names[i], "dynamiccl") == 0, "v%d name", i + 2);
  CHECK(P.v6->getChunkSize != NULL, "v6 getChunkSize is NULL");
  /* dlopen's reference is kept for the life of the process, as NCCL keeps the plugin loaded */
}

/* NCCL's logger: variadic, formatted with vsnprintf. */
static int g_warns, g_infos, g_other_logs;
static char g_last_warn[1200];
static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;

static void logger(dccl_log_level_t level, unsigned long flags, const char* file, int line,
                   const char* fmt, ...) {
  char message[1100];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  CHECK(flags == DCCL_LOG_FLAG_TUNING, "log flags %lx", flags);
  CHECK(file && *file && line > 0, "log file/line");
  CHECK(strncmp(message, "dynamiccl tuner: ", 17) == 0, "log message '%s'", message);
  pthread_mutex_lock(&g_log_lock);
  if (level == DCCL_LOG_WARN) {
    g_warns++;
    snprintf(g_last_warn, sizeof(g_last_warn), "%s", message);
  } else if (level == DCCL_LOG_INFO) {
    g_infos++;
  } else {
    g_other_logs++;
  }
  pthread_mutex_unlock(&g_log_lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Random numbers (xorshift64*, fixed seeds: every run is the same)                            */

static uint64_t rnd(uint64_t* s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ULL;
}
static int rnd_below(uint64_t* s, int n) { return (int)(rnd(s) % (uint64_t)n); }
static int chance(uint64_t* s, int percent) { return rnd_below(s, 100) < percent; }
static uint64_t rnd_bytes(uint64_t* s) { /* log-uniform over 0 .. 2**40, plus the extremes */
  int k = rnd_below(s, 50);
  if (k == 0) return 0;
  if (k == 1) return UINT64_MAX;
  int e = rnd_below(s, 41);
  return (1ULL << e) + (rnd(s) & ((1ULL << e) - 1));
}

/* ------------------------------------------------------------------------------------------ */
/* Tables and the reference lookup                                                              */

static const char* const kColl[5] = {"broadcast", "reduce", "allgather", "reducescatter", "allreduce"};
static const char* const kAlgo[NA] = {"tree", "ring", "collnet_direct", "collnet_chain", "nvls", "nvls_tree", "pat"};
static const char* const kProto[NP] = {"ll", "ll128", "simple"};

typedef struct {
  int coll;
  uint64_t lo, hi;
  int nranks, nnodes, position, npo, reg, algo, proto, channels;
  int chunk; /* <= 0: keep NCCL's (written as -1) */
} trule_t;

typedef struct {
  int nranks, nnodes, calls_per_step, anchor_coll;
  uint64_t anchor_bytes;
} tstep_t;

typedef struct {
  trule_t* rules;
  size_t n;
  tstep_t steps[8];
  int n_steps;
} ttable_t;

static void table_write(const char* path, const ttable_t* t, int crlf) {
  FILE* f = fopen(path, "wb");
  if (!f) die("cannot write a table file");
  const char* eol = crlf ? "\r\n" : "\n";
  int version = 1; /* format 2 only where a rule has a chunk size: both versions are read */
  for (size_t i = 0; i < t->n; i++) version = t->rules[i].chunk > 0 ? 2 : version;
  fprintf(f, "dynamiccl-tuner-table %d%s# test table%s\t  %s", version, eol, eol, eol);
  for (size_t i = 0; i < t->n; i++) {
    const trule_t* r = &t->rules[i];
    char chunk[24] = "";
    if (version == 2) snprintf(chunk, sizeof(chunk), " %d", r->chunk > 0 ? r->chunk : -1);
    fprintf(f, "rule %s %llu %llu %d %d %d %d %d %s %s %d%s%s", kColl[r->coll], (unsigned long long)r->lo,
            (unsigned long long)r->hi, r->nranks, r->nnodes, r->position, r->npo, r->reg,
            r->algo < 0 ? "-1" : kAlgo[r->algo], r->proto < 0 ? "-1" : kProto[r->proto], r->channels, chunk, eol);
  }
  for (int i = 0; i < t->n_steps; i++) {
    const tstep_t* s = &t->steps[i];
    fprintf(f, "step\t%d %d %d %s %llu%s", s->nranks, s->nnodes, s->calls_per_step, kColl[s->anchor_coll],
            (unsigned long long)s->anchor_bytes, eol);
  }
  if (fclose(f) != 0) die("cannot write a table file");
}

static void write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(text, 1, strlen(text), f) != strlen(text) || fclose(f) != 0) die("cannot write a file");
}

static int keys_match(const trule_t* r, int coll, uint64_t nbytes, int nranks, int nnodes, int position,
                      int npo, int reg) {
  return r->coll == coll && r->lo <= nbytes && nbytes <= r->hi && (r->nranks < 0 || r->nranks == nranks) &&
         (r->nnodes < 0 || r->nnodes == nnodes) && (r->position < 0 || r->position == position) &&
         (r->npo < 0 || r->npo == npo) && (r->reg < 0 || r->reg == reg);
}

/* The cheapest enabled (>= 0) cell of algorithm algo / protocol proto (-1: any), algorithm-major,
 * the first of equal costs; cost is NCCL's flat float[num_algo][NP]. */
static int ref_cheapest(const float* cost, int num_algo, int algo, int proto, int* out) {
  int found = -1;
  for (int a = 0; a < num_algo; a++)
    for (int p = 0; p < NP; p++) {
      if ((algo >= 0 && a != algo) || (proto >= 0 && p != proto) || !(cost[a * NP + p] >= 0.0f)) continue;
      if (found < 0 || cost[a * NP + p] < cost[found]) found = a * NP + p;
    }
  *out = found;
  return found >= 0;
}

/* One communicator: the plugin's context and the reference's own position counter, and its memory
 * of the last decision per collective for getChunkSize. */
typedef struct {
  int abi;
  void* ctx;
  int nranks, nnodes;
  const ttable_t* t;    /* its step lines are those of (nranks, nnodes) */
  const tstep_t* step;  /* the line being counted */
  int position;
  int no_chunk;         /* DYNAMICCL_TUNER_NO_CHUNK=1 at init */
  struct {
    uint64_t nbytes;
    int cell, chunk;    /* cell a * NP + p; chunk -1: keep NCCL's */
  } last[5];
} comm_t;

/* Counting continues on the current line for its calls_per_step calls; then the call must be the
 * anchor of one of the shape's lines (the first in file order) or the position is unknown. */
static int ref_position(comm_t* c, int coll, uint64_t nbytes) {
  if (c->step && c->position >= 0 && c->position + 1 < c->step->calls_per_step) return ++c->position;
  c->step = NULL;
  c->position = -1;
  for (int i = 0; c->t && i < c->t->n_steps; i++) {
    const tstep_t* s = &c->t->steps[i];
    if (s->nranks == c->nranks && s->nnodes == c->nnodes && s->anchor_coll == coll && s->anchor_bytes == nbytes) {
      c->step = s;
      c->position = 0;
      break;
    }
  }
  return c->position;
}

/* Reference getCollInfo, v3..v6: updates cost and *nch and the memory for getChunkSize; returns the
 * rule index, or -1. */
static long ref_decide(const ttable_t* t, comm_t* c, int coll, uint64_t nbytes, int npo, int reg, float* cost,
                       int num_algo, int* nch) {
  int position = ref_position(c, coll, nbytes);
  c->last[coll].nbytes = nbytes;
  c->last[coll].cell = c->last[coll].chunk = -1;
  for (size_t i = 0; i < t->n; i++) {
    const trule_t* r = &t->rules[i];
    int cell;
    if (!keys_match(r, coll, nbytes, c->nranks, c->nnodes, position, npo, reg)) continue;
    if (!ref_cheapest(cost, num_algo, r->algo, r->proto, &cell)) continue;
    if (r->algo >= 0 || r->proto >= 0) cost[cell] = 0.0f;
    if (r->channels > 0) *nch = r->channels;
    c->last[coll].cell = cell;
    c->last[coll].chunk = r->chunk > 0 ? r->chunk : -1;
    return (long)i;
  }
  return -1;
}

/* Reference getChunkSize: the remembered decision's chunk for a part (at most its nBytes) of the
 * remembered call of this collective in the remembered cell, else NCCL's. */
static size_t ref_chunk(const comm_t* c, int coll, uint64_t nbytes, int cell, size_t nccl_chunk) {
  if (c->no_chunk || c->last[coll].chunk <= 0 || nbytes > c->last[coll].nbytes || cell != c->last[coll].cell)
    return nccl_chunk;
  return (size_t)c->last[coll].chunk;
}

/* Reference getCollInfo, v2: only rules naming both (never LL128, collnet/nvls only when
 * supported), or channels-only rules, apply. */
static long ref_decide_v2(const ttable_t* t, comm_t* c, int coll, uint64_t nbytes, int npo, int collnet,
                          int nvls, int* algo, int* proto, int* nch) {
  int position = ref_position(c, coll, nbytes);
  for (size_t i = 0; i < t->n; i++) {
    const trule_t* r = &t->rules[i];
    if (!keys_match(r, coll, nbytes, c->nranks, c->nnodes, position, npo, 0)) continue;
    if (r->algo >= 0 || r->proto >= 0) {
      int collnet_algo = r->algo == DCCL_ALGO_COLLNET_DIRECT || r->algo == DCCL_ALGO_COLLNET_CHAIN;
      int nvls_algo = r->algo == DCCL_ALGO_NVLS || r->algo == DCCL_ALGO_NVLS_TREE;
      if (r->algo < 0 || r->proto < 0 || r->proto == DCCL_PROTO_LL128 || (collnet_algo && collnet != 1) ||
          (nvls_algo && nvls != 1))
        continue;
      *algo = r->algo;
      *proto = r->proto;
    }
    if (r->channels > 0) *nch = r->channels;
    return (long)i;
  }
  return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Driving the plugin as NCCL does                                                              */

static comm_t comm_open(int abi, int nranks, int nnodes, uint64_t comm_id, const ttable_t* t) {
  comm_t c = {abi, NULL, nranks, nnodes, t, NULL, -1, 0, {{0, -1, -1}}};
  const char* no_chunk = getenv("DYNAMICCL_TUNER_NO_CHUNK");
  c.no_chunk = no_chunk && strcmp(no_chunk, "1") == 0;
  for (int coll = 0; coll < 5; coll++) c.last[coll].cell = c.last[coll].chunk = -1;
  dccl_result_t rc;
  dccl_nvl_domain_info_v5_t nvl = {nnodes, nranks / nnodes, nranks / nnodes};
  /* NCCL's tuning constants: opaque to the plugin, passed as NCCL would (it must not touch them) */
  static _Thread_local unsigned char constants[4096];
  memset(constants, 0xA5, sizeof(constants));
  dccl_tuner_constants_v5_t* k = (dccl_tuner_constants_v5_t*)constants;
  switch (abi) {
    case 2: rc = P.v2->init((size_t)nranks, (size_t)nnodes, logger, &c.ctx); break;
    case 3: rc = P.v3->init((size_t)nranks, (size_t)nnodes, logger, &c.ctx); break;
    case 4: rc = P.v4->init((size_t)nranks, (size_t)nnodes, logger, &c.ctx); break;
    case 5: rc = P.v5->init(&c.ctx, comm_id, (size_t)nranks, (size_t)nnodes, logger, &nvl, k); break;
    default: rc = P.v6->init(&c.ctx, comm_id, (size_t)nranks, (size_t)nnodes, logger, &nvl, k); break;
  }
  CHECK(rc == DCCL_SUCCESS, "v%d init returned %d", abi, rc);
  CHECK(c.ctx != NULL, "v%d init gave no context", abi);
  if (abi >= 5) {
    int untouched = 1;
    for (size_t i = 0; i < sizeof(constants); i++) untouched &= constants[i] == 0xA5;
    CHECK(untouched, "v%d init wrote NCCL's tuning constants", abi);
  }
  return c;
}

static void comm_close(comm_t* c) {
  dccl_result_t rc;
  switch (c->abi) {
    case 2: rc = P.v2->destroy(c->ctx); break;
    case 3: rc = P.v3->destroy(c->ctx); break;
    case 4: rc = P.v4->destroy(c->ctx); break;
    case 5: rc = P.v5->finalize(c->ctx); break;
    default: rc = P.v6->finalize(c->ctx); break;
  }
  CHECK(rc == DCCL_SUCCESS, "v%d finalize/destroy returned %d", c->abi, rc);
  c->ctx = NULL;
}

/* getCollInfo v3..v6 on NCCL's float[num_algo][NP] (flat), passed cast to float**. */
static dccl_result_t call_costs(const comm_t* c, int coll, uint64_t nbytes, int npo, int reg, float* cost,
                                int num_algo, int* nch) {
  float** table = (float**)cost;
  switch (c->abi) {
    case 3: return P.v3->getCollInfo(c->ctx, (dccl_func_t)coll, nbytes, npo, table, num_algo, NP, nch);
    case 4: return P.v4->getCollInfo(c->ctx, (dccl_func_t)coll, nbytes, npo, table, num_algo, NP, reg, nch);
    case 5: return P.v5->getCollInfo(c->ctx, (dccl_func_t)coll, nbytes, npo, table, num_algo, NP, reg, nch);
    default: return P.v6->getCollInfo(c->ctx, (dccl_func_t)coll, nbytes, npo, table, num_algo, NP, reg, nch);
  }
}

/* A realistic cost table (µs: latency + bytes / bandwidth); cells NCCL cannot run, and some that a
 * mask or missing hardware disables, are -1. */
static void make_costs(uint64_t* s, int coll, uint64_t nbytes, int nranks, float* cost) {
  static const float lat[NP] = {6.8f, 14.0f, 8.4f};
  static const float bw[NA] = {20.0f, 40.0f, 60.0f, 55.0f, 150.0f, 120.0f, 35.0f};
  static const float proto_eff[NP] = {0.5f, 0.92f, 1.0f};
  int disable_all = chance(s, 1);
  for (int a = 0; a < NA; a++)
    for (int p = 0; p < NP; p++) {
      float v = DCCL_ALGO_PROTO_IGNORE;
      if (!disable_all && P.supported(coll, a, p) && !chance(s, 15)) {
        float steps = a == DCCL_ALGO_RING ? 2.0f * (float)(nranks - 1) : 2.0f * (float)(a + 1);
        v = lat[p] * steps * 0.3f + (float)((double)nbytes / (1000.0 * bw[a] * proto_eff[p]));
        v *= 1.0f + 0.01f * (float)rnd_below(s, 10);
        if (chance(s, 3)) v = 0.5f; /* ties between cells happen: the first one wins */
      }
      cost[a * NP + p] = v;
    }
}

static long long stat_calls(void) {
  dccl_counters_t counters;
  P.stats(&counters, NULL);
  return counters.calls;
}

static long long stat_ruled(int* last_rule) {
  dccl_counters_t counters;
  dccl_decision_t last;
  P.stats(&counters, &last);
  if (last_rule) *last_rule = last.rule;
  return counters.ruled;
}

/* Sets DYNAMICCL_TUNER_TABLE (NULL: unset) and forgets the previous table. */
static void use_table(const char* path) {
  CHECK(P.reset() == 0, "reset refused with no communicator open");
  if (path)
    setenv("DYNAMICCL_TUNER_TABLE", path, 1);
  else
    unsetenv("DYNAMICCL_TUNER_TABLE");
  g_warns = g_infos = g_other_logs = 0;
  g_last_warn[0] = '\0';
}

/* One call on both the plugin and the reference; compares everything.  Returns the rule. */
static long call_and_compare(const ttable_t* t, comm_t* plugin_view, comm_t* ref_view, int coll, uint64_t nbytes,
                             int npo, int reg, int collnet, int nvls, uint64_t* s) {
  int nch = 0, ref_nch = 0;
  long rule;
  if (plugin_view->abi == 2) {
    int algo = -1, proto = -1, ref_algo = -1, ref_proto = -1;
    dccl_result_t rc = P.v2->getCollInfo(plugin_view->ctx, (dccl_func_t)coll, nbytes, collnet, nvls, npo, &algo,
                                         &proto, &nch);
    rule = ref_decide_v2(t, ref_view, coll, nbytes, npo, collnet, nvls, &ref_algo, &ref_proto, &ref_nch);
    CHECK(rc == DCCL_SUCCESS, "v2 getCollInfo returned %d", rc);
    CHECK(algo == ref_algo && proto == ref_proto && nch == ref_nch,
          "v2 %s %llu bytes on %dx%d: plugin %d/%d/%d, reference %d/%d/%d (rule %ld)", kColl[coll],
          (unsigned long long)nbytes, ref_view->nranks, ref_view->nnodes, algo, proto, nch, ref_algo, ref_proto,
          ref_nch, rule);
    return rule;
  }
  int num_algo = plugin_view->abi == 3 && chance(s, 50) ? NA - 1 : NA; /* NCCL 2.22: no PAT yet */
  float cost[NCELLS], before[NCELLS], ref_cost[NCELLS];
  make_costs(s, coll, nbytes, ref_view->nranks, cost);
  memcpy(before, cost, sizeof(cost));
  memcpy(ref_cost, cost, sizeof(cost));
  int rc = call_costs(plugin_view, coll, nbytes, npo, reg, cost, num_algo, &nch);
  rule = ref_decide(t, ref_view, coll, nbytes, npo, plugin_view->abi == 3 ? 0 : reg, ref_cost, num_algo,
                    &ref_nch); /* v3 has no regBuff: the plugin reads it as 0 */
  CHECK(rc == DCCL_SUCCESS, "v%d getCollInfo returned %d", plugin_view->abi, rc);
  CHECK(memcmp(cost, ref_cost, (size_t)num_algo * NP * sizeof(float)) == 0 && nch == ref_nch,
        "v%d %s %llu bytes on %dx%d npo %d reg %d: cost table or nChannels (%d, reference %d) differ from "
        "the reference (rule %ld)", plugin_view->abi, kColl[coll], (unsigned long long)nbytes, ref_view->nranks,
        ref_view->nnodes, npo, reg, nch, ref_nch, rule);
  int zeros = 0;
  for (int i = 0; i < num_algo * NP; i++) {
    CHECK(!(before[i] < 0.0f) || cost[i] == before[i], "v%d revived a disabled cell %d", plugin_view->abi, i);
    zeros += cost[i] != before[i];
  }
  CHECK(zeros <= 1 && (zeros == 0 || rule >= 0), "v%d changed %d cells", plugin_view->abi, zeros);
  CHECK(rule >= 0 || nch == 0, "v%d set nChannels %d with no rule", plugin_view->abi, nch);
  if (plugin_view->abi == 6) { /* NCCL's scheduler: getChunkSize for a part of a task it decided */
    int cell = -1; /* the cell NCCL runs: its arg-min over the table the plugin left */
    for (int i = 0; i < num_algo * NP; i++)
      if (cost[i] >= 0.0f && (cell < 0 || cost[i] < cost[cell])) cell = i;
    int q = chance(s, 75) ? coll : rnd_below(s, 5); /* sometimes another collective's part */
    uint64_t part = ref_view->last[q].nbytes;
    int kind = rnd_below(s, 4);
    if (kind == 1) part = part / (1 + (uint64_t)rnd_below(s, 64)); /* one channel's part */
    if (kind == 2 && part < UINT64_MAX) part++;                    /* larger: not this decision's */
    if (q != coll) cell = ref_view->last[q].cell;
    if (chance(s, 10) || cell < 0) cell = rnd_below(s, num_algo * NP); /* another cell */
    size_t chunk = 131072, expected = ref_chunk(ref_view, q, part, cell, 131072);
    CHECK(P.v6->getChunkSize(plugin_view->ctx, (dccl_func_t)q, part, cell / NP, cell % NP, 1, &chunk) ==
              DCCL_SUCCESS && chunk == expected,
          "v6 getChunkSize %s %llu bytes cell %d after %s %llu bytes: %zu, reference %zu", kColl[q],
          (unsigned long long)part, cell, kColl[coll], (unsigned long long)nbytes, chunk, expected);
  }
  return rule;
}

/* ------------------------------------------------------------------------------------------ */
/* Scenarios                                                                                    */

static char g_dir[4096];

static void path_in_dir(char* out, size_t n, const char* name) { snprintf(out, n, "%s/%s", g_dir, name); }

static const trule_t kSmallRules[] = {
    /* coll lo hi nranks nnodes position npo reg algo proto channels chunk */
    {DCCL_FUNC_ALLREDUCE, 0, 65535, 16, 2, -1, -1, -1, DCCL_ALGO_RING, DCCL_PROTO_LL128, 8, -1},
    {DCCL_FUNC_ALLREDUCE, 65536, 1048575, 16, 2, -1, -1, -1, DCCL_ALGO_TREE, -1, -1, -1},
    {DCCL_FUNC_ALLREDUCE, 1048576, UINT64_MAX, -1, -1, -1, -1, -1, -1, DCCL_PROTO_SIMPLE, 4, -1},
    {DCCL_FUNC_ALLGATHER, 0, UINT64_MAX, 16, 2, -1, -1, -1, -1, -1, 2, -1},
    {DCCL_FUNC_REDUCESCATTER, 0, 4096, -1, -1, 1, -1, -1, DCCL_ALGO_RING, DCCL_PROTO_LL, -1, -1},
    {DCCL_FUNC_BROADCAST, 0, UINT64_MAX, -1, -1, -1, 2, -1, DCCL_ALGO_RING, DCCL_PROTO_SIMPLE, 3, -1},
    {DCCL_FUNC_REDUCE, 0, UINT64_MAX, -1, -1, -1, -1, 1, DCCL_ALGO_RING, DCCL_PROTO_LL, 5, -1},
    {DCCL_FUNC_ALLREDUCE, 0, UINT64_MAX, 8, 1, -1, -1, -1, DCCL_ALGO_NVLS, DCCL_PROTO_SIMPLE, 16, -1},
};

static ttable_t small_table(void) {
  ttable_t t = {(trule_t*)kSmallRules, sizeof(kSmallRules) / sizeof(kSmallRules[0]), {{0}}, 2};
  t.steps[0] = (tstep_t){16, 2, 3, DCCL_FUNC_ALLREDUCE, 1048576};
  t.steps[1] = (tstep_t){16, 2, 2, DCCL_FUNC_ALLGATHER, 4096}; /* a second anchor of the same shape */
  return t;
}

static void all_costs(float* cost, float value) {
  for (int i = 0; i < NCELLS; i++) cost[i] = value + (float)i;
}

/* Hand-picked decisions on the small table, for the ABI with cost tables. */
static void small_direct_checks(int abi) {
  comm_t c = comm_open(abi, 16, 2, 0x1234, NULL);
  float cost[NCELLS], before[NCELLS];
  int nch = 0;
  const int ring_ll128 = DCCL_ALGO_RING * NP + DCCL_PROTO_LL128;
  all_costs(cost, 10.0f);
  memcpy(before, cost, sizeof(cost));
  CHECK(call_costs(&c, DCCL_FUNC_ALLREDUCE, 1000, 1, 0, cost, NA, &nch) == DCCL_SUCCESS, "rc");
  CHECK(cost[ring_ll128] == 0.0f && nch == 8, "v%d ring/ll128 rule: cell %g, nChannels %d", abi, cost[ring_ll128], nch);
  before[ring_ll128] = 0.0f;
  CHECK(memcmp(cost, before, sizeof(cost)) == 0, "v%d touched another cell", abi);

  all_costs(cost, 10.0f);
  cost[ring_ll128] = DCCL_ALGO_PROTO_IGNORE; /* NCCL disabled LL128 */
  memcpy(before, cost, sizeof(cost));
  nch = 0;
  CHECK(call_costs(&c, DCCL_FUNC_ALLREDUCE, 1000, 1, 0, cost, NA, &nch) == DCCL_SUCCESS, "rc");
  CHECK(cost[ring_ll128] == DCCL_ALGO_PROTO_IGNORE, "v%d revived a disabled cell: %g", abi, cost[ring_ll128]);
  CHECK(memcmp(cost, before, sizeof(cost)) == 0 && nch == 0, "v%d: no rule applies, yet nChannels %d", abi, nch);

  all_costs(cost, 10.0f);
  memcpy(before, cost, sizeof(cost));
  nch = 0;
  CHECK(call_costs(&c, DCCL_FUNC_ALLGATHER, 1 << 20, 1, 0, cost, NA, &nch) == DCCL_SUCCESS, "rc");
  CHECK(memcmp(cost, before, sizeof(cost)) == 0 && nch == 2, "v%d channels-only rule: nChannels %d", abi, nch);

  /* position: the anchor (allreduce 1 MiB) is position 0, the next call position 1 */
  all_costs(cost, 10.0f);
  nch = 0;
  call_costs(&c, DCCL_FUNC_ALLREDUCE, 1048576, 1, 0, cost, NA, &nch);
  all_costs(cost, 10.0f);
  nch = 0;
  call_costs(&c, DCCL_FUNC_REDUCESCATTER, 100, 1, 0, cost, NA, &nch);
  CHECK(cost[DCCL_ALGO_RING * NP + DCCL_PROTO_LL] == 0.0f && nch == 0, "v%d position rule not applied", abi);
  all_costs(cost, 10.0f);
  memcpy(before, cost, sizeof(cost));
  call_costs(&c, DCCL_FUNC_REDUCESCATTER, 100, 1, 0, cost, NA, &nch); /* position 2 */
  CHECK(memcmp(cost, before, sizeof(cost)) == 0, "v%d position rule applied at the wrong position", abi);

  /* NVLS rule on an 8x1 communicator where NCCL has no NVLS: never revived */
  comm_t d = comm_open(abi, 8, 1, 0x5678, NULL);
  all_costs(cost, 10.0f);
  for (int p = 0; p < NP; p++) cost[DCCL_ALGO_NVLS * NP + p] = DCCL_ALGO_PROTO_IGNORE;
  memcpy(before, cost, sizeof(cost));
  nch = 0;
  call_costs(&d, DCCL_FUNC_ALLREDUCE, 4096, 1, 0, cost, NA, &nch);
  CHECK(memcmp(cost, before, sizeof(cost)) == 0 && nch == 0, "v%d NVLS revived or nChannels %d", abi, nch);

  /* arguments NCCL never passes, or passes for collectives the tuner is not asked about */
  all_costs(cost, 10.0f);
  memcpy(before, cost, sizeof(cost));
  nch = 0;
  CHECK(call_costs(&d, DCCL_FUNC_SENDRECV, 4096, 1, 0, cost, NA, &nch) == DCCL_SUCCESS, "rc");
  CHECK(call_costs(&d, (int)-1, 4096, 1, 0, cost, NA, &nch) == DCCL_SUCCESS, "rc");
  CHECK(call_costs(&d, DCCL_FUNC_ALLREDUCE, 4096, 1, 0, cost, 0, &nch) == DCCL_SUCCESS, "rc");
  comm_t null_ctx = d;
  null_ctx.ctx = NULL;
  CHECK(call_costs(&null_ctx, DCCL_FUNC_ALLREDUCE, 4096, 1, 0, cost, NA, &nch) == DCCL_SUCCESS, "rc");
  CHECK(call_costs(&d, DCCL_FUNC_ALLREDUCE, 4096, 1, 0, NULL, NA, &nch) == DCCL_SUCCESS, "rc");
  CHECK(call_costs(&d, DCCL_FUNC_ALLREDUCE, 4096, 1, 0, cost, NA, NULL) == DCCL_SUCCESS, "rc");
  CHECK(memcmp(cost, before, sizeof(cost)) == 0 && nch == 0, "v%d: an ignored call changed something", abi);

  if (abi == 6) {
    size_t chunk = 131072;
    CHECK(P.v6->getChunkSize(c.ctx, DCCL_FUNC_ALLREDUCE, 1 << 20, DCCL_ALGO_RING, DCCL_PROTO_SIMPLE, 8, &chunk) ==
              DCCL_SUCCESS && chunk == 131072, "getChunkSize changed the chunk to %zu", chunk);
    CHECK(P.v6->getChunkSize(NULL, DCCL_FUNC_ALLREDUCE, 1, 0, 0, 0, &chunk) == DCCL_SUCCESS, "getChunkSize(NULL)");
    CHECK(P.v6->getChunkSize(c.ctx, DCCL_FUNC_ALLREDUCE, 1, 0, 0, 0, NULL) == DCCL_SUCCESS, "getChunkSize(NULL ptr)");
    CHECK(P.v6->getChunkSize(c.ctx, DCCL_FUNC_SENDRECV, 1, 0, 0, 0, &chunk) == DCCL_SUCCESS && chunk == 131072,
          "getChunkSize(SendRecv)");
    CHECK(P.v6->getChunkSize(c.ctx, (dccl_func_t)-1, 1, 0, 0, 0, &chunk) == DCCL_SUCCESS && chunk == 131072,
          "getChunkSize(-1)");
  }
  CHECK(P.reset() == -1, "reset allowed while communicators are open");
  comm_close(&d);
  comm_close(&c);
}

static void small_direct_checks_v2(void) {
  comm_t c = comm_open(2, 16, 2, 0, NULL);
  int algo = -1, proto = -1, nch = 0;
  P.v2->getCollInfo(c.ctx, DCCL_FUNC_ALLREDUCE, 1000, 0, 0, 1, &algo, &proto, &nch);
  CHECK(algo == -1 && proto == -1 && nch == 0, "v2 applied an LL128 rule: %d/%d/%d", algo, proto, nch);
  P.v2->getCollInfo(c.ctx, DCCL_FUNC_BROADCAST, 1000, 0, 0, 2, &algo, &proto, &nch);
  CHECK(algo == DCCL_ALGO_RING && proto == DCCL_PROTO_SIMPLE && nch == 3, "v2 broadcast: %d/%d/%d", algo, proto, nch);
  algo = proto = -1;
  nch = 0;
  P.v2->getCollInfo(c.ctx, DCCL_FUNC_ALLREDUCE, 1 << 24, 0, 0, 1, &algo, &proto, &nch);
  CHECK(algo == -1 && proto == -1 && nch == 0, "v2 applied a protocol-only rule: %d/%d/%d", algo, proto, nch);
  comm_t d = comm_open(2, 8, 1, 0, NULL);
  P.v2->getCollInfo(d.ctx, DCCL_FUNC_ALLREDUCE, 4096, 0, 0, 1, &algo, &proto, &nch);
  CHECK(algo == -1 && proto == -1 && nch == 0, "v2 applied NVLS without NVLS support: %d/%d/%d", algo, proto, nch);
  P.v2->getCollInfo(d.ctx, DCCL_FUNC_ALLREDUCE, 4096, 0, 1, 1, &algo, &proto, &nch);
  CHECK(algo == DCCL_ALGO_NVLS && proto == DCCL_PROTO_SIMPLE && nch == 16, "v2 NVLS: %d/%d/%d", algo, proto, nch);
  CHECK(P.v2->getCollInfo(NULL, DCCL_FUNC_ALLREDUCE, 4096, 0, 1, 1, &algo, &proto, &nch) == DCCL_SUCCESS, "rc");
  CHECK(P.v2->getCollInfo(d.ctx, DCCL_FUNC_SEND, 4096, 0, 1, 1, &algo, &proto, &nch) == DCCL_SUCCESS, "rc");
  CHECK(P.v2->init(4, 1, logger, NULL) == DCCL_SUCCESS, "v2 init with a NULL context");
  comm_close(&d);
  comm_close(&c);
}

/* Many calls on several communicators (interleaved), each compared with the reference. */
static void random_calls(int abi, const ttable_t* t, int calls, uint64_t seed) {
  static const int shapes[4][2] = {{16, 2}, {8, 1}, {16, 4}, {32, 4}};
  comm_t plugin[4], ref[4];
  for (int i = 0; i < 4; i++) {
    plugin[i] = comm_open(abi, shapes[i][0], shapes[i][1], 0x1000 + (uint64_t)i, t);
    ref[i] = plugin[i];
  }
  uint64_t s = seed;
  const int counted = P.stats != NULL; /* the production library has no counters */
  long long calls_before = counted ? stat_calls() : 0, ruled_before = counted ? stat_ruled(NULL) : 0, ruled = 0;
  for (int k = 0; k < calls; k++) {
    int i = rnd_below(&s, 4);
    int coll;
    uint64_t nbytes;
    const tstep_t* step = t->n_steps ? &t->steps[rnd_below(&s, t->n_steps)] : NULL;
    if (step && chance(&s, 15)) { /* a step line's anchor, so that positions get counted */
      coll = step->anchor_coll;
      nbytes = step->anchor_bytes;
    } else if (t->n && chance(&s, 60)) { /* on or next to a rule's boundary */
      const trule_t* r = &t->rules[rnd_below(&s, (int)t->n)];
      coll = chance(&s, 90) ? r->coll : rnd_below(&s, 5);
      uint64_t edges[4] = {r->lo, r->hi, r->lo - 1, r->hi + 1};
      nbytes = edges[rnd_below(&s, 4)];
    } else {
      coll = rnd_below(&s, 5);
      nbytes = rnd_bytes(&s);
    }
    int npo = chance(&s, 80) ? 1 : 1 + rnd_below(&s, 3);
    int reg = chance(&s, 70) ? 0 : 1;
    int collnet = chance(&s, 50), nvls = chance(&s, 50);
    long rule = call_and_compare(t, &plugin[i], &ref[i], coll, nbytes, npo, reg, collnet, nvls, &s);
    if (rule >= 0 && counted) {
      int last_rule;
      ruled++;
      stat_ruled(&last_rule);
      CHECK(last_rule == rule, "v%d: the plugin reports rule %d, the reference %ld", abi, last_rule, rule);
    }
  }
  if (counted) {
    CHECK(stat_calls() - calls_before == calls, "v%d: calls counted %lld, made %d", abi,
          stat_calls() - calls_before, calls);
    CHECK(stat_ruled(NULL) - ruled_before == ruled, "v%d: ruled counted %lld, reference %lld", abi,
          stat_ruled(NULL) - ruled_before, ruled);
  }
  for (int i = 0; i < 4; i++) comm_close(&plugin[i]);
}

/* A valid random rule for coll (supported algorithm / protocol, as the parser demands). */
static trule_t random_rule(uint64_t* s, int coll, int overlap) {
  static const int nranks_choices[4] = {-1, 16, 8, 32};
  trule_t r = {coll, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1};
  if (overlap) { /* nested ranges: every rule covers most of the byte axis */
    r.lo = rnd(s) % (1ULL << 20);
    r.hi = chance(s, 20) ? UINT64_MAX : (1ULL << 30) + rnd(s) % (UINT64_MAX - (1ULL << 30));
  } else {
    r.lo = rnd_bytes(s);
    if (r.lo == UINT64_MAX) r.lo = 1ULL << 40;
    if (chance(s, 10)) {
      r.hi = UINT64_MAX;
    } else {
      uint64_t widest = (1ULL << rnd_below(s, 30)) + 1; /* one draw per statement: a fixed order */
      r.hi = r.lo + rnd(s) % widest;
    }
  }
  if (chance(s, 50)) {
    r.nranks = nranks_choices[1 + rnd_below(s, 3)];
    if (chance(s, 70)) r.nnodes = 1 << rnd_below(s, 3); /* 1, 2 or 4 <= nranks */
  }
  if (chance(s, 20)) r.position = rnd_below(s, 6);
  if (chance(s, 15)) r.npo = 1 + rnd_below(s, 3);
  if (chance(s, 15)) r.reg = rnd_below(s, 2);
  if (chance(s, 70)) {
    int a;
    do a = rnd_below(s, NA);
    while (!(P.supported(coll, a, 0) || P.supported(coll, a, 1) || P.supported(coll, a, 2)));
    r.algo = a;
  }
  if (chance(s, 60)) {
    int p;
    if (r.algo >= 0) {
      do p = rnd_below(s, NP);
      while (!P.supported(coll, r.algo, p));
    } else {
      p = rnd_below(s, NP); /* ring runs every protocol of every collective */
    }
    r.proto = p;
  }
  if (chance(s, 40)) r.channels = 1 + rnd_below(s, DCCL_MAX_CHANNELS);
  if (chance(s, 40)) r.chunk = 4096 << rnd_below(s, 15); /* 4 KiB .. 64 MiB */
  return r;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/* A lower bound of the plugin's index entries for a table whose rules (one collective, any
 * shape) all start below 2**20 and end at or above it: the rule with the k-th smallest of d
 * distinct starts covers at least the segments beginning at the later starts, d (d + 1) / 2 in all. */
static uint64_t index_entries_at_least(const ttable_t* t) {
  uint64_t* starts = malloc(t->n * sizeof(uint64_t) + 1);
  if (!starts) die("out of memory");
  for (size_t i = 0; i < t->n; i++) {
    CHECK(t->rules[i].lo < (1u << 20) && t->rules[i].hi >= (1u << 20), "rule %zu is not nested", i);
    starts[i] = t->rules[i].lo;
  }
  qsort(starts, t->n, sizeof(uint64_t), cmp_u64);
  uint64_t distinct = 0;
  for (size_t i = 0; i < t->n; i++) distinct += i == 0 || starts[i] != starts[i - 1];
  free(starts);
  return distinct * (distinct + 1) / 2;
}

static ttable_t random_table(uint64_t seed, size_t n, int overlap, int only_coll) {
  ttable_t t = {calloc(n, sizeof(trule_t)), n, {{0}}, 4};
  uint64_t s = seed;
  if (!t.rules) die("out of memory");
  for (size_t i = 0; i < n; i++) t.rules[i] = random_rule(&s, only_coll >= 0 ? only_coll : rnd_below(&s, 5), overlap);
  /* anchors at rules' edges; two lines (different anchors, same shape) for 16 x 2 */
  static const int shapes[4][2] = {{16, 2}, {8, 1}, {16, 2}, {32, 4}};
  for (int i = 0; i < t.n_steps; i++) {
    const trule_t* anchor = &t.rules[rnd_below(&s, (int)n)];
    t.steps[i] = (tstep_t){shapes[i][0], shapes[i][1], 1 + rnd_below(&s, 6), anchor->coll, i % 2 ? anchor->hi : anchor->lo};
  }
  if (t.steps[2].anchor_coll == t.steps[0].anchor_coll && t.steps[2].anchor_bytes == t.steps[0].anchor_bytes)
    t.steps[2].anchor_bytes++; /* one line per (shape, anchor) */
  return t;
}

static void check_file_ok(const char* path, long rules, long steps) {
  char err[512];
  long n_steps = -1, n = P.check_file(path, err, sizeof(err), &n_steps);
  CHECK(n == rules && n_steps == steps, "check_file(%s) = %ld rules, %ld steps (%s); expected %ld, %ld", path, n,
        n_steps, err, rules, steps);
}

/* Write a table, make the plugin load it, and compare many calls with the reference. */
static void run_table(int abi, const char* name, const ttable_t* t, int crlf, int calls, uint64_t seed) {
  char path[4200];
  path_in_dir(path, sizeof(path), name);
  table_write(path, t, crlf);
  check_file_ok(path, (long)t->n, t->n_steps);
  use_table(path);
  random_calls(abi, t, calls, seed);
  CHECK(g_warns == 0, "v%d %s: %s", abi, name, g_last_warn);
}

static void scenario_tables(int abi, int calls) {
  /* the small hand-written table (CRLF on even ABI versions): direct checks first */
  ttable_t small = small_table();
  char path[4200];
  path_in_dir(path, sizeof(path), "small.txt");
  table_write(path, &small, abi % 2 == 0);
  use_table(path);
  if (abi == 2)
    small_direct_checks_v2();
  else
    small_direct_checks(abi);
  CHECK(g_warns == 0 && g_infos >= 2, "v%d small table: %d warnings (%s), %d infos", abi, g_warns, g_last_warn, g_infos);
  run_table(abi, "small.txt", &small, abi % 2 == 0, calls, 11 + (uint64_t)abi);

  /* 5,000 random rules: the plugin indexes them by byte segment */
  ttable_t big = random_table(1000 + (uint64_t)abi, 5000, 0, -1);
  run_table(abi, "big.txt", &big, 0, calls, 21 + (uint64_t)abi);
  if (abi == 6) { /* the launcher's switch: NCCL's chunk on every communicator opened with it */
    setenv("DYNAMICCL_TUNER_NO_CHUNK", "1", 1);
    run_table(abi, "big.txt", &big, 0, calls / 3, 41);
    unsetenv("DYNAMICCL_TUNER_NO_CHUNK");
  }
  free(big.rules);

  /* heavily overlapping ranges: indexed (each segment lists hundreds of rules) ... */
  ttable_t dense = random_table(2000 + (uint64_t)abi, 1500, 1, -1);
  run_table(abi, "overlap.txt", &dense, 0, calls, 31 + (uint64_t)abi);
  free(dense.rules);
}

/* ... and past the index limit (2**24 entries): the plugin scans the rules linearly. */
static void scenario_linear(int abi, int calls) {
  ttable_t t = random_table(3000 + (uint64_t)abi, 7000, 1, DCCL_FUNC_ALLREDUCE);
  for (size_t i = 0; i < t.n; i++) t.rules[i].nranks = t.rules[i].nnodes = -1;
  CHECK(index_entries_at_least(&t) > (1u << 24), "the linear scenario is within the index limit");
  run_table(abi, "linear.txt", &t, 0, calls, 41 + (uint64_t)abi);
  free(t.rules);
}

/* Missing, unreadable, invalid, empty or unset tables: one warning, NCCL decides every call. */
static void scenario_bad(int abi, const char* name, const char* content, const char* expect_in_warning) {
  char path[4200] = "";
  if (name) {
    path_in_dir(path, sizeof(path), name);
    if (content) write_file(path, content);
    char err[512];
    CHECK(P.check_file(path, err, sizeof(err), NULL) == -1 && err[0], "check_file accepted %s", name);
  }
  use_table(name ? path : NULL);
  ttable_t empty = {NULL, 0, {{0}}, 0};
  comm_t plugin[3], ref[3];
  static const int shapes[3][2] = {{16, 2}, {16, 2}, {8, 1}};
  for (int i = 0; i < 3; i++) {
    plugin[i] = comm_open(abi, shapes[i][0], shapes[i][1], (uint64_t)i, NULL);
    ref[i] = plugin[i];
  }
  uint64_t s = 99;
  for (int k = 0; k < 60; k++) {
    int i = k % 3;
    int coll = rnd_below(&s, 5);
    long rule = call_and_compare(&empty, &plugin[i], &ref[i], coll, rnd_bytes(&s), 1, 0, 1, 1, &s);
    CHECK(rule == -1, "a rule applied with no table");
  }
  for (int i = 0; i < 3; i++) comm_close(&plugin[i]);
  CHECK(g_warns == 1, "v%d %s: %d warnings, expected 1", abi, name ? name : "(unset)", g_warns);
  CHECK(strstr(g_last_warn, expect_in_warning) != NULL, "v%d warning '%s' lacks '%s'", abi, g_last_warn,
        expect_in_warning);
  CHECK(g_other_logs == 0, "unexpected log levels");
}

static void scenario_override(int abi) {
  use_table(NULL);
  comm_t c = comm_open(abi, 16, 2, 7, NULL);
  CHECK(g_warns == 1, "no table: %d warnings", g_warns);
  CHECK(P.override(DCCL_NUM_ALGORITHMS, -1, -1, -1, 1) == -1 && P.override(-1, -1, 0, -1, 1) == -1 &&
            P.override(-1, -1, -1, 1000, 1) == -1 && P.override(-1, -1, -1, 2048, 1) == -1 &&
            P.override(-1, -1, -1, 128LL << 20, 1) == -1 && P.override(-1, -1, -1, 0, 1) == -1,
        "bad override accepted");
  CHECK(P.override(DCCL_ALGO_RING, DCCL_PROTO_SIMPLE, 2, 262144, 2) == 0, "override refused");
  const int cell = DCCL_ALGO_RING * NP + DCCL_PROTO_SIMPLE;
  for (int k = 0; k < 3; k++) {
    int nch = 0;
    if (abi == 2) {
      int algo = -1, proto = -1;
      P.v2->getCollInfo(c.ctx, DCCL_FUNC_ALLREDUCE, 4096, 0, 0, 1, &algo, &proto, &nch);
      CHECK(k < 2 ? (algo == DCCL_ALGO_RING && proto == DCCL_PROTO_SIMPLE && nch == 2) : (algo == -1 && nch == 0),
            "v2 override call %d: %d/%d/%d", k, algo, proto, nch);
    } else {
      float cost[NCELLS];
      all_costs(cost, 5.0f);
      call_costs(&c, DCCL_FUNC_ALLREDUCE, 4096, 1, 0, cost, NA, &nch);
      CHECK(k < 2 ? (cost[cell] == 0.0f && nch == 2) : (cost[cell] > 0.0f && nch == 0),
            "v%d override call %d: cell %g, nChannels %d", abi, k, cost[cell], nch);
      if (abi == 6) { /* the forced chunk, for the forced cell only */
        size_t chunk = 131072, other = 131072;
        P.v6->getChunkSize(c.ctx, DCCL_FUNC_ALLREDUCE, 4096, DCCL_ALGO_RING, DCCL_PROTO_SIMPLE, 1, &chunk);
        P.v6->getChunkSize(c.ctx, DCCL_FUNC_ALLREDUCE, 4096, DCCL_ALGO_RING, DCCL_PROTO_LL, 1, &other);
        CHECK(chunk == (k < 2 ? 262144u : 131072u) && other == 131072, "v6 override call %d: chunk %zu / %zu", k,
              chunk, other);
      }
    }
  }
  if (abi >= 3) { /* forcing a cell NCCL disabled is refused: NCCL decides */
    float cost[NCELLS], before[NCELLS];
    int nch = 0;
    all_costs(cost, 5.0f);
    cost[cell] = DCCL_ALGO_PROTO_IGNORE;
    memcpy(before, cost, sizeof(cost));
    P.override(DCCL_ALGO_RING, DCCL_PROTO_SIMPLE, 2, -1, -1);
    call_costs(&c, DCCL_FUNC_ALLREDUCE, 4096, 1, 0, cost, NA, &nch);
    CHECK(memcmp(cost, before, sizeof(cost)) == 0 && nch == 0, "v%d override revived a disabled cell", abi);
    dccl_counters_t counters;
    P.stats(&counters, NULL);
    CHECK(counters.overridden == 2 && counters.refused == 1, "v%d override counters %lld/%lld", abi,
          counters.overridden, counters.refused);
    P.override(-1, -1, -1, -1, 0);
  }
  comm_close(&c);
}

/* Several threads plan collectives at once, each on its own communicator (as NCCL does). */
typedef struct {
  int abi, calls;
  const ttable_t* t;
  uint64_t seed;
} thread_arg_t;

static void* thread_main(void* p) {
  const thread_arg_t* a = p;
  comm_t c = comm_open(a->abi, 16, 2, a->seed, a->t), ref = c;
  uint64_t s = a->seed;
  for (int k = 0; k < a->calls; k++) {
    const trule_t* r = &a->t->rules[rnd_below(&s, (int)a->t->n)];
    call_and_compare(a->t, &c, &ref, r->coll, chance(&s, 50) ? r->lo : r->hi, 1, 0, 1, 1, &s);
  }
  comm_close(&c);
  return NULL;
}

static void scenario_threads(int calls) {
  char path[4200];
  ttable_t t = random_table(4000, 2000, 0, -1);
  path_in_dir(path, sizeof(path), "threads.txt");
  table_write(path, &t, 0);
  use_table(path);
  pthread_t threads[4];
  thread_arg_t args[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (thread_arg_t){i % 2 ? 6 : 4, calls, &t, 500 + (uint64_t)i};
    if (pthread_create(&threads[i], NULL, thread_main, &args[i]) != 0) die("pthread_create");
  }
  for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
  CHECK(g_warns == 0, "threads: %s", g_last_warn);
  free(t.rules);
}

/* The production library: no reset, so one table for the whole process (the first init reads it);
 * every ABI decides random calls exactly as the reference. */
static void scenario_production(int calls) {
  char path[4200];
  ttable_t t = random_table(4242, 3000, 0, -1);
  path_in_dir(path, sizeof(path), "production.txt");
  table_write(path, &t, 0);
  setenv("DYNAMICCL_TUNER_TABLE", path, 1);
  for (int abi = 2; abi <= 6; abi++) random_calls(abi, &t, calls, 900 + (uint64_t)abi);
  CHECK(g_warns == 0, "production: %s", g_last_warn);
  CHECK(g_infos > 5, "production: %d info messages; expected the table's and one per communicator", g_infos);
  free(t.rules);
}

int main(int argc, char** argv) {
  const int production = argc > 1 && strcmp(argv[1], "--production") == 0;
  const int first = production ? 3 : 1; /* the plugin argument(s) come first */
  if (argc < first + 1) {
    fprintf(stderr, "usage: %s PLUGIN.so|--self|--production PLUGIN.so INSTRUMENTED.so [WORKDIR] [CALLS]\n",
            argv[0]);
    return 2;
  }
  load_plugin(argv[production ? 2 : 1], production ? argv[3] : NULL);
  if (argc > first + 1) {
    snprintf(g_dir, sizeof(g_dir), "%s", argv[first + 1]);
  } else {
    snprintf(g_dir, sizeof(g_dir), "/tmp/test_tuner.XXXXXX");
    if (!mkdtemp(g_dir)) die("mkdtemp");
  }
  int calls = argc > first + 2 ? atoi(argv[first + 2]) : 1500;
  unsetenv("NCCL_ALGO");
  unsetenv("NCCL_PROTO");

  if (production) {
    scenario_production(calls);
    printf("test_tuner: %ld checks, %ld failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
  }
  char dir_path[4200];
  path_in_dir(dir_path, sizeof(dir_path), "a-directory");
  if (mkdir(dir_path, 0755) != 0 && errno != EEXIST) die("mkdir");

  for (int abi = 2; abi <= 6; abi++) {
    scenario_tables(abi, calls);
    scenario_bad(abi, "missing.txt", NULL, "cannot open");
    scenario_bad(abi, "a-directory", NULL, "read error");
    scenario_bad(abi, "invalid.txt", "dynamiccl-tuner-table 1\n# ok so far\nrule allreduce 0 10 -1 -1 -1 -1 -1 ring ll -1\n"
                 "rule allreduce 10 0 -1 -1 -1 -1 -1 ring ll -1\n", "line 4, field min_bytes");
    scenario_bad(abi, "empty.txt", "", "empty file");
    scenario_bad(abi, "no-header.txt", "rule allreduce 0 10 -1 -1 -1 -1 -1 ring ll -1\n", "expected the header");
    scenario_bad(abi, NULL, NULL, "is not set");
    scenario_override(abi);
  }
  for (int abi = 2; abi <= 6; abi += 4) scenario_linear(abi, calls / 3);
  scenario_threads(calls);
  CHECK(P.reset() == 0, "final reset");

  printf("test_tuner: %ld checks, %ld failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
