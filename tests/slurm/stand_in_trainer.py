"""Stands in for `python -m seq2vae.train` in the SLURM mechanics tests: same flags, same signal contract.

    torchrun ... -m stand_in_trainer --config C.yaml --resume auto [key=value ...]

Config (plain YAML): `run_dir`, `stand_in.steps`, `stand_in.step_seconds`, optional
`stand_in.save_every` (steps between checkpoints), `stand_in.fail_at_step` and `stand_in.failing_runs`
(in runs with SLURM_RESTART_COUNT below it, rank 1 crashes with exit code 3 at that step). Each step
sleeps; ranks agree on stop requests with an all-reduce (gloo) at every step boundary, like the
trainer. On SIGUSR1 or SIGTERM it saves `RUN_DIR/checkpoints/step_XXXXXXXX` + `latest` and exits 75;
at the end it saves and exits 0. Every rank appends what happened to `RUN_DIR/events.jsonl` (one JSON
object a line), and prints one line to its stdout at start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from seq2vae.config import parse_override

REQUEUE_EXIT_CODE = 75
CRASH_EXIT_CODE = 3
# What the job script sets for every rank; recorded at start so tests see the ranks' real environment.
JOB_ENVIRONMENT = ("OMP_NUM_THREADS", "PYTHONUNBUFFERED", "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def load_config(path: str, overrides: list[str]) -> dict:
    tree = yaml.safe_load(Path(path).read_text())
    for text in overrides:
        keys, value = parse_override(text)
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return tree


def record(run_dir: Path, **event) -> None:
    event.update(rank=dist.get_rank(), job=os.environ.get("SLURM_JOB_ID"), restart=int(os.environ.get("SLURM_RESTART_COUNT", 0)))
    with open(run_dir / "events.jsonl", "a") as stream:
        stream.write(json.dumps(event) + "\n")


def save(run_dir: Path, step: int) -> None:
    """Rank 0 writes the checkpoint directory, then (atomically) the `latest` pointer."""
    if dist.get_rank() == 0:
        name = f"step_{step:08d}"
        (run_dir / "checkpoints" / name).mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / name / "state.json").write_text(json.dumps({"step": step}))
        pointer = run_dir / "checkpoints" / "latest.tmp"
        pointer.write_text(name)
        pointer.replace(run_dir / "checkpoints" / "latest")
    dist.barrier()
    record(run_dir, event="saved", step=step)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", default="auto")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    run_dir = Path(config["run_dir"])
    steps, step_seconds = int(config["stand_in"]["steps"]), float(config["stand_in"]["step_seconds"])

    received: list[str] = []
    for signum in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: received.append(signal.Signals(number).name))
    dist.init_process_group("gloo")
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = run_dir / "checkpoints" / "latest"
    step = int(latest.read_text().strip().split("_")[1]) if args.resume == "auto" and latest.exists() else 0
    environment = {name: os.environ.get(name) for name in JOB_ENVIRONMENT}
    record(run_dir, event="start", step=step, world_size=dist.get_world_size(), overrides=args.overrides, environment=environment)
    print(f"stand-in rank {dist.get_rank()} starts at step {step}")
    save_every = int(config["stand_in"].get("save_every", 0))
    fail_at_step = config["stand_in"].get("fail_at_step")
    failing = int(os.environ.get("SLURM_RESTART_COUNT", 0)) < int(config["stand_in"].get("failing_runs", 0))
    while step < steps:
        time.sleep(step_seconds)
        step += 1
        if failing and step == fail_at_step and dist.get_rank() == 1:
            record(run_dir, event="crash", step=step)
            os._exit(CRASH_EXIT_CODE)
        stop = torch.tensor([1 if received else 0])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            record(run_dir, event="signal", step=step, signals=received)
            save(run_dir, step)
            dist.destroy_process_group()
            return REQUEUE_EXIT_CODE
        if save_every and step % save_every == 0:
            save(run_dir, step)
    save(run_dir, step)
    record(run_dir, event="done", step=step)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
