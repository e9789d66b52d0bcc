"""The NCCL libraries a job on this machine may load, their versions, and the tuner ABI each looks up.

Searched, in order: ``--nccl PATH`` (given), ``$LD_LIBRARY_PATH``, ``$NCCL_HOME/lib``,
``$CUDA_HOME/lib64``, the usual system directories, the ``nvidia-nccl-cu12``/``-cu13`` wheels
(``site-packages/nvidia/nccl/lib/libnccl.so.2``) and the dynamic linker's cache. Each library's
version comes from its ``ncclGetVersion``, called in a separate process (a broken library cannot take
the caller down); if it cannot be loaded (no CUDA driver libraries, say), from the wheel's metadata or
the file name ``libnccl.so.2.X.Y``. ``dynamiccl doctor`` reports them; ``dynamiccl launch`` names them
in one line.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

# First NCCL release that looks up each tuner ABI (the first NVIDIA/nccl tag with
# src/include/plugin/tuner/tuner_vN.h); NCCL tries the newest symbol it knows first, then older ones.
TUNER_ABI_SINCE = ((6, (2, 30, 3)), (5, (2, 28, 3)), (4, (2, 24, 3)), (3, (2, 22, 3)), (2, (2, 21, 5)))
TUNER_V1_SINCE = (2, 19, 0)  # v1 only (2.19 - 2.20): no context; dynamiccl does not export it
NCCL_FILE_NAMES = ("libnccl.so.2", "libnccl.so")
SYSTEM_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                   "/usr/local/lib", "/usr/local/cuda/lib64", "/usr/local/nccl/lib", "/opt/nccl/lib")
NCCL_WHEELS = ("nvidia-nccl-cu12", "nvidia-nccl-cu13")
WHEEL_LIBRARY = "nvidia/nccl/lib/libnccl.so.2"

# Run in a fresh interpreter (-I: no site code, no sitecustomize): load one library, call
# ncclGetVersion, and ask the dynamic linker which file it really loaded.
_PROBE = r"""
import ctypes, json, sys
try:
    lib = ctypes.CDLL(sys.argv[1])
    get = lib.ncclGetVersion
except (OSError, AttributeError) as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
code = ctypes.c_int(0)
rc = get(ctypes.byref(code))
class Info(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]
info, path = Info(), None
try:
    if ctypes.CDLL(None).dladdr(ctypes.cast(get, ctypes.c_void_p), ctypes.byref(info)) and info.fname:
        path = info.fname.decode()
except Exception:
    pass
print(json.dumps({"rc": rc, "code": code.value, "path": path}))
"""
_FILE_VERSION = re.compile(r"libnccl\.so\.(\d+)\.(\d+)\.(\d+)$")



# --- versions -----------------------------------------------------------------------------------------

def version_from_code(code: int) -> tuple[int, int, int]:
    """Decode ``ncclGetVersion``'s integer: major*10000 + minor*100 + patch since NCCL 2.9,
    major*1000 + minor*100 + patch before (22304 -> (2, 23, 4); 2708 -> (2, 7, 8))."""
    if code >= 10000:
        return code // 10000, code % 10000 // 100, code % 100
    return code // 1000, code % 1000 // 100, code % 100


def tuner_abi_for(version: Sequence[int]) -> int | None:
    """The newest tuner ABI (``ncclTunerPlugin_v<N>``) NCCL ``version`` looks up, or None when it
    has none dynamiccl exports (before 2.21.5: only v1, or no tuner plugins at all)."""
    version = tuple(version)
    for abi, since in TUNER_ABI_SINCE:
        if version >= since:
            return abi
    return None


def format_version(version: Sequence[int] | None) -> str:
    """(2, 23, 4) -> "2.23.4"; None -> "unknown"."""
    return ".".join(map(str, version)) if version else "unknown"


def abi_story(version: Sequence[int]) -> str:
    """One sentence: which symbol NCCL ``version`` looks up, or why dynamiccl cannot tune it."""
    abi = tuner_abi_for(version)
    text = format_version(version)
    if abi is not None:
        return f"NCCL {text} looks up ncclTunerPlugin_v{abi} first (then older ones)"
    if tuple(version) >= TUNER_V1_SINCE:
        return (f"NCCL {text} only loads tuner ABI v1, which dynamiccl does not support; "
                "NCCL 2.21.5 or newer is needed")
    return f"NCCL {text} has no tuner plugin interface (it came in 2.19); NCCL 2.21.5 or newer is needed"


@dataclass
class NcclLibrary:
    """One NCCL library found on this machine.

    ``path``: the file (or the linker's name for it); ``source``: where it was found; ``version``:
    (major, minor, patch) or None; ``version_from``: ``ncclGetVersion``, ``wheel metadata`` or
    ``file name``; ``load_error``: why it could not be loaded, if it could not.
    """

    path: str
    source: str
    version: tuple[int, int, int] | None = None
    version_from: str = ""
    load_error: str | None = None

    @property
    def abi(self) -> int | None:
        """The tuner ABI this library's NCCL looks up first (``tuner_abi_for``), None if unknown or none."""
        return tuner_abi_for(self.version) if self.version else None


# --- NCCL ---------------------------------------------------------------------------------------------

def probe_library(path: str) -> dict:
    """Load ``path`` in a fresh interpreter and call ``ncclGetVersion``.

    Returns:
        ``{"rc", "code", "path"}`` (``path``: the file the linker loaded, None if unknown) or
        ``{"error": message}`` if it could not be loaded, has no ``ncclGetVersion`` or crashed.
    """
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _PROBE, path], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        return {"error": "loading it took more than 60 s"}
    if done.returncode != 0:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"status {done.returncode}"
        return {"error": f"loading it ended the process ({how}): {done.stderr.strip()[-200:]}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unexpected probe output {done.stdout[-200:]!r}"}


def _wheel_library(dist) -> str | None:
    for entry in dist.files or ():
        if str(entry).replace("\\", "/").endswith(WHEEL_LIBRARY):
            located = Path(dist.locate_file(entry))
            if located.is_file():
                return str(located)
    located = Path(dist.locate_file(WHEEL_LIBRARY))
    return str(located) if located.is_file() else None


def _candidates(extra: Sequence[str | os.PathLike], env: Mapping[str, str]) -> list[tuple[str, str, str | None]]:
    """(path or linker name, where it was found, the wheel's version or None), in search order."""
    found: list[tuple[str, str, str | None]] = [(os.fspath(p), "--nccl", None) for p in extra]
    directories = [(d, "LD_LIBRARY_PATH") for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    directories += [(os.path.join(env[var], sub), var) for var, sub in (("NCCL_HOME", "lib"), ("CUDA_HOME", "lib64"))
                    if env.get(var)]
    directories += [(d, "system") for d in SYSTEM_LIB_DIRS]
    for directory, source in directories:
        for name in NCCL_FILE_NAMES:
            if os.path.isfile(os.path.join(directory, name)):
                found.append((os.path.join(directory, name), source, None))
                break
    for wheel in NCCL_WHEELS:
        try:
            dist = importlib.metadata.distribution(wheel)
        except importlib.metadata.PackageNotFoundError:
            continue
        path = _wheel_library(dist)
        if path:
            found.append((path, f"wheel {wheel}", dist.version))
    linker_name = ctypes.util.find_library("nccl")
    if linker_name:
        found.append((linker_name, "linker cache", None))
    return found


def find_nccl(extra: Sequence[str | os.PathLike] = (), env: Mapping[str, str] | None = None) -> list[NcclLibrary]:
    """Every NCCL library a job here might load (see the module docstring), one per file, with its
    version. ``extra``: libraries named by ``--nccl``; ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    libraries: dict[str, NcclLibrary] = {}
    for path, source, wheel_version in _candidates(extra, env):
        if source == "--nccl" and not os.path.isfile(path):
            libraries[path] = NcclLibrary(path, source, load_error="not a file")
            continue
        key = os.path.realpath(path) if os.sep in path else path
        if key in libraries:
            continue
        probe = probe_library(path)
        if probe.get("path") and os.sep not in path:  # a linker name: name the file it found
            path, key = probe["path"], os.path.realpath(probe["path"])
            if key in libraries:
                continue
        lib = NcclLibrary(path, source)
        if "error" in probe:
            lib.load_error = probe["error"]
        elif probe["rc"] != 0:
            lib.load_error = f"ncclGetVersion returned {probe['rc']}"
        else:
            lib.version, lib.version_from = version_from_code(probe["code"]), "ncclGetVersion"
        if lib.version is None:
            _fallback_version(lib, wheel_version)
        libraries[key] = lib
    return list(libraries.values())


def _fallback_version(lib: NcclLibrary, wheel_version: str | None) -> None:
    from dynamiccl.nccl import parse_version

    if wheel_version:
        try:
            lib.version, lib.version_from = parse_version(wheel_version), "wheel metadata"
            return
        except ValueError:
            pass
    match = _FILE_VERSION.search(os.path.realpath(lib.path))
    if match:
        lib.version, lib.version_from = tuple(int(g) for g in match.groups()), "file name"
