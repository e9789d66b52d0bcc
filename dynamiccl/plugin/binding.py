"""Load the tuner plugin with ctypes and drive it as NCCL does.

NCCL looks up ``ncclTunerPlugin_v6`` ... ``_v2`` with dlsym, calls ``init`` once per communicator,
``getCollInfo`` for each collective it plans (with its cost table, a ``float[7][3]`` passed as
``float**``, and ``*nChannels`` = 0), and ``finalize``/``destroy`` at the end. ``Communicator``
does exactly that for any ABI version, on either variant of the plugin: ``TunerLibrary`` is the
production ``libnccl-tuner-dynamiccl.so`` (only NCCL's symbols), ``InstrumentedTunerLibrary`` the
instrumented one, whose own entry points (override, counters, the table parser, reset) it wraps
for tests, ``dynamiccl doctor``, table checks and live measurement.
"""

from __future__ import annotations

import ctypes
import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dynamiccl.errors import InputError
from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS, Func, nccl_argmin
from dynamiccl.plugin import ABI_VERSIONS

# The C side's numbers (tuner.h, tuner_abi.h; tests/test_plugin_abi.py compares them).
_ERR_BYTES = 512  # DCCL_ERR_BYTES: room for any parse error
LOG_WARN = 2  # ncclDebugLogLevel
LOG_INFO = 3
LOG_FLAG_TUNING = 0x40  # NCCL_TUNING, the subsystem flag of every message the plugin logs

# ncclDebugLogger_t is variadic; the plugin always logs through the format "%s", so the message is
# the first variadic argument, which the x86-64 and AArch64 Linux ABIs pass like a sixth argument.
LOGGER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int,
                          ctypes.c_char_p, ctypes.c_char_p)

_VOIDPP = ctypes.POINTER(ctypes.c_void_p)
_INTP = ctypes.POINTER(ctypes.c_int)
_INIT_V2 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, LOGGER, _VOIDPP)
_INIT_V5 = ctypes.CFUNCTYPE(ctypes.c_int, _VOIDPP, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_size_t,
                            LOGGER, ctypes.c_void_p, ctypes.c_void_p)
_GET_V2 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_int, ctypes.c_int, _INTP, _INTP, _INTP)
_GET_V3 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_void_p, ctypes.c_int, ctypes.c_int, _INTP)
_GET_V4 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, _INTP)
_FINI = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_CHUNK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t))


def _struct(name: str, fields: list[tuple[str, object]]):
    return type(name, (ctypes.Structure,), {"_fields_": [("name", ctypes.c_char_p), *fields]})


# The struct layouts NCCL reads (NVIDIA/nccl src/include/plugin/tuner/tuner_v2.h .. tuner_v6.h): the
# field order is the ABI.
PLUGIN_STRUCTS = {
    2: _struct("TunerV2", [("init", _INIT_V2), ("getCollInfo", _GET_V2), ("destroy", _FINI)]),
    3: _struct("TunerV3", [("init", _INIT_V2), ("getCollInfo", _GET_V3), ("destroy", _FINI)]),
    4: _struct("TunerV4", [("init", _INIT_V2), ("getCollInfo", _GET_V4), ("destroy", _FINI)]),
    5: _struct("TunerV5", [("init", _INIT_V5), ("getCollInfo", _GET_V4), ("finalize", _FINI)]),
    6: _struct("TunerV6", [("init", _INIT_V5), ("getCollInfo", _GET_V4), ("finalize", _FINI),
                           ("getChunkSize", _CHUNK)]),
}


class NvlDomainInfo(ctypes.Structure):
    """``ncclNvlDomainInfo_v5_t``."""

    _fields_ = [("nNvlDomains", ctypes.c_int), ("minRanksPerNvlDomain", ctypes.c_int),
                ("maxRanksPerNvlDomain", ctypes.c_int)]


@dataclass(frozen=True)
class LogRecord:
    """One message the plugin gave NCCL's logger."""

    level: int
    flags: int
    message: str


@dataclass(frozen=True)
class CallResult:
    """What one getCollInfo call left behind.

    ``cost_table``: the 7x3 table after the plugin (None for ABI v2, which has none);
    ``n_channels``: ``*nChannels`` (0 = NCCL decides); ``algorithm``/``protocol``: what NCCL runs
    -- its arg-min over the table (:func:`dynamiccl.nccl.nccl_argmin`; -1 if every cell is
    disabled) for v3+, the plugin's outputs for v2 (-1 = NCCL decides); ``return_code``:
    getCollInfo's ncclResult_t.
    """

    cost_table: list[list[float]] | None
    n_channels: int
    algorithm: int
    protocol: int
    return_code: int


class DecisionSource(enum.IntEnum):
    """Who decided a call: ``dccl_source_t`` in tuner.h (a test compares them)."""

    NONE = -1  # no call decided yet
    NCCL = 0  # no rule applied
    RULE = 1
    OVERRIDE = 2
    REFUSED = 3  # the override asked for a cell NCCL disabled


class _Counters(ctypes.Structure):
    """``dccl_counters_t``."""

    _fields_ = [("calls", ctypes.c_longlong), ("ruled", ctypes.c_longlong), ("overridden", ctypes.c_longlong),
                ("refused", ctypes.c_longlong), ("chunk_calls", ctypes.c_longlong), ("chunk_set", ctypes.c_longlong)]


class _Decision(ctypes.Structure):
    """``dccl_decision_t``."""

    _fields_ = [("algorithm", ctypes.c_int), ("protocol", ctypes.c_int), ("channels", ctypes.c_int),
                ("rule", ctypes.c_int), ("position", ctypes.c_int), ("source", ctypes.c_int),
                ("chunk_bytes", ctypes.c_longlong), ("chunk_returned", ctypes.c_longlong)]


class TunerLibrary:
    """A tuner plugin library as NCCL sees it, loaded once per process (as NCCL does) from ``path``.

    Raises:
        OSError: if the library cannot be loaded.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(self.path))
        self.logs: list[LogRecord] = []
        # Kept referenced for the life of the library: the plugin stores the pointer.
        self._logger = LOGGER(self._log)

    def _log(self, level, flags, _file, _line, fmt, message) -> None:
        text = message.decode("utf-8", "replace") if fmt == b"%s" and message else (fmt or b"").decode()
        self.logs.append(LogRecord(level, flags, text))

    def exported_abi_versions(self) -> list[int]:
        """The ``ncclTunerPlugin_vN`` symbols the library exports, newest first."""
        return [v for v in ABI_VERSIONS if hasattr(self.lib, f"ncclTunerPlugin_v{v}")]

    def plugin(self, version: int):
        """The ``ncclTunerPlugin_v<version>`` struct, read through its ABI layout."""
        return PLUGIN_STRUCTS[version].in_dll(self.lib, f"ncclTunerPlugin_v{version}")

    def open(self, version: int, nranks: int, nnodes: int, comm_id: int = 0,
             logger: bool = True) -> Communicator:
        """Call ``init`` as NCCL does at the end of communicator init; returns the communicator."""
        return Communicator(self, version, nranks, nnodes, comm_id, logger)



class InstrumentedTunerLibrary(TunerLibrary):
    """``libnccl-tuner-dynamiccl-instrumented.so``: NCCL's view plus dynamiccl's own entry points.

    Raises:
        OSError: if the library cannot be loaded.
        AttributeError: if it lacks an entry point (a production or foreign library).
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.lib.dynamiccl_tuner_override.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_longlong,
                                                      ctypes.c_longlong]
        self.lib.dynamiccl_tuner_stats.argtypes = [ctypes.POINTER(_Counters), ctypes.POINTER(_Decision)]
        self.lib.dynamiccl_tuner_stats.restype = None
        self.lib.dynamiccl_tuner_supported.argtypes = [ctypes.c_int] * 3
        self.lib.dynamiccl_tuner_parse.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                                   ctypes.c_size_t, ctypes.POINTER(ctypes.c_long)]
        self.lib.dynamiccl_tuner_parse.restype = ctypes.c_long
        self.lib.dynamiccl_tuner_check_file.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                                        ctypes.POINTER(ctypes.c_long)]
        self.lib.dynamiccl_tuner_check_file.restype = ctypes.c_long
        self.lib.dynamiccl_tuner_version.restype = ctypes.c_char_p
        self.lib.dynamiccl_tuner_reset.argtypes = []

    @property
    def version(self) -> str:
        """The plugin's version string (the production library built with it is the same code)."""
        return self.lib.dynamiccl_tuner_version().decode()

    def override(self, algorithm: int = -1, protocol: int = -1, channels: int = -1, chunk_bytes: int = -1,
                 count: int = 1) -> None:
        """Force the next ``count`` decisions of this process (-1: until cleared; 0: clear): their
        algorithm, protocol, channels and the chunk size (bytes) getChunkSize then gives NCCL for
        them (as a rule's: only in the forced cell; -1 keeps NCCL's; a power of two 4 KiB .. 64 MiB).

        Raises:
            ValueError: for an argument out of range.
        """
        if self.lib.dynamiccl_tuner_override(int(algorithm), int(protocol), int(channels), int(chunk_bytes),
                                             int(count)) != 0:
            raise ValueError(f"override out of range: algorithm {algorithm}, protocol {protocol}, "
                             f"channels {channels}, chunk_bytes {chunk_bytes}, count {count}")

    def clear_override(self) -> None:
        """End a forced choice: NCCL and the table decide again."""
        self.override(count=0)

    def stats(self) -> dict:
        """Counters since load/reset (getCollInfo: calls, ruled, overridden, refused; getChunkSize:
        chunk_calls, chunk_set -- those it gave a chunk) and the last decision (``last``: algorithm,
        protocol, channels (0 = NCCL's), rule index (-1 none), position (-1 unknown), source: the
        lower-case ``DecisionSource`` name, chunk_bytes: the chunk it asks for (-1 NCCL's),
        chunk_returned: what the last getChunkSize since it left in ``*chunkSize``, bytes (-1: none))."""
        counters, last = _Counters(), _Decision()
        self.lib.dynamiccl_tuner_stats(ctypes.byref(counters), ctypes.byref(last))
        decision = {name: getattr(last, name) for name, _ in _Decision._fields_}
        decision["source"] = DecisionSource(last.source).name.lower()
        return {**{name: getattr(counters, name) for name, _ in _Counters._fields_}, "last": decision}

    def supported(self, coll: int, algorithm: int, protocol: int) -> bool:
        """Whether NCCL can run (collective, algorithm, protocol) at all: the parser's support rule."""
        return bool(self.lib.dynamiccl_tuner_supported(coll, algorithm, protocol))

    def parse(self, data: bytes) -> tuple[int, int]:
        """Parse table text with the plugin's parser; returns (rules, step lines).

        Raises:
            InputError: with the plugin's message (line and field) if it rejects the text.
        """
        err = ctypes.create_string_buffer(_ERR_BYTES)
        steps = ctypes.c_long(0)
        n = self.lib.dynamiccl_tuner_parse(data, len(data), err, _ERR_BYTES, ctypes.byref(steps))
        if n < 0:
            raise InputError("<plugin table>", None, err.value.decode("utf-8", "replace"))
        return n, steps.value

    def check_file(self, path: str | os.PathLike) -> tuple[int, int]:
        """Read and check a table file exactly as the plugin's init would; (rules, step lines).

        Raises:
            InputError: naming the file, with the plugin's message, if the plugin would ignore it.
        """
        err = ctypes.create_string_buffer(_ERR_BYTES)
        steps = ctypes.c_long(0)
        n = self.lib.dynamiccl_tuner_check_file(os.fsencode(path), err, _ERR_BYTES, ctypes.byref(steps))
        if n < 0:
            raise InputError(path, None, err.value.decode("utf-8", "replace"))
        return n, steps.value

    def reset(self) -> None:
        """Forget the loaded table (the next init reads ``$DYNAMICCL_TUNER_TABLE`` again).

        Raises:
            RuntimeError: while communicators are still open.
        """
        if self.lib.dynamiccl_tuner_reset() != 0:
            raise RuntimeError("communicators are still open; close them before reset()")
        self.logs.clear()


class Communicator:
    """One communicator's plugin context, created by ``init`` and ended by ``close``."""

    def __init__(self, library: TunerLibrary, version: int, nranks: int, nnodes: int, comm_id: int,
                 logger: bool):
        self.library = library
        self.version = version
        self.nranks, self.nnodes = nranks, nnodes
        self.plugin = library.plugin(version)
        self.context = ctypes.c_void_p()
        log = library._logger if logger else LOGGER()
        if version >= 5:
            self._domain = NvlDomainInfo(1, nranks // max(nnodes, 1), nranks // max(nnodes, 1))
            # The constants are opaque to the plugin; NCCL passes a real struct, a zeroed buffer will do.
            self._constants = ctypes.create_string_buffer(4096)
            rc = self.plugin.init(ctypes.byref(self.context), comm_id, nranks, nnodes, log,
                                  ctypes.cast(ctypes.byref(self._domain), ctypes.c_void_p),
                                  ctypes.cast(self._constants, ctypes.c_void_p))
        else:
            rc = self.plugin.init(nranks, nnodes, log, ctypes.byref(self.context))
        self.init_return_code = rc
        self.closed = False

    def coll_info(self, coll: Func | int, nbytes: int, cost_table: Sequence[Sequence[float]] | None = None,
                  num_pipe_ops: int = 1, reg_buff: int = 0, coll_net_support: int = 0,
                  nvls_support: int = 0, num_algo: int = NUM_ALGORITHMS,
                  num_proto: int = NUM_PROTOCOLS) -> CallResult:
        """Call getCollInfo as NCCL's ``ncclGetAlgoInfo`` does.

        ``cost_table``: NCCL's predicted µs per [algorithm][protocol] (-1 = disabled), required for
        ABI v3+; it is copied into a flat ``float[num_algo][num_proto]`` and passed as ``float**``.
        """
        n_channels = ctypes.c_int(0)
        if self.version == 2:
            algorithm, protocol = ctypes.c_int(-1), ctypes.c_int(-1)
            rc = self.plugin.getCollInfo(self.context, int(coll), nbytes, coll_net_support, nvls_support,
                                         num_pipe_ops, ctypes.byref(algorithm), ctypes.byref(protocol),
                                         ctypes.byref(n_channels))
            return CallResult(None, n_channels.value, algorithm.value, protocol.value, rc)
        if cost_table is None:
            raise ValueError(f"ABI v{self.version} passes NCCL's cost table; give cost_table")
        flat = (ctypes.c_float * (num_algo * num_proto))(
            *[float(cost_table[a][p]) for a in range(num_algo) for p in range(num_proto)])
        if self.version == 3:
            rc = self.plugin.getCollInfo(self.context, int(coll), nbytes, num_pipe_ops,
                                         ctypes.cast(flat, ctypes.c_void_p), num_algo, num_proto,
                                         ctypes.byref(n_channels))
        else:
            rc = self.plugin.getCollInfo(self.context, int(coll), nbytes, num_pipe_ops,
                                         ctypes.cast(flat, ctypes.c_void_p), num_algo, num_proto, reg_buff,
                                         ctypes.byref(n_channels))
        table = [[flat[a * num_proto + p] for p in range(num_proto)] for a in range(num_algo)]
        pick = nccl_argmin(table)  # None: every cell disabled, NCCL fails the call
        algorithm, protocol = (int(pick[0]), int(pick[1])) if pick else (-1, -1)
        return CallResult(table, n_channels.value, algorithm, protocol, rc)

    def chunk_size(self, coll: int, nbytes: int, algorithm: int, protocol: int, n_channels: int,
                   chunk_bytes: int | None) -> tuple[int, int | None]:
        """ABI v6 getChunkSize as NCCL's ``calcCollChunking`` calls it, with NCCL's ``chunk_bytes``
        (None: a NULL pointer); returns (return code, the chunk size after the plugin)."""
        value = None if chunk_bytes is None else ctypes.c_size_t(chunk_bytes)
        rc = self.plugin.getChunkSize(self.context, int(coll), nbytes, int(algorithm), int(protocol), n_channels,
                                      None if value is None else ctypes.byref(value))
        return rc, None if value is None else value.value

    def close(self) -> int:
        """``finalize`` (v5+) or ``destroy`` (v2..v4); returns its ncclResult_t."""
        if self.closed:
            return 0
        self.closed = True
        end: Callable = self.plugin.finalize if self.version >= 5 else self.plugin.destroy
        return end(self.context)

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
