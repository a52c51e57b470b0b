"""Peak host memory of `seq2vae export`: lean (meta device + assign) vs the former random-init export.

Builds a random ~100M-parameter T5 VAE, saves a one-rank ZeRO-2 DeepSpeed checkpoint of it as a run
directory, then exports that run in fresh child processes, one per path, each reporting its own peak
RSS (ru_maxrss) above its RSS right after imports. Printed side by side in one run:

- lean fp32 / lean bf16: `train.export.export_run` (the VAE on the meta device, consolidated tensors
  assigned, converted to the export dtype tensor by tensor);
- random-init fp32: the former export (the whole VAE randomly initialised in fp32, then the state
  dict copied in), for comparison.

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
    from seq2vae.train.config import load_train_config
    from seq2vae.train.distributed import init_world
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


def random_init_export(run_dir: Path, output: Path) -> None:
    """The former export: a randomly initialised fp32 VAE, the consolidated state dict copied in."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from seq2vae.model import build_vae
    from seq2vae.train.config import load_train_config

    config = load_train_config(run_dir / "config.yaml")
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step_00000000")
    vae = build_vae(config.model, pretrained_weights=False).float()
    vae.load_state_dict(state_dict, strict=False)
    del state_dict
    vae.save_pretrained(output)


def measure(path: str, run_dir: str, output: str) -> None:
    """Child process: one export, then a JSON line with its memory figures."""
    import torch  # noqa: F401  (imports count toward the baseline, not the export)
    import deepspeed  # noqa: F401
    import transformers  # noqa: F401

    baseline = current_rss()
    stages = {}
    if path == "random-init fp32":
        random_init_export(Path(run_dir), Path(output))
    else:
        lean_export(Path(run_dir), Path(output), path.split()[-1], stages)
    written = sum(p.stat().st_size for p in Path(output).rglob("*.safetensors"))
    stages = {name: value - baseline for name, value in stages.items()}
    print(json.dumps({"baseline": baseline, "peak": peak_rss(), "written": written, "stages": stages}))


def lean_export(run_dir: Path, output: Path, dtype: str, stages: dict) -> None:
    """`export_run`'s steps one by one, recording the peak RSS after each (the breakdown in RESULTS.md)."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from seq2vae.model import build_vae
    from seq2vae.train.config import load_train_config
    from seq2vae.train.export import DTYPES, assemble
    from seq2vae.train.safe_load import weights_only_loading

    config = load_train_config(run_dir / "config.yaml")
    checkpoint = run_dir / "checkpoints" / "step_00000000"
    with weights_only_loading(checkpoint):
        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    stages["consolidated"] = peak_rss()
    with torch.device("meta"):
        vae = build_vae(config.model, pretrained_weights=False)
    vae = assemble(vae, state_dict, DTYPES[dtype], str(checkpoint))
    del state_dict
    stages["assembled"] = peak_rss()
    vae.save_pretrained(output)
    stages["saved"] = peak_rss()


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
        print(f"{'path':<18} {'exported MiB':>12} {'peak above imports MiB':>23} {'(peak - consolidated) / exported':>33}")
        for path in ("lean fp32", "lean bf16", "random-init fp32"):
            output = root / path.replace(" ", "-")
            done = subprocess.run([sys.executable, __file__, "--measure", path, str(run_dir), str(output)],
                                  check=True, env=env, capture_output=True, text=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            above = figures["peak"] - figures["baseline"]
            ratio = (above - consolidated) / figures["written"]
            stages = ", ".join(f"{name} {value / MIB:.0f}" for name, value in figures["stages"].items())
            print(f"{path:<18} {figures['written'] / MIB:>12.0f} {above / MIB:>23.0f} {ratio:>33.2f}   {stages}")


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


if __name__ == "__main__":
    main()
