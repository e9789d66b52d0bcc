/* The plugin's internals, shared by its C files: the table, a communicator's view of it, a decision.
 *
 *   table.c         reads the plain-text decision table into rules and step lines
 *   comm.c          one communicator: its rules indexed by byte segment, its position counter
 *   decide.c        the decision for one getCollInfo call, applied to NCCL's cost table, and the
 *                   chunk size getChunkSize gives for it
 *   plugin.c        the ABI glue: ncclTunerPlugin_v2 .. _v6, the table read once per process
 *   instrumented.c  dynamiccl's test and measurement entry points (only with -DDCCL_INSTRUMENTED)
 *
 * libnccl-tuner-dynamiccl.so is the first four and exports only the ncclTunerPlugin_vN structs;
 * libnccl-tuner-dynamiccl-instrumented.so adds instrumented.c (dynamiccl/plugin/build.py).
 */
#ifndef DYNAMICCL_TUNER_H
#define DYNAMICCL_TUNER_H

#include <stddef.h>
#include <stdint.h>

#include "tuner_abi.h"

#define DCCL_EXPORT __attribute__((visibility("default")))
#define DCCL_TABLE_ENV "DYNAMICCL_TUNER_TABLE"
#define DCCL_NO_CHUNK_ENV "DYNAMICCL_TUNER_NO_CHUNK" /* "1": getChunkSize always keeps NCCL's chunk */
/* A rule's chunk size: -1 (keep NCCL's) or a power of two in this range, bytes
 * (dynamiccl.knobs.chunk.check_chunk_bytes). */
#define DCCL_MIN_CHUNK_BYTES 4096
#define DCCL_MAX_CHUNK_BYTES (64 << 20)
#define DCCL_ERR_BYTES 512 /* room for any parse error */

/* ---- table.c: the vocabulary and the table --------------------------------------------------- */

/* Names in the table text, indexed by NCCL's numbers (tuner_abi.h). */
extern const char* const dccl_coll_names[DCCL_NUM_TUNABLE_FUNCS];
extern const char* const dccl_algo_names[DCCL_NUM_ALGORITHMS];
extern const char* const dccl_proto_names[DCCL_NUM_PROTOCOLS];

/* Which (collective, algorithm, protocol) NCCL can run at all: bit p of [c][a] for protocol p. */
extern const unsigned char dccl_supported[DCCL_NUM_TUNABLE_FUNCS][DCCL_NUM_ALGORITHMS];

typedef struct {
  uint64_t min_bytes, max_bytes;  /* inclusive */
  int coll, nranks, nnodes, position, num_pipe_ops, reg_buff; /* -1: any */
  int algorithm, protocol, channels;                          /* -1: keep NCCL's */
  int chunk_bytes;                                            /* -1: keep NCCL's (table format 2) */
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

/* Parse a table held in memory / read from a file; 0, or -1 with the reason (line, field) in err. */
int dccl_table_parse(const char* data, size_t len, dccl_table_t* table, char* err, size_t errlen);
int dccl_table_load(const char* path, dccl_table_t* table, char* err, size_t errlen);
void dccl_table_free(dccl_table_t* table);

/* ---- comm.c: one communicator ------------------------------------------------------------------ */

/* The rules of one collective that can match the communicator, in table order, indexed by byte
 * segment: every rule covers whole segments, so a call's candidates are its segment's list. */
typedef struct {
  uint64_t* bounds;   /* segment starts, ascending; NULL: not indexed, scan ``linear`` */
  uint32_t* offsets;  /* n_segments + 1 offsets into cands */
  uint32_t* cands;    /* rule indices, table order within each segment */
  uint32_t n_segments;
  uint32_t* linear;   /* every candidate in table order (the fallback when the index is too large) */
  uint32_t n_linear;
} dccl_coll_index_t;

/* The last decision on a communicator for one collective, which getChunkSize answers from. */
typedef struct {
  uint64_t nbytes;         /* getCollInfo's nBytes */
  int algorithm, protocol; /* the cell the decision chose; -1: NCCL's own */
  int chunk_bytes;         /* -1: keep NCCL's */
} dccl_last_t;

typedef struct {
  int nranks, nnodes;
  int no_chunk;                     /* DYNAMICCL_TUNER_NO_CHUNK=1 at init: keep NCCL's chunk always */
  dccl_last_t last[DCCL_NUM_TUNABLE_FUNCS];
  const dccl_table_t* table;        /* NULL: no usable table, NCCL decides */
  const dccl_step_t** shape_steps;  /* the step lines of this communicator's shape */
  int n_shape_steps;
  const dccl_step_t* step;          /* the line being counted; NULL: position unknown */
  int position;                     /* of the last call; -1 unknown */
  dccl_coll_index_t index[DCCL_NUM_TUNABLE_FUNCS];
} dccl_comm_t;

/* A communicator on ``table`` (NULL: none).  Bit c of *unindexed is set for each collective whose
 * index ran out of memory (NCCL decides it).  Returns NULL only when out of memory. */
dccl_comm_t* dccl_comm_new(const dccl_table_t* table, size_t nranks, size_t nnodes, unsigned* unindexed);
void dccl_comm_free(dccl_comm_t* comm);

/* The position of this call in the training step (-1 unknown); advances the counter. */
int dccl_comm_advance(dccl_comm_t* comm, int coll, uint64_t nbytes);

/* Candidate rule indices for a call, table order; *linear: the list holds rules of other sizes. */
const uint32_t* dccl_comm_candidates(const dccl_comm_t* comm, int coll, uint64_t nbytes, uint32_t* n,
                                     int* linear);

/* ---- decide.c: one call -------------------------------------------------------------------------- */

/* Who decided a call. */
typedef enum {
  DCCL_SOURCE_NONE = -1,    /* no call decided yet */
  DCCL_SOURCE_NCCL = 0,     /* no rule applied: NCCL's own choice */
  DCCL_SOURCE_RULE = 1,
  DCCL_SOURCE_OVERRIDE = 2, /* instrumented variant: dynamiccl_tuner_override */
  DCCL_SOURCE_REFUSED = 3   /* instrumented variant: the override asked for a cell NCCL disabled */
} dccl_source_t;

typedef struct {
  int algorithm, protocol; /* the cell chosen; -1: NCCL's */
  int channels;            /* 0: NCCL's */
  int rule;                /* the rule's index in the table; -1: none */
  int position;            /* the call's position in the step; -1: unknown */
  dccl_source_t source;
  long long chunk_bytes;   /* the chunk the rule or override asks for; -1: keep NCCL's */
  long long chunk_returned; /* instrumented stats: what the last getChunkSize left in *chunkSize; -1: none since */
} dccl_decision_t;

/* One getCollInfo call and how a choice reaches NCCL: through its cost table (ABI v3+), or
 * written into *algorithm / *protocol (ABI v2). */
typedef struct {
  int coll;
  uint64_t nbytes;
  int num_pipe_ops, reg_buff;
  int* n_channels;
  int v2;
  float* cost;             /* v3+: NCCL's float[num_algo][num_proto], flat */
  int num_algo, num_proto;
  int collnet, nvls;       /* v2: NCCL's support flags */
  int masked;              /* v2: NCCL_ALGO / NCCL_PROTO are set, so cells may be disabled unseen */
  int *algorithm, *protocol;
} dccl_call_t;

/* Decide the call and apply the choice (the instrumented variant also records the decision). */
void dccl_decide(dccl_comm_t* comm, const dccl_call_t* call);

/* getChunkSize: the chunk of the decision that NCCL's call (collective, nBytes, the cell NCCL runs)
 * belongs to, written into *chunk_size; left alone otherwise (decide.c). */
void dccl_chunk(dccl_comm_t* comm, int coll, uint64_t nbytes, int algorithm, int protocol, size_t* chunk_size);

/* ---- instrumented.c: the instrumented variant's exports, and the hooks decide.c calls ------------ */

typedef struct {
  long long calls, ruled, overridden, refused; /* getCollInfo calls, since load or reset */
  long long chunk_calls, chunk_set;            /* getChunkSize calls, and those given a chunk */
} dccl_counters_t;

const char* dynamiccl_tuner_version(void);
/* Force the next ``count`` decisions of this process (-1: until cleared; 0: clear), their chunk
 * size too (-1: keep NCCL's); -1 for an argument out of range. */
int dynamiccl_tuner_override(int algorithm, int protocol, int channels, long long chunk_bytes, long long count);
void dynamiccl_tuner_stats(dccl_counters_t* counters, dccl_decision_t* last);
int dynamiccl_tuner_supported(int coll, int algorithm, int protocol);
/* The rule count of a table in memory / a file read as init reads it, or -1 with the reason. */
long dynamiccl_tuner_parse(const char* data, size_t len, char* err, size_t errlen, long* n_steps);
long dynamiccl_tuner_check_file(const char* path, char* err, size_t errlen, long* n_steps);
/* Forget the table (the next init reads $DYNAMICCL_TUNER_TABLE again); -1 while communicators are open. */
int dynamiccl_tuner_reset(void);


#ifdef DCCL_INSTRUMENTED
int dccl_take_override(int* algorithm, int* protocol, int* channels, int* chunk_bytes); /* 1: this call is forced */
void dccl_observe(const dccl_decision_t* decision);                     /* counters, last decision */
void dccl_observe_chunk(int set, size_t chunk_bytes);                   /* getChunkSize: counters, last */
int dccl_forget_table(void); /* plugin.c: -1 while communicators are open */
#else
static inline int dccl_take_override(int* algorithm, int* protocol, int* channels, int* chunk_bytes) {
  (void)algorithm, (void)protocol, (void)channels, (void)chunk_bytes;
  return 0;
}
static inline void dccl_observe(const dccl_decision_t* decision) { (void)decision; }
static inline void dccl_observe_chunk(int set, size_t chunk_bytes) { (void)set, (void)chunk_bytes; }
#endif

#endif /* DYNAMICCL_TUNER_H */
