"""Asynchronous checkpoint writes: DeepSpeed hands each file's state to us, we copy it and write it later.

`BackgroundCheckpointEngine` wraps the engine's `checkpoint_engine` (DeepSpeed calls its `save` once
per file: model states, each rank's ZeRO optimizer shard). `save` copies every tensor of the state to
fresh host memory, so the optimizer steps that follow cannot change what is written, queues the copy
to one writer thread, and returns; `wait` blocks until every queued file is written and re-raises the
first write error. The checkpoint is not complete until then: `saving.finish_checkpoint` waits, then
seals it (fsync + manifest) and only then moves `latest`, as a synchronous save does.

Why not DeepSpeed 0.19.8's own `"checkpoint": {"writer": {"decoupled": true}}`: its writer process
commits at the next optimizer step and writes `latest` itself, before anything of ours could fsync and
checksum the files, and its fast writer needs the async-I/O op (libaio), absent on CPU machines.
The cost is host memory for one copy of this rank's checkpoint state while it is written.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def host_copy(state: Any) -> Any:
    """`state` with every tensor copied to new CPU memory; dicts (of any kind), lists and tuples rebuilt,
    everything else kept as it is (DeepSpeed's states hold numbers, strings, torch.Size, enums, configs)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        rebuilt = copy.copy(state)  # keeps OrderedDict / defaultdict and their attributes
        for key, value in state.items():
            rebuilt[key] = host_copy(value)
        return rebuilt
    if type(state) in (list, tuple):  # not torch.Size or named tuples: they hold no tensors to copy
        return type(state)(host_copy(value) for value in state)
    return state


class BackgroundCheckpointEngine:
    """Wraps the engine's checkpoint engine: `save` writes from a thread, everything else (loading,
    commit, directories) is the wrapped engine's."""

    def __init__(self, inner):
        self.inner = inner
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seq2vae-checkpoint-writer")
        self._pending: list[Future] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def save(self, state_dict, path: str) -> None:
        snapshot = host_copy(state_dict)
        self._pending.append(self._writer.submit(self.inner.save, snapshot, path))

    def wait(self) -> None:
        """Blocks until every queued file is written (not yet fsynced); re-raises the first write error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


def install_background_writer(engine) -> BackgroundCheckpointEngine:
    """Makes `engine` (a DeepSpeedEngine) write its checkpoints through a BackgroundCheckpointEngine."""
    engine.checkpoint_engine = BackgroundCheckpointEngine(engine.checkpoint_engine)
    return engine.checkpoint_engine
