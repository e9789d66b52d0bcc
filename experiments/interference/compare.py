"""Put the world's interference model beside a measurement written by ``measure.py``.

Per K (copy blocks, standing in for NCCL channels), the model's predictions from
:mod:`dynamiccl.costmodel.interference`, with the GPU's SM count and datasheet HBM bandwidth from an
env spec:

- GEMM beside the copy: ``compute_slowdown(sm_slowdown(K, SMs, waves), hbm_slowdown(gemm, copy, hbm))``,
  the GEMM's HBM demand taken as its minimal traffic (A, B read once, C written once) over its time
  alone (a lower bound), the copy's as measured alone; ``waves`` is 0 (many-wave GEMM) unless
  ``--waves`` gives the grid of the one-wave shape;
- copy beside a train of GEMMs: ``hbm_slowdown`` on its bandwidth, plus the launch delay, between 0
  and one GEMM (it waits for the GEMM running when it is launched, NVIDIA/nccl#1431).

    python experiments/interference/compare.py experiments/interference/h200.json --env hgx-h200

Prints an nccl-tests-style table; ``-o`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dynamiccl.atomic import write_text
from dynamiccl.costmodel import interference
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError

_ROW_KEYS = ("shape", "m", "n", "k", "blocks", "gemm_alone_us", "gemm_beside_us", "copy_alone_us",
             "copy_beside_us", "copy_alone_hbm_gbytes_per_s", "copy_beside_hbm_gbytes_per_s")


def load(path: Path) -> dict:
    """The measurement document.

    Raises:
        InputError: naming the file and the field that is missing or wrong.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(str(path), None, f"a JSON measurement written by measure.py ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not doc["rows"]:
        raise InputError(str(path), "rows", "a non-empty list of measured points")
    for i, row in enumerate(doc["rows"]):
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise InputError(str(path), f"rows[{i}]", f"the fields {', '.join(missing)}")
    if not isinstance(doc.get("sm_count"), int) or doc["sm_count"] < 2:
        raise InputError(str(path), "sm_count", "the GPU's SM count, an integer >= 2")
    return doc


def predict(doc: dict, sm_count: int, hbm_gbytes_per_s: float, waves: float) -> list[dict]:
    """Per measured row, the model's GEMM and copy slowdowns beside the measured ones."""
    out = []
    for row in doc["rows"]:
        m, n, k = row["m"], row["n"], row["k"]
        gemm_hbm = 2.0 * (m * k + k * n + m * n) / (1000.0 * row["gemm_alone_us"])  # bf16, GB/s
        copy_hbm = row["copy_alone_hbm_gbytes_per_s"]
        shape_waves = waves if row["shape"] == "one_wave_gemm" else 0.0
        hbm_slow = float(interference.hbm_slowdown(gemm_hbm, copy_hbm, hbm_gbytes_per_s))
        sm_slow = float(interference.sm_slowdown(row["blocks"], sm_count, shape_waves))
        gemm_model = float(interference.compute_slowdown(sm_slow, hbm_slow))
        delay_max = interference.launch_delay_us(row["gemm_alone_us"])
        out.append({"shape": row["shape"], "blocks": row["blocks"],
                    "gemm_measured": row["gemm_beside_us"] / row["gemm_alone_us"], "gemm_model": gemm_model,
                    "copy_measured": row["copy_beside_us"] / row["copy_alone_us"],
                    "copy_model_low": hbm_slow,
                    "copy_model_high": hbm_slow + delay_max / row["copy_alone_us"],
                    "copy_alone_gbytes_per_s": copy_hbm,
                    "copy_beside_gbytes_per_s": row["copy_beside_hbm_gbytes_per_s"]})
    return out


def table(rows: list[dict]) -> str:
    """nccl-tests-style columns: K, GEMM slowdown measured/model, copy bandwidth and slowdown."""
    lines = ["#  shape            K   gemm x (meas)  gemm x (model)   copy GB/s alone  beside   copy x (meas)  "
             "copy x (model)"]
    for r in rows:
        lines.append(f"  {r['shape']:<14} {r['blocks']:4d}   {r['gemm_measured']:12.3f}  {r['gemm_model']:14.3f}"
                     f"   {r['copy_alone_gbytes_per_s']:15.1f}  {r['copy_beside_gbytes_per_s']:6.1f}"
                     f"   {r['copy_measured']:12.3f}   {r['copy_model_low']:.3f}..{r['copy_model_high']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the world's interference model beside a measure.py measurement")
    p.add_argument("measurement", type=Path, help="JSON written by measure.py")
    p.add_argument("--env", required=True, help="env spec of the measured GPU (name or path), for HBM bandwidth")
    p.add_argument("--waves", type=float, default=1.0,
                   help="grid of the one-wave GEMM shape in waves of the GPU (default 1)")
    p.add_argument("-o", "--output", type=Path, default=None, help="also write the comparison as JSON")
    args = p.parse_args(argv)
    try:
        doc = load(args.measurement)
        env = resolve_env(args.env)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = env.cluster.gpu
    if gpu.sm_count != doc["sm_count"]:
        print(f"note: the spec says {gpu.sm_count} SMs, the measured GPU has {doc['sm_count']}; using the measured",
              file=sys.stderr)
    rows = predict(doc, doc["sm_count"], gpu.hbm_gbytes_per_s, args.waves)
    print(f"# {doc.get('gpu', '?')} ({doc['sm_count']} SMs, driver {doc.get('driver', '?')}), "
          f"HBM {gpu.hbm_gbytes_per_s:g} GB/s from {env.name}; mode {doc.get('mode', '?')}")
    print(table(rows))
    if args.output is not None:
        write_text(args.output, json.dumps({"measurement": str(args.measurement), "env": env.name,
                                            "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
