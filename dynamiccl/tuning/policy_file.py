"""A trained policy as a file that is safe to load from anywhere: JSON and plain numpy arrays, no pickle.

A policy file is a ``.zip`` with exactly two members:

``policy.json``
    ``{"format": "dynamiccl-policy", "version": 1, "obs_size": 11, "num_actions": 169,
    "observation": [names of the observation entries], "hidden_sizes": [64, 64],
    "activation": "tanh" | "relu", "provenance": {...}}``; a policy trained with the knobs
    (``TuningEnv(knobs=True)``) has ``"obs_size": 23, "num_actions": 285`` and the knobs
    observation's names (the layout says which space it was trained in). ``provenance`` is free-form JSON (what
    produced the policy: config, seed, timesteps, cases...).
``weights.npz``
    written by ``np.savez``; for each hidden layer ``i`` (0-based) ``hidden.i.weight``
    ``[out, in]`` and ``hidden.i.bias`` ``[out]``, then ``action.weight`` ``[num_actions, last]`` and
    ``action.bias`` ``[num_actions]``; float32 or float64 (PyTorch's ``nn.Linear`` layout).

The network is SB3's actor for a ``Box`` observation with ``FlattenExtractor``: ``x = obs``; for
every hidden layer ``x = act(W x + b)``; ``logits = W_a x + b_a``. ``PolicyNetwork.decide`` takes the
masked argmax of the logits, which is what ``MaskablePPO.predict(..., deterministic=True)`` returns.

Loading never unpickles anything and never trusts a size it has not checked: member sizes are
capped before they are read, every ``.npy`` header in ``weights.npz`` is checked against the shape
``policy.json`` implies before its data is read (``allow_pickle=False``), and every number must be
finite. Any problem raises :class:`~dynamiccl.errors.InputError` naming the file and the field.
SB3's own ``.zip`` checkpoints, by contrast, are pickles: load those only from your own runs.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynamiccl import schema
from dynamiccl.atomic import write_with
from dynamiccl.errors import InputError
from dynamiccl.tuning.actions import NUM_ACTIONS, NUM_KNOBS_ACTIONS
from dynamiccl.tuning.observation import KNOBS_OBS_NAMES, KNOBS_OBS_SIZE, OBS_NAMES, OBS_SIZE

FORMAT = "dynamiccl-policy"
VERSION = 1
ACTIVATIONS = ("tanh", "relu")
POLICY_JSON = "policy.json"
WEIGHTS_NPZ = "weights.npz"

# Limits that keep a hostile file from exhausting memory before it is rejected.
MAX_JSON_BYTES = 4 << 20          # policy.json, uncompressed
MAX_WEIGHTS_BYTES = 512 << 20     # weights.npz, uncompressed
MAX_HIDDEN_LAYERS = 32
MAX_LAYER_SIZE = 1 << 16
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: same network + provenance -> same bytes


@dataclass(frozen=True, eq=False)
class PolicyNetwork:
    """A deterministic masked-argmax policy over :mod:`dynamiccl.tuning.observation` observations.

    Attributes:
        hidden: per hidden layer, ``(weight [out, in], bias [out])`` as float64.
        action: ``(weight [num_actions, last], bias [num_actions])`` as float64.
        activation: ``"tanh"`` or ``"relu"``, applied after every hidden layer.
        provenance: what produced the policy (free-form JSON object).
        knobs: trained in ``TuningEnv(knobs=True)`` (its observation and action spaces).
    """

    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]
    action: tuple[np.ndarray, np.ndarray]
    activation: str = "tanh"
    provenance: dict = field(default_factory=dict)
    knobs: bool = False

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        expected = self._expected_shapes(self.hidden_sizes, self.knobs)
        got = self._named_arrays()
        for name, shape in expected.items():
            if got[name].shape != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {got[name].shape}")

    # --- shape bookkeeping ---

    @property
    def obs_size(self) -> int:
        return KNOBS_OBS_SIZE if self.knobs else OBS_SIZE

    @property
    def num_actions(self) -> int:
        return NUM_KNOBS_ACTIONS if self.knobs else NUM_ACTIONS

    @property
    def hidden_sizes(self) -> list[int]:
        return [int(w.shape[0]) for w, _ in self.hidden]

    @staticmethod
    def _expected_shapes(hidden_sizes: list[int], knobs: bool = False) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        last = KNOBS_OBS_SIZE if knobs else OBS_SIZE
        num_actions = NUM_KNOBS_ACTIONS if knobs else NUM_ACTIONS
        for i, size in enumerate(hidden_sizes):
            shapes[f"hidden.{i}.weight"] = (size, last)
            shapes[f"hidden.{i}.bias"] = (size,)
            last = size
        shapes["action.weight"] = (num_actions, last)
        shapes["action.bias"] = (num_actions,)
        return shapes

    def _named_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for i, (w, b) in enumerate(self.hidden):
            arrays[f"hidden.{i}.weight"], arrays[f"hidden.{i}.bias"] = w, b
        arrays["action.weight"], arrays["action.bias"] = self.action
        return arrays

    # --- inference ---

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """Actor logits ``[n, num_actions]`` (float64) for observations ``[n, obs_size]`` (or one ``[obs_size]``).

        Raises:
            ValueError: observations of the wrong width.
        """
        x = np.asarray(obs, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.obs_size:
            raise ValueError(f"expected observations of shape [n, {self.obs_size}], got {np.shape(obs)}")
        for w, b in self.hidden:
            x = x @ w.T + b
            x = np.tanh(x) if self.activation == "tanh" else np.maximum(x, 0.0)
        w, b = self.action
        return x @ w.T + b

    def decide(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The action for each observation: the argmax of the logits over the valid actions.

        Args:
            obs: ``[n, obs_size]`` observations (one ``[obs_size]`` is taken as ``n = 1``).
            masks: ``[n, num_actions]`` bool, True where the action is valid (``TuningEnv.action_masks``).

        Returns:
            ``int64[n]``; ties go to the lowest action index. Never a masked action.

        Raises:
            ValueError: shapes that do not match, or a mask row with no valid action.
        """
        logits = self.logits(obs)
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim == 1:
            masks = masks[None, :]
        if masks.shape != logits.shape:
            raise ValueError(f"expected masks of shape {logits.shape}, got {masks.shape}")
        empty = ~masks.any(axis=1)
        if empty.any():
            raise ValueError(f"mask row {int(np.flatnonzero(empty)[0])} has no valid action")
        return np.argmax(np.where(masks, logits, -np.inf), axis=1).astype(np.int64)

    # --- from a trained model ---

    @classmethod
    def from_sb3(cls, model, provenance: dict | None = None) -> "PolicyNetwork":
        """Copy the actor of a MaskablePPO ``MlpPolicy`` (or the policy object itself).

        The actor is ``policy.mlp_extractor.policy_net`` (``nn.Sequential`` of ``Linear`` and one
        activation type after each) and ``policy.action_net`` (``Linear``), on a flattened ``Box``
        observation (SB3 does not normalise ``Box`` observations that are not images).

        Raises:
            ValueError: a policy of another structure (other features extractor, activation,
                observation or action space).
        """
        import torch
        from stable_baselines3.common.torch_layers import FlattenExtractor

        policy = getattr(model, "policy", model)
        space = policy.observation_space
        knobs = getattr(space, "shape", None) == (KNOBS_OBS_SIZE,)
        obs_size, num_actions = (KNOBS_OBS_SIZE, NUM_KNOBS_ACTIONS) if knobs else (OBS_SIZE, NUM_ACTIONS)
        if getattr(space, "shape", None) != (obs_size,):
            raise ValueError(f"expected an observation space of shape ({OBS_SIZE},) or, with the knobs, "
                             f"({KNOBS_OBS_SIZE},), got {space}")
        if getattr(policy.action_space, "n", None) != num_actions:
            raise ValueError(f"expected Discrete({num_actions}) actions, got {policy.action_space}")
        extractor = policy.pi_features_extractor if hasattr(policy, "pi_features_extractor") else \
            policy.features_extractor
        if not isinstance(extractor, FlattenExtractor):
            raise ValueError(f"expected SB3's FlattenExtractor, got {type(extractor).__name__}")
        modules = list(policy.mlp_extractor.policy_net)
        linears, activations = modules[0::2], modules[1::2]
        if len(linears) != len(activations) or not all(isinstance(m, torch.nn.Linear) for m in linears):
            raise ValueError(f"expected policy_net = (Linear, activation) pairs, got {modules}")
        kinds = {type(m) for m in activations}
        if kinds - {torch.nn.Tanh, torch.nn.ReLU} or len(kinds) > 1:
            raise ValueError(f"expected one activation, Tanh or ReLU, got {sorted(k.__name__ for k in kinds)}")
        activation = "relu" if kinds == {torch.nn.ReLU} else "tanh"

        def numpy(linear) -> tuple[np.ndarray, np.ndarray]:
            return (linear.weight.detach().cpu().numpy().astype(np.float64),
                    linear.bias.detach().cpu().numpy().astype(np.float64))

        return cls(tuple(numpy(m) for m in linears), numpy(policy.action_net), activation, dict(provenance or {}),
                   knobs)


# --- writing ---------------------------------------------------------------------------------------


def save_policy(path: str | os.PathLike, model_or_network, provenance: dict | None = None) -> Path:
    """Write a policy file (atomically) and return its path.

    Args:
        path: the ``.zip`` to write; its directory is created.
        model_or_network: a :class:`PolicyNetwork`, a MaskablePPO model or its policy.
        provenance: JSON object recorded in ``policy.json`` (replaces the network's own when given).

    Raises:
        ValueError: a model :meth:`PolicyNetwork.from_sb3` cannot read, non-finite weights, or a
            provenance that is not JSON (NaN and infinities included).
        TypeError: a provenance value JSON cannot encode.
    """
    network = model_or_network if isinstance(model_or_network, PolicyNetwork) else \
        PolicyNetwork.from_sb3(model_or_network)
    provenance = dict(network.provenance if provenance is None else provenance)
    arrays = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in network._named_arrays().items()}
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: the weights hold NaN or infinite values")
    header = {"format": FORMAT, "version": VERSION, "obs_size": network.obs_size, "num_actions": network.num_actions,
              "observation": list(KNOBS_OBS_NAMES if network.knobs else OBS_NAMES),
              "hidden_sizes": network.hidden_sizes,
              "activation": network.activation, "provenance": provenance}
    text = json.dumps(header, indent=2, sort_keys=True, allow_nan=False) + "\n"
    weights = io.BytesIO()
    np.savez(weights, **arrays)

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in ((POLICY_JSON, text.encode()), (WEIGHTS_NPZ, weights.getvalue())):
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)

    write_with(path, write)
    return Path(path)


# --- reading ---------------------------------------------------------------------------------------


def load_policy(path: str | os.PathLike) -> PolicyNetwork:
    """Read and validate a policy file written by :func:`save_policy`.

    Raises:
        InputError: naming ``path`` and the field (``policy.json: hidden_sizes``,
            ``weights.npz: action.weight``...) when the file is missing or not a zip, a member is
            missing, extra or too large, the format or version is not this one, the observation
            or action space differs from this package's, a layer size or activation is invalid, an
            array is missing, extra, of the wrong shape or dtype, or holds NaN or infinities.
    """
    source = os.fspath(path)
    if not os.path.exists(source):
        raise InputError(source, None, "no such policy file")
    # Read capped (a policy's zip is no larger than its members plus their headers): a device or an
    # endless file is an error, never a zip reader exhausting memory.
    data = schema.read_bytes(source, "policy", max_bytes=MAX_JSON_BYTES + MAX_WEIGHTS_BYTES + (1 << 20))
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(source, None, f"not a policy file (expected a zip written by save_policy): {e}") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        if set(members) != {POLICY_JSON, WEIGHTS_NPZ}:
            raise InputError(source, None, f"expected exactly the members {POLICY_JSON} and {WEIGHTS_NPZ}, "
                                           f"got {sorted(members)}")
        header = _parse_header(_read_member(archive, members[POLICY_JSON], MAX_JSON_BYTES, source), source)
        knobs = header["num_actions"] == NUM_KNOBS_ACTIONS
        layout = (KNOBS_OBS_SIZE, list(KNOBS_OBS_NAMES)) if knobs else (OBS_SIZE, list(OBS_NAMES))
        for name, value in zip(("obs_size", "observation"), layout):
            if header[name] != value:
                raise InputError(source, f"{POLICY_JSON}: {name}", f"expected {value} for a policy of "
                                 f"{header['num_actions']} actions, got {header[name]!r}")
        shapes = PolicyNetwork._expected_shapes(header["hidden_sizes"], knobs)
        arrays = _read_weights(_read_member(archive, members[WEIGHTS_NPZ], MAX_WEIGHTS_BYTES, source), shapes, source)
    hidden = tuple((arrays[f"hidden.{i}.weight"], arrays[f"hidden.{i}.bias"])
                   for i in range(len(header["hidden_sizes"])))
    return PolicyNetwork(hidden, (arrays["action.weight"], arrays["action.bias"]), header["activation"],
                         header["provenance"], knobs)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, source: str) -> bytes:
    if info.file_size > limit:
        raise InputError(source, info.filename, f"{info.file_size} bytes uncompressed; at most {limit} allowed")
    try:
        with archive.open(info) as handle:
            data = handle.read(limit + 1)  # never more than the header's size, which is <= limit
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise InputError(source, info.filename, f"unreadable zip member: {e}") from None
    return data


_HEADER = schema.Schema(
    schema.choice("format", (FORMAT,)),
    schema.choice("version", (VERSION,), expect=f"{VERSION} (this dynamiccl reads only version {VERSION})"),
    schema.choice("obs_size", (OBS_SIZE, KNOBS_OBS_SIZE),
                  expect=f"{OBS_SIZE} or, with the knobs, {KNOBS_OBS_SIZE} (this dynamiccl's); the policy was "
                         "trained for another observation space"),
    schema.choice("num_actions", (NUM_ACTIONS, NUM_KNOBS_ACTIONS),
                  expect=f"{NUM_ACTIONS} or, with the knobs, {NUM_KNOBS_ACTIONS} (this dynamiccl's); the policy "
                         "was trained for another action space"),
    schema.choice("observation", (list(OBS_NAMES), list(KNOBS_OBS_NAMES)),
                  expect=f"{list(OBS_NAMES)} or the knobs layout; the policy was trained on another observation layout"),
    schema.int_list("hidden_sizes", low=1, high=MAX_LAYER_SIZE, max_len=MAX_HIDDEN_LAYERS),
    schema.choice("activation", ACTIVATIONS),
    schema.json_value("provenance", help="what produced the policy"),
)


def _parse_header(data: bytes, source: str) -> dict[str, Any]:
    header = schema.parse_json(data, source, POLICY_JSON)
    return _HEADER.parse(header, source, f"{POLICY_JSON}: ")


def _read_weights(data: bytes, shapes: dict[str, tuple[int, ...]], source: str) -> dict[str, np.ndarray]:
    """Parse ``weights.npz``: every array's ``.npy`` header is checked (float dtype, the expected
    shape) before its data is read with ``allow_pickle=False``."""
    def fail(name: str | None, problem: str) -> InputError:
        return InputError(source, f"{WEIGHTS_NPZ}: {name}" if name else WEIGHTS_NPZ, problem)

    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise fail(None, f"not an npz archive: {e}") from None
    arrays: dict[str, np.ndarray] = {}
    with inner:
        members = {info.filename: info for info in inner.infolist()}
        expected = {f"{name}.npy" for name in shapes}
        for member in sorted(expected - set(members)):
            raise fail(member[:-4], f"missing; a policy with hidden_sizes as in {POLICY_JSON} needs "
                                    f"{', '.join(shapes)}")
        for member in sorted(set(members) - expected):
            raise fail(member.removesuffix(".npy"), f"unexpected array; expected only {', '.join(shapes)}")
        for name, shape in shapes.items():
            info = members[f"{name}.npy"]
            try:
                with inner.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version == (1, 0):
                        got_shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                    elif version == (2, 0):
                        got_shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                if dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.hasobject:
                    raise fail(name, f"expected float32 or float64, got {dtype}")
                if tuple(got_shape) != shape:
                    raise fail(name, f"expected shape {shape} (from {POLICY_JSON} hidden_sizes), got {tuple(got_shape)}")
                with inner.open(info) as handle:
                    array = np.lib.format.read_array(handle, allow_pickle=False)
            except InputError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
                raise fail(name, f"unreadable array: {e}") from None
            if array.shape != shape:
                raise fail(name, f"expected shape {shape}, got {array.shape}")
            if not np.isfinite(array).all():
                raise fail(name, "holds NaN or infinite values")
            arrays[name] = array.astype(np.float64)
    return arrays


__all__ = ["FORMAT", "VERSION", "PolicyNetwork", "save_policy", "load_policy"]
