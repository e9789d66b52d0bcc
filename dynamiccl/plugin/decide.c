/* The decision for one getCollInfo call, and how it reaches NCCL.
 *
 * Lookup (identical to dynamiccl.table.model.DecisionTable.choose): the first rule whose keys
 * match the call and that asks for at least one cell NCCL left enabled wins; it picks its cheapest
 * enabled cell (NCCL's cost order), which is set to 0.0 in NCCL's cost table so that NCCL's own
 * arg-min selects it.  A cell NCCL disabled (< 0) is never revived, nChannels stays 0 ("NCCL
 * decides") unless the rule sets it.  ABI v2 has no cost table: the choice is written into
 * *algorithm / *protocol, and only where it is safe (v2_cell_safe).
 *
 * Chunk size (ABI v6 getChunkSize; dynamiccl.table.model's "Chunk sizes" and ChunkMemory): each
 * decision is remembered per communicator and collective (nBytes, cell, the rule's chunk).  NCCL
 * asks getChunkSize while scheduling, for each part of a task it decided earlier (NVIDIA/nccl
 * src/enqueue.cc, calcCollChunking: a part's bytes are at most the nBytes getCollInfo saw), with
 * the cell it settled on.  The rule's chunk is written only for such a part of the remembered call
 * in the remembered cell, unless DYNAMICCL_TUNER_NO_CHUNK=1; NCCL clamps it to what its buffers
 * allow.
 */
#include "tuner.h"

/* The cheapest enabled (>= 0) cell among algorithm ``algo`` (-1 any) and protocol ``proto`` (-1 any),
 * scanning algorithm-major like NCCL (strict <: the first of equal costs wins).  Cells past NCCL's
 * table or past ours (DCCL_NUM_ALGORITHMS x DCCL_NUM_PROTOCOLS) are never read. */
static int cheapest(const dccl_call_t* k, int algo, int proto, int* out_a, int* out_p) {
  const float* cost = k->cost;
  const int stride = k->num_proto; /* NCCL's row length */
  int a_lo = algo < 0 ? 0 : algo, a_hi = algo < 0 ? k->num_algo - 1 : algo;
  int p_lo = proto < 0 ? 0 : proto, p_hi = proto < 0 ? stride - 1 : proto;
  if (a_hi > k->num_algo - 1) a_hi = k->num_algo - 1;
  if (a_hi > DCCL_NUM_ALGORITHMS - 1) a_hi = DCCL_NUM_ALGORITHMS - 1;
  if (p_hi > stride - 1) p_hi = stride - 1;
  if (p_hi > DCCL_NUM_PROTOCOLS - 1) p_hi = DCCL_NUM_PROTOCOLS - 1;
  int found = 0;
  float best = 0.0f;
  for (int a = a_lo; a <= a_hi; a++)
    for (int p = p_lo; p <= p_hi; p++) {
      float v = cost[a * stride + p];
      if (v >= 0.0f && (!found || v < best)) {
        found = 1;
        best = v;
        *out_a = a;
        *out_p = p;
      }
    }
  return found;
}

/* ABI v2 cannot see which cells NCCL disabled.  So only choices that name both algorithm and
 * protocol are applied, never where the support flags or NCCL_ALGO / NCCL_PROTO might disable
 * them, and never LL128 (NCCL disables it on platforms where it can corrupt data). */
static int v2_cell_safe(const dccl_call_t* call, int algo, int proto) {
  if (algo < 0 || proto < 0 || call->masked || proto == DCCL_PROTO_LL128) return 0;
  if ((algo == DCCL_ALGO_COLLNET_DIRECT || algo == DCCL_ALGO_COLLNET_CHAIN) && call->collnet != 1) return 0;
  if ((algo == DCCL_ALGO_NVLS || algo == DCCL_ALGO_NVLS_TREE) && call->nvls != 1) return 0;
  return 1;
}

/* Apply a choice (algorithm / protocol / channels -1 = keep NCCL's) and note it in ``d``; 0 if it
 * cannot apply, and then nothing was touched. */
static inline int apply(const dccl_call_t* call, int algo, int proto, int channels, dccl_decision_t* d) {
  int a = algo, p = proto;
  if (!call->v2) {
    if (!cheapest(call, algo, proto, &a, &p)) return 0;
    if (algo >= 0 || proto >= 0) call->cost[a * call->num_proto + p] = 0.0f; /* enabled: never a revival */
  } else if (algo >= 0 || proto >= 0) {
    if (!v2_cell_safe(call, algo, proto)) return 0;
    *call->algorithm = algo;
    *call->protocol = proto;
  }
  if (channels > 0) *call->n_channels = channels;
  d->algorithm = a;
  d->protocol = p;
  d->channels = channels > 0 ? channels : 0;
  return 1;
}

static inline int rule_keys_match(const dccl_rule_t* r, int position, int num_pipe_ops, int reg_buff) {
  return (r->position < 0 || r->position == position) &&
         (r->num_pipe_ops < 0 || r->num_pipe_ops == num_pipe_ops) &&
         (r->reg_buff < 0 || r->reg_buff == reg_buff);
}

void dccl_decide(dccl_comm_t* c, const dccl_call_t* call) {
  dccl_decision_t d = {-1, -1, 0, -1, dccl_comm_advance(c, call->coll, call->nbytes), DCCL_SOURCE_NCCL, -1, -1};
  int algo, proto, channels, chunk = -1;
  if (dccl_take_override(&algo, &proto, &channels, &chunk)) {
    d.source = apply(call, algo, proto, channels, &d) ? DCCL_SOURCE_OVERRIDE : DCCL_SOURCE_REFUSED;
    if (d.source == DCCL_SOURCE_OVERRIDE) d.chunk_bytes = chunk;
  } else {
    uint32_t n;
    int linear;
    const uint32_t* cand = dccl_comm_candidates(c, call->coll, call->nbytes, &n, &linear);
    for (uint32_t i = 0; i < n; i++) {
      const dccl_rule_t* r = &c->table->rules[cand[i]];
      if (linear && (call->nbytes < r->min_bytes || call->nbytes > r->max_bytes)) continue;
      if (!rule_keys_match(r, d.position, call->num_pipe_ops, call->reg_buff)) continue;
      if (apply(call, r->algorithm, r->protocol, r->channels, &d)) {
        d.rule = (int)cand[i];
        d.source = DCCL_SOURCE_RULE;
        d.chunk_bytes = r->chunk_bytes;
        break;
      }
    }
  }
  dccl_last_t* last = &c->last[call->coll];
  last->nbytes = call->nbytes;
  last->algorithm = d.algorithm;
  last->protocol = d.protocol;
  last->chunk_bytes = (int)d.chunk_bytes;
  dccl_observe(&d);
}

void dccl_chunk(dccl_comm_t* c, int coll, uint64_t nbytes, int algorithm, int protocol, size_t* chunk_size) {
  const dccl_last_t* last = &c->last[coll];
  int set = last->chunk_bytes > 0 && !c->no_chunk && nbytes <= last->nbytes && algorithm == last->algorithm &&
            protocol == last->protocol;
  if (set) *chunk_size = (size_t)last->chunk_bytes;
  dccl_observe_chunk(set, *chunk_size);
}
