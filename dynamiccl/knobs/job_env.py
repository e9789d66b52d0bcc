"""Per-job NCCL settings the tuner ABI cannot reach: exported by the launcher before the job starts.

NCCL reads these at communicator init, and its tuner is never asked about Send/Recv (getCollInfo is
called from ``ncclGetAlgoInfo``, NVIDIA/nccl ``src/enqueue.cc``), so pipeline-parallel transfers are
tuned only here (NVIDIA/nccl ``docs/userguide/source/env.rst``). MLPerf Training v4.0 submissions set
``NCCL_P2P_NET_CHUNKSIZE=2097152`` ("Increase p2p chunksize to 2MB"); AWS removed it and
``NCCL_BUFFSIZE`` from their scripts as unnecessary (awslabs/awsome-distributed-ai PR #1077). A value
:mod:`dynamiccl.knobs.safety` knows to corrupt data on the detected NCCL is never exported.

The world simulator has no public measurement of send/recv time against these values, so they are
not searched or learned: a table carries what the user or a measurement chose.
"""

from __future__ import annotations

from dynamiccl.knobs import Knob, register

P2P_MASKED_WHY = "no public measurement of send/recv time against it; a table may carry a value the user chose"
# Setting -> (lowest, highest, power of two required). Bounds: NCCL's parameters are int64; a chunk
# or buffer of a few bytes or above 1 GiB is never meant.
JOB_ENV_SETTINGS: dict[str, tuple[int, int, bool]] = {
    "NCCL_P2P_NET_CHUNKSIZE": (4096, 1 << 30, True),
    "NCCL_P2P_NVL_CHUNKSIZE": (4096, 1 << 30, True),
    "NCCL_P2P_PCI_CHUNKSIZE": (4096, 1 << 30, True),
    "NCCL_NCHANNELS_PER_NET_PEER": (1, 64, False),
    "NCCL_P2P_LL_THRESHOLD": (0, 1 << 30, False),
    "NCCL_BUFFSIZE": (65536, 1 << 30, True),
}

register(*(Knob(name.lower(), "job", f"environment: {name}", "2.5.6", masked_why=P2P_MASKED_WHY)
           for name in JOB_ENV_SETTINGS))


def check_job_env_value(name: str, value) -> int:
    """``value`` as the setting ``name`` (an integer in its range; chunk and buffer sizes powers of two).

    Raises:
        ValueError: an unknown setting or a bad value (the message names the setting and what is expected).
    """
    if name not in JOB_ENV_SETTINGS:
        raise ValueError(f"{name} is not a setting a table may carry; expected one of {', '.join(JOB_ENV_SETTINGS)}")
    low, high, power_of_two = JOB_ENV_SETTINGS[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if not low <= value <= high or (power_of_two and value & (value - 1)):
        kind = "a power of two" if power_of_two else "an integer"
        raise ValueError(f"{name}: expected {kind} from {low} to {high}, got {value}")
    return value
