"""Data pipeline benchmark: sharding and streaming throughput, the loader's share of a training step,
and vectorised encoder-input noising against a per-sample Python loop, all side by side in one run.

Goals: data wait under 5% of the step time of the quickstart model with 2 loader workers; vectorised
noising faster than the loop.

    python bench/bench_data.py                     # synthetic corpus, tiny debug T5, CPU, ~2 minutes
    python bench/bench_data.py --steps 200 --batch-size 64
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from seq2vae.data.noising import apply_noise
from seq2vae.data.shards import write_shards
from seq2vae.data.stream import build_loader
from seq2vae.data.synthetic import generate_corpus, write_jsonl
from seq2vae.data.tokenizer import train_tokenizer

PAD, MASK = 0, 3


def reference_noise(batch: dict, deletion_rate: float, masking_rate: float, rng: random.Random) -> dict:
    """The per-sample Python loop of the reference T5-VAE code (with its swap defect fixed): one
    random draw per token, lists rebuilt and re-padded sample by sample."""
    rows = []
    for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        tokens = ids[: sum(mask)]
        kept = []
        for position, token in enumerate(tokens):
            if position == len(tokens) - 1:
                kept.append(token)
                continue
            draw = rng.random()
            if draw < deletion_rate:
                continue
            kept.append(MASK if draw < deletion_rate + masking_rate else token)
        rows.append(kept)
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return {**batch, "input_ids": input_ids, "attention_mask": attention_mask}


def time_per_call(function, repeats: int, rounds: int = 5) -> float:
    """Best of `rounds` mean times over `repeats` calls: robust to other processes on a shared machine."""
    function()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            function()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def bench_noising(shards: Path, batch_size: int) -> None:
    print("\n== encoder-input noising (deletion 0.3 + masking 0.15): vectorised vs per-sample loop ==")
    loader = build_loader(shards, rank=0, world_size=1, batch_size=batch_size, seed=0, pad_token_id=PAD, num_workers=0)
    batch = next(loader)
    generator, rng = torch.Generator().manual_seed(0), random.Random(0)
    for rows in (batch_size, 8 * batch_size):
        big = {key: value.repeat(rows // batch_size, 1) for key, value in batch.items()}
        vectorised = time_per_call(lambda big=big: apply_noise(big, 0.3, 0.15, MASK, PAD, generator), 50)
        looped = time_per_call(lambda big=big: reference_noise(big, 0.3, 0.15, rng), 10)
        print(f"batch {rows:4d} x {big['input_ids'].shape[1]:3d}: vectorised {vectorised * 1e3:7.3f} ms, "
              f"loop {looped * 1e3:7.3f} ms, ratio loop/vectorised {looped / vectorised:6.1f}x")


def bench_streaming(shards: Path, batch_size: int, batches: int) -> None:
    print("\n== streaming throughput (samples/s; 1 rank, shuffle buffer 1000) ==")
    for workers in (0, 2):
        loader = build_loader(shards, rank=0, world_size=1, batch_size=batch_size, seed=0, pad_token_id=PAD, num_workers=workers)
        next(loader)  # start the workers
        started = time.perf_counter()
        for _ in range(batches):
            next(loader)
        elapsed = time.perf_counter() - started
        print(f"num_workers={workers}: {batches * batch_size / elapsed:9.0f} samples/s ({elapsed / batches * 1e3:.2f} ms/batch)")


def bench_step_share(shards: Path, tokenizer_dir: Path, batch_size: int, steps: int) -> float:
    """Real training steps of the quickstart model; returns the mean step time (seconds)."""
    from seq2vae.model import VAEConfig, build_vae, vae_loss

    print(f"\n== data wait share of a training step (quickstart model: debug-t5, batch {batch_size}, 1 compute thread) ==")
    # One compute thread: on a GPU node the model does not occupy the CPU cores that feed it, and on this
    # small CPU box a second OpenMP thread fighting the two loader workers would swamp the measurement.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(backbone="debug-t5", tokenizer=str(tokenizer_dir), latent_dim=16))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for workers in (0, 2):
        loader = build_loader(shards, rank=0, world_size=1, batch_size=batch_size, seed=0, pad_token_id=PAD, num_workers=workers)
        waits, totals = [], []
        for step in range(steps + 5):
            started = time.perf_counter()
            batch = next(loader)
            fetched = time.perf_counter()
            batch = apply_noise(batch, 0.3, 0.0, MASK, PAD, generator)
            output = vae(batch["input_ids"], batch["attention_mask"], batch["labels"])
            loss, _ = vae_loss(output.recon_nll, output.kl_per_dim, beta=1.0, free_bits=0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 5:  # the first steps include worker start-up and allocator warm-up
                waits.append(fetched - started)
                totals.append(time.perf_counter() - started)
        report_share(f"num_workers={workers}", waits, totals)
    return statistics.mean(totals)


def report_share(label: str, waits: list[float], totals: list[float]) -> None:
    share = sum(waits) / sum(totals)
    print(f"{label}: step {statistics.mean(totals) * 1e3:7.2f} ms, data wait {statistics.mean(waits) * 1e3:6.3f} ms "
          f"= {share * 100:5.2f}% of the step (goal < 5%)")


def bench_accelerator_share(shards: Path, batch_size: int, steps: int, step_seconds: float) -> None:
    """The same loop with the model step replaced by an idle wait of the measured step time: what a GPU
    node sees, where the computation leaves the CPU cores to the loader workers."""
    print(f"\n== data wait share with an accelerator-like step (idle {step_seconds * 1e3:.1f} ms) ==")
    for workers in (0, 2):
        loader = build_loader(shards, rank=0, world_size=1, batch_size=batch_size, seed=0, pad_token_id=PAD, num_workers=workers)
        waits, totals = [], []
        for step in range(steps + 5):
            started = time.perf_counter()
            next(loader)
            fetched = time.perf_counter()
            time.sleep(step_seconds)
            if step >= 5:
                waits.append(fetched - started)
                totals.append(time.perf_counter() - started)
        report_share(f"num_workers={workers}", waits, totals)


SHARD_TIMER = """
import sys, time
from seq2vae.data.shards import write_shards
started = time.perf_counter()
write_shards([sys.argv[1]], sys.argv[2], sys.argv[3], valid_fraction=0.05, shard_size=2000, max_length=64, progress=False)
print(time.perf_counter() - started)
"""


def bench_shard_before_after(revision: str, sentences: int) -> None:
    """`write_shards` of one corpus by this checkout and by `revision`, interleaved, 3 runs each."""
    import os
    import subprocess
    import sys

    from revisions import checkout_package, this_checkout

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer_dir = scratch / "tokenizer"
        train_tokenizer((row["text"] for row in generate_corpus(3000, seed=0)), tokenizer_dir, vocab_size=1000)
        corpus = write_jsonl(scratch / "corpus.jsonl", sentences, seed=1)
        roots = {revision: checkout_package(revision, scratch / "before"), "this checkout": this_checkout(scratch / "after")}
        seconds: dict[str, list[float]] = {name: [] for name in roots}
        for run in range(3):
            for name, root in roots.items():
                out = scratch / f"shards-{len(seconds[name])}-{run}-{abs(hash(name))}"
                done = subprocess.run([sys.executable, "-c", SHARD_TIMER, str(corpus), str(out), str(tokenizer_dir)],
                                      env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
                seconds[name].append(float(done.stdout.split()[-1]))
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        for name, value in medians.items():
            print(f"sharding {sentences} sentences, {name}: {value:.2f} s (median of 3; {sentences / value:.0f} sentences/s)")
        print(f"sharding this checkout / {revision}: {medians['this checkout'] / medians[revision]:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per worker setting")
    parser.add_argument("--stream-batches", type=int, default=200)
    parser.add_argument("--shard-before", metavar="REV", help="only time sharding: this checkout against REV")
    args = parser.parse_args()
    if args.shard_before:
        return bench_shard_before_after(args.shard_before, args.sentences)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer_dir = scratch / "tokenizer"
        train_tokenizer((row["text"] for row in generate_corpus(3000, seed=0)), tokenizer_dir, vocab_size=1000)
        corpus = write_jsonl(scratch / "corpus.jsonl", args.sentences, seed=1)
        print("== sharding (tokenise + write tar shards) ==")
        write_shards([str(corpus)], scratch / "warmup", str(tokenizer_dir), shard_size=2000, max_length=64, progress=False)
        started = time.perf_counter()
        write_shards([str(corpus)], scratch / "shards", str(tokenizer_dir), valid_fraction=0.05, shard_size=2000,
                     max_length=64, progress=False)
        print(f"{args.sentences / (time.perf_counter() - started):.0f} sentences/s (1 process)")
        bench_streaming(scratch / "shards", args.batch_size, args.stream_batches)
        bench_noising(scratch / "shards", args.batch_size)
        step_seconds = bench_step_share(scratch / "shards", tokenizer_dir, args.batch_size, args.steps)
        bench_accelerator_share(scratch / "shards", args.batch_size, 2 * args.steps, step_seconds)


if __name__ == "__main__":
    main()
