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

import numpy as np

from dynamiccl.tuning.program import StepProgram

OBS_SIZE = 11
OBS_NAMES = ("broadcast", "reduce", "allgather", "reducescatter", "allreduce", "log2_bytes", "log2_nranks",
             "log2_nnodes", "log2_pipe_ops", "reg_buff", "log2_position")


def encode(func, nbytes, nranks, nnodes, pipe_ops, reg_buff, position) -> np.ndarray:
    """Observations for arrays of calls (func: tunable ncclFunc_t 0..4; the rest as named)."""
    func = np.asarray(func, dtype=np.int64)
    obs = np.zeros((len(func), OBS_SIZE), dtype=np.float32)
    tunable = func < 5
    obs[np.flatnonzero(tunable), func[tunable]] = 1.0
    obs[:, 5] = np.log2(np.asarray(nbytes, dtype=np.float64) + 1.0) / 40.0
    obs[:, 6] = np.log2(np.maximum(np.asarray(nranks, dtype=np.float64), 1.0)) / 16.0
    obs[:, 7] = np.log2(np.maximum(np.asarray(nnodes, dtype=np.float64), 1.0)) / 16.0
    obs[:, 8] = np.log2(np.maximum(np.asarray(pipe_ops, dtype=np.float64), 1.0)) / 8.0
    obs[:, 9] = np.asarray(reg_buff, dtype=np.float64)
    obs[:, 10] = np.log2(np.maximum(np.asarray(position, dtype=np.float64), 0.0) + 1.0) / 16.0
    return np.clip(obs, 0.0, 1.0)


def observe_calls(program: StepProgram) -> np.ndarray:
    """The observation of every call of a compiled step ([calls, OBS_SIZE])."""
    return encode(program.call_func, program.call_nbytes, program.call_nranks, program.call_nnodes,
                  program.call_pipe_ops, np.zeros(program.num_calls), program.call_position)
