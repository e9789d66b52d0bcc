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

With the knobs (``knobs=True``) every distinct call is also costed under each communicator config
(:data:`~dynamiccl.knobs.comm_config.COMM_CHOICES`) its communicator may be created with
(``comm_choice_mask`` for its NCCL version, NVLS and NVLink domain): one row per (call, config),
the default config's rows first and identical to the table without knobs. A config's channel caps
mask the channel choices above the capped pool (``NcclModel.topology_index``: ``comm_pool`` / ``nvls_pool``);
the chunk-size actions are masked unless the model prices chunk sizes (``prices_chunk``; the world
and NCCL's model do not: ``dynamiccl.knobs.KNOBS["chunk_size"].masked_why``). Every row is still
evaluated in one batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from dynamiccl.costmodel import COST_MODELS, DEFAULT_COST_MODEL, CostModel, CostModelOptions, cost_model_entry
from dynamiccl.costmodel.registry import P2P_REFERENCE_MODEL
from dynamiccl.callkey import CallKey
from dynamiccl.costmodel.batch import is_p2p, make_batch
from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.costmodel.world import PARAMS_ENV
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.knobs.comm_config import COMM_CHOICES, CommConfig, batch_columns, comm_choice_mask
from dynamiccl.nccl import FUNC_OP, NUM_COST_CELLS, TUNABLE_FUNCS
from dynamiccl.tuning.actions import (
    ACTION_ALGO, ACTION_CHANNELS, ACTION_CHUNK, ACTION_PROTO, DEFAULT_ACTION, NUM_ACTIONS, NUM_CALL_ACTIONS,
    action_mask,
)
from dynamiccl.tuning.observation import key_columns
from dynamiccl.tuning.program import StepProgram

QUIET, CONGESTED = 0, 1
# The conditions a call is costed in, as (network state, compute overlapped 0/1), in the order the
# rows of the evaluated batch take them; the first two are the call alone.
_CONDITIONS = ((QUIET, 0), (CONGESTED, 0), (QUIET, 1), (CONGESTED, 1))


def require_node_fit(keys: Iterable[CallKey], env: EnvSpec, source: str) -> None:
    """Refuse a call of ``keys`` whose ranks per node exceed ``env``'s GPUs per node (the trace was
    made for bigger nodes).

    Raises:
        InputError: naming ``source`` and the first such call.
    """
    for key in keys:
        ranks_per_node = -(-key.nranks // key.nnodes)
        if ranks_per_node > env.gpus_per_node:
            raise InputError(source, "groups",
                             f"a {FUNC_OP[key.coll]} over {key.nranks} ranks on {key.nnodes} node(s) needs "
                             f"{ranks_per_node} GPUs per node; {env.name} has {env.gpus_per_node} "
                             "(generate the trace for this cluster's node size)")


@dataclass
class CostTable:
    """Costs of every action for the distinct calls of one step on one environment spec.

    ``keys[k]`` is a :class:`~dynamiccl.callkey.CallKey` without position (a call's cost does not
    depend on where it sits in the step); ``call_row[c]`` maps call ``c`` to its key's row ``k``
    under NCCL's default communicator config. With the knobs a key has a row per communicator config
    it may get: ``configs`` (the catalogue, index 0 = NCCL's default), ``row_config[k]`` (the row's
    config index) and ``config_row[k, i]`` (the row of the same key under config ``i``; -1: not
    costed, the config does not apply to it); :meth:`rows_under` gives a step's rows for per-call
    configs. Without the knobs there is one config and ``config_row[k, 0] == k``.
    Arrays by row and action (``num_actions``: ``NUM_ACTIONS``, or ``NUM_CALL_ACTIONS`` with the
    knobs): ``mask`` (valid: NCCL enables the pair and the
    channels fit the pool; only the default for calls NCCL's tuner never sees), ``time_us``
    [K, A, congestion 0/1, overlap 0/1] (inf where masked), ``latency_us`` [K, A, congestion] (the
    size-independent part, which concurrent calls do not share), ``slowdown`` [K, A] (factor on
    compute running beside the call), ``channels`` [K, A] (channels the call really runs on),
    ``algo``/``proto`` [K, A] (the pair it really runs), and ``nccl_cost`` [K, cells] (NCCL's cost
    table, -1 where disabled, what a tuner plugin is handed). ``copy_engines`` [K] (bool; None: none):
    the row runs on the copy engines, holding no SMs (a zero-CTA communicator's copy collective), so
    it never waits for a compute kernel to free SMs. ``options``: the model's
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
    configs: tuple[CommConfig, ...] = (CommConfig(),)
    row_config: np.ndarray | None = None
    config_row: np.ndarray | None = None
    copy_engines: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.row_config is None:
            self.row_config = np.zeros(len(self.keys), dtype=np.int64)
        if self.config_row is None:
            self.config_row = np.arange(len(self.keys), dtype=np.int64)[:, None]

    @property
    def num_actions(self) -> int:
        """Call actions per row: ``NUM_ACTIONS``, or ``NUM_CALL_ACTIONS`` with the knobs."""
        return int(self.mask.shape[1])

    @property
    def knobs(self) -> bool:
        """Whether the table costs communicator configs and chunk-size actions."""
        return self.num_actions == NUM_CALL_ACTIONS

    def rows_under(self, call_config: Sequence[int]) -> list[int]:
        """Per call of the step, its row when its communicator has config ``call_config[c]`` (an
        index into ``configs``); a config that does not apply to the call's key (not costed) leaves
        it on its default row, which is what NCCL runs then (e.g. an NVLS cap on a call without NVLS)."""
        rows = []
        config_row = self.config_row
        for base, config in zip(self.call_row, call_config):
            row = int(config_row[base, config]) if config else -1
            rows.append(row if row >= 0 else base)
        return rows

    @property
    def source(self) -> tuple:
        """What answered, as a cache key: (model name, its options, the world parameters file in effect
        -- ``DYNAMICCL_WORLD_PARAMS`` / ``--params`` when the table was built, None for the shipped ones)."""
        return self.model, self.options, self.world_params_file

    @classmethod
    def build(cls, program: StepProgram, env: EnvSpec, model: str = DEFAULT_COST_MODEL,
              options: CostModelOptions | None = None, knobs: bool = False) -> "CostTable":
        """Evaluate every (distinct call, action, condition) of ``program`` on ``env`` with the
        registered cost model ``model`` (made with ``options``); with ``knobs``, also under every
        communicator config each call may get and with the chunk-size actions (module docstring).

        Raises:
            InputError: an unknown ``model``, or a call whose ranks per node exceed the spec's
                GPUs per node (the trace was made for bigger nodes).
        """
        entry = cost_model_entry(model)
        row_of: dict[CallKey, int] = {}
        call_row = [row_of.setdefault(key.cost_key(), len(row_of)) for key in program.call_key]
        keys = list(row_of)
        require_node_fit(keys, env, program.source)
        cost_model = entry.create(env, options)
        nccl = NcclModel(env)
        k = key_columns(keys)
        index = nccl.topology_index(make_batch(k["coll"], k["nbytes"], k["nranks"], k["nnodes"],
                                               num_pipe_ops=k["num_pipe_ops"]))
        configs = COMM_CHOICES if knobs else (CommConfig(),)
        # Rows: every key under NCCL's default config (today's table), then each key under each
        # other config its communicator may be created with.
        row_key, row_config = list(range(len(keys))), [0] * len(keys)
        config_row = np.full((len(keys), len(configs)), -1, dtype=np.int64)
        config_row[:, 0] = np.arange(len(keys))
        # A model timed on default communicators (live, measured) cannot price other settings.
        if knobs and getattr(cost_model, "prices_communicator_config", False):
            for i, key in enumerate(keys):
                topology = index.topologies[index.codes[i]]
                allowed = comm_choice_mask(env.nccl_version, topology.nvls is not None, key.nnodes == 1,
                                           env.symmetric_memory)
                for c in range(1, len(configs)):
                    if allowed[c]:
                        config_row[i, c] = len(row_key)
                        row_key.append(i)
                        row_config.append(c)
        row_key_array = np.asarray(row_key, dtype=np.int64)
        row_config_array = np.asarray(row_config, dtype=np.int64)
        config_row = config_row[row_key_array]
        rows = [keys[i] for i in row_key]
        k = {name: column[row_key_array] for name, column in k.items()}
        columns = _config_columns(configs, row_config_array, env.symmetric_memory)
        base = make_batch(k["coll"], k["nbytes"], k["nranks"], k["nnodes"], num_pipe_ops=k["num_pipe_ops"], **columns)
        index = nccl.topology_index(base)
        nccl_cost = nccl.cost_table(base, index).reshape(len(rows), NUM_COST_CELLS)
        tunable = np.isin(k["coll"], [int(f) for f in TUNABLE_FUNCS])
        num_actions = NUM_CALL_ACTIONS if knobs else NUM_ACTIONS
        chunks = bool(getattr(cost_model, "prices_chunk", False))
        mask = np.zeros((len(rows), num_actions), dtype=bool)
        comm_channels = index.comm_channels[index.codes]
        nvls_channels = index.nvls_channels[index.codes]
        for i in range(len(rows)):
            if tunable[i]:
                # The pools are the row's communicator's: NCCL's model bounds them by the config's caps.
                mask[i] = action_mask(nccl_cost[i] >= 0, int(comm_channels[i]), int(nvls_channels[i]), chunks=chunks,
                                      num_actions=num_actions)
            else:
                mask[i, DEFAULT_ACTION] = True
        share = env.dynamics.congested_share if env.dynamics.congestion == "markov" else 0.0
        table = cls(model=model, description="", congested_share=share, keys=rows, call_row=call_row,
                    mask=mask, time_us=np.full((len(rows), num_actions, 2, 2), np.inf),
                    latency_us=np.full((len(rows), num_actions, 2), np.inf),
                    slowdown=np.ones((len(rows), num_actions)),
                    channels=np.zeros((len(rows), num_actions), dtype=np.int64),
                    algo=np.full((len(rows), num_actions), -1, dtype=np.int64),
                    proto=np.full((len(rows), num_actions), -1, dtype=np.int64), nccl_cost=nccl_cost,
                    options=options or CostModelOptions(), world_params_file=os.environ.get(PARAMS_ENV) or None,
                    configs=tuple(configs), row_config=row_config_array, config_row=config_row)
        on_copy_engines = getattr(cost_model, "on_copy_engines", None)
        if on_copy_engines is not None and base.zero_cta.any():
            table.copy_engines = np.asarray(on_copy_engines(base), dtype=bool)
        table._fill(cost_model, env, options)
        return table

    def call_masks(self, calls: Sequence[int], call_row: Sequence[int] | None = None) -> np.ndarray:
        """The valid actions of each of ``calls`` (call ids of the step), [len(calls), num_actions],
        on the rows ``call_row`` (per call of the step; default ``self.call_row``: NCCL's default configs)."""
        rows = self.call_row if call_row is None else call_row
        return self.mask[np.asarray(rows, dtype=np.int64)[np.asarray(calls, dtype=np.int64)]]

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
        columns = _config_columns(self.configs, self.row_config[row_key], env.symmetric_memory)
        batch = make_batch(tile(k["coll"]), tile(k["nbytes"]), tile(k["nranks"]), tile(k["nnodes"]),
                           algo=tile(ACTION_ALGO[row_action]), proto=tile(ACTION_PROTO[row_action]),
                           channels=tile(ACTION_CHANNELS[row_action]), num_pipe_ops=tile(k["num_pipe_ops"]),
                           overlap=np.repeat([overlap for _, overlap in conditions], n),
                           compute_hbm_share=env.dynamics.compute_hbm_share if model.models_conditions else 0.0,
                           congestion=np.repeat([self._congestion(state) for state, _ in conditions], n),
                           chunk_bytes=tile(ACTION_CHUNK[row_action]),
                           **{name: tile(column) for name, column in columns.items()})
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
            latency[:, default] = self._default_latency_at_zero_bytes(
                model, {name: column[default] for name, column in k.items()},
                _config_columns(self.configs, self.row_config[row_key[default]], env.symmetric_memory))
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

    def _default_latency_at_zero_bytes(self, model: CostModel, keys: dict[str, np.ndarray],
                                       columns: dict[str, np.ndarray]) -> np.ndarray:
        """The latency part of NCCL's default action, [quiet/congested, key], as the first cost
        tables took it: the model's latency of the same call at 0 bytes, where NCCL may choose
        another algorithm and protocol than at the call's size. (A forced action takes the latency
        part of the pair it runs; the two agree wherever NCCL's choice does not change with size.)"""
        states, n = (QUIET, CONGESTED), len(keys["coll"])
        batch = make_batch(np.tile(keys["coll"], 2), 0, np.tile(keys["nranks"], 2), np.tile(keys["nnodes"], 2),
                           num_pipe_ops=np.tile(keys["num_pipe_ops"], 2),
                           congestion=np.repeat([self._congestion(state) for state in states], n),
                           **{name: np.tile(column, 2) for name, column in columns.items()})
        return model.evaluate(batch).latency_us.reshape(len(states), n)


def _config_columns(configs: Sequence[CommConfig], row_config: np.ndarray, symmetric_memory: bool) -> dict:
    """The cost-batch columns (``knobs.comm_config.batch_columns``) of rows whose communicators have
    ``configs[row_config[i]]``, as arrays."""
    per_config = [batch_columns(config, symmetric_memory) for config in configs]
    return {name: np.asarray([values[name] for values in per_config])[row_config] for name in per_config[0]}
