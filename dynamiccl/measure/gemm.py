"""A GEMM running beside the timed collective (``dynamiccl measure --with-gemm``): how much the
collective slows down next to compute, and how much the compute slows down next to it.

On GPU the GEMM is one ``n x n`` matmul (bf16) enqueued on a separate CUDA stream just before each
timed collective (the stream first waits for the current one, so both start together); its CUDA
events give its time beside the collective. On CPU a thread runs ``n x n`` fp32 matmuls back to back
while the collective runs (torch releases the GIL inside the matmul); each matmul is timed with
``time.perf_counter``. The slowdown is the GEMM's median time beside the collective over its median
time alone (:meth:`GemmBeside.time_alone`, measured on the same rank just before).
"""

from __future__ import annotations

import statistics
import threading
import time

GPU_N = 4096  # 2 x 4096^3 = 137 GFLOP: ~0.2 ms on an H100 (989 dense BF16 TFLOPS, NVIDIA datasheet)
CPU_N = 256  # 2 x 256^3 = 34 MFLOP: about a millisecond on one core


class GemmBeside:
    """The GEMM of one rank. ``start()`` / ``stop()`` bracket each timed collective
    (:func:`dynamiccl.costmodel.live.time_op`); :meth:`collect` returns the GEMM times beside it."""

    def __init__(self, device, n: int | None = None):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        self.n = n or (GPU_N if self.cuda else CPU_N)
        dtype = torch.bfloat16 if self.cuda else torch.float32
        self.a = torch.randn(self.n, self.n, device=device, dtype=dtype)
        self.b = torch.randn(self.n, self.n, device=device, dtype=dtype)
        self.dtype = "bf16" if self.cuda else "fp32"
        self._events: list = []
        self._times_us: list[float] = []
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        if self.cuda:
            self.stream = torch.cuda.Stream(device=device)

    def describe(self) -> str:
        where = "on a separate CUDA stream" if self.cuda else "in a thread"
        return f"{self.n}x{self.n} {self.dtype} GEMM {where}"

    def time_alone(self, reps: int = 5) -> float:
        """The GEMM's median time alone on this rank, in µs (one warm-up first)."""
        import torch

        times = []
        for i in range(reps + 1):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.mm(self.a, self.b)
                end.record()
                torch.cuda.synchronize()
                elapsed = start.elapsed_time(end) * 1e3
            else:
                t0 = time.perf_counter()
                torch.mm(self.a, self.b)
                elapsed = (time.perf_counter() - t0) * 1e6
            if i:
                times.append(elapsed)
        return statistics.median(times)

    def start(self) -> None:
        """Start the GEMM beside the collective about to be launched."""
        import torch

        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                start.record()
                torch.mm(self.a, self.b)
                end.record()
            self._events.append((start, end))
        else:
            self._running.set()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """The collective has ended (CPU: the thread finishes its current matmul and stops)."""
        if not self.cuda and self._thread is not None:
            self._running.clear()
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        import torch

        while self._running.is_set():
            t0 = time.perf_counter()
            torch.mm(self.a, self.b)
            self._times_us.append((time.perf_counter() - t0) * 1e6)

    def collect(self) -> list[float]:
        """The GEMM times (µs) beside the collective since the last call: one per timed collective
        on GPU, one per matmul on CPU."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) * 1e3 for s, e in self._events]
            self._events = []
        else:
            times, self._times_us = self._times_us, []
        return times
