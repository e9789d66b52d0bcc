"""Tuning: the gymnasium environment that replays trace steps against a cost model, the agents and
baselines that choose NCCL configurations in it, their evaluation, and the export of a policy as a
decision table."""

import gymnasium as _gym

if "dynamiccl/Tuning-v0" not in _gym.registry:
    _gym.register(id="dynamiccl/Tuning-v0", entry_point="dynamiccl.tuning.env:TuningEnv")
