"""Experiment configs: the TOML file that ``dynamiccl train``, ``evaluate`` and ``table export`` read.

Every key but the cases has the default shown; the fields are declared once, below, with
:mod:`dynamiccl.schema` (types, ranges, defaults, help), so a bad value is an error that names the
file, the ``section.key`` and what was expected::

    [experiment]
    name = "default"            # results go to experiments/<name>/ unless told otherwise (default: file stem)
    description = ""
    seed = 0                    # seeds torch, numpy, the agent and the env's draws of (case, state)
    model = "world"             # cost model: world | nccl | live | measured
    measurements = []           # model = "measured": its CSVs (`dynamiccl measure`), relative to this file
    knobs = false               # also decide communicator configs (CTA budgets, CTA policy) and chunk sizes

    [train]
    total_timesteps = 200000    # decisions (one per collective call) over the whole run
    learning_rate = 3e-4
    n_steps = 2048              # decisions per rollout, per environment
    n_envs = 1                  # environments stepped at once, one process each when > 1 (1..64)
    batch_size = 256            # minibatch; at most n_steps * n_envs
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
    knobs = false               # the same as [experiment] knobs (either turns them on)

    [[train.cases]]             # one or more; trace = "path" or workload = {model = ..., tp = ...}
                                # (a workload's GPU and node size come from env: dynamiccl.workload.spec)
    trace = "traces/llama3-8b_tp1-pp1-dp8.parquet"
    env = "dgx-h100"            # shipped spec name or path to a spec
    # step = 3                  # optional: the trace step to replay (default: the last)

    [heldout]                   # optional: what evaluation uses; training never sees it
    states = 4
    state_offset = 1000         # held-out dynamics states: state_offset .. state_offset+states-1
    [[heldout.cases]]
    workload = { model = "llama3-70b", tp = 4, pp = 4, dp = 2 }
    env = "h100-ib-4x8"

The ``[train]`` keys other than ``cases``, ``checkpoint_every``, ``states`` and ``n_envs`` are
MaskablePPO's hyperparameters, with stable-baselines3's names and units.

Environments: ``n_envs = N`` > 1 steps N ``TuningEnv`` s at once, each in a worker process of
stable-baselines3's ``SubprocVecEnv`` (1: one in this process, ``DummyVecEnv``, as before the key
existed). Worker ``i`` draws its (case, state) sequence from ``seed + i``, so a run is reproducible
for a given ``n_envs``, but runs with different ``n_envs`` differ. ``n_steps`` counts decisions per
environment: a rollout is ``n_steps * n_envs`` decisions, and checkpoints and the end of training
fall on rollout boundaries. It therefore belongs to the run (a resume must keep it), and the live
model (which measures while it builds an environment) trains with one. The workers step at once
and the policy decides for all of them in one batch, but every vector step also costs two round
trips to the workers (the step, and sb3-contrib's ``action_masks``): more environments pay only
where an environment step costs well more than those and the policy's forward pass, and on free
cores (``dynamiccl bench train-n-envs`` measures it).

Relative trace and spec paths resolve against the current directory first, then against the
repository root (the config file's parent's parent). Workloads are generated once into
``<output_dir>/workloads/`` (:meth:`dynamiccl.workload.spec.WorkloadSpec.cached_trace`).

Knobs: ``knobs = true`` (under ``[experiment]`` or ``[train]``) trains, evaluates and searches in
``TuningEnv(knobs=True)``: one decision per communicator shape (``knobs.comm_config.COMM_CHOICES``)
before the calls, and chunk-size call actions where the cost model prices them. Its reward credits
each communicator decision with its own effect on the step, so ``gamma = 0`` learns them too.

Discounting: ``gamma = 0`` by default. Each decision's reward in ``TuningEnv`` is already that
decision's own effect on the step time (in per cent of NCCL's default step time), so the problem is
close to a contextual bandit and discounting future rewards would only add other decisions' noise
to every advantage. The last decision's reward also carries the residual (what the per-call
rewards did not account for: interactions between calls), so with ``gamma = 0`` that residual is
credited to the last call alone; raise ``gamma`` to spread it.

Checks that relate fields (``batch_size <= n_steps * n_envs``, ``n_envs = 1`` with the live model,
held-out states after the training states, exactly one of ``trace`` and ``workload``, a trace and a
spec that exist) follow the declared ones and raise the same kind of error.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dynamiccl import schema
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError, LayoutError
from dynamiccl.tuning.cases import Case
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import COST_MODELS, DEFAULT_COST_MODEL
from dynamiccl.tuning.policy_file import ACTIVATIONS  # what a policy file can hold
from dynamiccl.workload.spec import WORKLOAD, WorkloadSpec

# [train] keys a resumed run may change. Not n_envs: n_steps is per environment, so it sets the
# rollout (n_steps * n_envs decisions), the checkpoint boundaries and each worker's seed.
RESUME_FREE = ("total_timesteps", "checkpoint_every")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# --- the declared fields ---------------------------------------------------------------------------

CASE = schema.Schema(
    schema.string("trace", None, help="a trace file; exactly one of trace and workload"),
    schema.table("workload", WORKLOAD, None, help="a generator workload (dynamiccl.workload.spec); its compute "
                                                  "and node size come from env unless it names them"),
    schema.string("env", help="a shipped spec name (dgx-h100) or the path of a spec file"),
    schema.integer("step", None, low=0, help="the trace step to replay (default: the last)"),
)
EXPERIMENT = schema.Schema(
    schema.string("name", None, help="results go to experiments/<name>/ (default: the config file's stem)"),
    schema.string("description", ""),
    schema.integer("seed", 0, low=0, high=2**32 - 1,
                   help="seeds torch, numpy, the agent and the env's draws of (case, state)"),
    schema.choice("model", tuple(COST_MODELS), DEFAULT_COST_MODEL, help="the cost model the environment replays with"),
    schema.json_list("measurements", (), help="with model = \"measured\": its measurements CSVs (`dynamiccl measure`), "
                                              "relative to this config file",
                     expect="a list of measurements CSV paths"),
    schema.flag("knobs", False, help="also decide communicator configs and chunk sizes (TuningEnv(knobs=True))"),
)
TRAIN = schema.Schema(
    schema.tables("cases", CASE, [], help="one or more training cases"),
    schema.integer("total_timesteps", 200_000, low=1, help="decisions (one per collective call) over the whole run"),
    schema.number("learning_rate", 3e-4, low=0, low_inclusive=False, high=1.0),
    schema.integer("n_steps", 2048, low=2, help="decisions per rollout, per environment"),
    schema.integer("n_envs", 1, low=1, high=64,
                   help="environments stepped at once (SubprocVecEnv workers when > 1); a rollout is "
                        "n_steps * n_envs decisions"),
    schema.integer("batch_size", 256, low=2, help="minibatch; at most n_steps * n_envs"),
    schema.integer("n_epochs", 5, low=1, high=1000),
    schema.number("gamma", 0.0, low=0, high=1.0, help="discount (0: each decision is credited its own effect)"),
    schema.number("gae_lambda", 0.95, low=0, high=1.0),
    schema.number("ent_coef", 0.01, low=0),
    schema.number("clip_range", 0.2, low=0, low_inclusive=False, high=1.0),
    schema.number("vf_coef", 0.5, low=0),
    schema.number("max_grad_norm", 0.5, low=0, low_inclusive=False),
    schema.int_list("net_arch", (64, 64), low=1, high=4096, max_len=8,
                    help="hidden layers of the actor and (separately) the critic"),
    schema.choice("activation", ACTIVATIONS, "tanh"),
    schema.integer("checkpoint_every", 50_000, low=1, help="timesteps between checkpoints"),
    schema.integer("states", 8, low=1, help="dynamics states 0..states-1 are drawn in training"),
    schema.flag("knobs", False, help="the same as [experiment] knobs (either turns them on)"),
)
HELDOUT = schema.Schema(
    schema.tables("cases", CASE, [], help="evaluation cases; training never sees them"),
    schema.integer("states", 4, low=1),
    schema.integer("state_offset", 1000, low=0,
                   help="held-out dynamics states are state_offset .. state_offset+states-1"),
)
EXPERIMENT_CONFIG = schema.Schema(
    schema.table("experiment", EXPERIMENT, {}), schema.table("train", TRAIN, {}),
    schema.table("heldout", HELDOUT, {}),
    sections=True,
)


# --- the parsed config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSpec:
    """One ``[[train.cases]]`` / ``[[heldout.cases]]`` entry as validated; ``where`` names it
    (``train.cases[0]``). Exactly one of ``trace`` (a path that exists) and ``workload`` is set."""

    where: str
    env: str
    trace: str | None = None
    workload: WorkloadSpec | None = None
    step: int | None = None

    def resolve(self, workload_dir: str | os.PathLike, source: str) -> Case:
        """The :class:`Case`; a workload is generated on the case's cluster into ``workload_dir``
        the first time.

        Raises:
            InputError: a workload whose layout the model cannot run, naming ``source`` and
                ``<where>.workload``.
        """
        if self.trace is not None:
            return Case(self.trace, self.env, self.step)
        try:
            trace = self.workload.cached_trace(workload_dir, resolve_env(self.env).cluster)
        except LayoutError as err:
            raise InputError(source, f"{self.where}.workload", err.problem) from None
        return Case(str(trace), self.env, self.step)

    def describe(self) -> dict:
        """JSON form (for provenance and resume checks); a workload with every key spelled out."""
        workload = self.workload.to_dict() if self.workload is not None else None
        return {"trace": self.trace, "workload": workload, "env": self.env, "step": self.step}


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: MaskablePPO's hyperparameters (SB3 names and units) and the training split.
    Defaults and ranges: :data:`TRAIN`."""

    cases: tuple[CaseSpec, ...]
    total_timesteps: int
    learning_rate: float
    n_steps: int
    batch_size: int
    n_epochs: int
    gamma: float
    gae_lambda: float
    ent_coef: float
    clip_range: float
    vf_coef: float
    max_grad_norm: float
    net_arch: tuple[int, ...]
    activation: str
    checkpoint_every: int
    states: int
    knobs: bool = False
    n_envs: int = 1


@dataclass(frozen=True)
class HeldoutConfig:
    """``[heldout]``: cases and dynamics states for evaluation only (states disjoint from training's)."""

    cases: tuple[CaseSpec, ...]
    states: int
    state_offset: int


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
    measurements: tuple[str, ...] = ()  # the measured model's CSVs, resolved against the config's directory
    knobs: bool = False  # [experiment] knobs or [train] knobs: TuningEnv(knobs=True) for train/evaluate/search

    def cost_options(self) -> CostModelOptions:
        """The options the config's cost model is made with (the measured model's CSVs)."""
        return CostModelOptions(measurements=self.measurements)

    def default_output_dir(self) -> Path:
        """``experiments/<name>`` (relative to the current directory)."""
        return Path("experiments") / self.name

    def run_dir(self, given: str | os.PathLike | None = None) -> Path:
        """The training run's directory (policy, checkpoints, generated workloads): ``given`` if
        set, else ``experiments/<name>/run``."""
        return Path(given) if given else self.default_output_dir() / "run"

    def train_cases(self, output_dir: str | os.PathLike) -> list[Case]:
        """The training cases; workloads are generated into ``<output_dir>/workloads``.

        Raises:
            InputError: a workload the generator rejects (naming the config and the key).
        """
        return [c.resolve(Path(output_dir) / "workloads", self.source) for c in self.train.cases]

    def heldout_cases(self, output_dir: str | os.PathLike) -> list[Case]:
        """The held-out cases (may be empty), resolved like :meth:`train_cases`."""
        return [c.resolve(Path(output_dir) / "workloads", self.source) for c in self.heldout.cases]

    def resume_fingerprint(self) -> dict:
        """What a resumed run must share with the run it continues, as ``{"section.key": value}``
        (JSON-normalised): the seed, the cost model (and its measurements) and every ``[train]`` key
        but :data:`RESUME_FREE` (``train.n_envs`` only when it is not 1, so that runs from before
        the key stay resumable)."""
        values = {"experiment.seed": self.seed, "experiment.model": self.model}
        if self.measurements:  # only when set: runs from before the key stay resumable
            values["experiment.measurements"] = list(self.measurements)
        if self.knobs:  # likewise
            values["experiment.knobs"] = True
        for key in TrainConfig.__dataclass_fields__:
            if key == "cases":
                values["train.cases"] = [c.describe() for c in self.train.cases]
            elif key == "knobs":
                continue  # experiment.knobs above says it
            elif key == "n_envs" and self.train.n_envs == 1:
                continue  # the default: runs from before the key recorded none
            elif key not in RESUME_FREE:
                values[f"train.{key}"] = getattr(self.train, key)
        return json.loads(json.dumps(values))


# --- reading a config ------------------------------------------------------------------------------


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment config (see the module docstring for the keys).

    Raises:
        InputError: naming the file and the ``section.key`` for an unreadable file or bad TOML,
            an unknown section or key, a wrong type or out-of-range value, missing training cases,
            a case with neither or both of ``trace`` and ``workload``, a trace or spec that cannot be
            found, held-out states that overlap the training states, ``batch_size`` above
            ``n_steps * n_envs``, or ``n_envs`` > 1 with the live model.
    """
    source = os.fspath(path)
    if not Path(source).exists():
        raise InputError(source, None, "no such config file")
    raw = schema.read_toml(source, "experiment config")
    doc = EXPERIMENT_CONFIG.parse(raw, source)
    repo_root = Path(source).resolve().parent.parent

    experiment = doc["experiment"]
    name = experiment.get("name", Path(source).stem)
    if not _NAME.fullmatch(name):
        raise schema.expected(source, "experiment.name", "a directory name (letters, digits, '.', '_', '-')", name)

    values = doc["train"]
    if not values["cases"]:
        raise InputError(source, "train.cases", 'missing: at least one [[train.cases]] with trace = "path" or '
                                                'workload = {model = ...}, and env = "spec"')
    rollout = values["n_steps"] * values["n_envs"]
    if values["batch_size"] > rollout:
        bound = TRAIN.replace("batch_size", high=rollout)["batch_size"]
        raise schema.expected(source, "train.batch_size", f"{bound.expectation()} (train.n_steps * train.n_envs, "
                                                          f"the decisions of one rollout)", values["batch_size"])
    if values["n_envs"] > 1 and experiment["model"] == "live":
        raise InputError(source, "train.n_envs", f"expected 1 with model = \"live\", got {values['n_envs']}: the live "
                                                 "model times real collectives while it builds an environment, and "
                                                 "environments built at once would time each other")
    train = TrainConfig(**{**values, "cases": _case_specs(values["cases"], "train.cases", source, repo_root)})

    values = doc["heldout"]
    heldout = HeldoutConfig(**{**values, "cases": _case_specs(values["cases"], "heldout.cases", source, repo_root)})
    if heldout.state_offset < train.states:
        raise InputError(source, "heldout.state_offset",
                         f"held-out dynamics states {heldout.state_offset}..{heldout.state_offset + heldout.states - 1}"
                         f" overlap the training states 0..{train.states - 1}; expected state_offset >= train.states")
    measurements = _measurement_paths(experiment["model"], experiment["measurements"], source)
    return ExperimentConfig(source, name, experiment["description"], experiment["seed"], experiment["model"],
                            train, heldout, raw=raw, measurements=measurements,
                            knobs=bool(experiment["knobs"] or train.knobs))


def _measurement_paths(model: str, values: list, source: str) -> tuple[str, ...]:
    """``experiment.measurements`` as absolute paths (relative ones against the config's directory).

    Raises:
        InputError: naming ``experiment.measurements[i]``: not a string, or no such file; naming
            ``experiment.measurements``: missing with model "measured", or given with another model.
    """
    field_name = "experiment.measurements"
    if model != "measured":
        if values:
            raise InputError(source, field_name, f"only model = \"measured\" reads measurements (model is {model!r})")
        return ()
    if not values:
        raise InputError(source, field_name, 'missing: model = "measured" needs its measurements CSVs, e.g. '
                                             'measurements = ["M.csv"] (written by `dynamiccl measure`)')
    paths = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise schema.expected(source, f"{field_name}[{i}]", "a measurements CSV path", value)
        path = Path(source).resolve().parent / Path(value).expanduser()
        if not path.is_file():
            raise InputError(source, f"{field_name}[{i}]", f"no such file {value!r} (relative paths are read from "
                                                           f"the config's directory: {path})")
        paths.append(str(path))
    return tuple(paths)


def _case_specs(cases: list[dict], where: str, source: str, repo_root: Path) -> tuple[CaseSpec, ...]:
    """The ``[[where]]`` entries (already checked against :data:`CASE`) with their paths resolved."""
    specs = []
    for i, values in enumerate(cases):
        at = f"{where}[{i}]"
        if ("trace" in values) == ("workload" in values):
            raise InputError(source, at, 'expected exactly one of trace = "path" and workload = {model = ..., ...}')
        trace = None
        if "trace" in values:
            trace = _resolve_path(values["trace"], repo_root)
            if trace is None:
                raise InputError(source, f"{at}.trace", f"no such file {values['trace']!r} (looked in the current "
                                                        f"directory and in {repo_root})")
        env = values["env"]
        env_path = _resolve_path(env, repo_root) if env.endswith(".toml") or "/" in env else env
        if env_path is None:
            raise InputError(source, f"{at}.env", f"no such file {env!r} (looked in the current directory and "
                                                  f"in {repo_root})")
        try:
            resolve_env(env_path)
        except InputError as e:
            raise InputError(source, f"{at}.env", str(e)) from None
        workload = WorkloadSpec.from_values(values["workload"], source, f"{at}.workload.") if "workload" in values else None
        specs.append(CaseSpec(at, env_path, trace, workload, values.get("step")))
    return tuple(specs)


def _resolve_path(value: str, repo_root: Path) -> str | None:
    """``value`` as written if it exists (absolute or relative to the current directory), else the
    path under ``repo_root`` if that exists, else None.

    The string is kept as written where it resolves, so that provenance and resume checks compare
    the config's own spelling (``dynamics_seed`` hashes only the file name).
    """
    path = Path(value).expanduser()
    if path.exists():
        return str(path) if value.startswith("~") else value
    if not path.is_absolute() and (repo_root / path).exists():
        return str(repo_root / path)
    return None
