"""Export is faithful: the decision table `dynamiccl table export --policy --evidence-states 0` writes
gives, in the environment, the policy's own step time on every evaluation case (required: within
0.5%); confined to its evidence (the default), it is never slower than NCCL's default there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dynamiccl.cli import main
from dynamiccl.errors import InputError
from dynamiccl.table import load, nvidia_csv
from dynamiccl.table.policy_export import export_policy_tables
from dynamiccl.tuning.agents import PolicyAgent, TableAgent
from dynamiccl.tuning.evaluate import run_episode
from dynamiccl.tuning.actions import NUM_ACTIONS
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.observation import OBS_SIZE
from dynamiccl.tuning.policy_file import PolicyNetwork, save_policy
from dynamiccl.tuning.config import load_config

CONFIG = """\
[experiment]
name = "faithful"
seed = 0
[train]
total_timesteps = 512
states = 2
[[train.cases]]
trace = "traces/ref-tp2-pp2-sp.parquet"
env = "dgx-h100"
[[train.cases]]
trace = "traces/llama3-8b_tp1-pp1-dp8.parquet"
env = "dgx-h100"
[heldout]
states = 2
state_offset = 100
[[heldout.cases]]
trace = "traces/ref-dp2-tp2.parquet"
env = "dgx-h100"
"""


def random_policy(seed: int, config_path: str) -> PolicyNetwork:
    """A policy with random weights and a strong bias towards non-default actions: as hard to
    reproduce as a trained one (it varies with size, position and collective)."""
    rng = np.random.default_rng(seed)
    hidden = ((rng.normal(0, 2.0, (32, OBS_SIZE)), rng.normal(0, 1.0, 32)),)
    action = (rng.normal(0, 1.0, (NUM_ACTIONS, 32)), rng.normal(0, 1.0, NUM_ACTIONS))
    return PolicyNetwork(hidden=hidden, action=action, activation="tanh", provenance={"config_path": config_path})


def _saved_policy(tmp_path, seed) -> tuple:
    """The faithful-export config and a random policy trained on nothing, saved under ``tmp_path``:
    (config path, policy path, the policy network)."""
    config_path = tmp_path / "faithful.toml"
    config_path.write_text(CONFIG)
    policy_path = tmp_path / "policy.zip"
    network = random_policy(seed, str(config_path))
    save_policy(policy_path, network, network.provenance)
    return config_path, policy_path, network


@pytest.mark.parametrize("seed", [0, 1])
def test_exported_table_reproduces_the_policy_step_time(tmp_path, monkeypatch, seed):
    config_path, policy_path, network = _saved_policy(tmp_path, seed)
    table_path, csv_path = tmp_path / "table.json", tmp_path / "table.csv"
    assert main(["export", "--policy", str(policy_path), "-o", str(table_path), "--nccl-csv", str(csv_path),
                 "--evidence-states", "0"]) == 0
    table = load(table_path)
    assert table.rules and load(csv_path).rules
    assert json.loads(table_path.read_text())["provenance"]["policy"] == str(policy_path)
    # Position rules only work at run time through the plugin's counter, which the step lines
    # anchor; TableAgent takes positions from that counter, so this checks the whole path.
    export_info = table.provenance["policy_export"]
    assert export_info["position_rules"] > 0 and export_info["position_rules_without_step_line"] == 0
    assert table.steps

    config = load_config(config_path)
    where = config.default_output_dir() / "run"
    cases = config.train_cases(where) + config.heldout_cases(where)
    env = TuningEnv(cases)
    policy, exported = PolicyAgent(network), TableAgent(table)
    changed = 0
    for case in range(len(cases)):
        for state in (0, 100):
            mine = run_episode(env, policy, case, state)["step"]
            theirs = run_episode(env, exported, case, state)["step"]
            assert theirs["step_time_us"] == pytest.approx(mine["step_time_us"], rel=0.005)
            changed += mine["step_time_us"] != mine["default_step_time_us"]
    assert exported.fallbacks == 0
    assert changed > 0  # the policy really departs from NCCL's choices


@pytest.mark.parametrize("seed", [0, 1])
def test_confined_export_is_never_slower_than_nccl_where_it_was_evaluated(tmp_path, seed):
    config_path, policy_path, _ = _saved_policy(tmp_path, seed)
    confined = export_policy_tables(policy_path, evidence_split="all").table
    unconfined = export_policy_tables(policy_path, evidence_states=0).table
    acting = sum(not rule.keeps_nccl for rule in confined.rules)
    assert 0 < acting < sum(not rule.keeps_nccl for rule in unconfined.rules)
    config = load_config(config_path)
    where = config.default_output_dir() / "run"
    cases = config.train_cases(where) + config.heldout_cases(where)
    env = TuningEnv(cases)
    faster = 0
    for case, states in ((0, (0, 1)), (1, (0, 1)), (2, (100, 101))):  # the states the evidence replayed
        for state in states:
            step = run_episode(env, TableAgent(confined), case, state)["step"]
            assert step["speedup"] >= 1.0 - 1e-3, (case, state)
            faster += step["speedup"] > 1.0
    assert faster > 0
    assert confined.provenance["evidence"]["acting_rules"]
    assert len(confined.provenance["evidence"]["cases"]) == 3


def test_confined_export_takes_its_evidence_from_the_training_cases_by_default(tmp_path):
    # The held-out case is not evidence, so its evaluation (and the layout sweep) judge the table
    # out of sample; a wrong split name is refused.
    config_path, policy_path, _ = _saved_policy(tmp_path, 0)
    exported = export_policy_tables(policy_path)
    config = load_config(config_path)
    where = config.default_output_dir() / "run"
    train = {case.label for case in config.train_cases(where)}
    assert set(exported.table.provenance["evidence"]["cases"]) == train
    assert any("of the training cases" in note for note in exported.notes)
    with pytest.raises(InputError, match="expected one of train, all") as info:
        export_policy_tables(policy_path, evidence_split="heldout")
    assert info.value.source == "--evidence-from"


def test_export_policy_tables_is_what_the_command_writes_and_prints(tmp_path, capsys):
    # Seed 1: its confined table has rules without a position, which NVIDIA's CSV can hold (seed 0's
    # winning rules are all position rules in the world refit on 288 rows, so its CSV is empty).
    config_path, policy_path, _ = _saved_policy(tmp_path, 1)
    exported = export_policy_tables(policy_path, evidence_split="all")
    assert exported.cases == 3 and exported.calls > 0
    # NVIDIA's CSV: the plugin's default (1 channel) only for shapes the cases do not have.
    assert exported.csv_table.rules[-5:] == nvidia_csv.example_default_rules()
    assert exported.csv_table.provenance["csv_compatible"]["shapes_with_nccl_choice"] > 0
    table_path, csv_path = tmp_path / "table.json", tmp_path / "table.csv"
    capsys.readouterr()
    assert main(["export", "--policy", str(policy_path), "-o", str(table_path), "--nccl-csv", str(csv_path),
                 "--evidence-from", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert load(table_path) == exported.table
    assert load(csv_path).rules == exported.csv_table.rules
    assert lines[:-2] == [f"note: {note}" for note in exported.notes]
    assert lines[-2] == (f"wrote {table_path}: {len(exported.table.rules)} rules confined to where they beat "
                         f"NCCL's default on {exported.calls:,} calls of 3 case(s)")
    assert lines[-1].startswith(f"wrote {csv_path}: {len(exported.csv_table.rules)} rules for NVIDIA's example plugin")
    with pytest.raises(InputError, match="no case of .* runs on 'nowhere'") as info:
        export_policy_tables(policy_path, env="nowhere")
    assert info.value.source == "--env"


def test_export_needs_a_policy_or_a_trace(tmp_path, capsys):
    assert main(["export", "-o", str(tmp_path / "x.json")]) == 2
    assert "expected --policy" in capsys.readouterr().err


def test_table_export_and_its_old_spelling_write_the_same_tables(tmp_path, capsys):
    config_path, policy_path, _ = _saved_policy(tmp_path, 1)
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    capsys.readouterr()
    assert main(["table", "export", "--policy", str(policy_path), "-o", str(new / "table.json"), "--nccl-csv",
                 str(new / "table.csv")]) == 0
    new_run = capsys.readouterr()
    assert new_run.err == ""
    assert main(["export", "--policy", str(policy_path), "-o", str(old / "table.json"), "--nccl-csv",
                 str(old / "table.csv")]) == 0
    old_run = capsys.readouterr()
    assert old_run.err == ("dynamiccl: note: 'dynamiccl export --policy' is now 'dynamiccl table export --policy'; "
                           "the old spelling goes in the next release\n")
    assert old_run.out == new_run.out.replace(str(new), str(old))
    for name in ("table.json", "table.csv"):
        assert (new / name).read_bytes() == (old / name).read_bytes()
