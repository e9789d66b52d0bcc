"""The tuning action space: which (algorithm, protocol, channels) a call may be given.

Action 0 is "NCCL's default" (the tuner leaves the cost table and channels alone). Actions 1..N are
every (algorithm, protocol) cell of NCCL's cost table crossed with ``CHANNEL_CHOICES``; channels 0
there means "this algorithm and protocol, with NCCL's own runtime channel count for it".

The channel choices are the counts a tuner can usefully ask for: NCCL caps ``*nChannels`` at the
communicator's channel pool (``nvlsChannels`` for NVLS), fixed at init by ``NCCL_MIN/MAX_NCHANNELS``
or ``ncclConfig_t`` min/maxCTAs (NVIDIA/nccl ``src/enqueue.cc``, ``src/init.cc``), so a count above
the pool is masked rather than silently clipped; 1 and 2 are there for calls whose overlapped
compute wants its SMs back (nccl#689).
"""

from __future__ import annotations

import numpy as np

from dynamiccl.nccl import KEEP, NUM_ALGORITHMS, NUM_PROTOCOLS, Algorithm, Protocol

CHANNEL_CHOICES = (0, 1, 2, 4, 8, 16, 24, 32)  # 0 = NCCL's runtime count for the chosen pair
DEFAULT_ACTION = 0
NUM_ACTIONS = 1 + NUM_ALGORITHMS * NUM_PROTOCOLS * len(CHANNEL_CHOICES)

# Per action: algorithm / protocol (-1 = NCCL's) and channels (0 = NCCL's).
ACTION_ALGO = np.full(NUM_ACTIONS, -1, dtype=np.int64)
ACTION_PROTO = np.full(NUM_ACTIONS, -1, dtype=np.int64)
ACTION_CHANNELS = np.zeros(NUM_ACTIONS, dtype=np.int64)
for _a in range(NUM_ALGORITHMS):
    for _p in range(NUM_PROTOCOLS):
        for _c, _ch in enumerate(CHANNEL_CHOICES):
            _i = 1 + (_a * NUM_PROTOCOLS + _p) * len(CHANNEL_CHOICES) + _c
            ACTION_ALGO[_i], ACTION_PROTO[_i], ACTION_CHANNELS[_i] = _a, _p, _ch
ACTION_CELL = np.where(ACTION_ALGO >= 0, ACTION_ALGO * NUM_PROTOCOLS + ACTION_PROTO, -1)  # flat [algorithm][protocol] cell


def action_index(algo: int, proto: int, channels: int) -> int:
    """The action for (algorithm, protocol, channels); (-1, -1, 0) is the default action.

    Raises:
        ValueError: for a combination outside the catalogue (channels not in ``CHANNEL_CHOICES``,
            or only one of algorithm/protocol set).
    """
    if algo < 0 and proto < 0 and channels == 0:
        return DEFAULT_ACTION
    if not (0 <= algo < NUM_ALGORITHMS and 0 <= proto < NUM_PROTOCOLS) or channels not in CHANNEL_CHOICES:
        raise ValueError(f"no action for algorithm {algo}, protocol {proto}, channels {channels}; "
                         f"expected both set and channels in {CHANNEL_CHOICES}")
    return 1 + (algo * NUM_PROTOCOLS + proto) * len(CHANNEL_CHOICES) + CHANNEL_CHOICES.index(channels)


def nearest_channels(channels: int) -> int:
    """The largest catalogue channel count <= ``channels`` (0 stays 0: NCCL's)."""
    if channels <= 0:
        return 0
    return max(c for c in CHANNEL_CHOICES if c <= channels)


def describe_action(action: int) -> str:
    """``ring/simple/8ch``, ``tree/ll/nccl-ch`` or ``nccl-default``."""
    action = int(action)
    if action == DEFAULT_ACTION:
        return "nccl-default"
    algo, proto, ch = ACTION_ALGO[action], ACTION_PROTO[action], ACTION_CHANNELS[action]
    channels = f"{ch}ch" if ch else "nccl-ch"
    return f"{Algorithm(algo).name_lower}/{Protocol(proto).name_lower}/{channels}"


def action_mask(enabled_cells: np.ndarray, channel_cap: int, nvls_channel_cap: int) -> np.ndarray:
    """Valid actions for one call: its (algorithm, protocol) cell is enabled in NCCL's cost table
    and the channel count fits the communicator's pool (NVLS: its NVLS pool). The default action is
    always valid.

    Args:
        enabled_cells: bool[NUM_COST_CELLS] (flat [algorithm][protocol]), True where NCCL's cost is >= 0.
        channel_cap, nvls_channel_cap: the communicator's channel pools.
    """
    cell = np.clip(ACTION_CELL, 0, None)
    nvls = (ACTION_ALGO == Algorithm.NVLS) | (ACTION_ALGO == Algorithm.NVLS_TREE)
    cap = np.where(nvls, nvls_channel_cap, channel_cap)
    mask = enabled_cells[cell] & (ACTION_CHANNELS <= cap)
    mask[DEFAULT_ACTION] = True
    return mask


# --- the best static action per key (the greedy search start and the static-best baseline) ---------

class ActionCostTotals:
    """Per key (any hashable: the keys a static table groups calls by), the summed cost (µs) of
    every action over the calls added, and the action that minimises it: the static choice per key
    with the least total cost along the trajectory the costs were taken on.

    ``calls`` counts the calls added per key. An action invalid at any call of a key has cost inf
    there, so its total is inf and it is never the key's choice.
    """

    def __init__(self) -> None:
        self.totals: dict = {}
        self.calls: dict = {}

    def add(self, key, costs: np.ndarray) -> None:
        """Add one call's per-action costs (float[NUM_ACTIONS], µs; inf where invalid) to ``key``."""
        self.totals[key] = self.totals.get(key, 0.0) + costs
        self.calls[key] = self.calls.get(key, 0) + 1

    def best(self) -> dict:
        """Per key added, the action with the least total cost (a total that is not finite counts
        as inf; ties: the lowest action, so NCCL's default where nothing is cheaper)."""
        return {key: int(np.argmin(np.where(np.isfinite(total), total, np.inf)))
                for key, total in self.totals.items()}

# --- actions -> decision-table rule fields (the table package and the search both write rules) ---

def _checked_action(action) -> int:
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
        raise TypeError(f"an action is an integer, got {type(action).__name__} {action!r}")
    action = int(action)
    if not 0 <= action < NUM_ACTIONS:
        raise ValueError(f"action {action} is out of range; expected 0 .. {NUM_ACTIONS - 1}")
    return action


def rule_choice(action: int) -> dict:
    """The ``Rule`` choice fields for an action: ``{"algorithm", "protocol", "channels"}``.

    Action 0 (NCCL's default) keeps everything: algorithm and protocol None, channels -1. Other
    actions set algorithm and protocol; their channels 0 ("NCCL's runtime count for that pair")
    becomes -1 (keep NCCL's). Use as ``Rule(coll=..., min_bytes=..., ..., **rule_choice(a))``.

    Raises:
        TypeError: if ``action`` is not an integer.
        ValueError: if it is outside the action catalogue.
    """
    action = _checked_action(action)
    if action == DEFAULT_ACTION:
        return {"algorithm": None, "protocol": None, "channels": KEEP}
    channels = int(ACTION_CHANNELS[action])
    return {"algorithm": Algorithm(int(ACTION_ALGO[action])),
            "protocol": Protocol(int(ACTION_PROTO[action])),
            "channels": channels if channels else KEEP}
