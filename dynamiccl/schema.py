"""One schema helper for every TOML and JSON file dynamiccl reads.

A file format is declared once as a :class:`Schema`: its fields with their types, ranges, defaults
and help. ``Schema.parse`` checks a parsed document against it and returns plain values; every
problem is an :class:`~dynamiccl.errors.InputError` in one format, naming the file, the field (as a
dotted path: ``intra.pcie_gen``, ``train.cases[0].env``, ``rules[3].algorithm``) and what was
expected::

    envs/bad.toml: intra.pcie_gen: expected an integer >= 2 and <= 6, got 7
    envs/bad.toml: cluster.gpus: unknown key; expected some of arch, gpu, gpus_per_node, ...
    envs/bad.toml: cluster.nodes: missing (required)

Checks that relate two fields (a batch no larger than a rollout, NVLS only on an NVSwitch fabric)
stay with the format's own code, which raises through :func:`expected` so that they read the same.
``read_toml`` and ``read_json`` turn unreadable, non-UTF-8 and malformed files into the same kind
of error; JSON is read strictly (no NaN or Infinity, no key given twice in one object). Every reader
caps what it reads: a file larger than its ``max_bytes`` (default :data:`MAX_FILE_BYTES`; ``/dev/zero``
never ends), an integer outside 64 bits, or a document nested deeper than the parser's stack is an
error, never a memory kill, an ``OverflowError`` or a ``RecursionError``.

CSV files (measurement tables) are read with :func:`read_csv`, whose rows must have exactly the
header's fields (a file cut mid-row is an error naming its line), and their text cells are checked
against the same :class:`Field` declarations with :func:`parse_cell`.

Command-line values are checked against a :class:`Field` too: :func:`argument` makes an argparse
``type`` whose errors argparse prints as one ``usage`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import stat
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

from dynamiccl.errors import InputError

REQUIRED: Any = object()  # a field without a default: missing is an error

# The largest input file any reader takes, unless it says otherwise: far above every file dynamiccl
# writes or ships (the largest, a 405B trace's decision table or a measurement set, is a few MB), far
# below what would exhaust memory once parsed (Python objects take ~10x the text). TOML files
# (specs, models, configs, sweeps) are written by hand: a few kB.
MAX_FILE_BYTES = 64 * 2**20
MAX_TOML_BYTES = 4 * 2**20
# Integers are 64-bit wherever they go (numpy arrays, Parquet columns, NCCL's int64 counts and size_t
# sizes): a field without its own bound takes -2**63 .. 2**64 - 1 (int64 below, uint64 above).
INT_MIN, INT_MAX, UINT_MAX = -(2**63), 2**63 - 1, 2**64 - 1

_KINDS = ("int", "float", "bool", "str", "choice", "int_list", "float_list", "table", "tables", "mapping", "json",
          "list")


@dataclass(frozen=True)
class Field:
    """One declared field. Build with :func:`integer`, :func:`number`, :func:`flag`, :func:`string`,
    :func:`choice`, :func:`int_list`, :func:`table`, :func:`tables`, :func:`mapping` or
    :func:`json_value`; ``default`` is :data:`REQUIRED` or the value a missing field takes."""

    name: str
    kind: str
    default: Any = REQUIRED
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    choices: tuple = ()
    max_len: int | None = None
    non_empty: bool = False
    schema: "Schema | None" = None  # tables: the schema of the sub-table (or of each list item)
    values: "Field | None" = None   # mapping: the field every value is checked against
    expect: str = ""                # overrides the generated expectation text of errors
    aliases: tuple[str, ...] = ()   # older spellings of the name, still read (never two at once)
    length: int | None = None       # float_list: exactly this many numbers

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def expectation(self) -> str:
        """What a valid value looks like, in words (the ``expected ...`` of an error)."""
        if self.expect:
            return self.expect
        if self.kind in ("int", "float"):
            if self.low == 0 and not self.low_inclusive and self.high is None:
                return "a positive number (> 0)" if self.kind == "float" else "a positive integer (an integer > 0)"
            return f"{'an integer' if self.kind == 'int' else 'a number'}{_bounds(self)}"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return "a non-empty string" if self.non_empty else "a string"
        if self.kind == "choice":
            return f"one of {', '.join(str(c) for c in self.choices)}"
        if self.kind == "int_list":
            return f"a list of at most {self.max_len} integers in {self.low}..{self.high}"
        if self.kind == "float_list":
            return f"a list of {self.length} numbers{_bounds(self)}"
        if self.kind == "table":
            return f"a [{self.name}] table"
        if self.kind == "tables":
            return f"a list of [[{self.name}]] tables"
        if self.kind == "mapping":
            return f"a table of names to {self.values.expectation()}"
        if self.kind == "list":
            return "a list"
        return "a JSON object"


def _bounds(f: Field) -> str:
    def number(value: float) -> str:  # integers in full (a seed's 4294967295, not 4.29497e+09)
        return str(int(value)) if float(value).is_integer() and abs(value) < 2**63 else f"{value:g}"

    parts = []
    if f.low is not None:
        parts.append(f"{'>=' if f.low_inclusive else '>'} {number(f.low)}")
    if f.high is not None:
        parts.append(f"<= {number(f.high)}")
    return (" " + " and ".join(parts)) if parts else ""


def integer(name: str, default: Any = REQUIRED, *, low: int | None = None, high: int | None = None,
            low_inclusive: bool = True, help: str = "", expect: str = "") -> Field:
    """An integer (TOML/JSON integers only: no booleans, no 2.0) within ``low``..``high``."""
    return Field(name, "int", default, help, low, high, low_inclusive, expect=expect)


def number(name: str, default: Any = REQUIRED, *, low: float | None = None, high: float | None = None,
           low_inclusive: bool = True, help: str = "") -> Field:
    """A finite number (integers accepted, returned as float) within ``low``..``high``."""
    return Field(name, "float", default, help, low, high, low_inclusive)


def flag(name: str, default: Any = REQUIRED, *, help: str = "") -> Field:
    """``true`` or ``false``."""
    return Field(name, "bool", default, help)


def string(name: str, default: Any = REQUIRED, *, non_empty: bool = False, help: str = "", expect: str = "") -> Field:
    """A string (``non_empty``: not blank); ``expect`` words what a valid one is in errors."""
    return Field(name, "str", default, help, non_empty=non_empty, expect=expect)


def choice(name: str, choices: tuple, default: Any = REQUIRED, *, help: str = "", expect: str = "") -> Field:
    """One of ``choices`` (equal and of the same type: ``True`` is not ``1``); ``expect`` words what a
    valid one is in errors."""
    return Field(name, "choice", default, help, choices=tuple(choices), expect=expect)


def int_list(name: str, default: Any = REQUIRED, *, low: int, high: int, max_len: int, help: str = "") -> Field:
    """A list of at most ``max_len`` integers in ``low``..``high``; returned as a tuple."""
    return Field(name, "int_list", default, help, low, high, max_len=max_len)


def number_list(name: str, default: Any = REQUIRED, *, length: int, low: float | None = None,
                high: float | None = None, help: str = "") -> Field:
    """A list of exactly ``length`` finite numbers within ``low``..``high``; returned as a list of floats."""
    return Field(name, "float_list", default, help, low, high, length=length)


def table(name: str, schema: "Schema", default: Any = REQUIRED, *, help: str = "") -> Field:
    """A sub-table parsed with ``schema`` (a missing optional one parses as ``{}`` when its default is
    ``{}``, giving every sub-field its default)."""
    return Field(name, "table", default, help, schema=schema)


def tables(name: str, schema: "Schema", default: Any = REQUIRED, *, help: str = "") -> Field:
    """A list of tables (TOML ``[[name]]``, a JSON list of objects), each parsed with ``schema``;
    fields are named ``name[i].key``. Returned as a list of dicts."""
    return Field(name, "tables", default, help, schema=schema)


def mapping(name: str, values: Field, default: Any = REQUIRED, *, help: str = "") -> Field:
    """A table of free names, each value checked against ``values`` (whose name is ignored)."""
    return Field(name, "mapping", default, help, values=values)


def json_list(name: str, default: Any = REQUIRED, *, help: str = "", expect: str = "") -> Field:
    """A JSON list whose items the format's own code checks (e.g. ``[first, last]`` pairs)."""
    return Field(name, "list", default, help, expect=expect)


def formerly(field: Field, *old_names: str) -> Field:
    """``field``, also read under its older names (a renamed key keeps reading old files)."""
    return replace(field, aliases=field.aliases + old_names)


def json_value(name: str, default: Any = REQUIRED, *, help: str = "") -> Field:
    """A JSON object kept as it is (free-form provenance)."""
    return Field(name, "json", default, help)


@dataclass(frozen=True)
class Schema:
    """The declared fields of one table (or of a whole document).

    ``sections``: the fields are a document's top-level tables, so an unknown one is an "unknown
    section" listed as ``[name]``.
    """

    fields: tuple[Field, ...]
    sections: bool = False
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)
    alias_of: dict[str, str] = field(init=False, repr=False, compare=False)

    def __init__(self, *fields: Field, sections: bool = False):
        object.__setattr__(self, "fields", tuple(fields))
        object.__setattr__(self, "sections", sections)
        object.__setattr__(self, "by_name", {f.name: f for f in fields})
        object.__setattr__(self, "alias_of", {alias: f.name for f in fields for alias in f.aliases})
        if len(self.by_name) != len(fields) or set(self.alias_of) & set(self.by_name):
            raise ValueError("a schema declares a field twice")

    def __getitem__(self, name: str) -> Field:
        return self.by_name[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def replace(self, name: str, **changes) -> "Schema":
        """This schema with field ``name`` changed (e.g. a default or bound known only at parse time)."""
        return Schema(*(replace(f, **changes) if f.name == name else f for f in self.fields), sections=self.sections)

    def parse(self, obj: Any, source: str | os.PathLike | None, prefix: str = "") -> dict[str, Any]:
        """Check ``obj`` (a parsed TOML table or JSON object) and return ``{name: value}`` for every
        declared field: the given value, or the default (optional fields without one are absent).

        ``prefix`` is prepended to field names in errors (``"train."``, ``"rules[3]."``).

        Raises:
            InputError: ``obj`` is not a table, or a field is unknown, missing or wrong.
        """
        if not isinstance(obj, dict):
            raise InputError(source, prefix.rstrip(".: ") or None, f"expected a table of keys, got {show(obj)}")
        if self.alias_of:
            obj = self._canonical(obj, source, prefix)
        for key in obj:
            if key not in self.by_name:
                if self.sections:
                    known = ", ".join(f"[{n}]" for n in self.names)
                    raise InputError(source, f"{prefix}{key}", f"unknown section; expected {known}")
                raise InputError(source, f"{prefix}{key}", f"unknown key; expected some of {', '.join(self.names)}")
        out: dict[str, Any] = {}
        for f in self.fields:
            name = f"{prefix}{f.name}"
            if f.name not in obj:
                if f.required:
                    problem = f"missing [{name}] table" if f.kind == "table" else "missing (required)"
                    raise InputError(source, name, problem)
                if f.default is None:
                    continue
                if f.kind in ("table", "tables") and f.default in ({}, []):
                    value = f.default
                else:
                    out[f.name] = f.default
                    continue
            else:
                value = obj[f.name]
            out[f.name] = _check(f, value, source, name)
        return out

    def _canonical(self, obj: dict, source, prefix: str) -> dict:
        """``obj`` with older spellings (``aliases``) renamed to the field names."""
        out = {}
        for key, value in obj.items():
            name = self.alias_of.get(key, key)
            if name in out:
                raise InputError(source, f"{prefix}{key}", f"given twice: as {name} and as its older spelling {key}")
            out[name] = value
        return out

    def help_text(self, prefix: str = "") -> str:
        """One line per field: name, expectation, default and help (for docs and ``--help``)."""
        lines = []
        for f in self.fields:
            default = "" if f.required or f.kind in ("table", "tables") else f" (default {show(f.default)})"
            lines.append(f"{prefix}{f.name}: {f.expectation()}{default}" + (f" -- {f.help}" if f.help else ""))
            if f.schema is not None:
                sub = f"{prefix}{f.name}[]." if f.kind == "tables" else f"{prefix}{f.name}."
                lines.append(f.schema.help_text(sub))
        return "\n".join(lines)


def _check(f: Field, value: Any, source, name: str) -> Any:
    """The checked (and normalised) value of field ``f`` named ``name`` in errors."""
    def bad() -> InputError:
        if f.kind == "table":
            return InputError(source, name, f"missing [{name}] table; got {show(value)}")
        if f.kind == "tables":  # named by its whole path: [[train.cases]]
            return expected(source, name, f"a list of [[{name}]] tables", value)
        if f.kind == "int" and isinstance(value, int) and not isinstance(value, bool) and not _fits(f, value):
            return expected(source, name, f"{f.expectation()} in the 64-bit range ({INT_MIN} .. {UINT_MAX})", value)
        return expected(source, name, f.expectation(), value)

    if f.kind in ("int", "float"):
        if not _number_ok(f, value):
            raise bad()
        return int(value) if f.kind == "int" else float(value)
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if f.kind == "str":
        if not isinstance(value, str) or (f.non_empty and not value.strip()):
            raise bad()
        return value
    if f.kind == "choice":
        if not any(value == c and type(value) is type(c) for c in f.choices):
            raise bad()
        return value
    if f.kind == "int_list":
        if not (isinstance(value, (list, tuple)) and len(value) <= f.max_len
                and all(isinstance(v, int) and not isinstance(v, bool) and f.low <= v <= f.high for v in value)):
            raise bad()
        return tuple(value)
    if f.kind == "float_list":
        if not (isinstance(value, list) and len(value) == f.length
                and all(_number_ok(f, v) for v in value)):
            raise bad()
        return [float(v) for v in value]
    if f.kind == "table":
        if not isinstance(value, dict):
            raise bad()
        return f.schema.parse(value, source, f"{name}.")
    if f.kind == "tables":
        if not isinstance(value, list):
            raise bad()
        return [f.schema.parse(item, source, f"{name}[{i}].") for i, item in enumerate(value)]
    if f.kind == "mapping":
        if not isinstance(value, dict):
            raise bad()
        return {key: _check(f.values, item, source, f"{name}.{key}") for key, item in value.items()}
    if f.kind == "list":
        if not isinstance(value, list):
            raise bad()
        return value
    if not isinstance(value, dict):  # json
        raise bad()
    return value


def _fits(f: Field, value: int) -> bool:
    """An integer within 64 bits on each side the field leaves unbounded (a field bounded beyond,
    such as a ``size_t`` up to 2**64 - 1, keeps its own bound)."""
    return (f.low is not None or value >= INT_MIN) and (f.high is not None or value <= UINT_MAX)


def _number_ok(f: Field, value: Any) -> bool:
    """An integer (``int`` fields) or a finite number, within the field's bounds."""
    if f.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and _fits(f, value)
    else:  # an integer too large for a float (TOML's 1000...0) is not a finite number
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and (isinstance(value, float) or abs(value) < 2**1023) and math.isfinite(value))
    return ok and not ((f.low is not None and (value < f.low if f.low_inclusive else value <= f.low))
                       or (f.high is not None and value > f.high))


def show(value: Any, limit: int = 80) -> str:
    """A value as an error shows it: TOML/JSON spellings for booleans and null, repr otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expected(source: str | os.PathLike | None, field_name: str | None, expectation: str, value: Any) -> InputError:
    """The one error format: ``SOURCE: FIELD: expected EXPECTATION, got VALUE`` (to raise)."""
    return InputError(source, field_name, f"expected {expectation}, got {show(value)}")


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A file's bytes, at most ``max_bytes`` of them; ``what`` names the kind of file in errors.

    A regular file is refused by its size before it is read; anything else (``/dev/zero``, a pipe)
    is read up to one byte past the cap.

    Raises:
        InputError: naming the file: it cannot be read (with the reason), is a directory, or is
            larger than ``max_bytes``.
    """
    source = os.fspath(path)
    too_large = InputError(source, None, f"larger than {max_bytes:,} bytes; not a {what} file (a reader never "
                                         "takes more)")
    try:
        with open(source, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(21, "is a directory")
            if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
                raise too_large
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
        raise InputError(source, None, f"cannot read {what} ({reason})") from None
    if len(data) > max_bytes:
        raise too_large
    return data


def read_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 file's text (at most ``max_bytes``); ``what`` names the kind of file in errors
    ("environment spec").

    Raises:
        InputError: naming the file: it cannot be read (with the reason), is larger than
            ``max_bytes`` or is not UTF-8.
    """
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(os.fspath(path), None, f"not UTF-8 text (byte {exc.start}); {what} files are UTF-8") from None


def read_toml(path: str | os.PathLike, what: str, max_bytes: int = MAX_TOML_BYTES) -> dict:
    """Parse a TOML file of at most ``max_bytes``.

    Raises:
        InputError: naming the file: unreadable, too large, not UTF-8, or not valid TOML (with
            TOML's message).
    """
    text = read_text(path, what, max_bytes)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(os.fspath(path), None, f"not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise InputError(os.fspath(path), None, "not valid TOML: nested too deeply") from None


class _Refused(ValueError):
    """Valid JSON syntax that we refuse: a key given twice in one object, NaN or Infinity."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"duplicate key {key!r} in one object")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def parse_json(text: str | bytes, source: str | os.PathLike | None, field_name: str | None = None, *,
               allow_nan: bool = False) -> Any:
    """Parse JSON strictly: no NaN/Infinity (unless ``allow_nan``: files written before dynamiccl
    wrote undefined numbers as null), no key given twice in one object.

    Raises:
        InputError: naming ``source`` (and ``field_name``, e.g. a zip member), with the line and
            column of a syntax error.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=None if allow_nan else _no_constant)
    except UnicodeDecodeError as exc:
        raise InputError(source, field_name, f"not UTF-8 text (byte {exc.start})") from None
    except _Refused as exc:
        raise InputError(source, field_name, f"not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        where = f"{field_name}: " if field_name else ""
        raise InputError(source, f"{where}line {exc.lineno} column {exc.colno}",
                         f"not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise InputError(source, field_name, "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer literal of more digits than Python converts (sys.set_int_max_str_digits)
        raise InputError(source, field_name, f"not valid JSON: {exc}") from None


def read_json(path: str | os.PathLike, what: str, *, allow_nan: bool = False,
              max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Read and parse a JSON file strictly (see :func:`parse_json`), at most ``max_bytes`` of it.

    Raises:
        InputError: naming the file, for an unreadable, too large, non-UTF-8 or invalid file.
    """
    return parse_json(read_text(path, what, max_bytes), os.fspath(path), allow_nan=allow_nan)


def read_csv(path: str | os.PathLike, what: str, *, renamed: dict[str, str] | None = None,
             max_bytes: int = MAX_FILE_BYTES) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a CSV file with a header row: ``(columns, [(line, {column: text}), ...])``.

    ``renamed`` maps older column spellings to the current ones. Every row must have exactly the
    header's fields: a row with fewer is a file cut mid-row (or a missing comma), one with more an
    unquoted comma, and both are errors rather than cells silently left empty. Blank lines are
    skipped. ``line`` is the 1-based line the row starts on.

    Raises:
        InputError: naming the file (and the line): unreadable, too large, not UTF-8, not CSV (an
            unterminated quote), no header, a column named twice, or a row of the wrong length.
    """
    source = os.fspath(path)
    text = read_text(path, what, max_bytes).removeprefix("\ufeff")  # spreadsheets start UTF-8 CSVs with a BOM
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise InputError(source, None, f"empty; expected a header row of {what} columns")
        columns = [(renamed or {}).get(name.strip(), name.strip()) for name in header]
        twice = sorted({name for name in columns if columns.count(name) > 1})
        if twice:
            raise InputError(source, "line 1", f"column(s) {', '.join(twice)} given twice (or under an older "
                                               "name as well)")
        rows = []
        line = reader.line_num + 1
        for cells in reader:
            if cells and any(cell.strip() for cell in cells):
                if len(cells) != len(columns):
                    why = "a row cut short" if len(cells) < len(columns) else "an unquoted comma"
                    raise InputError(source, f"line {line}", f"expected {len(columns)} fields (the header's), got "
                                                             f"{len(cells)} ({why}?)")
                rows.append((line, dict(zip(columns, cells))))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(source, f"line {reader.line_num}", f"not valid CSV ({exc})") from None
    return columns, rows


def parse_cell(f: Field, text: str | None, source: str | os.PathLike | None, name: str) -> Any:
    """A CSV cell's ``text`` as field ``f`` declares it (``int`` / ``float`` / ``str`` / ``choice``
    kinds), checked exactly as a TOML or JSON value is; ``name`` names it in errors (``line 7, column
    time_us``). An empty cell is the field's default (an error when it is required).

    Raises:
        InputError: ``SOURCE: NAME: expected ..., got 'TEXT'``.
    """
    text = "" if text is None else text.strip()
    if not text:
        if f.required:
            raise InputError(source, name, f"missing (expected {f.expectation()})")
        return f.default
    if f.kind not in ("int", "float"):
        return _check(f, text, source, name)
    try:
        value: Any = int(text) if f.kind == "int" else float(text)
    except ValueError:
        value = None
        if f.kind == "int":  # "8.0" and "1e3" are integers too, when they are whole
            try:
                number = float(text)
                value = int(number) if math.isfinite(number) and number.is_integer() else None
            except (ValueError, OverflowError):
                value = None
    if value is None or not _number_ok(f, value):
        raise InputError(source, name, f"expected {f.expectation()}, got {show(text)}")
    return value


def argument(f: Field):
    """An argparse ``type`` that checks a command-line value against ``f`` (an ``int`` or ``float``
    field named after its flag, e.g. ``integer("--states", low=1)``): a bad value is argparse's
    one-line ``error: argument --states: expected an integer >= 1, got '0'`` with exit status 2."""
    def convert(text: str) -> Any:
        try:
            return parse_cell(replace(f, default=REQUIRED), text, None, f.name)
        except InputError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    convert.__name__ = f.expectation()  # what argparse names in "invalid <type> value" messages
    return convert


def json_ready(value: Any) -> Any:
    """``value`` with every NaN and infinity, which JSON cannot hold, as None (tuples as lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def json_text(obj: Any, indent: int | None = 1) -> str:
    """``obj`` as strict JSON text (newline-terminated), NaN and infinities as null."""
    return json.dumps(json_ready(obj), indent=indent, allow_nan=False) + "\n"

__all__ = ["REQUIRED", "Field", "Schema", "integer", "number", "flag", "string", "choice", "int_list", "number_list", "table",
           "tables", "mapping", "json_value", "json_list", "formerly", "show", "expected", "read_bytes", "read_text",
           "read_toml", "parse_json", "read_json", "read_csv", "parse_cell", "argument", "json_ready", "json_text",
           "MAX_FILE_BYTES", "MAX_TOML_BYTES", "INT_MIN", "INT_MAX", "UINT_MAX"]
