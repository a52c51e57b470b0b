"""Durable checkpoints: fsync before `latest` moves, a manifest of sizes and checksums, and verification.

A checkpoint directory is *complete* once it holds `manifest.json`, written last (atomically, after
every rank fsynced and checksummed the files it wrote). `verify_checkpoint` re-reads the files and
reports every missing, resized or corrupted one by name. Both are collectives: each rank handles the
files it owns (DeepSpeed's `zero_pp_rank_R_...` files belong to rank R % world size, the rest to
rank 0), so the cost of checksumming is spread like the cost of writing, and on a multi-node job the
rank that wrote a file is the one that fsyncs it (fsync flushes only the calling client's pages on
network filesystems).

CRC-32 rather than a cryptographic hash: it detects truncation and bit rot at disk speed, and the
threat here is damage, not forgery.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

from ..distributed import gather_objects
from ..errors import UserError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
CHUNK_BYTES = 16 * 2**20
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_")


class DamagedCheckpointError(UserError, RuntimeError):
    """A checkpoint is incomplete or one of its files is missing or damaged; the message names them."""


def fsync_path(path: Path) -> None:
    """Flushes a file's or a directory's data and metadata to stable storage."""
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `path` so that readers see the old or the new content, never a mix, even after a power loss:
    write a temporary file, fsync it, rename it over `path`, fsync the directory (the rename itself)."""
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    fsync_path(path.parent)


def file_owner(relative_name: str, world_size: int) -> int:
    """The rank that fsyncs and checksums a checkpoint file: DeepSpeed's rank-R shards go to R, the rest to 0."""
    match = _RANK_FILE.search(relative_name)
    return int(match.group(1)) % world_size if match else 0


def checksum_file(path: Path, sync: bool = False) -> dict[str, Any]:
    """{"size", "crc32"} of a file read in chunks; `sync` also fsyncs it (it is open anyway)."""
    crc = 0
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
        if sync:
            os.fsync(handle.fileno())
    return {"size": size, "crc32": f"{crc:08x}"}


def _listing(checkpoint_dir: Path) -> list[str]:
    return sorted(
        str(path.relative_to(checkpoint_dir))
        for path in checkpoint_dir.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE and not path.name.startswith(".")
    )


def seal_checkpoint(checkpoint_dir: Path, rank: int, world_size: int, layout: dict[str, Any] | None = None) -> None:
    """Makes a freshly written checkpoint durable and complete (ALL ranks, after every rank wrote its files).

    Each rank fsyncs and checksums the files it owns; rank 0 then writes the manifest atomically and
    fsyncs the directory tree. Rank 0's listing is the one used, so all ranks agree on the file set.
    `layout` (the engine's ZeRO stage and optimizer, `saving.engine_layout`) goes into the manifest.
    """
    names = gather_objects(_listing(checkpoint_dir) if rank == 0 else None)[0]
    mine = {name: checksum_file(checkpoint_dir / name, sync=True) for name in names if file_owner(name, world_size) == rank}
    entries: dict[str, Any] = {}
    for part in gather_objects(mine):
        entries.update(part)
    if rank == 0:
        for directory in sorted({(checkpoint_dir / name).parent for name in names}, reverse=True):
            fsync_path(directory)  # the directory entries of the files, deepest first
        manifest = {"version": MANIFEST_VERSION, "world_size": world_size, "files": entries, **(layout or {})}
        atomic_write_text(checkpoint_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(checkpoint_dir: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint; DamagedCheckpointError when it is absent or unreadable."""
    path = checkpoint_dir / MANIFEST_FILE
    if not checkpoint_dir.is_dir():
        raise DamagedCheckpointError(f"checkpoint directory {checkpoint_dir} does not exist")
    if not path.is_file():
        raise DamagedCheckpointError(
            f"checkpoint {checkpoint_dir} is incomplete: it has no {MANIFEST_FILE} (its save did not finish, "
            "or it was written by a version without manifests)"
        )
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        assert isinstance(files, dict)
    except (ValueError, KeyError, AssertionError) as error:
        raise DamagedCheckpointError(f"checkpoint manifest {path} is damaged: {error}") from None
    return manifest


def _check_files(checkpoint_dir: Path, files: dict[str, Any], rank: int, world_size: int, checksums: bool) -> list[str]:
    problems = []
    for name, expected in sorted(files.items()):
        if file_owner(name, world_size) != rank:
            continue
        path = checkpoint_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            problems.append(f"{path}: {size} bytes, the manifest says {expected['size']} (truncated or overwritten)")
            continue
        if checksums and checksum_file(path)["crc32"] != expected["crc32"]:
            problems.append(f"{path}: checksum mismatch (corrupted)")
    return problems


def checkpoint_problems(checkpoint_dir: Path, rank: int = 0, world_size: int = 1, checksums: bool = True) -> list[str]:
    """Everything wrong with a checkpoint, one line per file, naming it; [] when it is complete and intact.

    A collective when world_size > 1 (every rank checks its share, all get the full list).
    `checksums=False` checks the manifest, presence and sizes only (no file is read).
    """
    try:
        files = read_manifest(checkpoint_dir)["files"]
        mine = _check_files(checkpoint_dir, files, rank, world_size, checksums)
    except DamagedCheckpointError as error:
        mine = [str(error)]
    problems: list[str] = []
    for part in gather_objects(mine):
        problems.extend(problem for problem in part if problem not in problems)  # manifest errors come from all ranks
    return problems
