"""NCCL's own choice over a byte range, written out as rules that name the algorithm and protocol.

A decision table can say "keep NCCL's algorithm/protocol"; NVIDIA's example plugin cannot (every
line of its CSV forces a cell, and a call no line takes runs on 1 channel, ``nvidia_csv``). For a
known communicator shape -- collective, nranks, nnodes, numPipeOps, on one cluster -- NCCL's model
(``dynamiccl.costmodel.nccl_model``, NCCL's ``tuning.cc``) says which cell NCCL picks at each size,
so the keep can be written as bands of explicit cells. The channels of those rules stay -1 (written
0 in the CSV: NCCL's own count for the cell it runs).

Band edges: the model is queried on a grid of ``GRID_POINTS_PER_OCTAVE`` sizes per octave (and at
every power of two, where NCCL's per-size Tree correction changes), and each change of choice
between two neighbouring grid sizes is located exactly by bisection over the integers between them.
A band narrower than the grid step that starts and ends inside one grid gap (A -> B -> A) is not
seen; with 16 points per octave such a gap spans less than 4.5 % of its size. NCCL's cost table
does not depend on regBuff (``updateCollCostTable`` in NVIDIA/nccl ``src/enqueue.cc`` has no such
argument), so the rules keep the caller's regBuff key.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

import numpy as np

from dynamiccl.costmodel.batch import CollBatch, make_batch
from dynamiccl.nccl import KEEP, Algorithm, Func, Protocol
from dynamiccl.table.model import MAX_BYTES, Rule

GRID_POINTS_PER_OCTAVE = 16


class ChoosesLikeNccl(TypingProtocol):
    """What this module needs of NCCL's model (``NcclModel``)."""

    def choose(self, batch: CollBatch) -> dict[str, np.ndarray]: ...


def _grid(min_bytes: int, max_bytes: int) -> np.ndarray:
    """Sorted distinct integer sizes in [min_bytes, max_bytes]: both ends, every power of two and
    ``GRID_POINTS_PER_OCTAVE`` log-spaced sizes per octave between them."""
    exponents = np.arange(0, 64 * GRID_POINTS_PER_OCTAVE + 1) / GRID_POINTS_PER_OCTAVE
    sizes = {int(min_bytes), int(max_bytes), 0}
    sizes.update(int(value) for value in np.floor(np.exp2(exponents)))
    return np.array(sorted(size for size in sizes if min_bytes <= size <= max_bytes), dtype=object)


def _cells(model: ChoosesLikeNccl, coll: Func, sizes, nranks: int, nnodes: int, num_pipe_ops: int,
           algorithm: Algorithm | None, protocol: Protocol | None) -> list[tuple[int, int]]:
    """NCCL's (algorithm, protocol) for each size; (-1, -1) where no cell is left."""
    got = model.choose(make_batch(int(coll), np.array([float(size) for size in sizes]), nranks, nnodes,
                                  algo=KEEP if algorithm is None else int(algorithm),
                                  proto=KEEP if protocol is None else int(protocol), num_pipe_ops=num_pipe_ops))
    return [(int(a), int(p)) for a, p in zip(got["algo"], got["proto"])]


def nccl_choice_rules(model: ChoosesLikeNccl, coll: Func, nranks: int, nnodes: int, num_pipe_ops: int,
                      min_bytes: int = 0, max_bytes: int = MAX_BYTES, *, reg_buff: int = KEEP,
                      algorithm: Algorithm | None = None, protocol: Protocol | None = None,
                      channels: int = KEEP) -> list[Rule]:
    """NCCL's choice for calls of one shape with nBytes in [min_bytes, max_bytes] (bytes), as rules
    with that shape's keys and an explicit algorithm and protocol, in size order, tiling the range.

    ``algorithm`` / ``protocol`` restrict NCCL's choice to that algorithm / protocol (a rule that
    keeps only the other one); sizes where no allowed cell is enabled get no rule (the table's
    rule would be passed over there too). ``channels``: the rules' channels (-1 = NCCL's count).

    Raises:
        InputError: from ``Rule`` for keys out of range (nnodes > nranks, say).
    """
    grid = _grid(min_bytes, max_bytes)
    cells = _cells(model, coll, grid, nranks, nnodes, num_pipe_ops, algorithm, protocol)
    starts = [(int(grid[0]), cells[0])]  # (first size, cell) of each band
    for index in range(1, len(grid)):
        if cells[index] == cells[index - 1]:
            continue
        low, current = int(grid[index - 1]), cells[index - 1]
        while current != cells[index]:  # the first size after ``low`` whose cell differs, until cells[index]
            high, high_cell = int(grid[index]), cells[index]
            while high - low > 1:
                middle = (low + high) // 2
                cell = _cells(model, coll, [middle], nranks, nnodes, num_pipe_ops, algorithm, protocol)[0]
                if cell == current:
                    low = middle
                else:
                    high, high_cell = middle, cell
            starts.append((high, high_cell))
            low, current = high, high_cell
    rules = []
    for band, (start, (algo, proto)) in enumerate(starts):
        end = starts[band + 1][0] - 1 if band + 1 < len(starts) else max_bytes
        if algo < 0:
            continue
        rules.append(Rule(coll, start, end, nranks=nranks, nnodes=nnodes, num_pipe_ops=num_pipe_ops,
                          reg_buff=reg_buff, algorithm=Algorithm(algo), protocol=Protocol(proto), channels=channels))
    return rules


__all__ = ["GRID_POINTS_PER_OCTAVE", "ChoosesLikeNccl", "nccl_choice_rules"]
