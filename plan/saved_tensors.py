"""Measured activations: the bytes autograd keeps for backward in one training forward of the VAE.

`torch.autograd.graph.saved_tensors_hooks` sees every tensor an operation saves for backward. Each
storage is counted once (the same hidden state saved by a norm, a matmul and a residual is one
buffer), parameters and their views are not activations, and each saved storage is attributed to
the encoder or decoder layer running when it was saved ("other": embeddings, the LM head and loss,
the VAE's heads). Under non-reentrant activation checkpointing the layers' inner tensors are held by
the checkpoint, not saved, and what a checkpointed layer keeps is its input, counted from a forward
pre-hook. `bench/bench_plan.py` prints this beside `plan.memory.activation_bytes`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch


@dataclass
class SavedBytes:
    """Bytes kept for backward, per layer ("encoder.0", "decoder.1", ...) and in all."""

    per_layer: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return sum(self.per_layer.values())

    def layers(self, stack: str) -> list[int]:
        names = sorted((name for name in self.per_layer if name.startswith(stack + ".")), key=lambda n: int(n.split(".")[1]))
        return [self.per_layer[name] for name in names]


def _layer_modules(backbone) -> dict[str, torch.nn.Module]:
    encoder, decoder = backbone.get_encoder(), backbone.get_decoder()
    blocks = {"encoder": getattr(encoder, "block", None) or encoder.layers,
              "decoder": getattr(decoder, "block", None) or decoder.layers}
    return {f"{stack}.{index}": module for stack, modules in blocks.items() for index, module in enumerate(modules)}


def measure_saved_bytes(vae, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> SavedBytes:
    """Runs one training forward (train mode, as the trainer does) and returns what it saved for backward."""
    parameters = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    seen: set[int] = set()
    saved = SavedBytes()
    running: list[str] = []

    def count(tensor: torch.Tensor, where: str) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in parameters or pointer in seen or storage.nbytes() == 0:
            return
        seen.add(pointer)
        saved.per_layer[where] += storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        count(tensor, running[-1] if running else "other")
        return tensor

    handles = []
    # transformers 5 renamed gradient to activation checkpointing; older releases lack the new name.
    checkpointed = getattr(vae.backbone, "is_activation_checkpointing", None)
    if checkpointed is None:
        checkpointed = vae.backbone.is_gradient_checkpointing
    for name, module in _layer_modules(vae.backbone).items():
        def enter(module, args, kwargs, name=name):
            running.append(name)
            if checkpointed:
                hidden = args[0] if args else kwargs["hidden_states"]
                count(hidden, name)

        def leave(module, args, output):
            running.pop()

        handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(module.register_forward_hook(leave))
    vae.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = vae(input_ids, attention_mask, labels)
            loss = output.recon_nll.mean() + output.kl.mean()
    finally:
        for handle in handles:
            handle.remove()
    del loss
    return saved
