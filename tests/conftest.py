"""Fixtures shared across test modules."""

from plugin_harness import plugin_path, tuner  # noqa: F401  (pytest fixtures; tests/ is on sys.path)
