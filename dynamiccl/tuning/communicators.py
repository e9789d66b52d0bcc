"""The communicators of a step, as the knobs decide them: one decision per communicator shape.

NCCL fixes a communicator's resources (``ncclConfig_t``: CTA bounds, NVLS pool, CTA policy) when it
is created, so a tuner decides them once per communicator, from what the launcher knows then: the
process group's kind (``dp``, ``tp``, ... :data:`dynamiccl.trace.schema.GROUP_KINDS`), its ranks and
its nodes -- the communicator's *shape*. Every group of one shape gets the same config (the
launcher's hook matches groups by kind and size, ``dynamiccl.profiler.importers._common.group_kind``).

A shape comes from the groups of the step that run collectives NCCL's tuner is asked about; every
call of such a group (its AlltoAll and send/recv too) is priced under the group's config. A group
that runs only point-to-point transfers keeps NCCL's config (its settings are the job's,
:mod:`dynamiccl.knobs.job_env`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from dynamiccl.knobs.comm_config import COMM_CHOICES, DEFAULT_COMM_CHOICE
from dynamiccl.trace.schema import GROUP_KINDS
from dynamiccl.tuning.observation import observe_communicators

if TYPE_CHECKING:
    from dynamiccl.tuning.cases import LoadedCase


@dataclass(frozen=True)
class Shape:
    """A communicator shape: group kind, ranks and nodes."""

    kind: str
    nranks: int
    nnodes: int

    def describe(self) -> str:
        """``dp 8x1`` (kind, ranks x nodes)."""
        return f"{self.kind} {self.nranks}x{self.nnodes}"


@dataclass(frozen=True)
class Communicators:
    """The communicator shapes of one loaded case and what each may be created with.

    ``shapes``: sorted by kind (``GROUP_KINDS`` order), ranks, nodes -- the order the env decides
    them in; ``call_shape[c]``: the shape index of call ``c``'s group (-1: a group with no tunable
    call, which keeps NCCL's config); ``masks[s, i]``: whether shape ``s`` may be created with
    ``COMM_CHOICES[i]`` (``comm_choice_mask`` of the NCCL version, NVLS, NVLink domain and symmetric
    memory, as the cost table costed them; index 0 always); ``obs``: one communicator observation per
    shape (:func:`~dynamiccl.tuning.observation.observe_communicators`).
    """

    shapes: tuple[Shape, ...]
    call_shape: tuple[int, ...]
    masks: np.ndarray
    obs: np.ndarray
    call_row_of: Callable[[Sequence[int]], list[int]]  # the case's CostTable.rows_under

    @classmethod
    def of(cls, loaded: "LoadedCase") -> "Communicators":
        """The shapes of ``loaded``'s step (module docstring) and their masks from its cost table."""
        program, costs = loaded.program, loaded.costs
        shape_of_group: dict[str, Shape] = {}
        for call in program.tunable_calls:
            key = program.call_key[call]
            kind = program.call_kind[call] if program.call_kind[call] in GROUP_KINDS else "unknown"
            shape_of_group.setdefault(program.call_group[call], Shape(kind, int(key.nranks), int(key.nnodes)))
        order = {kind: i for i, kind in enumerate(GROUP_KINDS)}
        shapes = tuple(sorted(set(shape_of_group.values()), key=lambda s: (order[s.kind], s.nranks, s.nnodes)))
        index = {shape: i for i, shape in enumerate(shapes)}
        call_shape = tuple(index[shape_of_group[g]] if g in shape_of_group else -1 for g in program.call_group)
        masks = np.zeros((len(shapes), len(COMM_CHOICES)), dtype=bool)
        masks[:, DEFAULT_COMM_CHOICE] = True
        configs = costs.config_row.shape[1]
        for call in program.tunable_calls:
            costed = costs.config_row[costs.call_row[call]] >= 0  # the configs its key was costed under
            masks[call_shape[call], :configs] |= costed
        obs = observe_communicators([s.kind for s in shapes], [s.nranks for s in shapes], [s.nnodes for s in shapes])
        return cls(shapes, call_shape, masks, obs, costs.rows_under)

    def call_configs(self, configs: Sequence[int]) -> list[int]:
        """Per call of the step, the ``COMM_CHOICES`` index of its communicator given ``configs`` (one
        per shape)."""
        return [configs[s] if s >= 0 else DEFAULT_COMM_CHOICE for s in self.call_shape]

    def call_rows(self, configs: Sequence[int]) -> list[int]:
        """Per call of the step, its cost-table row when the shapes have ``configs`` (one
        ``COMM_CHOICES`` index per shape).

        Raises:
            ValueError: not one config per shape.
        """
        if len(configs) != len(self.shapes):
            raise ValueError(f"expected one communicator config per shape ({len(self.shapes)}), got {len(configs)}")
        return self.call_row_of(self.call_configs(configs))

    def describe(self, configs: Sequence[int]) -> dict[str, str]:
        """``{"dp 8x1": "max_ctas=8", ...}``: each shape's config in words."""
        return {shape.describe(): COMM_CHOICES[int(c)].describe() for shape, c in zip(self.shapes, configs)}


__all__ = ["Communicators", "Shape"]
