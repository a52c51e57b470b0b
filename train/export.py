"""`seq2vae export RUN_DIR [--output DIR] [--checkpoint step_X]`: a run's checkpoint -> save_pretrained dir.

DeepSpeed checkpoints hold ZeRO partitions (one file per rank, fp32 master weights inside the
optimizer state). `get_fp32_state_dict_from_zero_checkpoint` stitches them back into one fp32 state
dict, for any ZeRO stage and any number of ranks, on CPU. The result is loaded into a VAE built from
the run's own config.yaml and written with `Seq2SeqVAE.save_pretrained` (weights, heads, config,
tokenizer), which `Seq2SeqVAE.from_pretrained` reads without DeepSpeed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..model import build_vae
from .checkpoint import latest_checkpoint
from .safe_load import weights_only_loading


def export_run(run_dir: str | Path, output_dir: str | Path, checkpoint: str | None = None) -> Path:
    """Consolidates a (ZeRO-sharded) checkpoint of `run_dir` into a `save_pretrained` directory.

    Args:
        run_dir: a training run directory (config.yaml, checkpoints/).
        output_dir: where to write the model directory.
        checkpoint: a tag such as "step_00001000" under run_dir/checkpoints; None = the latest.
    Returns:
        the written directory.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from .config import load_train_config

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run directory: config.yaml is missing")
    config = load_train_config(config_path)
    checkpoints_dir = run_dir / "checkpoints"
    if checkpoint is None:
        path = latest_checkpoint(checkpoints_dir)
        if path is None:
            raise FileNotFoundError(f"{checkpoints_dir} has no complete checkpoint (no 'latest' file)")
    else:
        path = checkpoints_dir / checkpoint
        if not path.is_dir():
            available = ", ".join(sorted(p.name for p in checkpoints_dir.glob("step_*"))) or "none"
            raise FileNotFoundError(f"checkpoint {checkpoint!r} not found in {checkpoints_dir}; available: {available}")
    with weights_only_loading(path):  # DeepSpeed's loader would otherwise unpickle anything
        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints_dir), tag=path.name)
    vae = build_vae(config.model, pretrained_weights=False).float()  # no pretrained download
    missing, unexpected = vae.load_state_dict(state_dict, strict=False)
    # Tied weights (T5's encoder/decoder embed_tokens are `shared`) are stored once; anything else missing is a bug.
    tied = {name for name, _ in vae.named_parameters(remove_duplicate=False)} - {name for name, _ in vae.named_parameters()}
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the run's model: missing {missing}, unexpected {unexpected}")
    return vae.save_pretrained(output_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seq2vae export", description="Write a self-contained save_pretrained directory from a run's checkpoint."
    )
    parser.add_argument("run_dir", help="training run directory")
    parser.add_argument("--output", help="output directory (default: RUN_DIR/export/<checkpoint>)")
    parser.add_argument("--checkpoint", help="checkpoint tag, e.g. step_00001000 (default: the latest)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        tag = args.checkpoint or (latest_checkpoint(Path(args.run_dir) / "checkpoints") or Path("latest")).name
        output = Path(args.output) if args.output else Path(args.run_dir) / "export" / tag
        written = export_run(args.run_dir, output, args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        print(f"seq2vae export: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0
