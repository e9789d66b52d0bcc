"""The profiler: record real training steps, import the traces people already have, export them.

- :func:`capture` (``capture``): record a PyTorch job's collectives live, per rank;
  :func:`merge_capture` (``merge``) turns a capture directory into one trace; zero-code mode
  (``auto``, ``autostart``) and ``dynamiccl profile -- CMD`` (``run``) do both for any job;
- ``importers``: Kineto, Flight Recorder, NCCL_DEBUG logs, NCCL Inspector -> trace;
- ``exporters``: trace -> Chakra execution traces, PARAM comms JSON;
- ``reference_job``: a small GPT with real TP/SP, PP and DP on gloo, to record and cross-check.

Importing this package does not import torch; ``capture`` does.
"""


def capture(out_dir):
    """Record this rank's collectives in a ``with`` block (see :mod:`dynamiccl.profiler.capture`)."""
    from dynamiccl.profiler.capture import capture as _capture

    return _capture(out_dir)


def merge_capture(capture_dir, **kwargs):
    """One trace from a capture directory (see :mod:`dynamiccl.profiler.merge`)."""
    from dynamiccl.profiler.merge import merge_capture as _merge

    return _merge(capture_dir, **kwargs)
