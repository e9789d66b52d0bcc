"""Fixtures shared across test modules."""

# pytest fixtures; tests/ is on sys.path
from plugin_harness import instrumented_path, plugin_path, tuner  # noqa: F401
