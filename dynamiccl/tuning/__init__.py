"""Tuning: the gymnasium environment that replays trace steps against a cost model, the agents and
baselines that choose NCCL configurations in it, and their evaluation (a policy is written down as a
decision table by ``dynamiccl.table.policy_export``)."""

import gymnasium as _gym

if "dynamiccl/Tuning-v0" not in _gym.registry:
    _gym.register(id="dynamiccl/Tuning-v0", entry_point="dynamiccl.tuning.env:TuningEnv")
