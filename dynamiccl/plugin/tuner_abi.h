/* NCCL tuner plugin ABI, versions 2 to 6, as dynamiccl's plugin needs it.
 *
 * Written from NVIDIA/nccl's plugin headers (src/include/plugin/nccl_tuner.h and
 * src/include/plugin/tuner/tuner_v2.h .. tuner_v6.h, up to v2.30): enums with NCCL's numbers, the
 * logger type and one struct per ABI version; tests/test_plugin_abi.py checks the enums against
 * dynamiccl/nccl.py.  Only the layout matters to NCCL, so every type carries a dccl_ prefix and this header
 * can sit beside NCCL's own headers without clashing.  The symbol names NCCL looks up with dlsym
 * are ncclTunerPlugin_v6 ... ncclTunerPlugin_v2 (newest first).
 */
#ifndef DYNAMICCL_TUNER_ABI_H
#define DYNAMICCL_TUNER_ABI_H

#include <stddef.h>
#include <stdint.h>

/* ncclResult_t */
typedef enum {
  DCCL_SUCCESS = 0,
  DCCL_UNHANDLED_CUDA_ERROR = 1,
  DCCL_SYSTEM_ERROR = 2,
  DCCL_INTERNAL_ERROR = 3,
  DCCL_INVALID_ARGUMENT = 4,
  DCCL_INVALID_USAGE = 5,
  DCCL_REMOTE_ERROR = 6
} dccl_result_t;

/* ncclFunc_t: the tuner is only asked about the first five. */
typedef enum {
  DCCL_FUNC_BROADCAST = 0,
  DCCL_FUNC_REDUCE = 1,
  DCCL_FUNC_ALLGATHER = 2,
  DCCL_FUNC_REDUCESCATTER = 3,
  DCCL_FUNC_ALLREDUCE = 4,
  DCCL_FUNC_SENDRECV = 5,
  DCCL_FUNC_SEND = 6,
  DCCL_FUNC_RECV = 7
} dccl_func_t;
#define DCCL_NUM_TUNABLE_FUNCS 5

/* NCCL_ALGO_* and NCCL_PROTO_* */
#define DCCL_ALGO_UNDEF (-1)
#define DCCL_ALGO_TREE 0
#define DCCL_ALGO_RING 1
#define DCCL_ALGO_COLLNET_DIRECT 2
#define DCCL_ALGO_COLLNET_CHAIN 3
#define DCCL_ALGO_NVLS 4
#define DCCL_ALGO_NVLS_TREE 5
#define DCCL_ALGO_PAT 6
#define DCCL_NUM_ALGORITHMS 7

#define DCCL_PROTO_UNDEF (-1)
#define DCCL_PROTO_LL 0
#define DCCL_PROTO_LL128 1
#define DCCL_PROTO_SIMPLE 2
#define DCCL_NUM_PROTOCOLS 3

#define DCCL_ALGO_PROTO_IGNORE (-1.0f) /* a cost-table entry NCCL cannot use */
#define DCCL_MAX_CHANNELS 64          /* MAXCHANNELS */

/* ncclDebugLogLevel and the subsystem flag for tuning messages */
typedef enum {
  DCCL_LOG_NONE = 0,
  DCCL_LOG_VERSION = 1,
  DCCL_LOG_WARN = 2,
  DCCL_LOG_INFO = 3,
  DCCL_LOG_ABORT = 4,
  DCCL_LOG_TRACE = 5
} dccl_log_level_t;
#define DCCL_LOG_FLAG_TUNING 0x40UL

typedef void (*dccl_logger_t)(dccl_log_level_t level, unsigned long flags, const char* file,
                              int line, const char* fmt, ...);

/* v2 (NCCL 2.21): the plugin writes the algorithm and protocol itself; no cost table. */
typedef struct {
  const char* name;
  dccl_result_t (*init)(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context);
  dccl_result_t (*getCollInfo)(void* context, dccl_func_t collType, size_t nBytes,
                               int collNetSupport, int nvlsSupport, int numPipeOps,
                               int* algorithm, int* protocol, int* nChannels);
  dccl_result_t (*destroy)(void* context);
} dccl_tuner_v2_t;

/* v3 (NCCL 2.22): NCCL's cost table float[numAlgo][numProto], passed cast to float**. */
typedef struct {
  const char* name;
  dccl_result_t (*init)(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context);
  dccl_result_t (*getCollInfo)(void* context, dccl_func_t collType, size_t nBytes, int numPipeOps,
                               float** collCostTable, int numAlgo, int numProto, int* nChannels);
  dccl_result_t (*destroy)(void* context);
} dccl_tuner_v3_t;

/* v4 (NCCL 2.24): adds regBuff before nChannels. */
typedef struct {
  const char* name;
  dccl_result_t (*init)(size_t nRanks, size_t nNodes, dccl_logger_t logFunction, void** context);
  dccl_result_t (*getCollInfo)(void* context, dccl_func_t collType, size_t nBytes, int numPipeOps,
                               float** collCostTable, int numAlgo, int numProto, int regBuff,
                               int* nChannels);
  dccl_result_t (*destroy)(void* context);
} dccl_tuner_v4_t;

/* v5 (NCCL 2.28): new init with the communicator hash, NVLink domain info and NCCL's tuning
 * constants (in/out; dynamiccl leaves them untouched); destroy is renamed finalize. */
typedef struct {
  int nNvlDomains;
  int minRanksPerNvlDomain;
  int maxRanksPerNvlDomain;
} dccl_nvl_domain_info_v5_t;

/* NCCL's tuning constants (base and hardware latencies, per-channel bandwidth caps).  dynamiccl
 * never re-calibrates NCCL's model, so it only passes the pointer on and the type stays opaque:
 * no layout is claimed here that the plugin does not need. */
typedef struct dccl_tuner_constants_v5 dccl_tuner_constants_v5_t;

typedef dccl_result_t (*dccl_init_v5_fn)(void** context, uint64_t commId, size_t nRanks,
                                         size_t nNodes, dccl_logger_t logFunction,
                                         dccl_nvl_domain_info_v5_t* nvlDomainInfo,
                                         dccl_tuner_constants_v5_t* constants);
typedef dccl_result_t (*dccl_get_coll_info_v4_fn)(void* context, dccl_func_t collType,
                                                  size_t nBytes, int numPipeOps,
                                                  float** collCostTable, int numAlgo,
                                                  int numProto, int regBuff, int* nChannels);

typedef struct {
  const char* name;
  dccl_init_v5_fn init;
  dccl_get_coll_info_v4_fn getCollInfo;
  dccl_result_t (*finalize)(void* context);
} dccl_tuner_v5_t;

/* v6 (NCCL 2.30): adds getChunkSize (in/out chunk size; NCCL clamps it). */
typedef struct {
  const char* name;
  dccl_init_v5_fn init;
  dccl_get_coll_info_v4_fn getCollInfo;
  dccl_result_t (*finalize)(void* context);
  dccl_result_t (*getChunkSize)(void* context, dccl_func_t collType, size_t nBytes, int algorithm,
                                int protocol, int nChannels, size_t* chunkSize);
} dccl_tuner_v6_t;

#endif /* DYNAMICCL_TUNER_ABI_H */
