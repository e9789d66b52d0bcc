"""The agents by name: what ``dynamiccl evaluate --agents`` accepts and how each one is built.

A new agent is one entry in :data:`AGENTS`. The registry is apart from the agents themselves
(:mod:`dynamiccl.tuning.agents`, which need numpy) so that the command line lists the names without
importing them: each builder imports what it builds.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

from dynamiccl.errors import InputError

if TYPE_CHECKING:
    from dynamiccl.tuning.agents import Agent


@dataclasses.dataclass(frozen=True)
class AgentInputs:
    """What building an agent may need: the policy file (``policy``: policy.zip or a decision table),
    the seed of a random agent, and -- only called for agents fitted offline -- ``fit()``, which
    returns the (env, [(case, state), ...]) episodes to fit on."""

    policy: str | None = None
    seed: int = 0
    fit: Callable[[], tuple[Any, list[tuple[int, int]]]] | None = None


@dataclasses.dataclass(frozen=True)
class AgentEntry:
    """One registered agent: how to build it (None: not applicable, e.g. no policy given), a line
    of help, and whether it is a baseline a tuned agent is compared with (a report's subject is
    an agent that is not)."""

    build: Callable[[AgentInputs], Agent | None]
    help: str
    baseline: bool = True


def _nccl_default(inputs: AgentInputs) -> Agent:
    from dynamiccl.tuning.agents import NcclDefaultAgent

    return NcclDefaultAgent()


def _random(inputs: AgentInputs) -> Agent:
    from dynamiccl.tuning.agents import RandomAgent

    return RandomAgent(inputs.seed)


def _greedy_per_call(inputs: AgentInputs) -> Agent:
    from dynamiccl.tuning.agents import GreedyPerCallAgent

    return GreedyPerCallAgent()


def _search(inputs: AgentInputs) -> Agent:
    from dynamiccl.tuning.agents import SearchAgent

    return SearchAgent()


def _static_best(inputs: AgentInputs) -> Agent:
    if inputs.fit is None:
        raise InputError("--agents", None, "static-best is fitted on training episodes; none were given")
    from dynamiccl.tuning.agents import StaticBestAgent

    env, episodes = inputs.fit()
    return StaticBestAgent.fit(env, episodes)


def _ucb_bandit(inputs: AgentInputs) -> Agent:
    from dynamiccl.tuning.agents import OnlineAgent
    from dynamiccl.tuning.online import UCBBandit

    return OnlineAgent(UCBBandit())


def _coordinate_descent(inputs: AgentInputs) -> Agent:
    from dynamiccl.tuning.agents import OnlineAgent
    from dynamiccl.tuning.online import CoordinateDescent

    return OnlineAgent(CoordinateDescent())


def _policy(inputs: AgentInputs) -> Agent | None:
    if not inputs.policy:
        return None
    from dynamiccl.tuning.agents import load_policy_agent

    return load_policy_agent(inputs.policy)


# Names no longer registered, with what replaced them (said when someone asks for one).
RENAMED_AGENTS = {"oracle": "greedy-per-call (the per-call greedy baseline; the reference of every gain share is "
                            "now 'search')"}

AGENTS: dict[str, AgentEntry] = {
    "nccl-default": AgentEntry(_nccl_default, "NCCL's own choice for every call"),
    "random": AgentEntry(_random, "uniform over the valid actions"),
    "search": AgentEntry(_search, "the best decision table for the case, searched by whole-step replay: the "
                                  "reference of every gain share (evaluate always runs it)"),
    "greedy-per-call": AgentEntry(_greedy_per_call, "per call, the cheapest action in the simulator's state now "
                                                    "(a greedy baseline, not an optimum)"),
    "static-best": AgentEntry(_static_best, "one action per (coll, log2 size, nranks, nnodes), fitted offline"),
    "ucb-bandit": AgentEntry(_ucb_bandit, "UCB1 bandit over measured call durations, online"),
    "coordinate-descent": AgentEntry(_coordinate_descent, "AutoCCL-style coordinate descent, online"),
    "policy": AgentEntry(_policy, "the trained policy or decision table given with --policy", baseline=False),
}


def make_agents(names: Sequence[str], inputs: AgentInputs) -> list[Agent]:
    """The registered agents ``names``, in order (those not applicable, e.g. "policy" without a
    policy file, are left out).

    Raises:
        InputError: an unknown name (listing the registered ones), or an agent that cannot be built.
    """
    agents = []
    for name in names:
        if name not in AGENTS:
            renamed = f" ({name!r} is now {RENAMED_AGENTS[name]})" if name in RENAMED_AGENTS else ""
            raise InputError("--agents", None, f"unknown agent {name!r}{renamed}; expected some of {', '.join(AGENTS)}")
        agent = AGENTS[name].build(inputs)
        if agent is not None:
            agents.append(agent)
    return agents


__all__ = ["AGENTS", "RENAMED_AGENTS", "AgentEntry", "AgentInputs", "make_agents"]
