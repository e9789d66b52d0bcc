"""The observation: only what the deployed tuner plugin sees, identically, on every rank.

NCCL hands ``getCollInfo`` the collective type, ``nBytes``, ``numPipeOps`` and ``regBuff``; the
plugin's init gives ``nRanks`` and ``nNodes``; the plugin itself counts the calls on each
communicator, which gives the call's position within the step. Nothing else goes in (no simulator
state, no congestion, no future calls), so any policy over this observation is a function a
decision table keyed by these fields can reproduce (:mod:`dynamiccl.table.policy_export`).

Layout (float32, every entry in [0, 1]):

====  ===========================================================
0-4   collective, one-hot: Broadcast, Reduce, AllGather, ReduceScatter, AllReduce
5     log2(nBytes + 1) / 40
6     log2(nRanks) / 16
7     log2(nNodes) / 16
8     log2(numPipeOps) / 8
9     regBuff (0 or 1; traces do not record buffer registration, so 0)
10    log2(position + 1) / 16
====  ===========================================================
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dynamiccl.callkey import FIELDS, CallKey
from dynamiccl.nccl import TUNABLE_FUNCS
from dynamiccl.tuning.program import StepProgram

OBS_SIZE = 11
OBS_NAMES = ("broadcast", "reduce", "allgather", "reducescatter", "allreduce", "log2_bytes", "log2_nranks",
             "log2_nnodes", "log2_pipe_ops", "reg_buff", "log2_position")


def encode(calls: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Observations of a batch of calls given as columns named by the :class:`CallKey` fields
    (``coll``: a tunable ncclFunc_t 0..4, ``nbytes``, ``nranks``, ...): a dict of arrays or a
    DataFrame with those columns."""
    def column(name: str) -> np.ndarray:
        return np.asarray(calls[name], dtype=np.float64)

    coll = np.asarray(calls["coll"], dtype=np.int64)
    obs = np.zeros((len(coll), OBS_SIZE), dtype=np.float32)
    tunable = coll < len(TUNABLE_FUNCS)
    obs[np.flatnonzero(tunable), coll[tunable]] = 1.0
    obs[:, 5] = np.log2(column("nbytes") + 1.0) / 40.0
    obs[:, 6] = np.log2(np.maximum(column("nranks"), 1.0)) / 16.0
    obs[:, 7] = np.log2(np.maximum(column("nnodes"), 1.0)) / 16.0
    obs[:, 8] = np.log2(np.maximum(column("num_pipe_ops"), 1.0)) / 8.0
    obs[:, 9] = column("reg_buff")
    obs[:, 10] = np.log2(np.maximum(column("position"), 0.0) + 1.0) / 16.0
    return np.clip(obs, 0.0, 1.0)


def key_columns(keys: Sequence[CallKey]) -> dict[str, np.ndarray]:
    """``keys`` as one int64 array per :class:`CallKey` field (what :func:`encode` takes)."""
    values = np.array([key.as_tuple() for key in keys], dtype=np.int64).reshape(-1, len(FIELDS))
    return {name: values[:, i] for i, name in enumerate(FIELDS)}


def observe_calls(program: StepProgram) -> np.ndarray:
    """The observation of every call of a compiled step ([calls, OBS_SIZE])."""
    return encode(key_columns(program.call_key))
