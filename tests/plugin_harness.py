"""Shared by the plugin tests: one built plugin per session, and loading a table into it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynamiccl.plugin import TABLE_ENV
from dynamiccl.plugin.binding import TunerLibrary
from dynamiccl.plugin.build import PluginBuildError, build_plugin
from dynamiccl.table import DecisionTable, save


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> Path:
    """The plugin, compiled once per test session into a private cache directory."""
    try:
        return build_plugin(cache_dir=tmp_path_factory.mktemp("plugin-cache"))
    except PluginBuildError as exc:  # only a machine without a C compiler gets here
        pytest.skip(f"no plugin: {exc}")


@pytest.fixture(scope="session")
def tuner(plugin_path) -> TunerLibrary:
    """The plugin loaded with ctypes, once per process (as NCCL loads it)."""
    return TunerLibrary(plugin_path)


def use_table(tuner: TunerLibrary, table: DecisionTable | None, directory: Path, monkeypatch,
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
