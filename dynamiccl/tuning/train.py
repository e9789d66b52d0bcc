"""Train a MaskablePPO policy for :class:`~dynamiccl.tuning.env.TuningEnv` from a TOML experiment config.

Read top to bottom, CleanRL style: the config (``load_config``), then ``train``: build the env,
build or resume the agent, learn with three callbacks (checkpoints, the speedup curve, a progress
bar), then write the policy file and a summary.

Config (every key but the cases has the default shown)::

    [experiment]
    name = "default"            # results go to experiments/<name>/ unless told otherwise (default: file stem)
    description = ""
    seed = 0                    # seeds torch, numpy, the agent and the env's draws of (case, state)
    model = "world"             # cost model: world | nccl | live

    [train]
    total_timesteps = 200000    # decisions (one per collective call) over the whole run
    learning_rate = 3e-4
    n_steps = 2048              # decisions per rollout (one env)
    batch_size = 256            # minibatch; at most n_steps
    n_epochs = 5
    gamma = 0.0                 # see "Discounting" below
    gae_lambda = 0.95
    ent_coef = 0.01
    clip_range = 0.2
    vf_coef = 0.5
    max_grad_norm = 0.5
    net_arch = [64, 64]         # hidden layers of the actor and (separately) the critic
    activation = "tanh"         # tanh | relu
    checkpoint_every = 50000    # timesteps between checkpoints
    states = 8                  # dynamics states 0..states-1 are drawn in training

    [[train.cases]]             # one or more; trace = "path" or workload = {model = ..., tp = ...}
    trace = "traces/llama3-8b_tp1-pp1-dp8.parquet"
    env = "dgx-h100"            # shipped spec name or path to a spec
    # step = 3                  # optional: the trace step to replay (default: the last)

    [heldout]                   # optional: what evaluation uses; training never sees it
    states = 4
    state_offset = 1000         # held-out dynamics states: state_offset .. state_offset+states-1
    [[heldout.cases]]
    workload = { model = "llama3-70b", tp = 4, pp = 4, dp = 2 }
    env = "h100-ib-4x8"

Relative trace and spec paths resolve against the current directory first, then against the
repository root (the config file's parent's parent). Workloads are generated once into
``<output_dir>/workloads/`` (:func:`dynamiccl.tuning.cases.workload_trace`).

Discounting: ``gamma = 0`` by default. Each decision's reward in ``TuningEnv`` is already that
decision's own effect on the step time (in per cent of NCCL's default step time), so the problem is
close to a contextual bandit and discounting future rewards would only add other decisions' noise
to every advantage. The last decision's reward also carries the residual (what the per-call
rewards did not account for: interactions between calls), so with ``gamma = 0`` that residual is
credited to the last call alone; raise ``gamma`` to spread it.

Outputs in ``output_dir``: ``policy.zip`` (:mod:`dynamiccl.tuning.policy_file`, safe to share),
``train.json`` (summary), ``training_curve.csv`` (timesteps, episode, case, speedup, wall_s per
episode), ``tensorboard/`` (SB3's scalars plus ``episode/speedup`` and ``rollout/speedup_mean``),
``checkpoints/`` (SB3 zips and a small JSON beside each), ``run.json`` (what a resume must match)
and ``workloads/``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import dynamiccl
from dynamiccl.atomic import write_text, write_with
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError
from dynamiccl.tuning.cases import Case, workload_trace
from dynamiccl.tuning.costs import COST_MODELS
from dynamiccl.tuning.policy_file import save_policy

SECTIONS = ("experiment", "train", "heldout")
ACTIVATIONS = ("tanh", "relu")
CHECKPOINT_PREFIX = "ppo"
CURVE_COLUMNS = ("timesteps", "episode", "case", "speedup", "wall_s")
FINAL_EPISODES = 50        # train.json's final mean speedup is over this many last episodes
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REQUIRED = object()


# === 1. The config ==================================================================================


@dataclass(frozen=True)
class CaseSpec:
    """One ``[[train.cases]]`` / ``[[heldout.cases]]`` entry as validated; ``where`` names it
    (``train.cases[0]``). Exactly one of ``trace`` (a path that exists) and ``workload`` is set."""

    where: str
    env: str
    trace: str | None = None
    workload: dict | None = None
    step: int | None = None

    def resolve(self, workload_dir: str | os.PathLike, source: str) -> Case:
        """The :class:`Case`; a workload is generated into ``workload_dir`` the first time.

        Raises:
            InputError: a workload the generator rejects, naming ``source`` and ``<where>.workload.<key>``.
        """
        if self.trace is not None:
            return Case(self.trace, self.env, self.step)
        try:
            trace = workload_trace(self.workload, workload_dir, source, env=self.env)
        except InputError as e:
            key = f"{self.where}.workload" + (f".{e.field}" if e.field else "")
            raise InputError(source, key, e.problem) from None
        return Case(trace, self.env, self.step)

    def describe(self) -> dict:
        """JSON form (for provenance and resume checks)."""
        return {"trace": self.trace, "workload": self.workload, "env": self.env, "step": self.step}


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: MaskablePPO's hyperparameters (SB3 names and units) and the training split."""

    cases: tuple[CaseSpec, ...]
    total_timesteps: int = 200_000
    learning_rate: float = 3e-4
    n_steps: int = 2048
    batch_size: int = 256
    n_epochs: int = 5
    gamma: float = 0.0
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    clip_range: float = 0.2
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    checkpoint_every: int = 50_000
    states: int = 8


@dataclass(frozen=True)
class HeldoutConfig:
    """``[heldout]``: cases and dynamics states for evaluation only (states disjoint from training's)."""

    cases: tuple[CaseSpec, ...] = ()
    states: int = 4
    state_offset: int = 1000


@dataclass(frozen=True)
class ExperimentConfig:
    """A parsed experiment config. ``source``: the file; ``raw``: its parsed TOML (for provenance)."""

    source: str
    name: str
    description: str
    seed: int
    model: str
    train: TrainConfig
    heldout: HeldoutConfig
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def default_output_dir(self) -> Path:
        """``experiments/<name>`` (relative to the current directory)."""
        return Path("experiments") / self.name

    def train_cases(self, output_dir: str | os.PathLike) -> list[Case]:
        """The training cases; workloads are generated into ``<output_dir>/workloads``.

        Raises:
            InputError: a workload the generator rejects (naming the config and the key).
        """
        return [c.resolve(Path(output_dir) / "workloads", self.source) for c in self.train.cases]

    def heldout_cases(self, output_dir: str | os.PathLike) -> list[Case]:
        """The held-out cases (may be empty), resolved like :meth:`train_cases`."""
        return [c.resolve(Path(output_dir) / "workloads", self.source) for c in self.heldout.cases]


class _Section:
    """One TOML table being parsed: typed getters that name ``section.key`` in every error."""

    def __init__(self, table: Any, name: str, source: str, known: set[str]):
        if not isinstance(table, dict):
            raise InputError(source, name, f"expected a table, got {table!r}")
        for key in table:
            if key not in known:
                raise InputError(source, f"{name}.{key}", f"unknown key; expected some of {', '.join(sorted(known))}")
        self.table, self.name, self.source = table, name, source

    def fail(self, key: str, problem: str) -> InputError:
        return InputError(self.source, f"{self.name}.{key}", problem)

    def _get(self, key: str, default):
        if key not in self.table:
            if default is _REQUIRED:
                raise self.fail(key, "missing")
            return default
        return self.table[key]

    def integer(self, key: str, default=_REQUIRED, *, low: int = 0, high: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f">= {low}" + (f" and <= {high}" if high is not None else "")
            raise self.fail(key, f"expected an integer {bounds}, got {value!r}")
        return value

    def number(self, key: str, default=_REQUIRED, *, low: float = 0.0, high: float | None = None,
               low_inclusive: bool = True) -> float:
        value = self._get(key, default)
        numeric = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        too_low = numeric and (value < low if low_inclusive else value <= low)
        if not numeric or too_low or (high is not None and value > high):
            bounds = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise self.fail(key, f"expected a number {bounds}, got {value!r}")
        return float(value)

    def string(self, key: str, default=_REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        return value

    def choice(self, key: str, default, choices: tuple[str, ...]) -> str:
        value = self._get(key, default)
        if value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def int_list(self, key: str, default, *, low: int, high: int, max_len: int) -> tuple[int, ...]:
        value = self._get(key, default)
        ok = (isinstance(value, (list, tuple)) and len(value) <= max_len
              and all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value))
        if not ok:
            raise self.fail(key, f"expected a list of at most {max_len} integers in {low}..{high}, got {value!r}")
        return tuple(value)


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment config (see the module docstring for the keys).

    Raises:
        InputError: naming the file and the ``section.key`` for an unreadable file or bad TOML,
            an unknown section or key, a wrong type or out-of-range value, missing training cases,
            a case with neither or both of ``trace`` and ``workload``, a trace or spec that cannot be
            found, or held-out states that overlap the training states.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(source, None, "no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(source, None, f"unreadable config: {e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(source, None, f"not valid TOML: {e}") from None
    for section in doc:
        if section not in SECTIONS:
            raise InputError(source, section, f"unknown section; expected {', '.join(f'[{s}]' for s in SECTIONS)}")
    repo_root = Path(source).resolve().parent.parent

    s = _Section(doc.get("experiment", {}), "experiment", source, {"name", "description", "seed", "model"})
    name = s.string("name", Path(source).stem)
    if not _NAME.fullmatch(name):
        raise s.fail("name", f"expected a directory name (letters, digits, '.', '_', '-'), got {name!r}")
    description = s.string("description", "")
    seed = s.integer("seed", 0, high=2**32 - 1)
    model = s.choice("model", "world", tuple(COST_MODELS))

    t = _Section(doc.get("train", {}), "train", source, set(TrainConfig.__dataclass_fields__))
    d = TrainConfig(cases=())
    n_steps = t.integer("n_steps", d.n_steps, low=2)
    train = TrainConfig(
        cases=_parse_cases(t, required=True, repo_root=repo_root),
        total_timesteps=t.integer("total_timesteps", d.total_timesteps, low=1),
        learning_rate=t.number("learning_rate", d.learning_rate, low_inclusive=False, high=1.0),
        n_steps=n_steps,
        batch_size=t.integer("batch_size", d.batch_size, low=2, high=n_steps),
        n_epochs=t.integer("n_epochs", d.n_epochs, low=1, high=1000),
        gamma=t.number("gamma", d.gamma, high=1.0),
        gae_lambda=t.number("gae_lambda", d.gae_lambda, high=1.0),
        ent_coef=t.number("ent_coef", d.ent_coef),
        clip_range=t.number("clip_range", d.clip_range, low_inclusive=False, high=1.0),
        vf_coef=t.number("vf_coef", d.vf_coef),
        max_grad_norm=t.number("max_grad_norm", d.max_grad_norm, low_inclusive=False),
        net_arch=t.int_list("net_arch", list(d.net_arch), low=1, high=4096, max_len=8),
        activation=t.choice("activation", d.activation, ACTIVATIONS),
        checkpoint_every=t.integer("checkpoint_every", d.checkpoint_every, low=1),
        states=t.integer("states", d.states, low=1),
    )

    h = _Section(doc.get("heldout", {}), "heldout", source, set(HeldoutConfig.__dataclass_fields__))
    dh = HeldoutConfig()
    heldout = HeldoutConfig(cases=_parse_cases(h, required=False, repo_root=repo_root),
                            states=h.integer("states", dh.states, low=1),
                            state_offset=h.integer("state_offset", dh.state_offset))
    if heldout.state_offset < train.states:
        raise h.fail("state_offset", f"held-out dynamics states {heldout.state_offset}.."
                                     f"{heldout.state_offset + heldout.states - 1} overlap the training states "
                                     f"0..{train.states - 1}; expected state_offset >= train.states")
    return ExperimentConfig(source, name, description, seed, model, train, heldout, raw=doc)


def _parse_cases(section: _Section, *, required: bool, repo_root: Path) -> tuple[CaseSpec, ...]:
    where = f"{section.name}.cases"
    cases = section.table.get("cases")
    if cases is None or cases == []:
        if required:
            raise section.fail("cases", f"missing: at least one [[{where}]] with trace = \"path\" or "
                                        f"workload = {{model = ...}}, and env = \"spec\"")
        return ()
    if not isinstance(cases, list):
        raise section.fail("cases", f"expected [[{where}]] tables, got {cases!r}")
    specs = []
    for i, table in enumerate(cases):
        c = _Section(table, f"{where}[{i}]", section.source, {"trace", "workload", "env", "step"})
        if ("trace" in c.table) == ("workload" in c.table):
            raise InputError(section.source, f"{where}[{i}]", "expected exactly one of trace = \"path\" and "
                                                              "workload = {model = ..., ...}")
        trace = workload = None
        if "trace" in c.table:
            trace = _resolve_path(c.string("trace"), repo_root)
            if trace is None:
                raise c.fail("trace", f"no such file {c.table['trace']!r} (looked in the current directory "
                                      f"and in {repo_root})")
        else:
            workload = c.table["workload"]
            _check_workload(workload, c)
        env = c.string("env")
        env_path = _resolve_path(env, repo_root) if env.endswith(".toml") or "/" in env else env
        if env_path is None:
            raise c.fail("env", f"no such file {env!r} (looked in the current directory and in {repo_root})")
        try:
            resolve_env(env_path)
        except InputError as e:
            raise c.fail("env", str(e)) from None
        step = c.integer("step") if "step" in c.table else None
        specs.append(CaseSpec(f"{where}[{i}]", env_path, trace, workload, step))
    return tuple(specs)


def _check_workload(workload: Any, c: _Section) -> None:
    """Shape only (the generator checks keys and layouts when the trace is made)."""
    if not isinstance(workload, dict):
        raise c.fail("workload", f"expected a table like {{model = \"llama3-8b\", tp = 2}}, got {workload!r}")
    if not isinstance(workload.get("model"), str):
        raise c.fail("workload.model", "missing: which built-in model (see `dynamiccl models`)")
    for key, value in workload.items():
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise c.fail(f"workload.{key}", f"expected a string, number or boolean, got {value!r}")


def _resolve_path(value: str, repo_root: Path) -> str | None:
    """``value`` as written if it exists (absolute or relative to the current directory), else the
    path under ``repo_root`` if that exists, else None.

    The string matters beyond finding the file: ``dynamics_seed`` hashes the trace path, so a path
    spelled the same way gives the same dynamics states on every machine.
    """
    path = Path(value).expanduser()
    if path.exists():
        return str(path) if value.startswith("~") else value
    if not path.is_absolute() and (repo_root / path).exists():
        return str(repo_root / path)
    return None


# === 2. Callbacks ===================================================================================


def _callbacks():
    """SB3 callback classes (imported lazily: stable-baselines3 is slow to import)."""
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
    from stable_baselines3.common.logger import TensorBoardOutputFormat
    from tqdm.auto import tqdm

    class SpeedupCurve(BaseCallback):
        """Per finished episode: ``info["speedup"]`` (NCCL default step time / the episode's) to
        TensorBoard (``episode/speedup`` at the current timestep; ``rollout/speedup_mean`` per
        rollout) and to ``rows`` for ``training_curve.csv``. ``wall_s``: seconds since the run
        started, counting the time before a resume."""

        def __init__(self, rows: list[dict], clock: Callable[[], float]):
            super().__init__()
            self.rows, self.clock, self.writer = rows, clock, None

        def _on_training_start(self) -> None:
            self.writer = next((f.writer for f in self.logger.output_formats
                                if isinstance(f, TensorBoardOutputFormat)), None)

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done and "speedup" in info:
                    speedup = float(info["speedup"])
                    self.rows.append({"timesteps": self.num_timesteps, "episode": len(self.rows) + 1,
                                      "case": info.get("case", ""), "speedup": speedup,
                                      "wall_s": round(self.clock(), 3)})
                    self.logger.record_mean("rollout/speedup_mean", speedup)
                    if self.writer is not None:
                        self.writer.add_scalar("episode/speedup", speedup, self.num_timesteps)
            return True

        def recent_mean(self, n: int = FINAL_EPISODES) -> float | None:
            tail = [r["speedup"] for r in self.rows[-n:]]
            return float(np.mean(tail)) if tail else None

    class Checkpoints(CheckpointCallback):
        """SB3's CheckpointCallback, taken at rollout boundaries: at the first rollout start at or
        after every multiple of ``every`` timesteps (so a checkpoint holds the policy after its last
        update and no half-collected rollout), written atomically, then ``on_save(timesteps)``."""

        def __init__(self, every: int, directory: Path, on_save: Callable[[int], None]):
            super().__init__(save_freq=every, save_path=str(directory), name_prefix=CHECKPOINT_PREFIX)
            self.on_save = on_save
            self.next_due = every

        def _on_training_start(self) -> None:
            self.next_due = (self.num_timesteps // self.save_freq + 1) * self.save_freq

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            if self.num_timesteps >= self.next_due:
                self.save_now()
                self.next_due = (self.num_timesteps // self.save_freq + 1) * self.save_freq

        def save_now(self) -> Path:
            self.num_timesteps = self.model.num_timesteps
            path = Path(self._checkpoint_path(extension="zip"))
            buffer = io.BytesIO()
            self.model.save(buffer)
            write_with(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
            self.on_save(self.num_timesteps)
            return path

    class Progress(BaseCallback):
        """A tqdm bar over timesteps (SB3's own progress bar needs ``rich``); shows the mean
        speedup of the last episodes after every rollout."""

        def __init__(self, total: int, curve: SpeedupCurve, enabled: bool):
            super().__init__()
            self.total, self.curve, self.enabled, self.bar = total, curve, enabled, None

        def _on_training_start(self) -> None:
            self.bar = tqdm(total=self.total, initial=self.num_timesteps, unit="step", desc="train",
                            disable=not self.enabled, dynamic_ncols=True)

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_rollout_end(self) -> None:
            mean = self.curve.recent_mean()
            if mean is not None:
                self.bar.set_postfix(speedup=f"{mean:.4f}", refresh=False)

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return SpeedupCurve, Checkpoints, Progress


# === 3. Training ====================================================================================


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced. ``wall_s``: seconds of training, counting runs before a resume;
    ``final_mean_speedup``: arithmetic mean of ``speedup`` over the last 50 episodes (None: none ended)."""

    output_dir: Path
    policy_path: Path
    timesteps: int
    episodes: int
    wall_s: float
    final_mean_speedup: float | None
    seed: int
    resumed_from: int | None = None


def train(config: ExperimentConfig, output_dir: str | os.PathLike, *, resume: bool = False,
          progress: bool = True, max_timesteps: int | None = None) -> TrainResult:
    """Train MaskablePPO on the config's training cases; write the policy and the run's records.

    Args:
        config: from :func:`load_config`.
        output_dir: the run's directory (created).
        resume: continue from the latest checkpoint in ``output_dir/checkpoints`` up to
            ``train.total_timesteps``. The config must match the run's (``run.json``) except for
            ``total_timesteps``, ``checkpoint_every``, the name, the description and ``[heldout]``.
            Checkpoints are SB3 zips, which are pickles: they are this run's own files, only ever
            loaded from the run's own directory; never point ``--resume`` at a directory you did
            not write. Policies are shared as ``policy.zip``, which holds no pickle.
        progress: show a tqdm bar on stderr.
        max_timesteps: stop at this many timesteps (total, resumed ones included) even if the
            config asks for more; for quick checks.

    Training stops at the first rollout boundary at or after the target (a multiple of
    ``n_steps`` past the start), so ``timesteps`` may exceed it by up to ``n_steps - 1``.

    Determinism: the same config and seed give the same policy (torch runs on one CPU thread;
    SB3 seeds torch, numpy, the action space and the env's draws). A resumed run is deterministic
    given its checkpoint but not bit-identical to an uninterrupted one: SB3 checkpoints hold no
    RNG states and the env restarts at a fresh episode (the generators are reseeded with
    ``seed + checkpoint timesteps``).

    Raises:
        InputError: a workload the generator rejects; ``resume`` without a checkpoint or with a
            config that differs from the run's; a fresh run into a directory that already holds
            one; ``max_timesteps`` < 1.
    """
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dynamiccl.tuning.env import TuningEnv

    output_dir = Path(output_dir)
    t = config.train
    if max_timesteps is not None and max_timesteps < 1:
        raise InputError("--max-timesteps", None, f"expected an integer >= 1, got {max_timesteps}")
    target = t.total_timesteps if max_timesteps is None else min(t.total_timesteps, max_timesteps)
    checkpoint_dir = output_dir / "checkpoints"
    fingerprint = _fingerprint(config)

    start = None
    if resume:
        start = latest_checkpoint(checkpoint_dir)
        if start is None:
            raise InputError(checkpoint_dir, None, "no checkpoint to resume from (expected "
                                                   f"{CHECKPOINT_PREFIX}_<timesteps>_steps.zip)")
        _check_same_run(config, fingerprint, output_dir / "run.json")
    else:
        if latest_checkpoint(checkpoint_dir) is not None or (output_dir / "policy.zip").exists():
            raise InputError(output_dir, None, "already holds a training run; resume it or choose another "
                                               "output directory")
        write_text(output_dir / "run.json", json.dumps({"config_path": config.source, "fingerprint": fingerprint},
                                                       indent=2) + "\n")

    cases = config.train_cases(output_dir)
    rows: list[dict] = []
    wall_before = 0.0
    if start is not None:
        rows, wall_before = _resume_records(output_dir, start[1])
    began = time.monotonic()

    def clock() -> float:
        return wall_before + time.monotonic() - began

    SpeedupCurve, Checkpoints, Progress = _callbacks()
    curve = SpeedupCurve(rows, clock)

    def on_save(timesteps: int) -> None:
        _write_curve(output_dir / "training_curve.csv", rows)
        write_text(checkpoint_dir / f"{CHECKPOINT_PREFIX}_{timesteps}_steps.json",
                   json.dumps({"timesteps": timesteps, "episodes": len(rows), "wall_s": round(clock(), 3)}) + "\n")

    checkpoints = Checkpoints(t.checkpoint_every, checkpoint_dir, on_save)
    bar = Progress(target, curve, progress)
    env = DummyVecEnv([lambda: Monitor(TuningEnv(cases, config.model, t.states))])
    tensorboard_dir = str(output_dir / "tensorboard")
    model = None
    try:
        with _torch_threads(1):
            if start is None:
                import torch

                model = MaskablePPO(
                    "MlpPolicy", env, learning_rate=t.learning_rate, n_steps=t.n_steps, batch_size=t.batch_size,
                    n_epochs=t.n_epochs, gamma=t.gamma, gae_lambda=t.gae_lambda, ent_coef=t.ent_coef,
                    clip_range=t.clip_range, vf_coef=t.vf_coef, max_grad_norm=t.max_grad_norm,
                    policy_kwargs={"net_arch": list(t.net_arch),
                                   "activation_fn": torch.nn.Tanh if t.activation == "tanh" else torch.nn.ReLU},
                    tensorboard_log=tensorboard_dir, seed=config.seed, device="cpu", verbose=0)
            else:
                # Our own checkpoint (see the docstring): SB3's loader unpickles it.
                model = MaskablePPO.load(start[0], env=env, device="cpu", tensorboard_log=tensorboard_dir)
                model.set_random_seed(config.seed + start[1])
                model._last_obs = None  # the saved observation belongs to the old env: start a fresh episode
            remaining = target - model.num_timesteps
            if remaining > 0:
                model.learn(remaining, callback=CallbackList([curve, checkpoints, bar]),
                            reset_num_timesteps=start is None, tb_log_name=CHECKPOINT_PREFIX)
            checkpoints.init_callback(model)
            checkpoints.save_now()  # the final state, for a later resume with more timesteps
    finally:
        bar.close()
        if model is not None and getattr(model, "_logger", None) is not None:
            model.logger.close()
        env.close()

    wall_s = clock()
    final = curve.recent_mean()
    provenance = {
        "experiment": config.name, "description": config.description, "config_path": config.source,
        "config": config.raw, "seed": config.seed, "timesteps": int(model.num_timesteps),
        "episodes": len(rows), "wall_s": round(wall_s, 3), "final_mean_speedup": final,
        "dynamiccl_version": dynamiccl.__version__, "cost_model": config.model, "states": t.states,
        "training_cases": [{"trace": c.trace, "env": c.env, "step": c.step, "label": c.label} for c in cases],
        "algorithm": "MaskablePPO", "library_versions": _library_versions(),
        "resumed_from": start[1] if start else None,
    }
    policy_path = save_policy(output_dir / "policy.zip", model, provenance)
    result = TrainResult(output_dir, policy_path, int(model.num_timesteps), len(rows), wall_s, final, config.seed,
                         start[1] if start else None)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    summary.update(experiment=config.name, wall_s=round(wall_s, 3), policy="policy.zip",
                   final_mean_speedup_episodes=min(FINAL_EPISODES, len(rows)))
    write_text(output_dir / "train.json", json.dumps(summary, indent=2) + "\n")
    return result


def latest_checkpoint(directory: str | os.PathLike) -> tuple[Path, int] | None:
    """The checkpoint with the most timesteps in ``directory`` and that count; None when there is none."""
    pattern = re.compile(rf"{CHECKPOINT_PREFIX}_(\d+)_steps\.zip")
    found = [(int(m.group(1)), p) for p in Path(directory).glob(f"{CHECKPOINT_PREFIX}_*_steps.zip")
             if (m := pattern.fullmatch(p.name))]
    if not found:
        return None
    steps, path = max(found)
    return path, steps


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch on ``n`` threads inside the block (determinism, and small MLPs gain nothing from more)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_RESUME_FREE = {"total_timesteps", "checkpoint_every"}


def _fingerprint(config: ExperimentConfig) -> dict:
    """What a resumed run must share with the run it continues (JSON-normalised)."""
    t = config.train
    values = {"experiment.seed": config.seed, "experiment.model": config.model}
    for key in TrainConfig.__dataclass_fields__:
        if key == "cases":
            values["train.cases"] = [c.describe() for c in t.cases]
        elif key not in _RESUME_FREE:
            values[f"train.{key}"] = getattr(t, key)
    return json.loads(json.dumps(values))


def _check_same_run(config: ExperimentConfig, fingerprint: dict, run_file: Path) -> None:
    try:
        saved = json.loads(run_file.read_text(encoding="utf-8"))["fingerprint"]
    except FileNotFoundError:
        return  # a run from before run.json existed: nothing to compare with
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(run_file, None, f"unreadable run record: {e}") from None
    for key in sorted(set(fingerprint) | set(saved)):
        if fingerprint.get(key) != saved.get(key):
            raise InputError(config.source, key, f"{fingerprint.get(key)!r} differs from the run being resumed "
                                                 f"({saved.get(key)!r} in {run_file}); restore it or start a new run")


def _resume_records(output_dir: Path, timesteps: int) -> tuple[list[dict], float]:
    """Curve rows up to the checkpoint and the wall time (s) spent before it."""
    rows: list[dict] = []
    curve = output_dir / "training_curve.csv"
    if curve.exists():
        with open(curve, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                try:
                    parsed = {"timesteps": int(row["timesteps"]), "episode": int(row["episode"]),
                              "case": row["case"], "speedup": float(row["speedup"]), "wall_s": float(row["wall_s"])}
                except (KeyError, TypeError, ValueError) as e:
                    raise InputError(curve, f"row {len(rows) + 2}", f"unreadable training curve row: {e}") from None
                if parsed["timesteps"] <= timesteps:
                    rows.append(parsed)
    sidecar = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}_{timesteps}_steps.json"
    try:
        wall = float(json.loads(sidecar.read_text(encoding="utf-8"))["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        wall = rows[-1]["wall_s"] if rows else 0.0
    return rows, wall


def _write_curve(path: Path, rows: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("stable-baselines3", "sb3-contrib", "torch", "gymnasium", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions
