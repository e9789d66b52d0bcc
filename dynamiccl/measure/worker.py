"""One rank of ``dynamiccl measure``: ``python -m dynamiccl.measure.worker --plan PLAN --out DIR ...``,
appended by the command to the user's launcher (``torchrun ...``, ``srun ... python``).

Every rank:

1. finds its rank, the world size and its node: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, the node
   being ``RANK // LOCAL_WORLD_SIZE`` (torchrun numbers ranks node by node); or under srun
   SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODEID (MASTER_ADDR and MASTER_PORT must then
   be set, as for any torch.distributed job under srun);
2. loads the instrumented tuner plugin with ctypes from the very path ``NCCL_TUNER_PLUGIN`` names,
   so that this process and NCCL share one copy of the library (``dlopen`` of one path returns one
   handle) and the override set here is the one NCCL's ``getCollInfo`` calls see;
3. joins the job's process group: NCCL with one GPU per rank when CUDA has a device for this local
   rank, else gloo on CPU; a side gloo group carries barriers, the slowest-rank maxima and rank 0's
   decisions, so that nothing but the timed collective reaches NCCL (and the override);
4. places every shape of the plan (:func:`dynamiccl.measure.plan.place`) and creates one
   communicator per placed shape (``dist.new_group`` on the ranks that span the shape's nodes),
   once: configurations change per call through the override, never by a new communicator;
5. follows rank 0's :class:`~dynamiccl.measure.schedule.Scheduler` step by step (broadcast on the
   side group). For a step, the ranks of the item's shape set the override to the configuration
   (NCCL's default: none; a chunk size: NCCL's own cell and channels with that chunk), ask the
   plugin's ``getCollInfo`` (and, for a chunk size, ``getChunkSize``) through the binding what it
   would answer for that call (the probe: the override really is set in this process), run the
   timing loop of :func:`dynamiccl.costmodel.live.time_op`, read the plugin's counters (did NCCL
   consult the plugin on every call, and take the forced cell or chunk?), and clear the override in
   a ``finally``.

With chunk sizes in the plan (``--chunks``), every rank first checks that its NCCL asks a tuner for
a chunk size (:func:`~dynamiccl.measure.plan.chunks_refusal`): if not, nothing is timed and rank 0
writes the reason as ``refused`` in ``DIR/results.json``. Chunk sizes
:mod:`dynamiccl.knobs.safety` refuses on the NCCL and this node's network
(:func:`network_transport`) are never timed (status ``unavailable``, the refusal as reason).

The override is also cleared when a SIGTERM / SIGINT / SIGHUP arrives (then the signal's default
action runs), and at the end, after which each rank probes once more; rank 0 writes
``DIR/results.json`` (and ``DIR/progress.json`` after every step, atomically).
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

from dynamiccl import atomic
from dynamiccl.measure.plan import Config, Item, Plan, Shape, chunk_refusals, chunks_refusal, place
from dynamiccl.measure.schedule import END, MEASURE_GEMM, Scheduler, Step
from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS, OP_FUNC, TUNABLE_FUNCS, Func, is_supported
from dynamiccl.plugin.binding import DecisionSource, InstrumentedTunerLibrary

PLUGIN_ENV = "NCCL_TUNER_PLUGIN"
RESULTS_FILE, PROGRESS_FILE = "results.json", "progress.json"
# What each rank reports after a step (all-gathered to rank 0), in this order.
STEP_FIELDS = ("probe_algorithm", "probe_protocol", "probe_channels", "probe_source", "probe_chunk_bytes",
               "plugin_calls", "plugin_overridden", "plugin_refused", "plugin_chunk_calls", "plugin_chunk_set",
               "ran_algorithm", "ran_protocol", "calls_made", "gemm_median_us")
COUNTERS = ("calls", "overridden", "refused", "chunk_calls", "chunk_set")  # the plugin's, per step
INFINIBAND_SYSFS = Path("/sys/class/infiniband")  # the kernel's RDMA devices, one directory each
# The chunk size NCCL's getChunkSize call hands the probe (any: the plugin sets it or leaves it).
PROBE_NCCL_CHUNK = 131072


def rank_env(env=os.environ) -> tuple[int, int, int, int]:
    """(rank, world size, local rank, node index) of this process under torchrun or srun; under srun
    it also sets RANK / WORLD_SIZE / LOCAL_RANK for torch.distributed.

    Raises:
        RuntimeError: neither torchrun's nor srun's variables, or srun without MASTER_ADDR/PORT.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", 0))
        per_node = int(env.get("LOCAL_WORLD_SIZE", world))
        return rank, world, local, rank // per_node
    if "SLURM_PROCID" in env:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise RuntimeError(f"under srun, set {' and '.join(missing)} (rank 0's host and a free port), as for "
                               "any torch.distributed job started by srun")
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
        return rank, world, local, int(env.get("SLURM_NODEID", 0))
    raise RuntimeError("no RANK/WORLD_SIZE (torchrun) or SLURM_PROCID (srun): run under a launcher, e.g. "
                       "dynamiccl measure ... -- torchrun --nproc-per-node 4")


def probe_table(func: Func) -> list[list[float]]:
    """A cost table with every cell NCCL can run for ``func`` enabled (1 µs), the others -1."""
    return [[1.0 if is_supported(func, a, p) else -1.0 for p in range(NUM_PROTOCOLS)] for a in range(NUM_ALGORITHMS)]


def probe(library: InstrumentedTunerLibrary, comm, item_coll: str, size_bytes: int) -> list[int]:
    """What the plugin answers now for a ``getCollInfo`` of this call (through the binding, as
    NCCL calls it): [algorithm, protocol, channels, source]; -1s for a collective the tuner is never
    asked about (alltoall)."""
    func = OP_FUNC[item_coll]
    if func not in TUNABLE_FUNCS:
        return [-1, -1, -1, int(DecisionSource.NONE)]
    result = comm.coll_info(func, size_bytes, probe_table(func))
    source = DecisionSource[library.stats()["last"]["source"].upper()]
    return [result.algorithm, result.protocol, result.n_channels, int(source)]


def probe_chunk(comm, item_coll: str, size_bytes: int, answer: list[int]) -> int:
    """What the plugin's ``getChunkSize`` answers now for the call the probe ``answer``
    (:func:`probe`) decided, given NCCL's chunk :data:`PROBE_NCCL_CHUNK`: the override's chunk when
    it is set in this process; -1 where the communicator's ABI has no getChunkSize or the tuner is
    never asked."""
    if comm.version < 6 or answer[0] < 0:
        return -1
    _, chunk = comm.chunk_size(int(OP_FUNC[item_coll]), size_bytes, answer[0], answer[1], max(answer[2], 1),
                               PROBE_NCCL_CHUNK)
    return int(chunk)


def network_transport(root: Path = INFINIBAND_SYSFS) -> str | None:
    """The network this node's RDMA devices run, as :mod:`dynamiccl.knobs.safety` names it: ``ib``
    when every port's link layer is InfiniBand, ``roce`` when every one is Ethernet; None (unknown,
    so every safety rule applies) without RDMA devices (sockets, EFA) or with both kinds."""
    layers = set()
    for path in root.glob("*/ports/*/link_layer"):
        try:
            layers.add(path.read_text().strip().lower())
        except OSError:
            continue
    return {frozenset({"infiniband"}): "ib", frozenset({"ethernet"}): "roce"}.get(frozenset(layers))


def term_with_parent() -> None:
    """SIGTERM this process when its parent dies, however it dies (even SIGKILL, which no handler
    sees): the launcher when ``dynamiccl measure`` dies, a rank when its launcher dies, so that no
    job outlives the command that watches it (Linux prctl PR_SET_PDEATHSIG; elsewhere nothing)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


class _Clearing:
    """Clear the override when a terminating signal arrives, then let the signal do what it would."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, library: InstrumentedTunerLibrary):
        self.library = library
        for s in self.SIGNALS:
            signal.signal(s, self._handler)

    def _handler(self, signum, _frame):
        self.library.clear_override()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def applied_on_every_rank(backend: str, config: Config, members: list[list[float]]) -> bool:
    """Whether NCCL ran a step's configuration on every rank (``members``: each rank's STEP_FIELDS):
    for a forced one, the plugin was asked on every call and forced it each time, none refused; for
    a chunk size, NCCL also asked getChunkSize on every call and the plugin gave it the chunk.
    NCCL's default needs nothing applied; on gloo nothing is (NCCL is not involved)."""
    if config.is_default:
        return True
    if backend != "nccl":
        return False
    fields = [dict(zip(STEP_FIELDS, m)) for m in members]
    chunk_ok = all(f["plugin_chunk_set"] >= f["calls_made"] for f in fields) if config.chunk_bytes else True
    return chunk_ok and all(f["plugin_overridden"] >= f["calls_made"] and f["plugin_refused"] == 0 for f in fields)


def ran_cells(log: list[dict]) -> dict[tuple[int, int], list[int]]:
    """(item, configuration) -> [algorithm, protocol] NCCL ran on every applied step of it, by every
    member (the plugin's decision record); left out where they differ or nothing was applied."""
    cells: dict[tuple[int, int], set] = {}
    for entry in log:
        if entry["applied"]:
            key = tuple(entry["step"][1:3])
            cells.setdefault(key, set()).update((m["ran_algorithm"], m["ran_protocol"]) for m in entry["members"])
    return {key: list(next(iter(found))) for key, found in cells.items()
            if len(found) == 1 and min(next(iter(found))) >= 0}


def _member_record(values: list[float]) -> dict:
    """One member's STEP_FIELDS as JSON: counts as ints, the probe's source by name, no NaN."""
    record = {k: int(v) for k, v in zip(STEP_FIELDS, values) if k != "gemm_median_us"}  # probe_chunk_bytes -1: none
    record["probe_source"] = DecisionSource(record["probe_source"]).name.lower()
    gemm = values[STEP_FIELDS.index("gemm_median_us")]
    record["gemm_median_us"] = None if gemm != gemm else gemm  # NaN: no GEMM in this step
    return record


def device_name(device) -> str:
    """The GPU's name (``torch.cuda.get_device_name``) or the CPU's model."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


class Worker:
    """One rank's run (see the module docstring)."""

    def __init__(self, args, library: InstrumentedTunerLibrary):
        import torch
        import torch.distributed as dist

        self.args, self.library = args, library
        self.plan = Plan.read(args.plan)
        self.out = Path(args.out)
        self.rank, self.world, self.local, node = rank_env()
        timeout = datetime.timedelta(seconds=args.timeout_s)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.backend = "nccl" if args.backend == "nccl" or (args.backend == "auto" and gpus > self.local) else "gloo"
        if self.backend == "nccl":
            self.device = torch.device("cuda", self.local)
            torch.cuda.set_device(self.device)
            dist.init_process_group("nccl", timeout=timeout, device_id=self.device)
            self.side = dist.new_group(backend="gloo", timeout=timeout)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(1)  # ranks share the CPU; more threads only contend
            dist.init_process_group("gloo", timeout=timeout)
            self.side = None  # the default group is gloo already
        from dynamiccl.costmodel.live import torch_nccl_version

        self.nccl_version = torch_nccl_version() if self.backend == "nccl" else None
        # --chunks on an NCCL that never asks a tuner for a chunk size: the reason; nothing more is set up
        self.chunks_refused = chunks_refusal(self.backend, self.nccl_version) if self.plan.chunks else None
        if self.chunks_refused:
            return
        gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(gathered, torch.tensor([node], dtype=torch.int64), group=self.side)
        nodes = [int(t.item()) for t in gathered]
        self.rank_nodes = nodes
        self.placements = {shape: place(shape, nodes) for shape in self.plan.shapes}
        self.groups: dict[Shape, tuple] = {}  # shape -> (group, sync group), on its ranks
        for shape, members in self.placements.items():
            if isinstance(members, str):
                continue
            if len(members) == self.world:
                self.groups[shape] = (None, self.side)
            else:  # every rank takes part in new_group, member or not
                group = dist.new_group(list(members), timeout=timeout)
                sync = dist.new_group(list(members), backend="gloo", timeout=timeout) if self.backend == "nccl" else group
                self.groups[shape] = (group, sync)
        abi = max(library.exported_abi_versions())
        self.probe_comms = {shape: library.open(abi, shape.nranks, shape.nnodes, logger=False)
                            for shape, members in self.placements.items()
                            if not isinstance(members, str) and self.rank in members}
        self.abi = abi
        self.gemm = None
        if args.with_gemm:
            from dynamiccl.measure.gemm import GemmBeside

            self.gemm = GemmBeside(self.device)
        self._op_item = -1
        self._op = None
        self._variant: dict[int, int] = {}  # item -> the variant of make_op that works

    # --- one step ---------------------------------------------------------------------------------

    def _op_for(self, index: int, item: Item, group, sync):
        """The call that times item ``index`` (buffers for one item at a time), the torch call's name,
        and the untimed calls made here. Which variant works is found once per item (its first call,
        on every member alike: a member that met other items in between must not probe again)."""
        from dynamiccl.costmodel.live import first_working, make_op

        if self._op_item != index:
            self._op = None  # free the previous item's buffers first
            self._op = make_op(item.op_spec(self.backend), self.device, group)
            self._op_item = index
        variants, names = self._op
        calls = 0
        if index not in self._variant:
            self._variant[index] = first_working(variants, sync)
            calls = 1
        chosen = self._variant[index]
        return variants[chosen], names[chosen], calls

    def measure(self, step: Step) -> tuple[list[float], list[list[float]], str]:
        """Run one step on this member rank: (slowest-rank times in µs, every member's STEP_FIELDS,
        the torch call timed)."""
        import torch
        import torch.distributed as dist

        from dynamiccl.costmodel.live import time_op

        item = self.plan.items[step.item]
        config = item.configs[step.config]
        group, sync = self.groups[item.shape]
        gemm = self.gemm if step.kind == MEASURE_GEMM else None
        try:
            if config.is_default:
                self.library.clear_override()
            else:
                self.library.override(config.algo, config.proto, config.channels or -1,
                                      chunk_bytes=config.chunk_bytes or -1, count=-1)
            comm = self.probe_comms[item.shape]
            answer = probe(self.library, comm, item.coll, item.size_bytes)
            answer.append(probe_chunk(comm, item.coll, item.size_bytes, answer))
            before = self.library.stats()
            run, name, calls = self._op_for(step.item, item, group, sync)
            for _ in range(step.warmup):
                run()
            times = time_op(run, step.reps, self.device, sync, gemm)
            calls += step.warmup + step.reps
            after = self.library.stats()
        finally:
            self.library.clear_override()
        gemm_median = statistics.median(gemm.collect() or [float("nan")]) if gemm else float("nan")
        # The cell the plugin's last decision recorded: under a chunk override (NCCL's own cell), the
        # cell NCCL chose for the step's last call -- the same for every call of one size.
        ran = [after["last"]["algorithm"], after["last"]["protocol"]]
        mine = answer + [after[k] - before[k] for k in COUNTERS] + ran + [calls, gemm_median]
        gathered = [torch.zeros(len(STEP_FIELDS), dtype=torch.float64) for _ in range(item.shape.nranks)]
        dist.all_gather(gathered, torch.tensor(mine, dtype=torch.float64), group=sync)
        return times, [t.tolist() for t in gathered], name

    # --- the run ----------------------------------------------------------------------------------

    def run(self) -> None:
        import torch
        import torch.distributed as dist

        if self.chunks_refused:
            if self.rank == 0:
                atomic.write_text(self.out / RESULTS_FILE, json.dumps(
                    {"refused": self.chunks_refused, "backend": self.backend, "nccl_version": self.nccl_version}))
            dist.barrier(group=self.side)
            return
        scheduler = self._scheduler() if self.rank == 0 else None
        log, started = [], time.time()
        gemm_alone = self.gemm.time_alone() if self.gemm else None
        while True:
            message = torch.tensor(scheduler.next().encode() if scheduler else [0] * 5, dtype=torch.int64)
            dist.broadcast(message, src=0, group=self.side)
            step = Step.decode(message.tolist())
            if step.kind == END:
                break
            item = self.plan.items[step.item]
            if self.rank not in self.placements[item.shape]:
                continue
            times, members, name = self.measure(step)
            if scheduler is not None:
                applied = applied_on_every_rank(self.backend, item.configs[step.config], members)
                scheduler.record(times, applied)
                log.append({"step": step.encode(), "times_us": times, "applied": applied, "op": name,
                            "ranks": list(self.placements[item.shape]),
                            "members": [_member_record(m) for m in members]})
                done, total = scheduler.progress()
                atomic.write_text(self.out / PROGRESS_FILE, json.dumps(
                    {"done": done, "total": total, "item": item.label, "config": item.configs[step.config].label,
                     "elapsed_s": time.time() - started}))
        self.library.clear_override()
        for comm in self.probe_comms.values():
            comm.close()
        after_end = self._after_end()
        if scheduler is not None:
            atomic.write_text(self.out / RESULTS_FILE, json.dumps(self._results(scheduler, log, after_end, gemm_alone)))
        dist.barrier(group=self.side)

    def _after_end(self) -> list[list[int]]:
        """Every rank's probe after the run (the override must be cleared: NCCL decides), on rank 0."""
        import torch
        import torch.distributed as dist

        shape = Shape(self.world, len(set(self.rank_nodes)))
        with self.library.open(self.abi, shape.nranks, shape.nnodes, logger=False) as comm:
            mine = probe(self.library, comm, "allreduce", 1 << 20)
        gathered = [torch.zeros(4, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(gathered, torch.tensor(mine, dtype=torch.int64), group=self.side)
        return [t.tolist() for t in gathered]

    def _scheduler(self) -> Scheduler:
        from dynamiccl.nccl import parse_version

        unavailable: dict[tuple[int, int], str] = {}
        if self.nccl_version:
            version = parse_version(self.nccl_version)
            for i, item in enumerate(self.plan.items):
                for c, config in enumerate(item.configs):
                    if config.algo >= 0 and not is_supported(OP_FUNC[item.coll], config.algo, config.proto, version):
                        unavailable[(i, c)] = f"NCCL {self.nccl_version} cannot run {config.label} for {item.coll}"
            unavailable.update(chunk_refusals(self.plan, self.nccl_version, network_transport()))
        skip = {i: self.placements[item.shape] for i, item in enumerate(self.plan.items)
                if isinstance(self.placements[item.shape], str)}
        return Scheduler([len(item.configs) for item in self.plan.items], self.args.deadline, self.args.iters,
                         self.args.warmup, drop_unapplied=self.backend == "nccl", unavailable=unavailable,
                         skip_items=skip, with_gemm=self.gemm is not None)

    def _results(self, scheduler: Scheduler, log: list, after_end: list, gemm_alone) -> dict:
        import torch

        items = []
        ran = ran_cells(log)
        for i, (item, states) in enumerate(zip(self.plan.items, scheduler.states)):
            items.append({"index": i, "configs": [
                {"config": item.configs[c].label, "status": s.status, "reason": s.reason, "applied": s.applied,
                 "times_us": s.times_us, "gemm_times_us": s.gemm_times_us, "ran": ran.get((i, c))}
                for c, s in enumerate(states)]})
        return {
            "backend": self.backend, "nccl_version": self.nccl_version, "torch_version": torch.__version__,
            "device": device_name(self.device), "world_size": self.world, "rank_nodes": self.rank_nodes,
            "plugin": {"path": str(self.library.path), "version": self.library.version,
                       "exported_abi": self.library.exported_abi_versions()},
            "placements": {shape.key: (list(m) if not isinstance(m, str) else m) for shape, m in self.placements.items()},
            "iters": self.args.iters, "warmup": self.args.warmup, "stopped_by_budget": scheduler.stopped_by_budget,
            "items": items, "steps": log, "chunks": list(self.plan.chunks),
            "network_transport": network_transport() if self.plan.chunks else None,
            "after_end": [dict(zip(("algorithm", "protocol", "channels", "source"), p)) | {
                "source": DecisionSource(p[3]).name.lower()} for p in after_end],
            "gemm": None if self.gemm is None else {"what": self.gemm.describe(), "alone_us_rank0": gemm_alone},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rank of dynamiccl measure (started by the command under the "
                                                 "user's launcher)")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True, help="directory rank 0 writes results.json and progress.json into")
    parser.add_argument("--deadline", type=float, required=True, help="wall-clock time (epoch s) to stop by")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--with-gemm", action="store_true")
    parser.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args(argv)
    rank_env()  # fails at once, before torch is imported, outside a launcher
    path = os.environ.get(PLUGIN_ENV)
    if not path or not os.path.isabs(path):
        raise RuntimeError(f"{PLUGIN_ENV} must name the instrumented plugin by absolute path (dynamiccl measure sets "
                           f"it), got {path!r}")
    library = InstrumentedTunerLibrary(path)
    _Clearing(library)
    term_with_parent()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` a stuck rank: its stacks
    try:
        Worker(args, library).run()
    finally:
        library.clear_override()
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
