"""The pretrained backbone, built with its LM head tied or untied exactly as its checkpoint has it.

T5 v1.1, Flan-T5, mT5 and UMT5 checkpoints have an output layer (`lm_head.weight`) of their own; t5-small
and BART tie it to the input embedding. transformers 5 no longer says which in the config: T5-family
configs force `tie_word_embeddings=True` (it also governs the encoder/decoder embedding ties, so it
cannot simply be set False) and `from_pretrained` unties only when it finds both tensors in the file
with different values. That test is what fails silently: `from_config` (export, init_from, meta-device
builds) always ties, and under `deepspeed.zero.Init` the placeholders are empty, compare equal, and the
pretrained head is replaced by the embedding.

So the truth is read from the checkpoint (`head_is_untied`: is there a separate `lm_head.weight` in the
safetensors, different from the embedding?), checked against what its config.json declares (a
disagreement is refused, naming the file), and an untied backbone is built from a subclass of its
architecture whose tied-weight map leaves `lm_head.weight` out (`backbone_class`), so no transformers
code path can tie it, whatever the config says.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedModel
from transformers.utils import cached_file

from ..errors import UserError

HEAD_NAME = "lm_head.weight"
WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
# A head overwritten by the embedding equals it in every row; this many rows decide it without
# reading two [V,D] tensors at every start.
COMPARED_ROWS = 64


class CheckpointHeadError(UserError, ValueError):
    """A checkpoint whose LM head and input embedding disagree with what its config declares."""


@functools.cache
def _config_forces_tie(config_class: type[PretrainedConfig]) -> bool:
    """Whether this transformers release's config class overrides `tie_word_embeddings=False` (T5 family)."""
    return config_class(tie_word_embeddings=False).tie_word_embeddings is True


def declared_untied(values: dict, config_class: type[PretrainedConfig]) -> bool | None:
    """What a config (its JSON values) declares about the LM head: True untied, False tied, None unknown.

    `scale_decoder_outputs` is what transformers 5 keeps of T5's original `tie_word_embeddings` (the
    original T5 ties and scales its decoder output; v1.1 does neither). Where the config class forces
    the tie and no scale flag is stored (mT5 written by transformers 5), the stored True says nothing.
    """
    if values.get("tie_word_embeddings") is False or values.get("scale_decoder_outputs") is False:
        return True
    if values.get("scale_decoder_outputs") is True:
        return False
    if _config_forces_tie(config_class):
        return None
    return not values.get("tie_word_embeddings", True)


def _weight_files(source: str | Path) -> dict[str, str]:
    """Tensor name -> safetensors file holding it, for a backbone directory or hub name ({} if none)."""
    index = cached_file(str(source), WEIGHTS_INDEX, _raise_exceptions_for_missing_entries=False)
    if index is not None:
        folder = Path(index).parent
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        names = {}
        for name, filename in weight_map.items():
            path = cached_file(str(source), filename, _raise_exceptions_for_missing_entries=False)
            names[name] = path or str(folder / filename)
        return names
    single = cached_file(str(source), WEIGHTS_FILE, _raise_exceptions_for_missing_entries=False)
    if single is None:
        return {}
    from safetensors import safe_open

    with safe_open(single, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def _rows(path: str, name: str) -> torch.Tensor:
    from safetensors import safe_open

    with torch.device("cpu"), safe_open(path, framework="pt") as handle:  # also under a meta-device build
        return handle.get_slice(name)[:COMPARED_ROWS]


def stored_head(source: str | Path, embedding_name: str) -> tuple[str, bool] | None:
    """(file, whether it holds an LM head of its own) for the checkpoint at `source`; None without weights.

    A stored `lm_head.weight` equal to the embedding counts as tied (that is how transformers loads it).
    """
    files = _weight_files(source)
    if not files:
        return None
    if HEAD_NAME not in files:
        return files.get(embedding_name, next(iter(files.values()))), False
    if embedding_name not in files:
        return files[HEAD_NAME], True
    head, embedding = _rows(files[HEAD_NAME], HEAD_NAME), _rows(files[embedding_name], embedding_name)
    return files[HEAD_NAME], not torch.equal(head, embedding)


def _embedding_name(config: PretrainedConfig) -> str:
    mapping = getattr(AutoModelForSeq2SeqLM._model_mapping[type(config)], "_tied_weights_keys", None)
    if isinstance(mapping, dict) and HEAD_NAME in mapping:
        return mapping[HEAD_NAME]
    return "shared.weight"


def head_is_untied(config: PretrainedConfig, source: str | Path | None = None) -> bool:
    """Whether the backbone's LM head is its own tensor, as the checkpoint at `source` stores it.

    Without `source` (or without weight files there, e.g. a config-only directory) the config's
    declaration decides (tied when it declares nothing). Raises CheckpointHeadError naming the file
    when the stored head and the config's declaration disagree.
    """
    values = config.to_dict()
    config_file = "the backbone config"
    if source is not None:
        values, _ = PretrainedConfig.get_config_dict(str(source))
        config_file = f"{source}/config.json"
    declared = declared_untied(values, type(config))
    stored = stored_head(source, _embedding_name(config)) if source is not None else None
    if stored is None:
        return bool(declared)
    weights_file, untied = stored
    if declared is True and not untied:
        raise CheckpointHeadError(
            f"{weights_file}: {config_file} declares an untied LM head (tie_word_embeddings or "
            f"scale_decoder_outputs false, as T5 v1.1 / Flan-T5 / mT5 have), but the file holds no {HEAD_NAME} "
            "different from the input embedding: the pretrained head was lost when this checkpoint was written "
            "(e.g. tied by a transformers 5 build under ZeRO-3); re-export it from the training checkpoint"
        )
    if declared is False and untied:
        raise CheckpointHeadError(
            f"{weights_file}: holds an {HEAD_NAME} different from the input embedding, but {config_file} declares "
            "them tied (tie_word_embeddings / scale_decoder_outputs true), which also rescales the decoder output; "
            "the config does not describe these weights"
        )
    return untied


@functools.cache
def _untied_subclass(model_class: type[PreTrainedModel]) -> type[PreTrainedModel]:
    mapping = {k: v for k, v in model_class._tied_weights_keys.items() if k != HEAD_NAME}
    # Same name, so save_pretrained records the original architecture and plain transformers loads it.
    return type(model_class.__name__, (model_class,), {"_tied_weights_keys": mapping, "__module__": model_class.__module__,
                                                         "__qualname__": model_class.__qualname__})


def backbone_class(config: PretrainedConfig, untied: bool) -> type[PreTrainedModel]:
    """The seq2seq LM class for `config`; with `untied`, one that never ties `lm_head.weight`."""
    model_class = AutoModelForSeq2SeqLM._model_mapping[type(config)]
    if untied and isinstance(getattr(model_class, "_tied_weights_keys", None), dict):
        return _untied_subclass(model_class)
    return model_class


# Set on every backbone built here: what its checkpoint says, for `invariants.check_lm_head`.
UNTIED_HEAD_ATTRIBUTE = "seq2vae_untied_head"


def backbone_from_config(config: PretrainedConfig, untied: bool) -> PreTrainedModel:
    """A randomly initialised backbone (inside zero.Init / a meta-device context: their placeholders)."""
    backbone = backbone_class(config, untied)._from_config(config)
    setattr(backbone, UNTIED_HEAD_ATTRIBUTE, untied)
    return backbone


def pretrained_backbone(source: str | Path, config: PretrainedConfig, **kwargs) -> PreTrainedModel:
    """`from_pretrained(source)` with the LM head as the checkpoint stores it (CheckpointHeadError if
    the checkpoint contradicts its config)."""
    untied = head_is_untied(config, source)
    backbone = backbone_class(config, untied).from_pretrained(str(source), config=config, **kwargs)
    setattr(backbone, UNTIED_HEAD_ATTRIBUTE, untied)
    return backbone


def expected_untied(backbone: PreTrainedModel) -> bool:
    """What the backbone's checkpoint says about its head (its config's declaration if built elsewhere)."""
    recorded = getattr(backbone, UNTIED_HEAD_ATTRIBUTE, None)
    return head_is_untied(backbone.config) if recorded is None else recorded


def lm_head_is_tied(backbone: PreTrainedModel) -> bool:
    """Whether the built backbone's output layer is its input embedding (one Parameter)."""
    output = backbone.get_output_embeddings()
    return output is not None and output.weight is backbone.get_input_embeddings().weight
