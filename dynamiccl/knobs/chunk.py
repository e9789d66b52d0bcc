"""Per-call chunk size: tuner ABI v6 ``getChunkSize``.

NCCL (2.30.3+) calls the tuner's ``getChunkSize(ctx, collType, nBytes, algo, proto, nChannels,
*chunkSize)`` after algorithm, protocol and channels are chosen; the value is in/out and NCCL clamps
it to the largest chunk its buffers allow (NVIDIA/nccl ``src/include/plugin/tuner/tuner_v6.h``,
``src/enqueue.cc``). A decision table's rule carries ``chunk_bytes`` (-1: keep NCCL's).

The world simulator has no public measurement of a collective's time against its chunk size, so
chunk choices are masked there; the measured cost model prices them where ``dynamiccl measure``
timed them on the user's NCCL.
"""

from __future__ import annotations

from dynamiccl.knobs import Knob, register

GET_CHUNK_SIZE_MIN_NCCL = "2.30.3"  # tuner ABI v6 (NVIDIA/nccl v2.30.3-1 release)
KEEP_CHUNK = -1
# The chunk sizes a tuner may ask for: powers of two from 64 KiB (NVIDIA's v6 example tuner raises
# NVLS_TREE/Simple chunks to at least 32 KiB) to 1 MiB; NCCL clamps anything above its buffers.
CHUNK_CHOICES_BYTES = (65536, 131072, 262144, 524288, 1048576)
MASKED_WHY = ("no public measurement of collective time against chunk size; the world keeps NCCL's chunk, "
              "the measured model prices chunk sizes `dynamiccl measure --chunks` timed")

register(Knob("chunk_size", "call", "tuner ABI v6 getChunkSize (the plugin, per call)", GET_CHUNK_SIZE_MIN_NCCL,
              masked_why=MASKED_WHY))


def check_chunk_bytes(value: int, where: str = "chunk_bytes") -> int:
    """``value`` as a rule's chunk size: -1 (keep NCCL's) or a power of two from 4 KiB to 64 MiB.

    Raises:
        ValueError: anything else (the message names ``where``).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if value == KEEP_CHUNK:
        return value
    if value < 4096 or value > (64 << 20) or value & (value - 1):
        raise ValueError(f"{where}: expected -1 (keep NCCL's) or a power of two from 4096 to 67108864 bytes, got {value}")
    return value
