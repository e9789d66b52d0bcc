"""The stable-baselines3 callbacks of a training run, and the files they write.

- :class:`SpeedupCurve`: each finished episode's speedup to TensorBoard and ``training_curve.csv``;
- :class:`Checkpoints`: the agent at rollout boundaries (``checkpoints/ppo_<timesteps>_steps.zip``,
  written atomically, with a small JSON sidecar and the curve so far);
- :class:`ProgressBar`: a tqdm bar over timesteps.

They use SB3's public callback API only: subclasses of ``BaseCallback`` that override its hooks
(``_on_training_start``, ``_on_rollout_start``, ``_on_step``, ``_on_rollout_end``) and read
``model``, ``num_timesteps``, ``locals``, ``logger`` and ``training_env``. Importing this module
imports stable-baselines3 (slow): in the package only :mod:`dynamiccl.tuning.train` imports it, and
the CLI imports that only to train.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat
from tqdm.auto import tqdm

from dynamiccl.atomic import write_text, write_with
from dynamiccl.errors import InputError

CHECKPOINT_PREFIX = "ppo"
CURVE_COLUMNS = ("timesteps", "episode", "case", "speedup", "wall_s")
FINAL_EPISODES = 50        # a run's final mean speedup is over this many last episodes


class Checkpoint(NamedTuple):
    """A checkpoint file (an SB3 zip: a pickle, only ever loaded from the run's own directory) and
    the timesteps it was taken at; its JSON sidecar is :attr:`sidecar`."""

    path: Path
    timesteps: int

    @property
    def sidecar(self) -> Path:
        """``ppo_<timesteps>_steps.json``: ``{"timesteps", "episodes", "wall_s"}`` at the checkpoint."""
        return self.path.with_suffix(".json")


def checkpoint_at(directory: str | os.PathLike, timesteps: int) -> Checkpoint:
    """The checkpoint taken at ``timesteps`` in ``directory`` (whether or not it exists)."""
    return Checkpoint(Path(directory) / f"{CHECKPOINT_PREFIX}_{timesteps}_steps.zip", timesteps)


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint with the most timesteps in ``directory``; None when there is none."""
    pattern = re.compile(rf"{CHECKPOINT_PREFIX}_(\d+)_steps\.zip")
    found = [int(m.group(1)) for p in Path(directory).glob(f"{CHECKPOINT_PREFIX}_*_steps.zip")
             if (m := pattern.fullmatch(p.name))]
    return checkpoint_at(directory, max(found)) if found else None


class SpeedupCurve(BaseCallback):
    """The training curve: per finished episode, ``info["speedup"]`` (NCCL default step time / the
    episode's) goes to TensorBoard (``episode/speedup`` at the current timestep, and the mean per
    rollout as ``rollout/speedup_mean``) and to :attr:`rows` (the ``training_curve.csv`` rows).

    ``rows`` and ``wall_s_before`` continue a resumed run: its rows up to the checkpoint and the
    seconds it had trained; :meth:`wall_s` counts from there.
    """

    def __init__(self, rows: list[dict] | None = None, wall_s_before: float = 0.0):
        super().__init__()
        self.rows = list(rows or [])
        self.wall_s_before = wall_s_before
        self.began = time.monotonic()
        self.writer = None

    def wall_s(self) -> float:
        """Seconds of training so far, counting the runs before a resume."""
        return self.wall_s_before + time.monotonic() - self.began

    def recent_mean(self, n: int = FINAL_EPISODES) -> float | None:
        """Arithmetic mean speedup of the last ``n`` episodes; None before the first ends."""
        tail = [r["speedup"] for r in self.rows[-n:]]
        return float(np.mean(tail)) if tail else None

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write :attr:`rows` as ``training_curve.csv`` (atomically)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CURVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(path, out.getvalue())

    @classmethod
    def resumed(cls, curve_path: str | os.PathLike, checkpoint: Checkpoint) -> "SpeedupCurve":
        """The curve of a run resumed from ``checkpoint``: the rows of ``curve_path`` up to its
        timesteps, and the wall time its sidecar recorded (else that of the last row).

        Raises:
            InputError: a curve row that cannot be read (naming the file and the row).
        """
        rows: list[dict] = []
        curve_path = Path(curve_path)
        if curve_path.exists():
            with open(curve_path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    try:
                        parsed = {"timesteps": int(row["timesteps"]), "episode": int(row["episode"]),
                                  "case": row["case"], "speedup": float(row["speedup"]),
                                  "wall_s": float(row["wall_s"])}
                    except (KeyError, TypeError, ValueError) as e:
                        raise InputError(curve_path, f"row {len(rows) + 2}",
                                         f"unreadable training curve row: {e}") from None
                    if parsed["timesteps"] <= checkpoint.timesteps:
                        rows.append(parsed)
        try:
            wall_s = float(json.loads(checkpoint.sidecar.read_text(encoding="utf-8"))["wall_s"])
        except (OSError, ValueError, KeyError, TypeError):
            wall_s = rows[-1]["wall_s"] if rows else 0.0
        return cls(rows, wall_s)

    def _on_training_start(self) -> None:
        self.writer = next((f.writer for f in self.logger.output_formats
                            if isinstance(f, TensorBoardOutputFormat)), None)

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done and "speedup" in info:
                speedup = float(info["speedup"])
                self.rows.append({"timesteps": self.num_timesteps, "episode": len(self.rows) + 1,
                                  "case": info.get("case", ""), "speedup": speedup, "wall_s": round(self.wall_s(), 3)})
                self.logger.record_mean("rollout/speedup_mean", speedup)
                if self.writer is not None:
                    self.writer.add_scalar("episode/speedup", speedup, self.num_timesteps)
        return True


class Checkpoints(BaseCallback):
    """Checkpoints taken at rollout boundaries: at the first rollout start at or after every
    multiple of ``every`` timesteps, so that a checkpoint holds the policy after its last update
    and no half-collected rollout. Each :meth:`save` writes the SB3 zip atomically, then
    ``curve``'s rows to ``curve_path`` and the checkpoint's JSON sidecar."""

    def __init__(self, every: int, directory: str | os.PathLike, curve: SpeedupCurve, curve_path: str | os.PathLike):
        super().__init__()
        self.every, self.directory, self.curve, self.curve_path = every, Path(directory), curve, Path(curve_path)
        self.next_due = every

    def save(self, model: BaseAlgorithm) -> Checkpoint:
        """Checkpoint ``model`` now, at its ``num_timesteps``."""
        checkpoint = checkpoint_at(self.directory, model.num_timesteps)
        buffer = io.BytesIO()
        model.save(buffer)
        write_with(checkpoint.path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        self.curve.write_csv(self.curve_path)
        write_text(checkpoint.sidecar, json.dumps({"timesteps": checkpoint.timesteps, "episodes": len(self.curve.rows),
                                                   "wall_s": round(self.curve.wall_s(), 3)}) + "\n")
        return checkpoint

    def _due_after(self, timesteps: int) -> int:
        return (timesteps // self.every + 1) * self.every

    def _on_training_start(self) -> None:
        self.next_due = self._due_after(self.num_timesteps)

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps >= self.next_due:
            self.save(self.model)
            self.next_due = self._due_after(self.model.num_timesteps)

    def _on_step(self) -> bool:
        return True


class ProgressBar(BaseCallback):
    """A tqdm bar over timesteps on stderr (SB3's own progress bar needs ``rich``); after every
    rollout it shows the mean speedup of the last episodes of ``curve``. :meth:`close` it."""

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
        """Close the bar (if training started)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
