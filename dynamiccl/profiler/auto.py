"""Zero-code capture: any PyTorch job records its steps when ``DYNAMICCL_PROFILE_DIR`` is set.

``dynamiccl profile -- CMD`` (and later ``dynamiccl launch --profile DIR``) put
``dynamiccl/profiler/autostart`` on ``PYTHONPATH``; its ``sitecustomize`` calls
:func:`start_from_environment` in every Python process of the job. Then:

- the capture mode is active from start-up; rank files go to ``$DYNAMICCL_PROFILE_DIR``;
- steps end at every optimizer step (PyTorch's global optimizer step post-hook), so step k is
  everything from the previous optimizer step to this one; what runs after the last optimizer step
  (a final loss report, a checkpoint barrier) is no training step: it is setup traffic, and a job
  of K optimizer steps records K steps;
- traffic inside ``DistributedDataParallel(...)`` construction is marked setup, as are barriers;
- the rank file is written when the process exits.

It fails open: if anything here breaks, the job runs unprofiled and says so once on stderr.
"""

from __future__ import annotations

import atexit
import os
import sys

ENV_DIR = "DYNAMICCL_PROFILE_DIR"
_active = None


def start_from_environment():
    """Start capturing if ``DYNAMICCL_PROFILE_DIR`` is set; returns the Capture or None."""
    global _active
    out_dir = os.environ.get(ENV_DIR)
    if not out_dir or _active is not None:
        return _active
    try:
        from torch.nn.parallel import DistributedDataParallel
        from torch.optim.optimizer import register_optimizer_step_post_hook

        from dynamiccl.profiler.capture import Capture

        cap = Capture(out_dir)
        cap.__enter__()
        cap.begin_step()

        def next_step(optimizer, args, kwargs):
            cap.end_step()
            cap.begin_step()

        register_optimizer_step_post_hook(next_step)
        original_init = DistributedDataParallel.__init__

        def ddp_init(self, *args, **kwargs):
            with cap.setup():
                original_init(self, *args, **kwargs)

        DistributedDataParallel.__init__ = ddp_init
        atexit.register(_finish, cap)
        _active = cap
    except Exception as exc:  # fail open: the job must run even if profiling cannot
        print(f"dynamiccl: profiling disabled ({type(exc).__name__}: {exc})", file=sys.stderr)
    return _active


def _finish(cap) -> None:
    try:
        cap.abandon_step()  # the step the last optimizer step opened never completes
        cap.write()
    except Exception as exc:
        print(f"dynamiccl: could not write the capture ({type(exc).__name__}: {exc})", file=sys.stderr)
