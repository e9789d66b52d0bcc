"""Train a MaskablePPO policy for :class:`~dynamiccl.tuning.env.TuningEnv` from an experiment config.

:func:`train` reads top to bottom: check the output directory (a fresh run, or the checkpoint a
resume continues from), build the env, build or resume the agent, learn with the callbacks of
:mod:`dynamiccl.tuning.callbacks`, then write the policy file and the summary. The config and its
keys: :mod:`dynamiccl.tuning.config`.

The trainer is sb3-contrib's MaskablePPO (on stable-baselines3), not a hand-written PPO: the
project's users know SB3 and the developers' guide names it as the trainer; running N environments
is SB3's ``SubprocVecEnv`` with sb3-contrib's action masks; and a PPO of our own would be a second
RL implementation to validate and maintain. This module uses SB3's public API only (the
constructor, ``load``, ``set_random_seed``, ``set_logger``, ``learn``, ``save``).

Outputs in ``output_dir``: ``policy.zip`` (:mod:`dynamiccl.tuning.policy_file`, safe to share),
``train.json`` (summary), ``training_curve.csv`` (timesteps, episode, case, speedup, wall_s per
episode), ``tensorboard/`` (SB3's scalars plus ``episode/speedup`` and ``rollout/speedup_mean``),
``checkpoints/`` (SB3 zips and a small JSON beside each), ``run.json`` (what a resume must match)
and ``workloads/``.

Environments (``[train] n_envs``): one ``TuningEnv`` in this process (SB3's ``DummyVecEnv``), or N
in worker processes (``SubprocVecEnv``, started with ``forkserver`` as SB3 does on Linux), or with
``vec_env = "dummy"`` N in this process, each made by :func:`make_env`. MaskablePPO asks the vector env for every worker's ``action_masks()``
(sb3-contrib's ``get_action_masks``: ``env_method``) and seeds worker ``i`` with ``seed + i``.
Workers run torch on one thread, ignore Ctrl-C (this process stops them) and are closed on every
way out of :func:`train`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import configure_logger
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

import dynamiccl
from dynamiccl.atomic import write_text
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.errors import InputError
from dynamiccl.sweep import enter_setting, submitter_setting
from dynamiccl.tuning.callbacks import (CHECKPOINT_PREFIX, FINAL_EPISODES, Checkpoint, Checkpoints, ProgressBar,
                                        SpeedupCurve, latest_checkpoint)
from dynamiccl.tuning.cases import Case, load_case
from dynamiccl.tuning.config import ExperimentConfig
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.policy_file import save_policy

ACTIVATION_FUNCTIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
WORKER_START_METHOD = "forkserver"  # SB3's default on Linux; a worker does not inherit this process's state


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced. ``wall_s``: seconds of training, counting runs before a resume;
    ``final_mean_speedup``: arithmetic mean of ``speedup`` over the last 50 episodes (None: none ended);
    ``n_envs``: environments stepped at once (``[train] n_envs``); ``timesteps_per_s``: timesteps
    this call learned per second of ``learn`` (rollouts and updates, not the start-up; None when it
    learned none)."""

    output_dir: Path
    policy_path: Path
    timesteps: int
    episodes: int
    wall_s: float
    final_mean_speedup: float | None
    seed: int
    resumed_from: int | None = None
    n_envs: int = 1
    timesteps_per_s: float | None = None


def train(config: ExperimentConfig, output_dir: str | os.PathLike, *, resume: bool = False,
          progress: bool = True, max_timesteps: int | None = None) -> TrainResult:
    """Train MaskablePPO on the config's training cases; write the policy and the run's records.

    Args:
        config: from :func:`dynamiccl.tuning.config.load_config`.
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
    ``n_steps * n_envs`` past the start), so ``timesteps`` may exceed it by up to
    ``n_steps * n_envs - 1``.

    Determinism: the same config and seed give the same policy (torch runs on one CPU thread;
    SB3 seeds torch, numpy, the action space and the env's draws: worker ``i`` of ``n_envs``
    draws from ``seed + i``). ``n_envs = 1`` steps its one env in this process, exactly as before
    the key existed, so runs made then reproduce. A resumed run is deterministic
    given its checkpoint but not bit-identical to an uninterrupted one: SB3 checkpoints hold no
    RNG states and the env restarts at a fresh episode (the generators are reseeded with
    ``seed + checkpoint timesteps``).

    Raises:
        InputError: a workload the generator rejects; ``resume`` without a checkpoint or with a
            config that differs from the run's; a fresh run into a directory that already holds
            one; ``max_timesteps`` < 1.
        EOFError, BrokenPipeError: a worker process died (its traceback is on stderr); the
            others are stopped.
    """
    output_dir = Path(output_dir)
    t = config.train
    if max_timesteps is not None and max_timesteps < 1:
        raise InputError("--timesteps", None, f"expected an integer >= 1, got {max_timesteps}")
    target = t.total_timesteps if max_timesteps is None else min(t.total_timesteps, max_timesteps)
    start = _resume_point(config, output_dir) if resume else _fresh_run(config, output_dir)
    cases = config.train_cases(output_dir)

    curve_path = output_dir / "training_curve.csv"
    curve = SpeedupCurve() if start is None else SpeedupCurve.resumed(curve_path, start)
    checkpoints = Checkpoints(t.checkpoint_every, output_dir / "checkpoints", curve, curve_path)
    bar = ProgressBar(target, curve, progress)
    env = _vec_env(config, cases)
    with _closing_vec_env(env), contextlib.closing(bar), _torch_threads(1):
        agent = _new_agent(config, env) if start is None else _resumed_agent(config, env, start)
        remaining = target - agent.num_timesteps
        learned_from, learn_s = agent.num_timesteps, 0.0
        if remaining > 0:
            # The logger SB3 would make itself (tensorboard/ppo_<n>, continued on resume), made
            # here so that this function owns it and closes it.
            with contextlib.closing(configure_logger(0, str(output_dir / "tensorboard"), CHECKPOINT_PREFIX,
                                                     reset_num_timesteps=start is None)) as logger:
                agent.set_logger(logger)
                began = time.perf_counter()
                agent.learn(remaining, callback=[curve, checkpoints, bar], reset_num_timesteps=start is None)
                learn_s = time.perf_counter() - began
        checkpoints.save(agent)  # the final state, for a later resume with more timesteps

    wall_s = curve.wall_s()
    final = curve.recent_mean()
    resumed_from = start.timesteps if start else None
    provenance = {
        "experiment": config.name, "description": config.description, "config_path": config.source,
        "config": config.raw, "seed": config.seed, "timesteps": int(agent.num_timesteps),
        "episodes": len(curve.rows), "wall_s": round(wall_s, 3), "final_mean_speedup": final,
        "dynamiccl_version": dynamiccl.__version__, "cost_model": config.model, "states": t.states,
        "training_cases": [{"trace": c.trace, "env": c.env, "step": c.step, "label": c.label,
                            "compute": load_case(c, config.model, config.cost_options()).program.compute}
                           for c in cases],
        "algorithm": "MaskablePPO", "library_versions": _library_versions(), "resumed_from": resumed_from,
        "knobs": config.knobs, "n_envs": t.n_envs,
    }
    if config.measurements:
        provenance["measurements"] = list(config.measurements)
    policy_path = save_policy(output_dir / "policy.zip", agent, provenance)
    result = TrainResult(output_dir, policy_path, int(agent.num_timesteps), len(curve.rows), wall_s, final,
                         config.seed, resumed_from, t.n_envs,
                         (agent.num_timesteps - learned_from) / learn_s if learn_s > 0 else None)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    summary.update(experiment=config.name, wall_s=round(wall_s, 3), policy="policy.zip",
                   final_mean_speedup_episodes=min(FINAL_EPISODES, len(curve.rows)))
    write_text(output_dir / "train.json", json.dumps(summary, indent=2) + "\n")
    return result


def make_env(cases: list[Case], model: str, states: int, cost_options: CostModelOptions, knobs: bool,
             setting: tuple[str, dict[str, str]] | None = None, worker: bool = False) -> Monitor:
    """One training environment: ``TuningEnv(cases, model, states, ...)`` in SB3's ``Monitor``
    (which records each episode's return and length in its last ``info``).

    ``worker``: made in a ``SubprocVecEnv`` worker process, which then runs torch on one thread
    (no thread pool per worker on a machine the trainer already keeps busy), ignores SIGINT (on
    Ctrl-C the trainer stops its workers, instead of each dying with a traceback) and takes the
    trainer's ``setting`` (:func:`dynamiccl.sweep.submitter_setting`: its working directory and its
    ``DYNAMICCL_*`` variables, ``--params`` included), as a sweep's workers do: a forkserver worker
    does not inherit the trainer's environment as it is now.
    Module-level so that ``functools.partial`` of it pickles to the worker.

    Raises:
        InputError: as :class:`~dynamiccl.tuning.env.TuningEnv` (a case that does not load).
    """
    if worker:
        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if setting is not None:
            enter_setting(*setting)
    return Monitor(TuningEnv(cases, model, states, cost_options=cost_options, knobs=knobs))


def _vec_env(config: ExperimentConfig, cases: list[Case]) -> VecEnv:
    """``[train] n_envs`` environments of :func:`make_env`: a ``DummyVecEnv`` of one in this process,
    else a ``SubprocVecEnv`` of that many workers, or with ``vec_env = "dummy"`` a ``DummyVecEnv`` of
    that many. The cases are loaded here first (the provenance
    needs them anyway), so that a case that does not load is an ``InputError`` from this process,
    not a worker's death."""
    factory = functools.partial(make_env, cases, config.model, config.train.states, config.cost_options(),
                                config.knobs, submitter_setting())
    if config.train.n_envs == 1:
        return DummyVecEnv([factory])
    if config.train.vec_env == "dummy":  # the same environments, stepped in turn in this process
        return DummyVecEnv([factory] * config.train.n_envs)
    for case in cases:
        load_case(case, config.model, config.cost_options(), knobs=config.knobs)
    # Workers fork from the forkserver with this module (torch, SB3) already imported, once per
    # process, instead of each importing it (seconds); no effect if the forkserver already runs.
    multiprocessing.get_context(WORKER_START_METHOD).set_forkserver_preload([__name__])
    return SubprocVecEnv([functools.partial(factory, worker=True)] * config.train.n_envs,
                         start_method=WORKER_START_METHOD)


@contextlib.contextmanager
def _closing_vec_env(env: VecEnv) -> Iterator[VecEnv]:
    """Close ``env`` however the block ends, leaving no worker process behind.

    A block that ends normally closes it as SB3 does (each worker told to close, then joined). One
    that raises (a worker that died, Ctrl-C, an error in a callback) terminates and joins the
    workers instead: SB3's ``close`` first reads the answer of a step in flight, which a dead
    worker never sends and a step interrupted between two workers' answers has partly consumed,
    so it could wait forever.
    """
    try:
        yield env
    except BaseException:
        processes = getattr(env, "processes", None)  # SubprocVecEnv's workers
        if processes is None:
            env.close()
        else:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join()
            for remote in env.remotes:
                remote.close()
        raise
    env.close()


def _fresh_run(config: ExperimentConfig, output_dir: Path) -> None:
    """Refuse a directory that holds a run; record what a later resume must match (``run.json``)."""
    if latest_checkpoint(output_dir / "checkpoints") is not None or (output_dir / "policy.zip").exists():
        raise InputError(output_dir, None, "already holds a training run; continue it with --resume, or train a "
                                           "new one into a fresh directory with --output-dir DIR")
    write_text(output_dir / "run.json", json.dumps({"config_path": config.source,
                                                    "fingerprint": config.resume_fingerprint()}, indent=2) + "\n")


def _resume_point(config: ExperimentConfig, output_dir: Path) -> Checkpoint:
    """The latest checkpoint, once ``config`` is known to continue the run recorded in ``run.json``."""
    checkpoint_dir = output_dir / "checkpoints"
    start = latest_checkpoint(checkpoint_dir)
    if start is None:
        raise InputError(checkpoint_dir, None, f"no checkpoint to resume from (expected "
                                               f"{CHECKPOINT_PREFIX}_<timesteps>_steps.zip)")
    run_file = output_dir / "run.json"
    try:
        saved = json.loads(run_file.read_text(encoding="utf-8"))["fingerprint"]
    except FileNotFoundError:
        return start  # a run from before run.json existed: nothing to compare with
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(run_file, None, f"unreadable run record: {e}") from None
    fingerprint = config.resume_fingerprint()
    for key in sorted(set(fingerprint) | set(saved)):
        if fingerprint.get(key) != saved.get(key):
            raise InputError(config.source, key, f"{fingerprint.get(key)!r} differs from the run being resumed "
                                                 f"({saved.get(key)!r} in {run_file}); restore it or start a new run")
    return start


def _new_agent(config: ExperimentConfig, env: VecEnv) -> MaskablePPO:
    """A fresh MaskablePPO with the config's hyperparameters, seeded with ``experiment.seed``."""
    t = config.train
    return MaskablePPO(
        "MlpPolicy", env, learning_rate=t.learning_rate, n_steps=t.n_steps, batch_size=t.batch_size,
        n_epochs=t.n_epochs, gamma=t.gamma, gae_lambda=t.gae_lambda, ent_coef=t.ent_coef,
        clip_range=t.clip_range, vf_coef=t.vf_coef, max_grad_norm=t.max_grad_norm,
        policy_kwargs={"net_arch": list(t.net_arch), "activation_fn": ACTIVATION_FUNCTIONS[t.activation]},
        seed=config.seed, device="cpu", verbose=0)


def _resumed_agent(config: ExperimentConfig, env: VecEnv, start: Checkpoint) -> MaskablePPO:
    """The agent of ``start`` (our own checkpoint, see :func:`train`: SB3's loader unpickles it) on
    ``env``, reseeded with ``seed + timesteps``. ``force_reset`` drops the observation saved with
    it (it belongs to the old env), so learning starts with a fresh episode."""
    agent = MaskablePPO.load(start.path, env=env, device="cpu", force_reset=True)
    agent.set_random_seed(config.seed + start.timesteps)
    return agent


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch on ``n`` threads inside the block (determinism, and small MLPs gain nothing from more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("stable-baselines3", "sb3-contrib", "torch", "gymnasium", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions
