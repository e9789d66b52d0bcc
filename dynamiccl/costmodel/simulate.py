"""``dynamiccl simulate``: an nccl-tests-style sweep of one collective under a cost model.

By default each size gets NCCL's own choice (from NCCL's model of the spec's NCCL version); a
forced ``algo``/``proto``/``channels`` is applied as ``NCCL_ALGO``/``NCCL_PROTO``/channel settings
would be. ``model`` picks who answers: ``world`` (the calibrated simulator), ``nccl`` (what NCCL
believes it costs) or ``live`` (real collectives on this machine through torch.distributed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamiccl.costmodel.batch import COSTED_FUNCS, make_batch
from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.costmodel.table import Row, make_row
from dynamiccl.costmodel.world import WorldModel
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.nccl import FUNC_OP, Algorithm, Func, Protocol, is_supported, parse_dtype, parse_func

MODELS = ("world", "nccl", "live")


@dataclass
class SweepRequest:
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
    model: str = "world"
    live_nprocs: int = 4


def run_sweep(env: EnvSpec, req: SweepRequest) -> tuple[list[Row], list[str]]:
    """Cost every size; returns the table rows and header lines saying who produced them.

    Raises:
        InputError: a bad collective, dtype, layout, or a forced pair NCCL cannot run.
    """
    func = parse_func(req.coll, "--coll", allowed=COSTED_FUNCS)
    op = "sendrecv" if func in (Func.SENDRECV, Func.SEND, Func.RECV) else FUNC_OP[func]
    dtype = parse_dtype(req.dtype, "--dtype")
    if req.model not in MODELS:
        raise InputError("--model", None, f"expected one of {', '.join(MODELS)}, got {req.model!r}")
    nnodes = req.nnodes or env.nodes
    nranks = req.nranks or nnodes * env.gpus_per_node
    if req.algo is not None and req.proto is not None and func not in (Func.SEND, Func.RECV) \
            and not is_supported(func, req.algo, req.proto, env.nccl_version):
        raise InputError("--algo/--proto", None, f"NCCL {env.nccl_version} cannot run {op} with "
                                                 f"{req.algo.name_lower}/{req.proto.name_lower}")
    if req.model == "live":
        return _live(env, req, op, dtype)
    sizes = np.array(req.sizes_bytes, dtype=np.float64)
    overlap = env.dynamics.overlap_fraction if req.overlap is None else req.overlap
    batch = make_batch(int(func), sizes, nranks, nnodes,
                       algo=-1 if req.algo is None else int(req.algo),
                       proto=-1 if req.proto is None else int(req.proto), channels=req.channels,
                       overlap=overlap, compute_hbm_share=env.dynamics.compute_hbm_share, congestion=req.congestion)
    if req.model == "nccl":
        model = NcclModel(env)
        out = model.choose(batch)
    else:
        model = WorldModel(env)
        out = model.evaluate(batch)
    if not np.isfinite(out["time_us"]).any():
        raise InputError("--algo/--proto", None, f"NCCL does not enable that algorithm/protocol for {op} on "
                                                 f"{nranks} ranks over {nnodes} nodes of {env.name}")
    rows = [make_row(op, nranks, int(s), dtype.name_lower, dtype.size_bytes, float(t), int(a), int(p), int(c))
            for s, t, a, p, c in zip(sizes, out["time_us"], out["algo"], out["proto"], out["channels"])]
    forced = ", ".join(f"{k} {v}" for k, v in (("algo", req.algo and req.algo.name_lower),
                                               ("proto", req.proto and req.proto.name_lower),
                                               ("channels", req.channels or None)) if v) or "NCCL's choice"
    header = [f"dynamiccl simulate: {op}, {nranks} ranks on {nnodes} node(s), {forced}",
              f"cost model: {model.describe()}",
              f"choices: NCCL {env.nccl_version} model (tuning.cc)"]
    if req.model == "world" and (overlap or req.congestion):
        header.append(f"conditions: compute overlap {overlap:g} (HBM share {env.dynamics.compute_hbm_share:g}), "
                      f"network congestion {req.congestion:g}")
    return rows, header


def _live(env: EnvSpec, req: SweepRequest, op: str, dtype) -> tuple[list[Row], list[str]]:
    from dynamiccl.costmodel.live import LiveCostModel, LiveQuery

    model = LiveCostModel(nprocs=req.live_nprocs)
    queries = [LiveQuery(op, int(s), dtype.name_lower, req.algo, req.proto, req.channels or None)
               for s in req.sizes_bytes]
    results = model.measure(queries, progress=True)
    rows = [make_row(op, r.nranks, r.query.size_bytes, dtype.name_lower, dtype.size_bytes, r.time_us,
                     -1 if r.query.algo is None else int(r.query.algo),
                     -1 if r.query.proto is None else int(r.query.proto), r.query.channels or 0) for r in results]
    header = [f"dynamiccl simulate --model live: {op}, {results[0].nranks} {results[0].backend} processes on this "
              f"machine (the spec {env.name} is not used for live runs)", results[0].note]
    return rows, header
