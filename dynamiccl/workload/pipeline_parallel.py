"""Pipeline parallelism (Megatron-LM ``megatron/core/pipeline_parallel/schedules.py``).

``schedule`` gives the order of forward (F) and backward (B) micro-batch passes on one stage:

- 1F1B (vpp = 1): stage r runs min(p-r-1, m) warm-up forwards, then alternates one forward and one
  backward, then the remaining backwards (``forward_backward_pipelining_without_interleaving``).
- interleaved 1F1B (vpp = v > 1): each stage holds v model chunks; virtual micro-batch k runs chunk
  (k mod p·v) // p, micro-batch (k // p·v)·p + k mod p; warm-up (p-r-1)·2 + (v-1)·p passes
  (``forward_backward_pipelining_with_interleaving``, micro-batch group size p).

Between passes the stage exchanges the boundary activation (forward) or its gradient (backward),
b·(s/cp)·h elements (÷t under sequence parallelism; ``get_tensor_shapes``), with the neighbouring
stage; the last stage wraps to the first between chunks. A send after one pass and the receive
before the next are fused into one ``batch_isend_irecv`` group where Megatron fuses them:
forward→backward and backward→forward transitions in 1F1B (``send_forward_recv_backward`` /
``send_backward_recv_forward``), every transition in the interleaved schedule. Megatron waits for
every posted request before computing, so pipeline p2p is on the critical path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dynamiccl.workload.context import StepContext


@dataclass(frozen=True)
class Pass:
    direction: str  # "F" or "B"
    microbatch: int
    chunk: int


def schedule(pp: int, stage: int, num_microbatches: int, vpp: int = 1) -> list[Pass]:
    """The passes stage ``stage`` of ``pp`` runs in one step, in order."""
    m = num_microbatches
    if vpp == 1:
        warmup = min(pp - stage - 1, m)
        order = [Pass("F", i, 0) for i in range(warmup)]
        for i in range(m - warmup):
            order += [Pass("F", warmup + i, 0), Pass("B", i, 0)]
        order += [Pass("B", i, 0) for i in range(m - warmup, m)]
        return order
    total = m * vpp
    group = pp * vpp

    def forward(k: int) -> Pass:
        return Pass("F", (k // group) * pp + k % pp, (k % group) // pp)

    def backward(k: int) -> Pass:
        return Pass("B", (k // group) * pp + k % pp, vpp - 1 - (k % group) // pp)

    warmup = total if m == pp else min((pp - stage - 1) * 2 + (vpp - 1) * pp, total)
    order = [forward(k) for k in range(warmup)]
    for k in range(total - warmup):
        order += [forward(warmup + k), backward(k)]
    order += [backward(k) for k in range(total - warmup, total)]
    return order


def boundary_bytes(ctx: StepContext) -> int:
    """Bytes of the activation (or gradient) crossing a stage boundary for one micro-batch."""
    lay = ctx.layout
    elems = lay.micro_batch * (lay.seq_len // lay.cp) * ctx.model.hidden_size
    return elems * ctx.act_size // (lay.tp if lay.sp else 1)


def run_passes(ctx: StepContext, passes: list[Pass], run: Callable[[Pass], None]) -> None:
    """Emit every pass with the pipeline p2p around it; ``run`` emits a pass's compute."""
    lay = ctx.layout
    if lay.pp == 1:
        for item in passes:
            run(item)
    elif lay.vpp == 1:
        _run_1f1b(ctx, passes, run)
    else:
        _run_interleaved(ctx, passes, run)


class _Exchange:
    """Posts one stage's p2p groups: sends go down (forward) or up (backward) the pipeline."""

    def __init__(self, ctx: StepContext):
        lay = ctx.layout
        self.ctx = ctx
        self.p, self.v = lay.pp, lay.vpp
        self.stage = lay.coords(ctx.rank)["pp"]
        ranks = ctx.group("pp").ranks
        self.next, self.prev = ranks[(self.stage + 1) % self.p], ranks[(self.stage - 1) % self.p]
        self.nbytes = boundary_bytes(ctx)

    def needs_input(self, item: Pass) -> bool:
        """Whether a pass receives its input (F: activation, B: output gradient) from a neighbour."""
        if item.direction == "F":
            return not (self.stage == 0 and item.chunk == 0)
        return not (self.stage == self.p - 1 and item.chunk == self.v - 1)

    def has_output(self, item: Pass) -> bool:
        """Whether a pass sends its result (F: activation, B: input gradient) to a neighbour."""
        if item.direction == "F":
            return not (self.stage == self.p - 1 and item.chunk == self.v - 1)
        return not (self.stage == 0 and item.chunk == 0)

    def post(self, name: str, phase: Pass, send_fwd=False, send_bwd=False, recv_fwd=False, recv_bwd=False) -> None:
        sends = [(self.next, self.nbytes)] * send_fwd + [(self.prev, self.nbytes)] * send_bwd
        recvs = [(self.prev, self.nbytes)] * recv_fwd + [(self.next, self.nbytes)] * recv_bwd
        if sends or recvs:
            self.ctx.at("forward" if phase.direction == "F" else "backward", phase.microbatch)
            self.ctx.p2p_group("pp", sends, recvs, name=name)


def _run_1f1b(ctx: StepContext, passes: list[Pass], run: Callable[[Pass], None]) -> None:
    """Megatron's non-interleaved loop: warm-up recv/F/send, steady F + send_forward_recv_backward,
    B + send_backward_recv_forward, cool-down recv/B/send."""
    x = _Exchange(ctx)
    x.post("pp.recv_forward", passes[0], recv_fwd=x.needs_input(passes[0]))
    for i, item in enumerate(passes):
        run(item)
        nxt = passes[i + 1] if i + 1 < len(passes) else None
        out = x.has_output(item)
        into = nxt is not None and x.needs_input(nxt)
        if nxt is not None and nxt.direction != item.direction:  # fused at F->B and B->F
            x.post("pp.exchange", nxt, send_fwd=out and item.direction == "F", send_bwd=out and item.direction == "B",
                   recv_fwd=into and nxt.direction == "F", recv_bwd=into and nxt.direction == "B")
            continue
        kind = "forward" if item.direction == "F" else "backward"
        x.post(f"pp.send_{kind}", item, send_fwd=out and item.direction == "F", send_bwd=out and item.direction == "B")
        if nxt is not None:
            kind = "forward" if nxt.direction == "F" else "backward"
            x.post(f"pp.recv_{kind}", nxt, recv_fwd=into and nxt.direction == "F", recv_bwd=into and nxt.direction == "B")


def _chunk_of(k: int, p: int, v: int, forward: bool) -> int:
    """Megatron's get_model_chunk_id for virtual micro-batch k (negative k wraps like Python's %)."""
    chunk = (k % (p * v)) // p
    return chunk if forward else v - 1 - chunk


def _run_interleaved(ctx: StepContext, passes: list[Pass], run: Callable[[Pass], None]) -> None:
    """Megatron's interleaved loop, with its receive bookkeeping: every iteration ends in one
    batched exchange that sends this iteration's results and receives the inputs of the next
    forward / backward, the first stage lagging the last by p-1 virtual micro-batches."""
    x = _Exchange(ctx)
    p, v, stage = x.p, x.v, x.stage
    first, last = stage == 0, stage == p - 1
    forwards = [i for i in passes if i.direction == "F"]
    backwards = [i for i in passes if i.direction == "B"]
    total = len(forwards)
    warmup = next((i for i, item in enumerate(passes) if item.direction == "B"), total)
    remaining = total - warmup
    all_warmup = warmup == total

    x.post("pp.recv_forward", forwards[0], recv_fwd=x.needs_input(forwards[0]))
    for k in range(warmup):
        run(forwards[k])
        recv_prev = not (first and _chunk_of(k + 1, p, v, True) == 0) and k != total - 1
        if k == warmup - 1 and not all_warmup:
            x.post("pp.exchange", forwards[k], send_fwd=x.has_output(forwards[k]), recv_fwd=recv_prev,
                   recv_bwd=not last)
        else:
            x.post("pp.exchange", forwards[k], send_fwd=x.has_output(forwards[k]), recv_fwd=recv_prev)
    for k in range(remaining):
        fwd, bwd = forwards[warmup + k], backwards[k]
        run(fwd)
        run(bwd)
        recv_prev = not (first and _chunk_of(warmup + k - (p - 1), p, v, True) == v - 1)
        recv_next = not (last and _chunk_of(k - (p - 1), p, v, False) == 0)
        if k == remaining - 1:
            recv_prev = False
        x.post("pp.exchange", bwd, send_fwd=x.has_output(fwd), send_bwd=x.has_output(bwd), recv_fwd=recv_prev,
               recv_bwd=recv_next)
    if all_warmup:
        x.post("pp.recv_backward", backwards[0], recv_bwd=x.needs_input(backwards[0]))
    for k in range(remaining, total):
        run(backwards[k])
        recv_next = not (last and _chunk_of(k + 1, p, v, False) == v - 1) and k != total - 1
        x.post("pp.exchange", backwards[k], send_bwd=x.has_output(backwards[k]), recv_bwd=recv_next)
