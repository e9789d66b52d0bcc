"""``dynamiccl verify``: run the user's job A/B/A with and without a table and say whether it got faster."""

from __future__ import annotations

import argparse

from dynamiccl.cli.common import invocation, wrapped_command
from dynamiccl.outputs import check_outputs, claim_output_dir


def fraction(text: str) -> float:
    """``0.5%`` or ``0.005`` -> 0.005 (argparse type)."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction (0.005) or a percentage (0.5%)") from None


def add(sub) -> None:
    """Add ``verify`` to the sub-command parsers ``sub``."""
    p = sub.add_parser(
        "verify", help="run a training command A/B/A (NCCL alone, with the table, alone) and say whether the table "
                       "made it faster",
        description="Run CMD (torchrun ..., srun ..., python ...) unchanged once per arm: A = NCCL alone, B = with "
                    "the table through `dynamiccl launch`'s environment, in the order A1 B1 A2 (or A1 B1 B2 A2). "
                    "Every optimizer step ends a step (the step timer starts in every Python process of the job; "
                    "DYNAMICCL_VERIFY_ARM names the arm). Per arm: the slowest rank's median step time after the "
                    "warm-up; then the control's drift (A2/A1), the delta of B with a bootstrap 95% CI and a "
                    "verdict: faster, no difference detectable at this noise, or slower. Writes DIR/verify.json, "
                    "verify.md, verify.html and plots/verify-step-times.png. Exit status 0 when compared, 1 with "
                    "--fail-if-slower on a slower verdict, 2 on an error or a table that could not be applied.")
    p.add_argument("--table", required=True, help="decision table: .json, NCCL example CSV (.csv/.conf) or plugin text")
    p.add_argument("--order", default="ABA", choices=["ABA", "ABBA"], help="the arms' order (default ABA)")
    p.add_argument("--warmup-steps", type=int, default=5, metavar="K", help="steps dropped per arm (default 5)")
    p.add_argument("--steps", type=int, default=30, metavar="N",
                   help="steps analysed per arm after the warm-up (default 30; the job must run K + N steps)")
    p.add_argument("--fail-if-slower", action="store_true",
                   help="exit with status 1 when the verdict is slower (a CI guard for a table)")
    p.add_argument("--keep", metavar="PATH", help="copy the table to PATH only if the verdict is faster")
    p.add_argument("--plugin", help="prebuilt libnccl-tuner-dynamiccl.so (default: build or find the cached one)")
    p.add_argument("--run-to-run-sd", type=fraction, default=None, metavar="SD",
                   help="the SD of your job's step time from one run to the next (default 0.5%%)")
    p.add_argument("-o", "--output", default="verify", metavar="DIR",
                   help="directory for the arms' step times, verify.json and the report (default verify/)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    from dynamiccl.errors import InputError
    from dynamiccl.verify.run import USAGE, verify
    from dynamiccl.verify.stats import RUN_TO_RUN_SD

    command = wrapped_command(args.cmd)
    if not command:
        raise InputError("verify", None, f"no command given; usage: {USAGE}")
    check_outputs(args.keep)
    line = invocation(args.argv)
    claim_output_dir(args.output, line)
    sd = RUN_TO_RUN_SD if args.run_to_run_sd is None else args.run_to_run_sd
    outcome = verify(command, args.table, args.output, order=args.order, warmup_steps=args.warmup_steps,
                     steps=args.steps, plugin=args.plugin, run_to_run_sd=sd, keep=args.keep,
                     fail_if_slower=args.fail_if_slower, command_line=line)
    if outcome.report is not None:
        print(f"wrote {outcome.json_path}, {outcome.report['markdown']}, {outcome.report['html']} and "
              f"{outcome.report['plot']}")
    else:
        print(f"wrote {outcome.json_path}")
    return outcome.status
