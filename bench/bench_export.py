"""Peak host memory of `seq2vae export`: our consolidation (train/consolidate.py) vs DeepSpeed's.

Builds a random ~100M-parameter T5 VAE, saves a one-rank ZeRO-2 DeepSpeed checkpoint of it as a run
directory, then exports that run in fresh child processes, one per path, each reporting its own peak
RSS (ru_maxrss) above its RSS right after imports, and the peak after each step. Printed side by side
in one run:

- lean fp32 / lean bf16: `train.export.export_run` as it is: `consolidate` (files memory-mapped, each
  parameter written straight in the export dtype, file pages handed back once copied), then the VAE
  built on the meta device with those tensors assigned, then saved;
- lean fp32, pages kept: the same with `MappedPages.release` disabled. RSS counts the file-backed
  pages of the mapped checkpoint that were read (RssFile), although the kernel could drop them: this
  row shows what handing them back saves in what ru_maxrss, `top` or an RSS-limited scheduler see;
- deepspeed fp32 / deepspeed bf16: the former export, DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint`
  then the same assembly and save.

RSS is the measure throughout (not only anonymous memory), so nothing file-backed is left out. The
lean and DeepSpeed exports of one dtype must write byte-identical safetensors files (checked).

Goal (issue 10.4): peak above imports <= consolidated fp32 state + 1.3 x the exported model's bytes.

    python bench/bench_export.py            # ~100M parameters, a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 2**20


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def make_run(root: Path, layers: int, width: int) -> Path:
    """A run directory (config.yaml + a one-rank ZeRO-2 checkpoint) of a random T5 VAE."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from seq2vae.config import save_config
    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer
    from seq2vae.distributed import init_world
    from seq2vae.train.config import load_train_config
    from seq2vae.train.engine import build_engine

    tokenizer = root / "tokenizer"
    train_tokenizer((row["text"] for row in generate_corpus(2000, seed=0)), tokenizer, vocab_size=1000)
    backbone = root / "backbone"
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=width, d_kv=64, d_ff=8 * width // 3, num_layers=layers,
                      num_decoder_layers=layers, num_heads=width // 64, tie_word_embeddings=True, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(backbone)
    run_dir = root / "run"
    run_dir.mkdir()
    overrides = [f"run_dir={run_dir}", "data.train=unused", f"model.backbone={backbone}", f"model.tokenizer={tokenizer}",
                 "model.latent_dim=32", "deepspeed=zero2", "precision=fp32"]
    train_config = load_train_config(None, overrides)
    save_config(train_config, run_dir / "config.yaml")
    world = init_world(600)
    parts = build_engine(train_config, world)
    parts.engine.save_checkpoint(str(run_dir / "checkpoints"), tag="step_00000000")
    (run_dir / "checkpoints" / "latest").write_text("step_00000000\n")
    return run_dir


# path -> (consolidation, dtype, whether consolidate hands the file pages it read back)
PATHS = {
    "lean fp32": ("lean", "fp32", True),
    "lean bf16": ("lean", "bf16", True),
    "lean fp32, pages kept": ("lean", "fp32", False),
    "deepspeed fp32": ("deepspeed", "fp32", True),
    "deepspeed bf16": ("deepspeed", "bf16", True),
}


def rss_parts() -> dict[str, int]:
    """The current anonymous and file-backed resident bytes (RssAnon, RssFile of /proc/self/status)."""
    parts = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, value, _ = line.split()
                parts[name.rstrip(":")] = int(value) * 1024
    return parts


def measure(path: str, run_dir: str, output: str) -> None:
    """Child process: one export, then a JSON line with its memory figures (relative to after imports)."""
    # Imports count toward the baseline, not the export.
    import deepspeed.utils.zero_to_fp32  # noqa: F401
    import transformers.models.t5.modeling_t5  # noqa: F401

    import seq2vae.checkpoint.export  # noqa: F401
    import seq2vae.model  # noqa: F401
    import seq2vae.train.config  # noqa: F401
    import seq2vae.train.consolidate  # noqa: F401
    from seq2vae.checkpoint.mapped_pages import MappedPages

    consolidation, dtype, release_pages = PATHS[path]
    if not release_pages:
        MappedPages.release = lambda self, tensor: None
    baseline, baseline_parts = current_rss(), rss_parts()
    peaks, parts = export(Path(run_dir), Path(output), consolidation, dtype)
    print(json.dumps({
        "peak": peak_rss() - baseline,
        "written": sum(p.stat().st_size for p in Path(output).rglob("*.safetensors")),
        "peaks": {name: value - baseline for name, value in peaks.items()},
        "parts": {name: value - baseline_parts[name] for name, value in parts.items()},
    }))


def export(run_dir: Path, output: Path, consolidation: str, dtype: str) -> tuple[dict[str, int], dict[str, int]]:
    """`export_run`'s steps one by one, `consolidation` "lean" (ours) or "deepspeed".

    Returns the peak RSS after each step, and RssAnon / RssFile right after the consolidation.
    """
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from seq2vae.checkpoint.consolidate import consolidate
    from seq2vae.checkpoint.export import DTYPES, assemble
    from seq2vae.model import build_vae
    from seq2vae.train.config import load_train_config

    config = load_train_config(run_dir / "config.yaml")
    checkpoint = run_dir / "checkpoints" / "step_00000000"
    if consolidation == "lean":
        state_dict = consolidate(checkpoint, DTYPES[dtype])
    else:  # our own checkpoint: trusted, read as DeepSpeed reads it
        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    peaks = {"consolidated": peak_rss()}
    parts = rss_parts()
    with torch.device("meta"):
        vae = build_vae(config.model, pretrained_weights=False)
    vae = assemble(vae, state_dict, DTYPES[dtype], str(checkpoint))
    del state_dict
    peaks["assembled"] = peak_rss()
    vae.save_pretrained(output)
    peaks["saved"] = peak_rss()
    return peaks, parts


def same_files(first: Path, second: Path) -> bool:
    names = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    return names == sorted(p.relative_to(second) for p in second.rglob("*.safetensors")) and all(
        (first / name).read_bytes() == (second / name).read_bytes() for name in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers (default: %(default)s)")
    parser.add_argument("--width", type=int, default=768, help="d_model (default: %(default)s)")
    parser.add_argument("--measure", nargs=3, metavar=("PATH", "RUN_DIR", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([sys.executable, "-c", f"import sys; sys.argv=['x']; from bench_export import make_run; "
                        f"from pathlib import Path; make_run(Path({str(root)!r}), {args.layers}, {args.width})"],
                       check=True, env={**env, "PYTHONPATH": str(Path(__file__).parent)}, capture_output=True)
        run_dir = root / "run"
        from safetensors import safe_open

        parameters = 0
        for path in (root / "backbone").glob("*.safetensors"):
            with safe_open(str(path), framework="pt") as handle:
                parameters += sum(_numel(handle.get_slice(key).get_shape()) for key in handle.keys())
        consolidated = 4 * parameters  # fp32 state dict (VAE heads are < 0.1% and left out)
        print(f"random T5 VAE, {parameters / 1e6:.1f}M backbone parameters; consolidated fp32 state {consolidated / MIB:.0f} MiB")
        print(f"{'path':<22} {'exported MiB':>12} {'peak above imports MiB':>23} {'(peak - consolidated) / exported':>33}"
              "   peak after consolidation / assembly / save; RssAnon + RssFile after consolidation (MiB)")
        for path in PATHS:
            output = root / path.replace(" ", "-").replace(",", "")
            done = subprocess.run([sys.executable, __file__, "--measure", path, str(run_dir), str(output)],
                                  check=True, env=env, capture_output=True, text=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = (figures["peak"] - consolidated) / figures["written"]
            peaks = " / ".join(f"{value / MIB:.0f}" for value in figures["peaks"].values())
            parts = f"{figures['parts']['RssAnon'] / MIB:.0f} + {figures['parts']['RssFile'] / MIB:.0f}"
            print(f"{path:<22} {figures['written'] / MIB:>12.0f} {figures['peak'] / MIB:>23.0f} {ratio:>33.2f}"
                  f"   {peaks}; {parts}")
        for dtype in ("fp32", "bf16"):
            identical = same_files(root / f"lean-{dtype}", root / f"deepspeed-{dtype}")
            print(f"lean and deepspeed {dtype} exports byte-identical: {identical}")


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


if __name__ == "__main__":
    main()
