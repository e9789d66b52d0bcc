"""The tuning action space: which (algorithm, protocol, channels, chunk size) a call may be given,
and which communicator config (:data:`~dynamiccl.knobs.comm_config.COMM_CHOICES`) a communicator shape is created with.

Call actions (``NUM_CALL_ACTIONS``):

==============  ==================================================================================
0               NCCL's default (the tuner leaves the cost table, channels and chunk alone)
1 .. 168        every (algorithm, protocol) cell of NCCL's cost table x ``CHANNEL_CHOICES``; channels
                0 there means "this algorithm and protocol, with NCCL's own runtime channel count"
169 .. 273      every cell x ``knobs.chunk.CHUNK_CHOICES_BYTES``, with NCCL's channels: the chunk
                size the plugin's ``getChunkSize`` (tuner ABI v6) returns (``ACTION_CHUNK``; 0 = NCCL's)
==============  ==================================================================================

``NUM_ACTIONS`` (169) is the catalogue without chunk sizes: the whole action space of
``TuningEnv(knobs=False)`` and of every policy trained before the knobs (their indices are unchanged).
With ``knobs=True`` the env's space is the ``NUM_CALL_ACTIONS`` call actions followed by
``NUM_COMM_ACTIONS`` communicator actions (``COMM_ACTION_BASE + i`` = ``COMM_CHOICES[i]``).

The channel choices are the counts a tuner can usefully ask for: NCCL caps ``*nChannels`` at the
communicator's channel pool (``nvlsChannels`` for NVLS), fixed at init by ``NCCL_MIN/MAX_NCHANNELS``
or ``ncclConfig_t`` min/maxCTAs (NVIDIA/nccl ``src/enqueue.cc``, ``src/init.cc``), so a count above
the pool is masked rather than silently clipped; 1 and 2 are there for calls whose overlapped
compute wants its SMs back (nccl#689).
"""

from __future__ import annotations

import numpy as np

from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES, KEEP_CHUNK
from dynamiccl.knobs.comm_config import COMM_CHOICES
from dynamiccl.nccl import KEEP, NUM_ALGORITHMS, NUM_PROTOCOLS, Algorithm, Protocol

CHANNEL_CHOICES = (0, 1, 2, 4, 8, 16, 24, 32)  # 0 = NCCL's runtime count for the chosen pair
DEFAULT_ACTION = 0
NUM_ACTIONS = 1 + NUM_ALGORITHMS * NUM_PROTOCOLS * len(CHANNEL_CHOICES)  # without chunk sizes (knobs off)
CHUNK_ACTION_BASE = NUM_ACTIONS
NUM_CALL_ACTIONS = NUM_ACTIONS + NUM_ALGORITHMS * NUM_PROTOCOLS * len(CHUNK_CHOICES_BYTES)
# Communicator actions, after the call actions in TuningEnv(knobs=True)'s one Discrete space.
COMM_ACTION_BASE = NUM_CALL_ACTIONS
NUM_COMM_ACTIONS = len(COMM_CHOICES)
NUM_KNOBS_ACTIONS = NUM_CALL_ACTIONS + NUM_COMM_ACTIONS

# Per call action: algorithm / protocol (-1 = NCCL's), channels (0 = NCCL's), chunk (0 = NCCL's).
ACTION_ALGO = np.full(NUM_CALL_ACTIONS, -1, dtype=np.int64)
ACTION_PROTO = np.full(NUM_CALL_ACTIONS, -1, dtype=np.int64)
ACTION_CHANNELS = np.zeros(NUM_CALL_ACTIONS, dtype=np.int64)
ACTION_CHUNK = np.zeros(NUM_CALL_ACTIONS, dtype=np.int64)
for _a in range(NUM_ALGORITHMS):
    for _p in range(NUM_PROTOCOLS):
        _cell = _a * NUM_PROTOCOLS + _p
        for _c, _ch in enumerate(CHANNEL_CHOICES):
            _i = 1 + _cell * len(CHANNEL_CHOICES) + _c
            ACTION_ALGO[_i], ACTION_PROTO[_i], ACTION_CHANNELS[_i] = _a, _p, _ch
        for _c, _chunk in enumerate(CHUNK_CHOICES_BYTES):
            _i = CHUNK_ACTION_BASE + _cell * len(CHUNK_CHOICES_BYTES) + _c
            ACTION_ALGO[_i], ACTION_PROTO[_i], ACTION_CHUNK[_i] = _a, _p, _chunk
ACTION_CELL = np.where(ACTION_ALGO >= 0, ACTION_ALGO * NUM_PROTOCOLS + ACTION_PROTO, -1)  # flat [algorithm][protocol] cell


def action_index(algo: int, proto: int, channels: int, chunk_bytes: int = 0) -> int:
    """The action for (algorithm, protocol, channels, chunk size); (-1, -1, 0) is the default
    action. ``chunk_bytes`` 0 or -1: NCCL's chunk; another value needs channels 0 (NCCL's).

    Raises:
        ValueError: for a combination outside the catalogue (channels not in ``CHANNEL_CHOICES``,
            a chunk not in ``CHUNK_CHOICES_BYTES``, a chunk with forced channels, or only one of
            algorithm/protocol set).
    """
    chunk_bytes = 0 if chunk_bytes == KEEP_CHUNK else chunk_bytes
    if algo < 0 and proto < 0 and channels == 0 and chunk_bytes == 0:
        return DEFAULT_ACTION
    if not (0 <= algo < NUM_ALGORITHMS and 0 <= proto < NUM_PROTOCOLS) or channels not in CHANNEL_CHOICES \
            or (chunk_bytes and (channels or chunk_bytes not in CHUNK_CHOICES_BYTES)):
        raise ValueError(f"no action for algorithm {algo}, protocol {proto}, channels {channels}, chunk "
                         f"{chunk_bytes} B; expected both set, channels in {CHANNEL_CHOICES}, and a chunk in "
                         f"{CHUNK_CHOICES_BYTES} only with NCCL's channels (0)")
    cell = algo * NUM_PROTOCOLS + proto
    if chunk_bytes:
        return CHUNK_ACTION_BASE + cell * len(CHUNK_CHOICES_BYTES) + CHUNK_CHOICES_BYTES.index(chunk_bytes)
    return 1 + cell * len(CHANNEL_CHOICES) + CHANNEL_CHOICES.index(channels)


def comm_action(choice: int) -> int:
    """The env action (``knobs=True``) that creates a communicator with ``COMM_CHOICES[choice]``.

    Raises:
        ValueError: ``choice`` outside the catalogue.
    """
    if not 0 <= int(choice) < NUM_COMM_ACTIONS:
        raise ValueError(f"communicator choice {choice} is out of range; expected 0 .. {NUM_COMM_ACTIONS - 1}")
    return COMM_ACTION_BASE + int(choice)


def comm_choice(action: int) -> int:
    """The ``COMM_CHOICES`` index an action stands for in the communicator phase: action 0 (NCCL's
    default, so that NCCL-default agents work unchanged) and ``COMM_ACTION_BASE + i`` (-> i).

    Raises:
        ValueError: any other action.
    """
    action = int(action)
    if action == DEFAULT_ACTION:
        return 0
    if not COMM_ACTION_BASE <= action < NUM_KNOBS_ACTIONS:
        raise ValueError(f"action {action} is not a communicator action; expected 0 or "
                         f"{COMM_ACTION_BASE} .. {NUM_KNOBS_ACTIONS - 1}")
    return action - COMM_ACTION_BASE


def describe_comm_action(action: int) -> str:
    """``comm:max_ctas=8`` or ``comm:nccl-default``."""
    return "comm:" + COMM_CHOICES[comm_choice(action)].describe()


def nearest_channels(channels: int) -> int:
    """The largest catalogue channel count <= ``channels`` (0 stays 0: NCCL's)."""
    if channels <= 0:
        return 0
    return max(c for c in CHANNEL_CHOICES if c <= channels)


def describe_action(action: int) -> str:
    """``ring/simple/8ch``, ``tree/ll/nccl-ch``, ``ring/simple/nccl-ch/256KiB`` or ``nccl-default``;
    a communicator action (beyond the call actions) as :func:`describe_comm_action`."""
    action = int(action)
    if action == DEFAULT_ACTION:
        return "nccl-default"
    if action >= NUM_CALL_ACTIONS:
        return describe_comm_action(action)
    algo, proto, ch, chunk = ACTION_ALGO[action], ACTION_PROTO[action], ACTION_CHANNELS[action], ACTION_CHUNK[action]
    channels = f"{ch}ch" if ch else "nccl-ch"
    text = f"{Algorithm(algo).name_lower}/{Protocol(proto).name_lower}/{channels}"
    return f"{text}/{chunk // 1024}KiB" if chunk else text


def action_mask(enabled_cells: np.ndarray, channel_cap: int, nvls_channel_cap: int, *,
                chunks: bool = False, num_actions: int = NUM_ACTIONS) -> np.ndarray:
    """Valid call actions for one call, bool[``num_actions``] (``NUM_ACTIONS``, or ``NUM_CALL_ACTIONS``
    for the catalogue with chunk sizes): its (algorithm, protocol) cell is enabled in NCCL's cost
    table and the channel count fits the communicator's pool (NVLS: its NVLS pool); a chunk-size
    action only where ``chunks`` (the cost model prices chunk sizes, ``CostModel.prices_chunk``).
    The default action is always valid.

    Args:
        enabled_cells: bool[NUM_COST_CELLS] (flat [algorithm][protocol]), True where NCCL's cost is >= 0.
        channel_cap, nvls_channel_cap: the communicator's channel pools (after its config's caps).
    """
    cell = np.clip(ACTION_CELL[:num_actions], 0, None)
    algo = ACTION_ALGO[:num_actions]
    nvls = (algo == Algorithm.NVLS) | (algo == Algorithm.NVLS_TREE)
    cap = np.where(nvls, nvls_channel_cap, channel_cap)
    mask = enabled_cells[cell] & (ACTION_CHANNELS[:num_actions] <= cap)
    if not chunks:
        mask &= ACTION_CHUNK[:num_actions] == 0
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
    if not 0 <= action < NUM_CALL_ACTIONS:
        raise ValueError(f"action {action} is out of range; expected a call action 0 .. {NUM_CALL_ACTIONS - 1}")
    return action


def rule_choice(action: int) -> dict:
    """The ``Rule`` choice fields for a call action: ``{"algorithm", "protocol", "channels", "chunk_bytes"}``.

    Action 0 (NCCL's default) keeps everything: algorithm and protocol None, channels -1, chunk_bytes
    -1. Other actions set algorithm and protocol; their channels 0 ("NCCL's runtime count for that
    pair") becomes -1 (keep NCCL's), and so does chunk 0 (``KEEP_CHUNK``). Use as
    ``Rule(coll=..., min_bytes=..., ..., **rule_choice(a))``.

    Raises:
        TypeError: if ``action`` is not an integer.
        ValueError: if it is outside the call action catalogue.
    """
    action = _checked_action(action)
    if action == DEFAULT_ACTION:
        return {"algorithm": None, "protocol": None, "channels": KEEP, "chunk_bytes": KEEP_CHUNK}
    channels, chunk = int(ACTION_CHANNELS[action]), int(ACTION_CHUNK[action])
    return {"algorithm": Algorithm(int(ACTION_ALGO[action])),
            "protocol": Protocol(int(ACTION_PROTO[action])),
            "channels": channels if channels else KEEP, "chunk_bytes": chunk if chunk else KEEP_CHUNK}
