"""Live capture: record every collective and point-to-point op of a PyTorch job, per rank.

``with capture(out_dir) as cap:`` records, in one of two modes:

- ``api`` (default, :mod:`.api_hooks`): wraps the ``torch.distributed`` and functional-collective
  API and gives DDP models an equivalent communication hook; only collectives pay for it;
- ``dispatch``: a ``TorchDispatchMode`` that sees every op of the ``c10d`` and
  ``_c10d_functional`` namespaces (PyTorch's dispatcher ops for collectives), including calls made
  from C++ or through names imported before the capture; it costs a Python call on every tensor op
  (11% slower steps on the CPU reference job, ``experiments/profiler/``).

Both see eager collectives, DDP's bucket all-reduces, FSDP2's all-gathers and reduce-scatters,
send/recv and ``batch_isend_irecv``, and DTensor/TP functional collectives, and record what the
program asked for, not the backend's implementation (gloo runs ``reduce_scatter_tensor`` as an
all-reduce).

For each op it records: the op (trace vocabulary), the process group (uid, description, global
ranks), the full buffer in bytes (nccl-tests' size: AllGather output, ReduceScatter input),
dtype, peer (global rank) or root, start/end on the host clock (ns; on GPU the host clock around
the enqueue plus CUDA events on the current stream, resolved at the end of each step), whether the
call was asynchronous, and whether it ran inside autograd's backward. Ops issued inside
``cap.step()`` belong to that step; ops outside any step (DDP construction broadcasts, barriers,
warm-up) are marked ``setup``.

Each rank writes ``<out_dir>/rank<R>.json`` atomically when the capture closes: nothing is left
half-written if the job dies. :func:`dynamiccl.profiler.merge.merge_capture` turns the directory
into one trace. Caveat for ``dispatch``: a dispatch mode is thread-local. On CPU, backward runs on
the calling thread and DDP's bucket all-reduces are seen (tested). On CUDA autograd runs backward on
device threads; PyTorch carries the dispatch-mode state into them with the rest of its
ThreadLocalState, but that path has not been run on a GPU here.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from dynamiccl import atomic, nccl

FORMAT_VERSION = 1
MODES = ("api", "dispatch")  # api: wrap torch.distributed (low overhead); dispatch: every c10d op

# c10d op -> (trace op, how its bytes are read). "buffer": the tensors' bytes; "output": the output
# tensor (AllGather's full buffer); "input": the input (ReduceScatter's, AlltoAll's full buffer).
_C10D = {
    "allreduce_": ("allreduce", "buffer"),
    "allreduce_coalesced_": ("allreduce", "coalesced"),
    "_allgather_base_": ("allgather", "output"),
    "allgather_": ("allgather", "output_lists"),
    "allgather_coalesced_": ("allgather", "output_lists"),
    "allgather_into_tensor_coalesced_": ("allgather", "coalesced_outputs"),
    "_reduce_scatter_base_": ("reducescatter", "input"),
    "reduce_scatter_": ("reducescatter", "input_lists"),
    "reduce_scatter_tensor_coalesced_": ("reducescatter", "coalesced_inputs"),
    "broadcast_": ("broadcast", "buffer"),
    "reduce_": ("reduce", "buffer"),
    "alltoall_base_": ("alltoall", "input"),
    "alltoall_": ("alltoall", "input_list"),
    "gather_": ("gather", "input_list_n"),
    "scatter_": ("scatter", "output_list_n"),
    "send": ("send", "buffer"),
    "recv_": ("recv", "buffer"),
    "recv_any_source_": ("recv", "buffer"),
    "barrier": ("barrier", "barrier"),
    "monitored_barrier_": ("barrier", "barrier"),
}
_FUNCTIONAL = {
    "all_reduce": "allreduce", "all_reduce_": "allreduce", "all_reduce_coalesced": "allreduce",
    "all_reduce_coalesced_": "allreduce", "all_gather_into_tensor": "allgather",
    "all_gather_into_tensor_out": "allgather", "all_gather_into_tensor_coalesced": "allgather",
    "reduce_scatter_tensor": "reducescatter", "reduce_scatter_tensor_out": "reducescatter",
    "reduce_scatter_tensor_coalesced": "reducescatter", "all_to_all_single": "alltoall",
    "broadcast": "broadcast", "broadcast_": "broadcast", "isend": "send", "irecv": "recv",
    "batch_p2p_ops": "batch_p2p",
}


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if len(t) == 1 and isinstance(t[0], torch.Tensor):  # the common case, without recursion
        return t[0].numel() * t[0].element_size()
    return sum(_nbytes(x) for x in t)


def _unbox(obj) -> Any:
    try:
        return dist.ProcessGroup.unbox(obj)
    except Exception:  # not a process group
        return None


def _dtype_name(t) -> str:
    while not isinstance(t, torch.Tensor):
        t = t[0]
    return str(t.dtype).removeprefix("torch.")


class Capture(TorchDispatchMode):
    """The recorder; use :func:`capture`. ``step()`` marks one training step."""

    def __init__(self, out_dir: str | os.PathLike, mode: str = "api"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"capture mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.out_dir = Path(out_dir)
        self.ops: list[dict] = []
        self.groups: dict[str, dict] = {}
        self.step_index = -1          # -1: outside any step (setup)
        self.steps_seen = 0
        self.step_times_ns: list[list] = []  # [start, end] of each step, ns since t0
        self._batch_group = -1
        self._coalesce_count = 0
        self._pending_events: list[tuple[dict, Any, Any]] = []
        self._lock = threading.Lock()
        self.t0_ns = time.perf_counter_ns()
        self.rank: int | None = None
        self.world_size = 0
        self.backend = ""

    # --- steps ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self) -> Iterator[int]:
        """Ops issued inside belong to the next training step (numbered from 0)."""
        self.begin_step()
        try:
            yield self.step_index
        finally:
            self.end_step()

    def begin_step(self) -> None:
        self.step_index = self.steps_seen
        self.steps_seen += 1
        self.step_times_ns.append([time.perf_counter_ns() - self.t0_ns, None])

    def end_step(self) -> None:
        self._resolve_events()
        if self.step_index >= 0:
            self.step_times_ns[self.step_index][1] = time.perf_counter_ns() - self.t0_ns
        self.step_index = -1

    def abandon_step(self) -> None:
        """Close the open step as incomplete: its ops become setup traffic (step -1, as ops outside
        any step are) and it is not counted. Zero-code mode calls this at exit: the step opened by
        the last optimizer step never reaches another, so it holds only what ran after training
        (a final loss report, a checkpoint barrier), not a training step."""
        self._resolve_events()
        if self.step_index >= 0:
            with self._lock:
                for rec in self.ops:
                    if rec["step"] == self.step_index:
                        rec["step"] = -1
            del self.step_times_ns[self.step_index:]
            self.steps_seen = self.step_index
        self.step_index = -1

    @contextlib.contextmanager
    def setup(self) -> Iterator[None]:
        """Ops issued inside are setup traffic even within a step (e.g. wrapping a model in DDP)."""
        saved, self.step_index = self.step_index, -1
        try:
            yield
        finally:
            self.step_index = saved

    # --- batched p2p ----------------------------------------------------------------------------

    def __enter__(self):
        if self.mode == "api":
            from dynamiccl.profiler.api_hooks import ApiHooks

            self._hooks = ApiHooks(self)
            self._hooks.install()
            return self
        # batch_isend_irecv is one ncclGroup on NCCL; gloo issues its ops one by one, so the
        # grouping is only visible at the Python call: wrap it while capturing.
        import torch.distributed.distributed_c10d as c10d

        original = c10d.batch_isend_irecv
        self._unpatch = (c10d, original, dist.batch_isend_irecv)

        def batch_isend_irecv(p2p_op_list):
            self._coalesce_count += 1
            self._batch_group = self._coalesce_count
            try:
                return original(p2p_op_list)
            finally:
                self._batch_group = -1

        c10d.batch_isend_irecv = dist.batch_isend_irecv = batch_isend_irecv
        return super().__enter__()

    def __exit__(self, *exc):
        if self.mode == "api":
            self._hooks.remove()
            return False
        module, original, public = self._unpatch
        module.batch_isend_irecv, dist.batch_isend_irecv = original, public
        return super().__exit__(*exc)

    # --- recording ------------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        namespace = func.namespace
        if namespace not in ("c10d", "_c10d_functional"):
            return func(*args, **kwargs)
        name = func._schema.name.split("::", 1)[1]
        if name == "wait_tensor" or (namespace == "c10d" and name not in _C10D):
            return func(*args, **kwargs)
        records = self._describe(namespace, name, args, kwargs)
        start_events = [self._cuda_event() for _ in records] if records and records[0]["cuda"] else []
        start = time.perf_counter_ns()
        out = func(*args, **kwargs)
        end = time.perf_counter_ns()
        for i, rec in enumerate(records):
            rec["start_ns"], rec["end_ns"] = start - self.t0_ns, end - self.t0_ns
            if start_events:
                self._pending_events.append((rec, start_events[i], self._cuda_event()))
            self.append(rec)
        return out

    def _cuda_event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def append(self, rec: dict) -> None:
        if self.rank is None and dist.is_initialized():  # kept for writing after the group is gone
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            self.backend = str(dist.get_backend())
        rec["step"] = self.step_index
        with self._lock:  # DDP hooks record from autograd's threads too
            rec["index"] = len(self.ops)
            self.ops.append(rec)

    def group_info(self, pg) -> dict:
        """{pg, desc, ranks} of a process group (remembered for the file's group table)."""
        name = pg.group_name
        if name not in self.groups:
            self.groups[name] = {"desc": getattr(pg, "group_desc", "") or "",
                                 "ranks": [int(r) for r in dist.get_process_group_ranks(pg)]}
        return {"pg": name, **self.groups[name]}

    def _describe(self, namespace: str, name: str, args, kwargs) -> list[dict]:
        """The op(s) one dispatcher call issues (coalesced calls issue one per tensor)."""
        backward = torch._C._current_autograd_node() is not None
        if namespace == "c10d":
            op, how = _C10D[name]
            pg = next((p for p in map(_unbox, args) if p is not None), None)
            if pg is None:
                return []
            group = self.group_info(pg)
            # Which argument holds the bytes: the first (buffers, outputs) or the second (inputs).
            source = args[1] if how in ("input", "input_lists", "coalesced_inputs", "input_list", "input_list_n") \
                else args[0]
            if how.startswith("coalesced"):
                pieces = [[t] for t in source]
            else:
                pieces = [[source]]
            async_op = bool(kwargs.get("async_op", next((a for a in args if isinstance(a, bool)), False)))
            peer = -1
            if op in nccl.P2P_OPS and name != "recv_any_source_":
                peer = group["ranks"][int(args[2])]
            elif op in nccl.ROOTED_OPS:
                # Root (group-local): broadcast_(tensors, pg, root, ...); reduce_, gather_,
                # scatter_(..., pg, [op,] root, ...).
                peer = group["ranks"][int(args[2] if op == "broadcast" else args[3])]
            records = []
            for piece in pieces:
                nbytes = _nbytes(piece)
                if how in ("input_list_n", "output_list_n"):  # gather/scatter: the full buffer is n shards
                    nbytes *= len(group["ranks"])
                records.append(self.record_bytes(op, group, nbytes, piece, peer, async_op, backward, name))
            if len(records) > 1:
                self._coalesce_count += 1
                for r in records:
                    r["nccl_group"] = self._coalesce_count
            return records
        # _c10d_functional: the group is named by string.
        op = _FUNCTIONAL.get(name)
        if op is None:
            return []
        group_name = kwargs.get("group_name", args[-1] if name != "batch_p2p_ops" else args[4])
        pg = dist.distributed_c10d._resolve_process_group(group_name)
        group = self.group_info(pg)
        if op == "batch_p2p":
            op_list, peers, _, tensors = args[0], args[1], args[2], args[3]
            self._coalesce_count += 1
            records = []
            for kind, peer, t in zip(op_list, peers, tensors):
                r = self.record_bytes("send" if "send" in kind else "recv", group, _nbytes([t]), [t],
                                 group["ranks"][int(peer)], True, backward, name)
                r["nccl_group"] = self._coalesce_count
                records.append(r)
            return records
        inputs = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        records = []
        for t in inputs:
            nbytes = _nbytes([t]) * (len(group["ranks"]) if op == "allgather" else 1)
            peer = -1
            if op in ("send", "recv"):
                peer = group["ranks"][int(args[1])]
            elif op == "broadcast":
                peer = group["ranks"][int(args[1])]
            records.append(self.record_bytes(op, group, nbytes, [t], peer, True, backward, name))
        if len(records) > 1:
            self._coalesce_count += 1
            for r in records:
                r["nccl_group"] = self._coalesce_count
        return records

    def record_bytes(self, op, group, nbytes, tensors, peer, async_op, backward, call) -> dict:
        first = tensors
        while not isinstance(first, torch.Tensor):
            first = first[0]
        return {"op": op, "call": call, "pg": group["pg"], "bytes_total": int(nbytes),
                "dtype": _dtype_name(tensors), "peer": int(peer), "async": bool(async_op or self._batch_group >= 0),
                "backward": bool(backward), "nccl_group": self._batch_group, "cuda": first.is_cuda}

    def record(self, op, group, tensors, peer, async_op, backward, call) -> dict:
        """A record for ``op`` moving ``tensors`` (their bytes are the nccl-tests size)."""
        return self.record_bytes(op, group, _nbytes(tensors), tensors, peer, async_op, backward, call)

    def group_records(self, records: list[dict]) -> None:
        """Mark records issued together (one coalesced call / batch) as one NCCL group."""
        self._coalesce_count += 1
        for r in records:
            r["nccl_group"] = self._coalesce_count

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self.t0_ns

    def _resolve_events(self) -> None:
        if not self._pending_events:
            return
        torch.cuda.synchronize()
        for rec, start, end in self._pending_events:
            rec["cuda_elapsed_us"] = float(start.elapsed_time(end)) * 1000.0
        self._pending_events.clear()

    # --- output ---------------------------------------------------------------------------------

    def write(self) -> Path | None:
        """Write ``rank<R>.json`` (atomically); returns its path, or None if nothing was recorded
        in a process group (e.g. torchrun's own agent process)."""
        self._resolve_events()
        if self.rank is None:
            return None
        rank = self.rank
        doc = {
            "format": "dynamiccl-capture", "version": FORMAT_VERSION, "rank": rank, "mode": self.mode,
            "world_size": self.world_size, "backend": self.backend,
            "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0),
            "hostname": os.uname().nodename, "torch": torch.__version__, "steps": self.steps_seen, "step_times_ns": self.step_times_ns,
            "groups": self.groups, "ops": self.ops,
        }
        path = self.out_dir / f"rank{rank}.json"
        atomic.write_text(path, json.dumps(doc))
        return path


@contextlib.contextmanager
def capture(out_dir: str | os.PathLike, mode: str = "api") -> Iterator[Capture]:
    """Record this rank's collectives while the block runs; writes ``<out_dir>/rank<R>.json``.

    Use ``with cap.step():`` around each training step; traffic outside steps is marked setup.
    ``mode="api"`` (default) wraps the ``torch.distributed`` API (:mod:`.api_hooks`: collectives
    only pay); ``mode="dispatch"`` is a TorchDispatchMode over every c10d op (sees calls the API
    wrappers cannot, costs a Python call per tensor op).
    """
    cap = Capture(out_dir, mode)
    with cap:
        yield cap
    cap.write()
