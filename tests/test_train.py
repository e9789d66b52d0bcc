"""Tests of dynamiccl.tuning.config (config validation), dynamiccl.tuning.train (a tiny seeded
MaskablePPO run, resume, determinism) and dynamiccl.tuning.policy_file (a pickle-free policy
format whose ``decide`` reproduces ``MaskablePPO.predict``)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dynamiccl.errors import InputError
from dynamiccl.tuning.actions import NUM_ACTIONS
from dynamiccl.tuning.callbacks import latest_checkpoint
from dynamiccl.tuning.observation import OBS_SIZE
from dynamiccl.tuning.policy_file import PolicyNetwork, load_policy, save_policy
from dynamiccl.tuning.config import load_config
from dynamiccl.tuning.train import train

REPO = Path(__file__).resolve().parent.parent
TRACE = str(REPO / "traces" / "ref-pp2-dp2.parquet")

TINY = f"""
[experiment]
name = "tiny"
description = "a test run"
seed = 7
model = "world"

[train]
total_timesteps = 512
n_steps = 128
batch_size = 64
n_epochs = 2
checkpoint_every = 256
net_arch = [16, 16]
states = 4

[[train.cases]]
trace = "{TRACE}"
env = "dgx-h100"

[heldout]
states = 2
state_offset = 100
"""


def write_config(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- config validation ---------------------------------------------------------------------------


def test_config_parses_with_defaults(tmp_path):
    config = load_config(write_config(tmp_path, TINY))
    assert config.name == "tiny" and config.seed == 7 and config.model == "world"
    assert config.train.net_arch == (16, 16) and config.train.gamma == 0.0 and config.train.activation == "tanh"
    assert config.train.cases[0].trace == TRACE and config.train.cases[0].env == "dgx-h100"
    assert config.heldout.states == 2 and config.heldout.state_offset == 100 and config.heldout.cases == ()
    assert config.default_output_dir() == Path("experiments") / "tiny"


def test_config_docstring_shows_every_declared_key_with_its_default():
    """The module docstring is the config's reference: its example must not drift from the schema."""
    import itertools
    import textwrap
    import tomllib

    from dynamiccl.tuning import config as config_module

    doc = config_module.__doc__
    lines = doc.split("::\n\n", 1)[1].splitlines()
    example = textwrap.dedent("\n".join(line for line in itertools.takewhile(
        lambda line: not line or line.startswith("    "), lines)))
    shown = tomllib.loads(example)
    for section, declared in (("experiment", config_module.EXPERIMENT), ("train", config_module.TRAIN),
                              ("heldout", config_module.HELDOUT)):
        assert set(shown[section]) == set(declared.names), section
        for f in declared.fields:
            if f.name not in ("name", "cases"):  # name defaults to the file's stem; cases have none
                value = shown[section][f.name]
                assert (tuple(value) if isinstance(value, list) else value) == f.default, f"{section}.{f.name}"
    for f in config_module.CASE.fields:
        assert f"{f.name} = " in example, f"cases: {f.name}"


def test_relative_trace_resolves_against_repository_root(tmp_path, monkeypatch):
    configs = tmp_path / "repo" / "configs"
    configs.mkdir(parents=True)
    (tmp_path / "repo" / "traces").mkdir()
    (tmp_path / "repo" / "traces" / "t.parquet").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    path = write_config(configs, TINY.replace(TRACE, "traces/t.parquet"))
    assert load_config(path).train.cases[0].trace == str(tmp_path / "repo" / "traces" / "t.parquet")
    monkeypatch.chdir(tmp_path / "repo")  # found in the current directory: kept as written
    assert load_config(path).train.cases[0].trace == "traces/t.parquet"


@pytest.mark.parametrize("old, new, field, words", [
    ("n_epochs = 2", "n_epochs = 2\nlearning_rte = 0.1", "train.learning_rte", "unknown key"),
    ("seed = 7", 'seed = "seven"', "experiment.seed", "expected an integer"),
    ("net_arch = [16, 16]", 'net_arch = [16, "x"]', "train.net_arch", "list of at most"),
    ("batch_size = 64", "batch_size = 256", "train.batch_size", "<= 128"),
    ("states = 4", "states = 4\ngamma = 1.5", "train.gamma", "<= 1"),
    ('model = "world"', 'model = "magic"', "experiment.model", "one of"),
    ('env = "dgx-h100"', 'env = "no-such-cluster"', "train.cases[0].env", "no-such-cluster"),
    (f'trace = "{TRACE}"', 'trace = "traces/missing.parquet"', "train.cases[0].trace", "no such file"),
    (f'trace = "{TRACE}"', f'trace = "{TRACE}"\nworkload = {{model = "llama3-8b"}}', "train.cases[0]",
     "exactly one of"),
    ("state_offset = 100", "state_offset = 2", "heldout.state_offset", "overlap"),
    ("[heldout]", "[holdout]", "holdout", "unknown section"),
])
def test_config_errors_name_file_and_key(tmp_path, old, new, field, words):
    assert old in TINY
    path = write_config(tmp_path, TINY.replace(old, new, 1))
    with pytest.raises(InputError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.field == field
    assert words in str(info.value)


TWO_ENVS = TINY.replace("n_steps = 128", "n_steps = 64\nn_envs = 2")  # rollouts of 64 * 2 = 128 decisions


@pytest.mark.parametrize("old, new, words", [
    ("n_envs = 2", "n_envs = 0", "expected an integer >= 1"),
    ("n_envs = 2", "n_envs = 65", "<= 64"),
    ("batch_size = 64", "batch_size = 129", "expected an integer >= 2 and <= 128 (train.n_steps * train.n_envs"),
    ('model = "world"', 'model = "live"', "expected 1 with model = \"live\", got 2"),
])
def test_n_envs_errors_name_file_and_key(tmp_path, old, new, words):
    path = write_config(tmp_path, TWO_ENVS.replace(old, new, 1))
    with pytest.raises(InputError) as info:
        load_config(path)
    field = "train.batch_size" if "batch_size" in new else "train.n_envs"
    assert (info.value.source, info.value.field) == (str(path), field)
    assert words in str(info.value)


def test_n_envs_sets_the_rollout_and_belongs_to_the_run(tmp_path):
    config = load_config(write_config(tmp_path, TWO_ENVS.replace("batch_size = 64", "batch_size = 128")))
    assert config.train.n_envs == 2 and config.train.batch_size == 128  # a whole rollout of 64 * 2
    assert config.resume_fingerprint()["train.n_envs"] == 2
    one = load_config(write_config(tmp_path, TINY, "one.toml"))
    assert one.train.n_envs == 1 and "train.n_envs" not in one.resume_fingerprint()  # as before the key


def test_config_missing_cases(tmp_path):
    text = TINY.split("[[train.cases]]")[0] + "[heldout]\nstates = 2\nstate_offset = 100\n"
    path = write_config(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_config(path)
    assert (info.value.source, info.value.field) == (str(path), "train.cases")
    assert "missing" in str(info.value)


def test_config_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(write_config(tmp_path, "[train\n"))
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_workload_key_errors_name_the_workload_key(tmp_path):
    text = TINY.replace(f'trace = "{TRACE}"', 'workload = {model = "llama3-8b", tensor_parallel = 2}')
    path = write_config(tmp_path, text)
    with pytest.raises(InputError) as info:  # checked when the config is read, before any trace is made
        load_config(path).train_cases(tmp_path / "out")
    assert (info.value.source, info.value.field) == (str(path), "train.cases[0].workload.tensor_parallel")


# --- a tiny training run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    config = load_config(write_config(base, TINY))
    result = train(config, base / "run", progress=False)
    return config, result


def _weights(path) -> dict[str, np.ndarray]:
    return load_policy(path)._named_arrays()


def test_tiny_run_writes_its_outputs(tiny_run):
    config, result = tiny_run
    out = result.output_dir
    assert result.timesteps == 512 and result.episodes > 0 and result.final_mean_speedup > 0
    assert (out / "policy.zip").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("*.zip")) == ["ppo_256_steps.zip", "ppo_512_steps.zip"]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    with open(out / "training_curve.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == result.episodes
    assert list(rows[0]) == ["timesteps", "episode", "case", "speedup", "wall_s"]
    assert rows[0]["case"] == "ref-pp2-dp2@dgx-h100" and float(rows[0]["speedup"]) > 0
    assert [int(r["episode"]) for r in rows] == list(range(1, len(rows) + 1))
    summary = json.loads((out / "train.json").read_text())
    assert summary["timesteps"] == 512 and summary["seed"] == 7 and summary["n_envs"] == 1
    assert summary["timesteps_per_s"] == result.timesteps_per_s > 0
    assert summary["final_mean_speedup"] == pytest.approx(np.mean([float(r["speedup"]) for r in rows[-50:]]))

    network = load_policy(out / "policy.zip")
    assert network.hidden_sizes == [16, 16] and network.activation == "tanh"
    p = network.provenance
    assert p["seed"] == 7 and p["timesteps"] == 512 and p["cost_model"] == "world" and p["n_envs"] == 1
    assert p["config"]["train"]["n_steps"] == 128 and p["config_path"] == config.source
    assert p["training_cases"][0]["env"] == "dgx-h100" and "dynamiccl_version" in p


def test_same_seed_same_policy(tiny_run, tmp_path):
    config, result = tiny_run
    again = train(config, tmp_path / "again", progress=False)
    a, b = _weights(result.policy_path), _weights(again.policy_path)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_fresh_run_refuses_an_existing_run(tiny_run):
    config, result = tiny_run
    with pytest.raises(InputError, match="already holds a training run"):
        train(config, result.output_dir, progress=False)


def test_resume_continues_the_step_count(tmp_path):
    config = load_config(write_config(tmp_path, TINY))
    out = tmp_path / "run"
    first = train(config, out, progress=False, max_timesteps=256)
    assert first.timesteps == 256 and latest_checkpoint(out / "checkpoints")[1] == 256
    resumed = train(config, out, resume=True, progress=False)
    assert resumed.timesteps == 512 and resumed.resumed_from == 256
    assert latest_checkpoint(out / "checkpoints")[1] == 512
    with open(out / "training_curve.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == resumed.episodes > first.episodes
    steps = [int(r["timesteps"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] <= 512 and any(s > 256 for s in steps)
    assert load_policy(out / "policy.zip").provenance["resumed_from"] == 256

    changed = load_config(write_config(tmp_path, TINY.replace("seed = 7", "seed = 8"), "changed.toml"))
    with pytest.raises(InputError) as info:
        train(changed, out, resume=True, progress=False)
    assert info.value.field == "experiment.seed"
    with pytest.raises(InputError, match="no checkpoint"):
        train(config, tmp_path / "empty", resume=True, progress=False)


# --- N environments: SubprocVecEnv workers ---------------------------------------------------------


def _curve(run_dir: Path) -> list[dict]:
    with open(run_dir / "training_curve.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _episode_decisions(config) -> int:
    """Decisions per episode of the config's one case (every episode replays the same step)."""
    from dynamiccl.tuning.env import TuningEnv

    env = TuningEnv(config.train_cases("unused"), config.model, config.train.states)
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        done = env.step(0)[2]
        steps += 1
    return steps


@pytest.fixture(scope="module")
def two_env_runs(tmp_path_factory):
    """Two runs of TWO_ENVS to 256 timesteps with the same seed (the first is resumed by a test)."""
    base = tmp_path_factory.mktemp("two-envs")
    config = load_config(write_config(base, TWO_ENVS))
    runs = [train(config, base / name, progress=False, max_timesteps=256) for name in ("a", "b")]
    weights = [_weights(r.policy_path) for r in runs]
    return config, runs, weights


def test_two_envs_train_through_worker_processes_reproducibly(two_env_runs):
    config, (a, b), (weights_a, weights_b) = two_env_runs
    assert a.timesteps == 256 and a.n_envs == 2  # two rollouts of 64 decisions in each of 2 envs
    for name in weights_a:
        np.testing.assert_array_equal(weights_a[name], weights_b[name], err_msg=name)
    rows_a, rows_b = _curve(a.output_dir), _curve(b.output_dir)
    assert [{k: r[k] for k in r if k != "wall_s"} for r in rows_a] == \
           [{k: r[k] for k in r if k != "wall_s"} for r in rows_b]
    # One row per finished episode of either worker: each worker took 256 / 2 decisions; both
    # replay the same step, so they end episodes on the same steps, worker 0's row first.
    per_episode = _episode_decisions(config)
    assert len(rows_a) == a.episodes == 2 * (128 // per_episode)
    assert [int(r["timesteps"]) for r in rows_a] == [2 * per_episode * (i // 2 + 1) for i in range(len(rows_a))]
    assert [int(r["episode"]) for r in rows_a] == list(range(1, len(rows_a) + 1))
    assert rows_a[0]["speedup"] != rows_a[1]["speedup"]  # the workers drew different dynamics states
    assert json.loads((a.output_dir / "train.json").read_text())["n_envs"] == 2
    assert load_policy(a.policy_path).provenance["n_envs"] == 2


def test_two_envs_resume_to_more_timesteps(two_env_runs, tmp_path):
    config, (a, _), (weights_a, _) = two_env_runs
    one = load_config(write_config(tmp_path, TWO_ENVS.replace("n_envs = 2", "n_envs = 1")))
    with pytest.raises(InputError) as info:  # a rollout of other size: another run
        train(one, a.output_dir, resume=True, progress=False)
    assert info.value.field == "train.n_envs"
    resumed = train(config, a.output_dir, resume=True, progress=False)
    assert resumed.timesteps == 512 and resumed.resumed_from == 256 and resumed.n_envs == 2
    assert latest_checkpoint(a.output_dir / "checkpoints")[1] == 512
    rows = _curve(a.output_dir)
    assert len(rows) == resumed.episodes > a.episodes and int(rows[-1]["timesteps"]) > 256
    after = _weights(resumed.policy_path)
    assert any(not np.array_equal(after[name], weights_a[name]) for name in after)  # it learned on
    assert load_policy(resumed.policy_path).provenance["resumed_from"] == 256


def test_workers_get_their_seeds_masks_and_world_parameters(two_env_runs, tmp_path, monkeypatch):
    """Worker i is seeded with seed + i; sb3-contrib reads each worker's mask through env_method;
    workers price with the trainer's world parameters file (``--params``), which a forkserver
    started before it was set does not pass on by itself."""
    from dataclasses import replace

    from sb3_contrib.common.maskable.utils import get_action_masks

    import dynamiccl.tuning.train as train_module
    from dynamiccl.costmodel import world
    from dynamiccl.tuning.env import TuningEnv

    config = two_env_runs[0]  # the fixture's runs started the forkserver without the variable
    cases = config.train_cases("unused")
    shipped = TuningEnv(cases, config.model, config.train.states)
    shipped.reset(seed=config.seed)
    mine = tmp_path / "my_params.json"
    mine.write_text(replace(world.default_params(), base_us=[39.0, 39.0, 39.0], provenance="my fit").to_json())
    monkeypatch.setenv(world.PARAMS_ENV, str(mine))
    env = train_module._vec_env(config, cases)
    try:
        env.seed(config.seed)
        env.reset()
        masks = get_action_masks(env)
        states, step_times_us = env.get_attr("state"), env.get_attr("default_time_us")
    finally:
        env.close()
    assert not any(p.is_alive() for p in env.processes)
    for i in range(2):
        alone = TuningEnv(cases, config.model, config.train.states)
        alone.reset(seed=config.seed + i)
        assert (states[i], step_times_us[i]) == (alone.state, alone.default_time_us)
        np.testing.assert_array_equal(masks[i], alone.action_masks())
    assert masks.shape == (2, NUM_ACTIONS) and states[0] != states[1]
    assert step_times_us[0] > shipped.default_time_us  # 39 us base latency instead of the shipped fit's


@pytest.mark.parametrize("failure", ["interrupt", "worker dies"])
def test_no_worker_outlives_a_failed_run(tmp_path, monkeypatch, failure):
    """Ctrl-C in the trainer between two workers' answers to a step, or a worker that dies: train
    raises and every worker process is gone (an alarm turns a hang into a failure)."""
    import os
    import signal

    import dynamiccl.tuning.train as train_module

    made = []

    class FailingSubprocVecEnv(train_module.SubprocVecEnv):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps = 0
            made.append(self)

        def step_wait(self):
            self.steps += 1
            if self.steps == 20 and failure == "interrupt":
                self.remotes[0].recv()  # worker 0 answered; Ctrl-C arrives before worker 1's answer
                raise KeyboardInterrupt
            if self.steps == 20:
                os.kill(self.processes[1].pid, signal.SIGKILL)
            return super().step_wait()

    def hung(signum, frame):
        raise AssertionError("train did not return within 60 s of the failure")

    monkeypatch.setattr(train_module, "SubprocVecEnv", FailingSubprocVecEnv)
    config = load_config(write_config(tmp_path, TWO_ENVS))
    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(KeyboardInterrupt if failure == "interrupt" else (EOFError, ConnectionError)):
            train(config, tmp_path / "run", progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert [p.exitcode is not None for p in made[0].processes] == [True, True]


def test_throughput_trains_with_one_env_then_two(tmp_path, capsys):
    """``python -m dynamiccl.tuning.throughput`` (``dynamiccl bench train-n-envs``): both rates and their ratio."""
    from dynamiccl.tuning.throughput import main

    path = write_config(tmp_path, TWO_ENVS.replace("n_envs = 2", "n_envs = 1"))
    assert main(["--config", str(path), "--timesteps", "128"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["timesteps_per_s_1"] > 0 and figures["timesteps_per_s_2"] > 0
    assert figures["ratio"] == pytest.approx(figures["timesteps_per_s_2"] / figures["timesteps_per_s_1"])
    with pytest.raises(InputError) as info:  # a minibatch larger than one env's rollout of 64
        main(["--config", str(write_config(tmp_path, TWO_ENVS.replace("batch_size = 64", "batch_size = 128"),
                                             "big.toml")), "--timesteps", "128"])
    assert info.value.field == "train.batch_size"


# --- policy file: decide == MaskablePPO.predict ---------------------------------------------------


def _random_masks(rng, n: int) -> np.ndarray:
    masks = rng.random((n, NUM_ACTIONS)) < rng.uniform(0.02, 0.6, size=(n, 1))
    masks[:, 0] |= rng.random(n) < 0.5
    masks[~masks.any(axis=1), 0] = True
    return masks


def test_decide_matches_predict_and_respects_masks(tiny_run):
    from sb3_contrib import MaskablePPO

    _, result = tiny_run
    model = MaskablePPO.load(result.output_dir / "checkpoints" / "ppo_512_steps.zip", device="cpu")  # our own file
    network = load_policy(result.policy_path)
    rng = np.random.default_rng(0)
    obs = rng.random((500, OBS_SIZE), dtype=np.float32)
    masks = _random_masks(rng, 500)
    expected, _ = model.predict(obs, action_masks=masks, deterministic=True)
    chosen = network.decide(obs, masks)
    np.testing.assert_array_equal(chosen, expected)
    assert masks[np.arange(500), chosen].all()
    # from_sb3 gives the same network as the file
    direct = PolicyNetwork.from_sb3(model)
    np.testing.assert_array_equal(direct.decide(obs, masks), chosen)


def test_decide_ties_go_to_lowest_index():
    zero = PolicyNetwork(((np.zeros((4, OBS_SIZE)), np.zeros(4)),), (np.zeros((NUM_ACTIONS, 4)), np.zeros(NUM_ACTIONS)))
    masks = np.zeros((2, NUM_ACTIONS), dtype=bool)
    masks[0, [5, 9]] = True
    masks[1, [0, 168]] = True
    np.testing.assert_array_equal(zero.decide(np.zeros((2, OBS_SIZE)), masks), [5, 0])
    with pytest.raises(ValueError, match="no valid action"):
        zero.decide(np.zeros((1, OBS_SIZE)), np.zeros((1, NUM_ACTIONS), dtype=bool))


def test_policy_round_trip_relu_and_no_hidden_layers(tmp_path):
    rng = np.random.default_rng(1)
    for hidden, activation in (((8,), "relu"), ((), "tanh")):
        layers, last = [], OBS_SIZE
        for size in hidden:
            layers.append((rng.standard_normal((size, last)), rng.standard_normal(size)))
            last = size
        network = PolicyNetwork(tuple(layers), (rng.standard_normal((NUM_ACTIONS, last)), rng.standard_normal(NUM_ACTIONS)),
                                activation, {"note": "test"})
        path = save_policy(tmp_path / f"p{len(hidden)}.zip", network)
        loaded = load_policy(path)
        assert loaded.activation == activation and loaded.hidden_sizes == list(hidden)
        assert loaded.provenance == {"note": "test"}
        obs = rng.random((50, OBS_SIZE))
        np.testing.assert_allclose(loaded.logits(obs), network.logits(obs), rtol=1e-5, atol=1e-5)


# --- policy file: hostile and broken files --------------------------------------------------------


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return Path(path)


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good_policy(tiny_run):
    return tiny_run[1].policy_path


def test_load_rejects_garbage_and_truncated_files(tmp_path, good_policy):
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(InputError) as info:
        load_policy(garbage)
    assert info.value.source == str(garbage) and "not a policy file" in str(info.value)

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good_policy.read_bytes()[:200])
    with pytest.raises(InputError) as info:
        load_policy(truncated)
    assert info.value.source == str(truncated)

    with pytest.raises(InputError, match="no such policy file"):
        load_policy(tmp_path / "absent.zip")


def test_load_rejects_wrong_shapes(tmp_path, good_policy):
    members = _members(good_policy)
    arrays = dict(np.load(io.BytesIO(members["weights.npz"]), allow_pickle=False))
    arrays["hidden.1.weight"] = arrays["hidden.1.weight"][:, :8]
    path = _rewrite(tmp_path / "shapes.zip", {**members, "weights.npz": _npz(**arrays)})
    with pytest.raises(InputError) as info:
        load_policy(path)
    assert info.value.source == str(path)
    assert info.value.field == "weights.npz: hidden.1.weight" and "expected shape (16, 16)" in str(info.value)

    header = json.loads(members["policy.json"])
    header["hidden_sizes"] = [16, 32]  # disagrees with the arrays
    path = _rewrite(tmp_path / "sizes.zip", {**members, "policy.json": json.dumps(header).encode()})
    with pytest.raises(InputError) as info:
        load_policy(path)
    assert info.value.field == "weights.npz: hidden.1.weight"


@pytest.mark.parametrize("change, field", [
    (lambda h: h.update(format="something-else"), "policy.json: format"),
    (lambda h: h.update(version=2), "policy.json: version"),
    (lambda h: h.update(num_actions=12), "policy.json: num_actions"),
    (lambda h: h.update(activation="gelu"), "policy.json: activation"),
    (lambda h: h.update(hidden_sizes=[16, -1]), "policy.json: hidden_sizes"),
    (lambda h: h.pop("provenance"), "policy.json: provenance"),
    (lambda h: h.update(extra=1), "policy.json: extra"),
])
def test_load_rejects_bad_headers(tmp_path, good_policy, change, field):
    members = _members(good_policy)
    header = json.loads(members["policy.json"])
    change(header)
    path = _rewrite(tmp_path / "header.zip", {**members, "policy.json": json.dumps(header).encode()})
    with pytest.raises(InputError) as info:
        load_policy(path)
    assert (info.value.source, info.value.field) == (str(path), field)


def test_load_rejects_nan_pickles_and_extra_members(tmp_path, good_policy):
    members = _members(good_policy)
    arrays = dict(np.load(io.BytesIO(members["weights.npz"]), allow_pickle=False))

    nan = dict(arrays)
    nan["action.bias"] = nan["action.bias"].copy()
    nan["action.bias"][3] = np.nan
    path = _rewrite(tmp_path / "nan.zip", {**members, "weights.npz": _npz(**nan)})
    with pytest.raises(InputError, match="NaN") as info:
        load_policy(path)
    assert info.value.field == "weights.npz: action.bias"

    pickled = dict(arrays)
    pickled["action.bias"] = np.array([object()] * NUM_ACTIONS, dtype=object)  # np.savez pickles this
    path = _rewrite(tmp_path / "pickle.zip", {**members, "weights.npz": _npz(**pickled)})
    with pytest.raises(InputError, match="expected float32 or float64") as info:
        load_policy(path)
    assert info.value.field == "weights.npz: action.bias"

    path = _rewrite(tmp_path / "extra.zip", {**members, "run.sh": b"echo hi"})
    with pytest.raises(InputError, match="exactly the members"):
        load_policy(path)

    path = _rewrite(tmp_path / "json.zip", {**members, "policy.json": b'{"format": NaN'})
    with pytest.raises(InputError, match="not valid JSON"):
        load_policy(path)


def test_run_dir_is_the_given_directory_or_the_experiments_default(tmp_path):
    config = load_config(write_config(tmp_path, TINY))
    assert config.run_dir() == Path("experiments") / "tiny" / "run"
    assert config.run_dir(tmp_path / "mine") == tmp_path / "mine" and config.run_dir(None) == config.run_dir("")
