"""A torchrun worker for test_distributed: joins the world as the trainer does, runs the gathers the
trainer's logging runs, and leaves through `shutdown_world` as the entry points do."""

import os

import torch
import torch.distributed as dist

from seq2vae.distributed import init_world, install_extensions_dir, shutdown_world

user_choice = os.environ.get("TORCH_EXTENSIONS_DIR")
world = init_world(timeout_s=60)
# The CPU all-reduce op was built (or found) under this install, unless the caller chose a place.
assert os.environ["TORCH_EXTENSIONS_DIR"] == (user_choice or str(install_extensions_dir()))
value = torch.full((3,), float(world.rank))
dist.all_reduce(value)
gathered = [torch.zeros(3) for _ in range(world.size)]
dist.all_gather(gathered, value)
assert [g.tolist() for g in gathered] == [[1.0] * 3] * world.size
shutdown_world()
assert not dist.is_initialized()
