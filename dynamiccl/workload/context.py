"""``StepContext``: one rank's view while its training step is generated.

It keeps the two facts every parallelism module needs to place an op correctly:

- ``last_compute``: the compute op that produced the data the next communication sends;
- ``waits``: communication the compute stream must wait for before its next op (the results of
  blocking collectives, or async ones whose overlap window has closed).

A *blocking* collective depends on the last compute and on pending waits (its input may be the
previous collective's output) and is waited for by the next compute: nothing overlaps it. An
*async* collective starts after the last compute, runs beside the compute issued after it, and is
waited for only when ``wait`` is called. This is how Megatron issues TP communication (blocking in
forward, async dgrad reduction overlapped with the wgrad GEMM in backward) and how DP bucket
reductions overlap the rest of the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamiccl.trace.builder import RankRecorder, TraceBuilder
from dynamiccl.trace.schema import Group
from dynamiccl.workload.layout import GROUP_DESC, ParallelLayout
from dynamiccl.workload.models import ModelConfig


@dataclass(frozen=True)
class ComputeRate:
    """Turns FLOPs into time: achieved = peak × efficiency (model FLOPs utilisation of GEMMs)."""

    gpu: str
    peak_tflops: float
    efficiency: float
    hbm_gbytes_per_s: float

    def duration_us(self, flops: float) -> float:
        return flops / (self.peak_tflops * 1e12 * self.efficiency) * 1e6

    def memory_bound_us(self, nbytes: float) -> float:
        return nbytes / (self.hbm_gbytes_per_s * 1e9) * 1e6

    def as_dict(self) -> dict:
        return {"gpu": self.gpu, "peak_bf16_tflops": self.peak_tflops, "efficiency": self.efficiency,
                "hbm_gbytes_per_s": self.hbm_gbytes_per_s,
                "duration_model": "compute: flops / (peak_bf16_tflops * efficiency); "
                                  "optimizer: bytes moved / hbm_gbytes_per_s"}


def describe_compute(compute: dict) -> str:
    """One line for a trace's compute provenance (what :meth:`ComputeRate.as_dict` recorded)."""
    if not compute:
        return "not recorded (a measured or imported trace: its durations are measured)"
    return (f"{compute.get('gpu', '?')}: {compute['peak_bf16_tflops']:g} TFLOPS dense BF16 x "
            f"{compute['efficiency']:g}, HBM {compute.get('hbm_gbytes_per_s', 0):g} GB/s")


@dataclass
class StepContext:
    """Emission helpers bound to one rank; see the module docstring for the dependency rules."""

    builder: TraceBuilder
    layout: ParallelLayout
    model: ModelConfig
    rank: int
    rate: ComputeRate
    rec: RankRecorder
    phase: str = "forward"
    microbatch: int = -1
    layer: int = -1
    last_compute: int | None = None
    waits: list[int] = field(default_factory=list)
    _groups: dict[str, Group] = field(default_factory=dict)

    @property
    def act_dtype(self) -> str:
        return self.layout.dtype

    @property
    def act_size(self) -> int:
        return {"bf16": 2, "fp16": 2, "fp32": 4}[self.layout.dtype]

    @property
    def grad_size(self) -> int:
        return {"bf16": 2, "fp16": 2, "fp32": 4}[self.layout.grad_reduce_dtype]

    def group(self, kind: str) -> Group:
        """This rank's process group of ``kind``, declared in the trace on first use."""
        found = self._groups.get(kind)
        if found is None:
            ranks = self.layout.group_ranks(kind, self.rank)
            found = self.builder.add_group(f"{kind}.{min(ranks)}", kind, ranks, GROUP_DESC.get(kind, ""))
            self._groups[kind] = found
        return found

    def group_size(self, kind: str) -> int:
        """Size of this rank's group of ``kind`` (without declaring the group in the trace)."""
        return len(self.layout.group_ranks(kind, self.rank))

    def at(self, phase: str, microbatch: int = -1, layer: int = -1) -> None:
        self.phase, self.microbatch, self.layer = phase, microbatch, layer

    def _label(self, name: str) -> str:
        parts = []
        if self.microbatch >= 0:
            parts.append(f"mb{self.microbatch}")
        if self.layer >= 0:
            parts.append(f"L{self.layer}")
        parts.append(name)
        return ".".join(parts)

    # --- compute -----------------------------------------------------------------------------------

    def compute(self, name: str, flops: float, nbytes: float) -> int:
        """A compute segment of ``flops`` that moves ``nbytes`` through device memory (recorded for
        rooflines, ``flops.py``); timed from its FLOPs; it waits for every pending communication."""
        index = self.rec.compute(self._label(name), phase=self.phase, flops=float(flops),
                                 duration_us=self.rate.duration_us(flops), bytes_moved=float(nbytes),
                                 deps=self.waits, microbatch=self.microbatch, layer=self.layer)
        self.waits = []
        self.last_compute = index
        return index

    def compute_memory_bound(self, name: str, nbytes: float, flops: float) -> int:
        """A memory-bound segment (optimizer step, embedding): time from ``nbytes`` moved at HBM
        bandwidth; its ``flops`` (element-wise arithmetic, 0 for a gather) are recorded."""
        index = self.rec.compute(self._label(name), phase=self.phase, flops=float(flops),
                                 duration_us=self.rate.memory_bound_us(nbytes), bytes_moved=float(nbytes),
                                 deps=self.waits, microbatch=self.microbatch, layer=self.layer)
        self.waits = []
        self.last_compute = index
        return index

    # --- communication ---------------------------------------------------------------------------

    def _deps(self, extra=()) -> list[int | None]:
        return [self.last_compute, *self.waits, *extra]

    def blocking(self, op: str, kind: str, bytes_total: int, dtype: str | None = None, name: str = "",
                 root: int = -1) -> int:
        """A collective the compute stream waits for right away (on the critical path)."""
        index = self.rec.collective(op, self.group(kind), bytes_total, dtype or self.act_dtype, phase=self.phase,
                                    label=self._label(name or f"{kind}.{op}"), deps=self._deps(), root=root,
                                    microbatch=self.microbatch, layer=self.layer)
        self.waits = [index]
        return index

    def start(self, op: str, kind: str, bytes_total: int, dtype: str | None = None, name: str = "",
              extra_deps=()) -> int:
        """An async collective after the last compute; call ``wait`` when its result is needed."""
        return self.rec.collective(op, self.group(kind), bytes_total, dtype or self.act_dtype, phase=self.phase,
                                   label=self._label(name or f"{kind}.{op}"), deps=self._deps(extra_deps),
                                   microbatch=self.microbatch, layer=self.layer)

    def wait(self, *ops: int | None) -> None:
        """The next compute waits for ``ops``."""
        self.waits.extend(op for op in ops if op is not None)

    def p2p_group(self, kind: str, sends: list[tuple], recvs: list[tuple], name: str, dtype: str | None = None,
                  blocking: bool = True) -> list[int]:
        """One ncclGroupStart/End of sends and receives.

        Each entry is (peer global rank, bytes) or (peer, bytes, phase, microbatch) when the ops of
        one group belong to different passes (a pipeline exchange sends one pass's activation and
        receives another pass's gradient). Blocking (pipeline p2p): the compute stream waits for all
        of them, as Megatron waits on every request it posts. Non-blocking (context-parallel ring):
        call ``wait`` after the overlapped compute.
        """
        group = self.group(kind)
        deps = self._deps()
        ops = []
        with self.rec.nccl_group():
            for entries, record, verb in ((sends, self.rec.send, "send"), (recvs, self.rec.recv, "recv")):
                for entry in entries:
                    peer, nbytes = entry[0], entry[1]
                    phase, microbatch = (entry[2], entry[3]) if len(entry) > 2 else (self.phase, self.microbatch)
                    ops.append(record(peer, group, nbytes, dtype or self.act_dtype, phase=phase,
                                      label=self._label(f"{name}.{verb}"), deps=deps, microbatch=microbatch,
                                      layer=self.layer))
        if blocking:
            self.waits = list(ops)
        return ops
