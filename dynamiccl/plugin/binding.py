"""Load ``libnccl-tuner-dynamiccl.so`` with ctypes and drive it as NCCL does.

NCCL looks up ``ncclTunerPlugin_v6`` ... ``_v2`` with dlsym, calls ``init`` once per communicator,
``getCollInfo`` for each collective it plans (with its cost table, a ``float[7][3]`` passed as
``float**``, and ``*nChannels`` = 0), and ``finalize``/``destroy`` at the end. ``Communicator``
does exactly that for any ABI version, so tests, ``dynamiccl doctor`` and live measurement use
the very library NCCL would load. The plugin's own entry points (override, counters, table
checks) are wrapped by ``TunerLibrary``.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dynamiccl.errors import InputError
from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS, Func
from dynamiccl.plugin import ABI_VERSIONS

_ERR_BYTES = 512
LOG_WARN = 2
LOG_INFO = 3
LOG_FLAG_TUNING = 0x40

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


# The struct layouts NCCL reads (nccl-tuner-abi.md 4.2): the field order is the ABI.
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
    -- its arg-min over the non-negative entries (algorithm-major, first wins) for v3+, the
    plugin's outputs for v2 (-1 = NCCL decides); ``return_code``: getCollInfo's ncclResult_t.
    """

    cost_table: list[list[float]] | None
    n_channels: int
    algorithm: int
    protocol: int
    return_code: int


def nccl_pick(cost_table: Sequence[Sequence[float]]) -> tuple[int, int]:
    """NCCL's selection after the tuner: the minimum non-negative entry, algorithm-major then
    protocol, the first of equal entries; (-1, -1) if every entry is negative (NCCL fails then)."""
    best, pick = math.inf, (-1, -1)
    for a, row in enumerate(cost_table):
        for p, cost in enumerate(row):
            if cost >= 0 and cost < best:
                best, pick = cost, (a, p)
    return pick


class TunerLibrary:
    """The plugin library, loaded once per process (as NCCL does) from ``path``.

    Raises:
        OSError: if the library cannot be loaded.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(self.path))
        self.lib.dynamiccl_tuner_override.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_longlong]
        self.lib.dynamiccl_tuner_stats.argtypes = [ctypes.POINTER(ctypes.c_longlong), _INTP]
        self.lib.dynamiccl_tuner_stats.restype = None
        self.lib.dynamiccl_tuner_supported.argtypes = [ctypes.c_int] * 3
        self.lib.dynamiccl_tuner_parse.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                                   ctypes.c_size_t, ctypes.POINTER(ctypes.c_long)]
        self.lib.dynamiccl_tuner_parse.restype = ctypes.c_long
        self.lib.dynamiccl_tuner_check_file.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                                        ctypes.POINTER(ctypes.c_long)]
        self.lib.dynamiccl_tuner_check_file.restype = ctypes.c_long
        self.lib.dynamiccl_tuner_version.restype = ctypes.c_char_p
        self.logs: list[LogRecord] = []
        # Kept referenced for the life of the library: the plugin stores the pointer.
        self._logger = LOGGER(self._log)

    def _log(self, level, flags, _file, _line, fmt, message) -> None:
        text = message.decode("utf-8", "replace") if fmt == b"%s" and message else (fmt or b"").decode()
        self.logs.append(LogRecord(level, flags, text))

    @property
    def version(self) -> str:
        return self.lib.dynamiccl_tuner_version().decode()

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

    # --- dynamiccl's own entry points ---

    def override(self, algorithm: int = -1, protocol: int = -1, channels: int = -1, count: int = 1) -> None:
        """Force the next ``count`` decisions of this process (-1: until cleared; 0: clear).

        Raises:
            ValueError: for an argument out of range.
        """
        if self.lib.dynamiccl_tuner_override(int(algorithm), int(protocol), int(channels), int(count)) != 0:
            raise ValueError(f"override out of range: algorithm {algorithm}, protocol {protocol}, "
                             f"channels {channels}, count {count}")

    def clear_override(self) -> None:
        self.override(count=0)

    def stats(self) -> dict:
        """Counters since load/reset and the last decision (see tuner.c dynamiccl_tuner_stats)."""
        counts = (ctypes.c_longlong * 4)()
        last = (ctypes.c_int * 6)()
        self.lib.dynamiccl_tuner_stats(counts, last)
        return {"calls": counts[0], "ruled": counts[1], "overridden": counts[2], "refused": counts[3],
                "last": {"algorithm": last[0], "protocol": last[1], "channels": last[2], "rule": last[3],
                         "position": last[4], "source": ("nccl", "rule", "override", "refused")[last[5]]
                         if 0 <= last[5] <= 3 else "none"}}

    def supported(self, coll: int, algorithm: int, protocol: int) -> bool:
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
        algorithm, protocol = nccl_pick(table)
        return CallResult(table, n_channels.value, algorithm, protocol, rc)

    def chunk_size(self, coll: int, nbytes: int, algorithm: int, protocol: int, n_channels: int,
                   chunk_bytes: int) -> tuple[int, int]:
        """ABI v6 getChunkSize: (return code, chunk size after the plugin)."""
        value = ctypes.c_size_t(chunk_bytes)
        rc = self.plugin.getChunkSize(self.context, coll, nbytes, algorithm, protocol, n_channels,
                                      ctypes.byref(value))
        return rc, value.value

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
