"""Another revision of this repository as an import root, for benchmarks that compare before and after."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout_package(revision: str, directory: Path) -> Path:
    """`revision` (a git revision of this repository) unpacked as `directory/seq2vae`; returns `directory`,
    the folder to put on PYTHONPATH."""
    package = directory / "seq2vae"
    package.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(package)], input=archive, check=True)
    return directory


def this_checkout(directory: Path) -> Path:
    """An import root whose `seq2vae` is this working tree (uncommitted edits included)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "seq2vae").symlink_to(REPO)
    return directory
