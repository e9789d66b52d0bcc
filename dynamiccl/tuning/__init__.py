"""Tuning: the gymnasium environment that replays trace steps against a cost model, the agents and
baselines that choose NCCL configurations in it, and their evaluation (a policy is written down as a
decision table by ``dynamiccl.table.policy_export``).

The package itself imports nothing heavy: the command line lists agent names
(:mod:`dynamiccl.tuning.agent_registry`) without numpy or gymnasium. ``gym.make(ENV_ID)`` needs
:mod:`dynamiccl.tuning.env` imported first (it registers the environment).
"""
