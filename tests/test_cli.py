"""The dynamiccl command line, run as users run it (a real process), and in-process for details."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynamiccl.cli import main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamiccl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_generate_then_summary_json(tmp_path):
    out = tmp_path / "t.parquet"
    done = run("generate", "--model", "llama3-8b", "--tp", "2", "--pp", "2", "--dp", "2", "--sp",
               "--global-batch", "8", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and out.is_file()
    summary = run("trace", "summary", str(out), "--json")
    assert summary.returncode == 0, summary.stderr
    obj = json.loads(summary.stdout)
    m = 8 // 2  # micro-batches
    assert obj["tp"]["allgather"]["count"] == (6 * 16 + 1) * m  # 16 layers on stage 0 + embedding bwd
    assert obj["tp"]["allgather"]["total_bytes"] == obj["tp"]["allgather"]["count"] * 8192 * 4096 * 2
    assert obj["pp"]["send"]["count"] == m
    assert obj["compute"]["compute"]["flops"] > 0
    text = run("trace", "summary", str(out))
    assert "rank 0, step 0" in text.stdout and "pipeline stage 1 of 2" in text.stdout


def test_generate_bad_layout_is_a_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "t.parquet"
    done = run("generate", "--model", "llama3-8b", "--tp", "3", "--pp", "1", "--dp", "1", "-o", str(out))
    assert done.returncode == 2
    assert "32 attention heads are not divisible by TP 3" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_unknown_model_lists_the_builtins(tmp_path, capsys):
    assert main(["generate", "--model", "llama-7", "--tp", "1", "--pp", "1", "--dp", "1",
                 "-o", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'llama-7'" in err and "llama3-8b" in err and "gpt3-175b" in err


def test_user_model_toml_and_env_spec(tmp_path, capsys):
    model = tmp_path / "tiny.toml"
    model.write_text('[model]\nname = "tiny"\nnum_layers = 4\nhidden_size = 512\nffn_hidden_size = 2048\n'
                     'num_attention_heads = 8\nvocab_size = 32000\nseq_length = 1024\nglobal_batch = 8\n')
    env = Path(__file__).resolve().parent.parent / "envs" / "h100-ib-2x8.toml"
    out = tmp_path / "tiny.parquet"
    assert main(["generate", "--model", str(model), "--tp", "2", "--pp", "2", "--dp", "4", "--env", str(env),
                 "-o", str(out)]) == 0
    from dynamiccl.trace.store import Trace

    trace = Trace.read(out)
    assert trace.meta.gpus_per_node == 8 and trace.meta.compute["gpu"] == "H100-SXM"
    dp_group = next(g for g in trace.meta.groups.values() if g.kind == "dp")
    assert dp_group.ranks == (0, 2, 4, 6) and dp_group.nnodes == 1
    pp_group = next(g for g in trace.meta.groups.values() if g.kind == "pp")
    assert pp_group.ranks == (0, 8) and pp_group.nnodes == 2


def test_summary_of_a_broken_file_names_it(tmp_path, capsys):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    assert main(["trace", "summary", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable Parquet file" in err


def test_trace_check_reports_ok(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    assert main(["generate", "--model", "llama3-8b", "--tp", "2", "--pp", "2", "--dp", "1", "--global-batch", "2",
                 "--all-ranks", "-o", str(out)]) == 0
    assert main(["trace", "check", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


def test_table_convert_roundtrip_and_lookup(tmp_path, capsys):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({
        "format": "dynamiccl-decision-table", "version": 1, "provenance": {"by": "test"},
        "rules": [
            {"coll": "allreduce", "min_bytes": 0, "max_bytes": 65535, "nranks": 8, "nnodes": 1,
             "algorithm": "ring", "protocol": "ll", "channels": 4},
            {"coll": "allreduce", "min_bytes": 0, "max_bytes": 18446744073709551615, "algorithm": "tree",
             "protocol": "simple", "channels": -1},
        ]}))
    csv = tmp_path / "t.csv"
    # NVIDIA's plugin would run the calls of other collectives on 1 channel: refused, naming the flag.
    assert main(["table", "convert", str(table), "-o", str(csv)]) == 2
    assert "pass --lossy to write it anyway" in capsys.readouterr().err
    assert main(["table", "convert", str(table), "-o", str(csv), "--lossy"]) == 0
    assert "allreduce,0,65535,ring,ll,4,1,8,-1,-1" in csv.read_text()
    back = tmp_path / "back.json"
    assert main(["table", "convert", str(csv), "-o", str(back)]) == 0
    capsys.readouterr()
    assert main(["table", "lookup", str(back), "--coll", "allreduce", "--bytes", "1024", "--nranks", "8",
                 "--nnodes", "1"]) == 0
    assert "rule 0: algorithm ring, protocol ll, channels 4" in capsys.readouterr().out
    assert main(["table", "lookup", str(back), "--coll", "allreduce", "--bytes", "1048576", "--nranks", "16",
                 "--nnodes", "2"]) == 0
    assert "rule 1: algorithm tree, protocol simple, channels nccl's" in capsys.readouterr().out
    assert main(["table", "lookup", str(back), "--coll", "allgather", "--bytes", "10", "--nranks", "8",
                 "--nnodes", "1"]) == 0
    # Read back from NVIDIA's CSV: what its plugin does with an unmatched call, NCCL's cell on 1 channel.
    assert "rule 4: algorithm nccl's, protocol nccl's, channels 1" in capsys.readouterr().out


def plugin_text_table():
    from dynamiccl.nccl import Algorithm, Func, Protocol
    from dynamiccl.table import MAX_BYTES, DecisionTable, Rule, StepShape

    return DecisionTable((
        Rule(Func.ALLREDUCE, 0, 65535, nranks=8, nnodes=1, algorithm=Algorithm.RING, protocol=Protocol.LL, channels=4),
        Rule(Func.ALLREDUCE, 0, MAX_BYTES, position=2, protocol=Protocol.SIMPLE),
    ), steps=(StepShape(8, 1, 3, Func.ALLREDUCE, 1024),))


def test_table_show_convert_and_lookup_read_the_plugin_text(tmp_path, capsys):
    from dynamiccl.table import load, plugin_text

    table = plugin_text_table()
    text = tmp_path / "t.txt"
    text.write_text(plugin_text.write(table), encoding="utf-8")
    assert main(["table", "show", str(text)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{text}: 2 rule(s), format version 3\n")
    assert out.endswith(table.describe())
    back = tmp_path / "back.json"
    assert main(["table", "convert", str(text), "-o", str(back)]) == 0
    assert f"wrote {back} (2 rule(s) read from {text})" in capsys.readouterr().out
    assert (load(back).rules, load(back).steps) == (table.rules, table.steps)
    again = tmp_path / "again.txt"
    assert main(["table", "convert", str(back), "-o", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == text.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["table", "lookup", str(text), "--coll", "allreduce", "--bytes", "1024", "--nranks", "8",
                 "--nnodes", "1"]) == 0
    assert "rule 0: algorithm ring, protocol ll, channels 4" in capsys.readouterr().out
    assert main(["table", "convert", str(text), "-o", str(tmp_path / "t.csv")]) == 2  # a position rule
    assert "rules[1] (position 2, keeps NCCL's algorithm)" in capsys.readouterr().err


def test_table_convert_to_plugin_text_refuses_to_drop_job_env_unless_lossy(tmp_path, capsys):
    from dynamiccl.table import DecisionTable, load, save

    source = tmp_path / "t.json"
    save(DecisionTable(plugin_text_table().rules, job_env={"NCCL_P2P_LL_THRESHOLD": 8192}), source)
    text = tmp_path / "t.txt"
    assert main(["table", "convert", str(source), "-o", str(text)]) == 2
    assert f"{text}: job_env: the plugin's text format has no job_env" in capsys.readouterr().err
    assert not text.exists()
    assert main(["table", "convert", str(source), "-o", str(text), "--lossy"]) == 0
    assert load(text).rules == plugin_text_table().rules


def test_evaluate_takes_a_plugin_text_table_as_the_policy(tmp_path, capsys):
    from dynamiccl.table import plugin_text, save
    from dynamiccl.tuning.evaluate import Results

    table = plugin_text_table()
    text, as_json = tmp_path / "t.txt", tmp_path / "t.json"
    text.write_text(plugin_text.write(table), encoding="utf-8")
    save(table, as_json)
    steps = {}
    for policy in (text, as_json):
        out = tmp_path / f"{policy.suffix[1:]}.parquet"
        assert main(["evaluate", "--policy", str(policy), "--traces", "traces/ref-pp2-dp2.parquet", "--envs",
                     "dgx-h100", "--agents", "nccl-default,policy", "--states", "1", "--online-steps", "1",
                     "-o", str(out)]) == 0
        rows = Results.read(out).steps
        steps[policy.suffix] = rows[rows["agent"] == "table"].reset_index(drop=True)
        assert len(steps[policy.suffix]) == 1
    capsys.readouterr()
    assert steps[".txt"].equals(steps[".json"])


def test_table_with_bad_row_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    # NVIDIA's plugin would read "Tree" as ring (its names are case-sensitive).
    bad.write_text("allreduce,0,1024,ring,ll,4,1,8\nallgather,0,1024,Tree,simple,4,1,8\n")
    assert main(["table", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2" in err and "Tree" in err


def test_models_lists_builtins_with_param_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt3-175b", "llama3-8b", "llama3-70b", "llama3.1-405b", "mixtral-8x7b", "deepseek-v3"):
        assert name in out
    assert "405.9B" in out


def test_bench_lists_its_benchmarks(capsys):
    assert main(["bench", "--list"]) == 0
    assert "generate-405b" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["generate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "1", "-o", "x.csv"], ".parquet"),
    (["generate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "1", "--efficiency", "2",
      "-o", "x.parquet"], "--efficiency"),
    (["generate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "1", "--gpu", "V100",
      "-o", "x.parquet"], "unknown GPU"),
    (["generate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "4096", "--global-batch", "4096",
      "--all-ranks", "-o", "x.parquet"], "--all-ranks is limited to 2048 ranks"),
])
def test_bad_flags_are_clear_errors(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


# --- the command line's shape: thin handlers over the library ---------------------------------------

def test_building_the_parser_imports_no_numerical_or_learning_library():
    """`dynamiccl --help` and a mistyped flag answer at once: the handlers import the library when they run."""
    code = ("import sys; from dynamiccl.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'torch', 'gymnasium', 'stable_baselines3') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_format_choices_are_the_registered_importers_and_exporters():
    from dynamiccl.cli.trace import EXPORT_FORMATS, IMPORT_FORMATS, TRACE_IMPORT_FORMATS
    from dynamiccl.profiler.exporters import EXPORTERS
    from dynamiccl.profiler.importers import IMPORTERS

    assert TRACE_IMPORT_FORMATS == tuple(IMPORTERS) and EXPORT_FORMATS == tuple(EXPORTERS)
    assert IMPORT_FORMATS == (*TRACE_IMPORT_FORMATS, "nccl-tests")  # measurements, not a trace


@pytest.mark.parametrize("fmt", ["chakra", "param"])
def test_trace_export_and_its_old_spelling_write_the_same_files(fmt, tmp_path, capsys):
    new, old = tmp_path / "new", tmp_path / "old"
    assert main(["trace", "export", fmt, "traces/ref-pp2-dp2.parquet", "-o", str(new)]) == 0
    new_run = capsys.readouterr()
    assert new_run.err == "" and new_run.out == f"wrote {len(list(new.iterdir()))} {fmt} file(s) to {new}\n"
    assert main(["export", fmt, "traces/ref-pp2-dp2.parquet", "-o", str(old)]) == 0
    old_run = capsys.readouterr()
    assert old_run.err == (f"dynamiccl: note: 'dynamiccl export {fmt}' is now 'dynamiccl trace export {fmt}'; "
                           "the old spelling goes in the next release\n")
    assert old_run.out == new_run.out.replace(str(new), str(old))
    names = sorted(path.name for path in new.iterdir())
    assert names and names == sorted(path.name for path in old.iterdir())
    assert all((new / name).read_bytes() == (old / name).read_bytes() for name in names)


def test_export_spellings_refuse_what_they_cannot_do(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["trace", "export", "ascii", "traces/ref-pp2-dp2.parquet", "-o", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["table", "export", "-o", str(tmp_path / "t.json")])  # --policy is required
    assert "--policy" in capsys.readouterr().err
    assert main(["export", "param", "traces/ref-pp2-dp2.parquet", "--policy", "p.zip", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "give either --policy" in err and "note:" not in err and not any(tmp_path.iterdir())


def test_replay_prints_the_library_figures(capsys):
    from dynamiccl.tuning.cases import Case
    from dynamiccl.tuning.throughput import replay_case

    trace = "traces/ref-pp2-dp2.parquet"
    assert main(["replay", trace, "--env", "dgx-h100", "--state", "2", "--random-steps", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    figures = replay_case(Case(trace, "dgx-h100"), 2)
    expected = figures.to_json()
    assert list(out) == [*expected, "env_steps_per_s"] and out["env_steps_per_s"] > 0
    assert {k: out[k] for k in ("ops", "calls", "decisions", "step_time_us", "busiest_rank_compute_us")} == \
        {k: expected[k] for k in ("ops", "calls", "decisions", "step_time_us", "busiest_rank_compute_us")}
    assert main(["replay", trace, "--env", "dgx-h100", "--state", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{trace} on dgx-h100 (state 2); {figures.cost_model}"
    assert lines[1] == f"  {figures.ops:,} ops, {figures.calls:,} calls of which {figures.decisions:,} tunable"
    assert lines[2] == (f"  step time {figures.step_time_us / 1e3:,.1f} ms with NCCL's choices; busiest rank's "
                        f"compute alone {figures.busiest_rank_compute_us / 1e3:,.1f} ms")
    assert lines[3].startswith("  compiled and costed in ") and len(lines) == 4


def test_evaluate_json_is_the_results_summary_by_agent(tmp_path, capsys):
    from dynamiccl.tuning.evaluate import Results

    out, summary = tmp_path / "r.parquet", tmp_path / "summary.json"
    assert main(["evaluate", "--traces", "traces/ref-pp2-dp2.parquet", "--envs", "dgx-h100", "--states", "1",
                 "--agents", "nccl-default,random", "--online-steps", "1", "-o", str(out), "--json", str(summary)]) == 0
    printed = capsys.readouterr().out
    written = json.loads(summary.read_text())
    assert written["results"] == str(out) and written["summary"] == Results.read(out).summary_by_agent()
    assert list(written["summary"]) == ["search", "nccl-default", "random"]
    assert printed.splitlines()[-1].endswith(f"(cost model: {written['cost_model']})")
    assert written["cost_model"].startswith("world simulator")
    assert main(["evaluate", "--traces", "traces/ref-pp2-dp2.parquet", "-o", str(out)]) == 2
    assert "give --config, or --traces and --envs" in capsys.readouterr().err
