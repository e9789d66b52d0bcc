"""``dynamiccl generate`` (a training step as a trace) and ``dynamiccl models`` (the built-in models)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dynamiccl.cli.common import invocation
from dynamiccl.errors import InputError
from dynamiccl.outputs import check_outputs


def add(sub) -> None:
    """Add ``generate`` and ``models`` to the sub-command parsers ``sub``."""
    p = sub.add_parser("generate", help="generate a Megatron-style training step as a trace",
                       description="Generate one training step of a model under a parallel layout (Megatron-LM "
                                   "rank order and communication), one representative rank per pipeline stage.")
    add_workload_arguments(p, required=True)
    p.add_argument("--all-ranks", action="store_true", help="generate every rank, not one per pipeline stage")
    p.add_argument("-o", "--output", required=True, help="trace file to write (.parquet)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("models", help="list the built-in models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)


def add_workload_arguments(parser, required: bool, with_env: bool = True) -> None:
    """The flags of a generator workload (``WorkloadSpec``) and its hardware, as ``generate`` takes them;
    ``required``: whether --model, --tp, --pp and --dp must be given; ``with_env``: add ``--env`` (a command
    that has its own leaves it out). Read back with ``workload_from_args``."""
    from dynamiccl.gpus import DEFAULT_GPU
    from dynamiccl.workload.layout import ACT_DTYPES, DP_MODES, GRAD_DTYPES
    from dynamiccl.workload.spec import DEFAULT_EFFICIENCY, DEFAULT_GPUS_PER_NODE

    parser.add_argument("--model", required=required,
                        help="built-in model name (see `dynamiccl models`) or a model TOML file")
    parser.add_argument("--tp", type=int, required=required, help="tensor-parallel size")
    parser.add_argument("--pp", type=int, required=required, help="pipeline-parallel size")
    parser.add_argument("--dp", type=int, required=required, help="data-parallel size")
    parser.add_argument("--cp", type=int, default=1, help="context-parallel size (p2p ring)")
    parser.add_argument("--ep", type=int, default=1, help="expert-parallel size (MoE models)")
    parser.add_argument("--etp", type=int, default=0, help="expert tensor-parallel size: 1 or TP (default TP)")
    parser.add_argument("--sp", action="store_true", help="sequence parallelism")
    parser.add_argument("--vpp", type=int, default=1, help="virtual pipeline stages per rank (interleaved 1F1B)")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-batch")
    parser.add_argument("--global-batch", type=int, default=0, help="sequences per step (default: the model's)")
    parser.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (default: the model's)")
    parser.add_argument("--dp-mode", default="distopt", choices=DP_MODES,
                        help="data-parallel scheme (default distopt: Megatron's distributed optimizer)")
    parser.add_argument("--dtype", default="bf16", choices=ACT_DTYPES, help="activation/parameter dtype")
    parser.add_argument("--grad-reduce-dtype", default="", choices=("",) + GRAD_DTYPES,
                        help="dtype of DP gradient reduction (default fp32, Megatron's default for bf16 runs)")
    parser.add_argument("--no-overlap-grad-reduce", action="store_true",
                        help="reduce gradients after the pipeline drains instead of during the last backward")
    parser.add_argument("--no-reshard-after-forward", action="store_true",
                        help="FSDP keeps gathered parameters from forward to backward")
    parser.add_argument("--first-stage-layers", type=int, default=0,
                        help="layers on the first pipeline stage (uneven split)")
    parser.add_argument("--last-stage-layers", type=int, default=0,
                        help="layers on the last pipeline stage (uneven split)")
    hw = parser.add_argument_group("hardware (compute time and node placement)")
    if with_env:
        hw.add_argument("--env", help="environment spec (file or shipped name, e.g. dgx-a100): its GPU and GPUs per "
                                       "node")
    hw.add_argument("--gpu", help=f"GPU name (default {DEFAULT_GPU} unless --env)")
    hw.add_argument("--gpus-per-node", type=int, default=0,
                    help=f"GPUs per node (default {DEFAULT_GPUS_PER_NODE} unless --env)")
    hw.add_argument("--peak-tflops", type=float, default=0.0, help="dense BF16 peak TFLOPS (overrides the GPU's)")
    hw.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY,
                    help=f"fraction of peak the GEMMs achieve (default {DEFAULT_EFFICIENCY}, a typical MFU)")


def workload_from_args(args, source: str):
    """The ``WorkloadSpec`` of the flags ``add_workload_arguments`` added (``source`` names the command).

    Raises:
        InputError: a value the workload schema refuses, naming the flag.
    """
    from dynamiccl.workload.spec import WorkloadSpec, workload_field_flag

    values = {key: getattr(args, key) for key in (
        "model", "tp", "pp", "dp", "cp", "ep", "etp", "vpp", "sp", "micro_batch", "global_batch", "seq_len", "dp_mode",
        "dtype", "grad_reduce_dtype", "first_stage_layers", "last_stage_layers", "gpus_per_node", "peak_tflops",
        "efficiency")}
    values.update(gpu=args.gpu or "", overlap_grad_reduce=not args.no_overlap_grad_reduce,
                  reshard_after_forward=not args.no_reshard_after_forward)
    try:
        return WorkloadSpec.from_dict(values, source)
    except InputError as exc:
        raise workload_field_flag(exc, source) from None

def cmd_generate(args) -> int:
    from dynamiccl.envspec import resolve_env

    output = Path(args.output)
    if output.suffix != ".parquet":
        raise InputError("-o", None, f"expected a .parquet file name, got {args.output!r}")
    check_outputs(output)
    spec = workload_from_args(args, "dynamiccl generate")
    started = time.perf_counter()
    trace = spec.generate(resolve_env(args.env).cluster if args.env else None, all_ranks=args.all_ranks, progress=True,
                          command=invocation(args.argv))
    trace.write(output)
    elapsed = time.perf_counter() - started
    print(f"wrote {output}: {trace.meta.description}; {len(trace.ops)} ops on {len(trace.meta.roles)} rank(s) "
          f"in {elapsed:.1f} s")
    return 0


def cmd_models(args) -> int:
    from dataclasses import asdict

    from dynamiccl.workload.models import builtin_models

    models = builtin_models()
    if args.json:
        print(json.dumps({name: asdict(cfg) | {"total_params": cfg.total_params()} for name, cfg in models.items()},
                         indent=2))
        return 0
    print(f"{'model':<16} {'params':>9} {'layers':>6} {'hidden':>6} {'heads/kv':>9} {'seq':>6} {'gbs':>6}  experts")
    for name, m in models.items():
        experts = f"{m.moe.num_experts} top-{m.moe.top_k}" if m.moe else "-"
        print(f"{name:<16} {m.total_params() / 1e9:>8.1f}B {m.num_layers:>6} {m.hidden_size:>6} "
              f"{m.num_attention_heads:>4}/{m.num_kv_heads:<4} {m.seq_length:>6} {m.global_batch:>6}  {experts}")
    print("\nUser models: a TOML file with a [model] table (copy one from dynamiccl/workload/models/).")
    return 0
