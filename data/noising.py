"""Encoder-input noising for denoising VAE training, vectorised over the whole batch.

Two corruptions of the encoder input, drawn from one uniform number per token so that they are
exclusive and their rates are fractions of the eligible tokens:
- deletion (rate `deletion_rate`): the token is removed and the row shifts left (re-padded),
- masking (rate `masking_rate`): the token is replaced by the mask id (never swapped with it, the
  defect of the reference T5-VAE code).
Eligible tokens are the real tokens except each row's last one (EOS) and any id in `keep_ids`
(e.g. BART's BOS). Padding never changes and `labels` always stay the clean text.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def protected_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids `apply_noise` must never touch: the tokenizer's BOS (BART's `<s>` opens every encoder input).

    T5's tokenizers have no BOS, so nothing extra is protected there; EOS is always kept by position.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    return () if bos is None else (int(bos),)


def mask_token_id_for(tokenizer) -> int:
    """The id used for masking: the tokenizer's mask token, else T5's `<extra_id_0>`, else `<unk>`."""
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    sentinel = tokenizer.get_vocab().get("<extra_id_0>")
    if sentinel is not None:
        return int(sentinel)
    if tokenizer.unk_token_id is not None:
        return int(tokenizer.unk_token_id)
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no mask, <extra_id_0> or unk token")


def apply_noise(
    batch: dict[str, torch.Tensor],
    deletion_rate: float,
    masking_rate: float,
    mask_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    keep_ids: Iterable[int] = (),
) -> dict[str, torch.Tensor]:
    """Returns a new batch whose `input_ids`/`attention_mask` are noised; other entries are passed through.

    Args:
        batch: `input_ids` [B,S], `attention_mask` [B,S] (right-padded), `labels` [B,T].
        deletion_rate, masking_rate: fractions of eligible tokens deleted / masked (sum <= 1).
        generator: the torch RNG to draw from (reproducible noising).
        keep_ids: token ids never noised, besides each row's final token (EOS).
    Returns:
        The batch with `input_ids` [B,S'] and `attention_mask` [B,S'], S' <= S (deletion shortens rows).
    """
    if not (0.0 <= deletion_rate <= 1.0 and 0.0 <= masking_rate <= 1.0 and deletion_rate + masking_rate <= 1.0):
        raise ValueError(
            f"noise rates must be in [0, 1] with deletion + masking <= 1, got deletion={deletion_rate}, "
            f"masking={masking_rate}"
        )
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if deletion_rate == 0.0 and masking_rate == 0.0:
        return dict(batch)
    tokens = attention_mask.bool()  # [B,S]
    lengths = tokens.sum(dim=1)  # [B]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    eligible = tokens & (positions[None, :] < (lengths[:, None] - 1))  # the last real token is EOS
    for token_id in keep_ids:
        eligible &= input_ids != token_id
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    delete = eligible & (draw < deletion_rate)
    mask = eligible & (draw >= deletion_rate) & (draw < deletion_rate + masking_rate)
    noised = torch.where(mask, torch.full_like(input_ids, mask_token_id), input_ids)
    if delete.any():
        keep = tokens & ~delete
        # A stable sort on "not kept" moves kept tokens to the front of each row in their original order.
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        noised = torch.gather(noised, 1, order)
        new_lengths = keep.sum(dim=1)
        width = int(new_lengths.max())
        new_mask = positions[None, :width] < new_lengths[:, None]
        noised = torch.where(new_mask, noised[:, :width], torch.full_like(noised[:, :width], pad_token_id))
        attention_mask = new_mask.to(attention_mask.dtype)
    return {**batch, "input_ids": noised, "attention_mask": attention_mask}


def reference_denoise(
    batch: dict[str, torch.Tensor], deletion_rate: float, pad_token_id: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The reference T5-VAE's denoising (model.reference_compat.denoise), quirks included.

    transformers-into-vaes model_t5.py:81-101, row by row: n = real tokens - 1 (EOS kept), max_drop =
    floor(n p); drop randint(0, max_drop) tokens (upper bound excluded) at randperm(n) positions when
    max_drop > 1, else none, so rows under 2/p tokens are never noised; the row is re-padded; then the
    encoder input ids become the attention mask and the mask the ids (lines 100-101). The same torch
    calls in the same order as the reference, so a generator seeded like the reference's global RNG
    draws the same tokens. Returns a new batch; `labels` untouched.
    """
    input_ids, attention_mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for row, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"])):
        token_length = int(mask.sum()) - 1
        max_drop = int(token_length * deletion_rate)
        drop_count = int(torch.randint(max_drop, size=(1,), generator=generator)) if max_drop > 1 else 0
        dropped = set(torch.randperm(token_length, generator=generator)[:drop_count].tolist())
        keep = torch.tensor([n not in dropped for n in range(ids.shape[0])])
        padding = torch.full((drop_count,), pad_token_id, dtype=ids.dtype)
        input_ids[row] = torch.cat((mask[keep].to(ids.dtype), torch.zeros_like(padding)))  # the swap: ids <- mask
        attention_mask[row] = torch.cat((ids[keep], padding)).to(mask.dtype)  # mask <- ids
    return {**batch, "input_ids": input_ids, "attention_mask": attention_mask}
