"""Cost models: how long a collective takes on a described cluster.

Three faces, kept apart on purpose (``../shared/design.md``, CostModel):

- :class:`NcclModel` — what NCCL itself predicts and chooses (the "NCCL default" baseline), pinned
  to an NCCL version (``nccl_model``, ``nccl_constants``, ``topology``);
- :class:`WorldModel` — what actually happens: NCCL's structure plus the effects its model leaves
  out, calibrated against measured nccl-tests tables (``world``, ``dynamics``, ``calibration``,
  ``measurements``);
- :class:`~dynamiccl.costmodel.live.LiveCostModel` — real collectives through torch.distributed on
  this machine (``live``).

The simulated models take a :class:`CollBatch` (``batch``) and evaluate it with numpy.
"""

from dynamiccl.costmodel.batch import CollBatch, make_batch
from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.costmodel.world import WorldModel, WorldParams

__all__ = ["CollBatch", "make_batch", "NcclModel", "WorldModel", "WorldParams"]
