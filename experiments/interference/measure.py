"""Measure compute/communication interference on one GPU: a bf16 GEMM on one stream beside a
persistent copy (or reduce) kernel with K thread blocks on another, K from 1 to the SM count.

The copy kernel stands in for NCCL's channels: one block of 640 threads per channel (NCCL's thread
count), each block sized in shared memory so that it takes a whole SM, as NCCL's CTAs do
("NCCL CTAs won't share an SM with compute kernels", NVIDIA/nccl#689), streaming a buffer through
HBM as a channel streams what the links deliver. Per K it records, each the median of ``--repeats``:

- ``gemm_alone_us`` / ``gemm_beside_us``: the GEMM alone, and launched while the copy kernel (launched
  first, running longer than the GEMM) holds its K SMs -- the SM loss, the wave tail and HBM sharing;
- ``copy_alone_us`` / ``copy_beside_us`` and the matching HBM bandwidths (``*_hbm_gbytes_per_s``:
  bytes read + written per second): the copy alone, and launched while a train of GEMMs that outlasts
  it runs -- HBM sharing on the communication side, plus the launch delay (the copy's blocks wait for
  SMs the GEMMs hold, NVIDIA/nccl#1431).

It writes one JSON file (GPU name, SM count, driver, CUDA, torch versions, the arguments, one row per
K). ``compare.py`` puts the world's model beside it. Needs a CUDA GPU and a CUDA toolkit (the kernel
is compiled with ``torch.utils.cpp_extension.load_inline``); without one, ``--dry-run`` (automatic
when no GPU is visible) checks the arguments and prints the plan, measuring nothing.

    python experiments/interference/measure.py -o experiments/interference/h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

THREADS_PER_BLOCK = 640  # NCCL's threads per channel (NCCL_NTHREADS default for Simple)

CUDA_SOURCE = r"""
#include <torch/extension.h>
#include <cuda_runtime.h>
#include <ATen/cuda/CUDAContext.h>

// A persistent stream over HBM: every block walks the buffer grid-stride, ``iters`` times.
// reduce = 0: dst = src (read 16 B, write 16 B); reduce = 1: dst += src (read 32 B, write 16 B).
__global__ void stream_kernel(const float4* __restrict__ src, float4* __restrict__ dst, long n, int iters,
                              int reduce) {
  extern __shared__ float4 hold[];  // only reserves the SM: one block per SM, as an NCCL CTA
  if (threadIdx.x == 0) hold[0] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int it = 0; it < iters; ++it) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
      float4 v = src[i];
      if (reduce) {
        float4 d = dst[i];
        v.x += d.x; v.y += d.y; v.z += d.z; v.w += d.w;
      }
      dst[i] = v;
    }
  }
}

void launch_stream(torch::Tensor src, torch::Tensor dst, int64_t blocks, int64_t iters, int64_t reduce,
                   int64_t smem_bytes) {
  TORCH_CHECK(src.is_cuda() && dst.is_cuda() && src.numel() == dst.numel() && src.numel() % 4 == 0,
              "src and dst: CUDA float32 tensors of the same size, a multiple of 4");
  cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes);
  auto stream = at::cuda::getCurrentCUDAStream();
  stream_kernel<<<(unsigned)blocks, 640, (size_t)smem_bytes, stream>>>(
      reinterpret_cast<const float4*>(src.data_ptr<float>()), reinterpret_cast<float4*>(dst.data_ptr<float>()),
      src.numel() / 4, (int)iters, (int)reduce);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
"""
CPP_SOURCE = "void launch_stream(torch::Tensor src, torch::Tensor dst, int64_t blocks, int64_t iters, " \
             "int64_t reduce, int64_t smem_bytes);"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; raises SystemExit (argparse) with a message naming the bad option."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="JSON file to write (required unless --dry-run)")
    p.add_argument("--gemm", type=int, nargs=3, default=(8192, 8192, 8192), metavar=("M", "N", "K"),
                   help="bf16 GEMM shape (default 8192^3: many waves)")
    p.add_argument("--one-wave-gemm", type=int, nargs=3, default=None, metavar=("M", "N", "K"),
                   help="also measure this shape (pick one whose grid is one wave on the GPU, the forum's case)")
    p.add_argument("--blocks", type=str, default="auto",
                   help="comma-separated K values, or 'auto': 1, 2, 4, 8, 16, 24, 32, 48, 64, then every 16 to the SMs")
    p.add_argument("--mode", choices=("copy", "reduce"), default="copy",
                   help="copy (AllGather-like, 2 HBM bytes per byte moved) or reduce (3)")
    p.add_argument("--buffer-mib", type=int, default=1024, help="copy buffer size, MiB (beyond L2)")
    p.add_argument("--repeats", type=int, default=7, help="timed repetitions per point (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions per point")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and print the plan only")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.buffer_mib < 1:
        p.error("--repeats >= 1, --warmup >= 0 and --buffer-mib >= 1 are required")
    if any(d < 1 for d in args.gemm) or (args.one_wave_gemm and any(d < 1 for d in args.one_wave_gemm)):
        p.error("GEMM dimensions must be >= 1")
    if args.blocks != "auto":
        try:
            values = [int(v) for v in args.blocks.split(",")]
        except ValueError:
            p.error(f"--blocks: expected 'auto' or comma-separated integers, got {args.blocks!r}")
        if not values or min(values) < 1:
            p.error("--blocks: every K must be >= 1")
    if not args.dry_run and args.output is None:
        p.error("-o/--output is required unless --dry-run")
    return args


def block_counts(spec: str, sm_count: int) -> list[int]:
    """The K values to measure: ``spec`` ('auto' or comma-separated), clipped to ``sm_count - 1``
    (at least one SM is left to the GEMM), sorted, without repeats.

    Raises:
        ValueError: ``sm_count`` < 2.
    """
    if sm_count < 2:
        raise ValueError(f"a GPU with {sm_count} SM(s) leaves none to the GEMM")
    if spec == "auto":
        values = [1, 2, 4, 8, 16, 24, 32, 48, 64, *range(80, sm_count, 16), sm_count - 1]
    else:
        values = [int(v) for v in spec.split(",")]
    return sorted({min(v, sm_count - 1) for v in values if v >= 1})


def _median_us(fn, repeats: int, warmup: int, torch, stream) -> float:
    """Median time (µs) of ``fn()`` measured with CUDA events on ``stream``."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record(stream)
            fn()
            end.record(stream)
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def measure(args: argparse.Namespace) -> dict:  # pragma: no cover - needs a GPU
    """Run the sweep on the current CUDA device; returns the JSON document."""
    import torch
    from torch.utils.cpp_extension import load_inline

    ext = load_inline("dynamiccl_interference", cpp_sources=CPP_SOURCE, cuda_sources=CUDA_SOURCE,
                      functions=["launch_stream"], verbose=False)
    props = torch.cuda.get_device_properties(0)
    sm_count = props.multi_processor_count
    # More than half the SM's shared memory: two blocks never fit on one SM.
    smem = int(getattr(props, "shared_memory_per_multiprocessor", 228 * 1024) // 2 + 1024)
    gemm_stream, copy_stream = torch.cuda.Stream(), torch.cuda.Stream()
    elems = args.buffer_mib * (1 << 20) // 4
    src = torch.randn(elems, device="cuda", dtype=torch.float32)
    dst = torch.zeros_like(src)
    bytes_per_pass = elems * 4 * (3 if args.mode == "reduce" else 2)
    shapes = {"gemm": tuple(args.gemm)}
    if args.one_wave_gemm:
        shapes["one_wave_gemm"] = tuple(args.one_wave_gemm)
    rows = []
    for name, (m, n, k) in shapes.items():
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        gemm = lambda: torch.matmul(a, b)  # noqa: E731
        gemm_alone = _median_us(gemm, args.repeats, args.warmup, torch, gemm_stream)
        flops = 2.0 * m * n * k
        for blocks in block_counts(args.blocks, sm_count):
            one_pass = lambda: ext.launch_stream(src, dst, blocks, 1, int(args.mode == "reduce"), smem)  # noqa: E731
            pass_us = _median_us(one_pass, args.repeats, args.warmup, torch, copy_stream)
            # The copy runs ~3x the GEMM so that the whole GEMM is beside it; the GEMM train ~3x the copy.
            iters = max(1, int(3 * gemm_alone / pass_us) + 1)
            copy = lambda: ext.launch_stream(src, dst, blocks, iters, int(args.mode == "reduce"), smem)  # noqa: E731
            copy_alone = _median_us(copy, args.repeats, args.warmup, torch, copy_stream)
            train = max(1, int(3 * copy_alone / gemm_alone) + 1)

            def timed_beside(timed, timed_stream, other, other_stream) -> float:
                """µs of ``timed`` on its stream, launched after ``other`` on the other stream."""
                with torch.cuda.stream(other_stream):
                    other()
                with torch.cuda.stream(timed_stream):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record(timed_stream)
                    timed()
                    end.record(timed_stream)
                torch.cuda.synchronize()
                return start.elapsed_time(end) * 1000.0

            def gemm_train():
                for _ in range(train):
                    gemm()

            def gemm_beside():
                return timed_beside(gemm, gemm_stream, copy, copy_stream)

            def copy_beside():
                return timed_beside(copy, copy_stream, gemm_train, gemm_stream)

            for _ in range(args.warmup):
                gemm_beside()
                copy_beside()
            g = statistics.median(gemm_beside() for _ in range(args.repeats))
            c = statistics.median(copy_beside() for _ in range(args.repeats))
            rows.append({"shape": name, "m": m, "n": n, "k": k, "blocks": blocks, "copy_iters": iters,
                         "gemm_alone_us": gemm_alone, "gemm_beside_us": g,
                         "gemm_alone_tflops": flops / gemm_alone / 1e6, "gemm_beside_tflops": flops / g / 1e6,
                         "copy_alone_us": copy_alone, "copy_beside_us": c,
                         "copy_alone_hbm_gbytes_per_s": bytes_per_pass * iters / copy_alone / 1e3,
                         "copy_beside_hbm_gbytes_per_s": bytes_per_pass * iters / c / 1e3})
            print(f"{name} K={blocks:4d}  gemm {gemm_alone:9.1f} -> {g:9.1f} us   "
                  f"copy {rows[-1]['copy_alone_hbm_gbytes_per_s']:7.1f} -> "
                  f"{rows[-1]['copy_beside_hbm_gbytes_per_s']:7.1f} GB/s", flush=True)
    driver = ""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return {"gpu": props.name, "sm_count": sm_count, "total_memory_bytes": props.total_memory,
            "driver": driver, "cuda": torch.version.cuda, "torch": torch.__version__,
            "host": platform.node(), "mode": args.mode, "threads_per_block": THREADS_PER_BLOCK,
            "shared_memory_per_block_bytes": smem, "buffer_mib": args.buffer_mib, "repeats": args.repeats,
            "script": "experiments/interference/measure.py", "argv": sys.argv[1:], "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
        have_gpu = torch.cuda.is_available()
    except ImportError:
        have_gpu = False
    if args.dry_run or not have_gpu:
        sm_count = 132  # the plan for an H100/H200 when no GPU says otherwise
        if have_gpu:
            sm_count = torch.cuda.get_device_properties(0).multi_processor_count
        print(f"plan: {args.mode} kernel of K x {THREADS_PER_BLOCK} threads over {args.buffer_mib} MiB beside a "
              f"bf16 GEMM {tuple(args.gemm)}" + (f" and {tuple(args.one_wave_gemm)}" if args.one_wave_gemm else ""))
        print(f"K values ({sm_count} SMs): {block_counts(args.blocks, sm_count)}")
        if not have_gpu:
            print("no CUDA GPU visible: nothing measured (dry run)")
        return 0
    doc = measure(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, args.output)  # atomic: a reader never sees half a file
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
