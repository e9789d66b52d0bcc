"""Shared by the sweep tests of ``dynamiccl search`` (tests/test_search.py, tests/test_ray_sweep.py): a
config of two small held-out cases (shipped traces on one DGX H100, one dynamics state), and what a
search wrote, in the form that must not depend on where its cases ran."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = (("traces/ref-pp2-dp2.parquet", "dgx-h100"), ("traces/ref-dp2-tp2.parquet", "dgx-h100"))


def search_config(directory: Path, cases=CASES) -> Path:
    """An experiment config whose held-out split is ``cases`` ((repo-relative trace, env spec) pairs)
    under one dynamics state; absolute trace paths, as a Ray worker needs them."""
    held_out = "".join(f'[[heldout.cases]]\ntrace = "{REPO / trace}"\nenv = "{env}"\n' for trace, env in cases)
    config = directory / "two-cases.toml"
    config.write_text('[experiment]\nname = "two-cases"\nmodel = "world"\n[train]\nstates = 1\n'
                      f'[[train.cases]]\ntrace = "{REPO / CASES[0][0]}"\nenv = "{CASES[0][1]}"\n'
                      f'[heldout]\nstates = 1\nstate_offset = 100\n{held_out}')
    return config


def search_argv(config: Path, out: Path, figures: Path, *where: str) -> list[str]:
    """``dynamiccl search`` over ``config``'s held-out cases (one coordinate-descent sweep), tables into
    the directory ``out``, figures into ``figures``; ``where``: --workers / --ray."""
    return ["search", "--config", str(config), "--max-sweeps", "1", "-o", str(out), "--json", str(figures), *where]


def search_written(out: Path, figures: Path) -> tuple[dict[str, bytes], list[dict], list[dict]]:
    """(every table file's bytes by name, the figures' rows without their wall time and table path,
    the failures) of a search run."""
    record = json.loads(figures.read_text())
    rows = [{k: v for k, v in row.items() if k not in ("wall_s", "table")} for row in record["cases"]]
    assert [Path(row["table"]).parent for row in record["cases"]] == [out] * len(rows)
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.json"))}, rows, record["failures"]
