/* The ABI glue NCCL loads: ncclTunerPlugin_v2 .. _v6, each a thin wrapper around one init, one
 * getCollInfo and one finalize; the decision table is read once per process.
 *
 * NCCL loads this library through NCCL_TUNER_PLUGIN, looks up ncclTunerPlugin_v6 first (then v5 ..
 * v2) and calls, per communicator, init once, getCollInfo for every collective it plans,
 * getChunkSize (v6) for every part of a task it schedules, and finalize/destroy at the end.  The first init reads the table named by DYNAMICCL_TUNER_TABLE
 * (table.c); a missing or invalid table is reported once through NCCL's logger and leaves every
 * choice to NCCL.  Nothing here ever fails: init is wrapped in NCCLCHECK, so a failure would fail
 * communicator creation, and the job must run with NCCL's own choices instead.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "tuner.h"

#define DCCL_PLUGIN_NAME "dynamiccl"

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_loaded = 0;        /* the table was read (or failed) once for this process */
static int g_table_ok = 0;
static dccl_table_t g_table;
static int g_live_comms = 0;
static dccl_logger_t g_log = NULL;
static int g_masked = 0;        /* NCCL_ALGO / NCCL_PROTO set: ABI v2 cannot see what they disable */

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

/* Read the table once per process; the first communicator's init does it.  Holds g_lock. */
static void load_once(void) {
  if (g_loaded) return;
  g_loaded = 1;
  const char* algo_mask = getenv("NCCL_ALGO");
  const char* proto_mask = getenv("NCCL_PROTO");
  g_masked = (algo_mask && *algo_mask) || (proto_mask && *proto_mask);
  const char* path = getenv(DCCL_TABLE_ENV);
  char err[DCCL_ERR_BYTES] = "";
  if (!path || !*path) {
    LOG(DCCL_LOG_WARN, "dynamiccl tuner: " DCCL_TABLE_ENV " is not set; NCCL chooses every "
        "collective (run the job under `dynamiccl launch --table ...`)");
  } else if (dccl_table_load(path, &g_table, err, sizeof(err)) != 0) {
    LOG(DCCL_LOG_WARN, "dynamiccl tuner: ignoring decision table %s: %s; NCCL chooses every "
        "collective", path, err);
  } else {
    g_table_ok = 1;
    LOG(DCCL_LOG_INFO, "dynamiccl tuner: loaded %zu rules and %zu step lines from %s",
        g_table.n_rules, g_table.n_steps, path);
  }
}

/* Every ABI version's init: the table once per process, then the communicator. */
static dccl_result_t init_common(int abi, uint64_t comm_id, size_t nranks, size_t nnodes,
                                 dccl_logger_t logFunction, void** context) {
  if (logFunction) __atomic_store_n(&g_log, logFunction, __ATOMIC_RELEASE);
  if (!context) return DCCL_SUCCESS;
  unsigned unindexed;
  pthread_mutex_lock(&g_lock);
  load_once();
  dccl_comm_t* c = dccl_comm_new(g_table_ok ? &g_table : NULL, nranks, nnodes, &unindexed);
  g_live_comms += c != NULL;
  pthread_mutex_unlock(&g_lock);
  *context = c;
  if (!c) return DCCL_SUCCESS; /* out of memory: getCollInfo sees a NULL context, NCCL decides */
  const char* no_chunk = getenv(DCCL_NO_CHUNK_ENV);
  c->no_chunk = no_chunk && no_chunk[0] == '1' && no_chunk[1] == '\0';
  for (int coll = 0; coll < DCCL_NUM_TUNABLE_FUNCS; coll++)
    if (unindexed & (1u << coll))
      LOG(DCCL_LOG_WARN, "dynamiccl tuner: out of memory indexing the table; NCCL chooses %s on this "
          "communicator", dccl_coll_names[coll]);
  LOG(DCCL_LOG_INFO, "dynamiccl tuner: communicator %llx with %d ranks on %d nodes (tuner ABI v%d)%s",
      (unsigned long long)comm_id, c->nranks, c->nnodes, abi, c->n_shape_steps ? "; position rules active" : "");
  return DCCL_SUCCESS;
}

static dccl_result_t finalize(void* context) {
  if (!context) return DCCL_SUCCESS;
  dccl_comm_free(context);
  pthread_mutex_lock(&g_lock);
  g_live_comms--;
  pthread_mutex_unlock(&g_lock);
  return DCCL_SUCCESS;
}

#ifdef DCCL_INSTRUMENTED
int dccl_forget_table(void) {
  pthread_mutex_lock(&g_lock);
  int refused = g_live_comms > 0;
  if (!refused) {
    dccl_table_free(&g_table);
    g_loaded = g_table_ok = 0;
    g_log = NULL;
  }
  pthread_mutex_unlock(&g_lock);
  return refused ? -1 : 0;
}
#endif

/* getCollInfo for ABI v3..v6 (v3 passes regBuff 0).  NCCL's cost table is float[numAlgo][numProto]
 * passed as float**, not row pointers. */
static dccl_result_t get_coll_info(void* context, dccl_func_t collType, size_t nBytes, int numPipeOps,
                                   float** collCostTable, int numAlgo, int numProto, int regBuff, int* nChannels) {
  int coll = (int)collType;
  if (!context || !collCostTable || !nChannels || coll < 0 || coll >= DCCL_NUM_TUNABLE_FUNCS || numAlgo <= 0 ||
      numProto <= 0)
    return DCCL_SUCCESS;
  dccl_call_t call; /* field by field: zero-initializing the whole struct costs a `rep stos` per call */
  call.coll = coll;
  call.nbytes = nBytes;
  call.num_pipe_ops = numPipeOps;
  call.reg_buff = regBuff;
  call.n_channels = nChannels;
  call.v2 = 0;
  call.cost = (float*)collCostTable;
  call.num_algo = numAlgo < DCCL_NUM_ALGORITHMS ? numAlgo : DCCL_NUM_ALGORITHMS;
  call.num_proto = numProto;
  call.collnet = call.nvls = call.masked = 0;
  call.algorithm = call.protocol = NULL;
  dccl_decide(context, &call);
  return DCCL_SUCCESS;
}

static dccl_result_t get_coll_info_v3(void* context, dccl_func_t collType, size_t nBytes, int numPipeOps,
                                      float** collCostTable, int numAlgo, int numProto, int* nChannels) {
  return get_coll_info(context, collType, nBytes, numPipeOps, collCostTable, numAlgo, numProto, 0, nChannels);
}

static dccl_result_t get_coll_info_v2(void* context, dccl_func_t collType, size_t nBytes, int collNetSupport,
                                      int nvlsSupport, int numPipeOps, int* algorithm, int* protocol,
                                      int* nChannels) {
  int coll = (int)collType;
  if (!context || !algorithm || !protocol || !nChannels || coll < 0 || coll >= DCCL_NUM_TUNABLE_FUNCS)
    return DCCL_SUCCESS;
  dccl_call_t call;
  call.coll = coll;
  call.nbytes = nBytes;
  call.num_pipe_ops = numPipeOps;
  call.reg_buff = 0;
  call.n_channels = nChannels;
  call.v2 = 1;
  call.cost = NULL;
  call.num_algo = call.num_proto = 0;
  call.collnet = collNetSupport;
  call.nvls = nvlsSupport;
  call.masked = g_masked;
  call.algorithm = algorithm;
  call.protocol = protocol;
  dccl_decide(context, &call);
  return DCCL_SUCCESS;
}

/* getChunkSize (ABI v6): the chunk of the decision this task part belongs to (decide.c), written as
 * the rule gives it -- NCCL clamps it to the largest chunk its buffers allow.  Anything unexpected
 * (no context or pointer, another collective) keeps NCCL's value. */
static dccl_result_t get_chunk_size(void* context, dccl_func_t collType, size_t nBytes, int algorithm,
                                    int protocol, int nChannels, size_t* chunkSize) {
  (void)nChannels;
  int coll = (int)collType;
  if (!context || !chunkSize || coll < 0 || coll >= DCCL_NUM_TUNABLE_FUNCS) return DCCL_SUCCESS;
  dccl_chunk(context, coll, nBytes, algorithm, protocol, chunkSize);
  return DCCL_SUCCESS;
}

static dccl_result_t init_v2(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context) {
  return init_common(2, 0, nRanks, nNodes, logFunction, context);
}
static dccl_result_t init_v3(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context) {
  return init_common(3, 0, nRanks, nNodes, logFunction, context);
}
static dccl_result_t init_v4(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context) {
  return init_common(4, 0, nRanks, nNodes, logFunction, context);
}
/* v5+ also pass NVLink domain info and NCCL's tuning constants: NCCL's own model is left as it is. */
static dccl_result_t init_v5(void** context, uint64_t commId, size_t nRanks, size_t nNodes,
                             dccl_logger_t logFunction, dccl_nvl_domain_info_v5_t* nvlDomainInfo,
                             dccl_tuner_constants_v5_t* constants) {
  (void)nvlDomainInfo, (void)constants;
  return init_common(5, commId, nRanks, nNodes, logFunction, context);
}
static dccl_result_t init_v6(void** context, uint64_t commId, size_t nRanks, size_t nNodes,
                             dccl_logger_t logFunction, dccl_nvl_domain_info_v5_t* nvlDomainInfo,
                             dccl_tuner_constants_v5_t* constants) {
  (void)nvlDomainInfo, (void)constants;
  return init_common(6, commId, nRanks, nNodes, logFunction, context);
}

DCCL_EXPORT const dccl_tuner_v6_t ncclTunerPlugin_v6 = {DCCL_PLUGIN_NAME, init_v6, get_coll_info, finalize,
                                                        get_chunk_size};
DCCL_EXPORT const dccl_tuner_v5_t ncclTunerPlugin_v5 = {DCCL_PLUGIN_NAME, init_v5, get_coll_info, finalize};
DCCL_EXPORT const dccl_tuner_v4_t ncclTunerPlugin_v4 = {DCCL_PLUGIN_NAME, init_v4, get_coll_info, finalize};
DCCL_EXPORT const dccl_tuner_v3_t ncclTunerPlugin_v3 = {DCCL_PLUGIN_NAME, init_v3, get_coll_info_v3, finalize};
DCCL_EXPORT const dccl_tuner_v2_t ncclTunerPlugin_v2 = {DCCL_PLUGIN_NAME, init_v2, get_coll_info_v2, finalize};
