/* dynamiccl's NCCL tuner plugin: applies a decision table inside unmodified NCCL.
 *
 * NCCL loads this library through NCCL_TUNER_PLUGIN and calls, per communicator, init once,
 * getCollInfo for every collective it plans, and finalize/destroy at the end.  The decision
 * table's path comes from DYNAMICCL_TUNER_TABLE; the file is the plain-text form of a dynamiccl
 * DecisionTable (dynamiccl/plugin/table_text.py writes it):
 *
 *   dynamiccl-tuner-table 1
 *   # coll min_bytes max_bytes nranks nnodes position num_pipe_ops reg_buff algorithm protocol channels
 *   rule allreduce 0 65535 16 2 -1 -1 -1 ring ll128 8
 *   # nranks nnodes calls_per_step anchor_coll anchor_bytes
 *   step 16 2 96 allreduce 1048576
 *
 * Lookup (identical to dynamiccl.decision_table.DecisionTable.choose): the first rule whose keys
 * match the call and that asks for at least one cell NCCL left enabled wins; it picks its
 * cheapest enabled cell (NCCL's cost order), which is set to 0.0 in NCCL's cost table so that
 * NCCL's own arg-min selects it.  A cell NCCL disabled (< 0) is never revived, nChannels stays 0
 * ("NCCL decides") unless the rule sets it, and getCollInfo always returns success.  A missing or
 * invalid table is reported once through NCCL's logger and leaves every choice to NCCL.
 *
 * A call's position in the training step, for position rules, comes from a per-communicator
 * counter: after a call matching the anchor (collective and nBytes) of one of the step lines of
 * the communicator's shape (nranks, nnodes; the first such line in file order) the position is 0
 * and counts up; once that line's calls_per_step calls have passed, the next call must be an
 * anchor again or the position becomes unknown (-1) until an anchor is seen.  Every rank of a
 * communicator sees the same sequence of collectives, so every rank decides alike.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tuner_abi.h"

#define DCCL_PLUGIN_NAME "dynamiccl"
#define DCCL_PLUGIN_VERSION "1"
#define DCCL_TABLE_ENV "DYNAMICCL_TUNER_TABLE"
#define DCCL_TABLE_HEADER "dynamiccl-tuner-table 1"
#define DCCL_MAX_LINE_BYTES 511              /* without the newline */
#define DCCL_MAX_TOKENS 16
#define DCCL_MAX_RULES 1000000
#define DCCL_MAX_STEPS 4096                 /* duplicates are checked pairwise */
#define DCCL_MAX_FILE_BYTES (256L << 20)
#define DCCL_MAX_INDEX_ENTRIES (1u << 24)    /* beyond this a communicator scans its rules */
#define DCCL_ERR_BYTES 512

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary                                                                                   */

static const char* const kCollNames[DCCL_NUM_TUNABLE_FUNCS] = {
    "broadcast", "reduce", "allgather", "reducescatter", "allreduce"};
static const char* const kAlgoNames[DCCL_NUM_ALGORITHMS] = {
    "tree", "ring", "collnet_direct", "collnet_chain", "nvls", "nvls_tree", "pat"};
static const char* const kProtoNames[DCCL_NUM_PROTOCOLS] = {"ll", "ll128", "simple"};

/* Which (collective, algorithm, protocol) NCCL can run at all; bit p of kSupported[c][a] is set
 * for protocol p.  Mirrors dynamiccl.nccl.is_supported (a test compares them). */
#define LL (1 << DCCL_PROTO_LL)
#define LL128 (1 << DCCL_PROTO_LL128)
#define SIMPLE (1 << DCCL_PROTO_SIMPLE)
static const unsigned char kSupported[DCCL_NUM_TUNABLE_FUNCS][DCCL_NUM_ALGORITHMS] = {
    /* tree, ring, collnet_direct, collnet_chain, nvls, nvls_tree, pat */
    {0, LL | LL128 | SIMPLE, 0, 0, 0, 0, 0},                               /* broadcast */
    {0, LL | LL128 | SIMPLE, 0, 0, 0, 0, 0},                               /* reduce */
    {0, LL | LL128 | SIMPLE, SIMPLE, 0, SIMPLE, 0, SIMPLE},                /* allgather */
    {0, LL | LL128 | SIMPLE, SIMPLE, 0, SIMPLE, 0, SIMPLE},                /* reducescatter */
    {LL | LL128 | SIMPLE, LL | LL128 | SIMPLE, SIMPLE, SIMPLE, SIMPLE, SIMPLE, 0}, /* allreduce */
};
#undef LL
#undef LL128
#undef SIMPLE

/* ------------------------------------------------------------------------------------------ */
/* The table                                                                                    */

typedef struct {
  uint64_t min_bytes, max_bytes;
  int coll, nranks, nnodes, position, num_pipe_ops, reg_buff, algorithm, protocol, channels;
} dccl_rule_t;

typedef struct {
  int nranks, nnodes, calls_per_step, anchor_coll;
  uint64_t anchor_bytes;
} dccl_step_t;

typedef struct {
  dccl_rule_t* rules;
  size_t n_rules, cap_rules;
  dccl_step_t* steps;
  size_t n_steps, cap_steps;
} dccl_table_t;

static void table_free(dccl_table_t* t) {
  free(t->rules);
  free(t->steps);
  memset(t, 0, sizeof(*t));
}

static int grow(void** items, size_t* cap, size_t count, size_t item_bytes) {
  if (count < *cap) return 0;
  size_t next = *cap ? *cap * 2 : 64;
  void* p = realloc(*items, next * item_bytes);
  if (!p) return -1;
  *items = p;
  *cap = next;
  return 0;
}

/* Strict decimal parsing: the whole token, no sign for byte counts, no overflow. */
static int parse_u64(const char* s, uint64_t* out) {
  if (!*s) return -1;
  uint64_t v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    unsigned d = (unsigned)(*s - '0');
    if (v > (UINT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

static int parse_int(const char* s, long long lo, long long hi, int* out) {
  int negative = (*s == '-');
  uint64_t magnitude;
  if (parse_u64(s + negative, &magnitude) != 0 || magnitude > (uint64_t)INT_MAX + 1) return -1;
  long long v = negative ? -(long long)magnitude : (long long)magnitude;
  if (v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

static int name_index(const char* s, const char* const* names, int count) {
  for (int i = 0; i < count; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

static int fail(char* err, size_t errlen, size_t lineno, const char* field, const char* fmt, ...) {
  int used = snprintf(err, errlen, "line %zu%s%s: ", lineno, field ? ", field " : "", field ? field : "");
  if (used >= 0 && (size_t)used < errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, errlen - (size_t)used, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* An algorithm or protocol token: a name, or -1 (keep NCCL's). */
static int parse_choice(const char* s, const char* const* names, int count, int* out) {
  if (strcmp(s, "-1") == 0) {
    *out = -1;
    return 0;
  }
  *out = name_index(s, names, count);
  return *out < 0 ? -1 : 0;
}

static int parse_rule(char** tok, size_t lineno, dccl_rule_t* r, char* err, size_t errlen) {
  r->coll = name_index(tok[1], kCollNames, DCCL_NUM_TUNABLE_FUNCS);
  if (r->coll < 0)
    return fail(err, errlen, lineno, "coll", "unknown collective '%.40s'; expected broadcast, reduce, "
                "allgather, reducescatter or allreduce", tok[1]);
  if (parse_u64(tok[2], &r->min_bytes) != 0)
    return fail(err, errlen, lineno, "min_bytes", "'%.40s' is not a byte count 0 .. 2**64-1", tok[2]);
  if (parse_u64(tok[3], &r->max_bytes) != 0)
    return fail(err, errlen, lineno, "max_bytes", "'%.40s' is not a byte count 0 .. 2**64-1", tok[3]);
  if (r->min_bytes > r->max_bytes)
    return fail(err, errlen, lineno, "min_bytes", "min_bytes > max_bytes; expected an inclusive range");
  if (parse_int(tok[4], -1, INT_MAX, &r->nranks) != 0 || r->nranks == 0)
    return fail(err, errlen, lineno, "nranks", "'%.40s'; expected -1 (any) or 1 .. %d", tok[4], INT_MAX);
  if (parse_int(tok[5], -1, INT_MAX, &r->nnodes) != 0 || r->nnodes == 0)
    return fail(err, errlen, lineno, "nnodes", "'%.40s'; expected -1 (any) or 1 .. %d", tok[5], INT_MAX);
  if (r->nranks > 0 && r->nnodes > r->nranks)
    return fail(err, errlen, lineno, "nnodes", "nnodes > nranks; a communicator has a rank per node");
  if (parse_int(tok[6], -1, INT_MAX, &r->position) != 0)
    return fail(err, errlen, lineno, "position", "'%.40s'; expected -1 (any) or 0 .. %d", tok[6], INT_MAX);
  if (parse_int(tok[7], -1, INT_MAX, &r->num_pipe_ops) != 0 || r->num_pipe_ops == 0)
    return fail(err, errlen, lineno, "num_pipe_ops", "'%.40s'; expected -1 (any) or 1 .. %d", tok[7], INT_MAX);
  if (parse_int(tok[8], -1, 1, &r->reg_buff) != 0)
    return fail(err, errlen, lineno, "reg_buff", "'%.40s'; expected -1 (any), 0 or 1", tok[8]);
  if (parse_choice(tok[9], kAlgoNames, DCCL_NUM_ALGORITHMS, &r->algorithm) != 0)
    return fail(err, errlen, lineno, "algorithm", "unknown algorithm '%.40s'; expected -1 (keep NCCL's), "
                "tree, ring, collnet_direct, collnet_chain, nvls, nvls_tree or pat", tok[9]);
  if (parse_choice(tok[10], kProtoNames, DCCL_NUM_PROTOCOLS, &r->protocol) != 0)
    return fail(err, errlen, lineno, "protocol", "unknown protocol '%.40s'; expected -1 (keep NCCL's), "
                "ll, ll128 or simple", tok[10]);
  if (parse_int(tok[11], -1, DCCL_MAX_CHANNELS, &r->channels) != 0 || r->channels == 0)
    return fail(err, errlen, lineno, "channels", "'%.40s'; expected -1 (keep NCCL's) or 1 .. %d",
                tok[11], DCCL_MAX_CHANNELS);
  /* The same support rule as dynamiccl's Rule: a set algorithm must run the collective, and a
   * set protocol must run with it (or with some algorithm, when the algorithm is kept). */
  const unsigned char* algos = kSupported[r->coll];
  if (r->algorithm >= 0 && !algos[r->algorithm])
    return fail(err, errlen, lineno, "algorithm", "NCCL cannot run %s with %s", kCollNames[r->coll],
                kAlgoNames[r->algorithm]);
  if (r->protocol >= 0) {
    unsigned any = 0;
    for (int a = 0; a < DCCL_NUM_ALGORITHMS; a++) any |= algos[a];
    unsigned allowed = r->algorithm >= 0 ? algos[r->algorithm] : any;
    if (!(allowed & (1u << r->protocol)))
      return fail(err, errlen, lineno, "protocol", "NCCL cannot run %s with %s/%s", kCollNames[r->coll],
                  r->algorithm >= 0 ? kAlgoNames[r->algorithm] : "any algorithm", kProtoNames[r->protocol]);
  }
  return 0;
}

static int parse_step(char** tok, size_t lineno, const dccl_table_t* t, dccl_step_t* s, char* err,
                      size_t errlen) {
  if (parse_int(tok[1], 1, INT_MAX, &s->nranks) != 0)
    return fail(err, errlen, lineno, "nranks", "'%.40s'; expected 1 .. %d", tok[1], INT_MAX);
  if (parse_int(tok[2], 1, INT_MAX, &s->nnodes) != 0 || s->nnodes > s->nranks)
    return fail(err, errlen, lineno, "nnodes", "'%.40s'; expected 1 .. nranks", tok[2]);
  if (parse_int(tok[3], 1, INT_MAX, &s->calls_per_step) != 0)
    return fail(err, errlen, lineno, "calls_per_step", "'%.40s'; expected 1 .. %d", tok[3], INT_MAX);
  s->anchor_coll = name_index(tok[4], kCollNames, DCCL_NUM_TUNABLE_FUNCS);
  if (s->anchor_coll < 0)
    return fail(err, errlen, lineno, "anchor_coll", "unknown collective '%.40s'; expected broadcast, "
                "reduce, allgather, reducescatter or allreduce", tok[4]);
  if (parse_u64(tok[5], &s->anchor_bytes) != 0)
    return fail(err, errlen, lineno, "anchor_bytes", "'%.40s' is not a byte count 0 .. 2**64-1", tok[5]);
  for (size_t i = 0; i < t->n_steps; i++)
    if (t->steps[i].nranks == s->nranks && t->steps[i].nnodes == s->nnodes &&
        t->steps[i].anchor_coll == s->anchor_coll && t->steps[i].anchor_bytes == s->anchor_bytes)
      return fail(err, errlen, lineno, "anchor_bytes", "a second step line for %d ranks on %d nodes "
                  "with the same anchor; expected one line per anchor", s->nranks, s->nnodes);
  return 0;
}

/* One "rule" or "step" line, appended to the table. */
static int parse_record(char** tok, int ntok, size_t lineno, dccl_table_t* t, char* err, size_t errlen) {
  const int is_rule = strcmp(tok[0], "rule") == 0;
  if (!is_rule && strcmp(tok[0], "step") != 0)
    return fail(err, errlen, lineno, NULL, "unknown line kind '%.40s'; expected rule, step or a "
                "# comment", tok[0]);
  if (ntok != (is_rule ? 12 : 6))
    return fail(err, errlen, lineno, NULL, is_rule
                ? "%d fields; a rule line has 12: rule coll min_bytes max_bytes nranks nnodes position "
                  "num_pipe_ops reg_buff algorithm protocol channels"
                : "%d fields; a step line has 6: step nranks nnodes calls_per_step anchor_coll anchor_bytes",
                ntok);
  size_t* count = is_rule ? &t->n_rules : &t->n_steps;
  if (*count == (is_rule ? DCCL_MAX_RULES : DCCL_MAX_STEPS))
    return fail(err, errlen, lineno, NULL, "more than %d %s", is_rule ? DCCL_MAX_RULES : DCCL_MAX_STEPS,
                is_rule ? "rules" : "step lines");
  int grown = is_rule ? grow((void**)&t->rules, &t->cap_rules, *count, sizeof(dccl_rule_t))
                      : grow((void**)&t->steps, &t->cap_steps, *count, sizeof(dccl_step_t));
  if (grown != 0) return fail(err, errlen, lineno, NULL, "out of memory");
  int rc = is_rule ? parse_rule(tok, lineno, &t->rules[*count], err, errlen)
                   : parse_step(tok, lineno, t, &t->steps[*count], err, errlen);
  if (rc == 0) (*count)++;
  return rc;
}

/* Parse a whole table held in memory; on error, ``err`` names the line and field. */
static int table_parse(const char* data, size_t len, dccl_table_t* t, char* err, size_t errlen) {
  memset(t, 0, sizeof(*t));
  char line[DCCL_MAX_LINE_BYTES + 2];
  size_t pos = 0, lineno = 0;
  int seen_header = 0;
  while (pos < len) {
    lineno++;
    size_t end = pos;
    while (end < len && data[end] != '\n') end++;
    size_t n = end - pos;
    if (n > 0 && data[pos + n - 1] == '\r') n--;
    if (n > DCCL_MAX_LINE_BYTES) {
      table_free(t);
      return fail(err, errlen, lineno, NULL, "longer than %d bytes", DCCL_MAX_LINE_BYTES);
    }
    if (memchr(data + pos, '\0', n)) {
      table_free(t);
      return fail(err, errlen, lineno, NULL, "contains a NUL byte; expected text");
    }
    memcpy(line, data + pos, n);
    line[n] = '\0';
    pos = end + 1;

    if (seen_header) { /* blank and comment lines: skipped before counting fields */
      const char* first = line;
      while (*first == ' ' || *first == '\t') first++;
      if (*first == '\0' || *first == '#') continue;
    }
    char* tok[DCCL_MAX_TOKENS];
    int ntok = 0;
    for (char* p = line; *p;) {
      while (*p == ' ' || *p == '\t') *p++ = '\0';
      if (!*p) break;
      if (ntok == DCCL_MAX_TOKENS) {
        table_free(t);
        return fail(err, errlen, lineno, NULL, "more than %d fields", DCCL_MAX_TOKENS);
      }
      tok[ntok++] = p;
      while (*p && *p != ' ' && *p != '\t') p++;
    }
    if (!seen_header) {
      if (ntok != 2 || strcmp(tok[0], "dynamiccl-tuner-table") != 0 || strcmp(tok[1], "1") != 0) {
        table_free(t);
        return fail(err, errlen, lineno, NULL, "expected the header '" DCCL_TABLE_HEADER "' as the "
                    "first line (is this a dynamiccl plugin table? `dynamiccl launch` writes one)");
      }
      seen_header = 1;
      continue;
    }
    if (ntok == 0) continue; /* not reached: a non-blank line has a field */
    if (parse_record(tok, ntok, lineno, t, err, errlen) != 0) {
      table_free(t);
      return -1;
    }
  }
  if (!seen_header) return fail(err, errlen, 1, NULL, "empty file; expected the header '" DCCL_TABLE_HEADER "'");
  return 0;
}

static int table_load(const char* path, dccl_table_t* t, char* err, size_t errlen) {
  memset(t, 0, sizeof(*t));
  FILE* f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "cannot open: %s", strerror(errno));
    return -1;
  }
  char* data = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      if (cap >= (size_t)DCCL_MAX_FILE_BYTES) {
        snprintf(err, errlen, "larger than %ld bytes", DCCL_MAX_FILE_BYTES);
        free(data);
        fclose(f);
        return -1;
      }
      size_t next = cap ? cap * 2 : 65536;
      char* p = realloc(data, next);
      if (!p) {
        snprintf(err, errlen, "out of memory reading it");
        free(data);
        fclose(f);
        return -1;
      }
      data = p;
      cap = next;
    }
    size_t got = fread(data + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    snprintf(err, errlen, "read error");
    free(data);
    return -1;
  }
  int rc = table_parse(data, len, t, err, errlen);
  free(data);
  return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Process state: one table, NCCL's logger, the override and counters                           */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_loaded = 0;          /* the table was read (or failed) once for this process */
static int g_table_ok = 0;
static dccl_table_t g_table;
static int g_live_comms = 0;
static dccl_logger_t g_log = NULL;
static int g_v2_masked = 0;       /* NCCL_ALGO / NCCL_PROTO set: v2 cannot see what they disable */

typedef struct {
  int active;                     /* read without the lock first: 0 costs one load per call */
  int algorithm, protocol, channels;
  long long remaining;            /* -1 = until cleared */
} dccl_override_t;
static dccl_override_t g_override;

/* Counters and the last decision, for tests, `dynamiccl doctor` and live measurement. */
static long long g_calls, g_ruled, g_overridden, g_refused;
static int g_last[6] = {-1, -1, 0, -1, -1, -1}; /* algo, proto, channels, rule, position, source */

/* Messages are formatted here and handed to NCCL's logger as "%s", so the logger never has to
 * interpret our format string. */
static void log_message(dccl_log_level_t level, int line, const char* fmt, ...) {
  dccl_logger_t log = __atomic_load_n(&g_log, __ATOMIC_ACQUIRE);
  if (!log) return;
  char message[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  log(level, DCCL_LOG_FLAG_TUNING, __FILE__, line, "%s", message);
}
#define LOG(level, ...) log_message(level, __LINE__, __VA_ARGS__)

/* Read the table once per process; the first communicator's init does it. */
static void load_once(void) {
  pthread_mutex_lock(&g_lock);
  if (!g_loaded) {
    g_loaded = 1;
    const char* algo_mask = getenv("NCCL_ALGO");
    const char* proto_mask = getenv("NCCL_PROTO");
    g_v2_masked = (algo_mask && *algo_mask) || (proto_mask && *proto_mask);
    const char* path = getenv(DCCL_TABLE_ENV);
    char err[DCCL_ERR_BYTES] = "";
    if (!path || !*path) {
      LOG(DCCL_LOG_WARN, "dynamiccl tuner: " DCCL_TABLE_ENV " is not set; NCCL chooses every "
          "collective (run the job under `dynamiccl launch --table ...`)");
    } else if (table_load(path, &g_table, err, sizeof(err)) != 0) {
      LOG(DCCL_LOG_WARN, "dynamiccl tuner: ignoring decision table %s: %s; NCCL chooses every "
          "collective", path, err);
    } else {
      g_table_ok = 1;
      LOG(DCCL_LOG_INFO, "dynamiccl tuner: loaded %zu rules and %zu step lines from %s",
          g_table.n_rules, g_table.n_steps, path);
    }
  }
  pthread_mutex_unlock(&g_lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Per-communicator context and its index                                                       */

/* The rules of one collective that can match this communicator, in table order, indexed by
 * byte segment: every rule covers whole segments, so a call's candidates are the list of the
 * segment holding its nBytes. */
typedef struct {
  uint64_t* bounds;   /* segment starts, ascending */
  uint32_t* offsets;  /* n_segments + 1 offsets into cands */
  uint32_t* cands;    /* rule indices, table order within each segment */
  uint32_t n_segments;
  uint32_t* linear;   /* fallback when the index would be too large: all candidates in order */
  uint32_t n_linear;
} dccl_coll_index_t;

typedef struct {
  uint64_t comm_id;
  int nranks, nnodes;
  int abi;
  const dccl_step_t** shape_steps; /* the step lines of this communicator's shape */
  int n_shape_steps;
  const dccl_step_t* step;  /* the line being counted; NULL: position unknown */
  int position;             /* of the last call; -1 unknown */
  dccl_coll_index_t index[DCCL_NUM_TUNABLE_FUNCS];
} dccl_comm_t;

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static uint32_t segment_of(const uint64_t* bounds, uint32_t n, uint64_t value) {
  /* the last i with bounds[i] <= value; callers guarantee bounds[0] <= value.  Branch-free: the
   * lookup runs for every collective, and sizes jump around too much for a branch predictor. */
  const uint64_t* base = bounds;
  while (n > 1) {
    uint32_t half = n / 2;
    base = (base[half] <= value) ? base + half : base;
    n -= half;
  }
  return (uint32_t)(base - bounds);
}

static void index_free(dccl_coll_index_t* x) {
  free(x->bounds);
  free(x->offsets);
  free(x->cands);
  free(x->linear);
  memset(x, 0, sizeof(*x));
}

static int index_build(dccl_coll_index_t* x, const dccl_table_t* t, int coll, int nranks, int nnodes) {
  memset(x, 0, sizeof(*x));
  uint32_t n = 0;
  for (size_t i = 0; i < t->n_rules; i++) {
    const dccl_rule_t* r = &t->rules[i];
    if (r->coll == coll && (r->nranks < 0 || r->nranks == nranks) && (r->nnodes < 0 || r->nnodes == nnodes)) n++;
  }
  if (n == 0) return 0;
  x->linear = malloc(n * sizeof(uint32_t));
  uint64_t* points = malloc(2 * (size_t)n * sizeof(uint64_t));
  if (!x->linear || !points) {
    free(points);
    return -1;
  }
  size_t np = 0;
  for (size_t i = 0; i < t->n_rules; i++) {
    const dccl_rule_t* r = &t->rules[i];
    if (!(r->coll == coll && (r->nranks < 0 || r->nranks == nranks) && (r->nnodes < 0 || r->nnodes == nnodes))) continue;
    x->linear[x->n_linear++] = (uint32_t)i;
    points[np++] = r->min_bytes;
    if (r->max_bytes != UINT64_MAX) points[np++] = r->max_bytes + 1;
  }
  qsort(points, np, sizeof(uint64_t), cmp_u64);
  uint32_t nseg = 0;
  for (size_t i = 0; i < np; i++)
    if (nseg == 0 || points[i] != points[nseg - 1]) points[nseg++] = points[i];
  /* Count the entries first: overlapping rules could make the index quadratic. */
  uint64_t total = 0;
  for (uint32_t k = 0; k < x->n_linear; k++) {
    const dccl_rule_t* r = &t->rules[x->linear[k]];
    uint32_t lo = segment_of(points, nseg, r->min_bytes);
    uint32_t hi = r->max_bytes == UINT64_MAX ? nseg - 1 : segment_of(points, nseg, r->max_bytes + 1) - 1;
    total += hi - lo + 1;
  }
  if (total > DCCL_MAX_INDEX_ENTRIES) {
    free(points);
    return 0; /* keep the linear list: correct, only slower */
  }
  x->offsets = calloc((size_t)nseg + 1, sizeof(uint32_t));
  x->cands = malloc((size_t)(total ? total : 1) * sizeof(uint32_t));
  if (!x->offsets || !x->cands) {
    free(points);
    return -1;
  }
  for (uint32_t k = 0; k < x->n_linear; k++) {
    const dccl_rule_t* r = &t->rules[x->linear[k]];
    uint32_t lo = segment_of(points, nseg, r->min_bytes);
    uint32_t hi = r->max_bytes == UINT64_MAX ? nseg - 1 : segment_of(points, nseg, r->max_bytes + 1) - 1;
    for (uint32_t s = lo; s <= hi; s++) x->offsets[s + 1]++;
  }
  for (uint32_t s = 0; s < nseg; s++) x->offsets[s + 1] += x->offsets[s];
  uint32_t* fill = malloc((size_t)nseg * sizeof(uint32_t));
  if (!fill) {
    free(points);
    return -1;
  }
  memcpy(fill, x->offsets, (size_t)nseg * sizeof(uint32_t));
  for (uint32_t k = 0; k < x->n_linear; k++) { /* table order, so each segment's list is too */
    const dccl_rule_t* r = &t->rules[x->linear[k]];
    uint32_t lo = segment_of(points, nseg, r->min_bytes);
    uint32_t hi = r->max_bytes == UINT64_MAX ? nseg - 1 : segment_of(points, nseg, r->max_bytes + 1) - 1;
    for (uint32_t s = lo; s <= hi; s++) x->cands[fill[s]++] = x->linear[k];
  }
  free(fill);
  x->bounds = points;
  x->n_segments = nseg;
  return 0;
}

static dccl_comm_t* comm_new(uint64_t comm_id, size_t nranks, size_t nnodes, int abi) {
  load_once();
  dccl_comm_t* c = calloc(1, sizeof(dccl_comm_t));
  if (!c) return NULL;
  c->comm_id = comm_id;
  c->nranks = nranks > INT_MAX ? INT_MAX : (int)nranks;
  c->nnodes = nnodes > INT_MAX ? INT_MAX : (int)nnodes;
  c->abi = abi;
  c->position = -1;
  pthread_mutex_lock(&g_lock);
  g_live_comms++;
  if (g_table_ok) {
    for (size_t i = 0; i < g_table.n_steps; i++)
      if (g_table.steps[i].nranks == c->nranks && g_table.steps[i].nnodes == c->nnodes) c->n_shape_steps++;
    if (c->n_shape_steps) {
      c->shape_steps = malloc((size_t)c->n_shape_steps * sizeof(*c->shape_steps));
      int k = 0;
      for (size_t i = 0; c->shape_steps && i < g_table.n_steps; i++)
        if (g_table.steps[i].nranks == c->nranks && g_table.steps[i].nnodes == c->nnodes)
          c->shape_steps[k++] = &g_table.steps[i];
      if (!c->shape_steps) c->n_shape_steps = 0; /* out of memory: positions stay unknown */
    }
    for (int coll = 0; coll < DCCL_NUM_TUNABLE_FUNCS; coll++) {
      if (index_build(&c->index[coll], &g_table, coll, c->nranks, c->nnodes) != 0) {
        index_free(&c->index[coll]);
        LOG(DCCL_LOG_WARN, "dynamiccl tuner: out of memory indexing the table; NCCL chooses %s "
            "on this communicator", kCollNames[coll]);
      }
    }
  }
  pthread_mutex_unlock(&g_lock);
  LOG(DCCL_LOG_INFO, "dynamiccl tuner: communicator %llx with %d ranks on %d nodes (tuner ABI v%d)%s",
      (unsigned long long)comm_id, c->nranks, c->nnodes, abi,
      c->n_shape_steps ? "; position rules active" : "");
  return c;
}

static dccl_result_t comm_free(void* context) {
  dccl_comm_t* c = context;
  if (!c) return DCCL_SUCCESS;
  for (int coll = 0; coll < DCCL_NUM_TUNABLE_FUNCS; coll++) index_free(&c->index[coll]);
  free(c->shape_steps);
  free(c);
  pthread_mutex_lock(&g_lock);
  g_live_comms--;
  pthread_mutex_unlock(&g_lock);
  return DCCL_SUCCESS;
}

static int advance_position(dccl_comm_t* c, int coll, uint64_t nbytes) {
  if (c->step && c->position >= 0 && c->position + 1 < c->step->calls_per_step) return ++c->position;
  c->step = NULL;
  c->position = -1;
  for (int i = 0; i < c->n_shape_steps; i++)
    if (c->shape_steps[i]->anchor_coll == coll && c->shape_steps[i]->anchor_bytes == nbytes) {
      c->step = c->shape_steps[i];
      c->position = 0;
      break;
    }
  return c->position;
}

/* ------------------------------------------------------------------------------------------ */
/* Decisions                                                                                    */

typedef struct {
  float* cost;              /* NCCL's cost table, flat: cost[a * num_proto + p] */
  int num_algo, num_proto;
} dccl_costs_t;

static inline int cell_enabled(const dccl_costs_t* k, int a, int p) {
  return a < k->num_algo && p < k->num_proto && k->cost[a * k->num_proto + p] >= 0.0f;
}

/* The cheapest enabled cell among algorithm ``algo`` (-1 any) and protocol ``proto`` (-1 any),
 * scanning algorithm-major like NCCL (strict <: the first of equal costs wins). */
static int cheapest(const dccl_costs_t* k, int algo, int proto, int* out_a, int* out_p) {
  int found = 0;
  float best = 0.0f;
  int a_lo = algo < 0 ? 0 : algo, a_hi = algo < 0 ? k->num_algo - 1 : algo;
  int p_lo = proto < 0 ? 0 : proto, p_hi = proto < 0 ? k->num_proto - 1 : proto;
  if (a_hi >= DCCL_NUM_ALGORITHMS) a_hi = DCCL_NUM_ALGORITHMS - 1;
  if (p_hi >= DCCL_NUM_PROTOCOLS) p_hi = DCCL_NUM_PROTOCOLS - 1;
  for (int a = a_lo; a <= a_hi; a++)
    for (int p = p_lo; p <= p_hi; p++) {
      if (!cell_enabled(k, a, p)) continue;
      float v = k->cost[a * k->num_proto + p];
      if (!found || v < best) {
        found = 1;
        best = v;
        *out_a = a;
        *out_p = p;
      }
    }
  return found;
}

/* Apply a choice (algorithm / protocol -1 = keep NCCL's) to NCCL's cost table; 0 if no
 * requested cell is enabled, in which case nothing is touched. */
static int apply_choice(const dccl_costs_t* k, int algo, int proto, int channels, int* nChannels,
                        int* out_a, int* out_p) {
  int a, p;
  if (!cheapest(k, algo, proto, &a, &p)) return 0;
  if (algo >= 0 || proto >= 0) k->cost[a * k->num_proto + p] = 0.0f; /* enabled: never a revival */
  if (channels > 0) *nChannels = channels;
  *out_a = a;
  *out_p = p;
  return 1;
}

static inline int rule_keys_match(const dccl_rule_t* r, int position, int num_pipe_ops, int reg_buff) {
  return (r->position < 0 || r->position == position) &&
         (r->num_pipe_ops < 0 || r->num_pipe_ops == num_pipe_ops) &&
         (r->reg_buff < 0 || r->reg_buff == reg_buff);
}

/* Candidate rule indices for a call: the segment list, or every rule when not indexed. */
static inline const uint32_t* candidates(const dccl_coll_index_t* x, uint64_t nbytes, uint32_t* n) {
  if (x->bounds) {
    if (x->n_segments == 0 || nbytes < x->bounds[0]) {
      *n = 0;
      return NULL;
    }
    uint32_t s = segment_of(x->bounds, x->n_segments, nbytes);
    *n = x->offsets[s + 1] - x->offsets[s];
    return x->cands + x->offsets[s];
  }
  *n = x->n_linear;
  return x->linear;
}

static inline int take_override(int* algo, int* proto, int* channels) {
  if (!__atomic_load_n(&g_override.active, __ATOMIC_ACQUIRE)) return 0;
  int taken = 0;
  pthread_mutex_lock(&g_lock);
  if (g_override.active) {
    *algo = g_override.algorithm;
    *proto = g_override.protocol;
    *channels = g_override.channels;
    taken = 1;
    if (g_override.remaining > 0 && --g_override.remaining == 0)
      __atomic_store_n(&g_override.active, 0, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&g_lock);
  return taken;
}

/* Statistics, not synchronisation: a relaxed load and store (no locked instruction on the hot
 * path); two threads counting at the same instant may lose one count. */
#define COUNT(counter) \
  __atomic_store_n(&(counter), __atomic_load_n(&(counter), __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED)

static void record(int algo, int proto, int channels, int rule, int position, int source) {
  /* relaxed stores: several threads may plan collectives at once; the last one wins */
  const int values[6] = {algo, proto, channels, rule, position, source};
  for (int i = 0; i < 6; i++) __atomic_store_n(&g_last[i], values[i], __ATOMIC_RELAXED);
}

/* ABI v2 has no cost table: the plugin writes the algorithm and protocol, and cannot see which
 * cells NCCL disabled.  So only choices that name both are applied, never where the support flags
 * or NCCL_ALGO / NCCL_PROTO might disable them, and never LL128 (NCCL disables it on platforms
 * where it can corrupt data, and v2 cannot tell). */
static int v2_cell_safe(int algo, int proto, int collnet, int nvls) {
  if (algo < 0 || proto < 0 || g_v2_masked || proto == DCCL_PROTO_LL128) return 0;
  if ((algo == DCCL_ALGO_COLLNET_DIRECT || algo == DCCL_ALGO_COLLNET_CHAIN) && collnet != 1) return 0;
  if ((algo == DCCL_ALGO_NVLS || algo == DCCL_ALGO_NVLS_TREE) && nvls != 1) return 0;
  return 1;
}

/* One getCollInfo call and how a choice reaches NCCL: through its cost table (v3+) or, for v2,
 * written into *algorithm / *protocol. */
typedef struct {
  int v2;
  dccl_costs_t k;              /* v3+ */
  int collnet, nvls;           /* v2: NCCL's support flags */
  int *algorithm, *protocol;   /* v2 */
  int* nChannels;
} dccl_call_t;

/* Apply a choice (algorithm / protocol / channels -1 = keep NCCL's); 0 if it cannot apply, and
 * then nothing was touched. */
static inline int apply(const dccl_call_t* call, int algo, int proto, int channels, int* out_a, int* out_p) {
  if (!call->v2) return apply_choice(&call->k, algo, proto, channels, call->nChannels, out_a, out_p);
  if (algo >= 0 || proto >= 0) {
    if (!v2_cell_safe(algo, proto, call->collnet, call->nvls)) return 0;
    *call->algorithm = algo;
    *call->protocol = proto;
  }
  if (channels > 0) *call->nChannels = channels;
  *out_a = algo;
  *out_p = proto;
  return 1;
}

/* The decision for one call: the override if one is set, else the first rule that applies. */
static void decide(dccl_comm_t* c, int coll, uint64_t nbytes, int num_pipe_ops, int reg_buff,
                   const dccl_call_t* call) {
  COUNT(g_calls);
  int position = advance_position(c, coll, nbytes);
  int a = -1, p = -1, oa, op, och;
  if (take_override(&oa, &op, &och)) {
    if (apply(call, oa, op, och, &a, &p)) {
      COUNT(g_overridden);
      record(a, p, och > 0 ? och : 0, -1, position, 2);
    } else {
      COUNT(g_refused);
      record(-1, -1, 0, -1, position, 3);
    }
    return;
  }
  uint32_t n;
  const uint32_t* cand = candidates(&c->index[coll], nbytes, &n);
  const dccl_rule_t* rules = g_table.rules;
  const int linear = c->index[coll].bounds == NULL;
  for (uint32_t i = 0; i < n; i++) {
    const dccl_rule_t* r = &rules[cand[i]];
    if (linear && (nbytes < r->min_bytes || nbytes > r->max_bytes)) continue;
    if (!rule_keys_match(r, position, num_pipe_ops, reg_buff)) continue;
    if (apply(call, r->algorithm, r->protocol, r->channels, &a, &p)) {
      COUNT(g_ruled);
      record(a, p, r->channels > 0 ? r->channels : 0, (int)cand[i], position, 1);
      return;
    }
  }
  record(-1, -1, 0, -1, position, 0);
}

/* getCollInfo for ABI v3..v6 (v3 passes regBuff 0). */
static dccl_result_t decide_with_costs(void* context, dccl_func_t coll_type, size_t nBytes,
                                       int numPipeOps, float** collCostTable, int numAlgo,
                                       int numProto, int regBuff, int* nChannels) {
  int coll = (int)coll_type;
  if (!context || !collCostTable || !nChannels || coll < 0 || coll >= DCCL_NUM_TUNABLE_FUNCS ||
      numAlgo <= 0 || numProto <= 0)
    return DCCL_SUCCESS;
  /* NCCL's float[numAlgo][numProto], not row pointers; num_proto stays NCCL's row stride, and
   * cheapest() never looks past our 7 x 3 cells */
  dccl_call_t call = {0};
  call.k.cost = (float*)collCostTable;
  call.k.num_algo = numAlgo < DCCL_NUM_ALGORITHMS ? numAlgo : DCCL_NUM_ALGORITHMS;
  call.k.num_proto = numProto;
  call.nChannels = nChannels;
  decide(context, coll, nBytes, numPipeOps, regBuff, &call);
  return DCCL_SUCCESS;
}

static dccl_result_t v2_get_coll_info(void* context, dccl_func_t coll_type, size_t nBytes,
                                      int collNetSupport, int nvlsSupport, int numPipeOps,
                                      int* algorithm, int* protocol, int* nChannels) {
  int coll = (int)coll_type;
  if (!context || !algorithm || !protocol || !nChannels || coll < 0 || coll >= DCCL_NUM_TUNABLE_FUNCS)
    return DCCL_SUCCESS;
  dccl_call_t call = {.v2 = 1, .collnet = collNetSupport, .nvls = nvlsSupport, .algorithm = algorithm,
                      .protocol = protocol, .nChannels = nChannels};
  decide(context, coll, nBytes, numPipeOps, 0, &call);
  return DCCL_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* The ABI entry points.  init never fails: NCCL wraps it in NCCLCHECK, so a failure here would
 * fail communicator creation, and the job must run with NCCL's own choices instead.            */

static void remember_logger(dccl_logger_t logFunction) {
  if (logFunction) __atomic_store_n(&g_log, logFunction, __ATOMIC_RELEASE);
}

static dccl_result_t init_v2(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context) {
  remember_logger(logFunction);
  if (context) *context = comm_new(0, nRanks, nNodes, 2);
  return DCCL_SUCCESS;
}

static dccl_result_t init_v3(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context) {
  remember_logger(logFunction);
  if (context) *context = comm_new(0, nRanks, nNodes, 3);
  return DCCL_SUCCESS;
}

static dccl_result_t init_v4(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context) {
  remember_logger(logFunction);
  if (context) *context = comm_new(0, nRanks, nNodes, 4);
  return DCCL_SUCCESS;
}

static dccl_result_t init_v5(void** context, uint64_t commId, size_t nRanks, size_t nNodes,
                             dccl_logger_t logFunction, dccl_nvl_domain_info_v5_t* nvlDomainInfo,
                             dccl_tuner_constants_v5_t* constants) {
  (void)nvlDomainInfo;
  (void)constants; /* NCCL's own model is left as it is */
  remember_logger(logFunction);
  if (context) *context = comm_new(commId, nRanks, nNodes, 5);
  return DCCL_SUCCESS;
}

static dccl_result_t init_v6(void** context, uint64_t commId, size_t nRanks, size_t nNodes,
                             dccl_logger_t logFunction, dccl_nvl_domain_info_v5_t* nvlDomainInfo,
                             dccl_tuner_constants_v5_t* constants) {
  (void)nvlDomainInfo;
  (void)constants;
  remember_logger(logFunction);
  if (context) *context = comm_new(commId, nRanks, nNodes, 6);
  return DCCL_SUCCESS;
}

static dccl_result_t get_coll_info_v3(void* context, dccl_func_t collType, size_t nBytes,
                                      int numPipeOps, float** collCostTable, int numAlgo,
                                      int numProto, int* nChannels) {
  return decide_with_costs(context, collType, nBytes, numPipeOps, collCostTable, numAlgo, numProto, 0,
                           nChannels);
}

static dccl_result_t get_chunk_size_v6(void* context, dccl_func_t collType, size_t nBytes,
                                       int algorithm, int protocol, int nChannels, size_t* chunkSize) {
  (void)context, (void)collType, (void)nBytes, (void)algorithm, (void)protocol, (void)nChannels,
      (void)chunkSize; /* keep NCCL's chunk size: tables do not carry one */
  return DCCL_SUCCESS;
}

#define DCCL_EXPORT __attribute__((visibility("default")))

DCCL_EXPORT const dccl_tuner_v6_t ncclTunerPlugin_v6 = {
    DCCL_PLUGIN_NAME, init_v6, decide_with_costs, comm_free, get_chunk_size_v6};
DCCL_EXPORT const dccl_tuner_v5_t ncclTunerPlugin_v5 = {DCCL_PLUGIN_NAME, init_v5, decide_with_costs, comm_free};
DCCL_EXPORT const dccl_tuner_v4_t ncclTunerPlugin_v4 = {DCCL_PLUGIN_NAME, init_v4, decide_with_costs, comm_free};
DCCL_EXPORT const dccl_tuner_v3_t ncclTunerPlugin_v3 = {DCCL_PLUGIN_NAME, init_v3, get_coll_info_v3, comm_free};
DCCL_EXPORT const dccl_tuner_v2_t ncclTunerPlugin_v2 = {DCCL_PLUGIN_NAME, init_v2, v2_get_coll_info, comm_free};

/* ------------------------------------------------------------------------------------------ */
/* dynamiccl's own entry points (ctypes): live-measurement override, checks and introspection.   */

DCCL_EXPORT const char* dynamiccl_tuner_version(void) { return DCCL_PLUGIN_VERSION; }

/* Force the next ``count`` decisions of this process (-1: until cleared; 0: clear).  algorithm /
 * protocol -1 keep NCCL's, channels -1 keeps NCCL's.  A forced cell NCCL disabled is refused and
 * NCCL decides that call.  Returns 0, or -1 for an argument out of range. */
DCCL_EXPORT int dynamiccl_tuner_override(int algorithm, int protocol, int channels, long long count) {
  if (algorithm < -1 || algorithm >= DCCL_NUM_ALGORITHMS || protocol < -1 ||
      protocol >= DCCL_NUM_PROTOCOLS || channels < -1 || channels == 0 ||
      channels > DCCL_MAX_CHANNELS || count < -1)
    return -1;
  pthread_mutex_lock(&g_lock);
  g_override.algorithm = algorithm;
  g_override.protocol = protocol;
  g_override.channels = channels;
  g_override.remaining = count;
  __atomic_store_n(&g_override.active, count != 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&g_lock);
  return 0;
}

/* counts[4] = calls, decided by a rule, overridden, override refused.  last[6] = the last
 * decision's algorithm, protocol, channels (0 = NCCL's), rule index (-1 none), position, and
 * source (0 NCCL, 1 rule, 2 override, 3 override refused). */
DCCL_EXPORT void dynamiccl_tuner_stats(long long* counts, int* last) {
  if (counts) {
    counts[0] = __atomic_load_n(&g_calls, __ATOMIC_RELAXED);
    counts[1] = __atomic_load_n(&g_ruled, __ATOMIC_RELAXED);
    counts[2] = __atomic_load_n(&g_overridden, __ATOMIC_RELAXED);
    counts[3] = __atomic_load_n(&g_refused, __ATOMIC_RELAXED);
  }
  if (last)
    for (int i = 0; i < 6; i++) last[i] = __atomic_load_n(&g_last[i], __ATOMIC_RELAXED);
}

/* Whether NCCL can run (collective, algorithm, protocol) at all (the parser's support rule). */
DCCL_EXPORT int dynamiccl_tuner_supported(int coll, int algorithm, int protocol) {
  if (coll < 0 || coll >= DCCL_NUM_TUNABLE_FUNCS || algorithm < 0 || algorithm >= DCCL_NUM_ALGORITHMS ||
      protocol < 0 || protocol >= DCCL_NUM_PROTOCOLS)
    return 0;
  return (kSupported[coll][algorithm] >> protocol) & 1;
}

/* The rule count (and step lines into ``n_steps`` if not NULL) of a checked table, then free it. */
static long counts_and_free(dccl_table_t* t, long* n_steps) {
  long n = (long)t->n_rules;
  if (n_steps) *n_steps = (long)t->n_steps;
  table_free(t);
  return n;
}

/* Parse a table held in memory (the fuzzing entry point).  Returns the rule count, or -1 with
 * the reason in ``err``.  ``n_steps`` may be NULL. */
DCCL_EXPORT long dynamiccl_tuner_parse(const char* data, size_t len, char* err, size_t errlen,
                                       long* n_steps) {
  dccl_table_t t;
  char local[DCCL_ERR_BYTES];
  if (!err || errlen == 0) {
    err = local;
    errlen = sizeof(local);
  }
  err[0] = '\0';
  if (!data && len) return -1;
  if (table_parse(data ? data : "", len, &t, err, errlen) != 0) return -1;
  return counts_and_free(&t, n_steps);
}

/* Read and check a table file exactly as init would.  Returns the rule count, or -1. */
DCCL_EXPORT long dynamiccl_tuner_check_file(const char* path, char* err, size_t errlen, long* n_steps) {
  dccl_table_t t;
  char local[DCCL_ERR_BYTES];
  if (!err || errlen == 0) {
    err = local;
    errlen = sizeof(local);
  }
  err[0] = '\0';
  if (!path) {
    snprintf(err, errlen, "no path");
    return -1;
  }
  if (table_load(path, &t, err, errlen) != 0) return -1;
  return counts_and_free(&t, n_steps);
}

/* Forget the loaded table so that the next init reads DYNAMICCL_TUNER_TABLE again (tests and
 * tools that open several tables in one process).  Refused (-1) while communicators are alive. */
DCCL_EXPORT int dynamiccl_tuner_reset(void) {
  pthread_mutex_lock(&g_lock);
  if (g_live_comms > 0) {
    pthread_mutex_unlock(&g_lock);
    return -1;
  }
  table_free(&g_table);
  g_loaded = 0;
  g_table_ok = 0;
  g_log = NULL;
  g_calls = g_ruled = g_overridden = g_refused = 0;
  memset(&g_override, 0, sizeof(g_override));
  pthread_mutex_unlock(&g_lock);
  return 0;
}
