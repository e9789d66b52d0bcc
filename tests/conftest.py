"""Fixtures shared across test modules."""

from pathlib import Path

import pytest

# pytest fixtures; tests/ is on sys.path
from plugin_harness import instrumented_path, plugin_path, tuner  # noqa: F401


@pytest.fixture(scope="session")
def cache(plugin_path, tmp_path_factory) -> Path:  # noqa: F811 (plugin_path: the fixture imported above)
    """A $DYNAMICCL_CACHE_DIR whose plugin build is the session's (``plugin_path``): no second compile."""
    root = tmp_path_factory.mktemp("dynamiccl-cache")
    (root / "plugin").symlink_to(plugin_path.parent.parent, target_is_directory=True)
    return root
