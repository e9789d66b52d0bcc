/* Reads the plain-text decision table into rules and step lines; every field is checked, and an
 * error names its line and field.
 *
 * The format (dynamiccl/table/plugin_text.py writes it, and its read mirrors this parser):
 *
 *   dynamiccl-tuner-table 2
 *   # coll min_bytes max_bytes nranks nnodes position num_pipe_ops reg_buff algorithm protocol channels chunk_bytes
 *   rule allreduce 0 65535 16 2 -1 -1 -1 ring ll128 8 131072
 *   # nranks nnodes calls_per_step anchor_coll anchor_bytes
 *   step 16 2 96 allreduce 1048576
 *
 * Whitespace-separated fields, lines of at most 511 bytes (CRLF accepted), # comments and blank
 * lines after the header.  -1 is "any" for keys and "keep NCCL's" for algorithm, protocol,
 * channels and chunk_bytes.  A rule's algorithm and protocol must be a pair NCCL can run for its
 * collective; its chunk_bytes is -1 or a power of two from 4 KiB to 64 MiB.  Version 1 (the header
 * "dynamiccl-tuner-table 1") has no chunk_bytes: its rule lines have one field less.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tuner.h"

#define DCCL_TABLE_MAGIC "dynamiccl-tuner-table"
#define DCCL_TABLE_VERSION "2"    /* the newest; "1" is still read */
#define DCCL_TABLE_HEADER DCCL_TABLE_MAGIC " " DCCL_TABLE_VERSION
#define DCCL_MAX_LINE_BYTES 511   /* without the newline */
#define DCCL_MAX_TOKENS 16
#define DCCL_RULE_TOKENS 13       /* "rule" and its 12 fields (version 1: 11, no chunk_bytes) */
#define DCCL_STEP_TOKENS 6        /* "step" and its 5 fields */
#define DCCL_MAX_RULES 1000000
#define DCCL_MAX_STEPS 4096       /* duplicates are checked pairwise */
#define DCCL_MAX_FILE_BYTES (256L << 20)

/* The spellings of NVIDIA's example tuner CSV, lower case (dynamiccl.nccl; a test compares them). */
const char* const dccl_coll_names[DCCL_NUM_TUNABLE_FUNCS] = {
    [DCCL_FUNC_BROADCAST] = "broadcast", [DCCL_FUNC_REDUCE] = "reduce", [DCCL_FUNC_ALLGATHER] = "allgather",
    [DCCL_FUNC_REDUCESCATTER] = "reducescatter", [DCCL_FUNC_ALLREDUCE] = "allreduce"};
const char* const dccl_algo_names[DCCL_NUM_ALGORITHMS] = {
    [DCCL_ALGO_TREE] = "tree", [DCCL_ALGO_RING] = "ring", [DCCL_ALGO_COLLNET_DIRECT] = "collnet_direct",
    [DCCL_ALGO_COLLNET_CHAIN] = "collnet_chain", [DCCL_ALGO_NVLS] = "nvls", [DCCL_ALGO_NVLS_TREE] = "nvls_tree",
    [DCCL_ALGO_PAT] = "pat"};
const char* const dccl_proto_names[DCCL_NUM_PROTOCOLS] = {
    [DCCL_PROTO_LL] = "ll", [DCCL_PROTO_LL128] = "ll128", [DCCL_PROTO_SIMPLE] = "simple"};

/* Mirrors dynamiccl.nccl.is_supported (a test compares every cell). */
#define ALL ((1 << DCCL_PROTO_LL) | (1 << DCCL_PROTO_LL128) | (1 << DCCL_PROTO_SIMPLE))
#define SIMPLE (1 << DCCL_PROTO_SIMPLE)
const unsigned char dccl_supported[DCCL_NUM_TUNABLE_FUNCS][DCCL_NUM_ALGORITHMS] = {
    [DCCL_FUNC_BROADCAST] = {[DCCL_ALGO_RING] = ALL},
    [DCCL_FUNC_REDUCE] = {[DCCL_ALGO_RING] = ALL},
    [DCCL_FUNC_ALLGATHER] = {[DCCL_ALGO_RING] = ALL, [DCCL_ALGO_COLLNET_DIRECT] = SIMPLE,
                             [DCCL_ALGO_NVLS] = SIMPLE, [DCCL_ALGO_PAT] = SIMPLE},
    [DCCL_FUNC_REDUCESCATTER] = {[DCCL_ALGO_RING] = ALL, [DCCL_ALGO_COLLNET_DIRECT] = SIMPLE,
                                 [DCCL_ALGO_NVLS] = SIMPLE, [DCCL_ALGO_PAT] = SIMPLE},
    [DCCL_FUNC_ALLREDUCE] = {[DCCL_ALGO_TREE] = ALL, [DCCL_ALGO_RING] = ALL, [DCCL_ALGO_COLLNET_DIRECT] = SIMPLE,
                             [DCCL_ALGO_COLLNET_CHAIN] = SIMPLE, [DCCL_ALGO_NVLS] = SIMPLE,
                             [DCCL_ALGO_NVLS_TREE] = SIMPLE},
};
#undef ALL
#undef SIMPLE

void dccl_table_free(dccl_table_t* t) {
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

/* "a, b or c": the names a field accepts, for its error message. */
static const char* name_list(char* buf, size_t len, const char* const* names, int count) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < count && used < len; i++) {
    int n = snprintf(buf + used, len - used, "%s%s", i == 0 ? "" : i == count - 1 ? " or " : ", ", names[i]);
    if (n < 0) break;
    used += (size_t)n;
  }
  return buf;
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

static int unknown_coll(char* err, size_t errlen, size_t lineno, const char* field, const char* token) {
  char names[128];
  return fail(err, errlen, lineno, field, "unknown collective '%.40s'; expected %s", token,
              name_list(names, sizeof(names), dccl_coll_names, DCCL_NUM_TUNABLE_FUNCS));
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

static int parse_rule(char** tok, int ntok, size_t lineno, dccl_rule_t* r, char* err, size_t errlen) {
  char names[128];
  r->coll = name_index(tok[1], dccl_coll_names, DCCL_NUM_TUNABLE_FUNCS);
  if (r->coll < 0) return unknown_coll(err, errlen, lineno, "coll", tok[1]);
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
  if (parse_choice(tok[9], dccl_algo_names, DCCL_NUM_ALGORITHMS, &r->algorithm) != 0)
    return fail(err, errlen, lineno, "algorithm", "unknown algorithm '%.40s'; expected -1 (keep NCCL's), %s", tok[9],
                name_list(names, sizeof(names), dccl_algo_names, DCCL_NUM_ALGORITHMS));
  if (parse_choice(tok[10], dccl_proto_names, DCCL_NUM_PROTOCOLS, &r->protocol) != 0)
    return fail(err, errlen, lineno, "protocol", "unknown protocol '%.40s'; expected -1 (keep NCCL's), %s", tok[10],
                name_list(names, sizeof(names), dccl_proto_names, DCCL_NUM_PROTOCOLS));
  if (parse_int(tok[11], -1, DCCL_MAX_CHANNELS, &r->channels) != 0 || r->channels == 0)
    return fail(err, errlen, lineno, "channels", "'%.40s'; expected -1 (keep NCCL's) or 1 .. %d",
                tok[11], DCCL_MAX_CHANNELS);
  r->chunk_bytes = -1;
  if (ntok == DCCL_RULE_TOKENS &&
      (parse_int(tok[12], -1, DCCL_MAX_CHUNK_BYTES, &r->chunk_bytes) != 0 ||
       (r->chunk_bytes != -1 && (r->chunk_bytes < DCCL_MIN_CHUNK_BYTES || (r->chunk_bytes & (r->chunk_bytes - 1))))))
    return fail(err, errlen, lineno, "chunk_bytes", "'%.40s'; expected -1 (keep NCCL's) or a power of two from %d "
                "to %d bytes", tok[12], DCCL_MIN_CHUNK_BYTES, DCCL_MAX_CHUNK_BYTES);
  /* The same support rule as dynamiccl's Rule: a set algorithm must run the collective, and a
   * set protocol must run with it (or with some algorithm, when the algorithm is kept). */
  const unsigned char* algos = dccl_supported[r->coll];
  if (r->algorithm >= 0 && !algos[r->algorithm])
    return fail(err, errlen, lineno, "algorithm", "NCCL cannot run %s with %s", dccl_coll_names[r->coll],
                dccl_algo_names[r->algorithm]);
  if (r->protocol >= 0) {
    unsigned any = 0;
    for (int a = 0; a < DCCL_NUM_ALGORITHMS; a++) any |= algos[a];
    unsigned allowed = r->algorithm >= 0 ? algos[r->algorithm] : any;
    if (!(allowed & (1u << r->protocol)))
      return fail(err, errlen, lineno, "protocol", "NCCL cannot run %s with %s/%s", dccl_coll_names[r->coll],
                  r->algorithm >= 0 ? dccl_algo_names[r->algorithm] : "any algorithm",
                  dccl_proto_names[r->protocol]);
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
  s->anchor_coll = name_index(tok[4], dccl_coll_names, DCCL_NUM_TUNABLE_FUNCS);
  if (s->anchor_coll < 0) return unknown_coll(err, errlen, lineno, "anchor_coll", tok[4]);
  if (parse_u64(tok[5], &s->anchor_bytes) != 0)
    return fail(err, errlen, lineno, "anchor_bytes", "'%.40s' is not a byte count 0 .. 2**64-1", tok[5]);
  for (size_t i = 0; i < t->n_steps; i++)
    if (t->steps[i].nranks == s->nranks && t->steps[i].nnodes == s->nnodes &&
        t->steps[i].anchor_coll == s->anchor_coll && t->steps[i].anchor_bytes == s->anchor_bytes)
      return fail(err, errlen, lineno, "anchor_bytes", "a second step line for %d ranks on %d nodes "
                  "with the same anchor; expected one line per anchor", s->nranks, s->nnodes);
  return 0;
}

/* One "rule" or "step" line, appended to the table; ``version`` is the file's (1 or 2). */
static int parse_record(char** tok, int ntok, int version, size_t lineno, dccl_table_t* t, char* err,
                        size_t errlen) {
  const int is_rule = strcmp(tok[0], "rule") == 0;
  if (!is_rule && strcmp(tok[0], "step") != 0)
    return fail(err, errlen, lineno, NULL, "unknown line kind '%.40s'; expected rule, step or a "
                "# comment", tok[0]);
  const int rule_tokens = version == 1 ? DCCL_RULE_TOKENS - 1 : DCCL_RULE_TOKENS;
  if (ntok != (is_rule ? rule_tokens : DCCL_STEP_TOKENS))
    return fail(err, errlen, lineno, NULL, is_rule
                ? "%d fields; a rule line has %d: rule coll min_bytes max_bytes nranks nnodes position "
                  "num_pipe_ops reg_buff algorithm protocol channels%s"
                : "%d fields; a step line has %d: step nranks nnodes calls_per_step anchor_coll anchor_bytes%s",
                ntok, is_rule ? rule_tokens : DCCL_STEP_TOKENS, is_rule && version > 1 ? " chunk_bytes" : "");
  size_t* count = is_rule ? &t->n_rules : &t->n_steps;
  if (*count == (is_rule ? DCCL_MAX_RULES : DCCL_MAX_STEPS))
    return fail(err, errlen, lineno, NULL, "more than %d %s", is_rule ? DCCL_MAX_RULES : DCCL_MAX_STEPS,
                is_rule ? "rules" : "step lines");
  int grown = is_rule ? grow((void**)&t->rules, &t->cap_rules, *count, sizeof(dccl_rule_t))
                      : grow((void**)&t->steps, &t->cap_steps, *count, sizeof(dccl_step_t));
  if (grown != 0) return fail(err, errlen, lineno, NULL, "out of memory");
  int rc = is_rule ? parse_rule(tok, ntok, lineno, &t->rules[*count], err, errlen)
                   : parse_step(tok, lineno, t, &t->steps[*count], err, errlen);
  if (rc == 0) (*count)++;
  return rc;
}

int dccl_table_parse(const char* data, size_t len, dccl_table_t* t, char* err, size_t errlen) {
  memset(t, 0, sizeof(*t));
  char line[DCCL_MAX_LINE_BYTES + 2];
  size_t pos = 0, lineno = 0;
  int seen_header = 0, version = 0;
  while (pos < len) {
    lineno++;
    size_t end = pos;
    while (end < len && data[end] != '\n') end++;
    size_t n = end - pos;
    if (n > 0 && data[pos + n - 1] == '\r') n--;
    if (n > DCCL_MAX_LINE_BYTES) {
      dccl_table_free(t);
      return fail(err, errlen, lineno, NULL, "longer than %d bytes", DCCL_MAX_LINE_BYTES);
    }
    if (memchr(data + pos, '\0', n)) {
      dccl_table_free(t);
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
        dccl_table_free(t);
        return fail(err, errlen, lineno, NULL, "more than %d fields", DCCL_MAX_TOKENS);
      }
      tok[ntok++] = p;
      while (*p && *p != ' ' && *p != '\t') p++;
    }
    if (!seen_header) {
      if (ntok != 2 || strcmp(tok[0], DCCL_TABLE_MAGIC) != 0 ||
          (strcmp(tok[1], "1") != 0 && strcmp(tok[1], DCCL_TABLE_VERSION) != 0)) {
        dccl_table_free(t);
        return fail(err, errlen, lineno, NULL, "expected the header '" DCCL_TABLE_HEADER "' (or version 1) as "
                    "the first line (is this a dynamiccl plugin table? `dynamiccl launch` writes one)");
      }
      version = tok[1][0] - '0';
      seen_header = 1;
      continue;
    }
    if (ntok == 0) continue; /* not reached: a non-blank line has a field */
    if (parse_record(tok, ntok, version, lineno, t, err, errlen) != 0) {
      dccl_table_free(t);
      return -1;
    }
  }
  if (!seen_header) return fail(err, errlen, 1, NULL, "empty file; expected the header '" DCCL_TABLE_HEADER "'");
  return 0;
}

int dccl_table_load(const char* path, dccl_table_t* t, char* err, size_t errlen) {
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
  int rc = dccl_table_parse(data, len, t, err, errlen);
  free(data);
  return rc;
}
