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

With the knobs (``TuningEnv(knobs=True)``, ``KNOBS_OBS_SIZE`` entries) the same 11 entries come first,
then:

=======  ========================================================
11       phase: 1 for a communicator decision, 0 for a call
12-22    the communicator's group kind, one-hot over
         ``trace.schema.GROUP_KINDS`` (all 0 for a call: the plugin
         does not see the kind)
=======  ========================================================

A communicator decision's observation holds its shape: entries 6-7 (nranks, nnodes), the phase
flag and its kind; every other entry is 0. That is what the launcher knows when it creates the
communicator (the process group's kind and ranks), so a table keyed by (kind, nranks, nnodes)
reproduces a policy's communicator choices.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dynamiccl.callkey import FIELDS, CallKey
from dynamiccl.nccl import TUNABLE_FUNCS
from dynamiccl.trace.schema import GROUP_KINDS
from dynamiccl.tuning.program import StepProgram

OBS_SIZE = 11
OBS_NAMES = ("broadcast", "reduce", "allgather", "reducescatter", "allreduce", "log2_bytes", "log2_nranks",
             "log2_nnodes", "log2_pipe_ops", "reg_buff", "log2_position")
PHASE_ENTRY = OBS_SIZE  # 1: a communicator decision
KIND_ENTRY = OBS_SIZE + 1
KNOBS_OBS_SIZE = OBS_SIZE + 1 + len(GROUP_KINDS)
KNOBS_OBS_NAMES = OBS_NAMES + ("communicator_phase",) + tuple(f"kind_{kind}" for kind in GROUP_KINDS)


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


def observe_calls(program: StepProgram, knobs: bool = False) -> np.ndarray:
    """The observation of every call of a compiled step ([calls, OBS_SIZE], or [calls,
    KNOBS_OBS_SIZE] with ``knobs``: phase and kind entries 0)."""
    obs = encode(key_columns(program.call_key))
    return with_knobs_entries(obs) if knobs else obs


def with_knobs_entries(obs: np.ndarray) -> np.ndarray:
    """Call observations ([n, OBS_SIZE]) widened to the knobs layout (phase 0, no kind)."""
    out = np.zeros((len(obs), KNOBS_OBS_SIZE), dtype=np.float32)
    out[:, :OBS_SIZE] = obs
    return out


def observe_communicators(kinds: Sequence[str], nranks: Sequence[int], nnodes: Sequence[int]) -> np.ndarray:
    """Observations ([n, KNOBS_OBS_SIZE]) of communicator decisions of shapes (kind, nranks, nnodes).

    Raises:
        ValueError: a kind outside ``trace.schema.GROUP_KINDS``.
    """
    obs = np.zeros((len(kinds), KNOBS_OBS_SIZE), dtype=np.float32)
    for row, kind in enumerate(kinds):
        if kind not in GROUP_KINDS:
            raise ValueError(f"group kind {kind!r}: expected one of {', '.join(GROUP_KINDS)}")
        obs[row, KIND_ENTRY + GROUP_KINDS.index(kind)] = 1.0
    obs[:, 6] = np.log2(np.maximum(np.asarray(nranks, dtype=np.float64), 1.0)) / 16.0
    obs[:, 7] = np.log2(np.maximum(np.asarray(nnodes, dtype=np.float64), 1.0)) / 16.0
    obs[:, PHASE_ENTRY] = 1.0
    return np.clip(obs, 0.0, 1.0)
