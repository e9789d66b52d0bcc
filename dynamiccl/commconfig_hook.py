"""Zero-code per-communicator settings: each NCCL process group a job creates gets its table's
``ncclConfig_t`` fields, through PyTorch's ``ProcessGroupNCCL.Options().config``.

``dynamiccl launch --table T`` writes the table's ``communicators`` section to a JSON file (a decision
table without rules) and names it in ``$DYNAMICCL_COMM_CONFIG``; the profiler's autostart
``sitecustomize`` (:mod:`dynamiccl.profiler.run`'s ``autostart_environment``) then calls
:func:`install_from_environment` in every Python process of the job. It wraps
``torch.distributed``'s ``init_process_group``, ``new_group`` and ``split_group`` where they are
looked up (``torch.distributed``, ``distributed_c10d``, ``device_mesh``), so ``new_subgroups``,
``new_subgroups_by_enumeration`` and DeviceMesh (``new_group`` or, with an eagerly initialised NCCL
group, ``split_group``) are covered too. For each group created:

- its kind comes from its description as the profiler reads it
  (:func:`dynamiccl.group_kinds.group_kind`: ``TENSOR_MODEL_PARALLEL_GROUP`` -> tp,
  ``mesh_dp`` -> dp, the default group -> world), its shape from its ranks: ``nranks``, and
  ``nnodes`` counted with ``$LOCAL_WORLD_SIZE`` (torchrun's; ranks are laid out node by node), -1
  when unknown;
- ``DecisionTable.communicator_config(kind, nranks, nnodes)`` (first matching rule) gives the
  :class:`~dynamiccl.knobs.comm_config.CommConfig`; NCCL's defaults: the group is created untouched;
- an NCCL group gets ``pg_options`` = a ``ProcessGroupNCCL.Options()`` whose ``.config`` carries the
  fields the config sets (``min_ctas``, ``max_ctas``, ``cga_cluster_size``, and ``cta_policy`` /
  ``nvls_ctas`` where the installed torch's ``NCCLConfig`` binding has them; a field it lacks is said
  once, never dropped silently);
- ``pg_options`` the user's code passes are kept (theirs wins; said once);
- a group that is not NCCL's (gloo) gets nothing: the record of what an NCCL group would get is
  built and said (that is how the plumbing is tested on CPU machines).

It fails open: if anything here breaks, the group is created exactly as the user's code asked and
one line says so. Lines start with ``dynamiccl comm-config:`` on stderr; notes come from rank 0
only (each distinct one once), failures from every rank.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field

from dynamiccl.group_kinds import group_kind
from dynamiccl.knobs.comm_config import CTA_POLICY_VALUE, CommConfig

ENV_FILE = "DYNAMICCL_COMM_CONFIG"
PREFIX = "dynamiccl comm-config: "
WRAPPED_APIS = ("init_process_group", "new_group", "split_group")
# Modules that hold the functions under those names (device_mesh imports them by name).
WRAPPED_MODULES = ("torch.distributed", "torch.distributed.distributed_c10d", "torch.distributed.device_mesh")
# CommConfig's fields; PyTorch's NCCLConfig binding names them the same (torch/csrc/distributed/c10d/
# init.cpp: cga_cluster_size, min_ctas, max_ctas; cta_policy in newer builds, NCCL_CTA_POLICY_* on
# ProcessGroupNCCL).
NCCL_CONFIG_FIELDS = tuple(CommConfig.__dataclass_fields__)
DEFAULT_GROUP_DESC = "default_pg"  # what torch names the group init_process_group creates

_active: "CommConfigHook | None" = None


@dataclass
class GroupRecord:
    """What the hook did for one group creation.

    ``config``: the table's fields for the group (``CommConfig.set_fields()``); ``fields``: those put
    on the options' ``.config`` (``cta_policy`` as NCCL's integer); ``lacking``: fields the installed
    torch's binding has no attribute for; ``outcome``: ``passed`` (an NCCL group got the options),
    ``not-nccl`` (built, not passed), ``user-options`` (the user's pg_options kept),
    ``nccl-default`` (nothing to set), ``no-options-class`` (torch has no ProcessGroupNCCL.Options)
    or ``hook-error``; ``options_type``: the class of the options object built, if one was.
    """

    api: str
    desc: str
    kind: str
    nranks: int
    nnodes: int
    backend: str
    config: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    lacking: list = field(default_factory=list)
    outcome: str = ""
    options_type: str = ""


def nccl_options_class():
    """PyTorch's ``ProcessGroupNCCL.Options``, or None where torch has no NCCL (CPU builds)."""
    import torch.distributed as dist

    group_class = getattr(dist, "ProcessGroupNCCL", None)
    return getattr(group_class, "Options", None)


def binding_fields(options_class) -> tuple[list[str], list[str]]:
    """(fields the options' ``.config`` has, fields it lacks), of :data:`NCCL_CONFIG_FIELDS`."""
    config = options_class().config
    has = [name for name in NCCL_CONFIG_FIELDS if hasattr(config, name)]
    return has, [name for name in NCCL_CONFIG_FIELDS if name not in has]


def cta_policy_value(policy: str) -> int:
    """NCCL's integer for a CTA policy name: torch's ``ProcessGroupNCCL.NCCL_CTA_POLICY_<NAME>`` where
    it has one, else NCCL's flag value (``nccl.h``: DEFAULT 0, EFFICIENCY 1, ZERO 2)."""
    import torch.distributed as dist

    constant = getattr(getattr(dist, "ProcessGroupNCCL", None), f"NCCL_CTA_POLICY_{policy.upper()}", None)
    return int(constant) if constant is not None else CTA_POLICY_VALUE[policy]


def build_options(config: CommConfig, options_class) -> tuple[object, dict, list[str]]:
    """An ``options_class()`` whose ``.config`` carries the fields ``config`` sets.

    Returns:
        (the options, {field: value set}, [fields the options' ``.config`` has no attribute for]).

    Raises:
        whatever the options class raises (the hook then fails open).
    """
    options = options_class()
    nccl_config = options.config
    fields, lacking = {}, []
    for name, value in config.set_fields().items():
        if name == "cta_policy":
            value = cta_policy_value(value)
        if hasattr(nccl_config, name):
            setattr(nccl_config, name, value)
            fields[name] = value
        else:
            lacking.append(name)
    return options, fields, lacking


def nodes_spanned(ranks, local_world_size: int | None) -> int:
    """How many nodes ``ranks`` (global ranks) span, with ``local_world_size`` ranks per node laid out
    node by node (torchrun's layout); -1 when the ranks per node are unknown."""
    if not local_world_size or local_world_size < 1:
        return -1
    return len({int(rank) // local_world_size for rank in ranks})


def _local_world_size() -> int | None:
    try:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        return None


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


class CommConfigHook:
    """Gives each process group the table's ``ncclConfig_t`` fields (see the module docstring).

    Args:
        table: a :class:`~dynamiccl.table.DecisionTable`; only ``communicator_config`` is used.
        options_class: the options type to build (default: torch's ``ProcessGroupNCCL.Options``,
            None on CPU builds).
        out: where lines go (default stderr).
    """

    def __init__(self, table, options_class=inspect.Parameter.empty, out=None):
        self.table = table
        self.options_class = nccl_options_class() if options_class is inspect.Parameter.empty else options_class
        self.out = out
        self.records: list[GroupRecord] = []
        self._said: set[str] = set()
        self._patched: list[tuple[object, str, object]] = []

    # --- what is said ---

    def say(self, line: str, key: str | None = None, every_rank: bool = False) -> None:
        """Print ``line`` once per ``key`` (default: the line), from rank 0 unless ``every_rank``."""
        key = line if key is None else key
        if key in self._said or not (every_rank or _is_rank_zero()):
            return
        self._said.add(key)
        print(PREFIX + line, file=self.out or sys.stderr, flush=True)

    # --- the decision for one group ---

    def decide(self, api: str, arguments: dict) -> GroupRecord | None:
        """The record for one call of ``api`` with its bound ``arguments``; sets
        ``arguments["pg_options"]`` where the group gets options. None: not a group this rank creates.

        Raises:
            anything a broken torch or table raises (the wrapper fails open).
        """
        import torch.distributed as dist

        if api == "init_process_group":
            backend = arguments.get("backend")
            if backend is None:  # torch then takes each device's default backend
                import torch

                backend = "cpu:gloo,cuda:nccl" if self.options_class is not None and torch.cuda.is_available() \
                    else "cpu:gloo"
            world_size = arguments.get("world_size", -1)
            if world_size is None or world_size < 1:
                world_size = int(os.environ.get("WORLD_SIZE", "-1"))
            ranks = list(range(world_size)) if world_size > 0 else []
            desc = DEFAULT_GROUP_DESC
        else:
            world_size = dist.get_world_size()
            desc = arguments.get("group_desc") or ""
            if api == "new_group":
                backend = arguments.get("backend") or dist.get_backend()
                ranks = list(arguments.get("ranks") or range(world_size))
            else:  # split_group: this rank's part of split_ranks, in the parent's ranks
                parent = arguments.get("parent_pg") or dist.distributed_c10d._get_default_group()
                backend = dist.get_backend(parent)
                parent_ranks = dist.get_process_group_ranks(parent)
                me = dist.get_rank()
                ranks = next(([parent_ranks[r] for r in part] for part in arguments.get("split_ranks") or ()
                              if me in [parent_ranks[r] for r in part]), None)
                if ranks is None:
                    return None
        backend = str(backend) if backend is not None else "default"
        nranks = len(ranks) if ranks else -1
        nnodes = nodes_spanned(ranks, _local_world_size()) if ranks else -1
        kind = group_kind(desc, nranks, world_size)
        config = self.table.communicator_config(kind, nranks, nnodes)
        record = GroupRecord(api, desc, kind, nranks, nnodes, backend, config.set_fields())
        where = (f"group {desc or '(no description)'} ({kind}, {nranks} rank(s) on "
                 f"{nnodes if nnodes > 0 else 'unknown'} node(s), backend {backend})")
        if nnodes < 0 and ranks:
            self.say("LOCAL_WORLD_SIZE is not set: node counts are unknown, so only rules for any node count "
                     "match", key="nnodes")
        if config.is_default:
            record.outcome = "nccl-default"
            return record
        if arguments.get("pg_options") is not None:
            record.outcome = "user-options"
            self.say(f"{where}: kept the pg_options your code passes (yours win over the table's "
                     f"{config.describe()}; said once)", key="user-options")
            return record
        if self.options_class is None:
            record.outcome = "no-options-class"
            record.fields = dict(config.set_fields())
            if "cta_policy" in record.fields:
                record.fields["cta_policy"] = cta_policy_value(record.fields["cta_policy"])
            self.say(f"{where}: would set {config.describe()}, but this torch has no ProcessGroupNCCL.Options "
                     "(a build without NCCL): nothing passed")
            return record
        options, record.fields, record.lacking = build_options(config, self.options_class)
        record.options_type = f"{type(options).__module__}.{type(options).__qualname__}"
        for name in record.lacking:
            self.say(f"torch's ProcessGroupNCCL.Options().config has no {name}: {name} is not applied to any "
                     "group (a newer torch binds it)", key=f"lacking:{name}")
        shown = " ".join(f"config.{k}={v}" for k, v in record.fields.items()) or "nothing"
        if "nccl" in backend.lower():
            arguments["pg_options"] = options
            record.outcome = "passed"
            self.say(f"{where}: {config.describe()} -> pg_options {shown}")
        else:
            record.outcome = "not-nccl"
            self.say(f"{where}: would pass ProcessGroupNCCL.Options with {shown} ({config.describe()}); "
                     "not an NCCL group: not passed")
        return record

    # --- the wrappers ---

    def wrap(self, api: str, original):
        """``original`` (a torch.distributed group constructor) with the table's options applied."""
        # The real signature, also through a wrapper another tool put there (functools.wraps).
        signature = inspect.signature(inspect.unwrap(original))
        position = list(signature.parameters).index("pg_options")
        hook = self

        def wrapper(*args, **kwargs):
            call_args, call_kwargs = args, kwargs
            try:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                record = hook.decide(api, arguments)
                if record is not None:
                    hook.records.append(record)
                    if record.outcome == "passed":  # the caller's call, with the options in pg_options's place
                        if position < len(args):
                            call_args = args[:position] + (arguments["pg_options"],) + args[position + 1:]
                        else:
                            call_kwargs = {**kwargs, "pg_options": arguments["pg_options"]}
            except Exception as exc:  # fail open: the group exactly as the user's code asked
                hook.records.append(GroupRecord(api, str(kwargs.get("group_desc") or ""), "", -1, -1, "",
                                                outcome="hook-error"))
                hook.say(f"{api}: per-communicator settings not applied ({type(exc).__name__}: {exc}); the "
                         "group is created as your code asked", every_rank=True)
            return original(*call_args, **call_kwargs)

        wrapper.__wrapped__ = original
        wrapper.__doc__ = original.__doc__
        wrapper.__name__ = getattr(original, "__name__", api)
        return wrapper

    def install(self) -> "CommConfigHook":
        """Wrap the group constructors wherever torch holds them; returns self."""
        import importlib

        import torch.distributed.distributed_c10d as c10d

        for api in WRAPPED_APIS:
            original = getattr(c10d, api, None)
            if original is None:  # an older torch (split_group is 2.5+)
                continue
            try:
                wrapper = self.wrap(api, original)
            except Exception as exc:  # fail open for this constructor only
                self.say(f"{api}: not wrapped ({type(exc).__name__}: {exc}); its groups keep NCCL's defaults",
                         every_rank=True)
                continue
            for name in WRAPPED_MODULES:
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
                if getattr(module, api, None) is original:
                    self._patched.append((module, api, original))
                    setattr(module, api, wrapper)
        return self

    def uninstall(self) -> None:
        """Put the original constructors back."""
        for module, api, original in reversed(self._patched):
            setattr(module, api, original)
        self._patched.clear()


def active() -> CommConfigHook | None:
    """The hook installed in this process by :func:`install_from_environment`, if any."""
    return _active


def install_from_environment() -> CommConfigHook | None:
    """Install the hook for the table ``$DYNAMICCL_COMM_CONFIG`` names (once per process).

    Never raises: a table that cannot be read, or a torch without ``torch.distributed``, is one line
    and the job runs with NCCL's per-communicator defaults.
    """
    global _active
    path = os.environ.get(ENV_FILE)
    if not path or _active is not None:
        return _active
    try:
        from dynamiccl.table import load

        _active = CommConfigHook(load(path)).install()
    except Exception as exc:  # fail open
        print(f"{PREFIX}per-communicator settings not applied ({type(exc).__name__}: {exc})", file=sys.stderr,
              flush=True)
    return _active
