"""The planner's per-rank model-state bytes against what DeepSpeed really holds, side by side.

For each backbone (the debug T5, and a randomly initialised ~100M-parameter T5), ZeRO stage (1, 2, 3)
and world size (1, 2, 4 CPU ranks under torchrun, gloo), a worker builds the real engine the way
training does (`seq2vae.train.engine.build_engine`: bf16, ZeRO-3 under zero.Init), runs one
optimizer step, and sums the bytes of the distinct tensor storages the engine owns on that rank:
everything reachable from the ZeRO optimizer object (flat bf16 parameter buffers or stage-3
partitions, fp32 master partitions, fp32 gradient buffers / partitions, reduce buckets, AdamW
moments) plus the module's parameters (stage 3: their partitions and the persistent ones kept
whole), measured after the second backward, before its optimizer step. Not RSS, which on CPU is
noisy and counts the allocator and libraries. The planner's prediction for the same setting is
`model_state_bytes(...).device_total - gathered` (gathered stage-3 parameters are released when
backward ends, so they are not resident when measured).

    python bench/bench_plan.py [--worlds 1 2 4] [--stages 1 2 3] [--models debug 100m]

Prints one row per setting with the ratio measured / predicted (goal: within 10%).

    python bench/bench_plan.py --activations

compares the planner's activations (`plan.memory.activation_breakdown`, device "cpu") with the
bytes autograd saves for backward in one training forward (`plan.saved_tensors`), per layer and in
all, for T5 (relu, gated gelu_new, gated gelu_pytorch_tanh) and BART at two widths, fp32 and bf16,
with and without activation checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# ~100M parameters: D 640, 8+8 layers, gated FFN 1664, 10 heads x 64, vocabulary 32128, tied head.
T5_100M = dict(
    vocab_size=32128, d_model=640, d_kv=64, d_ff=1664, num_layers=8, num_decoder_layers=8, num_heads=10,
    feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)


def owned_bytes(engine) -> int:
    """Bytes of the distinct storages reachable from the engine's optimizer and its module's parameters."""
    seen_storages: set[int] = set()
    seen_objects: set[int] = set()
    total = 0

    def visit(obj) -> None:
        nonlocal total
        if id(obj) in seen_objects:
            return
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                storage = obj.untyped_storage()
                if storage.data_ptr() and storage.data_ptr() not in seen_storages:
                    seen_storages.add(storage.data_ptr())
                    total += storage.nbytes()
            for name in ("grad", "ds_tensor", "grad_accum"):
                child = getattr(obj, name, None)
                if child is not None:
                    visit(child)
            return
        if isinstance(obj, dict):
            for key, value in obj.items():
                visit(key)
                visit(value)
            return
        if isinstance(obj, (list, tuple, set)):
            for item in obj:
                visit(item)
            return
        module = type(obj).__module__ or ""
        if isinstance(obj, torch.optim.Optimizer) or module.startswith("deepspeed.runtime"):
            visit(vars(obj))

    visit(engine.optimizer)
    for parameter in engine.module.parameters():
        visit(parameter)
    return total


def worker(args: argparse.Namespace) -> None:
    from seq2vae.distributed import init_world
    from seq2vae.model.config import VAEConfig
    from seq2vae.train.config import DataConfig, TrainConfig
    from seq2vae.train.engine import build_engine

    world = init_world(600)
    config = TrainConfig(
        model=VAEConfig(backbone=args.backbone, tokenizer=args.tokenizer, latent_dim=32),
        data=DataConfig(train="unused", micro_batch_size=2),
        deepspeed=f"zero{args.stage}",
        precision="bf16",
    )
    parts = build_engine(config, world)
    generator = torch.Generator().manual_seed(world.rank)
    # Two steps; measured between the second backward and its optimizer step, when everything the
    # planner counts is alive at once: AdamW moments (created by the first step) and the gradient
    # partitions (ZeRO-2 frees its fp32 partition after each step).
    for step in range(2):
        input_ids = torch.randint(4, parts.vae.backbone.config.vocab_size, (2, 16), generator=generator)
        output = parts.engine(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=input_ids)
        parts.engine.backward(output.recon_nll.mean() + output.kl.mean())
        if step == 1:
            measured = owned_bytes(parts.engine)
        parts.engine.step()
    Path(args.result).with_suffix(f".rank{world.rank}.json").write_text(json.dumps({"rank": world.rank, "bytes": measured}))


def predicted_bytes(backbone: str, tokenizer: str, stage: int, world_size: int) -> tuple[int, int]:
    from seq2vae.model.build import backbone_config
    from seq2vae.model.config import VAEConfig
    from seq2vae.model.shape import model_shape
    from seq2vae.plan import ZeroSetting, model_state_bytes
    from seq2vae.train.config import DataConfig, TrainConfig
    from seq2vae.train.ds_config import resolved_ds_config

    vae = VAEConfig(backbone=backbone, tokenizer=tokenizer, latent_dim=32)
    shape = model_shape(backbone_config(vae), vae)
    config = TrainConfig(model=vae, data=DataConfig(train="unused", micro_batch_size=2), deepspeed=f"zero{stage}",
                         precision="bf16")
    zero = ZeroSetting.from_ds_config(resolved_ds_config(config, world_size, shape.d_model))
    states = model_state_bytes(shape, zero, world_size, "bf16")
    return states.device_total - states.gathered, shape.parameters


def prepare(workdir: Path) -> dict[str, tuple[str, str]]:
    """The tokenizer (trained offline on the synthetic corpus) and a saved random ~100M T5."""
    from transformers import AutoModelForSeq2SeqLM, T5Config

    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer

    tokenizer_dir = workdir / "tokenizer"
    train_tokenizer((row["text"] for row in generate_corpus(3000, seed=0)), tokenizer_dir, vocab_size=1000)
    model_dir = workdir / "t5-100m"
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(T5Config(**T5_100M)).save_pretrained(model_dir)
    return {"debug": ("debug-t5", str(tokenizer_dir)), "100m": (str(model_dir), str(tokenizer_dir))}


# (d_model, heads, d_ff, layers per stack, vocabulary, batch, length): the debug width and a t5-base /
# bart-base width (two layers per stack: per-layer figures do not depend on depth).
ACTIVATION_SIZES = {"d64": (64, 4, 256, 2, 1000, 4, 48), "d768": (768, 12, 3072, 2, 32128, 2, 128)}
ACTIVATION_KINDS = ("t5-relu", "t5-gelu_new", "t5-gelu_pytorch_tanh", "bart")


def activation_backbone(kind: str, size: str):
    from transformers import BartConfig, T5Config

    width, heads, ffn, layers, vocabulary, _, _ = ACTIVATION_SIZES[size]
    if kind == "bart":
        return BartConfig(vocab_size=vocabulary, d_model=width, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                          decoder_ffn_dim=ffn, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                          decoder_start_token_id=1, forced_bos_token_id=None)
    projection, activation = {"t5-relu": ("relu", "relu"), "t5-gelu_new": ("gated-gelu", "gelu_new"),
                              "t5-gelu_pytorch_tanh": ("gated-gelu", "gelu_pytorch_tanh")}[kind]
    config = T5Config(vocab_size=vocabulary, d_model=width, d_kv=width // heads, d_ff=ffn, num_layers=layers,
                      num_decoder_layers=layers, num_heads=heads, feed_forward_proj=projection, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    config.dense_act_fn = activation
    return config


def compare_activations(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from seq2vae.model.config import VAEConfig
    from seq2vae.model.shape import model_shape
    from seq2vae.model.vae import Seq2SeqVAE
    from seq2vae.plan.memory import activation_breakdown
    from seq2vae.plan.saved_tensors import measure_saved_bytes

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    print("| backbone | width | precision | checkpointing | encoder layer: planned / measured "
          "| decoder layer: planned / measured | total planned | total measured | planned / measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, (_, _, _, _, vocabulary, batch, length) in ACTIVATION_SIZES.items():
        input_ids = torch.randint(4, min(vocabulary, len(tokenizer)), (batch, length), generator=torch.Generator().manual_seed(0))
        for kind in ACTIVATION_KINDS:
            config = activation_backbone(kind, size)
            for precision in ("fp32", "bf16"):
                full = None
                for checkpointing in (False, True):
                    vae_config = VAEConfig(backbone="local", latent_dim=32, gradient_checkpointing=checkpointing)
                    torch.manual_seed(0)
                    vae = Seq2SeqVAE.from_config(config, tokenizer=tokenizer, config=vae_config)
                    if precision == "bf16":
                        vae = vae.to(torch.bfloat16)
                    saved = measure_saved_bytes(vae, input_ids, torch.ones_like(input_ids), input_ids)
                    planned = activation_breakdown(
                        model_shape(config, vae_config), batch, length, precision, checkpointing, "cpu"
                    )
                    if checkpointing:
                        # The layers' inputs plus one layer live again while it is recomputed.
                        measured = saved.total + max(full.layers("encoder") + full.layers("decoder"))
                        layers = "inputs only"
                    else:
                        full, measured = saved, saved.total
                        # Layer 1: layer 0 also keeps the relative-position buckets of T5's bias.
                        layers = (f"{planned.encoder_layer / 2**20:.2f} / {saved.layers('encoder')[1] / 2**20:.2f} MiB | "
                                  f"{planned.decoder_layer / 2**20:.2f} / {saved.layers('decoder')[1] / 2**20:.2f} MiB")
                    if checkpointing:
                        layers = f"{layers} | {layers}"
                    ratio = planned.total / measured
                    verdict = "" if abs(ratio - 1) <= 0.10 else " **outside 10%**"
                    print(f"| {kind} | {size} | {precision} | {'yes' if checkpointing else 'no'} | {layers} | "
                          f"{planned.total / 2**20:.2f} MiB | {measured / 2**20:.2f} MiB | {ratio:.3f}{verdict} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--models", nargs="+", default=["debug", "100m"])
    parser.add_argument("--activations", action="store_true", help="compare planned and measured activations instead")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.activations:
        from seq2vae.data.synthetic import generate_corpus
        from seq2vae.data.tokenizer import train_tokenizer

        with tempfile.TemporaryDirectory() as tmp:
            train_tokenizer((row["text"] for row in generate_corpus(1000, seed=0)), Path(tmp), vocab_size=1000)
            compare_activations(Path(tmp))
        return
    from seq2vae.distributed import free_port

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        models = prepare(workdir)
        for name in args.models:
            backbone, tokenizer = models[name]
            for stage in args.stages:
                for world_size in args.worlds:
                    result = workdir / f"{name}-z{stage}-w{world_size}"
                    command = [
                        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size),
                        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker",
                        "--backbone", backbone, "--tokenizer", tokenizer, "--stage", str(stage), "--result", str(result),
                    ]
                    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
                    if done.returncode != 0:
                        raise SystemExit(f"worker failed ({name}, ZeRO-{stage}, {world_size} ranks):\n{done.stderr[-4000:]}")
                    measured = [json.loads(result.with_suffix(f".rank{r}.json").read_text())["bytes"] for r in range(world_size)]
                    predicted, parameters = predicted_bytes(backbone, tokenizer, stage, world_size)
                    worst = max(measured, key=lambda value: abs(value / predicted - 1))
                    rows.append((name, parameters, stage, world_size, predicted, min(measured), max(measured), worst / predicted))
                    print(f"{name} ({parameters:,} params) ZeRO-{stage} {world_size} ranks: "
                          f"predicted {predicted / 2**20:.2f} MiB, "
                          f"measured {min(measured) / 2**20:.2f}-{max(measured) / 2**20:.2f} MiB, "
                          f"worst ratio {worst / predicted:.3f}",
                          flush=True)
    print("\n| model | ZeRO | ranks | predicted per rank | measured per rank (min-max) | measured / predicted (worst rank) |")
    print("|---|---|---|---|---|---|")
    for name, parameters, stage, world_size, predicted, low, high, ratio in rows:
        verdict = "" if abs(ratio - 1) <= 0.10 else " **outside 10%**"
        print(f"| {name} ({parameters / 1e6:.1f}M) | {stage} | {world_size} | {predicted / 2**20:.2f} MiB | "
              f"{low / 2**20:.2f}-{high / 2**20:.2f} MiB | {ratio:.3f}{verdict} |")


if __name__ == "__main__":
    main()
