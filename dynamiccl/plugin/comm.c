/* One communicator's view of the table: its rules indexed by byte segment, and its position counter.
 *
 * Index: at init, the rules that can match the communicator (collective, nranks, nnodes) are cut at
 * every rule's byte bounds into segments, each with its rules in table order; a call's candidates
 * are the list of the segment holding its nBytes (a binary search).  Should overlapping rules make
 * the index larger than DCCL_MAX_INDEX_ENTRIES, the communicator scans its rules instead.
 *
 * Position: after a call matching the anchor (collective and nBytes) of one of the step lines of
 * the communicator's shape (nranks, nnodes; the first such line in file order) the position is 0
 * and counts up; once that line's calls_per_step calls have passed, the next call must be an
 * anchor again or the position becomes unknown (-1) until an anchor is seen.  Every rank of a
 * communicator sees the same sequence of collectives, so every rank decides alike.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "tuner.h"

#define DCCL_MAX_INDEX_ENTRIES (1u << 24)

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/* The last i with bounds[i] <= value; callers guarantee bounds[0] <= value.  Branch-free: the
 * lookup runs for every collective, and sizes jump around too much for a branch predictor. */
static uint32_t segment_of(const uint64_t* bounds, uint32_t n, uint64_t value) {
  const uint64_t* base = bounds;
  while (n > 1) {
    uint32_t half = n / 2;
    base = (base[half] <= value) ? base + half : base;
    n -= half;
  }
  return (uint32_t)(base - bounds);
}

static int rule_fits(const dccl_rule_t* r, int coll, int nranks, int nnodes) {
  return r->coll == coll && (r->nranks < 0 || r->nranks == nranks) && (r->nnodes < 0 || r->nnodes == nnodes);
}

static void index_free(dccl_coll_index_t* x) {
  free(x->bounds);
  free(x->offsets);
  free(x->cands);
  free(x->linear);
  memset(x, 0, sizeof(*x));
}

/* The segments [lo, hi] a rule covers. */
static void rule_segments(const dccl_rule_t* r, const uint64_t* bounds, uint32_t nseg, uint32_t* lo, uint32_t* hi) {
  *lo = segment_of(bounds, nseg, r->min_bytes);
  *hi = r->max_bytes == UINT64_MAX ? nseg - 1 : segment_of(bounds, nseg, r->max_bytes + 1) - 1;
}

static int index_build(dccl_coll_index_t* x, const dccl_table_t* t, int coll, int nranks, int nnodes) {
  memset(x, 0, sizeof(*x));
  uint32_t n = 0;
  for (size_t i = 0; i < t->n_rules; i++) n += rule_fits(&t->rules[i], coll, nranks, nnodes);
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
    if (!rule_fits(r, coll, nranks, nnodes)) continue;
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
  uint32_t lo, hi;
  for (uint32_t k = 0; k < x->n_linear; k++) {
    rule_segments(&t->rules[x->linear[k]], points, nseg, &lo, &hi);
    total += hi - lo + 1;
  }
  if (total > DCCL_MAX_INDEX_ENTRIES) {
    free(points);
    return 0; /* keep the linear list: correct, only slower */
  }
  x->offsets = calloc((size_t)nseg + 1, sizeof(uint32_t));
  x->cands = malloc((size_t)(total ? total : 1) * sizeof(uint32_t));
  uint32_t* fill = malloc((size_t)nseg * sizeof(uint32_t));
  if (!x->offsets || !x->cands || !fill) {
    free(fill);
    free(points);
    return -1;
  }
  for (uint32_t k = 0; k < x->n_linear; k++) {
    rule_segments(&t->rules[x->linear[k]], points, nseg, &lo, &hi);
    for (uint32_t s = lo; s <= hi; s++) x->offsets[s + 1]++;
  }
  for (uint32_t s = 0; s < nseg; s++) x->offsets[s + 1] += x->offsets[s];
  memcpy(fill, x->offsets, (size_t)nseg * sizeof(uint32_t));
  for (uint32_t k = 0; k < x->n_linear; k++) { /* table order, so each segment's list is too */
    rule_segments(&t->rules[x->linear[k]], points, nseg, &lo, &hi);
    for (uint32_t s = lo; s <= hi; s++) x->cands[fill[s]++] = x->linear[k];
  }
  free(fill);
  x->bounds = points;
  x->n_segments = nseg;
  return 0;
}

dccl_comm_t* dccl_comm_new(const dccl_table_t* table, size_t nranks, size_t nnodes, unsigned* unindexed) {
  *unindexed = 0;
  dccl_comm_t* c = calloc(1, sizeof(dccl_comm_t));
  if (!c) return NULL;
  c->nranks = nranks > INT_MAX ? INT_MAX : (int)nranks;
  c->nnodes = nnodes > INT_MAX ? INT_MAX : (int)nnodes;
  c->table = table;
  c->position = -1;
  for (int coll = 0; coll < DCCL_NUM_TUNABLE_FUNCS; coll++) {
    c->last[coll].algorithm = c->last[coll].protocol = -1;
    c->last[coll].chunk_bytes = -1; /* nothing decided yet: getChunkSize keeps NCCL's */
  }
  if (!table) return c;
  for (size_t i = 0; i < table->n_steps; i++)
    c->n_shape_steps += table->steps[i].nranks == c->nranks && table->steps[i].nnodes == c->nnodes;
  if (c->n_shape_steps) {
    c->shape_steps = malloc((size_t)c->n_shape_steps * sizeof(*c->shape_steps));
    int k = 0;
    for (size_t i = 0; c->shape_steps && i < table->n_steps; i++)
      if (table->steps[i].nranks == c->nranks && table->steps[i].nnodes == c->nnodes)
        c->shape_steps[k++] = &table->steps[i];
    if (!c->shape_steps) c->n_shape_steps = 0; /* out of memory: positions stay unknown */
  }
  for (int coll = 0; coll < DCCL_NUM_TUNABLE_FUNCS; coll++)
    if (index_build(&c->index[coll], table, coll, c->nranks, c->nnodes) != 0) {
      index_free(&c->index[coll]); /* no candidates: NCCL decides this collective */
      *unindexed |= 1u << coll;
    }
  return c;
}

void dccl_comm_free(dccl_comm_t* c) {
  for (int coll = 0; coll < DCCL_NUM_TUNABLE_FUNCS; coll++) index_free(&c->index[coll]);
  free(c->shape_steps);
  free(c);
}

int dccl_comm_advance(dccl_comm_t* c, int coll, uint64_t nbytes) {
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

const uint32_t* dccl_comm_candidates(const dccl_comm_t* c, int coll, uint64_t nbytes, uint32_t* n, int* linear) {
  const dccl_coll_index_t* x = &c->index[coll];
  *linear = x->bounds == NULL;
  if (*linear) {
    *n = x->n_linear;
    return x->linear;
  }
  if (x->n_segments == 0 || nbytes < x->bounds[0]) {
    *n = 0;
    return NULL;
  }
  uint32_t s = segment_of(x->bounds, x->n_segments, nbytes);
  *n = x->offsets[s + 1] - x->offsets[s];
  return x->cands + x->offsets[s];
}
