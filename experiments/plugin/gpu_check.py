"""GPU check: real NCCL, through PyTorch, loads the dynamiccl tuner plugin and applies a table.

Run on a machine with a CUDA GPU and PyTorch built with NCCL (from the repository root)::

    PYTHONPATH=. python experiments/plugin/gpu_check.py --out DIR

It builds the plugin, writes a decision table, and for each scenario starts a fresh process that
creates an NCCL process group with ``NCCL_TUNER_PLUGIN`` pointing at the plugin and
``NCCL_DEBUG=INFO``, runs AllReduce / AllGather / ReduceScatter / Broadcast at several sizes,
checks the results, and, where NCCL loaded the instrumented variant, reads the plugin's own
counters through ctypes (the same library NCCL loaded, so the same counters). Scenarios: a good
table, on the instrumented and on the production library (which has no counters: NCCL's log and
the results are the evidence); the live-measurement override; a broken table (NCCL must still run
every collective, with one warning); no table at all. Each scenario's NCCL log is kept in DIR, and
a summary in DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SIZES_BYTES = (1024, 65536, 1 << 20, 16 << 20)


def child(args) -> int:
    """One process of one scenario: an NCCL process group of ``--world`` ranks on GPU 0."""
    import torch
    import torch.distributed as dist

    from dynamiccl.plugin.binding import InstrumentedTunerLibrary
    from dynamiccl.plugin.build import instrumented_beside

    rank, world = args.rank, args.world
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world,
                            device_id=torch.device("cuda", 0))
    loaded = os.environ.get("NCCL_TUNER_PLUGIN")
    lib = InstrumentedTunerLibrary(loaded) if loaded and Path(loaded) == instrumented_beside(loaded) else None
    if lib is not None and args.override:
        lib.override(algorithm=1, protocol=2, channels=2, count=-1)  # ring / simple / 2 channels
    ok = True
    for size in SIZES_BYTES:
        n = size // 4
        x = torch.full((n,), float(rank + 1), device="cuda")
        dist.all_reduce(x)
        ok &= bool(torch.all(x == world * (world + 1) / 2))
        out = torch.empty(n * world, device="cuda")
        dist.all_gather_into_tensor(out, torch.full((n,), float(rank), device="cuda"))
        ok &= bool(torch.all(out.view(world, n)[:, 0] == torch.arange(world, device="cuda", dtype=torch.float32)))
        rs = torch.empty(max(n // world, 1), device="cuda")
        dist.reduce_scatter_tensor(rs, torch.ones(rs.numel() * world, device="cuda"))
        ok &= bool(torch.all(rs == world))
        b = torch.full((n,), float(rank), device="cuda")
        dist.broadcast(b, src=0)
        ok &= bool(torch.all(b == 0))
    torch.cuda.synchronize()
    stats = lib.stats() if lib is not None else None
    result = {"rank": rank, "world": world, "results_correct": ok, "plugin_stats": stats,
              "torch": torch.__version__, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
              "gpu": torch.cuda.get_device_name(0)}
    dist.destroy_process_group()
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if ok else 1


def scenario(name: str, env: dict, out: Path, world: int, override: bool, port: int) -> dict:
    log_path = out / f"{name}.log"
    procs = []
    with open(log_path, "w") as log:
        for rank in range(world):
            cmd = [sys.executable, __file__, "--child", "--rank", str(rank), "--world", str(world),
                   "--port", str(port)] + (["--override"] if override else [])
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        log.write("\n".join(outputs))
    results = [json.loads(line[7:]) for text in outputs for line in text.splitlines() if line.startswith("RESULT ")]
    text = "\n".join(outputs)
    return {
        "scenario": name, "world": world, "exit_codes": [p.returncode for p in procs], "results": results,
        "nccl_loaded_plugin_lines": [line.strip() for line in text.splitlines()
                                     if "tuner" in line.lower() and ("plugin" in line.lower() or "dynamiccl" in line)][:20],
        "dynamiccl_warnings": [line.strip() for line in text.splitlines()
                               if "dynamiccl tuner" in line and "WARN" in line],
        "log": str(log_path),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--world", type=int, default=1, help="ranks (all on GPU 0)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=29511, help=argparse.SUPPRESS)
    parser.add_argument("--override", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from dynamiccl.nccl import Algorithm, Func, Protocol
    from dynamiccl.plugin.build import build_plugin, instrumented_beside
    from dynamiccl.table import DecisionTable, Rule, save

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    production = build_plugin(cache_dir=args.out / "build")
    plugin = instrumented_beside(production)  # the counters show what the plugin decided
    table = DecisionTable((
        Rule(Func.ALLREDUCE, 0, 65535, algorithm=Algorithm.RING, protocol=Protocol.LL, channels=2),
        Rule(Func.ALLREDUCE, 65536, 2**64 - 1, algorithm=Algorithm.RING, protocol=Protocol.SIMPLE, channels=4),
        Rule(Func.ALLGATHER, 0, 2**64 - 1, algorithm=Algorithm.RING, protocol=None, channels=2),
        Rule(Func.REDUCESCATTER, 0, 2**64 - 1, algorithm=Algorithm.RING, protocol=Protocol.SIMPLE),
        Rule(Func.BROADCAST, 0, 2**64 - 1, algorithm=Algorithm.RING, protocol=Protocol.SIMPLE, channels=1),
    ), {"purpose": "gpu check"})
    good = args.out / "table.txt"
    save(table, good)
    bad = args.out / "bad.txt"
    bad.write_text("dynamiccl-tuner-table 1\nrule allreduce 0 100 -1 -1 -1 -1 -1 warp simple -1\n")
    base = {**os.environ, "NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,TUNING,ENV",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
    base.pop("NCCL_TUNER_PLUGIN", None)
    base.pop("DYNAMICCL_TUNER_TABLE", None)
    runs = []
    for i, (name, extra, override) in enumerate((
            ("table", {"NCCL_TUNER_PLUGIN": str(plugin), "DYNAMICCL_TUNER_TABLE": str(good)}, False),
            ("production", {"NCCL_TUNER_PLUGIN": str(production), "DYNAMICCL_TUNER_TABLE": str(good)}, False),
            ("override", {"NCCL_TUNER_PLUGIN": str(plugin), "DYNAMICCL_TUNER_TABLE": str(good)}, True),
            ("bad_table", {"NCCL_TUNER_PLUGIN": str(plugin), "DYNAMICCL_TUNER_TABLE": str(bad)}, False),
            ("no_table", {"NCCL_TUNER_PLUGIN": str(plugin)}, False),
            ("nccl_only", {}, False))):
        runs.append(scenario(name, {**base, **extra}, args.out, args.world, override, 29511 + i))
        print(json.dumps(runs[-1], indent=1), flush=True)
    summary = {"plugin": str(production), "plugin_bytes": production.stat().st_size,
               "instrumented_plugin": str(plugin), "world": args.world,
               "scenarios": runs, "wall_s": round(time.perf_counter() - started, 1)}
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
