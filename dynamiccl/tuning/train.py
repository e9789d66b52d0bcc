"""Train a MaskablePPO policy for :class:`~dynamiccl.tuning.env.TuningEnv` from a TOML experiment config.

Read top to bottom, CleanRL style: ``train`` builds the env, builds or resumes the agent, learns
with three callbacks (checkpoints, the speedup curve, a progress bar), then writes the policy file
and a summary.

The config and its keys: :mod:`dynamiccl.tuning.config`.

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
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import dynamiccl
from dynamiccl.atomic import write_text, write_with
from dynamiccl.errors import InputError
from dynamiccl.tuning.config import ExperimentConfig
from dynamiccl.tuning.policy_file import save_policy

CHECKPOINT_PREFIX = "ppo"
CURVE_COLUMNS = ("timesteps", "episode", "case", "speedup", "wall_s")
FINAL_EPISODES = 50        # train.json's final mean speedup is over this many last episodes


# === 1. Callbacks ===================================================================================


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


# === 2. Training ====================================================================================


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
    fingerprint = config.resume_fingerprint()

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
