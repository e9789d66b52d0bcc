"""Data parallelism: how gradients (and, sharded, parameters) cross the data-parallel group.

Four modes:

- ``ddp``: PyTorch DDP (``torch/nn/parallel/distributed.py``) in its steady state. Gradients of one
  model chunk, in the order they become ready (reverse parameter order; a layer's weight before its
  bias), fill buckets of 25 MiB (the first 1 MiB, ``dist._DEFAULT_FIRST_BUCKET_BYTES``), a bucket
  closing after any tensor; each bucket is all-reduced as soon as its last gradient is ready, during
  the last micro-batch's backward (``no_sync`` before). These are the buckets DDP rebuilds after its
  first iteration: in torch 2.13 the first iteration reduces every gradient in one all-reduce (no
  initial bucketing without ``find_unused_parameters``) and the second starts with two int32
  broadcasts of the new bucket assignment from DP rank 0 (checked against real runs in
  ``tests/test_profiler_crossvalidation.py``).
- ``megatron``: Megatron DDP (NVIDIA/Megatron-LM
  ``megatron/core/distributed/distributed_data_parallel{,_config}.py``). One buffer per reduction
  group (dense params over DP×CP, expert params over expert-DP); with ``overlap_grad_reduce``
  buckets of max(40M, 1M·dp) parameters fire during the last micro-batch's backward, otherwise each
  buffer is one all-reduce after the pipeline has drained.
- ``distopt``: Megatron's distributed optimizer (ZeRO-1, arXiv:1910.02054; Megatron-LM
  ``docs/user-guide/features/dist_optimizer.md``). The same buckets, padded to a multiple of
  lcm(group size, 128) elements, are reduce-scattered; after the optimizer each bucket's updated
  bf16 parameters are all-gathered — with overlap, during the next step's forward, so a
  steady-state step begins with them.
- ``fsdp``: ZeRO-3 / FSDP2 (``torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py``) with one
  unit per transformer layer and a root unit (embedding, output layer, final norm), following
  FSDP2's unshard state: a layer is all-gathered before each forward (the next unit prefetched while
  the current one computes) and, with ``reshard_after_forward``, again before each backward; the
  root is gathered by the root module's pre-forward (before any layer, on every pipeline stage),
  stays unsharded through forward and is resharded at the end of every backward, so consecutive
  forwards (pipeline warm-up) gather it once and a backward right after a backward (cool-down)
  gathers it again. Gradients are reduce-scattered once, in the last micro-batch's backward
  (``set_requires_gradient_sync``), the root's last.

Gradients are reduced in ``layout.grad_reduce_dtype`` (fp32 by default for bf16 runs, Megatron's
``accumulate_allreduce_grads_in_fp32``); parameters are gathered in the activation dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dynamiccl.workload.context import StepContext
from dynamiccl.workload.layout import round_up

DDP_FIRST_BUCKET_BYTES = 1024 * 1024  # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES
DDP_BUCKET_CAP_BYTES = 25 * 1024 * 1024  # DistributedDataParallel(bucket_cap_mb=25)
MEGATRON_MIN_BUCKET_PARAMS = 40_000_000  # DistributedDataParallelConfig.bucket_size default
DISTOPT_PAD_MULTIPLE = 128
ADAM_BYTES_PER_PARAM = 30  # read fp32 grad, master, m, v; write master, m, v and the bf16 copy
# AdamW's update per parameter, counted operation by operation from Algorithm 2 of Loshchilov & Hutter
# (arXiv:1711.05101; Megatron's default "adam" is this decoupled-weight-decay form): m = b1*m +
# (1-b1)*g: 3; v = b2*v + (1-b2)*g^2: 4; the two bias corrections: 2; p -= lr*(m_hat/(sqrt(v_hat) +
# eps) + wd*p): 7 (sqrt, add, divide, multiply, add, multiply, subtract). The bf16 copy is a cast.
ADAM_FLOPS_PER_PARAM = 16


@dataclass
class Param:
    """One parameter entry as this rank holds it: when its gradient is ready, over which group."""

    name: str
    numel: int
    event: tuple  # ("embedding",), (layer, "attn"), (layer, "mlp"), ("head",)
    group_kind: str  # "dp" (dense, over DP×CP) or "edp" (experts, over expert-DP)
    parts: tuple[int, ...] = ()  # the tensors it stands for (weight, bias, ...), gradient-ready order

    def tensors(self) -> list["Param"]:
        """One Param per real tensor (PyTorch DDP closes a bucket after any tensor)."""
        if len(self.parts) <= 1:
            return [self]
        return [Param(f"{self.name}[{i}]", n, self.event, self.group_kind) for i, n in enumerate(self.parts)]


@dataclass
class Bucket:
    params: list[Param]
    group_kind: str
    numel: int
    padded_numel: int
    pending: set = field(default_factory=set)
    gather_op: int | None = None


class DataParallel:
    """Places one rank's data-parallel collectives in its step; see the module docstring.

    The generator calls ``step_start`` once, ``before_forward`` / ``after_forward`` /
    ``before_backward`` around every layer (or the "root" unit), ``root_pre_backward`` where FSDP2's
    root pre-backward hook fires, ``grads_ready`` after each backward block, ``after_backward`` at the
    end of each micro-batch's backward, ``finish_backward`` when the pipeline has drained and
    ``after_optimizer`` after the optimizer step.
    """

    def __init__(self, ctx: StepContext, chunks: list[list[int]], first_stage: bool, last_stage: bool,
                 last_backward_mb: dict[int, int]):
        self.ctx = ctx
        lay = ctx.layout
        self.mode = lay.dp_mode
        self.last_backward_mb = last_backward_mb
        self.outstanding: list[int] = []
        self.params: dict[int, list[Param]] = {}
        for chunk, layers in enumerate(chunks):
            plist: list[Param] = []
            if first_stage and chunk == 0:
                plist += self._wrap(ctx.model.embedding_tensors(lay.tp), ("embedding",))
            for layer in layers:
                for t in ctx.model.layer_tensors(layer):
                    event = (layer, "attn" if t.name.startswith("attn.") else "mlp")
                    plist += self._wrap([t], event)
            if last_stage and chunk == len(chunks) - 1:
                plist += self._wrap(ctx.model.head_tensors(lay.tp, lay.pp), ("head",))
            self.params[chunk] = plist
        self.buckets: dict[int, list[Bucket]] = {c: self._bucketize(p) for c, p in self.params.items()}
        self._bucket_of_event: dict[tuple, list[Bucket]] = {}
        for chunk, buckets in self.buckets.items():
            for bucket in buckets:
                for event in dict.fromkeys(p.event for p in bucket.params):
                    self._bucket_of_event.setdefault((chunk, event), []).append(bucket)
        self._gathered_units: set[tuple] = set()
        self._fsdp_unsharded: dict[tuple, int | None] = {}  # FSDP units gathered now -> their gather

    def _wrap(self, tensors, event) -> list[Param]:
        lay = self.ctx.layout
        out = []
        for t in tensors:
            numel = t.per_rank_numel(lay.tp, lay.etp)
            copies = t.count // lay.ep if t.expert else t.count  # this rank's experts
            parts = t.per_rank_parts(lay.tp, lay.etp) * copies
            out.append(Param(t.name, numel * copies, event, "edp" if t.expert else "dp", parts))
        return out

    # --- bucketing ---------------------------------------------------------------------------------

    def _bucketize(self, params: list[Param]) -> list[Bucket]:
        """Buckets in reverse parameter order (the order gradients become ready).

        PyTorch DDP (after its first iteration) fills buckets in the order gradients became ready
        and closes one as soon as it reaches the cap, after any tensor: a layer's weight and bias
        may land in different buckets. Within one backward node autograd accumulates gradients in
        the node's input order (weight before bias), so each entry is expanded into its tensors in
        that order. Megatron's buckets are modelled per entry.
        """
        if self.mode == "fsdp":
            return []
        out: list[Bucket] = []
        for kind in ("dp", "edp"):
            group_params = [p for p in reversed(params) if p.group_kind == kind]
            if self.mode == "ddp":
                group_params = [t for p in group_params for t in p.tensors()]
            if not group_params:
                continue
            first = len(out)
            size = self.ctx.group_size(kind)
            if self.mode == "ddp":
                limits = [DDP_FIRST_BUCKET_BYTES // self.ctx.grad_size, DDP_BUCKET_CAP_BYTES // self.ctx.grad_size]
            elif self.ctx.layout.overlap_grad_reduce:
                limits = [max(MEGATRON_MIN_BUCKET_PARAMS, 1_000_000 * size)]
            else:
                limits = [math.inf]
            current: list[Param] = []
            numel = 0
            for p in group_params:
                current.append(p)
                numel += p.numel
                if numel >= limits[min(len(out) - first, len(limits) - 1)]:
                    out.append(self._bucket(current, kind, numel, size))
                    current, numel = [], 0
            if current:
                out.append(self._bucket(current, kind, numel, size))
        return out

    def _bucket(self, params: list[Param], kind: str, numel: int, size: int) -> Bucket:
        pad = math.lcm(size, DISTOPT_PAD_MULTIPLE) if self.mode == "distopt" else 1
        return Bucket(list(params), kind, numel, round_up(numel, pad), {id(p) for p in params})

    # --- collectives -------------------------------------------------------------------------------

    def _reduce(self, bucket: Bucket, name: str) -> int | None:
        if self.ctx.group_size(bucket.group_kind) == 1:
            return None
        if self.mode == "distopt":
            return self.ctx.start("reducescatter", bucket.group_kind, bucket.padded_numel * self.ctx.grad_size,
                                  dtype=self.ctx.layout.grad_reduce_dtype, name=name)
        return self.ctx.start("allreduce", bucket.group_kind, bucket.numel * self.ctx.grad_size,
                              dtype=self.ctx.layout.grad_reduce_dtype, name=name)

    def _gather_params(self, bucket: Bucket, name: str) -> int | None:
        if self.ctx.group_size(bucket.group_kind) == 1:
            return None
        return self.ctx.start("allgather", bucket.group_kind, bucket.padded_numel * self.ctx.act_size, name=name)

    def step_start(self) -> None:
        """Distributed optimizer with overlap: the parameter all-gathers of the previous optimizer
        step, per bucket in forward order, overlapping this step's forward."""
        if self.mode != "distopt" or not self.ctx.layout.overlap_grad_reduce:
            return
        self.ctx.at("forward")
        for chunk, buckets in self.buckets.items():
            for i, bucket in reversed(list(enumerate(buckets))):
                bucket.gather_op = self._gather_params(bucket, f"chunk{chunk}.param_allgather.bucket{i}")

    def _fsdp_unit(self, chunk: int, unit) -> list[Param]:
        if unit == "root":
            return [p for p in self.params[chunk] if p.event in (("embedding",), ("head",))]
        return [p for p in self.params[chunk] if p.event[0] == unit]

    def _fsdp_gather(self, chunk: int, unit, direction: str) -> int | None:
        """All-gather ``unit`` unless it is still unsharded (FSDP2 unshards a module only when its
        parameters are sharded); returns the gather the unit's compute waits for."""
        key = (chunk, unit)
        if key not in self._fsdp_unsharded:
            numel = sum(p.numel for p in self._fsdp_unit(chunk, unit))
            op = None
            if numel and self.ctx.group_size("fsdp") > 1:
                op = self.ctx.start("allgather", "fsdp", round_up(numel, self.ctx.group_size("fsdp")) * self.ctx.act_size,
                                    name=f"fsdp.{direction}_allgather")
            self._fsdp_unsharded[key] = op
        return self._fsdp_unsharded[key]

    def before_forward(self, chunk: int, unit, microbatch: int, next_unit=None) -> None:
        """Wait for the parameters ``unit`` (a layer index or "root") needs in forward."""
        if self.mode == "distopt" and (chunk, unit) not in self._gathered_units:
            # The first forward through a unit waits for the buckets holding its parameters.
            events = [("embedding",), ("head",)] if unit == "root" else [(unit, "attn"), (unit, "mlp")]
            buckets = {id(b): b for e in events for b in self._bucket_of_event.get((chunk, e), [])}
            self.ctx.wait(*(b.gather_op for b in buckets.values() if b.gather_op is not None))
            self._gathered_units.add((chunk, unit))
        if self.mode == "fsdp":
            self.ctx.wait(self._fsdp_gather(chunk, unit, "fwd"))
            if next_unit is not None:
                self._fsdp_gather(chunk, next_unit, "fwd")  # prefetch

    def after_forward(self, chunk: int, unit) -> None:
        """FSDP2 reshards a layer after its forward (``reshard_after_forward``); the root stays
        unsharded until the end of the next backward."""
        if self.mode == "fsdp" and unit != "root" and self.ctx.layout.reshard_after_forward:
            self._fsdp_unsharded.pop((chunk, unit), None)

    def before_backward(self, chunk: int, unit, microbatch: int, next_unit=None) -> None:
        """FSDP: re-gather a resharded layer for its backward and prefetch the next one (the root
        too when it was resharded by an earlier backward: a cool-down backward of the first stage)."""
        if self.mode != "fsdp":
            return
        self.ctx.wait(self._fsdp_gather(chunk, unit, "bwd"))
        if next_unit is not None:
            self._fsdp_gather(chunk, next_unit, "bwd")

    def root_pre_backward(self, chunk: int, wait: bool) -> None:
        """FSDP2's pre-backward hook of the root module (on the stage's output): gather the root's
        parameters if a previous backward resharded them."""
        if self.mode == "fsdp":
            op = self._fsdp_gather(chunk, "root", "bwd")
            if wait:
                self.ctx.wait(op)

    def after_backward(self, chunk: int, microbatch: int) -> None:
        """End of one micro-batch's backward: FSDP2 reduce-scatters the root's gradients last (its
        post-backward runs when the backward reaches the stage's input) and reshards every unit."""
        if self.mode != "fsdp":
            return
        if microbatch == self.last_backward_mb[chunk]:
            self._fsdp_reduce(chunk, "root")
        for key in [k for k in self._fsdp_unsharded if k[0] == chunk]:
            del self._fsdp_unsharded[key]

    def grads_ready(self, chunk: int, event: tuple, microbatch: int) -> None:
        """Gradients of ``event``'s parameters are complete for this micro-batch."""
        if microbatch != self.last_backward_mb[chunk]:
            return
        if self.mode == "fsdp":
            if event[0] not in ("embedding", "head") and event[1] == "attn":
                self._fsdp_reduce(chunk, event[0])
            return
        if not self.ctx.layout.overlap_grad_reduce:
            return
        for bucket in self._bucket_of_event.get((chunk, event), []):
            bucket.pending -= {id(p) for p in bucket.params if p.event == event}
            if not bucket.pending:
                index = self.buckets[chunk].index(bucket)
                op = self._reduce(bucket, f"chunk{chunk}.grad_bucket{index}")
                if op is not None:
                    self.outstanding.append(op)

    def _fsdp_reduce(self, chunk: int, unit) -> None:
        numel = sum(p.numel for p in self._fsdp_unit(chunk, unit))
        if numel and self.ctx.group_size("fsdp") > 1:
            self.outstanding.append(self.ctx.start(
                "reducescatter", "fsdp", round_up(numel, self.ctx.group_size("fsdp")) * self.ctx.grad_size,
                dtype=self.ctx.layout.grad_reduce_dtype, name="fsdp.grad_reducescatter"))

    def finish_backward(self) -> None:
        """Pipeline drained: issue non-overlapped gradient reductions; wait for all of them."""
        if self.mode != "fsdp" and not self.ctx.layout.overlap_grad_reduce:
            for chunk, buckets in self.buckets.items():
                for i, bucket in enumerate(buckets):
                    op = self._reduce(bucket, f"chunk{chunk}.grad_buffer{i}")
                    if op is not None:
                        self.outstanding.append(op)
        self.ctx.wait(*self.outstanding)
        self.outstanding = []

    def after_optimizer(self) -> None:
        """Distributed optimizer without overlap: gather the updated parameters now."""
        if self.mode != "distopt" or self.ctx.layout.overlap_grad_reduce:
            return
        ops = [self._gather_params(b, f"chunk{c}.param_allgather.buffer{i}")
               for c, buckets in self.buckets.items() for i, b in enumerate(buckets)]
        self.ctx.wait(*ops)

    # --- sizes -------------------------------------------------------------------------------------

    def local_params(self) -> dict[str, int]:
        """Parameters this rank holds, per reduction group kind (before ZeRO sharding)."""
        out = {"dp": 0, "edp": 0}
        for plist in self.params.values():
            for p in plist:
                out[p.group_kind] += p.numel
        return out

    def optimizer_params(self) -> int:
        """Parameters this rank's optimizer updates (sharded over the group for distopt / fsdp)."""
        local = self.local_params()
        if self.mode in ("distopt", "fsdp"):
            kinds = {"dp": "fsdp" if self.mode == "fsdp" else "dp", "edp": "edp"}
            return sum(math.ceil(n / self.ctx.group_size(kinds[k])) for k, n in local.items() if n)
        return sum(local.values())
