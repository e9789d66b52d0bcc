"""What ``simulate`` and ``evaluate`` print about their own inputs: forced choices named even when
their enum value is 0 (Tree, LL), a one-rank communicator blamed on ``--nranks``, and the clusters
of a multi-cluster evaluation (issue 15, item 17)."""

from __future__ import annotations

from dynamiccl.cli import main


def test_simulate_names_forced_tree_and_ll(capsys):
    # Algorithm.TREE and Protocol.LL are 0: a truthiness test printed them as "NCCL's choice".
    assert main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-b", "1M", "-e", "2M",
                 "--algo", "tree", "--proto", "ll"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("8 ranks on 1 node(s), algo tree, proto ll"), header
    assert main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-b", "1M", "-e", "2M", "--proto", "ll"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(", proto ll")
    assert main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-b", "1M", "-e", "2M"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(", NCCL's choice")


def test_simulate_one_rank_blames_nranks(capsys):
    for extra in ([], ["--algo", "ring", "--proto", "simple"]):
        assert main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "--nranks", "1", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dynamiccl: error: --nranks: expected 2 or more ranks, got 1"), err
        assert "--algo" not in err


def test_evaluate_names_every_cluster(tmp_path, capsys):
    out = tmp_path / "r.parquet"
    assert main(["evaluate", "--traces", "traces/ref-pp2-dp2.parquet", "--envs", "dgx-h100", "dgx-a100", "--states",
                 "1", "--agents", "nccl-default", "-o", str(out)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith("(cost model: world on 2 clusters: dgx-h100, dgx-a100)"), last
