"""The workload generator: a Megatron-style training step, per rank, from a model and a layout.

Per rank and step, in issue order (NVIDIA/Megatron-LM
``megatron/core/pipeline_parallel/schedules.py`` and
``megatron/core/distributed/finalize_model_grads.py``):

1. distributed optimizer with overlap: parameter all-gathers per bucket (forward order);
2. the pipeline schedule's forward and backward passes with their p2p exchanges; in each layer the
   TP collectives (tensor_parallel), the context-parallel ring (context_parallel), the MoE
   all-to-alls (expert_parallel); DP / FSDP collectives where their data is ready (data_parallel);
3. finalisation (Megatron ``finalize_model_grads``): wait for gradient sync, all-reduce the
   sequence-parallel replicated gradients over TP, the tied embedding's gradient over the
   embedding group, the gradient norm (fp32) over the model-parallel group (the whole world when
   the optimizer is sharded); the optimizer step; the loss report over DP on the last stage.

Compute segments carry FLOPs (flops), the bytes they move (bytes_moved, ``flops.py``) and a duration
from the GPU's peak × an efficiency (memory-bound ones: from their bytes at HBM bandwidth).

All ranks of one pipeline stage run the same step (TP/CP/DP/EP peers are symmetric), so by default
one representative rank per stage is generated and the metadata says which ranks it stands for;
``all_ranks=True`` generates every rank (for cross-checks against captured traces).
"""

from __future__ import annotations

from dataclasses import asdict

from tqdm import tqdm

from dynamiccl import __version__
from dynamiccl.errors import InputError
from dynamiccl.trace.builder import TraceBuilder
from dynamiccl.trace.store import Trace
from dynamiccl.workload import context_parallel, expert_parallel, tensor_parallel
from dynamiccl.workload.context import ComputeRate, StepContext
from dynamiccl.workload.data_parallel import ADAM_BYTES_PER_PARAM, ADAM_FLOPS_PER_PARAM, DataParallel
from dynamiccl.workload.flops import BACKWARD_BYTES_FACTOR, BlockFlops, LayerFlops
from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.models import ModelConfig
from dynamiccl.workload.pipeline_parallel import Pass, run_passes, schedule

MAX_ALL_RANKS = 2048  # beyond this --all-ranks is refused: gigabytes of identical per-stage copies


class RankStep:
    """Generates one rank's training step into ``builder``."""

    def __init__(self, builder: TraceBuilder, model: ModelConfig, layout: ParallelLayout, rate: ComputeRate,
                 rank: int, represents: list[int] | None, role: str):
        rec = builder.rank(rank, represents=represents, role=role)
        self.ctx = StepContext(builder=builder, layout=layout, model=model, rank=rank, rate=rate, rec=rec)
        self.model, self.layout = model, layout
        self.stage = layout.coords(rank)["pp"]
        self.chunks = layout.stage_chunks(model, self.stage)
        self.first_stage = self.stage == 0
        self.last_stage = self.stage == layout.pp - 1
        self.flops = LayerFlops(model, layout)
        self.passes = schedule(layout.pp, self.stage, layout.num_microbatches, layout.vpp)
        last_backward = {p.chunk: p.microbatch for p in self.passes if p.direction == "B"}
        self.dp = DataParallel(self.ctx, self.chunks, self.first_stage, self.last_stage, last_backward)

    def holds_embedding(self, chunk: int) -> bool:
        return self.first_stage and chunk == 0

    def holds_head(self, chunk: int) -> bool:
        return self.last_stage and chunk == len(self.chunks) - 1

    def root_first(self, chunk: int) -> bool:
        """Whether forward needs the "root" parameters (embedding, output layer, final norm) before
        the layers: on the first stage, and under FSDP on the last too (FSDP2 gathers the root
        module's parameters in its pre-forward, before any layer)."""
        return self.holds_embedding(chunk) or (self.holds_head(chunk) and self.layout.dp_mode == "fsdp")

    def forward_units(self, chunk: int) -> list:
        """Units in the order forward needs them: "root" and layer indices."""
        units: list = ["root"] if self.root_first(chunk) else []
        units += self.chunks[chunk]
        if self.holds_head(chunk) and not self.root_first(chunk):
            units.append("root")
        return units

    def run(self) -> None:
        self.dp.step_start()
        run_passes(self.ctx, self.passes, self.run_pass)
        self.finish_step()

    # --- passes ------------------------------------------------------------------------------------

    def run_pass(self, item: Pass) -> None:
        if item.direction == "F":
            self.forward(item.chunk, item.microbatch)
        else:
            self.backward(item.chunk, item.microbatch)

    def forward(self, chunk: int, mb: int) -> None:
        ctx = self.ctx
        units = self.forward_units(chunk)
        following = {u: units[i + 1] if i + 1 < len(units) else None for i, u in enumerate(units)}
        ctx.at("forward", mb)
        if self.root_first(chunk):
            self.dp.before_forward(chunk, "root", mb, following["root"])
        if self.holds_embedding(chunk):
            tensor_parallel.embedding_forward(ctx)
        for layer in self.chunks[chunk]:
            ctx.at("forward", mb, layer)
            self.dp.before_forward(chunk, layer, mb, following[layer])
            self.layer_forward(layer)
            self.dp.after_forward(chunk, layer)
        if self.holds_head(chunk):
            ctx.at("forward", mb)
            if not self.root_first(chunk):
                self.dp.before_forward(chunk, "root", mb)
            tensor_parallel.output_forward(ctx, self.flops.lm_head(), self.flops.lm_head_bytes())
            if self.layout.cp > 1:  # Megatron's loss_func sums (loss, tokens) over the CP group
                ctx.blocking("allreduce", "cp", 8, dtype="fp32", name="loss.cp_allreduce")

    def backward(self, chunk: int, mb: int) -> None:
        ctx = self.ctx
        layers = list(reversed(self.chunks[chunk]))
        ctx.at("backward", mb)
        if self.holds_head(chunk):
            self.dp.root_pre_backward(chunk, wait=True)
            tensor_parallel.output_backward(ctx, self.flops.lm_head(), self.flops.lm_head_bytes())
            self.dp.grads_ready(chunk, ("head",), mb)
        for i, layer in enumerate(layers):
            ctx.at("backward", mb, layer)
            following = layers[i + 1] if i + 1 < len(layers) else ("root" if self.holds_embedding(chunk) else None)
            self.dp.before_backward(chunk, layer, mb, following)
            if i == 0 and self.holds_embedding(chunk) and not self.holds_head(chunk):
                # The root's pre-backward hook sits on the stage output, after the last layer's.
                self.dp.root_pre_backward(chunk, wait=False)
            self.layer_backward(chunk, layer, mb)
        if self.holds_embedding(chunk):
            ctx.at("backward", mb)
            self.dp.root_pre_backward(chunk, wait=True)
            tensor_parallel.embedding_backward(ctx)
            self.dp.grads_ready(chunk, ("embedding",), mb)
        self.dp.after_backward(chunk, mb)

    # --- one transformer layer ---------------------------------------------------------------------

    def layer_forward(self, layer: int) -> None:
        ctx, attn = self.ctx, self.flops.attention()

        def attention():
            if self.layout.cp == 1:
                ctx.compute("attn", attn.forward, attn.forward_bytes)
                return
            ctx.compute("attn.qkv", attn.column, attn.column_bytes)
            context_parallel.attention_forward(ctx, attn.inner, self.cp_chunk_bytes())
            ctx.compute("attn.out_proj", attn.row, attn.row_bytes)

        tensor_parallel.region_forward(ctx, "attn", attention)
        if self.model.is_moe_layer(layer):
            expert_parallel.moe_forward(ctx, self.flops)
        else:
            mlp = self.flops.mlp(self.model.ffn_hidden_size)
            tensor_parallel.region_forward(ctx, "mlp", lambda: ctx.compute("mlp", mlp.forward, mlp.forward_bytes))

    def layer_backward(self, chunk: int, layer: int, mb: int) -> None:
        ctx, attn = self.ctx, self.flops.attention()
        if self.model.is_moe_layer(layer):
            expert_parallel.moe_backward(ctx, self.flops)
        else:
            mlp = self.flops.mlp(self.model.ffn_hidden_size)
            tensor_parallel.region_backward(
                ctx, "mlp", lambda: ctx.compute("mlp.row_bwd", mlp.backward_upper, mlp.backward_upper_bytes), mlp)
        self.dp.grads_ready(chunk, (layer, "mlp"), mb)

        def attention_upper(block: BlockFlops = attn):
            if self.layout.cp == 1:
                ctx.compute("attn.row_bwd", block.backward_upper, block.backward_upper_bytes)
                return
            ctx.compute("attn.out_proj_bwd", 2 * block.row, BACKWARD_BYTES_FACTOR * block.row_bytes)
            context_parallel.attention_backward(ctx, block.inner_backward_factor * block.inner,
                                                BACKWARD_BYTES_FACTOR * self.cp_chunk_bytes())

        tensor_parallel.region_backward(ctx, "attn", attention_upper, attn)
        self.dp.grads_ready(chunk, (layer, "attn"), mb)

    def cp_chunk_bytes(self) -> float:
        """Bytes one context-parallel ring step's attention moves: this rank's queries and output
        against one rank's KV chunk (s/cp keys per sequence)."""
        return self.flops.attention_core_bytes(self.layout.seq_len // self.layout.cp)

    # --- end of step -------------------------------------------------------------------------------

    def replicated_grad_tensors(self) -> list[int]:
        """Sizes of the parameter tensors replicated over TP whose gradients differ per TP rank
        under SP (norms, row-parallel biases; Megatron marks them ``sequence_parallel``)."""
        sizes = [part for chunk in self.chunks for layer in chunk for t in self.model.layer_tensors(layer)
                 if t.tp == "replicated" for _ in range(t.count) for part in (t.parts or (t.numel,))]
        if self.last_stage:
            sizes += list(self.model.head_tensors(self.layout.tp, self.layout.pp)[0].parts or (self.model.norm_params,))
        return sizes

    def local_grad_numel(self, rows: int, row_numel: int = 1) -> int:
        """Elements of a gradient of ``rows`` x ``row_numel`` this rank holds: all of it, or under
        FSDP its dim-0 shard (FSDP2 shards like torch.chunk: ceil(rows / n) rows, the last ranks
        fewer); finalisation reduces these local shards."""
        if self.layout.dp_mode != "fsdp":
            return rows * row_numel
        ranks = self.layout.group_ranks("fsdp", self.ctx.rank)
        chunk = -(-rows // len(ranks))
        return max(0, min(chunk, rows - ranks.index(self.ctx.rank) * chunk)) * row_numel

    def finish_step(self) -> None:
        ctx, lay = self.ctx, self.layout
        ctx.at("step")
        self.dp.finish_backward()
        if lay.sp and lay.tp > 1:  # one flat buffer of every such gradient (_allreduce_layernorm_grads)
            numel = sum(self.local_grad_numel(n) for n in self.replicated_grad_tensors())
            ctx.blocking("allreduce", "tp", numel * ctx.grad_size, dtype=lay.grad_reduce_dtype,
                         name="finalize.sp_replicated_grads")
        if self.model.tied_embeddings and lay.pp > 1 and (self.first_stage or self.last_stage):
            numel = self.local_grad_numel(self.model.padded_vocab(lay.tp) // lay.tp, self.model.hidden_size)
            ctx.blocking("allreduce", "embd", numel * ctx.grad_size, dtype=lay.grad_reduce_dtype,
                         name="finalize.embedding_grads")
        norm_group = "world" if lay.dp_mode in ("distopt", "fsdp") else "mp"
        if ctx.group_size(norm_group) > 1:
            ctx.blocking("allreduce", norm_group, 4, dtype="fp32", name="optimizer.grad_norm")
        params = self.dp.optimizer_params()
        ctx.compute_memory_bound("optimizer.step", params * ADAM_BYTES_PER_PARAM, params * ADAM_FLOPS_PER_PARAM)
        self.dp.after_optimizer()
        if self.last_stage and ctx.group_size("dp") > 1:
            ctx.blocking("allreduce", "dp", 8, dtype="fp32", name="loss.report_allreduce")


def representatives(layout: ParallelLayout) -> list[tuple[int, list[int], str]]:
    """One rank per pipeline stage (tp = cp = dp = 0) and the ranks of that stage it stands for."""
    per_stage = layout.tp * layout.cp * layout.dp
    return [(layout.rank_of(pp=stage), list(range(stage * per_stage, (stage + 1) * per_stage)), stage_role(layout, stage))
            for stage in range(layout.pp)]


def stage_role(layout: ParallelLayout, stage: int) -> str:
    return f"pipeline stage {stage} of {layout.pp}" if layout.pp > 1 else "every rank"


def generate(model: ModelConfig, layout: ParallelLayout, rate: ComputeRate, *, all_ranks: bool = False,
             progress: bool = True, command: str = "") -> Trace:
    """Generate one training step.

    Args:
        model: the model; layout: the parallel layout (model defaults are filled in).
        rate: GPU peak and efficiency that turn FLOPs into durations.
        all_ranks: every rank instead of one representative per pipeline stage.
        progress: show a progress bar when generation takes more than two seconds.
        command: the command line that produced it, recorded in the metadata.

    Raises:
        LayoutError: the layout cannot run the model (checked before any work).
        InputError: ``all_ranks`` for more than MAX_ALL_RANKS ranks.
    """
    layout = layout.resolved(model)
    if all_ranks and layout.world_size > MAX_ALL_RANKS:
        raise InputError("--all-ranks", None,
                         f"{layout.world_size} ranks would each get a full copy of their stage's step; every rank of "
                         f"a stage is symmetric, so the default trace (one rank per stage) holds the same "
                         f"information (--all-ranks is limited to {MAX_ALL_RANKS} ranks)")
    builder = TraceBuilder(source="generator", world_size=layout.world_size, gpus_per_node=layout.gpus_per_node,
                           description=f"{model.name} {layout.describe()}, one training step")
    if all_ranks:
        jobs = [(rank, None, stage_role(layout, layout.coords(rank)["pp"])) for rank in range(layout.world_size)]
    else:
        jobs = representatives(layout)
    # The bar appears only if generation takes more than a couple of seconds.
    for rank, represents, role in tqdm(jobs, desc="generating ranks", unit="rank", disable=not progress, delay=2.0):
        RankStep(builder, model, layout, rate, rank, represents, role).run()
    workload = {
        "generator": f"dynamiccl {__version__}",
        "command": command,
        "model": asdict(model),
        "layout": layout.as_dict(),
        "num_microbatches": layout.num_microbatches,
        "world_size": layout.world_size,
        "stage_layers": layout.stage_layer_counts(model),
        "total_params": model.total_params(),
    }
    return builder.build(workload=workload, compute=rate.as_dict())
