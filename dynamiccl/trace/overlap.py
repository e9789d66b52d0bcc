"""Which compute each communication op of a rank can overlap, from the trace's dependencies.

The compute stream is a chain c0 → c1 → ... (FIFO). A communication op x can run beside compute
c_i exactly when neither depends on the other: c_i comes after x's last compute ancestor
(``after``) and before x's first compute descendant (``before``). If no compute lies between them
x is on the critical path: the compute stream waits for it right away.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def overlap_windows(rank_ops: pd.DataFrame) -> pd.DataFrame:
    """Overlap window of every communication op of one rank and step.

    Args:
        rank_ops: one rank's ops of one step, in op_index order (as ``Trace.rank_ops`` returns).

    Returns:
        A frame indexed like the communication rows of ``rank_ops`` with columns
        ``first_compute`` and ``last_compute`` (compute-chain positions it may overlap; empty when
        first > last), ``overlap_compute_us`` (their modelled duration) and ``critical`` (bool).
    """
    kind = rank_ops["kind"].to_numpy(dtype=object)
    stream = rank_ops["stream"].to_numpy(dtype=object)
    deps = list(rank_ops["deps"])
    duration = np.nan_to_num(rank_ops["duration_us"].to_numpy(dtype=float))
    n = len(kind)
    is_compute = kind == "compute"
    chain = np.cumsum(is_compute) - 1  # compute position of each compute op
    n_compute = int(is_compute.sum())
    prefix = np.concatenate([[0.0], np.cumsum(duration[is_compute])])

    preds: list[list[int]] = [list(map(int, d)) for d in deps]
    last_on_stream: dict[str, int] = {}
    for i in range(n):
        prev = last_on_stream.get(stream[i])
        if prev is not None:
            preds[i].append(prev)
        last_on_stream[stream[i]] = i
    after = np.full(n, -1, dtype=np.int64)  # last compute position x must follow
    for i in range(n):
        if is_compute[i]:
            after[i] = chain[i]
        else:
            after[i] = max((after[d] for d in preds[i]), default=-1)
    before = np.full(n, n_compute, dtype=np.int64)  # first compute position that waits for x
    for i in range(n - 1, -1, -1):
        if is_compute[i]:
            before[i] = chain[i]
        for d in preds[i]:
            if not is_compute[d] and before[i] < before[d]:
                before[d] = before[i]
    comm = np.flatnonzero(~is_compute)
    first = after[comm] + 1
    last = before[comm] - 1
    overlap = np.where(last >= first, prefix[np.maximum(last + 1, 0)] - prefix[first], 0.0)
    return pd.DataFrame({"first_compute": first, "last_compute": last, "overlap_compute_us": overlap,
                         "critical": last < first}, index=rank_ops.index[comm])
