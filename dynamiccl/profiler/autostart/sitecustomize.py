"""Started by Python at start-up when this directory is on PYTHONPATH (set by ``dynamiccl profile``,
``dynamiccl launch --profile`` and ``dynamiccl verify``).

Starts dynamiccl's capture if ``DYNAMICCL_PROFILE_DIR`` is set, its step timer if
``DYNAMICCL_STEP_TIMES_DIR`` is set and the per-communicator settings hook
(:mod:`dynamiccl.commconfig_hook`) if ``DYNAMICCL_COMM_CONFIG`` is set (``dynamiccl launch --table``),
then runs any other ``sitecustomize`` further along ``sys.path``, so a site's own start-up code
still runs.
"""

import importlib.util
import os
import sys

if os.environ.get("DYNAMICCL_PROFILE_DIR"):
    try:
        from dynamiccl.profiler.auto import start_from_environment

        start_from_environment()
    except Exception as exc:  # fail open
        print(f"dynamiccl: profiling disabled ({type(exc).__name__}: {exc})", file=sys.stderr)

if os.environ.get("DYNAMICCL_STEP_TIMES_DIR"):
    try:
        from dynamiccl.profiler.steptimer import start_from_environment as start_step_timer

        start_step_timer()
    except Exception as exc:  # fail open
        print(f"dynamiccl: step timing disabled ({type(exc).__name__}: {exc})", file=sys.stderr)

if os.environ.get("DYNAMICCL_COMM_CONFIG"):
    try:
        from dynamiccl.commconfig_hook import install_from_environment as install_comm_config

        install_comm_config()
    except Exception as exc:  # fail open
        print(f"dynamiccl comm-config: per-communicator settings not applied ({type(exc).__name__}: {exc})",
              file=sys.stderr)

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    _candidate = os.path.join(_entry or ".", "sitecustomize.py")
    if os.path.abspath(os.path.dirname(_candidate)) != _here and os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_site_sitecustomize", _candidate)
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        break
