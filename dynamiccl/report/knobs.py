"""The report's "Knobs beyond the per-call choice" section: what the decision table sets beyond
(algorithm, protocol, channels), and what the world says it gives back.

For the decision table the report shows (``dynamiccl report --table``):

- **Per communicator** (group kind and shape) of each case's step whose table settings are not
  NCCL's (:meth:`~dynamiccl.table.model.DecisionTable.communicator_config`): the CTA settings, the
  SMs each of its calls holds under NCCL's default and under those settings, the group's collective
  time per step, and the compute time given back per step. All from the world simulator, which
  takes a communicator's settings as the cost-batch columns of
  :func:`~dynamiccl.knobs.comm_config.batch_columns` (simulated, not measured): a call holds one SM
  per channel (NCCL's CTAs never share an SM with compute, nvidia/nccl#689), none where the world
  runs it on the copy engines (a copy collective of a zero-CTA communicator on symmetric buffers:
  ``WorldModel.on_copy_engines``, ``interference.sms_held``). Compute running beside a call that slows it
  by ``s`` (the world's ``compute_slowdown``) for the call's ``t`` µs finishes ``t (1 - 1/s)`` µs
  later (the replay's rule, :mod:`dynamiccl.tuning.timeline`); the compute given back is that
  stretch under NCCL's default minus under the settings, summed over the group's calls per GPU of
  the step, for calls that run entirely beside compute (the most they give back: a call the step
  waits for exposed gives back nothing).
- **Per size band** (a rule's byte range) the chunk sizes the table's rules set, or "NCCL's chunk
  everywhere".
- **The knob registry** (:data:`dynamiccl.knobs.KNOBS`): which knobs the world models (and the
  measurement it rests on) and which stay masked there, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamiccl.errors import InputError
from dynamiccl.knobs import KNOBS
from dynamiccl.knobs.chunk import KEEP_CHUNK
from dynamiccl.knobs.comm_config import (CTA_BOUNDS_MIN_NCCL, CTA_POLICY_MIN_NCCL, NVLS_CTAS_MIN_NCCL, KEEP,
                                         CommConfig, batch_columns)
from dynamiccl.nccl import parse_version
from dynamiccl.report.data import ReportData

TITLE = "Knobs beyond the per-call choice"
COMM_HEADER = ("case", "group", "ranks x nodes", "CTA settings", "calls per GPU per step",
               "SMs per call (NCCL default)", "SMs per call (settings)",
               "collective time per step, default -> settings (ms)", "compute given back per step (ms)",
               "what NCCL does with the settings")
CHUNK_HEADER = ("collective", "ranks x nodes", "size band", "chunk size")
KNOB_HEADER = ("knob", "scope", "applied by", "NCCL >=", "in the world simulator")
WORLD_MODEL = "world"


@dataclass
class GroupKnobs:
    """One communicator shape of a case with table settings that are not NCCL's: per GPU of the
    step (the mean over its GPUs), ``calls`` its calls, ``sms_default`` / ``sms_config`` the SMs
    each holds (min, max over its calls), ``time_default_us`` / ``time_config_us`` their summed time
    beside compute, ``given_back_us`` the compute time given back (module docstring)."""

    case: str
    kind: str
    nranks: int
    nnodes: int
    config: CommConfig
    calls: float
    sms_default: tuple[int, int]
    sms_config: tuple[int, int]
    time_default_us: float
    time_config_us: float
    given_back_us: float
    effect: str = "applied"


def on_nccl(config: CommConfig, nccl_version: str, symmetric_memory: bool) -> tuple[CommConfig, list[str]]:
    """The part of ``config`` that NCCL ``nccl_version`` applies (a field it does not have yet is
    ignored: ``ncclConfig_t`` of an older NCCL has no such member), and a sentence per field that
    does not take effect: too old an NCCL, or a zero-CTA policy without symmetric-registered buffers."""
    version = parse_version(nccl_version)
    kept, said = {}, []
    since = {"min_ctas": CTA_BOUNDS_MIN_NCCL, "max_ctas": CTA_BOUNDS_MIN_NCCL, "cga_cluster_size": CTA_BOUNDS_MIN_NCCL,
             "nvls_ctas": NVLS_CTAS_MIN_NCCL,
             "cta_policy": CTA_POLICY_MIN_NCCL.get(config.cta_policy or "", CTA_BOUNDS_MIN_NCCL)}
    for name, value in config.set_fields().items():
        if version < parse_version(since[name]):
            said.append(f"{name} ignored: NCCL {nccl_version} has it only from {since[name]}")
        else:
            kept[name] = value
    if kept.get("cta_policy") == "zero" and not symmetric_memory:
        said.append("cta_policy=zero has no effect: the buffers are not symmetric-registered "
                    "(the spec's [nccl] symmetric_memory)")
    return CommConfig(**{k: v for k, v in kept.items() if v not in (KEEP, None)}), said


def group_knobs(data: ReportData) -> tuple[list[GroupKnobs], list[str]]:
    """Every (case, communicator shape) whose table settings are not NCCL's, costed by the world,
    and notes (a case not recomputed, and why; the cost model and NCCL version)."""
    from dynamiccl.costmodel import interference
    from dynamiccl.costmodel.batch import make_batch
    from dynamiccl.costmodel.protocol import CostModelOptions
    from dynamiccl.costmodel.registry import COST_MODELS
    from dynamiccl.tuning.cases import Case, load_case
    from dynamiccl.tuning.observation import key_columns

    table = data.table
    out: list[GroupKnobs] = []
    notes: list[str] = []
    cases = data.steps.drop_duplicates("case")[["case", "trace", "env_spec"]]
    for case, trace, env_name in cases.itertuples(index=False):
        if not Path(trace).is_file():
            notes.append(f"{data.name(case)}: its trace {trace} is not on this machine, so its communicators "
                         "are not costed")
            continue
        try:
            loaded = load_case(Case(trace, env_name), WORLD_MODEL)
        except InputError as err:
            notes.append(f"{data.name(case)}: not costed ({err})")
            continue
        program, env = loaded.program, loaded.env
        world = COST_MODELS[WORLD_MODEL].create(env, CostModelOptions())
        notes.append(f"{data.name(case)}: simulated by the world model ({world.describe()}), NCCL {env.nccl_version}'s "
                     f"pools{', symmetric-registered buffers' if env.symmetric_memory else ''}")
        weights = np.asarray(program.rank_gpus or [1] * len(program.ranks), dtype=np.float64)
        weights = weights / weights.sum()
        groups: dict[tuple[str, int, int], list[int]] = {}
        for c, (kind, key) in enumerate(zip(program.call_kind, program.call_key)):
            groups.setdefault((kind, key.nranks, key.nnodes), []).append(c)
        for (kind, nranks, nnodes), calls in sorted(groups.items()):
            config = table.communicator_config(kind, nranks, nnodes)
            if config.is_default:
                continue
            applied, said = on_nccl(config, env.nccl_version, env.symmetric_memory)
            per_gpu = np.array([weights[program.call_ranks[c]].sum() for c in calls])
            k = key_columns([program.call_key[c].cost_key() for c in calls])
            common = dict(num_pipe_ops=k["num_pipe_ops"], overlap=1.0,
                          compute_hbm_share=env.dynamics.compute_hbm_share)
            results = []
            for columns in ({}, batch_columns(applied, env.symmetric_memory)):
                batch = make_batch(k["coll"], k["nbytes"], k["nranks"], k["nnodes"], **common, **columns)
                got = world.evaluate(batch)
                sms = interference.sms_held(got.channels, world.on_copy_engines(batch))
                stretch = got.time_us * (1.0 - 1.0 / got.compute_slowdown)
                results.append((sms, float((per_gpu * got.time_us).sum()), float((per_gpu * stretch).sum())))
            (sms_d, time_d, stretch_d), (sms_c, time_c, stretch_c) = results
            out.append(GroupKnobs(data.name(case), kind, nranks, nnodes, config, float(per_gpu.sum()),
                                  (int(sms_d.min()), int(sms_d.max())), (int(sms_c.min()), int(sms_c.max())),
                                  time_d, time_c, stretch_d - stretch_c, "; ".join(said) or "applied"))
    return out, notes


def _span(sms: tuple[int, int]) -> str:
    return str(sms[0]) if sms[0] == sms[1] else f"{sms[0]}-{sms[1]}"


def comm_rows(groups: list[GroupKnobs]) -> list[list[str]]:
    """:data:`COMM_HEADER` cells of each group."""
    return [[g.case, g.kind, f"{g.nranks} x {g.nnodes}", g.config.describe(), f"{g.calls:g}", _span(g.sms_default),
             _span(g.sms_config), f"{g.time_default_us / 1e3:.3f} -> {g.time_config_us / 1e3:.3f}",
             f"{g.given_back_us / 1e3:+.3f}", g.effect] for g in groups]


def chunk_rows(table) -> list[list[str]]:
    """:data:`CHUNK_HEADER` cells: per (collective, shape, rule byte range), the chunk sizes the
    table's rules set there (in table order; rules keeping NCCL's chunk are left out)."""
    from dynamiccl.nccl import FUNC_OP
    from dynamiccl.table.model import exact_bytes_text  # the table's own spelling: 64K, 1M, max

    bands: dict[tuple, list[int]] = {}
    for rule in table.rules:
        if rule.chunk_bytes == KEEP_CHUNK:
            continue
        shape = "any" if rule.nranks < 0 and rule.nnodes < 0 else \
            f"{rule.nranks if rule.nranks >= 0 else 'any'} x {rule.nnodes if rule.nnodes >= 0 else 'any'}"
        key = (FUNC_OP[rule.coll], shape, rule.min_bytes, rule.max_bytes)
        if rule.chunk_bytes not in bands.setdefault(key, []):
            bands[key].append(rule.chunk_bytes)
    return [[coll, shape, f"{exact_bytes_text(low)} .. {exact_bytes_text(high)}",
             ", ".join(exact_bytes_text(c) for c in chunks)]
            for (coll, shape, low, high), chunks in sorted(bands.items(), key=lambda item: (item[0][0], item[0][2]))]


def knob_rows() -> list[list[str]]:
    """:data:`KNOB_HEADER` cells of every registered knob."""
    return [[k.name, k.scope, k.applied_by, k.min_nccl,
             f"modelled: {k.modelled}" if k.modelled else f"masked: {k.masked_why}"] for k in KNOBS.values()]


def blocks(data: ReportData) -> list[tuple[str, object]]:
    """The section's blocks (``dynamiccl.report.sections``' kinds): the table's communicator settings
    and chunk sizes (when the report has a table), then the knob registry."""
    out: list[tuple[str, object]] = []
    table = data.table
    if table is not None:
        out.append(("p", "Per communicator (group kind and shape) of each case whose table settings are not "
                         "NCCL's: the CTA settings, the SMs each call holds (one per channel; none for a copy "
                         "collective the world runs on the copy engines: zero-CTA policy, symmetric buffers), the group's collective time "
                         "per step, and the compute time given back per step: the stretch of compute running "
                         "beside the calls, t x (1 - 1/slowdown) per call, under NCCL's default minus under the "
                         "settings, per GPU of the step, for calls that run entirely beside compute (the most they "
                         "give back). Simulated, not measured."))
        if not table.communicators:
            out.append(("p", "The table sets no communicator: every communicator keeps NCCL's CTA settings."))
        else:
            groups, notes = group_knobs(data)
            if groups:
                out.append(("table", (list(COMM_HEADER), comm_rows(groups))))
            else:
                out.append(("p", "No communicator of these cases matches the table's communicator settings: "
                                 + "; ".join(f"{r.kind or 'any'} {r.nranks} x {r.nnodes}: {r.config.describe()}"
                                             for r in table.communicators) + "."))
            out += [("note", note) for note in notes]
        rows = chunk_rows(table)
        if rows:
            out.append(("p", "Chunk sizes the table sets per size band (tuner ABI v6 getChunkSize; NCCL clamps a "
                             "chunk to what its buffers allow, and the launcher keeps NCCL's chunk where "
                             "dynamiccl.knobs.safety refuses one):"))
            out.append(("table", (list(CHUNK_HEADER), rows)))
        else:
            out.append(("p", "Chunk sizes: NCCL's chunk everywhere (no rule sets one)."))
    out.append(("p", "The knobs dynamiccl can set beyond (algorithm, protocol, channels), and what the world "
                     "simulator knows of each: a modelled knob names the public measurement its effect rests on; a "
                     "masked one is never searched or learned in the world (a chunk size is priced only by "
                     "measurements of it: `dynamiccl measure --chunks` and `--model measured`)."))
    out.append(("table", (list(KNOB_HEADER), knob_rows())))
    return out


def knobs_report_section(data: ReportData):
    """The section of ``dynamiccl report --table`` (a :class:`~dynamiccl.report.sections.Section`)."""
    from dynamiccl.report.sections import Section

    return Section("knobs", TITLE, blocks(data))


__all__ = ["CHUNK_HEADER", "COMM_HEADER", "GroupKnobs", "KNOB_HEADER", "TITLE", "blocks", "chunk_rows", "comm_rows",
           "group_knobs", "knob_rows", "knobs_report_section"]
