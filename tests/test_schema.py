"""The schema helper every TOML and JSON reader uses: one error format, strict readers."""

from __future__ import annotations

import math

import pytest

from dynamiccl import schema
from dynamiccl.errors import InputError

CASE = schema.Schema(schema.string("env"), schema.integer("step", None, low=0))
DOC = schema.Schema(
    schema.table("run", schema.Schema(
        schema.integer("seed", 0, low=0, high=2**32 - 1),
        schema.number("rate", 0.5, low=0, low_inclusive=False, high=1.0, help="a share"),
        schema.number("size", 1.0, low=0, low_inclusive=False),
        schema.integer("count", 1, low=0, low_inclusive=False),
        schema.flag("fast", False),
        schema.choice("mode", ("a", "b"), "a"),
        schema.int_list("layers", (8,), low=1, high=64, max_len=3),
        schema.tables("cases", CASE, []),
        schema.mapping("weights", schema.number("w", low=0)),
    )),
    sections=True,
)


def parse(run: dict):
    return DOC.parse({"run": {"weights": {}, **run}}, "f.toml")["run"]


def test_defaults_fill_in_and_values_normalise():
    values = parse({"rate": 1, "layers": [4, 4], "cases": [{"env": "x"}], "weights": {"a": 2}})
    assert values["rate"] == 1.0 and isinstance(values["rate"], float)
    assert values["layers"] == (4, 4) and values["seed"] == 0 and values["mode"] == "a"
    assert values["cases"] == [{"env": "x"}]  # an optional field without a default stays absent
    assert values["weights"] == {"a": 2.0}


@pytest.mark.parametrize("run, field, message", [
    ({"seed": -1}, "run.seed", "expected an integer >= 0 and <= 4294967295, got -1"),
    ({"seed": 2.0}, "run.seed", "expected an integer >= 0 and <= 4294967295, got 2.0"),
    ({"seed": True}, "run.seed", "got true"),
    ({"rate": math.nan}, "run.rate", "expected a number > 0 and <= 1, got nan"),
    ({"rate": math.inf}, "run.rate", "got inf"),
    ({"size": 0}, "run.size", "expected a positive number (> 0), got 0"),
    ({"count": 0}, "run.count", "expected a positive integer (an integer > 0), got 0"),
    ({"fast": 1}, "run.fast", "expected true or false, got 1"),
    ({"mode": "c"}, "run.mode", "expected one of a, b, got 'c'"),
    ({"layers": [1, 2, 3, 4]}, "run.layers", "expected a list of at most 3 integers in 1..64"),
    ({"cases": {"env": "x"}}, "run.cases", "expected a list of [[run.cases]] tables"),
    ({"cases": [{"env": "x"}, {"step": 1}]}, "run.cases[1].env", "missing (required)"),
    ({"cases": [{"env": "x", "stepp": 1}]}, "run.cases[0].stepp", "unknown key; expected some of env, step"),
    ({"weights": {"a": -1}}, "run.weights.a", "expected a number >= 0, got -1"),
])
def test_one_error_format_names_file_and_field(run, field, message):
    with pytest.raises(InputError) as info:
        parse(run)
    assert (info.value.source, info.value.field) == ("f.toml", field)
    assert str(info.value).startswith(f"f.toml: {field}: ") and message in str(info.value)


def test_sections_and_tables():
    with pytest.raises(InputError, match=r"^f.toml: runs: unknown section; expected \[run\]$"):
        DOC.parse({"runs": {}}, "f.toml")
    with pytest.raises(InputError, match=r"^f.toml: run: missing \[run\] table$"):
        DOC.parse({}, "f.toml")
    with pytest.raises(InputError, match=r"^f.toml: run: missing \[run\] table; got '8'$"):
        DOC.parse({"run": "8"}, "f.toml")


def test_choice_needs_the_same_type():
    field = schema.Schema(schema.choice("version", (1,)))
    assert field.parse({"version": 1}, "x") == {"version": 1}
    with pytest.raises(InputError, match="got true"):
        field.parse({"version": True}, "x")


def test_replace_and_help_text():
    tighter = DOC["run"].schema.replace("seed", high=10)
    assert tighter["seed"].expectation() == "an integer >= 0 and <= 10"
    text = DOC.help_text()
    assert "run.rate: a number > 0 and <= 1 (default 0.5) -- a share" in text
    assert "run.cases[].env: a string" in text


def test_strict_json(tmp_path):
    assert schema.parse_json('{"a": [1, 2.5]}', "x.json") == {"a": [1, 2.5]}
    for text, words in (('{"a": 1, "a": 2}', "duplicate key 'a'"), ('{"a": NaN}', "NaN is not a JSON number"),
                        ('{"a": Infinity}', "Infinity"), ('{"a": ', "not valid JSON")):
        with pytest.raises(InputError, match=words) as info:
            schema.parse_json(text, "x.json")
        assert info.value.source == "x.json"
    with pytest.raises(InputError) as info:
        schema.parse_json("{\n  1}", "x.json")
    assert info.value.field == "line 2 column 3"
    with pytest.raises(InputError, match="not UTF-8"):
        schema.parse_json(b"\xff", "x.json", "member.json")


def test_file_readers_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("a = ", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.toml: not valid TOML \("):
        schema.read_toml(bad, "spec")
    with pytest.raises(InputError, match=r"absent.toml: cannot read spec \(no such file\)"):
        schema.read_toml(tmp_path / "absent.toml", "spec")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(InputError, match="not UTF-8 text"):
        schema.read_json(latin, "table")


def test_renamed_keys_are_still_read():
    fields = schema.Schema(schema.formerly(schema.number("busbw_gbytes_per_s", low=0), "busbw_gbps"))
    assert fields.parse({"busbw_gbps": 3}, "old.json") == {"busbw_gbytes_per_s": 3.0}
    assert fields.parse({"busbw_gbytes_per_s": 4}, "new.json") == {"busbw_gbytes_per_s": 4.0}
    with pytest.raises(InputError, match="given twice"):
        fields.parse({"busbw_gbps": 3, "busbw_gbytes_per_s": 4}, "both.json")


def test_number_lists():
    fields = schema.Schema(schema.number_list("hop_us", length=3, low=0))
    assert fields.parse({"hop_us": [1, 2.5, 3]}, "p.json") == {"hop_us": [1.0, 2.5, 3.0]}
    for bad in ([1, 2], [1, 2, -1], [1, 2, "3"], [1, 2, math.nan]):
        with pytest.raises(InputError, match="expected a list of 3 numbers >= 0"):
            fields.parse({"hop_us": bad}, "p.json")


def test_json_written_strict_and_old_nan_files_still_read():
    text = schema.json_text({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
    assert schema.parse_json(text, "x.json") == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert math.isnan(schema.parse_json('{"a": NaN}', "old.json", allow_nan=True)["a"])
