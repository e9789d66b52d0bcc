"""``dynamiccl report``: the HTML report, Markdown summary and plots of ``dynamiccl evaluate`` results."""

from __future__ import annotations

import sys

from dynamiccl.cli.common import invocation
from dynamiccl.outputs import claim_output_dir


def add(sub) -> None:
    """Add ``report`` to the sub-command parsers ``sub``."""
    p = sub.add_parser("report", help="HTML report, Markdown summary and plots from `dynamiccl evaluate` results",
                       description="Read a results file of `dynamiccl evaluate` (and its .calls.parquet companion, "
                                   "if present) and write DIR/report.html (self-contained: plots embedded, no "
                                   "scripts or URLs), DIR/summary.md and DIR/plots/*.png: a headline that says which "
                                   "cost model predicted the step times, headroom per case (NCCL default, the agent, "
                                   "the search reference, the line-rate bound and the no-communication ceiling, and "
                                   "the time saved per step and per day of training), where each case's "
                                   "communication goes and whether tuning is worth it (`dynamiccl headroom`'s "
                                   "breakdown and verdict), decision maps, the step-time change per case, "
                                   "communication time by parallelism and collective, the gap to the search, "
                                   "training curve, simulator calibration and provenance.")
    p.add_argument("results", help="results .parquet written by `dynamiccl evaluate -o`")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the report into")
    p.add_argument("--training-curve", metavar="CSV", help="training_curve.csv of `dynamiccl train`")
    p.add_argument("--calibration", metavar="JSON", help="error summary of `dynamiccl validate --json`")
    p.add_argument("--table", help="decision table (.json/.csv/.conf/.txt) to list with its provenance")
    p.add_argument("--verify", metavar="JSON", help="verify.json of `dynamiccl verify`: the measured A/B result on "
                                                   "the job, with its per-step plot")
    p.add_argument("--agent", help="the agent compared with NCCL's default (default: policy, else the first "
                                   "agent that is not a baseline)")
    p.add_argument("--online", default="all", choices=["all", "last"],
                   help="which iterations of online learners count (default all: the cost of learning included)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from dynamiccl.report import build_report

    claim_output_dir(args.output, invocation(args.argv))
    paths = build_report(args.results, args.output, training_curve=args.training_curve,
                         calibration=args.calibration, table=args.table, verify=args.verify, agent=args.agent,
                         online=args.online,
                         command=invocation(args.argv), progress=sys.stderr.isatty())
    print(f"wrote {paths['html']} (open this first), {paths['summary']} and {paths['plots']}/*.png")
    return 0
