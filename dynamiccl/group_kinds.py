"""A process group's kind (``tp``, ``dp``, ``world``...) from its description: one reading for the
profiler's importers, the capture merge, the launcher's per-communicator hook and Megatron's YAML.

Kept free of heavy imports: :mod:`dynamiccl.commconfig_hook` calls it inside every rank of a job.
"""

from __future__ import annotations

import re

_KIND_RULES = (  # first match wins, on the lower-cased description (Megatron-LM names, short ones)
    (r"expert_data|\bedp\b|(^|_)edp(_|$)", "edp"), (r"expert|\bep\b|(^|_)ep(_|$)", "ep"),
    (r"data_parallel", "dp"),  # DATA_PARALLEL_GROUP_WITH_CP reduces gradients over DP x CP: data parallel
    (r"context|\bcp\b|(^|_)cp(_|$)", "cp"), (r"tensor|\btp\b|(^|_)tp(_|$)", "tp"),
    (r"pipeline|\bpp\b|(^|_)pp(_|$)", "pp"), (r"embedding|embd", "embd"), (r"fsdp|shard", "fsdp"),
    (r"data|\bdp\b|(^|_)dp(_|$)", "dp"), (r"model_parallel|\bmp\b|(^|_)mp(_|$)", "mp"),
    (r"default_pg|world", "world"),
)


def group_kind(desc: str, size: int, world_size: int) -> str:
    """The trace's group kind from a group description (``TENSOR_MODEL_PARALLEL_GROUP``, ``DP
    Group 0``, ``mesh_tp``, ``default_pg``); a nameless group spanning the world is ``world``."""
    text = (desc or "").lower()
    for pattern, kind in _KIND_RULES:
        if re.search(pattern, text):
            return kind
    return "world" if size == world_size else "unknown"
