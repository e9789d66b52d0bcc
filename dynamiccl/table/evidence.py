"""A table acts only where it has evidence: each acting rule confined to the sizes where it won.

A rule *acts* when it changes what NCCL runs (``not rule.keeps_nccl``). Its *evidence* is what its
choice did to the steps of the cases it was evaluated on: every (case, dynamics state) is replayed
with the table (``TableAgent``, exactly as the plugin applies it) and each call the table changed is
charged what its choice added to the step against NCCL's default in the conditions it met
(:func:`dynamiccl.tuning.attribution.compare_with_default`, in the experiment's cost model).

A rule *won* at a call size (NCCL's nBytes) when, summed over the calls of that size the rule decided,
its choice made the step shorter in **every** replayed (case, state) where the size occurred.
``confine`` keeps each acting rule only on bands of consecutive won sizes -- from the smallest to
the largest won size of a run that no lost size interrupts, under the rule's own keys (collective,
nranks, nnodes, position, ...) -- and writes everything else down as keeping NCCL's choice:

- after each acting rule's bands, a keep-NCCL rule with the rule's keys and byte range (it shadows
  any later rule there, as the unconfined rule did), dropped when no acting rule after it could
  match a call it covers (then it changes nothing);
- at the end, one keep-NCCL rule per collective for every size and communicator, so every call
  matches a rule and ``table lookup``, reports and the plugin say "NCCL's own choice" where the
  table has no evidence.

A size between two won sizes of a band was not itself evaluated; the band interpolates only between
sizes where the same choice won, never beyond them. A call size nobody evaluated, a communicator
shape nobody saw, a collective the rule never decided: NCCL decides.

``confine_to_evidence`` repeats collect-and-confine until no rule changes (cutting a band changes
the conditions its neighbours met), and records per case the step time with and without the final
table in the provenance.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from tqdm.auto import tqdm

from dynamiccl.nccl import KEEP, TUNABLE_FUNCS
from dynamiccl.table.model import MAX_BYTES, DecisionTable, Rule
from dynamiccl.tuning.agents import TableAgent
from dynamiccl.tuning.attribution import compare_with_default

MAX_ROUNDS = 4  # collect-and-confine rounds; in practice the second round changes nothing


# --- evidence --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Evidence:
    """What a table's acting rules did on the replayed cases.

    ``saved_us``: (rule index, nbytes) -> per replayed (case, state) where that rule decided calls
    of that size, the step time they saved against NCCL's default (µs; negative = lost);
    ``episodes``: (case label, state, step time with the table, NCCL's default step time) per
    replay, µs.
    """

    saved_us: dict[tuple[int, int], list[float]]
    episodes: tuple[tuple[str, int, float, float], ...]

    def won(self, rule: int, nbytes: int) -> bool:
        """Whether rule ``rule`` saved step time at size ``nbytes`` in every replay where it decided it."""
        saved = self.saved_us.get((rule, nbytes), ())
        return bool(saved) and all(value > 0.0 for value in saved)

    def sizes(self, rule: int) -> list[int]:
        """The call sizes (bytes) rule ``rule`` decided in some replay, ascending."""
        return sorted(nbytes for index, nbytes in self.saved_us if index == rule)


def collect_evidence(table: DecisionTable, env, episodes: Sequence[tuple[int, int]],
                     progress: bool = False) -> Evidence:
    """Replay ``episodes`` ((case index, dynamics state) of the ``TuningEnv`` ``env``) with ``table``
    and charge every call it changed to the rule that decided it (module docstring).

    Raises:
        InputError: a case that cannot be replayed (from the environment).
    """
    saved: dict[tuple[int, int], list[float]] = {}
    rows = []
    agent = _RuleRecordingAgent(table)
    for case, state in tqdm(list(episodes), disable=not progress, unit="step", desc="evidence", leave=False):
        comparison = compare_with_default(env, agent, case, state)
        rows.append((comparison.case, comparison.state, comparison.step_time_us, comparison.default_step_time_us))
        per_episode: dict[tuple[int, int], float] = {}
        for effect in comparison.effects:
            key = (agent.rule_of_call[effect.call], effect.key.nbytes)
            per_episode[key] = per_episode.get(key, 0.0) - effect.lost_us
        for key, value in per_episode.items():
            saved.setdefault(key, []).append(value)
    return Evidence(saved, tuple(rows))


class _RuleRecordingAgent(TableAgent):
    """``TableAgent`` that also records, per call of the episode, the index of the rule that decided
    it (None: no rule applied)."""

    def __init__(self, table: DecisionTable) -> None:
        super().__init__(table, name="table")
        self.rule_of_call: dict[int, int | None] = {}

    def act(self, env, obs, mask) -> int:
        action = super().act(env, obs, mask)
        cache = self._cache(env)  # TableAgent's per-case cache: the plugin's positions are in it
        call = dataclasses.replace(env.pending_call(), position=cache["positions"][env.pending])
        rules = cache.setdefault("rules", {})
        if call not in rules:
            rules[call] = self.table.choose(env.nccl_costs(), call).rule_index
        self.rule_of_call[env.pending] = rules[call]
        return action


# --- confining -------------------------------------------------------------------------------------

def keep_nccl(rule: Rule) -> Rule:
    """``rule``'s keys and byte range, keeping NCCL's algorithm, protocol and channels."""
    return dataclasses.replace(rule, algorithm=None, protocol=None, channels=KEEP)


def catch_all_rules() -> tuple[Rule, ...]:
    """One keep-NCCL rule per tunable collective, for every size and communicator."""
    return tuple(Rule(coll=func, min_bytes=0, max_bytes=MAX_BYTES) for func in TUNABLE_FUNCS)


def won_bands(rule: Rule, evidence: Evidence, index: int) -> list[tuple[int, int]]:
    """(min_bytes, max_bytes) of each run of consecutive won sizes of rule ``index`` (module docstring)."""
    bands: list[tuple[int, int]] = []
    run: list[int] = []
    for nbytes in evidence.sizes(index) + [None]:
        if nbytes is not None and rule.min_bytes <= nbytes <= rule.max_bytes and evidence.won(index, nbytes):
            run.append(nbytes)
            continue
        if run:
            bands.append((run[0], run[-1]))
        run = []
    return bands


def confine(table: DecisionTable, evidence: Evidence) -> DecisionTable:
    """``table`` with every acting rule cut to its won bands and the rest kept as NCCL's choice
    (module docstring). Steps, communicators, job_env and version are kept; provenance too (the caller adds the
    evidence record)."""
    rules: list[Rule] = []
    for index, rule in enumerate(table.rules):
        if rule.keeps_nccl:
            rules.append(rule)
            continue
        rules += [dataclasses.replace(rule, min_bytes=low, max_bytes=high)
                  for low, high in won_bands(rule, evidence, index)]
        rules.append(keep_nccl(rule))
    return dataclasses.replace(table, rules=_pruned(rules + list(catch_all_rules())))


def _pruned(rules: list[Rule]) -> tuple[Rule, ...]:
    """Drop rules that change nothing: a repeat of an earlier rule (never reached), and a keep-NCCL
    rule that shadows no later acting rule (the catch-all keeps NCCL's choice there too). The
    catch-all rules at the end always stay."""
    unique: list[Rule] = []
    seen: set[Rule] = set()
    for rule in rules:
        if rule not in seen:
            seen.add(rule)
            unique.append(rule)
    catch_all = set(catch_all_rules())
    kept: list[Rule] = []
    for position, rule in enumerate(unique):
        if rule.keeps_nccl and rule not in catch_all and not any(
                not later.keeps_nccl and rule.overlaps(later) for later in unique[position + 1:]):
            continue
        kept.append(rule)
    return tuple(kept)


def confine_to_evidence(table: DecisionTable, env, episodes: Sequence[tuple[int, int]], *,
                        progress: bool = False) -> tuple[DecisionTable, Evidence]:
    """Collect evidence for ``table`` on ``episodes`` of ``env`` and confine it, until no rule
    changes (at most ``MAX_ROUNDS`` rounds); returns the confined table, with an ``evidence`` entry
    in its provenance, and the evidence of its last replay (the final table's own).

    Raises:
        InputError: a case that cannot be replayed.
    """
    current = table
    rounds = 0
    while True:
        evidence = collect_evidence(current, env, episodes, progress)
        if rounds == MAX_ROUNDS:
            break
        confined = confine(current, evidence)
        rounds += 1
        if confined.rules == current.rules:
            break
        current = confined
    record = evidence_record(current, evidence, rounds)
    return dataclasses.replace(current, provenance={**current.provenance, "evidence": record}), evidence


def evidence_record(table: DecisionTable, evidence: Evidence, rounds: int) -> dict:
    """The provenance entry of a confined table: how it was confined, per acting rule what it saved
    (µs per replayed step, mean over the replays where it acted) and per case the step times."""
    acting = []
    for index, rule in enumerate(table.rules):
        if rule.keeps_nccl:
            continue
        saved = [sum(values) / len(values) for (i, _), values in evidence.saved_us.items() if i == index]
        acting.append({"rule": index, "sizes": len(saved), "saved_us_per_step": round(sum(saved), 3)})
    cases: dict[str, dict] = {}
    for label, state, step_us, default_us in evidence.episodes:
        entry = cases.setdefault(label, {"states": [], "log_ratio": 0.0})
        entry["states"].append(state)
        entry["log_ratio"] += math.log(default_us / step_us)
    return {
        "method": "dynamiccl.table.evidence.confine_to_evidence",
        "rule": "an acting rule covers only runs of call sizes where its choice saved step time against "
                "NCCL's default in every replayed (case, state); everywhere else NCCL's own choice",
        "rounds": rounds,
        "acting_rules": acting,
        "cases": {label: {"states": entry["states"],
                          "speedup": round(math.exp(entry["log_ratio"] / len(entry["states"])), 6)}
                  for label, entry in cases.items()},
    }


__all__ = ["Evidence", "MAX_ROUNDS", "catch_all_rules", "collect_evidence", "confine", "confine_to_evidence",
           "evidence_record", "keep_nccl", "won_bands"]
