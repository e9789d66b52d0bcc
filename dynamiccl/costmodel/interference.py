"""Interference between a collective and the compute beside it on the same GPU, both ways.

One small function per effect (in the style of ASTRA-sim's analytical backend), each with the public
measurement it rests on; :meth:`dynamiccl.costmodel.world.WorldModel.evaluate` (section 7) combines
the first three and the fifth per call, and the step replay (:mod:`dynamiccl.tuning.timeline`) applies
the fourth where it knows which compute a call is launched beside.

1. **SMs held by channels, with the wave tail** (:func:`sm_slowdown`). NCCL runs one CTA per
   channel and its CTAs never share an SM with compute ("NCCL CTAs won't share an SM with compute
   kernels", NVIDIA/nccl#689), so compute beside a call has ``sm_count - channels`` SMs. A kernel
   whose grid is ``waves`` full waves of the GPU runs ``ceil(waves)`` waves alone and
   ``ceil(waves x sm_count / (sm_count - channels))`` beside the call: a GEMM sized to exactly one
   wave (132 CTAs on an H100) gets a second, nearly empty wave beside a 24-CTA AllGather, "execution
   time nearly doubles", MFU ~80% -> ~47% (NVIDIA developer forum, "Compute-Communication Overlap
   Causes Severe GEMM Performance Degradation because of Tail Effect", 2025). A stream of many-wave
   kernels (``waves`` 0: not known) loses the SMs in proportion, ``sm_count / (sm_count - channels)``.
   A grid that fits in the SMs the channels leave loses nothing (NVIDIA/nccl#1433: a CUTLASS GEMM
   with grid 128 on a 142-SM GPU beside send/recv did not compete for SMs, "but still compete for
   memory bandwidth"). The channels are those of the communicator's pool, which its ``ncclConfig_t``
   bounds (``maxCTAs``, ``minCTAs``, ``nvlsCTAs``; :func:`dynamiccl.costmodel.nccl_model.comm_pool`):
   a cap of k channels leaves compute at least ``sm_count - k`` SMs, and a cap at or below the SMs a
   one-wave grid leaves free removes its wave tail.
2. **HBM shared in proportion to traffic** (:func:`hbm_bytes_per_link_byte`,
   :func:`comm_hbm_gbytes_per_s`, :func:`hbm_slowdown`).
   A collective's link bytes cost HBM bytes: "300GB/s needs to be multiplied by at least 2x for memory
   bandwidth, as we need to store to memory, then read back from it. If you add reading from or
   writing to user data, it can be 3x" (NCCL maintainer, NVIDIA/nccl#1428: on A100-SXM4-80GB an
   attention kernel 0.18 -> 0.33 ms and a GEMM 1.18 -> 2.08 ms beside an AllGather). A copy
   (AllGather, Broadcast, send/recv) costs 2 HBM bytes per link byte, a reduction 3 (it also reads the
   local input). When compute and collective together ask for more than the HBM gives, each gets
   bandwidth in proportion to its demand, so both stretch by ``demand / hbm``.
3. **The kernel is limited by the scarcer resource** (:func:`compute_slowdown`): a kernel beside a
   call runs at the slower of what its SMs and its HBM share allow (the roofline: a kernel is bound
   by one resource at a time, so the two slowdowns do not add).
4. **Launch delay** (:func:`waits_for_kernel`, :func:`launch_delay_us`). A collective launched while
   a compute kernel fills every SM cannot place its CTAs until that kernel frees SMs: "after the first
   communication kernel ends, the next communication kernel will be delayed until the gemm is
   completed because there are not enough SM resources" (NVIDIA/nccl#1431); a 256 MB AllReduce on
   A100 1.8 -> 4.2 ms and a 256 KB one ~30 us -> 4-5 ms beside another process's compute
   (NVIDIA/nccl#1094). The delay does not depend on the call's size: the collective starts when the
   kernel it waits for ends -- that kernel's own end, wherever changes in its rate move it, and never
   a later kernel's (the collective's CTAs queue behind the running kernel's blocks, and the freed SMs
   go to them first).

5. **Copy-engine collectives hold no SMs** (:func:`sms_held`). With ``NCCL_CTA_POLICY_ZERO`` on
   buffers registered as symmetric windows, NCCL 2.28+ runs AllGather and AlltoAll of a
   communicator whose ranks all share NVLink on the GPU's copy engines instead of CTAs (NVIDIA/nccl
   ``src/ce_coll.cc`` ``ncclCeImplemented``/``ncclCeAvailable``; copy engines cannot reduce, so
   reductions keep their CTAs). Compute beside such a call keeps every SM, but the copies still
   read and write HBM like any other (NVIDIA/nccl#1428), so effect 2 stays. No public measurement
   of copy-engine collective bandwidth exists, so the world keeps the time of the same call on CTAs;
   ``tests/test_knob_effects.py`` compares the resulting step delta with the -3.07% GB200 FSDP2 step
   of FastVideo PR #1630 (zero-CTA AllGather / ReduceScatter on symmetric memory).

The figures this module is checked against (``tests/test_interference.py``): the wave tail above,
#1428's slowdowns, #1094's delays, and the aggregates "overlapping computation and communication can
result in an average computational slowdown of 18.9%, with a maximum of 40.0%" (A100, H100, MI250,
MI210; GPT and LLaMA; arXiv:2507.03114) and #1433's "up to 2x in communication".
"""

from __future__ import annotations

import numpy as np

# HBM bytes per byte a collective moves over its busiest link (NVIDIA/nccl#1428, maintainer: "at
# least 2x ... store to memory, then read back", "3x" with the user data read or written).
HBM_BYTES_PER_LINK_BYTE_COPY = 2.0
HBM_BYTES_PER_LINK_BYTE_REDUCE = 3.0


def sm_slowdown(sms_held, sm_count: int, grid_waves=0.0) -> np.ndarray:
    """Factor by which a compute kernel beside a collective runs slower for the SMs it lost.

    Args:
        sms_held: SMs the collective holds (one per channel, NVIDIA/nccl#689); array or scalar.
        sm_count: the GPU's SMs.
        grid_waves: the kernel's grid in full waves of the GPU (grid CTAs / (SMs x CTAs per SM));
            0 where not known (a stream of many-wave kernels: the SMs are lost in proportion).

    Returns:
        ``ceil(waves x sm_count / free) / ceil(waves)`` with ``free = sm_count - sms_held`` (at least
        one SM), or ``sm_count / free`` where ``grid_waves`` is 0; 1 where nothing is held.

    Raises:
        ValueError: ``sm_count`` < 1 or a negative ``grid_waves``.
    """
    if sm_count < 1:
        raise ValueError(f"sm_count must be >= 1, got {sm_count}")
    held = np.asarray(sms_held, dtype=np.float64)
    waves = np.asarray(grid_waves, dtype=np.float64)
    if (waves < 0).any():
        raise ValueError(f"grid_waves must be >= 0 (0: not known), got {waves.min()}")
    free = np.maximum(sm_count - held, 1.0)
    fluid = sm_count / free
    # A tolerance keeps a grid of exactly k waves at k (floating-point products of exact counts).
    alone = np.maximum(np.ceil(waves - 1e-9), 1.0)
    beside = np.ceil(waves * sm_count / free - 1e-9)
    quantized = np.maximum(beside, 1.0) / alone
    return np.where(held <= 0, 1.0, np.where(waves > 0, quantized, fluid))


def sms_held(channels, on_copy_engines) -> np.ndarray:
    """SMs a collective holds while it runs: one per channel (NVIDIA/nccl#689), none where it runs on
    the copy engines (a zero-CTA copy collective, NVIDIA/nccl ``src/ce_coll.cc``).

    Args:
        channels: the call's channels (CTAs it would run on); array or scalar.
        on_copy_engines: per call, whether it runs on the copy engines; array or scalar.
    """
    return np.where(on_copy_engines, 0.0, np.asarray(channels, dtype=np.float64))


def hbm_bytes_per_link_byte(reduces: bool) -> float:
    """HBM bytes a collective moves per byte on its busiest link: 2 for a copy (store what arrives,
    read it back to send or deliver it), 3 for a reduction (also read the local input)
    (NVIDIA/nccl#1428)."""
    return HBM_BYTES_PER_LINK_BYTE_REDUCE if reduces else HBM_BYTES_PER_LINK_BYTE_COPY


def comm_hbm_gbytes_per_s(link_gbytes_per_s, hbm_bytes_per_link) -> np.ndarray:
    """HBM bandwidth (GB/s) a collective uses while it moves ``link_gbytes_per_s`` over its busiest
    link, at ``hbm_bytes_per_link`` (:func:`hbm_bytes_per_link_byte`) HBM bytes per link byte."""
    return np.asarray(link_gbytes_per_s, dtype=np.float64) * np.asarray(hbm_bytes_per_link, dtype=np.float64)


def hbm_slowdown(compute_hbm_gbytes_per_s, comm_hbm_gbytes_per_s, hbm_gbytes_per_s: float) -> np.ndarray:
    """Factor by which both the compute and the collective stretch when together they ask more of
    HBM than it gives: each gets bandwidth in proportion to its demand, so each runs ``demand / hbm``
    slower (1 when the demand fits).

    Raises:
        ValueError: ``hbm_gbytes_per_s`` <= 0.
    """
    if hbm_gbytes_per_s <= 0:
        raise ValueError(f"hbm_gbytes_per_s must be > 0, got {hbm_gbytes_per_s}")
    demand = np.asarray(compute_hbm_gbytes_per_s, dtype=np.float64) + np.asarray(comm_hbm_gbytes_per_s)
    return np.maximum(1.0, demand / hbm_gbytes_per_s)


def collective_hbm_slowdown(overlap, hbm_slow) -> np.ndarray:
    """Factor on a collective's bandwidth time when ``overlap`` (0..1) of it runs beside compute
    whose HBM demand stretches it by ``hbm_slow`` (only the overlapped share runs at the contended
    rate)."""
    return 1.0 + np.asarray(overlap, dtype=np.float64) * (np.asarray(hbm_slow) - 1.0)


def compute_slowdown(sm_slow, hbm_slow) -> np.ndarray:
    """Factor by which a kernel beside a collective runs slower: the scarcer of its SMs and its HBM
    share decides (a kernel is bound by one resource at a time)."""
    return np.maximum(np.asarray(sm_slow, dtype=np.float64), np.asarray(hbm_slow, dtype=np.float64))


# Work (µs at full speed) a kernel must have done before a collective is launched for the two not
# to count as launched together: float noise, not a duration.
LAUNCH_TIE_US = 1e-9


def waits_for_kernel(kernel_done_us: float, fills_every_sm: bool = True) -> bool:
    """Whether a collective launched beside a running compute kernel waits for that kernel to end
    before its CTAs get SMs (NVIDIA/nccl#1431, #1094): when the kernel fills every SM and was running
    before the collective was launched. A kernel that starts at the same instant (``kernel_done_us``
    within :data:`LAUNCH_TIE_US` of 0) is placed together with the collective: neither holds the SMs
    first, so the collective does not wait. The wait ends at that kernel's own end, however its rate
    changes meanwhile, never at a later kernel's.

    Args:
        kernel_done_us: the kernel's work done when the collective is launched (µs at full speed).
        fills_every_sm: whether the kernel's grid holds every SM.

    Raises:
        ValueError: a negative ``kernel_done_us``.
    """
    if kernel_done_us < 0:
        raise ValueError(f"kernel_done_us must be >= 0, got {kernel_done_us}")
    return fills_every_sm and kernel_done_us > LAUNCH_TIE_US


def launch_delay_us(kernel_left_us: float, fills_every_sm: bool = True) -> float:
    """How long (µs) a collective launched beside a running compute kernel waits for SMs when the
    kernel keeps its rate: the time left in that kernel when it fills every SM (NVIDIA/nccl#1431,
    #1094), else none. Independent of the collective's size and configuration. (The step replay
    does not precompute it: it starts the collective at the kernel's actual end, see
    :func:`waits_for_kernel`.)

    Raises:
        ValueError: a negative ``kernel_left_us``.
    """
    if kernel_left_us < 0:
        raise ValueError(f"kernel_left_us must be >= 0, got {kernel_left_us}")
    return float(kernel_left_us) if fills_every_sm else 0.0
