"""One step replayed with an agent beside NCCL's default, and the difference put on the calls that made it.

``compare_with_default(env, agent, case, state)`` runs one episode of ``env`` (a
:class:`~dynamiccl.tuning.env.TuningEnv`) with ``agent`` and returns both step times (NCCL's default
one is the same case under the same dynamics state: same congestion timeline, same noise) and, for
every call where the agent did not keep NCCL's choice, what that choice added to the step compared
with NCCL's: ``Replay.exposed_cost`` of (NCCL's default, the agent's action) in the conditions when
the call started -- the per-call term of ``TuningEnv``'s reward, in µs. Positive ``lost_us`` = the
choice made the step longer.

This is the evidence behind a decision table's rules (``dynamiccl.table.policy_export``) and what
``dynamiccl table check`` lists when it refuses a table. It reads the simulator's state, so it is
for offline evidence only, never for a deployed decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl.callkey import CallKey
from dynamiccl.tuning.actions import DEFAULT_ACTION


@dataclass(frozen=True)
class CallEffect:
    """One call where the agent did not keep NCCL's choice.

    ``call``: its id in the step; ``key``: what the plugin saw (the trace's position);
    ``action``: the action that ran; ``lost_us``: what it added to the step compared with NCCL's
    default (µs; negative = saved).
    """

    call: int
    key: CallKey
    action: int
    lost_us: float


@dataclass(frozen=True)
class StepComparison:
    """One (case, dynamics state) replayed with an agent and with NCCL's default.

    ``step_time_us`` / ``default_step_time_us``: the two makespans (µs); ``effects``: one
    ``CallEffect`` per call the agent changed, in decision order.
    """

    case: str
    state: int
    step_time_us: float
    default_step_time_us: float
    effects: tuple[CallEffect, ...]

    @property
    def ratio(self) -> float:
        """NCCL's default step time over the agent's: > 1 = the agent is faster."""
        return self.default_step_time_us / self.step_time_us


def compare_with_default(env, agent, case: int, state: int) -> StepComparison:
    """Replay ``case`` of ``env`` under dynamics ``state`` with ``agent``; see the module docstring.

    ``agent`` is an offline :class:`~dynamiccl.tuning.agents.Agent` (it is not fed measurements).
    An action the call's mask forbids runs as NCCL's default, as in ``TuningEnv.step``.

    Raises:
        InputError: a case index outside ``env.cases`` (from ``env.reset``).
    """
    base = env.unwrapped
    obs, _ = base.reset(options={"case": int(case), "state": int(state)})
    agent.begin_episode(base)
    effects: list[CallEffect] = []
    info: dict = {}
    while base.pending_communicator is not None:  # with the knobs: the agent's communicator configs first
        obs, *_ = base.step(int(agent.act_communicator(base, obs, base.action_masks())))
    while base.pending is not None:
        call = base.pending
        mask = base.action_masks()
        action = int(agent.act(base, obs, mask))
        if not (0 <= action < len(mask) and mask[action]):
            action = DEFAULT_ACTION
        if action != DEFAULT_ACTION:
            default_us, chosen_us = base.simulator.replay.exposed_cost(call, (DEFAULT_ACTION, action))
            effects.append(CallEffect(call, base.call_key(call), action, float(chosen_us - default_us)))
        obs, _, terminated, truncated, info = base.step(action)
        if terminated or truncated:
            break
    return StepComparison(base.cases[int(case)].label, int(state), float(info["step_time_us"]),
                          float(info["default_step_time_us"]), tuple(effects))


__all__ = ["CallEffect", "StepComparison", "compare_with_default"]
