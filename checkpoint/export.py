"""`seq2vae export RUN_DIR [--output DIR] [--checkpoint step_X] [--dtype fp32|bf16|fp16] [--max-shard-size 5GB]`.

A run's checkpoint -> a `save_pretrained` directory that `Seq2SeqVAE.from_pretrained` reads without
DeepSpeed. DeepSpeed checkpoints hold ZeRO partitions (one file per rank, fp32 master weights inside
the optimizer state); `consolidate.py` stitches them into one state dict, for any ZeRO stage and
number of ranks, on CPU, opening the files memory-mapped and weights-only (`safe_load.py`) and
writing each parameter straight in the export dtype (the values DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint` returns, without its memory peak at twice that state).

Lean: the VAE is built from the run's config.yaml on the meta device (no random fp32 initialisation
of the whole model) and the consolidated tensors become its parameters (`load_state_dict(assign=True)`).
Host memory peaks near the exported model's bytes (bench/bench_export.py measures it). Backbones
larger than --max-shard-size are written as several safetensors shards with an index, as
transformers does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import UserError
from ..model import Seq2SeqVAE, build_vae
from ..model.build import backbone_config
from ..model.invariants import check_model, refuse_fp16
from .saving import named_checkpoint, run_model_config


class ExportError(UserError, ValueError):
    """A run directory, checkpoint or option `seq2vae export` cannot use; the message names it."""


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tied_aliases(vae: Seq2SeqVAE) -> list[list[str]]:
    """Groups of state-dict names of one tied parameter (T5's shared / embed_tokens / lm_head)."""
    names_by_id: dict[int, list[str]] = {}
    for name, parameter in vae.named_parameters(remove_duplicate=False):
        names_by_id.setdefault(id(parameter), []).append(name)
    return [names for names in names_by_id.values() if len(names) > 1]


def assemble(vae: Seq2SeqVAE, state_dict: dict[str, torch.Tensor], dtype: torch.dtype, source: str) -> Seq2SeqVAE:
    """Makes the consolidated tensors the parameters of a meta-device `vae`, in `dtype`; re-ties tied weights.

    `state_dict` is consumed (entries are replaced by their converted copies as it goes), so originals in
    another dtype can be freed one by one (`consolidate` already writes them in `dtype`: then nothing is
    copied). Raises ValueError naming what does not match.
    """
    expected = set(vae.state_dict())
    for names in _tied_aliases(vae):  # stored once in the checkpoint, needed under every name here
        present = [name for name in names if name in state_dict]
        for name in names:
            if present and name not in state_dict:
                state_dict[name] = state_dict[present[0]]
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(f"checkpoint {source} does not match the run's model: missing {missing}, unexpected {unexpected}")
    converted: dict[int, torch.Tensor] = {}  # tied names share one converted tensor
    for name in list(state_dict):
        tensor = state_dict[name]
        if tensor.is_floating_point() and id(tensor) not in converted:
            converted[id(tensor)] = tensor.to(dtype)
        state_dict[name] = converted.get(id(tensor), tensor)
    vae.load_state_dict(state_dict, assign=True)
    vae.backbone.tie_weights()  # assign=True gave each tied name its own Parameter: one again
    still_meta = [name for name, tensor in vae.state_dict().items() if tensor.is_meta]
    if still_meta:
        raise ValueError(f"checkpoint {source}: no values for {still_meta}")
    return vae


def export_run(
    run_dir: str | Path,
    output_dir: str | Path,
    checkpoint: str | None = None,
    dtype: str = "fp32",
    max_shard_size: str | int = "5GB",
) -> Path:
    """Consolidates a (ZeRO-sharded) checkpoint of `run_dir` into a `save_pretrained` directory.

    Args:
        run_dir: a training run directory (config.yaml, checkpoints/).
        output_dir: where to write the model directory.
        checkpoint: a tag such as "step_00001000" under run_dir/checkpoints, or "latest" / "best" (the
            checkpoint that pointer file names); None = the latest.
        dtype: "fp32", "bf16" or "fp16": the dtype of every floating-point tensor written.
        max_shard_size: largest backbone safetensors file ("5GB", "200MB" or bytes).
    Returns:
        the written directory.
    """
    from .consolidate import consolidate  # imports DeepSpeed: `seq2vae eval` of a model directory needs none

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: valid: {', '.join(DTYPES)}")
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run directory: config.yaml is missing")
    model_config = run_model_config(run_dir)
    path = named_checkpoint(run_dir / "checkpoints", checkpoint or "latest")
    # Before consolidating: fp16 T5 would be written, then give inf/NaN wherever it is loaded.
    refuse_fp16(backbone_config(model_config).model_type, DTYPES[dtype], f"seq2vae export --dtype {dtype}")
    state_dict = consolidate(path, DTYPES[dtype])
    with torch.device("meta"):  # architecture only: no weights read, no random initialisation
        vae = build_vae(model_config, pretrained_weights=False)
    vae = assemble(vae, state_dict, DTYPES[dtype], str(path))
    del state_dict
    check_model(vae)  # the exported model reads z and keeps the checkpoint's LM head
    return vae.save_pretrained(output_dir, max_shard_size=max_shard_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seq2vae export", description="Write a self-contained save_pretrained directory from a run's checkpoint."
    )
    parser.add_argument("run_dir", help="training run directory")
    parser.add_argument("--output", help="output directory (default: RUN_DIR/export/<checkpoint>)")
    parser.add_argument(
        "--checkpoint", default="latest",
        help="latest, best (the best-validation checkpoint of a checkpoint.keep_best run) or a tag such as "
        "step_00001000 (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32", help="dtype of the written weights (default: %(default)s)"
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest backbone weights file, e.g. 5GB, 500MB (default: %(default)s)"
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        tag = named_checkpoint(Path(args.run_dir) / "checkpoints", args.checkpoint).name
        output = Path(args.output) if args.output else Path(args.run_dir) / "export" / tag
        written = export_run(args.run_dir, output, args.checkpoint, args.dtype, args.max_shard_size)
    except (FileNotFoundError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        raise ExportError(str(error)) from error
    print(f"wrote {written}")
    return 0
