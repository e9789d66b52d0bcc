"""nccl-tests-style size sweeps and tables: what ``dynamiccl simulate`` prints.

Sizes accept nccl-tests' suffixes (``8``, ``1K``, ``8M``, ``8G``; powers of 1024 as nccl-tests'
``parsesize``). Columns follow nccl-tests (size, count, type, redop, time, algbw, busbw) with the
algorithm, protocol and channels used appended, so the two outputs can be put side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl.errors import InputError
from dynamiccl.nccl import OP_FUNC, REDUCING_FUNCS, SHARDED_OPS, Algorithm, Protocol, busbw_factor

_SUFFIX = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def parse_size(text: str, flag: str = "-b") -> int:
    """``"8"``, ``"1K"``, ``"64M"``, ``"8G"`` -> bytes. Raises InputError naming ``flag``."""
    value = str(text).strip().upper().removesuffix("B")
    suffix = value[-1:] if value[-1:] in "KMGT" and value[-1:] else ""
    number = value[: len(value) - len(suffix)]
    try:
        size = float(number) * _SUFFIX[suffix]
    except ValueError:
        raise InputError(flag, None, f"expected a size like 8, 1K, 64M or 8G, got {text!r}") from None
    if size < 0 or size != int(size):
        raise InputError(flag, None, f"expected a whole number of bytes >= 0, got {text!r}")
    return int(size)


def sweep_sizes(min_bytes: int, max_bytes: int, factor: float = 2.0, step_bytes: int = 0) -> list[int]:
    """nccl-tests' size sweep: multiply by ``factor`` (``-f``) or add ``step_bytes`` (``-i``).

    Raises:
        InputError: an empty or endless sweep.
    """
    if min_bytes > max_bytes:
        raise InputError("-b/-e", None, f"minimum size {min_bytes} is larger than maximum {max_bytes}")
    if step_bytes <= 0 and factor <= 1:
        raise InputError("-f", None, f"expected a factor > 1, got {factor:g}")
    sizes, size = [], max(min_bytes, 0)
    while size <= max_bytes:
        sizes.append(int(size))
        size = size + step_bytes if step_bytes > 0 else (size * factor if size > 0 else 1)
        if len(sizes) > 10000:
            raise InputError("-b/-e/-f", None, "more than 10000 sizes in the sweep")
    return sizes


@dataclass(frozen=True)
class Row:
    """One line of a sweep: a size and what the cost model says about it."""

    size_bytes: int
    count: int
    dtype: str
    redop: str
    time_us: float
    algbw_gbytes_per_s: float
    busbw_gbytes_per_s: float
    algo: int
    proto: int
    channels: int

    def to_json(self) -> dict:
        return {"size_bytes": self.size_bytes, "count": self.count, "type": self.dtype, "redop": self.redop,
                "algo": _algo_name(self.algo), "proto": _proto_name(self.proto), "channels": self.channels,
                "time_us": self.time_us, "algbw_gbytes_per_s": self.algbw_gbytes_per_s, "busbw_gbytes_per_s": self.busbw_gbytes_per_s}


def _algo_name(algo: int) -> str:
    return Algorithm(algo).name_lower if algo >= 0 else "-"


def _proto_name(proto: int) -> str:
    return Protocol(proto).name_lower if proto >= 0 else "-"


def make_row(op: str, nranks: int, size_bytes: int, dtype: str, dtype_bytes: int, time_us: float,
             algo: int, proto: int, channels: int) -> Row:
    """A :class:`Row` with nccl-tests' count, algbw and busbw derived from ``time_us``; ``op`` is a
    trace op or "sendrecv" (``nccl.nccl_tests_op``)."""
    count = size_bytes // dtype_bytes // (nranks if op in SHARDED_OPS else 1)
    algbw = size_bytes / (1000.0 * time_us) if time_us > 0 and time_us != float("inf") else 0.0
    busbw = algbw * busbw_factor(op, nranks)
    redop = "sum" if OP_FUNC.get(op) in REDUCING_FUNCS else "none"
    return Row(size_bytes, count, dtype, redop, time_us, algbw, busbw, algo, proto, channels)


def format_table(rows: list[Row], header: list[str]) -> str:
    """nccl-tests' table: ``#`` header lines, then one aligned line per size."""
    lines = [f"# {h}" for h in header]
    lines.append(f"#{'size':>12} {'count':>12} {'type':>8} {'redop':>6} {'time':>10} {'algbw':>8} {'busbw':>8}"
                 f"  {'algo':<14} {'proto':<6} {'channels':>8}")
    lines.append(f"#{'(B)':>12} {'(elements)':>12} {'':>8} {'':>6} {'(us)':>10} {'(GB/s)':>8} {'(GB/s)':>8}")
    for r in rows:
        time = f"{r.time_us:10.2f}" if r.time_us != float("inf") else f"{'n/a':>10}"
        lines.append(f" {r.size_bytes:>12} {r.count:>12} {r.dtype:>8} {r.redop:>6} {time} {r.algbw_gbytes_per_s:8.2f} "
                     f"{r.busbw_gbytes_per_s:8.2f}  {_algo_name(r.algo):<14} {_proto_name(r.proto):<6} {r.channels:>8}")
    return "\n".join(lines)
