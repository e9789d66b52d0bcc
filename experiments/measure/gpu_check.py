"""GPU checks of ``dynamiccl measure`` (issue 16): run on a machine with NVIDIA GPUs and a CUDA build
of torch, from the repository root.

``--world 1`` (one GPU; NCCL runs no multi-rank collective there), in one process:

1. **The override reaches the plugin NCCL loads.** With ``NCCL_TUNER_PLUGIN`` = the instrumented
   plugin and ``NCCL_DEBUG=WARN``, a one-rank NCCL communicator is created and used; then
   ``/proc/self/maps`` must show the library mapped once (NCCL's dlopen), the binding's ctypes load of
   the same path must not map a second copy (one handle, shared globals), and an override set through
   the binding must be what the plugin's ``getCollInfo`` answers. The plugin's counters after the
   one-rank collectives are recorded (NCCL may plan one-rank calls without asking the tuner).
2. **CUDA-event timing**: ``dynamiccl.costmodel.live.time_op`` on a one-rank NCCL all-gather (a
   device copy): times > 0, and their median within 3x of a plain ``cudaMemcpy`` of the same bytes
   timed with CUDA events.
3. **GEMM beside**: the 4096^3 bf16 GEMM of ``dynamiccl.measure.gemm`` alone and beside that copy on
   a separate stream: both timed, the slowdown recorded (>= 0.8: beside is not faster than alone
   beyond noise).

``--world N`` (N >= 2 GPUs on one node): ``dynamiccl measure`` on a generated gpt-tiny TP2 trace
(``dynamiccl generate --model gpt-tiny --tp 2 --pp 1 --dp N/2``) under ``torchrun --nproc-per-node
N``, with a 4-minute budget, checking: NCCL was used; on every rank NCCL consulted the plugin on every
timed call; Ring/Simple and Ring/LL of AllReduce were applied (the override took) and written as
forced rows with their channel counts; a configuration NCCL refused (NVLS / CollNet where the machine
has none) was not written; the override was cleared on every rank at the end; the CSV reads back
with ``load_measurements``.

``--world N --chunks`` adds ``dynamiccl measure --chunks`` (issue 17): on an NCCL with tuner ABI v6
(>= 2.30.3) it checks that every chunk-size step's probe answered the step's chunk on every rank,
that NCCL asked the plugin's getChunkSize on every timed call of a chunk step that was applied, that
chunk rows were written with their ``chunk_bytes`` (and the CSV reads them back), and that no chunk
size ``dynamiccl.knobs.safety`` refused was timed; on an older NCCL (or with ``--cpu-smoke``, on
gloo), that the command refused ``--chunks`` with the reason and wrote nothing.

Each mode writes ``OUT/check.json`` (default ``experiments/measure/gpu-check-world<N>/``) and exits 1
if a check fails. ``--cpu-smoke`` runs the N-rank path on gloo instead (a check of this script on a
machine without GPUs: nothing is applied there, and the script checks that instead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _checks_report(checks: list[dict], out: Path, extra: dict) -> int:
    out.mkdir(parents=True, exist_ok=True)
    failed = [c for c in checks if not c["ok"]]
    (out / "check.json").write_text(json.dumps({"checks": checks, **extra}, indent=1) + "\n")
    for c in checks:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed; wrote {out / 'check.json'}")
    return 1 if failed else 0


def check(checks: list[dict], name: str, ok: bool, detail) -> None:
    checks.append({"name": name, "ok": bool(ok), "detail": detail})


# --- one GPU ------------------------------------------------------------------------------------------

def mappings_of(path: str) -> set[str]:
    """The distinct base addresses at which ``path`` is mapped in this process (one per dlopen'd copy)."""
    real = os.path.realpath(path)
    bases = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and os.path.realpath(fields[5]) == real and fields[2] == "00000000":
            bases.add(fields[0].split("-")[0])
    return bases


def one_gpu(out: Path) -> int:
    from dynamiccl.launcher import resolve_plugin
    from dynamiccl.plugin.build import instrumented_beside

    plugin = str(instrumented_beside(resolve_plugin()))
    os.environ.update(NCCL_TUNER_PLUGIN=plugin, NCCL_DEBUG="WARN", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517",
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.pop("DYNAMICCL_TUNER_TABLE", None)
    import torch
    import torch.distributed as dist

    from dynamiccl.costmodel.live import time_op, torch_nccl_version
    from dynamiccl.measure.gemm import GemmBeside
    from dynamiccl.measure.worker import probe
    from dynamiccl.nccl import Algorithm, Protocol
    from dynamiccl.plugin.binding import InstrumentedTunerLibrary

    checks: list[dict] = []
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    size = 256 << 20
    full, shard = torch.zeros(size // 2, dtype=torch.bfloat16, device=device), torch.zeros(size // 2, dtype=torch.bfloat16, device=device)
    dist.all_gather_into_tensor(full, shard)  # the communicator exists and has run a collective
    torch.cuda.synchronize()
    before = mappings_of(plugin)
    check(checks, "NCCL loaded the instrumented plugin", len(before) == 1,
          f"{plugin} mapped at {sorted(before)} after NCCL's communicator init (NCCL {torch_nccl_version()})")
    library = InstrumentedTunerLibrary(plugin)
    after = mappings_of(plugin)
    check(checks, "the binding shares NCCL's copy", after == before,
          f"mapped at {sorted(after)} after ctypes loaded the same path (one copy: one set of globals)")
    stats_before = library.stats()
    library.override(int(Algorithm.RING), int(Protocol.LL), 4, count=-1)
    try:
        with library.open(max(library.exported_abi_versions()), 8, 1, logger=False) as comm:
            answer = probe(library, comm, "allreduce", 1 << 20)
        for _ in range(10):
            dist.all_gather_into_tensor(full, shard)
        torch.cuda.synchronize()
        stats_nccl = library.stats()
    finally:
        library.clear_override()
    check(checks, "an override set through the binding is what getCollInfo answers",
          answer[:3] == [int(Algorithm.RING), int(Protocol.LL), 4], f"probe answered {answer}")
    consulted = stats_nccl["calls"] - stats_before["calls"] - 1  # minus the probe
    check(checks, "plugin counters readable after one-rank NCCL collectives", True,
          f"NCCL asked the plugin {consulted} time(s) for 10 one-rank all-gathers (0 means NCCL plans one-rank "
          f"calls without the tuner; the {sys.argv[0]} --world 2 run checks the multi-rank path)")

    # CUDA-event timing, against a plain copy timed the same way.
    run = lambda: dist.all_gather_into_tensor(full, shard)  # noqa: E731
    for _ in range(5):
        run()
    times = time_op(run, 20, device, dist.new_group(backend="gloo"))
    copy_times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        full[: shard.numel()].copy_(shard)
        e.record()
        torch.cuda.synchronize()
        copy_times.append(s.elapsed_time(e) * 1e3)
    median, copy_median = statistics.median(times), statistics.median(copy_times)
    check(checks, "CUDA-event timing of a NCCL call (time_op)", all(t > 0 for t in times) and median < 3 * copy_median + 50,
          f"one-rank all-gather of {size // 2 * 2} B: median {median:.1f} us; a plain device copy of the same "
          f"bytes {copy_median:.1f} us")

    gemm = GemmBeside(device)
    alone = gemm.time_alone(10)
    sync = dist.new_group(backend="gloo")
    time_op(run, 20, device, sync, gemm)
    beside = gemm.collect()
    slowdown = statistics.median(beside) / alone
    check(checks, "GEMM beside on a separate stream", len(beside) == 20 and slowdown >= 0.8,
          f"{gemm.describe()}: alone {alone:.1f} us, beside the copy {statistics.median(beside):.1f} us "
          f"(x{slowdown:.2f})")
    dist.destroy_process_group()
    return _checks_report(checks, out, {"device": torch.cuda.get_device_name(0), "nccl": torch_nccl_version(),
                                        "plugin": plugin, "copy_times_us": copy_times, "time_op_us": times,
                                        "gemm_alone_us": alone, "gemm_beside_us": beside})


# --- N GPUs -------------------------------------------------------------------------------------------

def n_gpus(world: int, out: Path, cpu_smoke: bool, budget: str, chunks: bool = False) -> int:
    from dynamiccl.costmodel.measurements import load_measurements
    from dynamiccl.measure.plan import Config

    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    dynamiccl = [sys.executable, "-m", "dynamiccl"]
    trace = out / "trace.parquet"
    subprocess.run(dynamiccl + ["generate", "--model", "gpt-tiny", "--tp", "2", "--pp", "1", "--dp", str(world // 2),
                                "--gpus-per-node", str(max(world, 2)), "-o", str(trace)], check=True, env=env)
    csv, report_path = out / "measured.csv", out / "measure.json"
    for path in (csv, report_path):
        path.unlink(missing_ok=True)
    command = dynamiccl + ["measure", "--trace", str(trace), "-o", str(csv), "--json", str(report_path),
                           "--budget", budget, "--channels", "0,2,8", "--iters", "10", "--with-gemm",
                           "--backend", "gloo" if cpu_smoke else "nccl", "--system", "gpu_check"]
    command += ["--chunks"] if chunks else []
    command += ["--", sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world)]
    print("running:", " ".join(command), flush=True)
    done = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    checks: list[dict] = []
    if chunks and (cpu_smoke or not _has_get_chunk_size()):
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        check(checks, "--chunks refused with the reason where NCCL sets no chunk size",
              done.returncode == 2 and "--chunks: chunk sizes need NCCL >= 2.30.3" in last and not csv.exists(), last)
        return _checks_report(checks, out, {})
    check(checks, "dynamiccl measure exits 0", done.returncode == 0, f"status {done.returncode}")
    if done.returncode != 0:
        return _checks_report(checks, out, {})
    report = json.loads(report_path.read_text())
    results, items = report["results"], report["plan"]["items"]
    backend = "gloo" if cpu_smoke else "nccl"
    check(checks, f"{backend} was used", results["backend"] == backend,
          f"{results['backend']}, NCCL {results['nccl_version']}, {results['device']}")
    applied, refused, unconsulted = set(), set(), []
    for entry in results["steps"]:
        kind, i, c = entry["step"][:3]
        config = Config(**items[i]["configs"][c])
        label = f"{items[i]['coll']} {items[i]['shape']['nranks']}x{items[i]['shape']['nnodes']} {config.label}"
        for m in entry["members"]:
            if items[i]["coll"] != "alltoall" and m["plugin_calls"] < m["calls_made"]:
                unconsulted.append(label)
        if not config.is_default:
            (applied if entry["applied"] else refused).add((items[i]["coll"], config.algo, config.proto,
                                                            config.channels, label))
    tables = load_measurements(csv)
    forced_rows = [t for t in tables if t.algo >= 0]
    cleared = all(p["source"] == "nccl" for p in results["after_end"])
    check(checks, "override cleared on every rank at the end", cleared, results["after_end"])
    if cpu_smoke:
        check(checks, "gloo: nothing applied, nothing forced written", not applied and not forced_rows,
              f"{len(refused)} forced configurations run through the override, none applied")
        return _checks_report(checks, out, {"report": str(report_path)})
    check(checks, "NCCL consulted the plugin on every timed call of every rank", not unconsulted,
          f"not consulted: {sorted(set(unconsulted))[:10]}")
    ring = {(a, p) for coll, a, p, ch, _ in applied if coll == "allreduce"}
    check(checks, "Ring/Simple and Ring/LL allreduce applied", {(1, 2), (1, 0)} <= ring,
          f"applied allreduce (algo, proto): {sorted(ring)}")
    check(checks, "forced rows written with their channel counts", bool({t.channels for t in forced_rows} & {2, 8}),
          f"{len(forced_rows)} forced table(s); channels {sorted({t.channels for t in forced_rows})}")
    written = {(t.coll, t.algo, t.proto, t.channels) for t in forced_rows}
    leaked = [label for coll, a, p, ch, label in refused if (coll, a, p, ch) in written]
    check(checks, "refused configurations not written", not leaked,
          f"{len(refused)} refused (e.g. {sorted(r[4] for r in refused)[:5]}); written anyway: {leaked[:5]}")
    gemm = [t for t in tables if t.table.endswith("-gemm")]
    check(checks, "GEMM-beside rows written", bool(gemm), f"{len(gemm)} table(s)")
    if chunks:
        _chunk_checks(checks, results, items, tables)
    return _checks_report(checks, out, {"report": str(report_path), "csv": str(csv)})


def _has_get_chunk_size() -> bool:
    """Whether torch's NCCL asks a tuner for a chunk size (tuner ABI v6)."""
    from dynamiccl.costmodel.live import torch_nccl_version
    from dynamiccl.knobs.chunk import GET_CHUNK_SIZE_MIN_NCCL
    from dynamiccl.nccl import parse_version

    version = torch_nccl_version()
    return version is not None and parse_version(version) >= parse_version(GET_CHUNK_SIZE_MIN_NCCL)


def _chunk_checks(checks: list[dict], results: dict, items: list[dict], tables: list) -> None:
    """The --chunks checks of a run on an NCCL with getChunkSize (module docstring)."""
    from dynamiccl.measure.plan import Config

    probed, unasked, applied = [], [], 0
    for entry in results["steps"]:
        kind, i, c = entry["step"][:3]
        config = Config(**items[i]["configs"][c])
        if not config.chunk_bytes:
            continue
        label = f"{items[i]['coll']} {items[i]['shape']['nranks']}x{items[i]['shape']['nnodes']} {config.label}"
        probed += [label for m in entry["members"] if m["probe_chunk_bytes"] != config.chunk_bytes]
        if entry["applied"]:
            applied += 1
            unasked += [label for m in entry["members"] if m["plugin_chunk_calls"] < m["calls_made"]]
    check(checks, "the chunk override is what getChunkSize answers in every process", not probed,
          f"probes that did not answer the step's chunk: {sorted(set(probed))[:10]}")
    check(checks, "NCCL asked getChunkSize on every timed call of an applied chunk step", applied and not unasked,
          f"{applied} applied chunk step(s); not asked: {sorted(set(unasked))[:10]}")
    rows = [t for t in tables if t.chunk_bytes]
    check(checks, "chunk rows written with their chunk size", bool(rows),
          f"{len(rows)} table(s), chunk sizes {sorted({t.chunk_bytes for t in rows})}")
    unsafe = [(i, c) for i, item in enumerate(results["items"]) for c, state in enumerate(item["configs"])
              if state["status"] == "unavailable" and state["reason"].startswith("chunk_bytes=")]
    timed = {tuple(entry["step"][1:3]) for entry in results["steps"]}
    check(checks, "no chunk size knobs.safety refused was timed", not (set(unsafe) & timed),
          f"{len(unsafe)} refused on NCCL {results['nccl_version']} / network {results.get('network_transport')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, required=True, help="GPUs to use: 1 (one-GPU checks) or N >= 2")
    parser.add_argument("--out", type=Path, help="where to write (default experiments/measure/gpu-check-world<N>)")
    parser.add_argument("--budget", default="4m", help="dynamiccl measure --budget for --world N (default 4m)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the --world N path on gloo (no GPU)")
    parser.add_argument("--chunks", action="store_true", help="--world N: also measure --chunks (issue 17)")
    args = parser.parse_args()
    out = args.out or REPO / "experiments" / "measure" / f"gpu-check-world{args.world}{'-cpu-smoke' if args.cpu_smoke else ''}"
    if args.world == 1:
        return one_gpu(out)
    if args.world < 2 or args.world % 2:
        parser.error("--world must be 1 or an even N >= 2 (the trace is TP2)")
    return n_gpus(args.world, out, args.cpu_smoke, args.budget, args.chunks)


if __name__ == "__main__":
    sys.exit(main())
