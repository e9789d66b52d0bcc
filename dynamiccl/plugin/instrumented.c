/* The instrumented variant's extra entry points, for tests, `dynamiccl doctor` and live measurement:
 * a forced choice (the override), counters and the last decision, the table parser on memory and
 * on files, the support rule, and reset.  Built only into libnccl-tuner-dynamiccl-instrumented.so,
 * with -DDCCL_INSTRUMENTED, which turns decide.c's hooks (dccl_take_override, dccl_observe) on.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "tuner.h"

#define DCCL_PLUGIN_VERSION "2" /* 2: chunk sizes (override, stats) */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
  int active;                   /* read without the lock first: 0 costs one load per call */
  int algorithm, protocol, channels, chunk_bytes;
  long long remaining;          /* -1 = until cleared */
} g_override;

static dccl_counters_t g_counters;
static dccl_decision_t g_last = {-1, -1, 0, -1, -1, DCCL_SOURCE_NONE, -1, -1};

int dccl_take_override(int* algorithm, int* protocol, int* channels, int* chunk_bytes) {
  if (!__atomic_load_n(&g_override.active, __ATOMIC_ACQUIRE)) return 0;
  int taken = 0;
  pthread_mutex_lock(&g_lock);
  if (g_override.active) {
    *algorithm = g_override.algorithm;
    *protocol = g_override.protocol;
    *channels = g_override.channels;
    *chunk_bytes = g_override.chunk_bytes;
    taken = 1;
    if (g_override.remaining > 0 && --g_override.remaining == 0)
      __atomic_store_n(&g_override.active, 0, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&g_lock);
  return taken;
}

/* Statistics, not synchronisation: relaxed loads and stores (no locked instruction per call); two
 * threads deciding at the same instant may lose a count, and the last one's decision wins. */
#define COUNT(counter) \
  __atomic_store_n(&(counter), __atomic_load_n(&(counter), __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED)

void dccl_observe(const dccl_decision_t* d) {
  COUNT(g_counters.calls);
  if (d->source == DCCL_SOURCE_RULE) COUNT(g_counters.ruled);
  if (d->source == DCCL_SOURCE_OVERRIDE) COUNT(g_counters.overridden);
  if (d->source == DCCL_SOURCE_REFUSED) COUNT(g_counters.refused);
  __atomic_store_n(&g_last.algorithm, d->algorithm, __ATOMIC_RELAXED);
  __atomic_store_n(&g_last.protocol, d->protocol, __ATOMIC_RELAXED);
  __atomic_store_n(&g_last.channels, d->channels, __ATOMIC_RELAXED);
  __atomic_store_n(&g_last.rule, d->rule, __ATOMIC_RELAXED);
  __atomic_store_n(&g_last.position, d->position, __ATOMIC_RELAXED);
  __atomic_store_n(&g_last.source, d->source, __ATOMIC_RELAXED);
  __atomic_store_n(&g_last.chunk_bytes, d->chunk_bytes, __ATOMIC_RELAXED);
  __atomic_store_n(&g_last.chunk_returned, -1LL, __ATOMIC_RELAXED);
}

void dccl_observe_chunk(int set, size_t chunk_bytes) {
  COUNT(g_counters.chunk_calls);
  if (set) COUNT(g_counters.chunk_set);
  __atomic_store_n(&g_last.chunk_returned, (long long)chunk_bytes, __ATOMIC_RELAXED);
}

DCCL_EXPORT const char* dynamiccl_tuner_version(void) { return DCCL_PLUGIN_VERSION; }

/* algorithm / protocol / channels / chunk_bytes -1 keep NCCL's.  A forced cell NCCL disabled is
 * refused and NCCL decides that call (and keeps its chunk).  chunk_bytes is checked as a table's. */
DCCL_EXPORT int dynamiccl_tuner_override(int algorithm, int protocol, int channels, long long chunk_bytes,
                                         long long count) {
  if (algorithm < -1 || algorithm >= DCCL_NUM_ALGORITHMS || protocol < -1 || protocol >= DCCL_NUM_PROTOCOLS ||
      channels < -1 || channels == 0 || channels > DCCL_MAX_CHANNELS || count < -1 ||
      (chunk_bytes != -1 && (chunk_bytes < DCCL_MIN_CHUNK_BYTES || chunk_bytes > DCCL_MAX_CHUNK_BYTES ||
                             (chunk_bytes & (chunk_bytes - 1)))))
    return -1;
  pthread_mutex_lock(&g_lock);
  g_override.algorithm = algorithm;
  g_override.protocol = protocol;
  g_override.channels = channels;
  g_override.chunk_bytes = (int)chunk_bytes;
  g_override.remaining = count;
  __atomic_store_n(&g_override.active, count != 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&g_lock);
  return 0;
}

DCCL_EXPORT void dynamiccl_tuner_stats(dccl_counters_t* counters, dccl_decision_t* last) {
  if (counters) {
    counters->calls = __atomic_load_n(&g_counters.calls, __ATOMIC_RELAXED);
    counters->ruled = __atomic_load_n(&g_counters.ruled, __ATOMIC_RELAXED);
    counters->overridden = __atomic_load_n(&g_counters.overridden, __ATOMIC_RELAXED);
    counters->refused = __atomic_load_n(&g_counters.refused, __ATOMIC_RELAXED);
    counters->chunk_calls = __atomic_load_n(&g_counters.chunk_calls, __ATOMIC_RELAXED);
    counters->chunk_set = __atomic_load_n(&g_counters.chunk_set, __ATOMIC_RELAXED);
  }
  if (last) {
    last->algorithm = __atomic_load_n(&g_last.algorithm, __ATOMIC_RELAXED);
    last->protocol = __atomic_load_n(&g_last.protocol, __ATOMIC_RELAXED);
    last->channels = __atomic_load_n(&g_last.channels, __ATOMIC_RELAXED);
    last->rule = __atomic_load_n(&g_last.rule, __ATOMIC_RELAXED);
    last->position = __atomic_load_n(&g_last.position, __ATOMIC_RELAXED);
    last->source = __atomic_load_n(&g_last.source, __ATOMIC_RELAXED);
    last->chunk_bytes = __atomic_load_n(&g_last.chunk_bytes, __ATOMIC_RELAXED);
    last->chunk_returned = __atomic_load_n(&g_last.chunk_returned, __ATOMIC_RELAXED);
  }
}

DCCL_EXPORT int dynamiccl_tuner_supported(int coll, int algorithm, int protocol) {
  if (coll < 0 || coll >= DCCL_NUM_TUNABLE_FUNCS || algorithm < 0 || algorithm >= DCCL_NUM_ALGORITHMS ||
      protocol < 0 || protocol >= DCCL_NUM_PROTOCOLS)
    return 0;
  return (dccl_supported[coll][algorithm] >> protocol) & 1;
}

/* The rule count of a parsed table (its step lines into ``n_steps`` if not NULL), which is freed;
 * -1 if it did not parse. */
static long counts_and_free(int rc, dccl_table_t* t, long* n_steps) {
  if (rc != 0) return -1;
  long n = (long)t->n_rules;
  if (n_steps) *n_steps = (long)t->n_steps;
  dccl_table_free(t);
  return n;
}

/* The caller's error buffer, or ``local`` when it gave none; emptied. */
static char* error_buffer(char* err, size_t* errlen, char* local, size_t local_bytes) {
  if (!err || *errlen == 0) {
    err = local;
    *errlen = local_bytes;
  }
  err[0] = '\0';
  return err;
}

DCCL_EXPORT long dynamiccl_tuner_parse(const char* data, size_t len, char* err, size_t errlen, long* n_steps) {
  dccl_table_t t;
  char local[DCCL_ERR_BYTES];
  err = error_buffer(err, &errlen, local, sizeof(local));
  if (!data && len) return -1;
  return counts_and_free(dccl_table_parse(data ? data : "", len, &t, err, errlen), &t, n_steps);
}

DCCL_EXPORT long dynamiccl_tuner_check_file(const char* path, char* err, size_t errlen, long* n_steps) {
  dccl_table_t t;
  char local[DCCL_ERR_BYTES];
  err = error_buffer(err, &errlen, local, sizeof(local));
  if (!path) {
    snprintf(err, errlen, "no path");
    return -1;
  }
  return counts_and_free(dccl_table_load(path, &t, err, errlen), &t, n_steps);
}

DCCL_EXPORT int dynamiccl_tuner_reset(void) {
  if (dccl_forget_table() != 0) return -1;
  pthread_mutex_lock(&g_lock);
  memset(&g_counters, 0, sizeof(g_counters));
  memset(&g_override, 0, sizeof(g_override));
  pthread_mutex_unlock(&g_lock);
  return 0;
}
