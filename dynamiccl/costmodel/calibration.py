"""Calibrate the world simulator against measured nccl-tests tables, and validate it.

``validate`` costs every measured row with the table's forced algorithm (or NCCL's own choice,
from NCCL's model of the table's NCCL version) and reports the error of predicted time against
measured time, per table, per hardware class (:func:`hardware_class`) and overall, in three size
classes (<= 64 KiB, in between, >= 64 MiB). NCCL's model's own belief is reported beside it, so the
world's gain over it stays visible. Where several tables measured configurations of one call on one
system (forced algorithms or protocols beside NCCL's default), :func:`fastest_checks` says per size
whether the configuration the world finds fastest is the measured fastest or within 5% of it.

``calibrate`` fits the world's free parameters (link efficiency per architecture/fabric class
present in the data, per-hop and fixed latencies per protocol, NVLS latency, the ``-g k`` launch
gap, protocol efficiencies, p2p efficiency per architecture, the PCIe hop factor where a PCIe
table has several GPUs per node, and per network transport of the multi-node tables its share of
line rate, hop latency and -- where a tree spans 3 or more nodes -- its incast share) by least
squares on log(time predicted / measured), every row weighted alike. Every fit starts from the
unfitted literature priors (:data:`~dynamiccl.costmodel.world.PRIORS`), never from a previous fit,
so the same tables always give the same parameters. Parameters and classes no table informs keep
their priors; architecture-level fall-backs (and ``pcie``) become the mean of the fitted classes
they cover.

``leave_one_out`` is the out-of-sample check: each table predicted by ``calibrate`` on the other
tables alone (same start, same budget).
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dynamiccl.costmodel.batch import make_batch
from dynamiccl.costmodel.measurements import MeasuredTable, map_table, table_kind
from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.costmodel.world import WorldModel, WorldParams, default_params, prior_params
from dynamiccl.envspec import EnvSpec
from dynamiccl.nccl import Algorithm, Protocol, busbw_factor

SMALL_BYTES = 64 * 1024
LARGE_BYTES = 64 * 1024 * 1024
# Targets of issue 14, per hardware class, leave one table out.
LARGE_TARGET = 0.10
SMALL_TARGET = 0.20
FASTEST_TOLERANCE = 0.05  # the world's fastest configuration may be measured this much slower than the fastest


@dataclass
class TableResult:
    """Predictions for one measured table."""

    table: MeasuredTable
    env: EnvSpec
    world_time_us: np.ndarray
    nccl_time_us: np.ndarray
    algo: np.ndarray
    proto: np.ndarray
    channels: np.ndarray

    @property
    def error(self) -> np.ndarray:
        """(predicted - measured) / measured of the world simulator, per row."""
        return self.world_time_us / self.table.time_us - 1.0

    @property
    def nccl_error(self) -> np.ndarray:
        return self.nccl_time_us / self.table.time_us - 1.0

    def busbw_gbytes_per_s(self, time_us: np.ndarray) -> np.ndarray:
        """nccl-tests' busbw (GB/s) of the table's sizes taking ``time_us`` (µs) per row."""
        return self.table.size_bytes / (1000.0 * time_us) * busbw_factor(self.table.coll, self.table.nranks)

    def predicted_busbw_gbytes_per_s(self) -> np.ndarray:
        """busbw (GB/s) the world simulator predicts, per row."""
        return self.busbw_gbytes_per_s(self.world_time_us)

    def measured_busbw_gbytes_per_s(self) -> np.ndarray:
        """busbw (GB/s) measured, per row."""
        return self.busbw_gbytes_per_s(self.table.time_us)

    def nccl_busbw_gbytes_per_s(self) -> np.ndarray:
        """busbw (GB/s) NCCL's model believes, per row."""
        return self.busbw_gbytes_per_s(self.nccl_time_us)


def predict(tables: list[MeasuredTable], specs: list[EnvSpec] | EnvSpec, params: WorldParams | None = None,
            ) -> list[TableResult]:
    """Cost every row of every table with the world (``params``) and with NCCL's model."""
    params = params or default_params()
    results = []
    for table in tables:
        env, batch, nccl_model, nccl_time_us = _setup(table, specs)
        world = WorldModel(env, params, nccl_model).evaluate(batch, launch_gpus=table.launch_gpus)
        results.append(TableResult(table, env, world.time_us, nccl_time_us, world.algo, world.proto,
                                   world.channels))
    return results


_SETUPS: dict[tuple, tuple] = {}


def _setup(table: MeasuredTable, specs: list[EnvSpec] | EnvSpec) -> tuple:
    """(spec, batch, NCCL's model, NCCL's believed time) of a table: what does not depend on the
    world's parameters, so that a fit's hundreds of predictions build it once."""
    env = map_table(table, specs)
    key = (table.table, table.func, table.algo, table.proto, table.channels, table.nranks, table.nodes,
           table.size_bytes.tobytes(), env)
    if key not in _SETUPS:
        # A table's forced algorithm/protocol is an NCCL_ALGO/NCCL_PROTO setting, not a tuner's choice;
        # its forced channel count (the ``channels`` column) is costed forced too.
        batch = make_batch(table.func, table.size_bytes, table.nranks, table.nodes, algo=table.algo,
                           proto=table.proto, channels=table.channels, forced_by_env=True)
        nccl_model = NcclModel(env)
        _SETUPS[key] = (env, batch, nccl_model, nccl_model.choose(batch)["time_us"])
    return _SETUPS[key]


def hardware_class(table: MeasuredTable, env: EnvSpec) -> str:
    """The class a table is reported under: ``arch/fabric``, plus the network transport when the
    table spans nodes (``hopper/nvswitch``, ``blackwell/nvswitch+ib``, ``ampere/pcie+tcp``)."""
    return f"{env.arch}/{env.intra.fabric}" + (f"+{env.inter.transport}" if table.nodes > 1 else "")


def _median_abs(errors: np.ndarray) -> float:
    return float(np.median(np.abs(errors))) if len(errors) else float("nan")


def summarize(results: list[TableResult]) -> dict:
    """Median |error| per table and overall, by size class, for the world and NCCL's model."""
    def classes(res_list, attr):
        size = np.concatenate([r.table.size_bytes for r in res_list])
        err = np.concatenate([getattr(r, attr) for r in res_list])
        unrunnable = int((~np.isfinite(err)).sum())  # a forced pair the model cannot run: no error to take
        size, err = size[np.isfinite(err)], err[np.isfinite(err)]
        return {"unrunnable_rows": unrunnable, "all": _median_abs(err), "small": _median_abs(err[size <= SMALL_BYTES]),
                "large": _median_abs(err[size >= LARGE_BYTES]),
                "mid": _median_abs(err[(size > SMALL_BYTES) & (size < LARGE_BYTES)]),
                "rows": int(len(err)), "small_rows": int((size <= SMALL_BYTES).sum()),
                "large_rows": int((size >= LARGE_BYTES).sum())}
    per_table = {r.table.table: {"env": r.env.name, "nccl_version": r.env.nccl_version, "kind": table_kind(r.table),
                                 "class": hardware_class(r.table, r.env),
                                 "world": classes([r], "error"), "nccl_model": classes([r], "nccl_error")}
                 for r in results}
    by_class: dict[str, list[TableResult]] = {}
    for r in results:
        by_class.setdefault(hardware_class(r.table, r.env), []).append(r)
    per_class = {name: {"tables": [r.table.table for r in group], "world": classes(group, "error"),
                        "nccl_model": classes(group, "nccl_error")} for name, group in sorted(by_class.items())}
    return {"tables": per_table, "classes": per_class, "fastest": fastest_checks(results),
            "overall": {"world": classes(results, "error"), "nccl_model": classes(results, "nccl_error")}}


def fastest_checks(results: list[TableResult], tolerance: float = FASTEST_TOLERANCE) -> list[dict]:
    """Per set of tables that measured configurations of one call on one system (same spec,
    collective, GPUs per node and nodes; two or more tables), and per size all of them measured:
    whether the configuration the world finds fastest is measured within ``tolerance`` of the
    measured fastest. Where the world ties configurations (within 1%: it cannot tell them apart,
    e.g. a forced pair that is also NCCL's choice), its pick costs the mean of their measured
    times."""
    groups: dict[tuple, list[TableResult]] = {}
    for r in results:
        groups.setdefault((r.env.name, r.table.coll, r.table.gpus_per_node, r.table.nodes), []).append(r)
    checks = []
    for (env_name, coll, gpus_per_node, nodes), group in groups.items():
        if len(group) < 2:
            continue
        sizes = sorted(set.intersection(*(set(r.table.size_bytes.tolist()) for r in group)))
        rows = []
        for size in sizes:
            measured = np.array([r.table.time_us[r.table.size_bytes == size][0] for r in group])
            world = np.array([r.world_time_us[r.table.size_bytes == size][0] for r in group])
            tied = np.flatnonzero(world <= world.min() * 1.01)
            best = int(np.argmin(measured))
            excess = float(measured[tied].mean() / measured[best] - 1.0)
            rows.append({"size_bytes": int(size), "world_pick": "=".join(group[i].table.table for i in tied),
                         "measured_fastest": group[best].table.table, "excess": excess, "ok": excess <= tolerance})
        checks.append({"env": env_name, "coll": coll, "gpus_per_node": gpus_per_node, "nodes": nodes,
                       "class": hardware_class(group[0].table, group[0].env),
                       "tables": [r.table.table for r in group], "sizes": len(rows),
                       "ok": sum(row["ok"] for row in rows), "rows": rows})
    return checks


def points(results: list[TableResult]) -> dict:
    """Per measured table, the rows behind the summary: size (bytes) and busbw (GB/s) measured,
    predicted by the world simulator and believed by NCCL's model (``dynamiccl validate --json``)."""
    out = {}
    for r in results:
        out[r.table.table] = {"size_bytes": [int(v) for v in r.table.size_bytes],
                             "measured_busbw_gbytes_per_s": [float(v) for v in r.measured_busbw_gbytes_per_s()],
                             "predicted_busbw_gbytes_per_s": [float(v) for v in r.predicted_busbw_gbytes_per_s()],
                             "nccl_model_busbw_gbytes_per_s": [float(v) for v in r.nccl_busbw_gbytes_per_s()]}
    return out


def format_summary(summary: dict) -> str:
    """The per-table and overall error table ``dynamiccl validate`` prints."""
    def pct(x):  # undefined (no rows of that size): NaN here, null once written as JSON
        return f"{100 * x:7.1f}%" if x is not None and x == x else f"{'-':>8}"
    lines = ["# median |predicted - measured| / measured time, world simulator (NCCL model's belief in brackets)",
             f"#{'table':<24} {'env':<14} {'nccl':<7} {'kind':<16} {'rows':>4} {'all':>8} {'<=64K':>8} "
             f"{'>=64M':>8} {'[nccl all]':>11}"]
    for name, t in summary["tables"].items():
        w, n = t["world"], t["nccl_model"]
        lines.append(f" {name:<24} {t['env']:<14} {t['nccl_version']:<7} {t['kind']:<16} {w['rows']:>4} "
                     f"{pct(w['all'])} {pct(w['small'])} {pct(w['large'])} {'[' + pct(n['all']).strip() + ']':>11}")
    w, n = summary["overall"]["world"], summary["overall"]["nccl_model"]
    lines.append(f" {'overall':<24} {'':<14} {'':<7} {'':<16} {w['rows']:>4} {pct(w['all'])} {pct(w['small'])} "
                 f"{pct(w['large'])} {'[' + pct(n['all']).strip() + ']':>11}")
    if w.get("unrunnable_rows"):
        lines.append(f"# {w['unrunnable_rows']} rows left out: a forced algorithm/protocol NCCL cannot run there: "
                     + ", ".join(name for name, t in summary["tables"].items() if t["world"].get("unrunnable_rows")))

    def verdict(value, target):
        return "-" if value is None or value != value else ("met" if value <= target else "MISSED")
    lines.append(f"# per hardware class (targets: <= {100 * LARGE_TARGET:.0f}% for sizes >= 64 MiB, "
                 f"<= {100 * SMALL_TARGET:.0f}% for sizes <= 64 KiB)")
    lines.append(f"#{'class':<26} {'tables':>6} {'rows':>5} {'all':>8} {'<=64K':>8} {'>=64M':>8}  {'<=64K':<7} {'>=64M':<7}")
    for name, c in summary["classes"].items():
        w = c["world"]
        lines.append(f" {name:<26} {len(c['tables']):>6} {w['rows']:>5} {pct(w['all'])} {pct(w['small'])} "
                     f"{pct(w['large'])}  {verdict(w['small'], SMALL_TARGET):<7} {verdict(w['large'], LARGE_TARGET):<7}")
    if summary["fastest"]:
        lines.append(f"# fastest configuration: sizes where the world's fastest is measured within "
                     f"{100 * FASTEST_TOLERANCE:.0f}% of the measured fastest")
        for check in summary["fastest"]:
            worst = max(check["rows"], key=lambda row: row["excess"])
            lines.append(f" {check['env']:<14} {check['coll']:<10} {check['nodes']}x{check['gpus_per_node']:<3} "
                         f"{check['ok']:>3}/{check['sizes']:<3} {'met' if check['ok'] == check['sizes'] else 'MISSED':<7}"
                         f" worst {worst['size_bytes']} B: world {worst['world_pick']}, measured "
                         f"{worst['measured_fastest']} ({100 * worst['excess']:+.1f}%)  [{', '.join(check['tables'])}]")
    return "\n".join(lines)


def plot(results: list[TableResult], path: str | Path) -> None:
    """Predicted vs measured busbw per table (log size axis), one panel per table; atomic PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynamiccl import atomic

    cols = 3
    rows = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        ax.plot(r.table.size_bytes, r.measured_busbw_gbytes_per_s(), "o-", label="measured", color="black", ms=3)
        ax.plot(r.table.size_bytes, r.predicted_busbw_gbytes_per_s(), "s--", label="world simulator", color="tab:blue", ms=3)
        ax.plot(r.table.size_bytes, r.nccl_busbw_gbytes_per_s(), ":", label="NCCL model", color="tab:orange")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{r.table.table}\n{table_kind(r.table)}, {r.env.name}, NCCL {r.env.nccl_version}", fontsize=9)
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


# --- fitting ---------------------------------------------------------------------------------------

def _free_parameters(results: list[TableResult]) -> list[tuple[str, str | int | None, float, float]]:
    """(field, key, low, high) of each parameter the data can inform."""
    classes = sorted({_hardware_class(r.env) for r in results if _informs_link(r.table, r.env)})
    p2p_arches = sorted({r.env.arch for r in results if r.table.coll == "sendrecv"})
    free = [("link_efficiency", c, 0.4, 1.0) for c in classes]
    free += [("p2p_efficiency", a, 0.2, 1.0) for a in p2p_arches]
    free += [("hop_us", int(p), 0.1, 10.0) for p in Protocol]
    free += [("base_us", int(p), 0.5, 40.0) for p in Protocol]
    if any(r.env.intra.fabric == "pcie" and r.table.gpus_per_node > 1 for r in results):
        free.append(("pci_hop_factor", None, 0.5, 6.0))
    multi = [r for r in results if r.table.nodes > 1]
    for transport in sorted({r.env.inter.transport for r in multi}):
        of_transport = [r for r in multi if r.env.inter.transport == transport]
        free.append(("net_efficiency", transport, 0.05, 1.0))
        # LL / LL128 over the network where a table forces the protocol on this transport.
        forced = {int(r.table.proto) for r in of_transport if r.table.proto in (Protocol.LL, Protocol.LL128)}
        free += [("net_protocol_efficiency", (transport, p), 0.02, 1.0) for p in sorted(forced)]
        # Hop latency of each protocol that small rows of this transport run.
        small_protos = {int(p) for r in of_transport for p in r.proto[(r.table.size_bytes <= SMALL_BYTES) & (r.proto >= 0)]}
        free += [("net_hop_us", (transport, p), 0.5, 500.0) for p in sorted(small_protos)]
        # Incast: a tree (or NVLSTree) across 3 or more nodes has several peers sending into a node.
        if any(r.table.nodes >= 3 and np.isin(r.algo, (Algorithm.TREE, Algorithm.NVLS_TREE)).any() for r in of_transport):
            free.append(("net_incast_efficiency", transport, 0.3, 1.0))
    # p2p_us stays at its prior: the measured send/recv tables start at 128 MiB, where it is invisible.
    free += [("nvls_us", None, 2.0, 60.0), ("launch_gap_us", None, 0.0, 10.0),
             ("ll_efficiency", None, 0.3, 1.0), ("ll128_efficiency", None, 0.5, 1.0)]
    return free


def _informs_link(table: MeasuredTable, env: EnvSpec) -> bool:
    """Whether a table informs its class's link efficiency: a collective over several GPUs per node
    whose ring does not cross CPU sockets on PCIe (there the measured socket cap binds instead)."""
    if table.coll == "sendrecv" or table.gpus_per_node <= 1:
        return False
    return not (env.intra.fabric == "pcie" and env.crosses_sockets(table.gpus_per_node))


def parameter_name(field: str, key) -> str:
    """How the fit report names a parameter: ``nvls_us``, ``link_efficiency[hopper/nvswitch]``,
    ``net_hop_us[tcp/LL]`` (a transport's protocol)."""
    if key is None:
        return field
    if isinstance(key, tuple):
        return f"{field}[{key[0]}/{Protocol(key[1]).nccl_name}]"
    return f"{field}[{key}]"


def _hardware_class(env: EnvSpec) -> str:
    """The key of a fitted link efficiency: ``arch/fabric``."""
    return f"{env.arch}/{env.intra.fabric}"


def _with(params: WorldParams, free, values) -> WorldParams:
    out = replace(params, link_efficiency=dict(params.link_efficiency), p2p_efficiency=dict(params.p2p_efficiency),
                  net_efficiency=dict(params.net_efficiency),
                  net_hop_us={k: list(v) for k, v in params.net_hop_us.items()},
                  net_protocol_efficiency={k: list(v) for k, v in params.net_protocol_efficiency.items()},
                  net_incast_efficiency=dict(params.net_incast_efficiency),
                  hop_us=list(params.hop_us), base_us=list(params.base_us))
    for (name, key, _, _), value in zip(free, values):
        if key is None:
            setattr(out, name, float(value))
        elif isinstance(key, tuple):  # (transport, protocol) of a per-protocol list
            getattr(out, name)[key[0]][key[1]] = float(value)
        else:
            getattr(out, name)[key] = float(value)
    return out


def _current(params: WorldParams, free) -> np.ndarray:
    values = []
    for name, key, low, high in free:
        field_value = getattr(params, name)
        if key is None:
            value = field_value
        elif isinstance(key, tuple):
            value = field_value[key[0]][key[1]]
        elif isinstance(field_value, dict):  # a class the prior has no entry for starts mid-range
            value = field_value.get(key, (low + high) / 2)
        else:
            value = field_value[key]
        values.append(min(max(value, low), high))
    return np.array(values, dtype=np.float64)


def _describe_sources(source: str | list) -> str:
    """``name (sha256 <12 hex>)`` of each measurements file, joined with " + "."""
    paths = [source] if isinstance(source, (str, Path)) else list(source)
    parts = []
    for path in (Path(p) for p in paths if p):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "-"
        parts.append(f"{path.name} (sha256 {digest})")
    return " + ".join(parts) or "tables"


DEFAULT_MAX_EVALUATIONS = 400  # a fit from the priors converges in ~30 (the 288-row set: 26)
CONVERGENCE_ITERATIONS = 3  # the report's cost change is taken over this many last iterations


def calibrate(tables: list[MeasuredTable], specs: list[EnvSpec] | EnvSpec, source: str | list = "",
              max_evaluations: int = DEFAULT_MAX_EVALUATIONS, progress: bool = False,
              ) -> tuple[WorldParams, dict]:
    """Fit the world's free parameters to measured tables, starting from the unfitted priors
    (:func:`~dynamiccl.costmodel.world.prior_params`, never a previous fit). Returns (parameters,
    fit report).

    ``source``: the measurements file(s) the tables came from, named with their hash in the
    parameters' provenance; ``max_evaluations``: the fit's budget of cost evaluations (the
    finite-difference Jacobian's not counted: about one per iteration); ``progress``: a progress bar
    of the iterations. The report gives the rms log error, the evaluations, whether the fit
    converged (scipy's ``least_squares`` status > 0, its reason in ``status``), the cost after each
    iteration (``cost_history``) and its relative fall over the last :data:`CONVERGENCE_ITERATIONS`
    (``last_cost_change``; NaN with fewer iterations), and the fitted value of each free parameter.
    """
    from scipy.optimize import least_squares
    from tqdm import tqdm

    prior = prior_params()
    first = predict(tables, specs, prior)
    free = _free_parameters(first)
    x0 = _current(prior, free)
    low = np.array([f[2] for f in free])
    high = np.array([f[3] for f in free])

    # Rows the world cannot run (a forced pair NCCL has no graph for, e.g. NVLS over PCIe) are left
    # out of the fit. A protocol NCCL_PROTO forces past NCCL's automatic rules (LL128 over PCIe) runs.
    runnable = [np.isfinite(r.world_time_us) for r in first]

    def residuals(x):
        res = predict(tables, specs, _with(prior, free, x))
        return np.concatenate([np.log(r.world_time_us[ok] / r.table.time_us[ok]) for r, ok in zip(res, runnable)])

    cost_history: list[float] = []
    bar = tqdm(desc="calibrate", unit="it", total=None, disable=not progress, leave=False)

    def iteration(intermediate_result):
        cost_history.append(float(intermediate_result.cost))
        bar.set_postfix(cost=f"{intermediate_result.cost:.5f}", refresh=False)
        bar.update()

    # Robust loss: one anomalous row (e.g. a warm-up artefact) must not drag a whole class; steps of
    # 1% because channel counts make the cost piecewise.
    fit = least_squares(residuals, x0, bounds=(low, high), x_scale=np.maximum(np.abs(x0), 0.1), loss="soft_l1",
                        f_scale=0.1, diff_step=1e-2, max_nfev=max_evaluations, callback=iteration)
    bar.close()
    params = _with(prior, free, fit.x)
    # Architecture-level fall-backs for fabrics the data did not cover, and a global default: means of
    # this fit's classes (a class no table informs keeps the prior's entry).
    fitted = {k: v for k, v in params.link_efficiency.items() if "/" in k}
    for arch in {k.split("/")[0] for k in fitted}:
        params.link_efficiency[arch] = float(np.mean([v for k, v in fitted.items() if k.startswith(arch + "/")]))
    pcie = [v for k, v in fitted.items() if k.endswith("/pcie")]
    if pcie:
        params.link_efficiency["pcie"] = float(np.mean(pcie))
    if fitted:
        params.link_efficiency["default"] = float(np.mean(list(fitted.values())))
    params.provenance = (f"calibrated {datetime.date.today().isoformat()} on {_describe_sources(source)} "
                         f"({len(tables)} tables, {sum(len(t.time_us) for t in tables)} rows)")
    report = {"cost_rms_log_error": float(np.sqrt(np.mean(fit.fun ** 2))), "evaluations": int(fit.nfev),
              "converged": bool(fit.status > 0), "status": fit.message, "cost_history": cost_history,
              "last_cost_change": _last_cost_change(cost_history),
              "parameters": {parameter_name(n, k): float(v) for (n, k, _, _), v in zip(free, fit.x)}}
    return params, report


def _last_cost_change(cost_history: list[float]) -> float:
    """Relative fall of the cost over the last :data:`CONVERGENCE_ITERATIONS` iterations (NaN with fewer)."""
    if len(cost_history) <= CONVERGENCE_ITERATIONS:
        return float("nan")
    before = cost_history[-1 - CONVERGENCE_ITERATIONS]
    return float((before - cost_history[-1]) / before) if before > 0 else 0.0


def leave_one_out(tables: list[MeasuredTable], specs: list[EnvSpec] | EnvSpec, progress: bool = True,
                  max_evaluations: int = DEFAULT_MAX_EVALUATIONS) -> tuple[list[TableResult], list[dict]]:
    """Out-of-sample check: each table predicted by parameters fitted on all the other tables alone.

    Each fold is exactly :func:`calibrate` on the other tables: it starts from the unfitted priors
    with the same budget, so nothing the held-out table taught any other fit reaches it. A
    parameter no other table informs keeps its literature prior (:data:`~dynamiccl.costmodel.world.PRIORS`),
    and a hardware class no other table informs falls back to its architecture's mean, the ``pcie``
    mean or the global mean of the fold's own fit: the honest test of predicting a system never
    calibrated on. Returns (the held-out tables' results, each fold's fit report with the
    held-out table's name under ``held_out``).
    """
    from tqdm import tqdm

    results, reports = [], []
    bar = tqdm(tables, desc="leave-one-table-out", unit="fit", disable=not progress)
    for held_out in bar:
        bar.set_postfix(held_out=held_out.table)
        rest = [t for t in tables if t is not held_out]
        params, report = calibrate(rest, specs, max_evaluations=max_evaluations, progress=progress)
        results.extend(predict([held_out], specs, params))
        reports.append({"held_out": held_out.table, **report})
    return results, reports
