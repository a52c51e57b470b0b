"""GPU smoke matrix: real training runs on all visible GPUs of one node, MFU and memory against the planner.

For each DeepSpeed preset (bf16 ZeRO-1, ZeRO-2, ZeRO-3, ZeRO-3 + hpZ preset, ZeRO-2 / ZeRO-3 with the
optimizer offloaded, ZeRO-3 with optimizer and parameters offloaded) this trains a randomly
initialised ~100M-parameter T5 VAE for a few dozen steps on synthetic shards with NCCL, one rank per
GPU (`torchrun --nproc_per_node <GPUs> -m seq2vae.train`), then compares what the run logged
(perf/mfu, perf/tokens_per_s, memory/peak_allocated_gib and memory/peak_reserved_gib, maxima over
ranks) with `seq2vae.train.capacity.plan_training_run` for the same config and layout (per-rank total bytes). Writes
OUT/results.jsonl (one object per preset) and OUT/results.md (a table for bench/RESULTS.md).

    bash bench/gpu_smoke.sh [OUT]      # or: python bench/gpu_smoke.py --out OUT [--presets zero1 zero3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESETS = ["zero1", "zero2", "zero3", "zero3_hpz", "zero2_offload", "zero3_offload_optimizer", "zero3_offload"]
T5_100M = dict(
    vocab_size=32128, d_model=640, d_kv=64, d_ff=1664, num_layers=8, num_decoder_layers=8, num_heads=10,
    feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
GIB = 2**30


def prepare(out: Path, sentences: int, max_length: int) -> tuple[Path, Path, Path]:
    """Tokenizer, shards and a saved random backbone under OUT/inputs (reused when present)."""
    from transformers import AutoModelForSeq2SeqLM, T5Config

    from seq2vae.data.shards import write_shards
    from seq2vae.data.synthetic import generate_corpus, write_jsonl
    from seq2vae.data.tokenizer import train_tokenizer

    inputs = out / "inputs"
    tokenizer_dir, shard_dir, model_dir = inputs / "tokenizer", inputs / "shards", inputs / "t5-100m"
    if not (tokenizer_dir / "tokenizer.json").exists():
        train_tokenizer((row["text"] for row in generate_corpus(3000, seed=0)), tokenizer_dir, vocab_size=1000)
    if not (shard_dir / "meta.json").exists():
        corpus = write_jsonl(inputs / "corpus.jsonl", sentences, seed=1)
        write_shards([str(corpus)], shard_dir, str(tokenizer_dir), valid_fraction=0.02, shard_size=2000,
                     max_length=max_length, progress=False)
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        AutoModelForSeq2SeqLM.from_config(T5Config(**T5_100M)).save_pretrained(model_dir)
    return tokenizer_dir, shard_dir, model_dir


def last_window(metrics_path: Path) -> dict:
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    logged = [record for record in records if "perf/tokens_per_s" in record]
    if len(logged) < 2:
        raise RuntimeError(f"{metrics_path}: fewer than two logging windows")
    return logged[-1]  # the first window includes warm-up (NCCL setup, allocator growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-smoke")
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (two phases)")
    parser.add_argument("--sentences", type=int, default=40_000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device visible; this matrix is for GPU machines")
    gpus = torch.cuda.device_count()
    device_name = torch.cuda.get_device_name(0)
    gpu_memory_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir, shard_dir, model_dir = prepare(out, args.sentences, args.max_length)

    from seq2vae.plan import ClusterLayout
    from seq2vae.train.capacity import plan_training_run
    from seq2vae.train.config import load_train_config
    from seq2vae.distributed import free_port

    layout = ClusterLayout(1, gpus, gpu_memory_gib=gpu_memory_gib, gpu_name=device_name)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DS_ACCELERATOR", None)  # DeepSpeed picks CUDA; torch.distributed uses NCCL
    first = args.steps // 4
    results = []
    for preset in args.presets:
        run_dir = out / preset
        overrides = [
            f"model.backbone={model_dir}", f"model.tokenizer={tokenizer_dir}", "model.latent_dim=32",
            f"data.train={shard_dir}", f"data.micro_batch_size={args.micro_batch_size}", "data.num_workers=2",
            f"deepspeed={preset}", "precision=bf16", f"run_dir={run_dir}", "resume=never",
            f"phases.0.steps={first}", f"phases.1.steps={args.steps - first}", "logging.every_steps=5",
            "logging.progress_bar=false", "validation.every_steps=0", "validation.max_batches=2",
            f"checkpoint.every_steps={args.steps}",
        ]
        config_path = REPO / "configs" / "debug-zero2.yaml"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                   "-m", "seq2vae.train", "--config", str(config_path), *overrides]
        print(f"== {preset}: {' '.join(command)}", flush=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        (out / f"{preset}.log").write_text(done.stdout + done.stderr)
        row: dict = {"preset": preset, "gpus": gpus, "device": device_name, "returncode": done.returncode}
        plan = plan_training_run(load_train_config(config_path, overrides), layout)
        row.update(planned_total_gib=plan.estimate.total_bytes / GIB, planned_model_states_gib=plan.estimate.model_states.device_total / GIB,
                   planned_fits=plan.fits, flops_per_token=plan.flops_per_token, peak_tflops=plan.peak_tflops)
        if done.returncode == 0:
            window = last_window(run_dir / "metrics.jsonl")
            row.update({key: window.get(key) for key in (
                "perf/mfu", "perf/tokens_per_s", "perf/model_tflops_per_s_per_rank",
                "memory/peak_allocated_gib", "memory/peak_reserved_gib")})
            row["measured_over_planned"] = window["memory/peak_allocated_gib"] / row["planned_total_gib"]
        results.append(row)
        with (out / "results.jsonl").open("a") as stream:
            stream.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    lines = [f"{gpus} x {device_name} ({gpu_memory_gib:.0f} GiB), random T5 ~100M VAE, micro batch "
             f"{args.micro_batch_size} x {args.max_length} tokens, bf16, NCCL", "",
             "| preset | MFU | tokens/s | peak allocated (max over ranks) | planned per rank | measured / planned |",
             "|---|---|---|---|---|---|"]
    for row in results:
        if row["returncode"] != 0:
            lines.append(f"| {row['preset']} | failed (exit {row['returncode']}, see {row['preset']}.log) | | | "
                         f"{row['planned_total_gib']:.2f} GiB | |")
            continue
        mfu = row["perf/mfu"]
        lines.append(f"| {row['preset']} | {mfu:.3f} | {row['perf/tokens_per_s']:,.0f} | {row['memory/peak_allocated_gib']:.2f} GiB | "
                     f"{row['planned_total_gib']:.2f} GiB | {row['measured_over_planned']:.2f} |" if mfu is not None else
                     f"| {row['preset']} | (unknown GPU peak) | {row['perf/tokens_per_s']:,.0f} | "
                     f"{row['memory/peak_allocated_gib']:.2f} GiB | {row['planned_total_gib']:.2f} GiB | {row['measured_over_planned']:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if any(row["returncode"] != 0 for row in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
