"""``dynamiccl plugin build``: compile the tuner plugin's two variants with the system C compiler, cached by hash.

``PRODUCTION`` is ``libnccl-tuner-dynamiccl.so``, what NCCL loads: it exports only the
``ncclTunerPlugin_vN`` symbols. ``INSTRUMENTED`` is the same C files plus ``instrumented.c``, built
with ``-DDCCL_INSTRUMENTED``: ``libnccl-tuner-dynamiccl-instrumented.so``, which also exports
dynamiccl's entry points (override, counters, the table parser, reset) for tests, table checks and
live measurement. Both go into one directory, so the instrumented library of a build is always
``instrumented_beside(plugin)``.

The cache key is the SHA-256 of the C sources, the headers, the compiler flags and the compiler's
own version line, so a changed source or compiler gives a fresh build and an unchanged one costs
nothing. Each library is compiled into a temporary file beside its final place and renamed, so a
crash never leaves a half-written ``.so`` that NCCL would then try to load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dynamiccl.errors import DynamicclError
from dynamiccl.plugin import INSTRUMENTED_FILE_NAME, PLUGIN_FILE_NAME

SOURCE_DIR = Path(__file__).resolve().parent
HEADERS = ("tuner_abi.h", "tuner.h")
CFLAGS = ("-O2", "-std=c11", "-D_GNU_SOURCE", "-fPIC", "-shared", "-fvisibility=hidden",
          "-Wall", "-Wextra", "-Werror")
LDFLAGS = ("-lpthread",)
COMPILER_CANDIDATES = ("cc", "gcc", "clang")


@dataclass(frozen=True)
class Variant:
    """One library built from the plugin's C files: its file name, sources and extra flags."""

    file_name: str
    sources: tuple[str, ...]
    defines: tuple[str, ...] = ()

    def source_paths(self) -> list[Path]:
        """The variant's C files (absolute), in compile order."""
        return [SOURCE_DIR / name for name in self.sources]


PRODUCTION = Variant(PLUGIN_FILE_NAME, ("table.c", "comm.c", "decide.c", "plugin.c"))
INSTRUMENTED = Variant(INSTRUMENTED_FILE_NAME, PRODUCTION.sources + ("instrumented.c",), ("-DDCCL_INSTRUMENTED",))
VARIANTS = (PRODUCTION, INSTRUMENTED)


class PluginBuildError(DynamicclError):
    """The plugin could not be built: no C compiler, or the compiler failed (its output attached)."""


def cache_root() -> Path:
    """``$DYNAMICCL_CACHE_DIR`` or ``$XDG_CACHE_HOME/dynamiccl`` (default ``~/.cache/dynamiccl``)."""
    if os.environ.get("DYNAMICCL_CACHE_DIR"):
        return Path(os.environ["DYNAMICCL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dynamiccl"


def find_compiler() -> str:
    """The C compiler to use: ``$CC`` if set, else the first of cc, gcc, clang on PATH.

    Raises:
        PluginBuildError: if none is found (the message says what was searched and how to fix it).
    """
    wanted = os.environ.get("CC")
    if wanted:
        found = shutil.which(wanted)
        if not found:
            raise PluginBuildError(f"CC={wanted!r} is not an executable on PATH; install a C compiler "
                                   "or point CC at one")
        return found
    for name in COMPILER_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise PluginBuildError("no C compiler found (looked for $CC, then cc, gcc and clang on PATH); "
                           "install one (e.g. `apt install gcc`) or set CC, or build elsewhere and pass "
                           "--plugin PATH")


def _compiler_identity(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PluginBuildError(f"cannot run the C compiler {compiler}: {exc}") from None
    return (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else compiler


def source_hash(compiler_identity: str = "") -> str:
    """SHA-256 (hex, 16 digits) of every variant's sources and flags, the headers and the compiler's
    version line."""
    digest = hashlib.sha256()
    for name in sorted(set(HEADERS).union(*(variant.sources for variant in VARIANTS))):
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    for variant in VARIANTS:
        digest.update(" ".join((variant.file_name, *variant.sources, *variant.defines)).encode() + b"\0")
    digest.update(" ".join(CFLAGS + LDFLAGS).encode() + b"\0")
    digest.update(compiler_identity.encode())
    return digest.hexdigest()[:16]


def compile_sources(output: Path, sources: list[Path], flags: tuple[str, ...], compiler: str | None = None) -> Path:
    """Compile ``sources`` (the plugin's directory is on the include path) into ``output``, atomically.

    Raises:
        PluginBuildError: no compiler, or the compiler failed (its diagnostics are in the message).
    """
    compiler = compiler or find_compiler()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    command = [compiler, *flags, f"-I{SOURCE_DIR}", "-o", tmp_name, *map(str, sources), *LDFLAGS]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise PluginBuildError(f"compiling {output.name} failed ({' '.join(command)}):\n"
                                   f"{done.stderr.strip() or done.stdout.strip()}")
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, output)
    except subprocess.TimeoutExpired:
        raise PluginBuildError(f"compiling {output.name} took more than 300 s ({' '.join(command)})") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return output


def build_plugin(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Build (or find the cached build of) both variants; returns the absolute path of
    ``libnccl-tuner-dynamiccl.so``, with ``instrumented_beside`` it in the same directory.

    Args:
        cache_dir: where builds live (default ``cache_root() / "plugin"``); each build is in a
            subdirectory named by ``source_hash``.
        force: rebuild even if a cached build exists.

    Raises:
        PluginBuildError: no C compiler, or compilation failed.
    """
    compiler = find_compiler()
    directory = (cache_dir or cache_root() / "plugin") / source_hash(_compiler_identity(compiler))
    for variant in VARIANTS:
        target = directory / variant.file_name
        if force or not target.is_file():
            compile_sources(target, variant.source_paths(), CFLAGS + variant.defines, compiler)
    return (directory / PRODUCTION.file_name).resolve()


def instrumented_beside(plugin: str | os.PathLike) -> Path:
    """The instrumented library of the build that ``plugin`` (a production library) belongs to:
    the file ``libnccl-tuner-dynamiccl-instrumented.so`` in its directory (which may not exist for a
    production library copied alone)."""
    return Path(plugin).with_name(INSTRUMENTED.file_name)
