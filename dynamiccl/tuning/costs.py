"""What every action costs for every distinct call of a step: the table the replay looks up.

A step repeats few distinct calls (a 405B step has 17,000 tunable calls but 19 distinct ones), and
the conditions the world simulator distinguishes are few: the network quiet or congested (the
``[dynamics]`` Markov process has two states) and compute running beside the call or not. So the
cost of every (distinct call, action, congestion state, overlap state) is evaluated once, in one
vectorized batch, and the replay only indexes it. Run-to-run noise is a per-call factor the
replay draws and multiplies in.

Cost models (``model``):

- ``world`` (default): the calibrated simulator (:class:`~dynamiccl.costmodel.world.WorldModel`),
  with compute slowdown from the SMs the channels hold and HBM sharing.
- ``nccl``: NCCL's own model; it ignores channels, overlap and congestion (slowdown 1).
- ``live``: real collectives on this machine (:class:`~dynamiccl.costmodel.live.LiveCostModel`),
  one measurement per (distinct call, valid action); conditions are whatever the machine has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamiccl.costmodel.batch import make_batch
from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.costmodel.world import WorldModel, WorldParams
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.nccl import FUNC_OP, NUM_COST_CELLS, TUNABLE_FUNCS, Algorithm, Func, Protocol
from dynamiccl.tuning.actions import (
    ACTION_ALGO, ACTION_CHANNELS, ACTION_PROTO, DEFAULT_ACTION, NUM_ACTIONS, action_mask,
)
from dynamiccl.tuning.program import StepProgram

COST_MODELS = ("world", "nccl", "live")
QUIET, CONGESTED = 0, 1


@dataclass
class CostTable:
    """Costs of every action for the distinct calls of one step on one environment spec.

    ``keys[k]`` = (func, nbytes, nranks, nnodes, pipe_ops); ``call_key[c]`` maps a call to its key.
    Arrays by key and action (``NUM_ACTIONS``): ``mask`` (valid: NCCL enables the pair and the
    channels fit the pool; only the default for calls NCCL's tuner never sees), ``time_us``
    [K, A, congestion 0/1, overlap 0/1] (inf where masked), ``latency_us`` [K, A, congestion] (the
    size-independent part, which concurrent calls do not share), ``slowdown`` [K, A] (factor on
    compute running beside the call), ``channels`` [K, A] (channels the call really runs on),
    ``algo``/``proto`` [K, A] (the pair it really runs), and ``nccl_cost`` [K, cells] (NCCL's cost
    table, -1 where disabled, what a tuner plugin is handed).
    """

    model: str
    description: str
    congested_share: float
    keys: list[tuple[int, int, int, int, int]]
    call_key: list[int]
    mask: np.ndarray
    time_us: np.ndarray
    latency_us: np.ndarray
    slowdown: np.ndarray
    channels: np.ndarray
    algo: np.ndarray
    proto: np.ndarray
    nccl_cost: np.ndarray

    @classmethod
    def build(cls, program: StepProgram, env: EnvSpec, model: str = "world",
              params: WorldParams | None = None, live=None) -> "CostTable":
        """Evaluate every (distinct call, action, condition) of ``program`` on ``env``.

        Raises:
            InputError: an unknown ``model``, or a call whose ranks per node exceed the spec's
                GPUs per node (the trace was made for bigger nodes).
        """
        if model not in COST_MODELS:
            raise InputError(None, "model", f"unknown cost model {model!r}; expected one of {', '.join(COST_MODELS)}")
        key_of: dict[tuple, int] = {}
        call_key = []
        for c in range(program.num_calls):
            key = (program.call_func[c], program.call_nbytes[c], program.call_nranks[c],
                   program.call_nnodes[c], program.call_pipe_ops[c])
            call_key.append(key_of.setdefault(key, len(key_of)))
        keys = list(key_of)
        for func, _, nranks, nnodes, _ in keys:
            if -(-nranks // nnodes) > env.gpus_per_node:
                raise InputError(program.source, "groups",
                                 f"a {FUNC_OP[Func(func)]} over {nranks} ranks on {nnodes} node(s) needs "
                                 f"{-(-nranks // nnodes)} GPUs per node; {env.name} has {env.gpus_per_node} "
                                 "(generate the trace for this cluster's node size)")
        k = np.array(keys, dtype=np.int64).reshape(-1, 5)
        nccl = NcclModel(env)
        base = make_batch(k[:, 0], k[:, 1], k[:, 2], k[:, 3], num_pipe_ops=k[:, 4])
        index = nccl.topology_index(base)
        nccl_cost = nccl.cost_table(base, index).reshape(len(keys), NUM_COST_CELLS)
        tunable = np.isin(k[:, 0], [int(f) for f in TUNABLE_FUNCS])
        mask = np.zeros((len(keys), NUM_ACTIONS), dtype=bool)
        for i in range(len(keys)):
            if tunable[i]:
                mask[i] = action_mask(nccl_cost[i] >= 0, int(index.comm_channels[index.codes[i]]),
                                      int(index.nvls_channels[index.codes[i]]))
            else:
                mask[i, DEFAULT_ACTION] = True
        share = env.dynamics.congested_share if env.dynamics.congestion == "markov" else 0.0
        table = cls(model=model, description="", congested_share=share, keys=keys, call_key=call_key,
                    mask=mask, time_us=np.full((len(keys), NUM_ACTIONS, 2, 2), np.inf),
                    latency_us=np.full((len(keys), NUM_ACTIONS, 2), np.inf),
                    slowdown=np.ones((len(keys), NUM_ACTIONS)),
                    channels=np.zeros((len(keys), NUM_ACTIONS), dtype=np.int64),
                    algo=np.full((len(keys), NUM_ACTIONS), -1, dtype=np.int64),
                    proto=np.full((len(keys), NUM_ACTIONS), -1, dtype=np.int64), nccl_cost=nccl_cost)
        if model == "live":
            table._fill_live(env, live)
        else:
            table._fill_model(env, model, params, nccl)
        return table

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

    def _fill_model(self, env: EnvSpec, model: str, params, nccl: NcclModel) -> None:
        row_key, row_action = np.nonzero(self.mask)
        k = np.array(self.keys, dtype=np.int64).reshape(-1, 5)[row_key]
        n = len(row_key)
        # Rows: each (key, action) under (quiet, congested) x (no overlap, overlap), then latency rows.
        cong = np.repeat([0.0, self.congested_share, 0.0, self.congested_share], n)
        over = np.repeat([0.0, 0.0, 1.0, 1.0], n)
        tile = lambda a: np.tile(a, 4)  # noqa: E731
        hbm = env.dynamics.compute_hbm_share
        if model == "world":
            world = WorldModel(env, params)
            self.description = world.describe()
            batch = make_batch(tile(k[:, 0]), tile(k[:, 1]), tile(k[:, 2]), tile(k[:, 3]),
                               algo=tile(ACTION_ALGO[row_action]), proto=tile(ACTION_PROTO[row_action]),
                               channels=tile(ACTION_CHANNELS[row_action]), num_pipe_ops=tile(k[:, 4]),
                               overlap=over, compute_hbm_share=hbm, congestion=cong)
            got = world.evaluate(batch)
            lat_batch = make_batch(np.tile(k[:, 0], 2), 0, np.tile(k[:, 2], 2), np.tile(k[:, 3], 2),
                                   algo=np.tile(ACTION_ALGO[row_action], 2),
                                   proto=np.tile(ACTION_PROTO[row_action], 2),
                                   channels=np.tile(ACTION_CHANNELS[row_action], 2), num_pipe_ops=np.tile(k[:, 4], 2),
                                   congestion=np.repeat([0.0, self.congested_share], n))
            lat = world.evaluate(lat_batch)["time_us"]
            slow = got["compute_slowdown"][2 * n:3 * n]
        else:  # NCCL's model: no channels, overlap or congestion effects
            self.description = nccl.describe()
            batch = make_batch(tile(k[:, 0]), tile(k[:, 1]), tile(k[:, 2]), tile(k[:, 3]),
                               algo=tile(ACTION_ALGO[row_action]), proto=tile(ACTION_PROTO[row_action]),
                               channels=tile(ACTION_CHANNELS[row_action]), num_pipe_ops=tile(k[:, 4]))
            got = nccl.choose(batch)
            p2p = ~np.isin(tile(k[:, 0]), [int(f) for f in TUNABLE_FUNCS])
            if p2p.any():  # NCCL's model has no send/recv cost: the world's, quiet and alone
                world = WorldModel(env, params)
                got["time_us"] = np.where(p2p, world.evaluate(batch)["time_us"], got["time_us"])
            lat = np.zeros(2 * n)
            slow = np.ones(n)
        times = got["time_us"].reshape(4, n)
        self.time_us[row_key, row_action, 0, 0] = times[0]
        self.time_us[row_key, row_action, 1, 0] = times[1]
        self.time_us[row_key, row_action, 0, 1] = times[2]
        self.time_us[row_key, row_action, 1, 1] = times[3]
        lat = np.minimum(lat.reshape(2, n), times[:2])
        self.latency_us[row_key, row_action, 0] = lat[0]
        self.latency_us[row_key, row_action, 1] = lat[1]
        self.slowdown[row_key, row_action] = slow
        self.channels[row_key, row_action] = got["channels"][:n]
        self.algo[row_key, row_action] = got["algo"][:n]
        self.proto[row_key, row_action] = got["proto"][:n]
        # A masked action NCCL cannot run stays inf; a valid one must have a finite cost.
        bad = ~np.isfinite(self.time_us[row_key, row_action, 0, 0])
        if bad.any():
            self.mask[row_key[bad], row_action[bad]] = False
            self.mask[:, DEFAULT_ACTION] = True

    def _fill_live(self, env: EnvSpec, live) -> None:
        """Measure NCCL's default for every key, then every other valid action where the backend
        applies NCCL's knobs (NCCL on GPUs). On gloo the knobs do not exist, so only the default
        stays valid: measuring other "actions" there would only re-measure the default."""
        from dynamiccl.costmodel.live import LiveCostModel, LiveQuery

        live = live or LiveCostModel()
        self.description = "live measurement (torch.distributed)"

        def query(key: int, action: int) -> LiveQuery:
            func, nbytes = self.keys[key][0], self.keys[key][1]
            a, p, ch = ACTION_ALGO[action], ACTION_PROTO[action], ACTION_CHANNELS[action]
            return LiveQuery(coll=FUNC_OP[Func(func)] if func != Func.SEND else "sendrecv", size_bytes=int(nbytes),
                             algo=Algorithm(a) if a >= 0 else None, proto=Protocol(p) if p >= 0 else None,
                             channels=int(ch) if ch > 0 else None)

        def store(key: int, action: int, result) -> None:
            self.time_us[key, action] = result.time_us
            self.latency_us[key, action] = 0.0
            self.algo[key, action], self.proto[key, action] = ACTION_ALGO[action], ACTION_PROTO[action]
            self.channels[key, action] = ACTION_CHANNELS[action]

        defaults = live.measure([query(k, DEFAULT_ACTION) for k in range(len(self.keys))], progress=True)
        for key, result in enumerate(defaults):
            store(key, DEFAULT_ACTION, result)
        if not all(r.config_applied for r in defaults):
            self.mask[:] = False
            self.mask[:, DEFAULT_ACTION] = True
            self.description += f" on {defaults[0].backend}: NCCL's knobs do not apply, only the default is valid"
            return
        self.description += f" on {defaults[0].backend}"
        row_key, row_action = np.nonzero(self.mask)
        others = [(k, a) for k, a in zip(row_key, row_action) if a != DEFAULT_ACTION]
        results = live.measure([query(k, a) for k, a in others], progress=True)
        for (key, action), result in zip(others, results):
            store(key, action, result)
