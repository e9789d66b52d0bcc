"""The measured cost model: a user's own measurements, interpolated directly (no simulator between).

Its input is one or more measurements CSVs in the calibration format
(:mod:`dynamiccl.costmodel.measurements`: ``dynamiccl measure``, ``dynamiccl import nccl-tests`` or a
hand-made nccl-tests table). Each table is a series of (size, time) points of one configuration,
keyed by

    (collective, nranks = gpus_per_node x nodes, nnodes, algo, proto, channels, chunk_bytes)

where ``algo``/``proto`` ``default`` and ``channels`` / ``chunk_bytes`` 0 (or empty) mean NCCL's own
choice (a batch
row's ``num_pipe_ops``, calls fused in one group, is not part of the key: each call is costed as
measured, one at a time). A batch row is answered by the points of its own key only:

- NCCL's default (``algo``/``proto`` -1, ``channels`` 0 in the batch) by the default tables of its
  shape. A (collective, shape) without them cannot be costed at all: :class:`InputError`, naming
  the shape and how to measure it (``dynamiccl measure --trace ...``).
- A forced configuration by the tables that forced exactly that configuration: a chunk size (a
  batch row's ``chunk_bytes`` > 0, set through the tuner's getChunkSize) like a channel count, by the
  tables ``dynamiccl measure --chunks`` timed with it. One never measured costs ``inf``: "cannot run" to every consumer (``tuning.costs.CostTable`` masks it, so neither the
  policy nor the search can choose it).
- Send/Recv/SendRecv rows by the ``sendrecv`` tables of their shape, AlltoAll by ``alltoall``. The
  model costs point-to-point (``costs_p2p``) only when the CSVs hold such tables; otherwise its
  point-to-point rows are ``inf`` and the consumers take them from the world, as for NCCL's model.

Interpolation in size, per key (sizes are NCCL's ``nBytes``, times µs):

- between the smallest and the largest measured size: piecewise linear in (log size, log time)
  between neighbouring points, the shape nccl-tests tables have on a log-log plot;
- below the smallest size: ``latency + size / bandwidth`` through the smallest point, with the
  latency the intercept of the line through the two smallest points (clipped to [0, smallest time]);
- above the largest size: ``time_at_largest + (size - largest) / bandwidth``, with the bandwidth of
  the two largest points (the largest point's average rate where the time fell with size: noise);
- a key with one point: that time below it and ``time x size / measured size`` above it, which
  bound any ``latency + size / bandwidth`` curve through the point from above.

``latency_us`` is the size-independent part: the latency of the small-size end above.

Two points of one key at one size must agree: the same (key, size) measured in two tables with
different times is an error naming both files and tables (merge CSVs of different shapes or sizes,
not repeated runs). The model does not model conditions: it costs calls alone (``models_conditions``
False), from the tables timed alone; tables timed with compute beside (``dynamiccl measure
--with-gemm``, :func:`~dynamiccl.costmodel.measurements.measured_beside_compute`) are left out and
counted in :meth:`MeasuredModel.describe`. It applies NCCL's knobs (``applies_nccl_knobs``) exactly
when the CSVs hold a forced configuration; with NCCL-default tables only, only NCCL's default is valid.
A row's communicator settings (``max_ctas``, ``min_ctas``, ``nvls_ctas``, ``zero_cta``) are not part
of the key: ``dynamiccl measure`` times communicators created with NCCL's settings, so such a row is
priced as that communicator's (nothing measured says what the settings change).
It prices chunk sizes (``prices_chunk``) exactly when the CSVs hold tables timed with one: the only
cost model that does, since no public measurement relates a collective's time to its chunk size
(:mod:`dynamiccl.knobs.chunk`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from dynamiccl.costmodel.batch import CollBatch, is_p2p
from dynamiccl.costmodel.measurements import MeasuredTable, load_measurements, measured_beside_compute
from dynamiccl.costmodel.protocol import CostModelOptions, CostResult
from dynamiccl.errors import InputError
from dynamiccl.nccl import Algorithm, Func, Protocol, nccl_tests_op

if TYPE_CHECKING:
    from dynamiccl.envspec import EnvSpec

# Point-to-point functions answered by one measured collective: nccl-tests' sendrecv (which
# measurements.py reads as Func.SEND) times one transfer of ``size_bytes`` per rank and direction.
_MEASURED_FUNC = {int(Func.SEND): int(Func.SEND), int(Func.RECV): int(Func.SEND),
                  int(Func.SENDRECV): int(Func.SEND)}
MEASURE_HINT = "measure it on the cluster with `dynamiccl measure --trace TRACE -o M.csv -- torchrun ...`"


@dataclass(frozen=True)
class ConfigKey:
    """What one series of measurements is of: a collective (``Func``; Send/Recv/SendRecv as SEND)
    on ``nranks`` ranks over ``nnodes`` nodes with a configuration (algo/proto -1, channels and
    chunk_bytes 0: NCCL's own)."""

    func: int
    nranks: int
    nnodes: int
    algo: int
    proto: int
    channels: int
    chunk_bytes: int = 0

    @property
    def is_default(self) -> bool:
        return self.algo < 0 and self.proto < 0 and self.channels == 0 and self.chunk_bytes == 0

    @property
    def default(self) -> "ConfigKey":
        """NCCL's default configuration of this key's collective and shape."""
        return ConfigKey(self.func, self.nranks, self.nnodes, -1, -1, 0, 0)

    def shape(self) -> str:
        """``allreduce over 16 ranks on 2 node(s)``."""
        return f"{nccl_tests_op(Func(self.func))} over {self.nranks} ranks on {self.nnodes} node(s)"

    def config(self) -> str:
        """``NCCL's default``, ``ring/simple/4ch`` or ``nccl/nccl/nccl-ch/chunk 256 KiB`` (``nccl``
        for a part NCCL chooses; no chunk part for NCCL's chunk)."""
        if self.is_default:
            return "NCCL's default"
        algo = Algorithm(self.algo).name_lower if self.algo >= 0 else "nccl"
        proto = Protocol(self.proto).name_lower if self.proto >= 0 else "nccl"
        chunk = f"/chunk {self.chunk_bytes // 1024} KiB" if self.chunk_bytes else ""
        return f"{algo}/{proto}/{f'{self.channels}ch' if self.channels else 'nccl-ch'}{chunk}"


@dataclass(frozen=True)
class SizeCurve:
    """The measured (size, time) points of one key, sorted by size, and their interpolation (see
    the module docstring). Sizes in bytes, times in µs."""

    size_bytes: np.ndarray
    time_us: np.ndarray

    @property
    def latency_us(self) -> float:
        """The size-independent part: intercept of the line through the two smallest points,
        clipped to [0, smallest time]; 0 with one point (``time_us`` then bounds from above)."""
        if len(self.size_bytes) < 2:
            return 0.0
        (s1, s2), (t1, t2) = self.size_bytes[:2], self.time_us[:2]
        slope = (t2 - t1) / (s2 - s1)
        return float(np.clip(t1 - slope * s1, 0.0, t1))

    def time_at(self, size_bytes: np.ndarray) -> np.ndarray:
        """Time (µs) of each size (bytes, >= 0): interpolated inside the measured range,
        extrapolated as latency + size / bandwidth outside it."""
        sizes, times = self.size_bytes, self.time_us
        size = np.asarray(size_bytes, dtype=np.float64)
        s1, t1, sn, tn = sizes[0], times[0], sizes[-1], times[-1]
        if len(sizes) == 1:
            return np.where(size <= s1, t1, t1 * size / s1)
        latency = self.latency_us
        below = latency + (t1 - latency) * size / s1  # through (s1, t1)
        slope = (tn - times[-2]) / (sn - sizes[-2])   # µs per byte of the largest two
        if not slope > 0:
            slope = tn / sn
        above = tn + (size - sn) * slope
        inside = np.exp(np.interp(np.log(np.clip(size, s1, sn)), np.log(sizes), np.log(times)))
        return np.where(size < s1, below, np.where(size > sn, above, inside))


class MeasuredModel:
    """A :class:`~dynamiccl.costmodel.protocol.CostModel` that interpolates measured tables (see the
    module docstring).

    Args:
        tables: ``(source file, table)`` pairs, e.g. from :func:`load_measured_tables`.
        sources: the files, for :meth:`describe` and errors.

    Raises:
        InputError: two tables that disagree at one (key, size), naming both files and tables.
    """

    models_conditions = False
    prices_chunk = False  # set per instance: True when the measurements hold chunk-size tables
    prices_communicator_config = False  # timed on communicators created with NCCL's defaults

    def __init__(self, tables: Sequence[tuple[str, MeasuredTable]], sources: Sequence[str]):
        self.sources = tuple(sources)
        points: dict[ConfigKey, dict[float, tuple[float, str, str]]] = {}
        self.systems: list[str] = []
        self.beside_compute_tables = 0  # timed with a GEMM beside: not what this model costs (calls alone)
        for source, table in tables:
            if measured_beside_compute(table):
                self.beside_compute_tables += 1
                continue
            key = _table_key(table)
            system = table.system.split(",")[0].strip()  # "8x H100 SXM5, NVSwitch ...": the first part names it
            if system not in self.systems:
                self.systems.append(system)
            series = points.setdefault(key, {})
            for size, time_us in zip(table.size_bytes.tolist(), table.time_us.tolist()):
                seen = series.get(size)
                if seen is not None and seen[0] != time_us:
                    raise InputError(source, f"table {table.table}",
                                     f"{key.shape()}, {key.config()}, {int(size)} B measured {time_us:g} us here and "
                                     f"{seen[0]:g} us in {seen[1]} (table {seen[2]}); merge measurements of "
                                     "different shapes or sizes, not repeated runs of the same ones")
                series[size] = (time_us, source, table.table)
        if not points:
            raise InputError(", ".join(self.sources) or "measurements", None,
                             "no measurements of a collective timed alone (tables timed with compute beside are "
                             "not costed)")
        self.curves: dict[ConfigKey, SizeCurve] = {}
        for key, series in points.items():
            sizes = np.array(sorted(series), dtype=np.float64)
            self.curves[key] = SizeCurve(sizes, np.array([series[s][0] for s in sizes.tolist()]))
        # NCCL's knobs take effect where the user measured them; with defaults only, only the default.
        self.applies_nccl_knobs = any(not key.is_default for key in self.curves)
        self.costs_p2p = any(key.func in (int(Func.SEND), int(Func.ALLTOALL)) for key in self.curves)
        self.prices_chunk = any(key.chunk_bytes > 0 for key in self.curves)

    @classmethod
    def from_options(cls, env: EnvSpec, options: CostModelOptions) -> "MeasuredModel":
        """The registry's factory: the tables of ``options.measurements`` (``env``'s hardware is not
        used; its NCCL model still decides which actions a tuner may choose).

        Raises:
            InputError: no files given, or a file :func:`load_measured_tables` refuses.
        """
        if not options.measurements:
            raise InputError("--measurements", None, "the measured model needs measurements CSV(s) "
                                                     f"(give --measurements FILE, or `measurements = [...]` in an "
                                                     f"experiment config); {MEASURE_HINT}")
        return cls(load_measured_tables(options.measurements), options.measurements)

    def describe(self) -> str:
        files = ", ".join(os.path.basename(s) for s in self.sources)
        p2p = "" if self.costs_p2p else "; send/recv and AlltoAll: not measured"
        chunks = sorted({key.chunk_bytes for key in self.curves if key.chunk_bytes})
        p2p += f"; chunk sizes measured: {', '.join(f'{c // 1024} KiB' for c in chunks)}" if chunks else ""
        beside = (f"; {self.beside_compute_tables} table(s) timed with compute beside left out"
                  if self.beside_compute_tables else "")
        return (f"measured ({len(self.curves)} series from {files}: {'; '.join(self.systems)}), "
                f"interpolated in log size / log time{p2p}{beside}")

    def shapes(self) -> list[str]:
        """The shapes with NCCL-default measurements (``allreduce over 16 ranks on 2 node(s)``)."""
        return sorted({key.shape() for key in self.curves if key.is_default})

    def evaluate(self, batch: CollBatch) -> CostResult:
        """Cost every row from the measurements of its key (module docstring). ``algo``/``proto``
        come back as the row forced them (-1 for NCCL's default, whose choice a measurement does
        not see, and where a forced configuration was never measured); ``channels`` likewise (0:
        NCCL's). A row's ``chunk_bytes`` is part of its key (0: NCCL's chunk). Conditions are
        ignored (``compute_slowdown`` 1).

        Raises:
            InputError: a (collective, shape) without NCCL-default measurements (a point-to-point
                one only where the model costs point-to-point), naming the shape and the files.
        """
        n = len(batch)
        time_us, latency_us = np.full(n, np.inf), np.zeros(n)
        algo, proto = batch.algo.copy(), batch.proto.copy()
        p2p = is_p2p(batch.func)
        func = np.array([_MEASURED_FUNC.get(f, f) for f in batch.func.tolist()], dtype=np.int64)
        # Point-to-point rows are costed as NCCL's default: NCCL has no algorithm, protocol, channel
        # count or chunk to choose for them (the tuner is never asked).
        as_default = p2p
        columns = np.stack([func, batch.nranks, batch.nnodes,
                            np.where(as_default, -1, batch.algo), np.where(as_default, -1, batch.proto),
                            np.where(as_default, 0, batch.channels), np.where(as_default, 0, batch.chunk_bytes)],
                           axis=1)
        unique, inverse = np.unique(columns, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for i, values in enumerate(unique.tolist()):
            key = ConfigKey(*values)
            rows = np.flatnonzero(inverse == i)
            if key.func in (int(Func.SEND), int(Func.ALLTOALL)) and not self.costs_p2p:
                continue  # inf: the consumers take point-to-point costs from the world
            curve = self.curves.get(key)
            if curve is None:
                if key.default not in self.curves:
                    raise InputError(", ".join(self.sources), key.shape(),
                                     f"no NCCL-default measurements of this shape (measured: "
                                     f"{'; '.join(self.shapes()) or 'none'}); {MEASURE_HINT}")
                algo[rows], proto[rows] = -1, -1  # a configuration never measured cannot be costed
                continue
            time_us[rows] = curve.time_at(batch.size_bytes[rows])
            latency_us[rows] = np.minimum(curve.latency_us, time_us[rows])
        algo[p2p], proto[p2p] = -1, -1
        notes = ["measured: piecewise linear in log size / log time between measured sizes; outside them "
                 "latency + size / bandwidth from the two end points; configurations never measured: inf"]
        if not self.costs_p2p and p2p.any():
            notes.append("send/recv and AlltoAll were not measured: inf here (cost tables take the world's)")
        return CostResult(algo=algo, proto=proto, channels=np.where(as_default, 0, batch.channels),
                          time_us=time_us, latency_us=latency_us, compute_slowdown=np.ones(n),
                          size_bytes=batch.size_bytes, nranks=batch.nranks, notes=tuple(notes))


def _table_key(table: MeasuredTable) -> ConfigKey:
    return ConfigKey(_MEASURED_FUNC.get(table.func, table.func), table.nranks, table.nodes, table.algo, table.proto,
                     table.channels, table.chunk_bytes)


def load_measured_tables(paths: Sequence[str | os.PathLike]) -> list[tuple[str, MeasuredTable]]:
    """Every table of the measurements CSVs ``paths`` with the file it came from, in file order.
    Unlike calibration (:func:`~dynamiccl.costmodel.measurements.load_measurement_files`), two files
    may reuse a table id: the model merges them by configuration (:class:`MeasuredModel`).

    Raises:
        InputError: a missing file, or a bad row (:func:`~dynamiccl.costmodel.measurements.load_measurements`).
    """
    tables = []
    for path in paths:
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise InputError(source, "measurements", "no such measurements CSV (write one with `dynamiccl measure`)")
        tables += [(source, table) for table in load_measurements(source)]
    return tables
