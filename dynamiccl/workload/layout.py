"""Parallel layout: sizes of each parallelism, Megatron's rank order, process groups, stage layers.

Rank order is Megatron-LM's default ``tp-cp-ep-dp-pp`` (``megatron/core/parallel_state.py``): TP
varies fastest, so TP groups are runs of consecutive ranks (inside one node when TP ≤ GPUs per
node), and PP varies slowest. Dense layers use the decomposition tp × cp × dp × pp; expert layers
re-split each pipeline stage's tp·cp·dp ranks as etp × ep × edp (Megatron's expert rank generator).

Every inconsistency is reported by ``ParallelLayout.check(model)`` before any work is done.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from dynamiccl.errors import LayoutError
from dynamiccl.workload.models import ModelConfig

DP_MODES = ("ddp", "megatron", "distopt", "fsdp")
ACT_DTYPES = ("bf16", "fp16", "fp32")
GRAD_DTYPES = ("fp32", "bf16", "fp16")

# Megatron-LM process-group descriptions (group_desc), so generated and captured traces agree.
GROUP_DESC = {
    "tp": "TENSOR_MODEL_PARALLEL_GROUP", "cp": "CONTEXT_PARALLEL_GROUP",
    "dp": "DATA_PARALLEL_GROUP_WITH_CP", "pp": "PIPELINE_MODEL_PARALLEL_GROUP",
    "ep": "EXPERT_MODEL_PARALLEL_GROUP", "edp": "EXPERT_DATA_PARALLEL_GROUP",
    "embd": "EMBEDDING_GROUP", "mp": "MODEL_PARALLEL_GROUP", "fsdp": "DATA_PARALLEL_GROUP_WITH_CP",
    "world": "default_pg",
}


@dataclass(frozen=True)
class ParallelLayout:
    """How one training step is split over ``world_size`` GPUs.

    Args:
        tp, pp, dp, cp: tensor-, pipeline-, data- and context-parallel sizes.
        ep: expert-parallel size (MoE models); etp: expert tensor-parallel size (0 = same as tp).
        vpp: virtual pipeline stages per rank (interleaved 1F1B when > 1).
        sp: sequence parallelism (Megatron --sequence-parallel; ignored when tp == 1, as Megatron does).
        micro_batch: sequences per micro-batch; global_batch: sequences per step; seq_len: tokens.
        dp_mode: ddp (PyTorch DDP buckets), megatron (Megatron DDP buckets), distopt (distributed
            optimizer: reduce-scatter grads, all-gather params), fsdp (ZeRO-3 / FSDP2).
        dtype: activation / parameter dtype; grad_reduce_dtype: dtype of DP gradient reduction
            (fp32 for bf16/fp16 runs unless told otherwise, as Megatron's default).
        overlap_grad_reduce: DP collectives during the last micro-batch's backward (and distopt
            parameter all-gathers during the next forward); otherwise after the pipeline finishes.
        first_stage_layers, last_stage_layers: uneven pipeline split (Megatron
            --decoder-first/last-pipeline-num-layers); 0 = even.
        reshard_after_forward: FSDP re-gathers parameters for backward (FSDP2's default).
        gpus_per_node: to place ranks on nodes.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int = 0
    vpp: int = 1
    sp: bool = False
    micro_batch: int = 1
    global_batch: int = 0
    seq_len: int = 0
    dp_mode: str = "distopt"
    dtype: str = "bf16"
    grad_reduce_dtype: str = ""
    overlap_grad_reduce: bool = True
    first_stage_layers: int = 0
    last_stage_layers: int = 0
    reshard_after_forward: bool = True
    gpus_per_node: int = 8

    def resolved(self, model: ModelConfig) -> "ParallelLayout":
        """Fill model defaults (seq_len, global_batch), etp, grad dtype and SP, then ``check``."""
        changes = {}
        if self.seq_len == 0:
            changes["seq_len"] = model.seq_length
        if self.global_batch == 0:
            changes["global_batch"] = model.global_batch
        if self.etp == 0:
            changes["etp"] = self.tp
        if self.grad_reduce_dtype == "":
            changes["grad_reduce_dtype"] = "fp32"
        if self.sp and self.tp == 1:
            changes["sp"] = False  # Megatron turns SP off at TP=1: there is nothing to shard over
        out = ParallelLayout(**{**asdict(self), **changes})
        out.check(model)
        return out

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    @property
    def edp(self) -> int:
        """Expert data-parallel size: the stage's tp·cp·dp ranks re-split as etp × ep × edp."""
        return (self.tp * self.cp * self.dp) // (self.etp * self.ep)

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp)

    def check(self, model: ModelConfig) -> None:
        """Raise ``LayoutError`` if this layout cannot run ``model`` (nothing is generated then)."""
        for name in ("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch", "global_batch", "seq_len",
                     "gpus_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LayoutError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.dp_mode not in DP_MODES:
            raise LayoutError(f"--dp-mode must be one of {', '.join(DP_MODES)}, got {self.dp_mode!r}")
        if self.dtype not in ACT_DTYPES:
            raise LayoutError(f"--dtype must be one of {', '.join(ACT_DTYPES)}, got {self.dtype!r}")
        if self.grad_reduce_dtype not in GRAD_DTYPES:
            raise LayoutError(f"--grad-reduce-dtype must be one of {', '.join(GRAD_DTYPES)}, "
                              f"got {self.grad_reduce_dtype!r}")
        m = model
        if m.num_attention_heads % self.tp:
            raise LayoutError(f"{m.name}: {m.num_attention_heads} attention heads are not divisible by TP {self.tp}")
        if m.mla is None and m.num_kv_heads % self.tp:
            raise LayoutError(f"{m.name}: {m.num_kv_heads} KV heads (query groups) are not divisible by TP "
                              f"{self.tp} (Megatron requires num_query_groups % tp == 0)")
        if m.ffn_hidden_size % self.tp:
            raise LayoutError(f"{m.name}: FFN hidden size {m.ffn_hidden_size} is not divisible by TP {self.tp}")
        if self.cp > 1 and self.seq_len % (2 * self.cp):
            raise LayoutError(f"sequence length {self.seq_len} is not divisible by 2 × CP = {2 * self.cp} "
                              "(context parallelism splits the sequence into 2·cp chunks)")
        if self.sp and (self.seq_len // self.cp) % self.tp:
            raise LayoutError(f"sequence parallelism needs the per-CP-rank sequence {self.seq_len // self.cp} "
                              f"divisible by TP {self.tp}")
        if self.global_batch % (self.micro_batch * self.dp):
            raise LayoutError(f"global batch {self.global_batch} is not divisible by micro-batch "
                              f"{self.micro_batch} × DP {self.dp}; pass --global-batch")
        if self.vpp > 1:
            if self.pp < 2:
                raise LayoutError("--vpp > 1 (interleaved pipeline) needs --pp >= 2")
            if self.num_microbatches % self.pp:
                raise LayoutError(f"the interleaved schedule needs the number of micro-batches "
                                  f"({self.num_microbatches}) divisible by PP {self.pp} (Megatron-LM)")
        self.stage_layer_counts(m)  # raises on an impossible split
        if m.moe is None:
            if self.ep > 1:
                raise LayoutError(f"{m.name} has no experts; --ep must be 1")
        else:
            if m.moe.num_experts % self.ep:
                raise LayoutError(f"{m.name}: {m.moe.num_experts} experts are not divisible by EP {self.ep}")
            if (self.tp * self.cp * self.dp) % (self.etp * self.ep):
                raise LayoutError(f"EP {self.ep} × expert-TP {self.etp} must divide TP·CP·DP = "
                                  f"{self.tp * self.cp * self.dp} (the ranks of one pipeline stage)")
            if self.etp not in (1, self.tp):
                raise LayoutError(f"expert TP must be 1 or equal to TP ({self.tp}), got {self.etp}")
            if m.moe.expert_ffn_hidden_size % self.etp:
                raise LayoutError(f"{m.name}: expert FFN size {m.moe.expert_ffn_hidden_size} is not "
                                  f"divisible by expert TP {self.etp}")
            if self.tp > 1 and not self.sp:
                raise LayoutError("MoE with TP > 1 needs sequence parallelism (--sp), as Megatron-LM requires")
            if self.ep > 1 and self.dp_mode in ("ddp", "fsdp"):
                raise LayoutError(f"--dp-mode {self.dp_mode} has no expert-data-parallel gradient path; use "
                                  "--dp-mode megatron or distopt with --ep > 1")

    def stage_layer_counts(self, model: ModelConfig) -> list[int]:
        """Transformer layers on each pipeline stage; raises ``LayoutError`` if they cannot split."""
        p, v, total = self.pp, self.vpp, model.num_layers
        first, last = self.first_stage_layers, self.last_stage_layers
        if first < 0 or last < 0:
            raise LayoutError("--first-stage-layers / --last-stage-layers must be >= 0")
        if p == 1:
            if first or last:
                raise LayoutError("--first-stage-layers / --last-stage-layers need --pp > 1")
            counts = [total]
        elif not first and not last:
            if total % (p * v):
                hint = ""
                if total % p:
                    hint = (" (uneven splits: --first-stage-layers N --last-stage-layers M, as Megatron's "
                            "--decoder-first/last-pipeline-num-layers)")
                raise LayoutError(f"{model.name}: {total} layers are not divisible by PP × VPP = {p * v}{hint}")
            counts = [total // p] * p
        else:
            fixed = [first if first else None] + [None] * (p - 2) + [last if last else None]
            rest = total - sum(c for c in fixed if c)
            free = sum(1 for c in fixed if c is None)
            if rest < 0 or (free == 0 and rest != 0) or (free and rest % free):
                raise LayoutError(f"{model.name}: {total} layers cannot be split as first stage {first or 'even'}, "
                                  f"last stage {last or 'even'} and {free} equal other stages")
            each = rest // free if free else 0
            counts = [c if c is not None else each for c in fixed]
        if any(c % v for c in counts) or any(c < v for c in counts):
            raise LayoutError(f"{model.name}: stage layer counts {counts} must each be a positive multiple of "
                              f"VPP {v}")
        return counts

    # --- rank math ---------------------------------------------------------------------------------

    def coords(self, rank: int) -> dict[str, int]:
        """Dense coordinates (tp, cp, dp, pp) and expert coordinates (etp, ep, edp) of a rank."""
        t, c, d = self.tp, self.cp, self.dp
        within = rank % (t * c * d)
        out = {"tp": rank % t, "cp": (rank // t) % c, "dp": (rank // (t * c)) % d, "pp": rank // (t * c * d)}
        out["etp"] = within % self.etp
        out["ep"] = (within // self.etp) % self.ep
        out["edp"] = within // (self.etp * self.ep)
        return out

    def rank_of(self, tp: int = 0, cp: int = 0, dp: int = 0, pp: int = 0) -> int:
        return tp + self.tp * (cp + self.cp * (dp + self.dp * pp))

    def group_ranks(self, kind: str, rank: int) -> tuple[int, ...]:
        """Global ranks, in group-rank order, of ``rank``'s group of ``kind``."""
        t, c, d, p = self.tp, self.cp, self.dp, self.pp
        k = self.coords(rank)
        stage_base = k["pp"] * t * c * d
        if kind == "tp":
            return tuple(self.rank_of(i, k["cp"], k["dp"], k["pp"]) for i in range(t))
        if kind == "cp":
            return tuple(self.rank_of(k["tp"], i, k["dp"], k["pp"]) for i in range(c))
        if kind in ("dp", "fsdp"):  # DATA_PARALLEL_GROUP_WITH_CP: gradients reduce over dp × cp
            return tuple(self.rank_of(k["tp"], ci, di, k["pp"]) for di in range(d) for ci in range(c))
        if kind == "pp":
            return tuple(self.rank_of(k["tp"], k["cp"], k["dp"], i) for i in range(p))
        if kind == "embd":
            return (self.rank_of(k["tp"], k["cp"], k["dp"], 0), self.rank_of(k["tp"], k["cp"], k["dp"], p - 1))
        if kind == "mp":  # tp × pp, Megatron's model-parallel group (grad-norm reduction)
            return tuple(self.rank_of(ti, k["cp"], k["dp"], pi) for pi in range(p) for ti in range(t))
        if kind == "world":
            return tuple(range(self.world_size))
        e, et = self.ep, self.etp
        if kind == "ep":
            return tuple(stage_base + k["etp"] + et * (i + e * k["edp"]) for i in range(e))
        if kind == "edp":
            return tuple(stage_base + k["etp"] + et * (k["ep"] + e * i) for i in range(self.edp))
        raise ValueError(f"unknown group kind {kind!r}")

    def stage_chunks(self, model: ModelConfig, stage: int) -> list[list[int]]:
        """The layer indices of each virtual chunk of ``stage`` (chunk-major, forward order).

        Layers are numbered along the virtual pipeline: chunk 0 of stages 0..p-1, then chunk 1 of
        stages 0..p-1, ... (Megatron's interleaved assignment; plain consecutive blocks when vpp=1).
        """
        counts = self.stage_layer_counts(model)
        v = self.vpp
        per_chunk = [c // v for c in counts]
        out = [[] for _ in range(v)]
        next_layer = 0
        for chunk in range(v):
            for s in range(self.pp):
                n = per_chunk[s]
                if s == stage:
                    out[chunk] = list(range(next_layer, next_layer + n))
                next_layer += n
        return out

    def describe(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"DP{self.dp}"]
        if self.cp > 1:
            parts.append(f"CP{self.cp}")
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.vpp > 1:
            parts.append(f"VPP{self.vpp}")
        if self.sp:
            parts.append("SP")
        return " ".join(parts) + f" ({self.world_size} GPUs, dp-mode {self.dp_mode})"

    def as_dict(self) -> dict:
        return asdict(self)


def round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple
