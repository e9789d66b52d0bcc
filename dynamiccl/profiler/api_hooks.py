"""Capture at the ``torch.distributed`` API: the low-overhead way (the default).

A ``TorchDispatchMode`` sees every c10d op but also puts a Python call in front of *every* tensor op
of the job: measured on the reference job, that made steps 11% slower on this CPU machine
(``experiments/profiler/``). Here only the collectives pay: while a capture is active, the public
functions of ``torch.distributed`` (``all_reduce``, ``all_gather_into_tensor``/``_single``,
``reduce_scatter_tensor``/``_single``, ``all_to_all_single``, ``broadcast``, ``reduce``, ``gather``,
``scatter``, ``send``/``recv``/``isend``/``irecv``, ``batch_isend_irecv``, ``barrier``, the list and
coalesced forms) and of ``torch.distributed._functional_collectives`` (DTensor, TP, compile) are
wrapped; FSDP2 calls them at run time, so it is seen. DDP reduces gradients from C++, so each
DDP model gets, at its first forward, a communication hook with the built-in one's exact maths
(divide by the group size, all-reduce the bucket) issued through the wrapped ``all_reduce``; a
hook the user registers is kept, and its own collectives are recorded. DDP's construction-time
parameter broadcast (``dist._broadcast_coalesced``) is wrapped too; its C++-internal metadata
exchanges (shape verification, the bucket rebuild after the first step) are not seen.

Only calls that go through the module attributes are seen (``dist.all_reduce(...)``, not a function
imported by name before the capture started); ``mode="dispatch"`` sees everything, at its cost.
A call made inside another recorded call (``all_gather_into_tensor`` calling ``all_gather_single``)
is recorded once.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.distributed.distributed_c10d as c10d

# function -> (trace op, how the full buffer is read from the bound arguments)
_API = {
    "all_reduce": ("allreduce", lambda a: [a["tensor"]]),
    "all_reduce_coalesced": ("allreduce", "coalesced:tensors"),
    "broadcast": ("broadcast", lambda a: [a["tensor"]]),
    "reduce": ("reduce", lambda a: [a["tensor"]]),
    "all_gather": ("allgather", lambda a: list(a["tensor_list"])),
    "all_gather_into_tensor": ("allgather", lambda a: [a["output_tensor"]]),
    "all_gather_single": ("allgather", lambda a: [a["output_tensor"]]),
    "all_gather_coalesced": ("allgather", "coalesced:output_tensor_lists"),
    "reduce_scatter": ("reducescatter", lambda a: list(a["input_list"])),
    "reduce_scatter_tensor": ("reducescatter", lambda a: [a["input"]]),
    "reduce_scatter_single": ("reducescatter", lambda a: [a["input"]]),
    "all_to_all_single": ("alltoall", lambda a: [a["input"]]),
    "all_to_all": ("alltoall", lambda a: list(a["input_tensor_list"])),
    "gather": ("gather", "n_x_tensor"),
    "scatter": ("scatter", "n_x_tensor"),
    "send": ("send", lambda a: [a["tensor"]]),
    "recv": ("recv", lambda a: [a["tensor"]]),
    "isend": ("send", lambda a: [a["tensor"]]),
    "irecv": ("recv", lambda a: [a["tensor"]]),
    "barrier": ("barrier", None),
}
_ROOT = {"broadcast": ("src", "group_src"), "reduce": ("dst", "group_dst"), "gather": ("dst", "group_dst"),
         "scatter": ("src", "group_src"), "send": ("dst", "group_dst"), "isend": ("dst", "group_dst"),
         "recv": ("src", "group_src"), "irecv": ("src", "group_src")}
_FUNCTIONAL = {"all_reduce": "allreduce", "all_gather_tensor": "allgather", "reduce_scatter_tensor": "reducescatter",
               "all_to_all_single": "alltoall", "broadcast": "broadcast", "all_reduce_coalesced": "allreduce",
               "all_gather_into_tensor_coalesced": "allgather", "reduce_scatter_tensor_coalesced": "reducescatter"}


class ApiHooks:
    """Installs and removes the wrappers for one :class:`~dynamiccl.profiler.capture.Capture`."""

    def __init__(self, cap):
        self.cap = cap
        self.local = threading.local()  # depth of recorded calls on this thread
        self.saved: list[tuple[object, str, object]] = []
        self._groups: dict = {}  # process group -> its info (looked up once)

    # --- install / remove -----------------------------------------------------------------------

    def install(self) -> None:
        for name in _API:
            original = getattr(c10d, name, None)
            if original is not None:
                wrapper = self._wrap_api(name, original)
                self._patch(c10d, name, wrapper)
                if getattr(dist, name, None) is original:
                    self._patch(dist, name, wrapper)
        self._patch(c10d, "batch_isend_irecv", self._wrap_batch(c10d.batch_isend_irecv))
        self._patch(dist, "batch_isend_irecv", c10d.batch_isend_irecv)
        for name in _FUNCTIONAL:
            original = getattr(funcol, name, None)
            if original is not None:
                self._patch(funcol, name, self._wrap_functional(name, original))
        self._patch(dist, "_broadcast_coalesced", self._wrap_broadcast_coalesced(dist._broadcast_coalesced))
        self._hook_ddp()

    def remove(self) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()

    def _patch(self, owner, name: str, value) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    # --- recording ------------------------------------------------------------------------------

    @property
    def _depth(self) -> int:
        return getattr(self.local, "depth", 0)

    def _call(self, records: list[dict], original, args, kwargs):
        local = self.local
        local.depth = getattr(local, "depth", 0) + 1
        start = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            end = time.perf_counter_ns()
            local.depth -= 1
            t0 = self.cap.t0_ns
            for rec in records:
                rec["start_ns"], rec["end_ns"] = start - t0, end - t0
                self.cap.append(rec)

    def _group(self, group):
        pg = group if group is not None else c10d._get_default_group()
        info = self._groups.get(pg)
        if info is None:
            info = self._groups[pg] = self.cap.group_info(pg)
        return info

    def _wrap_api(self, name: str, original):
        op, tensors_of = _API[name]
        names, defaults = _parameters(original)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if self._depth or not dist.is_initialized():
                return original(*args, **kwargs)
            a = {**defaults, **dict(zip(names, args)), **kwargs}  # inspect's bind costs ~30 µs a call
            group = self._group(a.get("group"))
            async_op = bool(a.get("async_op", False)) or name in ("isend", "irecv")
            peer = self._root(name, a, group)
            backward = torch._C._current_autograd_node() is not None
            if tensors_of is None:  # barrier: ProcessGroupNCCL all-reduces one element
                pieces = [[torch.empty(1, dtype=torch.uint8)]]
            elif tensors_of == "n_x_tensor":  # gather/scatter: n shards of this rank's tensor
                pieces = [[a["tensor"]] * len(group["ranks"])]
            elif isinstance(tensors_of, str):  # coalesced: one op per tensor, one NCCL group
                pieces = [[t] for t in a[tensors_of.split(":", 1)[1]]]
            else:
                pieces = [tensors_of(a)]
            records = [self.cap.record(op, group, piece, peer, async_op, backward, name) for piece in pieces]
            if len(records) > 1:
                self.cap.group_records(records)
            return self._call(records, original, args, kwargs)

        return wrapper

    @staticmethod
    def _root(name: str, a: dict, group: dict) -> int:
        if name not in _ROOT:
            return -1
        global_key, group_key = _ROOT[name]
        if a.get(global_key) is not None:
            return int(a[global_key])
        if a.get(group_key) is not None:
            return group["ranks"][int(a[group_key])]
        return -1  # recv from any source

    def _wrap_batch(self, original):
        @functools.wraps(original)
        def batch_isend_irecv(p2p_op_list):
            if self._depth or not dist.is_initialized():
                return original(p2p_op_list)
            backward = torch._C._current_autograd_node() is not None
            records = []
            for p in p2p_op_list:
                group = self._group(p.group)
                peer = p.peer if p.peer is not None else group["ranks"][p.group_peer]
                kind = "send" if p.op in (c10d.isend, dist.isend) or getattr(p.op, "__name__", "") == "isend" \
                    else "recv"
                records.append(self.cap.record(kind, group, [p.tensor], peer, True, backward, "batch_isend_irecv"))
            self.cap.group_records(records)
            return self._call(records, original, (p2p_op_list,), {})

        return batch_isend_irecv

    def _wrap_functional(self, name: str, original):
        op = _FUNCTIONAL[name]
        names, defaults = _parameters(original)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if self._depth or not dist.is_initialized():
                return original(*args, **kwargs)
            a = {**defaults, **dict(zip(names, args)), **kwargs}
            pg = c10d._resolve_process_group(funcol._resolve_group_name(a["group"], a.get("tag", "")))
            group = self.cap.group_info(pg)
            first = a[names[0]]
            tensors = list(first) if isinstance(first, (list, tuple)) else [first]
            n = len(group["ranks"])
            backward = torch._C._current_autograd_node() is not None
            peer = group["ranks"][int(a["src"])] if op == "broadcast" else -1
            records = [self.cap.record(op, group, [t] * (n if op == "allgather" else 1), peer, True, backward, name)
                       for t in tensors]
            if len(records) > 1:
                self.cap.group_records(records)
            return self._call(records, original, args, kwargs)

        return wrapper

    def _wrap_broadcast_coalesced(self, original):
        """DDP's construction-time parameter broadcast (C++, in buckets of ``buffer_size`` bytes)."""

        @functools.wraps(original)
        def broadcast_coalesced(process_group, tensors, buffer_size, src=0):
            if self._depth or not dist.is_initialized():
                return original(process_group, tensors, buffer_size, src)
            group = self.cap.group_info(process_group)
            backward = torch._C._current_autograd_node() is not None
            buckets, current, size = [], [], 0
            for t in tensors:  # the C++ side packs whole tensors into buckets of at most buffer_size
                if current and size + t.numel() * t.element_size() > buffer_size:
                    buckets.append(current)
                    current, size = [], 0
                current.append(t)
                size += t.numel() * t.element_size()
            if current:
                buckets.append(current)
            root = group["ranks"][int(src)]
            records = [self.cap.record("broadcast", group, bucket, root, False, backward, "_broadcast_coalesced")
                       for bucket in buckets]
            return self._call(records, original, (process_group, tensors, buffer_size, src), {})

        return broadcast_coalesced

    # --- DDP --------------------------------------------------------------------------------------

    def _hook_ddp(self) -> None:
        """Give each DDP model (at its first forward) a comm hook doing what the built-in C++
        reduction does, through the wrapped ``all_reduce``; keep hooks the user registers."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        original_forward, original_register = DDP.forward, DDP.register_comm_hook

        def register_comm_hook(model, state, hook):
            model._dynamiccl_hooked = True  # the user's hook: its collectives are recorded as issued
            return original_register(model, state, hook)

        def forward(model, *args, **kwargs):
            if not getattr(model, "_dynamiccl_hooked", False):
                model._dynamiccl_hooked = True
                original_register(model, model.process_group, _allreduce_hook)
            return original_forward(model, *args, **kwargs)

        self._patch(DDP, "register_comm_hook", register_comm_hook)
        self._patch(DDP, "forward", forward)


def _parameters(function) -> tuple[list[str], dict]:
    """Parameter names in order, and the defaults, of a Python function."""
    params = inspect.signature(function).parameters.values()
    return [p.name for p in params], {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _allreduce_hook(process_group, bucket):
    """DDP's default reduction (``default_hooks.allreduce_hook``): average the bucket over the group."""
    buffer = bucket.buffer()
    buffer.div_(process_group.size())
    work = dist.all_reduce(buffer, group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
