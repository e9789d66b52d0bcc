"""What every action costs for every distinct call of a step: the table the replay looks up.

A step repeats few distinct calls (a 405B step has 17,000 tunable calls but 19 distinct ones), and
the conditions the world simulator distinguishes are few: the network quiet or congested (the
``[dynamics]`` Markov process has two states) and compute running beside the call or not. So the
cost of every (distinct call, action, congestion state, overlap state) is evaluated once, in one
vectorized batch, and the replay only indexes it. Run-to-run noise is a per-call factor the
replay draws and multiplies in.

The model is any registered one (:data:`dynamiccl.costmodel.COST_MODELS`: ``world`` by default,
``nccl``, ``live``, ...), asked through its one interface. What the model says about itself decides
what is asked: a model without conditions (NCCL's, live measurement) is asked once per (call,
action) and its answer holds in every condition; where NCCL's knobs do not apply (live measurement
on gloo) only NCCL's default is valid, since any other "action" would measure the default again (so
too for measurements of NCCL's default only); an action a model cannot cost (inf: a configuration
NCCL does not run, or one never measured) is masked; a
model without point-to-point costs (NCCL's) gets the world's for send/recv and AlltoAll.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dynamiccl.costmodel import COST_MODELS, DEFAULT_COST_MODEL, CostModel, CostModelOptions, cost_model_entry
from dynamiccl.costmodel.registry import P2P_REFERENCE_MODEL
from dynamiccl.callkey import CallKey
from dynamiccl.costmodel.batch import is_p2p, make_batch
from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.costmodel.world import PARAMS_ENV
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.nccl import FUNC_OP, NUM_COST_CELLS, TUNABLE_FUNCS
from dynamiccl.tuning.actions import (
    ACTION_ALGO, ACTION_CHANNELS, ACTION_PROTO, DEFAULT_ACTION, NUM_ACTIONS, action_mask,
)
from dynamiccl.tuning.observation import key_columns
from dynamiccl.tuning.program import StepProgram

QUIET, CONGESTED = 0, 1
# The conditions a call is costed in, as (network state, compute overlapped 0/1), in the order the
# rows of the evaluated batch take them; the first two are the call alone.
_CONDITIONS = ((QUIET, 0), (CONGESTED, 0), (QUIET, 1), (CONGESTED, 1))


@dataclass
class CostTable:
    """Costs of every action for the distinct calls of one step on one environment spec.

    ``keys[k]`` is a :class:`~dynamiccl.callkey.CallKey` without position (a call's cost does not
    depend on where it sits in the step); ``call_row[c]`` maps call ``c`` to its key's row ``k``.
    Arrays by key and action (``NUM_ACTIONS``): ``mask`` (valid: NCCL enables the pair and the
    channels fit the pool; only the default for calls NCCL's tuner never sees), ``time_us``
    [K, A, congestion 0/1, overlap 0/1] (inf where masked), ``latency_us`` [K, A, congestion] (the
    size-independent part, which concurrent calls do not share), ``slowdown`` [K, A] (factor on
    compute running beside the call), ``channels`` [K, A] (channels the call really runs on),
    ``algo``/``proto`` [K, A] (the pair it really runs), and ``nccl_cost`` [K, cells] (NCCL's cost
    table, -1 where disabled, what a tuner plugin is handed). ``options``: the model's
    :class:`CostModelOptions` (e.g. the measured model's CSVs); ``world_params_file``: see :attr:`source`.
    """

    model: str
    description: str
    congested_share: float
    keys: list[CallKey]
    call_row: list[int]
    mask: np.ndarray
    time_us: np.ndarray
    latency_us: np.ndarray
    slowdown: np.ndarray
    channels: np.ndarray
    algo: np.ndarray
    proto: np.ndarray
    nccl_cost: np.ndarray
    options: CostModelOptions = CostModelOptions()
    world_params_file: str | None = None

    @property
    def source(self) -> tuple:
        """What answered, as a cache key: (model name, its options, the world parameters file in effect
        -- ``DYNAMICCL_WORLD_PARAMS`` / ``--params`` when the table was built, None for the shipped ones)."""
        return self.model, self.options, self.world_params_file

    @classmethod
    def build(cls, program: StepProgram, env: EnvSpec, model: str = DEFAULT_COST_MODEL,
              options: CostModelOptions | None = None) -> "CostTable":
        """Evaluate every (distinct call, action, condition) of ``program`` on ``env`` with the
        registered cost model ``model`` (made with ``options``).

        Raises:
            InputError: an unknown ``model``, or a call whose ranks per node exceed the spec's
                GPUs per node (the trace was made for bigger nodes).
        """
        entry = cost_model_entry(model)
        row_of: dict[CallKey, int] = {}
        call_row = [row_of.setdefault(key.cost_key(), len(row_of)) for key in program.call_key]
        keys = list(row_of)
        for key in keys:
            ranks_per_node = -(-key.nranks // key.nnodes)
            if ranks_per_node > env.gpus_per_node:
                raise InputError(program.source, "groups",
                                 f"a {FUNC_OP[key.coll]} over {key.nranks} ranks on {key.nnodes} node(s) needs "
                                 f"{ranks_per_node} GPUs per node; {env.name} has {env.gpus_per_node} "
                                 "(generate the trace for this cluster's node size)")
        k = key_columns(keys)
        nccl = NcclModel(env)
        base = make_batch(k["coll"], k["nbytes"], k["nranks"], k["nnodes"], num_pipe_ops=k["num_pipe_ops"])
        index = nccl.topology_index(base)
        nccl_cost = nccl.cost_table(base, index).reshape(len(keys), NUM_COST_CELLS)
        tunable = np.isin(k["coll"], [int(f) for f in TUNABLE_FUNCS])
        mask = np.zeros((len(keys), NUM_ACTIONS), dtype=bool)
        for i in range(len(keys)):
            if tunable[i]:
                mask[i] = action_mask(nccl_cost[i] >= 0, int(index.comm_channels[index.codes[i]]),
                                      int(index.nvls_channels[index.codes[i]]))
            else:
                mask[i, DEFAULT_ACTION] = True
        share = env.dynamics.congested_share if env.dynamics.congestion == "markov" else 0.0
        table = cls(model=model, description="", congested_share=share, keys=keys, call_row=call_row,
                    mask=mask, time_us=np.full((len(keys), NUM_ACTIONS, 2, 2), np.inf),
                    latency_us=np.full((len(keys), NUM_ACTIONS, 2), np.inf),
                    slowdown=np.ones((len(keys), NUM_ACTIONS)),
                    channels=np.zeros((len(keys), NUM_ACTIONS), dtype=np.int64),
                    algo=np.full((len(keys), NUM_ACTIONS), -1, dtype=np.int64),
                    proto=np.full((len(keys), NUM_ACTIONS), -1, dtype=np.int64), nccl_cost=nccl_cost,
                    options=options or CostModelOptions(), world_params_file=os.environ.get(PARAMS_ENV) or None)
        table._fill(entry.create(env, options), env, options)
        return table

    def call_masks(self, calls: Sequence[int]) -> np.ndarray:
        """The valid actions of each of ``calls`` (call ids of the step), [len(calls), NUM_ACTIONS]."""
        return self.mask[np.asarray(self.call_row, dtype=np.int64)[np.asarray(calls, dtype=np.int64)]]

    def rows(self) -> list[list[tuple | None]]:
        """Per key and action: ``(time quiet/alone, quiet/overlap, congested/alone, congested/overlap,
        latency quiet, latency congested, slowdown)`` as Python floats (None where masked); the
        replay's scalar path. Built once and kept."""
        rows = getattr(self, "_rows", None)  # never changed after build; tests may reset it
        if rows is None:
            t, lat, slow = self.time_us.tolist(), self.latency_us.tolist(), self.slowdown.tolist()
            mask = self.mask.tolist()
            rows = [[(t[k][a][0][0], t[k][a][0][1], t[k][a][1][0], t[k][a][1][1], lat[k][a][0], lat[k][a][1],
                      slow[k][a]) if mask[k][a] else None for a in range(len(mask[k]))] for k in range(len(mask))]
            self._rows = rows
        return rows

    def _fill(self, model: CostModel, env: EnvSpec, options: CostModelOptions | None) -> None:
        """Cost every valid (key, action) with ``model``, in every condition it models."""
        self.description = model.describe()
        if not model.applies_nccl_knobs:
            self.mask[:] = False
            self.mask[:, DEFAULT_ACTION] = True
            self.description += ": NCCL's knobs do not apply or were not measured, only the default is valid"
        row_key, row_action = np.nonzero(self.mask)
        k = {name: column[row_key] for name, column in key_columns(self.keys).items()}
        n = len(row_key)
        # Each (key, action) in every condition, condition-major; a model without conditions is
        # asked once (quiet, alone) and its answer holds in all of them.
        conditions = _CONDITIONS if model.models_conditions else _CONDITIONS[:1]
        tile = lambda a: np.tile(a, len(conditions))  # noqa: E731
        batch = make_batch(tile(k["coll"]), tile(k["nbytes"]), tile(k["nranks"]), tile(k["nnodes"]),
                           algo=tile(ACTION_ALGO[row_action]), proto=tile(ACTION_PROTO[row_action]),
                           channels=tile(ACTION_CHANNELS[row_action]), num_pipe_ops=tile(k["num_pipe_ops"]),
                           overlap=np.repeat([overlap for _, overlap in conditions], n),
                           compute_hbm_share=env.dynamics.compute_hbm_share if model.models_conditions else 0.0,
                           congestion=np.repeat([self._congestion(state) for state, _ in conditions], n))
        got = model.evaluate(batch)
        time_us = got.time_us
        p2p = np.flatnonzero(is_p2p(batch.func))
        if not model.costs_p2p and len(p2p):
            # As the first cost tables did: send/recv and AlltoAll take the world's time, quiet and
            # alone, from a model without point-to-point costs (NCCL's); their algo/proto/channels
            # stay that model's.
            world = COST_MODELS[P2P_REFERENCE_MODEL].create(env, options)
            time_us = time_us.copy()
            time_us[p2p] = world.evaluate(batch.subset(p2p).quiet()).time_us

        def every(values: np.ndarray) -> np.ndarray:  # [condition, row] for all of _CONDITIONS
            return np.tile(values.reshape(len(conditions), n), (len(_CONDITIONS) // len(conditions), 1))

        times, latency = every(time_us), every(got.latency_us)[:2]  # latency: the two alone rows
        default = np.flatnonzero(row_action == DEFAULT_ACTION)
        if len(default) and latency[:, default].any():
            latency[:, default] = self._default_latency_at_zero_bytes(model, {name: column[default]
                                                                             for name, column in k.items()})
        for row, (state, overlap) in enumerate(_CONDITIONS):
            self.time_us[row_key, row_action, state, overlap] = times[row]
        latency = np.minimum(latency, times[:2])
        self.latency_us[row_key, row_action, QUIET] = latency[0]
        self.latency_us[row_key, row_action, CONGESTED] = latency[1]
        self.slowdown[row_key, row_action] = every(got.compute_slowdown)[_CONDITIONS.index((QUIET, 1))]
        self.channels[row_key, row_action] = got.channels[:n]
        self.algo[row_key, row_action] = got.algo[:n]
        self.proto[row_key, row_action] = got.proto[:n]
        # A masked action NCCL cannot run stays inf; a valid one must have a finite cost.
        bad = ~np.isfinite(self.time_us[row_key, row_action, QUIET, 0])
        if bad.any():
            self.mask[row_key[bad], row_action[bad]] = False
            self.mask[:, DEFAULT_ACTION] = True

    def _congestion(self, state: int) -> float:
        """Share of NIC bandwidth background traffic takes in network ``state``."""
        return self.congested_share if state == CONGESTED else 0.0

    def _default_latency_at_zero_bytes(self, model: CostModel, keys: dict[str, np.ndarray]) -> np.ndarray:
        """The latency part of NCCL's default action, [quiet/congested, key], as the first cost
        tables took it: the model's latency of the same call at 0 bytes, where NCCL may choose
        another algorithm and protocol than at the call's size. (A forced action takes the latency
        part of the pair it runs; the two agree wherever NCCL's choice does not change with size.)"""
        states, n = (QUIET, CONGESTED), len(keys["coll"])
        batch = make_batch(np.tile(keys["coll"], 2), 0, np.tile(keys["nranks"], 2), np.tile(keys["nnodes"], 2),
                           num_pipe_ops=np.tile(keys["num_pipe_ops"], 2),
                           congestion=np.repeat([self._congestion(state) for state in states], n))
        return model.evaluate(batch).latency_us.reshape(len(states), n)
