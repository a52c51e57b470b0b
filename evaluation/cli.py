"""`seq2vae eval`: evaluate a trained model on shards or a text / JSONL file, or compare saved results.

    seq2vae eval --model PATH --data PATH --iw-samples 500 --batch-size 16 --output metrics.json --seed 0
    torchrun --nproc_per_node 8 -m seq2vae eval ...      (same numbers, sentences split across ranks)
    seq2vae eval --compare a.json b.json ...

--model is a save_pretrained directory, or a training run directory (config.yaml + checkpoints/)
which is exported to a temporary directory first. --data is a shard directory (its --split) or a
.txt / .jsonl file (JSONL fields besides the text become probe factors).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..checkpoint.export import export_run
from ..checkpoint.saving import named_checkpoint
from ..config import add_flags, from_flags
from ..distributed import gather_objects, process_group
from ..errors import UserError
from ..model import Seq2SeqVAE
from ..model.prior import saved_priors
from ..model.vae import BACKBONE_SUBDIR, saved_tokenizer
from ..plan.memory import InferenceBatch
from .data import load_samples
from .harness import CONVENTIONS, EvalConfig, evaluate
from .placement import PLACEMENTS, eval_batch, load_zero3, resolve_placement
from .report import format_comparison, format_table

logger = logging.getLogger("seq2vae.eval")
EXPORT_POLL_S = 1.0
_STARTED = time.time()  # when this rank imported the CLI


# Flags whose names predate the generated ones (documented, used in scripts).
_FLAG_NAMES = {"num_prior_samples": "--prior-samples", "num_interpolations": "--interpolations"}


class EvalInputError(UserError, ValueError):
    """A --model or option `seq2vae eval` cannot use; the message names it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2vae eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="save_pretrained directory or training run directory")
    parser.add_argument(
        "--checkpoint", default="latest",
        help="which checkpoint of a run directory --model: latest, best (checkpoint.keep_best) or a tag such as "
        "step_00001000 (default: %(default)s)",
    )
    parser.add_argument("--data", help="shard directory, or .txt / .jsonl file (optionally .gz)")
    parser.add_argument("--split", default="valid", help="shard split to evaluate (default: valid)")
    add_flags(parser, EvalConfig, _FLAG_NAMES)  # every EvalConfig field is a flag
    parser.add_argument("--max-sentences", type=int, default=None, help="evaluate only the first N sentences")
    parser.add_argument("--max-length", type=int, default=512, help="token cap for text / JSONL input (default: %(default)s)")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the sentence (default: %(default)s)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available, one GPU per rank)")
    parser.add_argument(
        "--placement", default="auto", choices=PLACEMENTS,
        help="replica: the whole model on every rank; zero3: partitioned over the ranks (models too big for one); "
        "auto: the first that fits by the planner's memory estimate, replica first (default: %(default)s)",
    )
    parser.add_argument("--compare", nargs="+", metavar="JSON", help="print saved results side by side and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """User errors (EvalInputError, EvalDataError, ShardError, ConfigError) propagate to `seq2vae.cli`,
    which prints one line from rank 0 and exits 2: under torchrun every rank meets the same input."""
    args = build_parser().parse_args(argv)
    if args.compare:
        return compare(args.compare)
    if not args.model or not args.data:
        raise EvalInputError("--model and --data are required (or --compare a.json b.json ...)")
    config = from_flags(EvalConfig, args)
    try:  # before any collective: rank 0 exports a run directory while the others wait on the filesystem
        model_dir, model_kind = _model_directory(Path(args.model), args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise _as_user_error(error) from error
    if config.free_bits is None and model_kind.startswith("run export"):
        config.free_bits = _trained_free_bits(Path(args.model))
    with process_group(args.device) as device:
        rank = dist.get_rank() if dist.is_initialized() else 0
        level = logging.INFO if rank == 0 else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        try:
            # The data before the model: its longest sentence sizes the activations --placement auto weighs.
            tokenizer, embedding_size = _text_interface(model_dir)
            samples, data_info = load_samples(
                args.data, tokenizer, split=args.split, max_sentences=args.max_sentences,
                max_length=args.max_length, text_field=args.text_field, embedding_size=embedding_size,
            )
            if not samples:
                print(f"seq2vae eval: no sentences to evaluate in {args.data} ({_describe_skips(data_info)})", file=sys.stderr)
                return 1
            longest = max(len(sample["input_ids"]) for sample in samples)
            batch = eval_batch(config.iw_samples, config.batch_size, config.decoder_batch_size, device, longest)
            with _loaded_model(model_dir, device, args.placement, batch) as (vae, placement):
                logger.info("evaluating %d sentences from %s with K=%d", len(samples), args.data, config.iw_samples)
                learned_priors = saved_priors(model_dir)  # sampled beside N(0, I) when `seq2vae fit-prior` saved any
                result = evaluate(vae, samples, config, learned_priors=learned_priors)
        except (FileNotFoundError, ValueError) as error:
            raise _as_user_error(error) from error
        if rank != 0:
            return 0
        record = {
            "model": str(args.model),
            "model_kind": model_kind,
            "placement": placement,
            "data": str(args.data),
            "data_info": data_info,
            "split": args.split if data_info.get("kind") == "shards" else None,
            "iw_samples": config.iw_samples,
            "seed": config.seed,
            "learned_prior": [prior.record for prior in learned_priors] or None,
            "conventions": CONVENTIONS,
            "versions": _versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **result,
        }
        print(format_table(record))
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(record, indent=2))
            print(f"wrote {args.output}")
    return 0


def _as_user_error(error: Exception) -> UserError:
    """The user's input problem as a UserError (kept as it is when it already is one)."""
    return error if isinstance(error, UserError) else EvalInputError(str(error))


def compare(paths: list[str]) -> int:
    results = []
    for path in paths:
        try:
            results.append((Path(path).stem, json.loads(Path(path).read_text())))
        except (OSError, json.JSONDecodeError) as error:
            print(f"seq2vae eval --compare: cannot read {path}: {error}", file=sys.stderr)
            return 1
    print(format_comparison(results))
    return 0


def _describe_skips(info: dict) -> str:
    skipped = ", ".join(f"{count} {reason}" for reason, count in info.get("skipped", {}).items())
    return f"{info.get('lines_read', 0)} lines read" + (f"; skipped: {skipped}" if skipped else "")


def _model_directory(path: Path, which: str = "latest") -> tuple[Path, str]:
    """(save_pretrained directory, "pretrained" | "run export <tag>") for --model.

    A run directory's checkpoint `which` (latest, best or a tag) is exported once, by rank 0, to RUN_DIR/export/<tag> (where
    `seq2vae export` writes too; the run directory is on storage every rank shares): into a staging
    folder renamed when complete. The other ranks wait for it on the filesystem, not in a collective,
    so a long export cannot trip a process-group timeout; an export that fails on rank 0 leaves a
    marker (tagged with this torchrun job's id) that fails them too.
    """
    if (path / "vae_config.json").is_file():
        return path, "pretrained"
    if not ((path / "config.yaml").is_file() and (path / "checkpoints").is_dir()):
        raise FileNotFoundError(
            f"--model {path}: neither a saved model (no vae_config.json) nor a training run directory "
            "(no config.yaml + checkpoints/)"
        )

    try:
        checkpoint = named_checkpoint(path / "checkpoints", which)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--model {path} --checkpoint {which}: {error}") from None
    target = path / "export" / checkpoint.name
    failed = target.with_name(f".{target.name}.failed")
    job = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if int(os.environ.get("RANK", "0")) == 0 and not (target / "vae_config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)  # where the failure marker goes, too
        staging = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy written by an older version
        try:
            export_run(path, staging, checkpoint.name)
        except (FileNotFoundError, ValueError) as error:
            failed.write_text(json.dumps({"job": job, "error": str(error)}))
            raise
        staging.rename(target)
    while not (target / "vae_config.json").is_file():
        # A marker counts only if this job wrote it (torchrun's run id is "none" unless --rdzv-id is
        # given, so the time it was written tells it from an earlier job's).
        if failed.is_file() and failed.stat().st_mtime >= _STARTED - 5 and json.loads(failed.read_text()).get("job") == job:
            raise ValueError(f"--model {path}: exporting {checkpoint.name} failed on rank 0: "
                             f"{json.loads(failed.read_text())['error']}")
        time.sleep(EXPORT_POLL_S)
    return target, f"run export {checkpoint.name}"


def _trained_free_bits(run_dir: Path) -> float | None:
    """The last phase's per-dimension free-bits threshold of a run directory (None: none, or per sentence),
    so the floor occupancy of a run is reported without the user restating its config."""
    phases = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("phases") or [{}]
    last = phases[-1]
    threshold = last.get("free_bits") or 0.0
    return float(threshold) if threshold > 0 and last.get("free_bits_mode", "dimension") == "dimension" else None


def _text_interface(model_dir: Path):
    """(the saved model's tokenizer or None, rows of its token embedding), read without its weights."""
    from transformers import AutoConfig

    return saved_tokenizer(model_dir), AutoConfig.from_pretrained(model_dir / BACKBONE_SUBDIR).vocab_size


@contextlib.contextmanager
def _loaded_model(model_dir: Path, device: torch.device, requested: str, batch: InferenceBatch):
    """Yields (Seq2SeqVAE on `device` or partitioned over the ranks, the placement used);
    `batch` is the evaluation's largest decoder call, which --placement auto sizes."""
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    try:
        decision = resolve_placement(requested, model_dir, device, world_size, batch)
    except ValueError as error:
        decision = error
    # Rank 0's decision for all: ranks whose memory differs must still agree, or they would deadlock.
    decision = gather_objects(decision)[0]
    if isinstance(decision, ValueError):
        raise decision
    placement = decision
    logger.info("placement: %s (%s requested) on %d rank(s)", placement, requested, world_size)
    if placement == "replica":
        yield Seq2SeqVAE.from_pretrained(model_dir, device=device), placement
        return
    module, engine = load_zero3(model_dir)
    yield module, placement
    del engine  # keeps the ZeRO-3 hooks alive until evaluation is over


def _versions() -> dict[str, str]:
    import numpy
    import transformers

    from .. import __version__

    return {
        "seq2vae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }
