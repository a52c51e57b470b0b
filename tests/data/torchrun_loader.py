"""Run under `torchrun --nproc_per_node N`: one epoch of the training loader per rank, with a collective
per step as training does (a rank that ran dry would hang it), then write the keys this rank saw."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from seq2vae.data.stream import build_loader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    loader = build_loader(
        args.shards, rank=rank, world_size=world_size, batch_size=args.batch_size, seed=11, pad_token_id=0,
        num_workers=args.num_workers, with_keys=True,
    )
    keys, steps = [], 0
    for _ in range(loader.batches_per_epoch):
        batch = next(loader)
        keys += batch["keys"]
        tokens = batch["attention_mask"].sum().reshape(1)
        dist.all_reduce(tokens)
        steps += 1
    record = {"rank": rank, "steps": steps, "batches_per_epoch": loader.batches_per_epoch,
              "dropped_per_epoch": loader.dropped_per_epoch, "keys": keys, "state": loader.state_dict()}
    Path(args.output, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
