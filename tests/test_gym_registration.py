"""gymnasium finds dynamiccl's environment from a program that imported nothing but gymnasium (issue
15, item 18), by the module-prefixed id that gymnasium >= 1.0 resolves by importing the module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import sys
import gymnasium as gym
assert "dynamiccl" not in sys.modules
env = gym.make(ID)
from dynamiccl.tuning.env import ENV_ID, IMPORTING_ENV_ID, TuningEnv
assert ID == IMPORTING_ENV_ID and isinstance(env.unwrapped, TuningEnv)
assert gym.spec(ENV_ID).entry_point == "dynamiccl.tuning.env:TuningEnv"
print("made", type(env.unwrapped).__name__)
"""


def test_gym_make_needs_only_gymnasium_imported():
    # A fresh interpreter: the test process has long imported dynamiccl.tuning.env.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", f"ID = 'dynamiccl.tuning.env:dynamiccl/Tuning-v0'\n{PROGRAM}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "made TuningEnv"
