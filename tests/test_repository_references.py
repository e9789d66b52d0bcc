"""Every source a comment cites must be one a reader of this repository can open.

The project's research notes live outside the repository (``../shared/reference/*.md``,
``../shared/design.md``); a comment citing them, or a bare section sign pointing into them, is a dead
link. Code and docs cite the public source itself (an NVIDIA/nccl file, an issue number, a paper, a
datasheet) or a page under ``docs/``. A section sign is fine after a named document: an arXiv id, a
year ("Dao 2023 §3.1"), a file path ("docs/nccl-model-worked-examples.md §2") or the module's own
docstring ("docstring §1").

Paths to the calibration data under ``shared/calibration/`` are data that commands and tests read,
not citations, and are not flagged.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# directory -> file suffixes scanned there
SCANNED = {
    "dynamiccl": {".py", ".c", ".h", ".toml", ".json", ".md"},
    "envs": {".md", ".py", ".toml"},
    "tests": {".md", ".py", ".toml", ".c", ".h"},
    "experiments": {".md", ".py", ".toml"},
    "docs": {".md"},
}
TOP_LEVEL_FILES = ("README.md",)

REFERENCE_NAMES = ("nccl-cost-model", "nccl-tuner-abi", "trace-formats", "headroom", "landscape", "design")
REFERENCE_FILE = re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, REFERENCE_NAMES)) + r")\.md\b")
SHARED_REFERENCE = re.compile(r"\.\./shared/reference|/work/shared(?!/calibration/)")
SECTION = re.compile(r"§\s*\d")
# What may stand right before a section sign: an arXiv id, a year, a file with an extension, or "docstring"
# (this module's own docstring).
NAMED_DOCUMENT = re.compile(
    r"(?:arXiv:\d{4}\.\d{4,5}(?:v\d+)?|\b(?:19|20)\d\d[a-z]?|[\w./-]+\.[A-Za-z]{1,4}|\bdocstring)[,:]?\s*$")


def _scanned_files() -> list[Path]:
    files = [REPO / name for name in TOP_LEVEL_FILES if (REPO / name).is_file()]
    for directory, suffixes in SCANNED.items():
        root = REPO / directory
        if root.is_dir():
            files += sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes
                            and "__pycache__" not in p.parts)
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def dead_references(line: str) -> list[str]:
    """What on ``line`` cites the out-of-repository notes (empty list when nothing does)."""
    found = [m.group(0) for m in SHARED_REFERENCE.finditer(line)]
    found += [m.group(0) for m in REFERENCE_FILE.finditer(line)]
    for match in SECTION.finditer(line):
        before = line[: match.start()]
        named = NAMED_DOCUMENT.search(before)
        if named is None or REFERENCE_FILE.search(named.group(0)):
            found.append(match.group(0))
    return found


def test_the_rule_flags_dead_links_and_passes_public_sources():
    assert dead_references("see ../shared/reference/nccl-cost-model.md §1.6") == [
        "../shared/reference", "nccl-cost-model.md", "§1"]
    assert dead_references("# NVLink4 links per GPU (§5)") == ["§5"]
    assert dead_references("``trace-formats.md`` §4.3") == ["trace-formats.md", "§4"]
    assert dead_references("/work/shared/design.md") == ["/work/shared", "design.md"]
    assert dead_references("Narayanan et al., arXiv:2104.04473 §5.1") == []
    assert dead_references("FlashAttention-2, Dao 2023 §3.1") == []
    assert dead_references("(docs/nccl-model-worked-examples.md §2)") == []
    assert dead_references("# bytes per GPU (docstring §1)") == []
    assert dead_references('MEASUREMENTS = Path("/work/shared/calibration/measurements.csv")') == []
    assert dead_references("docs/system-design.md and my-landscape.md") == []


def test_no_file_cites_the_out_of_repository_reference_notes():
    hits = []
    for path in _scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if dead_references(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, ("cite the public source (NVIDIA/nccl file, issue, paper, datasheet) or a docs/ page "
                      "instead of the out-of-repository notes:\n" + "\n".join(hits))
