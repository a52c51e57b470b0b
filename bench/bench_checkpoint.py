"""Durable-checkpoint overhead: a save (torch.save of rank-like shards) against the same save plus
sealing (fsync + CRC-32 of every file + atomic manifest), and the verification a resume runs,
side by side in one run, as ratios.

    python bench/bench_checkpoint.py                  # 4 files of 64 MiB, 3 repeats, ~1 minute
    python bench/bench_checkpoint.py --mib 256 --files 8
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from seq2vae.checkpoint.durability import checkpoint_problems, seal_checkpoint


def write_shards(directory: Path, files: int, state: dict) -> None:
    directory.mkdir(parents=True)
    for rank in range(files):
        torch.save(state, directory / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--mib", type=int, default=64, help="MiB per file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-ckpt-"))
    plain, sealed, verify = [], [], []
    elements = args.mib * 2**20 // 8  # two fp32 tensors per file
    state = {"exp_avg": torch.randn(elements), "exp_avg_sq": torch.rand(elements)}  # made once, outside the timings
    for repeat in range(args.repeats):
        for kind in ("plain", "sealed"):
            target = root / f"{kind}-{repeat}"
            started = time.perf_counter()
            write_shards(target, args.files, state)
            if kind == "sealed":
                seal_checkpoint(target, rank=0, world_size=1)  # one process plays every rank
            (sealed if kind == "sealed" else plain).append(time.perf_counter() - started)
            if kind == "sealed":
                started = time.perf_counter()
                assert checkpoint_problems(target) == []
                verify.append(time.perf_counter() - started)
            shutil.rmtree(target)
    size = args.files * args.mib
    p, s, v = statistics.median(plain), statistics.median(sealed), statistics.median(verify)
    print(f"checkpoint of {args.files} files x {args.mib} MiB = {size} MiB, median of {args.repeats}")
    print(f"save (torch.save)               {p:8.3f} s")
    print(f"save + seal (fsync, CRC-32)     {s:8.3f} s   = {s / p:.2f}x the plain save")
    print(f"verify at resume (re-read, CRC) {v:8.3f} s   = {v / p:.2f}x the plain save ({size / v:.0f} MiB/s)")
    if not args.dir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
