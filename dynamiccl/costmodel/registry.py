"""Every cost model, registered once by name: ``COST_MODELS[name].create(env, options)``.

A new model is a module with a class that implements :class:`~dynamiccl.costmodel.protocol.CostModel`
and a ``from_options(env, options)`` classmethod, plus one line here. Command-line choice lists,
``simulate``, the tuning cost tables and evaluation all read this table.

Entries name their class by module path and import it when first made, so that listing the models
(the command line builds its parser on every start) does not import numpy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.errors import InputError

if TYPE_CHECKING:
    from dynamiccl.costmodel.protocol import CostModel
    from dynamiccl.envspec import EnvSpec

DEFAULT_COST_MODEL = "world"
# Where a model without send/recv and AlltoAll costs (``costs_p2p`` False: NCCL's, whose tuner never
# sees them) takes those from: the world, quiet and alone, as the first cost tables did.
P2P_REFERENCE_MODEL = "world"


@dataclass(frozen=True)
class CostModelEntry:
    """One registered model.

    Attributes:
        factory: ``(env spec, options) -> CostModel``.
        help: one line for ``--help`` and listings.
        runs_collectives: the model times real collectives on this machine (slow; the spec's hardware
            is not used), so commands meant for quick simulation leave it out of their choices.
        needs_measurements: the model answers from the user's measurements (``CostModelOptions.
            measurements``), not from the spec alone, so what runs every model on a spec (the
            throughput benchmark) leaves it out.
    """

    factory: Callable[[EnvSpec, CostModelOptions], CostModel]
    help: str
    runs_collectives: bool = False
    needs_measurements: bool = False

    def create(self, env: EnvSpec, options: CostModelOptions | None = None) -> CostModel:
        """Make the model for ``env``. Raises InputError for options the model refuses."""
        return self.factory(env, options or CostModelOptions())


def _imported(module: str, cls: str) -> Callable[[EnvSpec, CostModelOptions], CostModel]:
    """The factory ``module.cls.from_options``, importing ``module`` when first called."""
    def factory(env: EnvSpec, options: CostModelOptions) -> CostModel:
        return getattr(importlib.import_module(module), cls).from_options(env, options)

    return factory


COST_MODELS: dict[str, CostModelEntry] = {
    "world": CostModelEntry(_imported("dynamiccl.costmodel.world", "WorldModel"),
                            "the calibrated world simulator: what the call really costs (default)"),
    "nccl": CostModelEntry(_imported("dynamiccl.costmodel.nccl_model", "NcclModel"),
                           "NCCL's own model of the spec's NCCL version: what NCCL believes it costs"),
    "live": CostModelEntry(_imported("dynamiccl.costmodel.live", "LiveCostModel"),
                           "real collectives through torch.distributed on this machine",
                           runs_collectives=True),
    "measured": CostModelEntry(_imported("dynamiccl.costmodel.measured", "MeasuredModel"),
                               "the user's own measurements (--measurements CSV), interpolated in size",
                               needs_measurements=True),
}


def cost_model_entry(name: str, source: str | None = None, field: str | None = "model") -> CostModelEntry:
    """The registered entry called ``name``.

    Raises:
        InputError: an unknown name, naming ``source``/``field`` and listing the registered ones.
    """
    entry = COST_MODELS.get(name)
    if entry is None:
        raise InputError(source, field, f"unknown cost model {name!r}; expected one of {', '.join(COST_MODELS)}")
    return entry


def simulated_cost_models() -> list[str]:
    """Names of the models that do not run collectives on this machine (quick to evaluate)."""
    return [name for name, entry in COST_MODELS.items() if not entry.runs_collectives]


def cost_models_help(names: list[str] | None = None) -> str:
    """``name: help`` of the models ``names`` (default all), for a command's ``--model`` help."""
    return "; ".join(f"{name}: {COST_MODELS[name].help}" for name in (names or COST_MODELS))
