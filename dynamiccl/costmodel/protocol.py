"""The one interface every cost model implements, and the answer it gives.

A cost model says how long each call of a :class:`~dynamiccl.costmodel.batch.CollBatch` takes on a
described cluster. The simulate command, the tuning cost tables and evaluation only ever call
``evaluate(batch) -> CostResult`` and ``describe()``, and read the two facts below to know what to
ask; they never ask which model it is. Models are made by name through
:data:`dynamiccl.costmodel.registry.COST_MODELS`.

This module imports nothing heavy (no numpy), so the command line can list models cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from dynamiccl.costmodel.batch import CollBatch
    from dynamiccl.costmodel.world import WorldParams


@dataclass
class CostResult:
    """What a cost model says about each row of a batch: arrays as long as the batch.

    - ``algo``, ``proto``: the ``Algorithm``/``Protocol`` the call ran with; -1 where there is none
      to report (send/recv and AlltoAll run as point-to-point transfers), where a forced pair cannot
      run, or where the model cannot know NCCL's own choice (live measurement).
    - ``channels``: channels the call ran on (0: NCCL's own count, unknown to the model).
    - ``time_us``: the call's time in µs; inf where the row's forced pair cannot run.
    - ``latency_us``: the size-independent part of ``time_us`` (µs), which calls running at the same
      time on the same links do not share; 0 where the model does not separate it.
    - ``compute_slowdown``: factor by which compute overlapped with the call runs slower (1: none).
    - ``size_bytes``: the batch's, so that bandwidths can be derived (``algbw_gbytes_per_s``).
    - ``nranks``: ranks the call ran on (the batch's; live measurement: its own processes).
    - ``notes``: what a reader of these numbers must know (e.g. which torch call ran); may be empty.
    """

    algo: np.ndarray
    proto: np.ndarray
    channels: np.ndarray
    time_us: np.ndarray
    latency_us: np.ndarray
    compute_slowdown: np.ndarray
    size_bytes: np.ndarray
    nranks: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def algbw_gbytes_per_s(self) -> np.ndarray:
        """Algorithm bandwidth, ``size_bytes / time`` in GB/s (1 GB = 1e9 B); 0 where the call
        cannot run (``time_us`` inf)."""
        import numpy as np  # here, not at module level: the registry and CLI import this module

        return np.where(np.isfinite(self.time_us), self.size_bytes / (1000.0 * self.time_us), 0.0)


class CostModel(Protocol):
    """A cost model (see the module docstring).

    Attributes:
        models_conditions: whether the batch's conditions (``overlap``, ``compute_hbm_share``,
            ``congestion``, ``noise``) change its answer. A consumer that costs a call under
            several conditions asks a model without them once per call.
        applies_nccl_knobs: whether a forced algorithm, protocol or channel count takes effect
            (False: live measurement on gloo, where NCCL is not involved, and measurements of
            NCCL's default only; only NCCL's default is then meaningful).
        costs_p2p: whether the model has its own cost for send/recv and AlltoAll (False: NCCL's
            model, whose tuner is never asked about them; a consumer that needs those costs takes
            them from another model).
        prices_chunk: whether a row's ``chunk_bytes`` (the call's chunk size, tuner ABI v6) changes
            its answer (False: the world and NCCL's model, which have no measurement of it, and live
            measurement; a model with it False is never given ``chunk_bytes`` > 0).
        prices_communicator_config: whether a row's communicator settings (``max_ctas``, ``min_ctas``,
            ``nvls_ctas``, ``zero_cta``: the ``ncclConfig_t`` it was created with) change its answer
            (True: the world and NCCL's model, which bound the channel pools as NCCL does; False: live
            and measured timings, taken on communicators created with NCCL's defaults). A consumer
            offers communicator settings only where the model prices them.
    """

    models_conditions: bool
    applies_nccl_knobs: bool
    costs_p2p: bool
    prices_chunk: bool
    prices_communicator_config: bool

    def describe(self) -> str:
        """One line saying what answers and for which cluster."""

    def evaluate(self, batch: CollBatch) -> CostResult:
        """Cost every row of ``batch``. Raises InputError for calls the model cannot cost."""


@dataclass(frozen=True)
class CostModelOptions:
    """Settings a registered model's factory may read; each model ignores the others.

    - ``world_params``: the world simulator's fitted parameters (None: the shipped
      ``world_params.json``); NCCL's model costs send/recv with the world too.
    - ``live_nprocs``: ranks (processes) for live measurement.
    - ``live_dtype``: element type of the buffers live measurement allocates (the simulated models
      cost bytes, whatever their type).
    - ``measurements``: the measurements CSVs the ``measured`` model interpolates (paths as given;
      absolute where a config file named them relative to itself).

    Hashable while ``world_params`` is None (the tuning caches key on it).
    """

    world_params: WorldParams | None = None
    live_nprocs: int = 4
    live_dtype: str = "float32"
    measurements: tuple[str, ...] = ()
