"""Merge the per-rank files of a live capture (``rank<R>.json``) into one trace.

- Process groups are the union of what each rank saw (a rank only knows the groups it belongs to),
  keyed by PyTorch's group uid; their kind (dp, tp, pp, ...) comes from the group description
  (Megatron-LM's names from ``megatron/core/parallel_state.py``, or short ones like ``tp``/``DP``),
  the default group is ``world``.
- Step 0 holds the setup traffic (ops outside ``cap.step()``: DDP construction broadcasts,
  barriers, and in zero-code mode what ran after the last optimizer step), phase ``setup``;
  training steps are 1..K, each complete. Inside a step an op is ``backward`` when it
  ran inside autograd's backward, ``step`` after the step's last backward op, else ``forward``.
- The time between one op's end and the next op's start on a rank (and from a step's start to its
  first op, from its last op to its end) becomes a compute segment with that measured duration. A compute
  segment after a blocking op depends on it (in step 0, a gap with training steps inside is no
  compute of step 0 and is left out); asynchronous ops (DDP buckets, async_op=True,
  functional collectives) are waited for by the step's last op, as the optimizer waits for them.
- Barriers become 1-element all-reduces (what ProcessGroupNCCL issues for ``barrier``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dynamiccl import schema
from dynamiccl.errors import InputError
from dynamiccl.profiler.importers._common import group_kind
from dynamiccl.trace.builder import TraceBuilder
from dynamiccl.trace.store import Trace

MIN_GAP_US = 1.0  # shorter host gaps are bookkeeping, not compute


# A capture file (``rank<R>.json``, written by ``dynamiccl.profiler.capture``), declared once. Its
# ``ops`` are bulk records (one per collective): each is checked for the keys the merge reads.
CAPTURE = schema.Schema(
    schema.choice("format", ("dynamiccl-capture",), expect="'dynamiccl-capture' (a dynamiccl capture file)"),
    schema.integer("version", 1, low=1),
    schema.integer("rank", low=0),
    schema.string("mode", ""),
    schema.integer("world_size", low=1),
    schema.string("backend", ""),
    schema.integer("local_world_size", 0, low=0),
    schema.string("hostname", ""),
    schema.string("torch", ""),
    schema.integer("steps", 0, low=0),
    schema.json_list("step_times_ns", []),
    schema.json_value("groups", help="process group name -> {desc, ranks}"),
    schema.json_list("ops"),
)
OP_KEYS = ("op", "pg", "bytes_total", "dtype", "peer", "start_ns", "end_ns", "step", "async", "backward")


def _load(path: Path) -> dict:
    source = str(path)
    try:
        data = schema.parse_json(schema.read_text(path, "capture file"), source)
    except InputError as err:  # a capture's errors name the file only; the place goes in the message
        raise InputError(source, None, f"{err.problem}" + (f" (at {err.field})" if err.field else "")) from None
    doc = CAPTURE.parse(data, source)
    for i, op in enumerate(doc["ops"]):
        for key in OP_KEYS:
            if not isinstance(op, dict) or key not in op:
                raise InputError(source, f"ops[{i}].{key}", "missing")
        if op["pg"] not in doc["groups"]:
            raise InputError(source, f"ops[{i}].pg", f"group {op['pg']!r} is not in 'groups'")
    return doc


def merge_capture(capture_dir: str | os.PathLike, *, gpus_per_node: int = 0, description: str = "") -> Trace:
    """One trace from every ``rank<R>.json`` in ``capture_dir``.

    Raises:
        InputError: no capture files, a missing rank, or a malformed file (naming file and field).
    """
    directory = Path(capture_dir)
    paths = sorted(directory.glob("rank*.json"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not paths:
        raise InputError(str(directory), None, "no capture files (rank<R>.json); did the job run with capture on?")
    docs = [_load(p) for p in paths]
    world = docs[0]["world_size"]
    missing = sorted(set(range(world)) - {d["rank"] for d in docs})
    if missing:
        raise InputError(str(directory), None, f"capture files missing for rank(s) {missing} of {world}")
    gpn = gpus_per_node or docs[0].get("local_world_size") or world
    builder = TraceBuilder(source="profiler", world_size=world, gpus_per_node=gpn,
                           description=description or f"captured from {docs[0].get('backend', '?')} "
                                                      f"(torch {docs[0].get('torch', '?')})")
    groups = {}
    for doc in docs:
        for name, g in doc["groups"].items():
            if name not in groups:
                kind = group_kind(g["desc"], len(g["ranks"]), world)
                groups[name] = builder.add_group(f"pg{name}", kind, g["ranks"], desc=g["desc"] or f"pg {name}")
    for doc in sorted(docs, key=lambda d: d["rank"]):
        _rank_ops(builder, doc, groups)
    return builder.build(workload={"captured_steps": max(d.get("steps", 0) for d in docs)})


def write_merged_trace(capture_dir: str | os.PathLike, *, gpus_per_node: int = 0,
                       description: str = "") -> tuple[Path, Trace]:
    """Merge ``capture_dir`` (:func:`merge_capture`) into ``trace.parquet`` beside it, where
    ``dynamiccl profile -o DIR`` and ``dynamiccl launch --profile DIR`` leave it (``DIR/capture``
    -> ``DIR/trace.parquet``); returns that path and the trace.

    Raises:
        InputError: as :func:`merge_capture`, or a merged trace that fails validation.
        OSError: the trace cannot be written.
    """
    out = Path(capture_dir).parent / "trace.parquet"
    trace = merge_capture(capture_dir, gpus_per_node=gpus_per_node, description=description)
    trace.write(out)
    return out, trace


def training_steps(trace: Trace) -> int:
    """The complete training steps of a merged capture (step 0 is setup, steps 1..N end at
    optimizer steps): the capture files' count (a last step without collectives counts too), at
    least the highest step in the trace (capture files may leave the count out)."""
    return max(int(trace.meta.workload.get("captured_steps", 0)), int(trace.ops["step"].max()))


def _step_boundary_between(times: list, lo_us: float, hi_us: float) -> bool:
    """Whether a training step starts or ends between ``lo_us`` and ``hi_us`` (``times``: the
    capture's ``step_times_ns``)."""
    return any(t is not None and lo_us < t / 1000.0 < hi_us for bounds in times for t in bounds)


def _rank_ops(builder: TraceBuilder, doc: dict, groups: dict) -> None:
    by_step: dict[int, list[dict]] = {}
    for op in doc["ops"]:
        by_step.setdefault(int(op["step"]) + 1, []).append(op)  # setup (-1) -> step 0
    for step in sorted(by_step):
        ops = sorted(by_step[step], key=lambda o: (o["start_ns"], o.get("index", 0)))
        last_backward = max((i for i, o in enumerate(ops) if o["backward"]), default=-1)
        rec = builder.rank(doc["rank"], step=step)
        times = doc.get("step_times_ns") or []
        bounds = times[step - 1] if 1 <= step <= len(times) else [None, None]
        # The step's compute before its first op starts at the step's start (steps 1..K only).
        prev_end = bounds[0] / 1000.0 if bounds[0] is not None else None
        last_blocking = None
        pending_async: list[int] = []
        open_group, group_ctx = -1, None
        for i, op in enumerate(ops):
            start_us, end_us = op["start_ns"] / 1000.0, op["end_ns"] / 1000.0
            if step == 0 or op["op"] == "barrier":
                phase = "setup"
            elif op["backward"]:
                phase = "backward"
            else:
                phase = "step" if last_backward >= 0 and i > last_backward else "forward"
            coalesced = op.get("nccl_group", -1)
            same_group = coalesced not in (-1, None) and coalesced == open_group
            if prev_end is not None and start_us - prev_end >= MIN_GAP_US and not same_group \
                    and not (step == 0 and _step_boundary_between(times, prev_end, start_us)):
                if group_ctx is not None:
                    group_ctx.__exit__(None, None, None)
                    group_ctx, open_group = None, -1
                last_blocking = rec.compute("host", phase=phase, duration_us=start_us - prev_end,
                                            deps=[last_blocking], start_us=prev_end, end_us=start_us)
            if coalesced != open_group:
                if group_ctx is not None:
                    group_ctx.__exit__(None, None, None)
                    group_ctx = None
                open_group = coalesced
                if coalesced not in (-1, None):
                    group_ctx = rec.nccl_group()
                    group_ctx.__enter__()
            group = groups[op["pg"]]
            measured = {"start_us": start_us, "end_us": end_us}
            label = op.get("call", op["op"])
            deps = [last_blocking]
            is_last = i == len(ops) - 1
            if is_last:
                deps += pending_async
            name = op["op"]
            if name == "barrier":
                index = rec.collective("allreduce", group, max(1, int(op["bytes_total"])), op["dtype"] or "uint8",
                                       phase=phase, label="barrier", deps=deps, **measured)
            elif name in ("send", "recv"):
                method = rec.send if name == "send" else rec.recv
                index = method(int(op["peer"]), group, int(op["bytes_total"]), op["dtype"], phase=phase,
                               label=label, deps=deps, **measured)
            else:
                index = rec.collective(name, group, int(op["bytes_total"]), op["dtype"], phase=phase, label=label,
                                       deps=deps, root=int(op["peer"]), **measured)
            if op["async"]:
                pending_async.append(index)
            else:
                last_blocking = index
            prev_end = end_us if prev_end is None else max(prev_end, end_us)
        if group_ctx is not None:
            group_ctx.__exit__(None, None, None)
        if bounds[1] is not None and prev_end is not None and bounds[1] / 1000.0 - prev_end >= MIN_GAP_US:
            # Compute after the last op (the optimizer, in zero-code mode) waits for async traffic.
            end_us = bounds[1] / 1000.0
            rec.compute("host", phase="step", duration_us=end_us - prev_end, deps=[last_blocking, *pending_async],
                        start_us=prev_end, end_us=end_us)
