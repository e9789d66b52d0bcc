"""Live cost model: time real collectives with torch.distributed on the machine it runs on.

For each query (collective, size, dtype, optional NCCL algorithm / protocol / channels) a set of
worker processes runs the collective ``warmup`` times untimed, then ``iters`` times timed, and
reports the median, like NVIDIA's nccl-tests:

- Backend: NCCL on GPUs when there are at least ``nprocs`` of them, else gloo on CPU. On gloo the
  NCCL knobs do not apply: the query is still measured, and its result says so
  (``config_applied=False``).
- NCCL reads NCCL_ALGO / NCCL_PROTO / NCCL_MIN_NCHANNELS / NCCL_MAX_NCHANNELS when a communicator
  is created (and caches some per process), so every distinct (algo, proto, channels) gets a fresh
  set of processes with those variables set; ``None`` removes the variable (NCCL's own choice).
- Timing: before each timed iteration all ranks meet at a barrier (on GPU: after a device
  synchronize, on a side gloo group so NCCL_ALGO applies to nothing but the measured collective).
  Each rank times the op (CUDA events on GPU, ``time.perf_counter`` on CPU); an iteration's time
  is the maximum over ranks (nccl-tests reports the slowest rank) and ``time_us`` is the median of
  those. Ranks leave the barrier a little apart and that skew is part of the time (µs on GPUs;
  up to ms on a CPU with more ranks than cores).
- Sizes follow nccl-tests: ``size_bytes`` is the whole buffer for allgather / reducescatter /
  alltoall (nranks × per-rank count), the count's bytes for allreduce / broadcast / reduce, and the
  bytes each rank sends for sendrecv. sendrecv is nccl-tests' ring: rank r sends to (r+1) % n and
  receives from (r-1) % n in one ``batch_isend_irecv``. Roots are rank 0; reductions are sums.
- algbw = size_bytes / time (1 GB = 1e9 B); busbw = algbw × ``nccl.busbw_factor`` (sendrecv 1).

Workers are ``python -m dynamiccl.costmodel.live --worker SPEC OUT`` processes with torchrun's
variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK). Queries go in as JSON, rank 0
writes results as JSON (atomically); nothing is pickled. A worker that fails or runs past the
timeout takes its whole set down and raises ``LiveMeasurementError`` with its output's tail.
The set runs in a process group of its own, killed whole when it fails or times out and when this
process is interrupted (Ctrl-C, or SIGTERM, which raises while a ``dynamiccl`` command runs:
``dynamiccl.outputs``); its temporary directory goes with it.
Each result's ``note`` names the torch call that ran (e.g. ``reduce_scatter_single``, or the list
form ``reduce_scatter (list)`` where a backend lacks the single-tensor call; torch 2.13's gloo has
all of all_gather_single, reduce_scatter_single and all_to_all_single).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from dynamiccl import atomic
from dynamiccl.costmodel.batch import CollBatch
from dynamiccl.costmodel.protocol import CostModelOptions, CostResult
from dynamiccl.errors import DynamicclError, InputError
from dynamiccl.nccl import (MAX_CHANNELS, OP_FUNC, SHARDED_OPS, Algorithm, DataType, Func, Protocol,
                            busbw_factor, is_supported, nccl_tests_op, parse_algorithm, parse_dtype,
                            parse_protocol)

if TYPE_CHECKING:
    from dynamiccl.envspec import EnvSpec

LIVE_OPS = ("allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall", "sendrecv")
P2P_OPS = frozenset({"alltoall", "sendrecv"})  # NCCL runs these as send/recv: no knobs to set
NCCL_CONFIG_ENV = ("NCCL_ALGO", "NCCL_PROTO", "NCCL_MIN_NCHANNELS", "NCCL_MAX_NCHANNELS")
# torch has no distributed support for unsigned 32/64-bit tensors; gloo has none for fp8.
TORCH_DTYPES = {DataType.INT8: "int8", DataType.UINT8: "uint8", DataType.INT32: "int32",
                DataType.INT64: "int64", DataType.FP16: "float16", DataType.FP32: "float32",
                DataType.FP64: "float64", DataType.BF16: "bfloat16",
                DataType.FP8E4M3: "float8_e4m3fn", DataType.FP8E5M2: "float8_e5m2"}
FP8 = frozenset({DataType.FP8E4M3, DataType.FP8E5M2})
SOURCE = "live queries"


class LiveMeasurementError(DynamicclError):
    """A worker process failed or ran past the timeout; the message carries its output's tail."""


@dataclass(frozen=True)
class LiveQuery:
    """One measurement request; ``size_bytes`` follows nccl-tests (see the module docstring)."""

    coll: str  # one of LIVE_OPS
    size_bytes: int
    dtype: str = "float32"
    algo: Algorithm | None = None  # None: NCCL's choice
    proto: Protocol | None = None
    channels: int | None = None  # NCCL_MIN_NCHANNELS = NCCL_MAX_NCHANNELS = channels


@dataclass(frozen=True)
class LiveResult:
    """A measured query. Times in µs (per op, max over ranks), bandwidths in GB/s (1e9 B/s)."""

    query: LiveQuery
    nranks: int
    backend: str  # "gloo" or "nccl"
    time_us: float  # median of times_us
    times_us: tuple[float, ...]  # per timed iteration: the slowest rank's time
    algbw_gbytes_per_s: float  # size_bytes / time_us
    busbw_gbytes_per_s: float  # algbw_gbytes_per_s * busbw_factor(coll, nranks)
    config_applied: bool  # False on gloo: NCCL's algo/proto/channels do not apply there
    note: str


class LiveCostModel:
    """Measures collectives live with ``nprocs`` worker processes (see the module docstring); a
    :class:`~dynamiccl.costmodel.protocol.CostModel` through :meth:`evaluate`.

    Args:
        nprocs: ranks (processes; one GPU each on NCCL).
        backend: "auto" (NCCL if CUDA has >= nprocs devices, else gloo on CPU), "nccl" or "gloo".
        warmup: untimed iterations per query; iters: timed iterations per query.
        timeout_s: wall-clock limit, in seconds, for each set of worker processes (one set per
            distinct NCCL configuration; one set in all on gloo).
        dtype: element type of the buffers :meth:`evaluate` measures with.

    Raises:
        InputError: for a bad argument, or backend="nccl" without ``nprocs`` CUDA devices.
    """

    # Conditions are whatever this machine has while it measures; none can be set.
    models_conditions = False
    costs_p2p = True
    prices_chunk = False  # the live workers do not set a per-call chunk size
    prices_communicator_config = False  # its communicators are created with NCCL's defaults

    def __init__(self, nprocs: int = 4, backend: str = "auto", warmup: int = 5, iters: int = 20,
                 timeout_s: float = 300.0, dtype: str = "float32"):
        for field, value, low in (("nprocs", nprocs, 1), ("warmup", warmup, 0), ("iters", iters, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError("LiveCostModel", field, f"must be an integer >= {low}, got {value!r}")
        if not timeout_s > 0:
            raise InputError("LiveCostModel", "timeout_s", f"must be > 0 seconds, got {timeout_s!r}")
        if backend not in ("auto", "nccl", "gloo"):
            raise InputError("LiveCostModel", "backend", f"expected auto, nccl or gloo, got {backend!r}")
        import torch  # here, not at module level: importing torch costs about a second

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if backend == "nccl" and gpus < nprocs:
            raise InputError("LiveCostModel", "backend",
                             f"nccl needs {nprocs} CUDA devices (one per rank), found {gpus}")
        if backend == "auto":
            backend = "nccl" if gpus >= nprocs else "gloo"
        self.nprocs, self.backend, self.warmup, self.iters = nprocs, backend, warmup, iters
        self.timeout_s = float(timeout_s)
        self.dtype = parse_dtype(dtype, "LiveCostModel", "dtype").name_lower

    @classmethod
    def from_options(cls, env: EnvSpec, options: CostModelOptions) -> "LiveCostModel":
        """The registry's factory: ``options.live_nprocs`` ranks measuring ``options.live_dtype``
        buffers on this machine (``env`` is not used: the machine is what it is)."""
        return cls(nprocs=options.live_nprocs, dtype=options.live_dtype)

    @property
    def applies_nccl_knobs(self) -> bool:
        """Only NCCL reads NCCL_ALGO / NCCL_PROTO / the channel variables; gloo ignores them."""
        return self.backend == "nccl"

    def describe(self) -> str:
        return (f"live measurement (torch.distributed): {self.nprocs} {self.backend} processes on this "
                "machine")

    def evaluate(self, batch: CollBatch) -> CostResult:
        """Measure every row (:meth:`measure`, with progress on stderr). Each row runs on this
        machine's ``nprocs`` ranks whatever its ``nranks``/``nnodes``; its conditions are ignored.
        ``algo``/``proto``/``channels`` come back as the row forced them (-1/0: NCCL's own choice,
        which a measurement does not see).

        Raises:
            InputError: a row ``measure`` refuses (e.g. 0 bytes, or a size that is not a whole
                number of elements per rank).
            LiveMeasurementError: a worker failed or timed out.
        """
        queries = [LiveQuery(coll=nccl_tests_op(Func(func)), size_bytes=int(size), dtype=self.dtype,
                             algo=Algorithm(algo) if algo >= 0 else None,
                             proto=Protocol(proto) if proto >= 0 else None,
                             channels=int(channels) if channels > 0 else None)
                   for func, size, algo, proto, channels in zip(batch.func.tolist(), batch.size_bytes.tolist(),
                                                                batch.algo.tolist(), batch.proto.tolist(),
                                                                batch.channels.tolist())]
        results = self.measure(queries, progress=True)
        notes = tuple(dict.fromkeys(r.note for r in results))  # distinct, in order
        return CostResult(algo=batch.algo.copy(), proto=batch.proto.copy(), channels=batch.channels.copy(),
                          time_us=np.array([r.time_us for r in results], dtype=np.float64),
                          latency_us=np.zeros(len(batch)), compute_slowdown=np.ones(len(batch)),
                          size_bytes=batch.size_bytes, nranks=np.full(len(batch), self.nprocs, dtype=np.int64), notes=notes)

    def measure(self, queries: Sequence[LiveQuery], progress: bool = False) -> list[LiveResult]:
        """Measure every query; results come back in query order.

        Raises:
            InputError: a bad query, naming ``queries[i].<field>`` (all are checked before any run).
            LiveMeasurementError: a worker failed or timed out (with the tail of its output).
        """
        checked = [self._check(i, q) for i, q in enumerate(queries)]
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(checked):
            # gloo ignores the NCCL knobs, so one set of processes measures everything there.
            key = (c["algo"], c["proto"], c["channels"]) if self.backend == "nccl" else ()
            groups.setdefault(key, []).append(i)
        results: list[LiveResult | None] = [None] * len(checked)
        for key, indices in groups.items():
            env = _nccl_env(*key) if key else {}
            label = " ".join(f"{k}={v}" for k, v in env.items()) or "NCCL's own choice"
            if progress:
                print(f"live: {len(indices)} queries on {self.nprocs} {self.backend} ranks"
                      + (f" ({label})" if self.backend == "nccl" else ""), file=sys.stderr, flush=True)
            spec = {"backend": self.backend, "warmup": self.warmup, "iters": self.iters,
                    "timeout_s": self.timeout_s, "queries": [checked[i] for i in indices]}
            out = self._run_workers(spec, env)
            for record in out["records"]:
                i = record["index"]
                note = f"{record['variant']}; "
                if self.backend == "gloo":
                    note += "gloo on CPU: NCCL algo/proto/channels not applied"
                else:
                    note += f"NCCL {out['nccl_version']} on {self.nprocs} GPUs, {label}"
                results[i] = _result(queries[i], self.nprocs, self.backend, record["times_us"],
                                     self.backend == "nccl", note)
        return results  # type: ignore[return-value]  # every index belongs to exactly one group

    def _check(self, i: int, q: LiveQuery) -> dict:
        """Validate query ``i``; return its JSON form for the workers. Raises InputError."""
        def bad(field: str, problem: str) -> InputError:
            return InputError(SOURCE, f"queries[{i}].{field}", problem)

        if q.coll not in LIVE_OPS:
            raise bad("coll", f"unknown collective {q.coll!r}; expected one of {', '.join(LIVE_OPS)}")
        if not isinstance(q.size_bytes, int) or isinstance(q.size_bytes, bool) or q.size_bytes < 1:
            raise bad("size_bytes", f"must be a positive integer, got {q.size_bytes!r}")
        dtype = parse_dtype(q.dtype, SOURCE, f"queries[{i}].dtype")
        if dtype not in TORCH_DTYPES or (dtype in FP8 and self.backend == "gloo"):
            raise bad("dtype", f"{dtype.name_lower} has no {self.backend} collectives in "
                               "torch.distributed")
        if q.size_bytes % dtype.size_bytes:
            raise bad("size_bytes", f"{q.size_bytes} is not a whole number of {dtype.name_lower} "
                                    f"elements ({dtype.size_bytes} B each)")
        unit = self.nprocs * dtype.size_bytes
        if q.coll in SHARDED_OPS and q.size_bytes % unit:
            raise bad("size_bytes", f"{q.coll} takes the whole buffer (nranks x per-rank bytes, as "
                                    f"in nccl-tests): {q.size_bytes} is not a multiple of "
                                    f"{self.nprocs} ranks x {dtype.size_bytes} B = {unit} B")
        if q.coll == "sendrecv" and self.nprocs < 2:
            raise bad("coll", f"sendrecv needs at least 2 ranks, the model has nprocs={self.nprocs}")
        algo = q.algo if q.algo is None else parse_algorithm(
            q.algo.name if isinstance(q.algo, Algorithm) else q.algo, SOURCE, f"queries[{i}].algo")
        proto = q.proto if q.proto is None else parse_protocol(
            q.proto.name if isinstance(q.proto, Protocol) else q.proto, SOURCE, f"queries[{i}].proto")
        knobs = [f for f, v in (("algo", algo), ("proto", proto), ("channels", q.channels))
                 if v is not None]
        if q.coll in P2P_OPS and knobs:
            # NCCL_ALGO/PROTO/N*CHANNELS do not steer send/recv (P2P has its own channel settings)
            # and NCCL's tuner is never asked about it.
            raise bad(knobs[0], f"NCCL runs {q.coll} as point-to-point sends: no algorithm, "
                                "protocol or channel count to choose")
        if algo is not None or proto is not None:
            func = OP_FUNC[q.coll]
            pairs = [(a, p) for a in ([algo] if algo is not None else Algorithm)
                     for p in ([proto] if proto is not None else Protocol)]
            if not any(is_supported(func, a, p) for a, p in pairs):
                what = "/".join(x.name_lower for x in (algo, proto) if x is not None)
                raise bad("algo" if algo is not None else "proto",
                          f"NCCL cannot run {q.coll} with {what}")
        if q.channels is not None and (not isinstance(q.channels, int) or isinstance(q.channels, bool)
                                       or not 1 <= q.channels <= MAX_CHANNELS):
            raise bad("channels", f"must be an integer in 1..{MAX_CHANNELS} or None, got {q.channels!r}")
        return {"index": i, "coll": q.coll, "size_bytes": q.size_bytes,
                "torch_dtype": TORCH_DTYPES[dtype], "dtype_size": dtype.size_bytes,
                "algo": None if algo is None else algo.nccl_name,  # NCCL_ALGO / NCCL_PROTO's spelling
                "proto": None if proto is None else proto.nccl_name, "channels": q.channels}

    def _run_workers(self, spec: dict, nccl_env: dict[str, str]) -> dict:
        """Start one set of workers, wait for all of them, return rank 0's JSON."""
        with tempfile.TemporaryDirectory(prefix="dynamiccl-live-") as tmp:
            spec_path, out_path = Path(tmp, "queries.json"), Path(tmp, "results.json")
            atomic.write_text(spec_path, json.dumps(spec))
            # Drop inherited NCCL knobs (None means NCCL's choice) and torchrun's agent-store
            # variables (under torchrun they would send our workers to the agent's store).
            base = {k: v for k, v in os.environ.items()
                    if k not in NCCL_CONFIG_ENV and not k.startswith("TORCHELASTIC_")}
            root = str(Path(__file__).resolve().parents[2])  # workers import this very dynamiccl
            base.update(nccl_env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                        WORLD_SIZE=str(self.nprocs), LOCAL_WORLD_SIZE=str(self.nprocs),
                        PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            procs, logs = [], [Path(tmp, f"rank{r}.log") for r in range(self.nprocs)]
            try:
                for rank, log in enumerate(logs):
                    with open(log, "wb") as handle:  # a file, not a pipe: a full pipe blocks a worker
                        procs.append(subprocess.Popen(
                            [sys.executable, "-m", "dynamiccl.costmodel.live", "--worker",
                             str(spec_path), str(out_path)],
                            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                            # one process group for the set, apart from ours: a terminal's Ctrl-C
                            # reaches only this process, which then stops the whole group
                            process_group=procs[0].pid if procs else 0))
                deadline = time.monotonic() + self.timeout_s
                while True:
                    codes = [p.poll() for p in procs]
                    failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
                    if failed:
                        _stop(procs)
                        r, tail = failed[0], output_tail(logs[failed[0]])
                        raise LiveMeasurementError(
                            f"live measurement worker rank {r} of {self.nprocs} ({self.backend}) "
                            f"exited with status {codes[r]}: {cause_line(tail)}\n"
                            f"its output ends with:\n{tail}")
                    if all(c == 0 for c in codes):
                        break
                    if time.monotonic() > deadline:
                        _stop(procs)
                        raise LiveMeasurementError(
                            f"live measurement ({self.nprocs} {self.backend} ranks) ran past "
                            f"timeout_s={self.timeout_s:g}; rank 0's output ends with:\n"
                            f"{output_tail(logs[0])}")
                    time.sleep(0.05)
            finally:
                _stop(procs)
            if not out_path.exists():
                raise LiveMeasurementError(f"live measurement workers exited without writing results; "
                                           f"rank 0's output ends with:\n{output_tail(logs[0])}")
            return json.loads(out_path.read_text(encoding="utf-8"))


def _result(query: LiveQuery, nranks: int, backend: str, times_us: list[float], applied: bool,
            note: str) -> LiveResult:
    time_us = statistics.median(times_us)
    algbw = query.size_bytes / time_us / 1e3 if time_us > 0 else float("inf")  # B/µs -> GB/s
    return LiveResult(query, nranks, backend, time_us, tuple(times_us), algbw,
                      algbw * busbw_factor(query.coll, nranks), applied, note)


def _nccl_env(algo: str | None, proto: str | None, channels: int | None) -> dict[str, str]:
    env = {"NCCL_ALGO": algo, "NCCL_PROTO": proto}
    if channels is not None:
        env["NCCL_MIN_NCHANNELS"] = env["NCCL_MAX_NCHANNELS"] = str(channels)
    return {k: v for k, v in env.items() if v is not None}


def _free_port() -> int:
    # The OS picks a free port; another process could take it before rank 0 binds (rare).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    """Kill the workers' process group (with whatever they started) and reap them."""
    if any(p.poll() is None for p in procs):  # a live member keeps the group id ours (no reuse)
        try:
            os.killpg(procs[0].pid, signal.SIGKILL)  # the group id is the first worker's pid
        except ProcessLookupError:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def output_tail(path: Path, max_lines: int = 25, max_chars: int = 4000) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(lines[-max_lines:])[-max_chars:] or "(no output)"


def cause_line(tail: str) -> str:
    """The line of a dead worker's output that says why it died.

    A Python exception's own line (``RuntimeError: ...``) wins over what the C++ runtime prints
    while the process tears down afterwards (``terminate called without an active exception``,
    which gloo's threads can add after the traceback), so the summary names the cause.
    """
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.search(line):
            return line
    return lines[-1] if lines else "(no output)"


_EXCEPTION_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


def format_results(results: Sequence[LiveResult]) -> str:
    """The nccl-tests-style table of :mod:`dynamiccl.costmodel.table`, one row per result."""
    from dynamiccl.costmodel.table import format_table, make_row

    rows = []
    for r in results:
        q, dtype = r.query, parse_dtype(r.query.dtype)
        rows.append(make_row(q.coll, r.nranks, q.size_bytes, dtype.name_lower, dtype.size_bytes, r.time_us,
                             -1 if q.algo is None else int(q.algo), -1 if q.proto is None else int(q.proto),
                             q.channels or 0))
    header = [f"live measurement, {results[0].nranks} {results[0].backend} ranks" if results else "live measurement"]
    header += sorted({r.note for r in results})
    return format_table(rows, header)


# --- worker side ----------------------------------------------------------------------------------

def make_op(q: dict, device, group=None):
    """Zero-argument callables that run query ``q`` once on ``group`` (None: the default group;
    preferred call first, then its fallback, all on buffers allocated here) and the names of the
    torch calls they make. ``q`` holds ``coll``, ``size_bytes`` (nccl-tests' size),
    ``torch_dtype`` and ``dtype_size`` (:meth:`LiveCostModel._check` and
    ``dynamiccl.measure.plan`` write them)."""
    import torch
    import torch.distributed as dist

    rank, n = dist.get_rank(group), dist.get_world_size(group)
    count = q["size_bytes"] // q["dtype_size"]
    # Zeros stay zeros under summation: no overflow or denormals to slow the CPU path.
    zeros = lambda k: torch.zeros(k, dtype=getattr(torch, q["torch_dtype"]), device=device)  # noqa: E731
    coll = q["coll"]
    root = 0 if group is None else dist.get_global_rank(group, 0)  # roots are the group's rank 0
    if coll == "allreduce":
        buf = zeros(count)
        return [lambda: dist.all_reduce(buf, group=group)], ["all_reduce"]
    if coll == "broadcast":
        buf = zeros(count)
        return [lambda: dist.broadcast(buf, src=root, group=group)], ["broadcast"]
    if coll == "reduce":
        buf = zeros(count)
        return [lambda: dist.reduce(buf, dst=root, group=group)], ["reduce"]
    if coll == "sendrecv":
        send, recv = zeros(count), zeros(count)
        peer = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))

        def sendrecv():
            ops = [dist.P2POp(dist.isend, send, peer((rank + 1) % n), group=group),
                   dist.P2POp(dist.irecv, recv, peer((rank - 1) % n), group=group)]
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        return [sendrecv], ["batch_isend_irecv ring"]
    # Sharded ops: the single-tensor call first, the list call as the fallback on backends
    # (old gloo) that lack it. torch 2.13 renames *_into_tensor / *_tensor to *_single.
    full, shard = zeros(count), zeros(count // n)
    if coll == "allgather":
        fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return ([lambda: fn(full, shard, group=group), lambda: dist.all_gather(list(full.chunk(n)), shard, group=group)],
                [fn.__name__, "all_gather (list)"])
    if coll == "reducescatter":
        fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return ([lambda: fn(shard, full, group=group),
                 lambda: dist.reduce_scatter(shard, list(full.chunk(n)), group=group)],
                [fn.__name__, "reduce_scatter (list)"])
    out = zeros(count)  # alltoall
    return ([lambda: dist.all_to_all_single(out, full, group=group),
             lambda: dist.all_to_all(list(out.chunk(n)), list(full.chunk(n)), group=group)],
            ["all_to_all_single", "all_to_all (list)"])


def first_working(variants, sync_group) -> int:
    """Run ``variants[0]`` once (a warm-up call) and return 0; if the backend refuses it, return 1
    (the fallback). Unsupported calls fail on every rank alike, before any communication.

    Raises:
        RuntimeError (or what the call raised): the only variant failed.
    """
    import torch.distributed as dist

    try:
        variants[0]()
    except (RuntimeError, NotImplementedError, ValueError):
        if len(variants) == 1:
            raise
        dist.barrier(group=sync_group)
        return 1
    return 0


def time_op(run, iters: int, device, sync_group, beside=None) -> list[float]:
    """Time ``run`` ``iters`` times as nccl-tests does; the one timing loop of live measurement
    (``LiveCostModel`` and ``dynamiccl measure``).

    Before each iteration every rank of ``sync_group`` (a gloo group over exactly the ranks that
    run the op; None: the default group) meets at a barrier, after a device synchronize on GPU. Each
    rank times the op: CUDA events around it on the current stream on GPU, ``time.perf_counter`` on
    CPU. ``beside`` (optional) is started just before each timed call and told when it has ended
    (``start()`` / ``stop()``: the GEMM-beside mode of ``dynamiccl measure``).

    Returns:
        Per iteration, the slowest rank's time in µs (a max over ``sync_group``).
    """
    import torch
    import torch.distributed as dist

    cuda = device.type == "cuda"
    times = torch.zeros(iters, dtype=torch.float64)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(iters)] if cuda else []
    for i in range(iters):
        if cuda:
            torch.cuda.synchronize()
        dist.barrier(group=sync_group)
        if beside is not None:
            beside.start()
        if cuda:
            events[i][0].record()
            run()  # a synchronous torch collective makes the current stream wait for NCCL's
            events[i][1].record()
        else:
            start = time.perf_counter()
            run()
            times[i] = (time.perf_counter() - start) * 1e6
        if beside is not None:
            beside.stop()
    if cuda:
        torch.cuda.synchronize()
        times = torch.tensor([s.elapsed_time(e) * 1e3 for s, e in events], dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX, group=sync_group)  # the slowest rank, per iteration
    return times.tolist()


def torch_nccl_version() -> str:
    """The NCCL version torch runs ("2.21.5"), as ``torch.cuda.nccl.version()`` reports it."""
    import torch

    version = torch.cuda.nccl.version()  # a tuple since torch 1.13, an int before
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _measure_one(q: dict, spec: dict, device, sync_group) -> dict:
    variants, names = make_op(q, device)
    chosen = first_working(variants, sync_group)  # also the first warm-up call
    run = variants[chosen]
    for _ in range(spec["warmup"]):
        run()
    times = time_op(run, spec["iters"], device, sync_group)
    return {"index": q["index"], "times_us": times, "variant": names[chosen]}


def _worker_main(spec_path: str, out_path: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    timeout = datetime.timedelta(seconds=spec["timeout_s"])
    if spec["backend"] == "nccl":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
        # Barriers and the max-over-ranks go through gloo so that NCCL_ALGO / NCCL_PROTO, which
        # NCCL applies to every collective of the communicator, meet only the measured one.
        sync_group = dist.new_group(backend="gloo", timeout=timeout)
        nccl_version = torch_nccl_version()
    else:
        device, sync_group, nccl_version = torch.device("cpu"), None, None
        torch.set_num_threads(1)  # ranks share the CPU; more threads only contend
        dist.init_process_group("gloo", timeout=timeout)
    records = [_measure_one(q, spec, device, sync_group) for q in spec["queries"]]
    if rank == 0:
        atomic.write_text(out_path, json.dumps({"records": records, "torch_version": torch.__version__,
                                                "nccl_version": nccl_version}))
    dist.barrier(group=sync_group)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="dynamiccl live-measurement worker (started by "
                                                 "LiveCostModel.measure, one process per rank)")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC_JSON", "OUT_JSON"), required=True)
    _worker_main(*parser.parse_args().worker)
