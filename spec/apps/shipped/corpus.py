"""The shipped model's corpus: the Python standard library of the running interpreter.

Every machine with Python has it, so the model can be rebuilt anywhere offline.
Split by module: a file is held out when the SHA-256 of its path relative to the
stdlib root, read as an integer, is divisible by 10 (about 10% of modules). The rule
depends only on the path, so the split is the same on every machine and Python
version, and a held-out module is never trained on. Test suites, site-packages and
``idlelib`` are excluded (they are large and unlike ordinary library code).
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

EXCLUDED_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "__pycache__"}
HELD_OUT_MODULUS = 10


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relative_path: str) -> bool:
    digest = hashlib.sha256(relative_path.encode()).hexdigest()
    return int(digest, 16) % HELD_OUT_MODULUS == 0


def corpus_files(root: Path | None = None) -> dict[str, list[Path]]:
    """``{"train": [...], "heldout": [...]}``, sorted, from the stdlib at ``root``."""
    root = root or stdlib_root()
    split: dict[str, list[Path]] = {"train": [], "heldout": []}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if EXCLUDED_PARTS & set(relative.parts):
            continue
        split["heldout" if is_held_out(relative.as_posix()) else "train"].append(path)
    return split


def read_corpus(files: list[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]
