"""``dynamiccl simulate``: an nccl-tests-style sweep of one collective under a cost model.

By default each size gets NCCL's own choice (from NCCL's model of the spec's NCCL version); a
forced ``algo``/``proto``/``channels`` is applied as ``NCCL_ALGO``/``NCCL_PROTO``/channel settings
would be. ``model`` names who answers, from :data:`~dynamiccl.costmodel.registry.COST_MODELS`
(``world``: the calibrated simulator, ``nccl``: what NCCL believes it costs, ``live``: real
collectives on this machine through torch.distributed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamiccl.costmodel.batch import COSTED_FUNCS, is_p2p, make_batch
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL, cost_model_entry
from dynamiccl.costmodel.table import Row, make_row
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.nccl import (MAX_CHANNELS, Algorithm, Func, Protocol, is_supported, nccl_tests_op, parse_dtype,
                            parse_func)


@dataclass
class SweepRequest:
    """One ``dynamiccl simulate`` sweep: collective ``coll`` (a name ``parse_func`` reads) at every
    size of ``sizes_bytes``, elements of ``dtype``, on ``nranks`` ranks over ``nnodes`` nodes,
    forced ``algo``/``proto``/``channels`` (None/0: NCCL's choice), with compute ``overlap`` (share
    of each call's time with compute beside it) and NIC ``congestion`` (share of its bandwidth
    other traffic takes), priced by the cost model ``model``; ``live_nprocs``: processes of the
    live model; ``measurements``: the CSVs of the measured model.

    Raises (on construction):
        InputError: a value out of range, naming the command-line flag that sets it
            (``--channels``, ``--nranks``, ``--nnodes``, ``--nprocs``, ``--overlap``, ``--congestion``).
    """

    coll: str
    sizes_bytes: list[int]
    dtype: str = "float32"
    nranks: int = 0        # 0: every GPU of the spec
    nnodes: int = 0        # 0: every node of the spec
    algo: Algorithm | None = None
    proto: Protocol | None = None
    channels: int = 0
    overlap: float | None = None    # None: the spec's dynamics.overlap_fraction
    congestion: float = 0.0
    model: str = DEFAULT_COST_MODEL
    live_nprocs: int = 4
    measurements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.channels < 0 or self.channels > MAX_CHANNELS:
            raise InputError("--channels", None, f"expected 1..{MAX_CHANNELS}, got {self.channels}")
        for flag, value in (("--nranks", self.nranks), ("--nnodes", self.nnodes), ("--nprocs", self.live_nprocs)):
            if value < 0:
                raise InputError(flag, None, f"expected a positive integer, got {value}")
        if self.overlap is not None and not 0 <= self.overlap <= 1:
            raise InputError("--overlap", None, f"expected a fraction in [0, 1], got {self.overlap}")
        if not 0 <= self.congestion <= 0.95:  # as CollBatch accepts it
            raise InputError("--congestion", None, f"expected a share in [0, 0.95], got {self.congestion}")


def run_sweep(env: EnvSpec, req: SweepRequest) -> tuple[list[Row], list[str]]:
    """Cost every size; returns the table rows and header lines saying who produced them.

    Raises:
        InputError: a bad collective, dtype, model, layout, or a forced pair NCCL cannot run.
    """
    func = parse_func(req.coll, "--coll", allowed=COSTED_FUNCS)
    op = nccl_tests_op(func)
    dtype = parse_dtype(req.dtype, "--dtype")
    entry = cost_model_entry(req.model, "--model", None)
    nnodes = req.nnodes or env.nodes
    nranks = req.nranks or nnodes * env.gpus_per_node
    if nranks < 2:
        # NCCL runs no algorithm on a one-rank communicator: NVIDIA/nccl src/enqueue.cc taskAppend sends
        # nRanks == 1 to ncclLaunchOneRank, a local copy/reduce. There is nothing to cost, whatever --algo/--proto say.
        raise InputError("--nranks", None, f"expected 2 or more ranks, got {nranks}"
                                           f"{'' if req.nranks else f' (every GPU of {env.name})'}: a one-rank "
                                           "communicator moves no data between GPUs, so there is nothing to cost")
    if req.algo is not None and req.proto is not None and func not in (Func.SEND, Func.RECV) \
            and not is_supported(func, req.algo, req.proto, env.nccl_version):
        raise InputError("--algo/--proto", None, f"NCCL {env.nccl_version} cannot run {op} with "
                                                 f"{req.algo.name_lower}/{req.proto.name_lower}")
    model = entry.create(env, CostModelOptions(live_nprocs=req.live_nprocs, live_dtype=dtype.name_lower,
                                               measurements=tuple(req.measurements)))
    sizes = np.array(req.sizes_bytes, dtype=np.float64)
    overlap = env.dynamics.overlap_fraction if req.overlap is None else req.overlap
    batch = make_batch(int(func), sizes, nranks, nnodes,
                       algo=-1 if req.algo is None else int(req.algo),
                       proto=-1 if req.proto is None else int(req.proto), channels=req.channels,
                       overlap=overlap, compute_hbm_share=env.dynamics.compute_hbm_share, congestion=req.congestion,
                       forced_by_env=True)  # --algo/--proto are NCCL_ALGO/NCCL_PROTO, not a tuner's choice
    out = model.evaluate(batch)
    if not np.isfinite(out.time_us).any():
        if not model.costs_p2p and is_p2p(batch.func).all():
            raise InputError("--coll", None, f"no cost for {op} under {model.describe()}")
        raise InputError("--algo/--proto", None, f"NCCL does not enable that algorithm/protocol for {op} on "
                                                 f"{nranks} ranks over {nnodes} nodes of {env.name} (or the "
                                                 f"cost model has no cost for it: {model.describe()})")
    rows = [make_row(op, int(n), int(s), dtype.name_lower, dtype.size_bytes, float(t), int(a), int(p), int(c))
            for n, s, t, a, p, c in zip(out.nranks, sizes, out.time_us, out.algo, out.proto, out.channels)]
    if entry.runs_collectives:
        header = [f"dynamiccl simulate --model {req.model}: {op}, {model.describe()} (the spec {env.name} is not "
                  f"used for live runs)"]
    else:
        # Tree and LL are value 0 of their enums: test for "forced" with ``is not None``, not truthiness.
        forced = ", ".join(f"{k} {v}" for k, v in (("algo", req.algo.name_lower if req.algo is not None else None),
                                                   ("proto", req.proto.name_lower if req.proto is not None else None),
                                                   ("channels", req.channels or None)) if v is not None) \
            or "NCCL's choice"
        header = [f"dynamiccl simulate: {op}, {nranks} ranks on {nnodes} node(s), {forced}",
                  f"cost model: {model.describe()}",
                  f"choices: NCCL {env.nccl_version} model (tuning.cc)" if (out.algo >= 0).any() else
                  "choices: NCCL's own at run time (not seen by this model: algo/proto -)"]
    if model.models_conditions and (overlap or req.congestion):
        header.append(f"conditions: compute overlap {overlap:g} (HBM share {env.dynamics.compute_hbm_share:g}), "
                      f"network congestion {req.congestion:g}")
    return rows, header + list(out.notes)
