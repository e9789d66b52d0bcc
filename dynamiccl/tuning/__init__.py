"""Tuning: the gymnasium environment that replays trace steps against a cost model, the agents and
baselines that choose NCCL configurations in it, and their evaluation (a policy is written down as a
decision table by ``dynamiccl.table.policy_export``).

The package itself imports nothing heavy: the command line lists agent names
(:mod:`dynamiccl.tuning.agent_registry`) without numpy or gymnasium. The environment is registered by
:mod:`dynamiccl.tuning.env`: with only gymnasium imported, ``gymnasium.make("dynamiccl.tuning.env:
dynamiccl/Tuning-v0")`` imports it first (gymnasium >= 1.0 has no entry-point plugins, so the module
prefix is how it loads a package's environments); after ``import dynamiccl.tuning.env``,
``gymnasium.make("dynamiccl/Tuning-v0")``.
"""
