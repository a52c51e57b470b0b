"""Sweep waves: a sweep table's rows ordered so that a row starting from another row's weights runs after it.

A SLURM job array runs its tasks concurrently, but a row whose `model.init_from` names another row's
run directory (configs/paper/grid.tsv: phase 2 from the phase-1 rows) needs that row's checkpoint.
`seq2vae slurm submit --kind sweep` therefore splits the table into waves: wave 0 holds the rows that
start from no other row, wave k those whose source row is in wave k-1. Each wave is one array whose
task ids are the row indices (`--array=4-12`), so run directories (`task-<i>`) and logs are those of
the single-array sweep and of `seq2vae sweep`; wave k is submitted with
`--dependency=afterok:<job ids of the waves its sources are in>` (an array's job id stands for all of
its tasks: the wave starts once every one of them exited 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError

INIT_FROM_KEY = "model.init_from"


@dataclass(frozen=True)
class SweepWave:
    """One job array of a sweep: its rows (= array task ids) and the earlier waves it must wait for."""

    index: int
    rows: tuple[int, ...]
    after: tuple[int, ...]  # waves holding the rows this wave's rows start from (afterok on their jobs)
    count: int  # waves in the sweep


def row_value(row: list[str], key: str) -> str | None:
    """The value a row's `key=value` overrides give `key` (the last one wins, as in the config loader)."""
    values = [item.split("=", 1)[1] for item in row if item.startswith(f"{key}=")]
    return values[-1] if values else None


def init_from_sources(rows: list[list[str]], table: str | Path) -> list[int | None]:
    """For each row, the index of the row whose run directory its model.init_from names (None: no row's).

    `rows` are `sweep_rows`' output (every row names its run_dir). Raises ConfigError naming the table
    and row when a row starts from itself or from a row after it: a table is run in its order (the
    local sweep) or in waves, and neither can run a row before its source, so no cycle can pass either.
    """
    run_dirs = {os.path.normpath(row_value(row, "run_dir") or ""): index for index, row in enumerate(rows)}
    sources: list[int | None] = []
    for index, row in enumerate(rows):
        init_from = row_value(row, INIT_FROM_KEY)
        source = run_dirs.get(os.path.normpath(init_from)) if init_from else None
        if source is not None and source >= index:
            named = "its own run directory" if source == index else f"row {source}'s run directory, which comes after it"
            raise ConfigError(
                f"sweep table '{table}', row {index}: {INIT_FROM_KEY} names {named}; a row can only start from "
                "an earlier row's weights: put the row it starts from first"
            )
        sources.append(source)
    return sources


def sweep_waves(sources: list[int | None]) -> list[SweepWave]:
    """`init_from_sources`' answer -> the waves, in submission order (one wave when no row starts from another)."""
    wave_of: list[int] = []
    for source in sources:  # a source always comes first, so its wave is known
        wave_of.append(0 if source is None else wave_of[source] + 1)
    count = max(wave_of) + 1
    waves = []
    for wave in range(count):
        rows = tuple(index for index, of in enumerate(wave_of) if of == wave)
        after = tuple(sorted({wave_of[sources[index]] for index in rows if sources[index] is not None}))
        waves.append(SweepWave(wave, rows, after, count))
    return waves


def array_spec(rows: tuple[int, ...] | list[int]) -> str:
    """Array task ids in sbatch's `--array` syntax: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    ranges: list[list[int]] = []
    for row in sorted(rows):
        if ranges and row == ranges[-1][1] + 1:
            ranges[-1][1] = row
        else:
            ranges.append([row, row])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)
