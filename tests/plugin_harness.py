"""Shared by the plugin tests: one build of both plugin variants per session, and loading a table into
the instrumented one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynamiccl.plugin import TABLE_ENV
from dynamiccl.plugin.binding import InstrumentedTunerLibrary
from dynamiccl.plugin.build import PluginBuildError, build_plugin, instrumented_beside
from dynamiccl.table import DecisionTable, save


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> Path:
    """The production plugin (what NCCL loads), compiled once per test session into a private cache
    directory, with its instrumented variant beside it (``instrumented_path``)."""
    try:
        return build_plugin(cache_dir=tmp_path_factory.mktemp("plugin-cache"))
    except PluginBuildError as exc:  # only a machine without a C compiler gets here
        pytest.skip(f"no plugin: {exc}")


@pytest.fixture(scope="session")
def instrumented_path(plugin_path) -> Path:
    """The instrumented variant of the session's build: the same code plus dynamiccl's entry points."""
    return instrumented_beside(plugin_path)


@pytest.fixture(scope="session")
def tuner(instrumented_path) -> InstrumentedTunerLibrary:
    """The instrumented plugin loaded with ctypes, once per process (as NCCL loads a plugin)."""
    return InstrumentedTunerLibrary(instrumented_path)


def use_table(tuner: InstrumentedTunerLibrary, table: DecisionTable | None, directory: Path, monkeypatch,
              text: bytes | None = None) -> Path | None:
    """Point $DYNAMICCL_TUNER_TABLE at ``table`` (or raw ``text``) and make the plugin reread it."""
    tuner.reset()
    if table is None and text is None:
        monkeypatch.delenv(TABLE_ENV, raising=False)
        return None
    path = directory / f"table-{len(os.listdir(directory))}.txt"
    if text is not None:
        path.write_bytes(text)
    else:
        save(table, path)
    monkeypatch.setenv(TABLE_ENV, str(path))
    return path
