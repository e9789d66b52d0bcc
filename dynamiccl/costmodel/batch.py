"""A batch of collective calls to cost: the numpy arrays every cost model takes.

One row per call. ``algo``/``proto`` = -1 and ``channels`` = 0 mean "NCCL's own choice" (what NCCL
does without a tuner). Conditions describe what runs beside the call; they only matter to the
world simulator:

- ``overlap``: fraction (0..1) of the call's time with compute running on the same GPU;
- ``compute_hbm_share``: share of HBM bandwidth that compute consumes while it overlaps;
- ``compute_waves``: the overlapped kernel's grid in full waves of the GPU (grid CTAs / (SMs x CTAs
  per SM)); 0 where not known (a stream of many-wave kernels). Decides the wave tail
  (:func:`dynamiccl.costmodel.interference.sm_slowdown`);
- ``congestion``: share (0..0.95) of each NIC's bandwidth taken by background traffic;
- ``noise``: multiplicative run-to-run factor (1 = none), drawn by the caller (see ``dynamics``).

Communicator settings (``ncclConfig_t``, fixed when the call's communicator was created; see
:mod:`dynamiccl.knobs.comm_config`, whose ``batch_columns`` gives them for a ``CommConfig``):

- ``max_ctas`` / ``min_ctas``: bounds on the communicator's channel pool (0: NCCL's pool);
- ``nvls_ctas``: bound on its NVLS channel pool (0: NCCL's);
- ``zero_cta``: the communicator's CTA policy is zero AND the job's buffers are symmetric-registered,
  so its copy collectives (``ZERO_CTA_FUNCS``) run on copy engines, holding no SMs.

``chunk_bytes`` is the call's chunk size (tuner ABI v6 ``getChunkSize``; 0: NCCL's). Only a model
whose ``prices_chunk`` is True is given rows with ``chunk_bytes`` > 0.

``forced_by_env`` says who forced a row's ``algo``/``proto``: True where they are ``NCCL_ALGO`` /
``NCCL_PROTO`` settings (a measured nccl-tests run, ``dynamiccl simulate``), False where a tuner
chose them (the policy, a decision table, ``search``). It matters for one cell: NCCL's automatic
LL128 rules (off over PCIe, on Ada before 2.27, ...) apply only while ``NCCL_PROTO`` leaves LL128 at
its default, so a protocol the user lists runs where a tuner could not pick it
(:func:`dynamiccl.costmodel.nccl_model.enabled`).

``func`` holds NCCL's ``ncclFunc_t`` numbers (Broadcast 0 .. AllReduce 4, SendRecv 5, Send 6,
Recv 7, AlltoAll 8); a send/recv is costed as one transfer of ``size_bytes`` to a peer. ``size_bytes`` follows nccl-tests
and NCCL's ``nBytes``: the whole ``n x count`` buffer for AllGather/ReduceScatter/AlltoAll, ``count``
bytes for AllReduce/Broadcast/Reduce, the bytes sent for Send/Recv.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from dynamiccl.errors import InputError
from dynamiccl.nccl import MAX_CHANNELS, NUM_ALGORITHMS, NUM_PROTOCOLS, NUM_TUNABLE_FUNCS, Func

# What the cost models can cost (NCCL runs Gather/Scatter as grouped send/recv; not modelled).
COSTED_FUNCS = (Func.BROADCAST, Func.REDUCE, Func.ALLGATHER, Func.REDUCESCATTER, Func.ALLREDUCE, Func.SENDRECV,
                Func.SEND, Func.RECV, Func.ALLTOALL)


def is_p2p(func: np.ndarray) -> np.ndarray:
    """Per row, whether NCCL runs the call as point-to-point transfers (send/recv, AlltoAll): of the
    costed functions, every one its tuner is never asked about (``Func`` >= ``NUM_TUNABLE_FUNCS``)."""
    return func >= NUM_TUNABLE_FUNCS


@dataclass
class CollBatch:
    """Columns of a batch of calls (all the same length)."""

    func: np.ndarray          # int: ncclFunc_t
    size_bytes: np.ndarray    # float64: NCCL's nBytes
    nranks: np.ndarray        # int
    nnodes: np.ndarray        # int
    algo: np.ndarray          # int: Algorithm, -1 = NCCL's choice
    proto: np.ndarray         # int: Protocol, -1 = NCCL's choice
    channels: np.ndarray      # int: 1..64, 0 = NCCL's choice
    num_pipe_ops: np.ndarray  # int: ops fused in one ncclGroup (NCCL's numPipeOps)
    overlap: np.ndarray       # float 0..1
    compute_hbm_share: np.ndarray  # float 0..1
    compute_waves: np.ndarray  # float >= 0, 0 = not known
    congestion: np.ndarray    # float 0..0.95
    noise: np.ndarray         # float > 0
    forced_by_env: np.ndarray  # bool: algo/proto forced by NCCL_ALGO/NCCL_PROTO (True) or by a tuner (False)
    max_ctas: np.ndarray      # int: 1..64 cap on the communicator's channel pool, 0 = NCCL's pool
    min_ctas: np.ndarray      # int: 1..64 floor on the communicator's channel pool, 0 = NCCL's pool
    nvls_ctas: np.ndarray     # int: 1..64 cap on the communicator's NVLS pool, 0 = NCCL's pool
    zero_cta: np.ndarray      # bool: zero-CTA policy on symmetric buffers (copy collectives hold no SMs)
    chunk_bytes: np.ndarray   # int: the call's chunk size in bytes, 0 = NCCL's

    def __len__(self) -> int:
        return len(self.func)

    def subset(self, index) -> "CollBatch":
        return CollBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def quiet(self) -> "CollBatch":
        """The same calls, quiet and alone: no overlapped compute, congestion or noise."""
        return replace(self, overlap=np.zeros(len(self)), compute_hbm_share=np.zeros(len(self)),
                       congestion=np.zeros(len(self)), noise=np.ones(len(self)))


_DTYPES = {"func": np.int64, "size_bytes": np.float64, "nranks": np.int64, "nnodes": np.int64,
           "algo": np.int64, "proto": np.int64, "channels": np.int64, "num_pipe_ops": np.int64,
           "overlap": np.float64, "compute_hbm_share": np.float64, "compute_waves": np.float64,
           "congestion": np.float64,
           "noise": np.float64, "forced_by_env": np.bool_, "max_ctas": np.int64, "min_ctas": np.int64,
           "nvls_ctas": np.int64, "zero_cta": np.bool_, "chunk_bytes": np.int64}


def make_batch(func, size_bytes, nranks, nnodes, algo=-1, proto=-1, channels=0, num_pipe_ops=1,
               overlap=0.0, compute_hbm_share=0.0, congestion=0.0, noise=1.0, compute_waves=0.0,
               forced_by_env=False, max_ctas=0, min_ctas=0, nvls_ctas=0, zero_cta=False,
               chunk_bytes=0) -> CollBatch:
    """Build a :class:`CollBatch`, broadcasting scalars and arrays against each other.

    Raises:
        InputError: a value out of range (naming the column).
    """
    values = dict(func=func, size_bytes=size_bytes, nranks=nranks, nnodes=nnodes, algo=algo, proto=proto,
                  channels=channels, num_pipe_ops=num_pipe_ops, overlap=overlap,
                  compute_hbm_share=compute_hbm_share, compute_waves=compute_waves, congestion=congestion,
                  noise=noise, forced_by_env=forced_by_env, max_ctas=max_ctas, min_ctas=min_ctas,
                  nvls_ctas=nvls_ctas, zero_cta=zero_cta, chunk_bytes=chunk_bytes)
    arrays = np.broadcast_arrays(*(np.asarray(v) for v in values.values()))
    columns = {name: np.ascontiguousarray(array, dtype=_DTYPES[name]).reshape(-1)
               for name, array in zip(values, arrays)}
    batch = CollBatch(**columns)
    _check(batch)
    return batch


def _check(b: CollBatch) -> None:
    def bad(column: str, mask: np.ndarray, expected: str) -> None:
        if mask.any():
            row = int(np.argmax(mask))
            raise InputError("cost batch", f"{column}[{row}]",
                             f"expected {expected}, got {getattr(b, column)[row]!r}")

    bad("func", ~np.isin(b.func, COSTED_FUNCS), "a collective 0..8 (ncclFunc_t; Gather/Scatter are not costed)")
    bad("size_bytes", ~(b.size_bytes >= 0), "a byte count >= 0")
    bad("nranks", b.nranks < 1, "at least 1 rank")
    bad("nnodes", (b.nnodes < 1) | (b.nnodes > b.nranks) | (b.nranks % np.maximum(b.nnodes, 1) != 0),
        "a node count that divides nranks")
    bad("algo", (b.algo < -1) | (b.algo >= NUM_ALGORITHMS), f"an algorithm 0..{NUM_ALGORITHMS - 1} or -1")
    bad("proto", (b.proto < -1) | (b.proto >= NUM_PROTOCOLS), f"a protocol 0..{NUM_PROTOCOLS - 1} or -1")
    bad("channels", (b.channels < 0) | (b.channels > MAX_CHANNELS), f"0 (NCCL's choice) or 1..{MAX_CHANNELS} channels")
    bad("num_pipe_ops", b.num_pipe_ops < 1, "at least 1")
    bad("overlap", ~((b.overlap >= 0) & (b.overlap <= 1)), "a fraction in [0, 1]")
    bad("compute_hbm_share", ~((b.compute_hbm_share >= 0) & (b.compute_hbm_share <= 1)), "a fraction in [0, 1]")
    bad("compute_waves", ~(b.compute_waves >= 0), "a grid in waves >= 0 (0: not known)")
    bad("congestion", ~((b.congestion >= 0) & (b.congestion <= 0.95)), "a share in [0, 0.95]")
    bad("noise", ~(b.noise > 0), "a positive factor")
    for column in ("max_ctas", "min_ctas", "nvls_ctas"):
        bad(column, (getattr(b, column) < 0) | (getattr(b, column) > MAX_CHANNELS),
            f"0 (NCCL's pool) or 1..{MAX_CHANNELS} CTAs")
    bad("min_ctas", (b.min_ctas > 0) & (b.max_ctas > 0) & (b.min_ctas > b.max_ctas), "at most max_ctas")
    bad("chunk_bytes", (b.chunk_bytes < 0) | ((b.chunk_bytes > 0) & ((b.chunk_bytes & (b.chunk_bytes - 1)) != 0)),
        "0 (NCCL's chunk) or a power of two in bytes")
