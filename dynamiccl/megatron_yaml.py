"""A decision table's per-communicator settings as Megatron-LM's ``--nccl-communicator-config-path`` YAML.

Megatron-LM reads that file with ``yaml.safe_load`` into a mapping from a process-group name to its
options, and creates each group with ``ProcessGroupNCCL.Options()`` whose ``.config`` gets the keys
present: ``cga_cluster_size``, ``max_ctas``, ``min_ctas``, ``net_name`` (and ``is_high_priority_stream``
on the Options); a group it does not name keeps NCCL's defaults (NVIDIA/Megatron-LM
``megatron/core/parallel_state.py``: ``get_nccl_options`` and ``initialize_model_parallel``, commit
00caa53). Of a :class:`~dynamiccl.knobs.comm_config.CommConfig` it can carry ``max_ctas``,
``min_ctas`` and ``cga_cluster_size``; ``nvls_ctas`` and ``cta_policy`` have no key there (the
launcher's zero-code hook, :mod:`dynamiccl.commconfig_hook`, applies them).

Each Megatron group is matched to a table rule by the kind its ``group_desc`` gives
(:func:`dynamiccl.group_kinds.group_kind`, as the hook and the profiler read it). The
YAML names groups, not shapes: the first rule of a kind (or of any kind) applies to every group of
that kind, and a note says which shape-specific rules that ignores.
"""

from __future__ import annotations

import os

from dynamiccl.atomic import write_text
from dynamiccl.group_kinds import group_kind

CONFIG_PATH_FLAG = "--nccl-communicator-config-path"
# Megatron-LM's group name -> the group_desc that group is created with (parallel_state.py,
# initialize_model_parallel: create_group(..., pg_options=get_nccl_options(NAME, ...), group_desc=DESC)).
MEGATRON_GROUPS: dict[str, str] = {
    "dp_cp": "DATA_PARALLEL_GROUP_WITH_CP",
    "intra_dp_cp": "INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP",
    "dp": "DATA_PARALLEL_GROUP",
    "cp": "CONTEXT_PARALLEL_GROUP",
    "hcp": "CONTEXT_PARALLEL_GROUP",
    "mp": "MODEL_PARALLEL_GROUP",
    "tp": "TENSOR_MODEL_PARALLEL_GROUP",
    "pp": "PIPELINE_MODEL_PARALLEL_GROUP",
    "embd": "EMBEDDING_GROUP",
    "pos_embd": "POSITION_EMBEDDING_GROUP",
    "tp_dp_cp": "TENSOR_AND_DATA_PARALLEL_GROUP_WITH_CP",
    "tp_dp": "TENSOR_AND_DATA_PARALLEL_GROUP",
    "tp_cp": "TENSOR_AND_CONTEXT_PARALLEL_GROUP",
    "ep": "EXPERT_MODEL_PARALLEL_GROUP",
    "ep_tp": "EXPERT_TENSOR_PARALLEL_GROUP",
    "tp_ep_mp": "EXPERT_TENSOR_AND_MODEL_PARALLEL_GROUP",
    "tp_ep_pp": "EXPERT_TENSOR_MODEL_PIPELINE_PARALLEL_GROUP",
    "ep_dp": "EXPERT_DATA_PARALLEL_GROUP",
    "intra_ep_dp": "EXPERT_DATA_PARALLEL_GROUP",
    "inter_ep_dp": "EXPERT_DATA_PARALLEL_GROUP",
    "intra_dist_opt_instance": "INTRA_DISTRIBUTED_OPTIMIZER_INSTANCE_GROUP",
}
# The CommConfig fields get_nccl_options reads, under the same names.
MEGATRON_KEYS = ("max_ctas", "min_ctas", "cga_cluster_size")


def megatron_kind(name: str) -> str:
    """The group kind of Megatron's group ``name`` (from its group_desc, as the profiler reads it)."""
    return group_kind(MEGATRON_GROUPS[name], -1, 0)


def _shape(rule) -> str:
    parts = [f"{rule.nranks} ranks" if rule.nranks > 0 else "", f"{rule.nnodes} node(s)" if rule.nnodes > 0 else ""]
    return " on ".join(p for p in parts if p) or "any shape"


def megatron_config(table) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Megatron's per-group options for ``table.communicators``, and notes on what they leave out.

    Returns:
        ({group name: {key: value}} for the groups a rule gives a setting Megatron reads, in
        :data:`MEGATRON_GROUPS` order; [one line per rule or field the YAML cannot carry]).
    """
    groups: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    used: set[int] = set()
    for name in MEGATRON_GROUPS:
        kind = megatron_kind(name)
        index, rule = next(((i, r) for i, r in enumerate(table.communicators) if r.kind in (None, kind)),
                           (None, None))
        if rule is None:
            continue
        used.add(index)
        fields = rule.config.set_fields()
        values = {key: int(fields[key]) for key in MEGATRON_KEYS if key in fields}
        if values:
            groups[name] = values
    for index, rule in enumerate(table.communicators):
        label = f"communicators[{index}] ({rule.kind or 'any kind'}, {_shape(rule)}: {rule.config.describe()})"
        if index not in used:
            notes.append(f"{label}: not in the YAML (an earlier rule of its kind wins there, or Megatron has no "
                         "group of this kind)")
            continue
        if rule.nranks > 0 or rule.nnodes > 0:
            notes.append(f"{label}: applies to every group of its kind there (Megatron's YAML names groups, "
                         "not shapes)")
        dropped = [key for key in rule.config.set_fields() if key not in MEGATRON_KEYS]
        if dropped:
            notes.append(f"{label}: {', '.join(dropped)} has no key in Megatron's YAML (`dynamiccl launch` applies "
                         "it through its hook)")
    return groups, notes


def megatron_yaml(table, source: str = "") -> tuple[str, list[str]]:
    """The YAML text for :data:`CONFIG_PATH_FLAG` and the notes (see :func:`megatron_config`).

    A table with nothing Megatron can carry gives ``{}`` (an empty mapping: Megatron's ``pg_name in
    nccl_comm_cfgs`` needs a mapping, not the None of an empty document).
    """
    groups, notes = megatron_config(table)
    lines = [f"# Megatron-LM {CONFIG_PATH_FLAG} file, written by dynamiccl"
             + (f" from {source}" if source else "")]
    if not groups:
        lines.append("{}")
    for name, values in groups.items():
        lines.append(f"{name}:")
        lines += [f"  {key}: {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n", notes


def write_megatron_yaml(table, path: str | os.PathLike, source: str = "") -> list[str]:
    """Write :func:`megatron_yaml` to ``path`` atomically; returns its notes.

    Raises:
        OSError: if the file cannot be written.
    """
    text, notes = megatron_yaml(table, source)
    write_text(path, text)
    return notes
