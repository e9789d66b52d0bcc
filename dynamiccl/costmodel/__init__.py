"""Cost models: how long a collective takes on a described cluster.

Four models implement one interface (:class:`CostModel` in ``protocol``: ``evaluate(batch) ->
CostResult`` and ``describe()``) and are registered once by name in :data:`COST_MODELS`
(``registry``):

- ``nccl``, :class:`NcclModel`: what NCCL itself predicts and chooses (the "NCCL default"
  baseline), pinned to an NCCL version (``nccl_model``, ``nccl_constants``, ``topology``);
- ``world``, :class:`WorldModel`: what actually happens: NCCL's structure plus the effects its
  model leaves out, calibrated against measured nccl-tests tables (``world``, ``dynamics``,
  ``calibration``, ``measurements``; ``nccl_tests_log`` reads raw nccl-tests output into them);
- ``live``, :class:`~dynamiccl.costmodel.live.LiveCostModel`: real collectives through
  torch.distributed on this machine (``live``);
- ``measured``, :class:`~dynamiccl.costmodel.measured.MeasuredModel`: a user's own measurements
  (``dynamiccl measure``'s CSV) interpolated in size (``measured``).

The models take a :class:`CollBatch` (``batch``) and evaluate it with numpy. The interface and the
registry import no numpy, so the command line lists models without paying for it; the models and
the batch are imported on first use of their names here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from dynamiccl.costmodel.protocol import CostModel, CostModelOptions, CostResult
from dynamiccl.costmodel.registry import COST_MODELS, DEFAULT_COST_MODEL, CostModelEntry, cost_model_entry

if TYPE_CHECKING:  # re-exported (``as`` the same name): the lazy names of ``__all__`` for type checkers
    from dynamiccl.costmodel.batch import CollBatch as CollBatch, make_batch as make_batch
    from dynamiccl.costmodel.nccl_model import NcclModel as NcclModel
    from dynamiccl.costmodel.world import WorldModel as WorldModel, WorldParams as WorldParams

_LAZY = {"CollBatch": "dynamiccl.costmodel.batch", "make_batch": "dynamiccl.costmodel.batch",
         "NcclModel": "dynamiccl.costmodel.nccl_model", "WorldModel": "dynamiccl.costmodel.world",
         "WorldParams": "dynamiccl.costmodel.world"}

__all__ = ["COST_MODELS", "DEFAULT_COST_MODEL", "CostModel", "CostModelEntry", "CostModelOptions", "CostResult",
           "cost_model_entry", *_LAZY]


def __getattr__(name: str):
    """The numpy-backed names, imported when first asked for."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
