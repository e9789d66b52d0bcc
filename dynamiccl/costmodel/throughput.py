"""How many collective evaluations per second the simulated cost models sustain on one core.

The tuning environment and the greedy-per-call baseline and the search reference cost many (collective, config, conditions) rows per
decision, so this is the number that bounds training speed. Every registered model that does not
run collectives and needs nothing but the spec (``registry.simulated_cost_models()`` less those that
``needs_measurements``: today the world simulator and NCCL's model) is timed through its ``evaluate``, and reported as ``<name>_evals_per_s`` (``world_evals_per_s``
for the default model). A batch of ``rows`` random calls on the spec's own topologies (every
collective, sizes 8 B .. 8 GiB, forced algorithm/protocol/channels as an agent picks them, random
overlap and congestion) is evaluated ``repeat`` times; the median is reported. ``mixed`` leaves a
third of the rows to NCCL's choice (the baseline's path).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from dynamiccl.costmodel.batch import make_batch
from dynamiccl.costmodel.registry import COST_MODELS, simulated_cost_models
from dynamiccl.costmodel.topology import RING_MAX_CHANNELS
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.nccl import NUM_PROTOCOLS, Algorithm, Func


def random_batch(env: EnvSpec, rows: int, seed: int = 0, mixed: bool = False):
    """Random calls an agent could make on ``env``: valid (algo, proto) pairs for each collective
    (AllReduce Tree or Ring, the others Ring; any protocol; 1 .. ``RING_MAX_CHANNELS`` channels)."""
    rng = np.random.default_rng(seed)
    nodes = np.array(sorted({1, env.nodes, max(1, env.nodes // 2)}))
    nnodes = rng.choice(nodes, rows)
    nranks = nnodes * env.gpus_per_node
    func = rng.choice([Func.ALLREDUCE, Func.ALLGATHER, Func.REDUCESCATTER, Func.SEND], rows)
    algo = np.where(func == Func.ALLREDUCE, rng.choice([Algorithm.TREE, Algorithm.RING], rows), Algorithm.RING)
    proto = rng.integers(0, NUM_PROTOCOLS, rows)
    channels = rng.integers(1, RING_MAX_CHANNELS + 1, rows)
    if mixed:
        leave = rng.random(rows) < 1 / 3
        algo, proto, channels = np.where(leave, -1, algo), np.where(leave, -1, proto), np.where(leave, 0, channels)
    return make_batch(func, 2.0 ** rng.integers(3, 34, rows), nranks, nnodes, algo=algo, proto=proto,
                      channels=channels, overlap=rng.random(rows), compute_hbm_share=rng.random(rows) * 0.6,
                      congestion=rng.random(rows) * 0.5, noise=rng.lognormal(0, 0.02, rows))


MIN_ROWS = 1000  # the smallest batch timed; its first MIN_ROWS rows, evaluated untimed, build the per-topology tables


def measure(env: EnvSpec, rows: int = 1_000_000, repeat: int = 5, mixed: bool = False) -> dict:
    """Median evaluations per second of each simulated cost model (one process), as
    ``<name>_evals_per_s``.

    Raises:
        InputError: fewer than ``MIN_ROWS`` rows (named as ``dynamiccl simulate --throughput``).
    """
    if rows < MIN_ROWS:
        raise InputError("--throughput", None, f"expected at least {MIN_ROWS} rows, got {rows}")
    batch = random_batch(env, rows, mixed=mixed)
    result = {"env": env.name, "rows": rows, "repeat": repeat, "mixed": mixed}
    for name in simulated_cost_models():
        if COST_MODELS[name].needs_measurements:  # a user's file, not the spec, says what it answers
            continue
        run = COST_MODELS[name].create(env).evaluate
        run(batch.subset(np.arange(MIN_ROWS)))  # build the per-topology tables first
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - started)
        result[f"{name}_evals_per_s"] = rows / statistics.median(times)
    return result
