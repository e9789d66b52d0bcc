/* A mutation fuzzer for the tuner plugin's table parser (dynamiccl_tuner_parse).
 *
 * Built with -fsanitize=address,undefined -fno-sanitize-recover=all together with the instrumented
 * plugin's C files, so any memory error or undefined behaviour aborts the run: a run that exits 0
 * had no crash.
 *
 *   fuzz_table SEED_DIR SECONDS RNG_SEED [SAMPLE_DIR SAMPLE_EVERY MAX_SAMPLES]
 *
 * Every file of SEED_DIR is a seed (experiments/plugin/fuzz.py writes valid tables from random
 * DecisionTables and edge cases).  Each execution takes a seed, or an earlier accepted mutant,
 * applies 1 to 8 mutations (bit flips, interesting bytes, inserts, deletes, copies, splices with
 * another input, token replacement with boundary numbers and names, line duplication, deletion
 * and swaps, padding a line to 509..514 bytes, separator and line-ending changes, extra or missing
 * fields) and parses a copy in an exactly sized heap buffer.  The run is deterministic for a given
 * RNG_SEED apart from where the time limit cuts it.
 *
 * With SAMPLE_DIR, every seed and every SAMPLE_EVERY-th input (at most MAX_SAMPLES) is written
 * there with the parser's verdict in SAMPLE_DIR/manifest.tsv (file, rules or -1, step lines, the
 * error's line number or 0, the error), for the differential check against the Python mirror.
 * At the end one JSON object goes to stdout: executions, seconds, accepted, distinct error
 * messages (numbers and quoted tokens replaced, so one message per kind of problem), samples.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tuner.h"

#define FUZZ_MAX_INPUT (1 << 16)
#define POOL_SIZE 4096
#define MAX_KINDS 4096

typedef struct {
  unsigned char* data;
  size_t len;
} input_t;

static uint64_t g_rng;
static uint64_t rnd(void) {
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return g_rng * 2685821657736338717ULL;
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static void* xmalloc(size_t n) {
  void* p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "fuzz_table: out of memory\n");
    exit(2);
  }
  return p;
}

/* ------------------------------------------------------------------------------------------ */
/* Seeds and the pool of accepted mutants                                                       */

static input_t* g_seeds;
static size_t g_n_seeds;
static input_t g_pool[POOL_SIZE];
static size_t g_pool_n, g_pool_next;
static char** g_seed_names;

static void load_seeds(const char* dir) {
  struct dirent** names;
  int n = scandir(dir, &names, NULL, alphasort);
  if (n < 0) {
    perror(dir);
    exit(2);
  }
  g_seeds = xmalloc((size_t)n * sizeof(input_t));
  g_seed_names = xmalloc((size_t)n * sizeof(char*));
  for (int i = 0; i < n; i++) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
    FILE* f = names[i]->d_name[0] == '.' ? NULL : fopen(path, "rb");
    if (f) {
      input_t in = {xmalloc(FUZZ_MAX_INPUT), 0};
      in.len = fread(in.data, 1, FUZZ_MAX_INPUT, f);
      fclose(f);
      g_seed_names[g_n_seeds] = strdup(names[i]->d_name);
      g_seeds[g_n_seeds++] = in;
    }
    free(names[i]);
  }
  free(names);
  if (g_n_seeds == 0) {
    fprintf(stderr, "fuzz_table: no seeds in %s\n", dir);
    exit(2);
  }
}

static void pool_add(const unsigned char* data, size_t len) {
  input_t* slot = &g_pool[g_pool_next];
  free(slot->data);
  slot->data = xmalloc(len);
  memcpy(slot->data, data, len);
  slot->len = len;
  g_pool_next = (g_pool_next + 1) % POOL_SIZE;
  if (g_pool_n < POOL_SIZE) g_pool_n++;
}

static const input_t* any_input(void) {
  if (g_pool_n && below(100) < 30) return &g_pool[below(g_pool_n)];
  return &g_seeds[below(g_n_seeds)];
}

/* ------------------------------------------------------------------------------------------ */
/* Mutations on buf[0 .. *len), capacity FUZZ_MAX_INPUT                                              */

static const char* const kTokens[] = {
    "18446744073709551615", "18446744073709551616", "18446744073709551614", "99999999999999999999999",
    "00000000000000000000018446744073709551615", "-1", "0", "-0", "1", "00", "007", "+1", "--1", "-", "2",
    "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967295", "4294967296", "63", "64", "65",
    "-2", "1e3", "0x10", "1.0", "4095", "4096", "131072", "196608", "67108864", "134217728", "allreduce", "broadcast", "reduce", "allgather", "reducescatter", "sendrecv",
    "send", "AllReduce", "tree", "ring", "collnet_direct", "collnet_chain", "nvls", "nvls_tree", "pat", "Ring",
    "ll", "ll128", "simple", "LL128", "rule", "step", "Rule", "#", "#rule", "dynamiccl-tuner-table", "",
    "\xb2", "\xb9", "\xc2\xb2", "\xa0", "\x85", "\x0b", "\x0c", "\x1c", "\xef\xbc\x91", "\xd9\xa3", "1\r", "\r",
};
#define N_TOKENS (sizeof(kTokens) / sizeof(kTokens[0]))
static const unsigned char kBytes[] = {' ', '\t', '\n', '\r', '\0', '#', '-', '+', '0', '1', '9', 0xff, 0x80,
                                       'a', '\v', '\f', 0xa0, 0x85, 0x1c};

static int is_sep(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void insert_bytes(unsigned char* buf, size_t* len, size_t at, const void* what, size_t n) {
  if (at > *len || *len + n > FUZZ_MAX_INPUT) return;
  memmove(buf + at + n, buf + at, *len - at);
  memcpy(buf + at, what, n);
  *len += n;
}

static void delete_bytes(unsigned char* buf, size_t* len, size_t at, size_t n) {
  if (at + n > *len) n = *len - at;
  memmove(buf + at, buf + at + n, *len - at - n);
  *len -= n;
}

/* The token (run of non-separators) holding a random byte; 0 if the input has none. */
static int pick_token(const unsigned char* buf, size_t len, size_t* start, size_t* end) {
  for (int tries = 0; tries < 8 && len; tries++) {
    size_t i = below(len);
    if (is_sep(buf[i])) continue;
    *start = i;
    *end = i;
    while (*start > 0 && !is_sep(buf[*start - 1])) (*start)--;
    while (*end < len && !is_sep(buf[*end])) (*end)++;
    return 1;
  }
  return 0;
}

/* The line holding a random byte: [start, end) without its '\n'. */
static void pick_line(const unsigned char* buf, size_t len, size_t* start, size_t* end) {
  size_t i = below(len + 1);
  *start = i;
  *end = i;
  while (*start > 0 && buf[*start - 1] != '\n') (*start)--;
  while (*end < len && buf[*end] != '\n') (*end)++;
}

static void mutate(unsigned char* buf, size_t* len) {
  size_t a, b, c, d;
  switch (below(16)) {
    case 0: /* flip a bit */
      if (*len) buf[below(*len)] ^= (unsigned char)(1u << below(8));
      break;
    case 1: /* an interesting byte */
      if (*len) buf[below(*len)] = kBytes[below(sizeof(kBytes))];
      break;
    case 2: { /* insert 1..4 bytes */
      unsigned char bytes[4];
      size_t n = 1 + below(4);
      for (size_t i = 0; i < n; i++) bytes[i] = below(2) ? kBytes[below(sizeof(kBytes))] : (unsigned char)rnd();
      insert_bytes(buf, len, below(*len + 1), bytes, n);
      break;
    }
    case 3: /* delete a range */
      if (*len) delete_bytes(buf, len, below(*len), 1 + below(below(2) ? 4 : 64));
      break;
    case 4: { /* copy a range elsewhere */
      if (!*len) break;
      a = below(*len);
      b = 1 + below(64);
      if (a + b > *len) b = *len - a;
      unsigned char tmp[64];
      memcpy(tmp, buf + a, b);
      insert_bytes(buf, len, below(*len + 1), tmp, b);
      break;
    }
    case 5: { /* splice: our head, another input's tail */
      const input_t* other = any_input();
      a = below(*len + 1);
      b = below(other->len + 1);
      if (a + (other->len - b) > FUZZ_MAX_INPUT) break;
      memcpy(buf + a, other->data + b, other->len - b);
      *len = a + (other->len - b);
      break;
    }
    case 6:
    case 7:
    case 8: { /* replace a token with a boundary number or a name */
      if (!pick_token(buf, *len, &a, &b)) break;
      const char* t = kTokens[below(N_TOKENS)];
      delete_bytes(buf, len, a, b - a);
      insert_bytes(buf, len, a, t, strlen(t));
      break;
    }
    case 9: /* duplicate a line */
      pick_line(buf, *len, &a, &b);
      if (b < *len) {
        unsigned char tmp[1024];
        if (b + 1 - a <= sizeof(tmp)) {
          memcpy(tmp, buf + a, b + 1 - a);
          insert_bytes(buf, len, below(2) ? a : b + 1, tmp, b + 1 - a);
        }
      }
      break;
    case 10: /* delete a line */
      pick_line(buf, *len, &a, &b);
      delete_bytes(buf, len, a, b - a + (b < *len));
      break;
    case 11: { /* swap two lines (the first with a later one) */
      pick_line(buf, *len, &a, &b);
      pick_line(buf, *len, &c, &d);
      if (c < a) {
        size_t t0 = a, t1 = b;
        a = c, b = d, c = t0, d = t1;
      }
      if (c <= b || d - c > 1024 || b - a > 1024) break;
      unsigned char first[1024], second[1024];
      size_t n1 = b - a, n2 = d - c;
      memcpy(first, buf + a, n1);
      memcpy(second, buf + c, n2);
      delete_bytes(buf, len, c, n2);
      insert_bytes(buf, len, c, first, n1);
      delete_bytes(buf, len, a, n1);
      insert_bytes(buf, len, a, second, n2);
      break;
    }
    case 12: { /* pad a line to 509 .. 514 bytes (the limit is 511) */
      pick_line(buf, *len, &a, &b);
      size_t target = 509 + below(6), have = b - a;
      if (have >= target) break;
      static const char pads[] = {' ', '\t', '0', '#'};
      char pad = pads[below(sizeof(pads))];
      unsigned char tmp[520];
      memset(tmp, pad, sizeof(tmp));
      size_t at = a;
      if (pad == '0') { /* leading zeros on a number keep it valid */
        for (size_t i = a; i < b; i++)
          if (buf[i] >= '0' && buf[i] <= '9' && (i == a || is_sep(buf[i - 1]))) {
            at = i;
            break;
          }
      } else if (pad != '#') {
        at = b;
      }
      insert_bytes(buf, len, at, tmp, target - have);
      break;
    }
    case 13: /* separators and line endings */
      if (!*len) break;
      a = below(*len);
      switch (below(4)) {
        case 0: if (buf[a] == ' ') buf[a] = '\t'; break;
        case 1: insert_bytes(buf, len, a, " \t ", 1 + below(3)); break;
        case 2: for (size_t i = a; i < *len; i++) if (buf[i] == '\n') { insert_bytes(buf, len, i, "\r", 1); break; } break;
        default: if (buf[*len - 1] == '\n') (*len)--; else insert_bytes(buf, len, *len, "\r\n", 2); break;
      }
      break;
    case 14: /* one field more or less */
      pick_line(buf, *len, &a, &b);
      if (below(2)) {
        const char* t = kTokens[below(N_TOKENS)];
        insert_bytes(buf, len, b, " ", 1);
        insert_bytes(buf, len, b + 1, t, strlen(t));
      } else if (pick_token(buf + a, b - a, &c, &d)) {
        delete_bytes(buf, len, a + c, d - c);
      }
      break;
    default: { /* a whole line from another input */
      const input_t* other = any_input();
      pick_line(other->data, other->len, &a, &b);
      c = below(*len + 1);
      while (c > 0 && buf[c - 1] != '\n') c--;
      insert_bytes(buf, len, c, other->data + a, b - a + (b < other->len));
      break;
    }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Error kinds: the message with numbers and quoted tokens replaced                             */

typedef struct {
  char* text;
  long count;
} kind_t;
static kind_t g_kinds[MAX_KINDS];
static size_t g_n_kinds;

static void normalise(const char* err, char* out, size_t n) {
  size_t o = 0;
  for (const char* p = err; *p && o + 4 < n;) {
    if (*p == '\'') { /* a quoted token: never a space in it, but maybe quotes: up to the last
                        * quote before the next space */
      const char* close = NULL;
      for (const char* q = p + 1; *q && *q != ' '; q++)
        if (*q == '\'') close = q;
      if (close) {
        memcpy(out + o, "'X'", 3);
        o += 3;
        p = close + 1;
        continue;
      }
    }
    if (*p >= '0' && *p <= '9') {
      out[o++] = 'N';
      while (*p >= '0' && *p <= '9') p++;
      continue;
    }
    out[o++] = *p++;
  }
  out[o] = '\0';
}

static void count_kind(const char* err) {
  char text[DCCL_ERR_BYTES + 8];
  normalise(err, text, sizeof(text));
  uint64_t h = 1469598103934665603ULL;
  for (const char* p = text; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  for (size_t i = h % MAX_KINDS, probes = 0; probes < MAX_KINDS; i = (i + 1) % MAX_KINDS, probes++) {
    if (!g_kinds[i].text) {
      g_kinds[i].text = strdup(text);
      g_kinds[i].count = 1;
      g_n_kinds++;
      return;
    }
    if (strcmp(g_kinds[i].text, text) == 0) {
      g_kinds[i].count++;
      return;
    }
  }
}

static void json_string(FILE* f, const char* s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20 || ch >= 0x7f)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

/* ------------------------------------------------------------------------------------------ */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
  long rules, steps, line;
  char err[DCCL_ERR_BYTES];
} verdict_t;

/* One execution on an exactly sized heap copy, so that a read past the end is caught. */
static verdict_t run_one(const unsigned char* data, size_t len) {
  verdict_t v = {0, 0, 0, ""};
  char* copy = xmalloc(len);
  memcpy(copy, data, len);
  v.rules = dynamiccl_tuner_parse(copy, len, v.err, sizeof(v.err), &v.steps);
  free(copy);
  if (v.rules < 0) {
    v.steps = 0;
    if (strncmp(v.err, "line ", 5) == 0) v.line = strtol(v.err + 5, NULL, 10);
  }
  return v;
}

static FILE* g_manifest;
static const char* g_sample_dir;
static long g_samples, g_max_samples;

static void write_sample(const char* name, const unsigned char* data, size_t len, const verdict_t* v) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", g_sample_dir, name);
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    perror(path);
    exit(2);
  }
  char err[DCCL_ERR_BYTES];
  size_t i = 0;
  for (const char* p = v->err; *p && i + 1 < sizeof(err); p++) /* one line of printable ASCII */
    err[i++] = (*p < 0x20 || *p >= 0x7f) ? '?' : *p;
  err[i] = '\0';
  fprintf(g_manifest, "%s\t%ld\t%ld\t%ld\t%s\n", name, v->rules, v->steps, v->line, err);
  g_samples++;
}

int main(int argc, char** argv) {
  if (argc != 4 && argc != 7) {
    fprintf(stderr, "usage: %s SEED_DIR SECONDS RNG_SEED [SAMPLE_DIR SAMPLE_EVERY MAX_SAMPLES]\n", argv[0]);
    return 2;
  }
  double seconds = atof(argv[2]);
  g_rng = strtoull(argv[3], NULL, 10) * 0x9E3779B97F4A7C15ULL + 1;
  long every = 0;
  load_seeds(argv[1]);
  if (argc == 7) {
    char path[4096];
    g_sample_dir = argv[4];
    every = atol(argv[5]);
    g_max_samples = atol(argv[6]);
    snprintf(path, sizeof(path), "%s/manifest.tsv", g_sample_dir);
    g_manifest = fopen(path, "w");
    if (!g_manifest) {
      perror(path);
      return 2;
    }
  }

  long execs = 0, accepted = 0;
  size_t biggest = 0;
  double start = now(), elapsed = 0;
  for (size_t i = 0; i < g_n_seeds; i++) { /* the seeds themselves, all of them sampled */
    verdict_t v = run_one(g_seeds[i].data, g_seeds[i].len);
    execs++;
    if (v.rules >= 0) {
      accepted++;
    } else {
      count_kind(v.err);
    }
    if (g_manifest) {
      char name[300];
      snprintf(name, sizeof(name), "seed-%.250s", g_seed_names[i]);
      write_sample(name, g_seeds[i].data, g_seeds[i].len, &v);
    }
  }
  unsigned char* buf = xmalloc(FUZZ_MAX_INPUT);
  for (;;) {
    if ((execs & 63) == 0 && (elapsed = now() - start) >= seconds) break;
    const input_t* base = any_input();
    size_t len = base->len;
    memcpy(buf, base->data, len);
    for (size_t m = 1 + below(below(2) ? 2 : 8); m > 0; m--) mutate(buf, &len);
    if (len > biggest) biggest = len;
    verdict_t v = run_one(buf, len);
    execs++;
    if (v.rules >= 0) {
      accepted++;
      if (below(8) == 0) pool_add(buf, len);
    } else {
      count_kind(v.err);
    }
    if (g_manifest && every > 0 && execs % every == 0 && g_samples < g_max_samples) {
      char name[32];
      snprintf(name, sizeof(name), "%09ld", execs);
      write_sample(name, buf, len, &v);
    }
  }
  if (g_manifest && fclose(g_manifest) != 0) {
    perror("manifest.tsv");
    return 2;
  }

  printf("{\"executions\": %ld, \"seconds\": %.3f, \"execs_per_second\": %.1f, \"accepted\": %ld, "
         "\"seeds\": %zu, \"largest_input_bytes\": %zu, \"samples\": %ld, \"distinct_errors\": %zu, \"errors\": {",
         execs, elapsed, (double)execs / (elapsed > 0 ? elapsed : 1), accepted, g_n_seeds, biggest, g_samples,
         g_n_kinds);
  int first = 1;
  for (size_t i = 0; i < MAX_KINDS; i++) {
    if (!g_kinds[i].text) continue;
    printf("%s", first ? "" : ", ");
    json_string(stdout, g_kinds[i].text);
    printf(": %ld", g_kinds[i].count);
    first = 0;
    free(g_kinds[i].text);
  }
  printf("}}\n");
  for (size_t i = 0; i < g_n_seeds; i++) free(g_seeds[i].data), free(g_seed_names[i]);
  for (size_t i = 0; i < g_pool_n; i++) free(g_pool[i].data);
  free(g_seeds);
  free(g_seed_names);
  free(buf);
  return 0;
}
