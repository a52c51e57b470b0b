"""Sweep tables: one row of `key=value` overrides per job-array task.

Format (tab-separated, UTF-8): the first non-comment line names the config keys, each following line
is one task's values. Blank lines and lines starting with `#` are skipped; an empty cell leaves that
key at the config's value for that task.

    optim.lr	model.latent_dim
    1e-4	32
    3e-4	64
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError


def read_sweep_table(path: str | Path) -> list[list[str]]:
    """Returns one list of `key=value` overrides per row, in file order.

    Raises ConfigError naming the file and line for a missing file, a bad header or a ragged row.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep table '{path}' does not exist")
    header: list[str] | None = None
    rows: list[list[str]] = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in line.split("\t")]
        where = f"{path}:{line_number}"
        if header is None:
            header = _check_header(cells, where)
            continue
        if len(cells) != len(header):
            raise ConfigError(
                f"{where}: {len(cells)} tab-separated cells, but the header names {len(header)} keys "
                f"({', '.join(header)})"
            )
        rows.append([f"{key}={value}" for key, value in zip(header, cells) if value != ""])
    if header is None or not rows:
        raise ConfigError(f"sweep table '{path}' has no {'header' if header is None else 'rows'}")
    return rows


def _check_header(keys: list[str], where: str) -> list[str]:
    for key in keys:
        if not key or any(not part for part in key.split(".")) or "=" in key or " " in key:
            raise ConfigError(f"{where}: header cell {key!r} is not a dotted config key")
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ConfigError(f"{where}: header names {', '.join(duplicates)} more than once")
    return keys
