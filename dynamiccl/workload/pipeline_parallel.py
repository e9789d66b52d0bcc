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


def warmup_passes(pp: int, stage: int, num_microbatches: int, vpp: int = 1) -> int:
    """Forward passes stage ``stage`` runs before its first backward (Megatron's num_warmup)."""
    if vpp == 1:
        return min(pp - stage - 1, num_microbatches)
    total = num_microbatches * vpp
    if num_microbatches == pp:  # Megatron: all_warmup_microbatches
        return total
    return min((pp - stage - 1) * 2 + (vpp - 1) * pp, total)


def schedule(pp: int, stage: int, num_microbatches: int, vpp: int = 1) -> list[Pass]:
    """The passes stage ``stage`` of ``pp`` runs in one step, in order."""
    m, v = num_microbatches, vpp
    total, group = m * v, pp * v
    warmup = warmup_passes(pp, stage, m, v)

    def forward(k: int) -> Pass:
        return Pass("F", (k // group) * pp + k % pp, (k % group) // pp)

    def backward(k: int) -> Pass:
        return Pass("B", (k // group) * pp + k % pp, v - 1 - (k % group) // pp)

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

    def post(self, name: str, at: Pass, send_fwd: Pass | None = None, send_bwd: Pass | None = None,
             recv_fwd: Pass | None = None, recv_bwd: Pass | None = None) -> None:
        """One batched exchange; each argument is the pass whose tensor moves (None: nothing)."""
        def entry(peer: int, item: Pass) -> tuple:
            return (peer, self.nbytes, "forward" if item.direction == "F" else "backward", item.microbatch)

        sends, recvs = [], []
        if send_fwd is not None:
            sends.append(entry(self.next, send_fwd))
        if send_bwd is not None:
            sends.append(entry(self.prev, send_bwd))
        if recv_fwd is not None:
            recvs.append(entry(self.prev, recv_fwd))
        if recv_bwd is not None:
            recvs.append(entry(self.next, recv_bwd))
        if sends or recvs:
            self.ctx.at("forward" if at.direction == "F" else "backward", at.microbatch)
            self.ctx.p2p_group("pp", sends, recvs, name=name)


def _if(condition: bool, item: Pass | None) -> Pass | None:
    return item if condition else None


def _run_1f1b(ctx: StepContext, passes: list[Pass], run: Callable[[Pass], None]) -> None:
    """Megatron's non-interleaved loop: warm-up recv/F/send, steady F + send_forward_recv_backward,
    B + send_backward_recv_forward, cool-down recv/B/send."""
    x = _Exchange(ctx)
    x.post("pp.recv_forward", passes[0], recv_fwd=_if(x.needs_input(passes[0]), passes[0]))
    for i, item in enumerate(passes):
        run(item)
        nxt = passes[i + 1] if i + 1 < len(passes) else None
        out = _if(x.has_output(item), item)
        into = _if(nxt is not None and x.needs_input(nxt), nxt)
        forward, next_forward = item.direction == "F", nxt is not None and nxt.direction == "F"
        if nxt is not None and nxt.direction != item.direction:  # fused at F->B and B->F
            x.post("pp.exchange", nxt, send_fwd=_if(forward, out), send_bwd=_if(not forward, out),
                   recv_fwd=_if(next_forward, into), recv_bwd=_if(not next_forward, into))
            continue
        x.post("pp.send_forward" if forward else "pp.send_backward", item,
               send_fwd=_if(forward, out), send_bwd=_if(not forward, out))
        if nxt is not None:
            x.post("pp.recv_forward" if next_forward else "pp.recv_backward", nxt,
                   recv_fwd=_if(next_forward, into), recv_bwd=_if(not next_forward, into))


def _chunk_of(k: int, p: int, v: int, forward: bool) -> int:
    """Megatron's get_model_chunk_id for virtual micro-batch k (negative k wraps like Python's %)."""
    chunk = (k % (p * v)) // p
    return chunk if forward else v - 1 - chunk


def _run_interleaved(ctx: StepContext, passes: list[Pass], run: Callable[[Pass], None]) -> None:
    """Megatron's interleaved loop, with its receive bookkeeping: every iteration ends in one
    batched exchange that sends this iteration's results and receives the inputs of the next
    forward / backward, the first stage lagging the last by p-1 virtual micro-batches. A receive is
    labelled with the pass the loop receives for next."""
    x = _Exchange(ctx)
    p, v, stage = x.p, x.v, x.stage
    first, last = stage == 0, stage == p - 1
    forwards = [i for i in passes if i.direction == "F"]
    backwards = [i for i in passes if i.direction == "B"]
    total = len(forwards)
    warmup = warmup_passes(p, stage, total // v, v)
    remaining = total - warmup
    all_warmup = warmup == total

    def fwd(k: int) -> Pass:  # the pass a receive is for (labels only; clamped at the ends)
        return forwards[min(max(k, 0), total - 1)]

    def bwd(k: int) -> Pass:
        return backwards[min(max(k, 0), total - 1)]

    x.post("pp.recv_forward", forwards[0], recv_fwd=_if(x.needs_input(forwards[0]), forwards[0]))
    for k in range(warmup):
        run(forwards[k])
        recv_prev = not (first and _chunk_of(k + 1, p, v, True) == 0) and k != total - 1
        send = _if(x.has_output(forwards[k]), forwards[k])
        if k == warmup - 1 and not all_warmup:
            x.post("pp.exchange", forwards[k], send_fwd=send, recv_fwd=_if(recv_prev, fwd(k + 1)),
                   recv_bwd=_if(not last, bwd(0)))
        else:
            x.post("pp.exchange", forwards[k], send_fwd=send, recv_fwd=_if(recv_prev, fwd(k + 1)))
    for k in range(remaining):
        f, b = forwards[warmup + k], backwards[k]
        run(f)
        run(b)
        recv_prev = not (first and _chunk_of(warmup + k - (p - 1), p, v, True) == v - 1)
        recv_next = not (last and _chunk_of(k - (p - 1), p, v, False) == 0)
        if k == remaining - 1:
            recv_prev = False
        x.post("pp.exchange", b, send_fwd=_if(x.has_output(f), f), send_bwd=_if(x.has_output(b), b),
               recv_fwd=_if(recv_prev, fwd(warmup + k + 1)), recv_bwd=_if(recv_next, bwd(k + 1)))
    if all_warmup:
        x.post("pp.recv_backward", backwards[0], recv_bwd=_if(x.needs_input(backwards[0]), backwards[0]))
    for k in range(remaining, total):
        run(backwards[k])
        recv_next = not (last and _chunk_of(k + 1, p, v, False) == v - 1) and k != total - 1
        x.post("pp.exchange", backwards[k], send_bwd=_if(x.has_output(backwards[k]), backwards[k]),
               recv_bwd=_if(recv_next, bwd(k + 1)))
