"""Training benchmarks, measured side by side in one run; prints ratios against the goals.

1. Step time of a VAE training step vs plain seq2seq finetuning of the same backbone on the same
   batch (forward, backward, AdamW step; interleaved so drift hits both alike). Goal: <= 1.10x.
2. Per-rank memory of parameters + optimizer state: ZeRO-3 on 2 ranks vs 1 rank without sharding
   (plain AdamW), counted from the tensors each rank really holds after one step. Goal: <= 0.6x.

3. Host-device syncs per plain step (no logging, validation or save), counted by bench/step_probe.py
   around the real Trainer, and its median plain-step time: this checkout against `--before REV`
   (default main), each a world of one on the debug ZeRO-2 config; and the padding share of the
   shipped configs' batches with and without length bucketing.

4. One rank without ZeRO machinery (`deepspeed: auto`): fp32 stage 0 (the `single` preset with the
   step guard) against ZeRO-2, and in bf16 DeepSpeed's BF16_Optimizer (`zero1`, its only other bf16
   path with fp32 accumulation) against ZeRO-2, which decides what auto runs on one bf16 rank. Each a
   real one-rank training run of a `--d-model` backbone under bench/step_probe.py, interleaved: median
   plain-step time, host syncs per plain step (on CPU host tensors count too, e.g. torch AdamW's
   per-parameter step counters, which stay on the host on a GPU) and the run's peak RSS.

    python bench/bench_train.py [--d-model 256] [--layers 4] [--steps 20] [--only syncs|single] [--before main]

CPU by default (DS_ACCELERATOR=cpu, gloo); the ZeRO-3 half runs this file under torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BATCH_SIZE = 16
SEQUENCE_LENGTH = 48
LATENT_DIM = 32


def backbone_config(tokenizer, d_model: int, layers: int):
    from transformers import T5Config

    return T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // 8, d_ff=4 * d_model, num_layers=layers,
        num_decoder_layers=layers, num_heads=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def make_tokenizer(directory: Path):
    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer

    return train_tokenizer((row["text"] for row in generate_corpus(2000, seed=0)), directory, vocab_size=1000)


def make_batch(tokenizer, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, len(tokenizer), (BATCH_SIZE, SEQUENCE_LENGTH), generator=generator)
    input_ids[:, -1] = tokenizer.eos_token_id
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def vae_and_plain(tokenizer, d_model: int, layers: int):
    from transformers import AutoModelForSeq2SeqLM

    from seq2vae.model import Seq2SeqVAE, VAEConfig

    torch.manual_seed(0)
    config = backbone_config(tokenizer, d_model, layers)
    vae = Seq2SeqVAE.from_config(config, tokenizer=tokenizer, config=VAEConfig(backbone="bench", latent_dim=LATENT_DIM))
    torch.manual_seed(0)
    plain = AutoModelForSeq2SeqLM.from_config(config)
    return vae, plain


# ------------------------------------------------------------------------------------------- step time
def bench_step_time(tokenizer, d_model: int, layers: int, steps: int) -> dict:
    from seq2vae.model import vae_loss

    vae, plain = vae_and_plain(tokenizer, d_model, layers)
    vae.train()
    plain.train()
    batch = make_batch(tokenizer)
    optimizers = {"vae": torch.optim.AdamW(vae.parameters(), lr=1e-4), "seq2seq": torch.optim.AdamW(plain.parameters(), lr=1e-4)}

    def vae_step():
        output = vae(**batch)
        loss, _ = vae_loss(output.recon_nll, output.kl_per_dim, beta=1.0, free_bits=0.1)
        loss.backward()
        optimizers["vae"].step()
        optimizers["vae"].zero_grad(set_to_none=True)

    def seq2seq_step():
        # Same per-sentence summed NLL as the VAE's reconstruction term, so both losses are alike.
        logits = plain(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none").sum(-1).mean()
        loss.backward()
        optimizers["seq2seq"].step()
        optimizers["seq2seq"].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"vae": [], "seq2seq": []}
    for index in range(steps + 3):
        order = [("vae", vae_step), ("seq2seq", seq2seq_step)]
        for name, step in order if index % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            step()
            if index >= 3:  # warm-up steps allocate optimizer state and caches
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "vae_step_s": medians["vae"],
        "seq2seq_step_s": medians["seq2seq"],
        "ratio": medians["vae"] / medians["seq2seq"],
        "vae_params": sum(p.numel() for p in vae.parameters()),
        "seq2seq_params": sum(p.numel() for p in plain.parameters()),
    }


# ------------------------------------------------------------------------------------------- memory
def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among `tensors` (shared storages counted once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if not torch.is_tensor(tensor) or tensor.numel() == 0:
            continue
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def optimizer_state_tensors(optimizer) -> list[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]


def unsharded_memory(tokenizer, d_model: int, layers: int) -> dict:
    """One rank, no sharding: fp32 parameters + AdamW state after one step."""
    from seq2vae.model import vae_loss

    vae, _ = vae_and_plain(tokenizer, d_model, layers)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    output = vae(**make_batch(tokenizer))
    vae_loss(output.recon_nll, output.kl_per_dim, beta=1.0)[0].backward()
    optimizer.step()
    params = tensor_bytes(vae.parameters())
    state = tensor_bytes(optimizer_state_tensors(optimizer))
    return {"params_bytes": params, "optimizer_bytes": state, "total_bytes": params + state}


def zero3_worker(tokenizer_dir: str, d_model: int, layers: int, precision: str, out: str) -> None:
    """Under torchrun: a ZeRO-3 engine (built inside zero.Init); records what this rank holds."""
    import deepspeed
    from transformers import AutoTokenizer

    from seq2vae.distributed import init_world, shutdown_world
    from seq2vae.model import vae_loss
    from seq2vae.train.config import OptimConfig
    from seq2vae.train.ds_config import load_ds_template, resolve_ds_config

    world = init_world(600)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    template, _ = load_ds_template("zero3")
    ds_config = resolve_ds_config(
        template, d_model=d_model, micro_batch_size=BATCH_SIZE, gradient_accumulation_steps=1,
        world_size=world.size, optim=OptimConfig(), precision=precision,
    )
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841  transformers' view of ZeRO-3 while building
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        vae, _ = vae_and_plain(tokenizer, d_model, layers)
    engine, _, _, _ = deepspeed.initialize(model=vae, model_parameters=vae.parameters(), config=ds_config)
    batch = {k: v.to(world.device) for k, v in make_batch(tokenizer, seed=world.rank).items()}
    output = engine(**batch)
    engine.backward(vae_loss(output.recon_nll, output.kl_per_dim, beta=1.0)[0])
    engine.step()
    zero = engine.optimizer
    params = tensor_bytes(p.ds_tensor for p in vae.parameters())
    masters = tensor_bytes(zero.fp32_partitioned_groups_flat)
    state = tensor_bytes(optimizer_state_tensors(zero.optimizer))
    record = {"rank": world.rank, "params_bytes": params, "fp32_master_bytes": masters, "optimizer_bytes": state,
              "total_bytes": params + masters + state}
    Path(out).with_suffix(f".rank{world.rank}.json").write_text(json.dumps(record))
    shutdown_world()


def zero3_memory(tokenizer_dir: Path, d_model: int, layers: int, precision: str, workdir: Path) -> list[dict]:
    out = workdir / f"zero3-{precision}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(29000 + os.getpid() % 1000), __file__, "--worker", "--tokenizer", str(tokenizer_dir),
        "--d-model", str(d_model), "--layers", str(layers), "--precision", precision, "--out", str(out),
    ]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"ZeRO-3 worker failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return [json.loads(out.with_suffix(f".rank{rank}.json").read_text()) for rank in (0, 1)]


# ------------------------------------------------------------------------------------------- host syncs
REPO = Path(__file__).resolve().parents[1]


def probe_report(import_root: Path, workdir: Path, name: str, shards: Path, tokenizer_dir: Path, steps: int,
                 extra: tuple[str, ...] = ()) -> dict:
    """bench/step_probe.py's report of one world-of-one training run of the code under `import_root`
    (`extra` overrides last)."""
    out = workdir / f"{name}.json"
    overrides = [
        f"data.train={shards}", f"model.tokenizer={tokenizer_dir}", f"run_dir={workdir / name}", "resume=never",
        "phases.0.steps=2", f"phases.1.steps={steps - 2}", "logging.every_steps=5", "checkpoint.every_steps=1000",
        "validation.every_steps=0", "validation.max_batches=1", "data.micro_batch_size=16", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(import_root), "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(REPO / "bench" / "step_probe.py"), str(out), str(REPO / "configs" / "debug-zero2.yaml"),
               *overrides]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {(done.stdout + done.stderr)[-3000:]}")
    return json.loads(out.read_text())


def probe_run(import_root: Path, workdir: Path, name: str, shards: Path, tokenizer_dir: Path, steps: int,
              extra: tuple[str, ...] = ()) -> dict:
    """Host syncs and step time of plain steps in one run (`probe_report`)."""
    report = probe_report(import_root, workdir, name, shards, tokenizer_dir, steps, extra)
    plain = [step for step in report["steps"][1:] if step["plain"]]
    return {
        "own_syncs": statistics.median(step["own_syncs"] for step in plain),
        "all_syncs": statistics.median(step["syncs"] for step in plain),
        "step_s": statistics.median(step["step_s"] for step in plain),
        "plain_steps": len(plain),
    }


def padding_share(shards: Path, micro_batch_size: int, length_bucketing: bool, batches: int = 60) -> float:
    from seq2vae.data.stream import build_loader

    loader = build_loader(str(shards), "train", rank=0, world_size=1, batch_size=micro_batch_size, seed=0,
                          pad_token_id=0, shuffle_buffer=1000, length_bucketing=length_bucketing)
    real = padded = 0
    for _ in range(batches):
        mask = next(loader)["attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
    loader.close()
    return 1 - real / padded


def synthetic_shards(workdir: Path) -> Path:
    """WORKDIR/shards: 4000 synthetic sentences written with WORKDIR/tokenizer."""
    from seq2vae.data.shards import write_shards
    from seq2vae.data.synthetic import write_jsonl

    corpus = write_jsonl(workdir / "corpus.jsonl", 4000, seed=1)
    shards = workdir / "shards"
    write_shards([str(corpus)], shards, str(workdir / "tokenizer"), valid_fraction=0.05, shard_size=1000, progress=False)
    return shards


def bench_host_syncs(workdir: Path, before: str, steps: int) -> None:
    shards = synthetic_shards(workdir)
    from revisions import checkout_package, this_checkout

    roots = {"before": checkout_package(before, workdir / "before"), "after": this_checkout(workdir / "after")}
    results = {}
    for name in ("before", "after", "before", "after"):  # interleaved: drift hits both alike
        run = probe_run(roots[name], workdir, f"{name}-{len(results)}", shards, workdir / "tokenizer", steps)
        results.setdefault(name, []).append(run)
    for name, runs in results.items():
        print(f"host syncs  {name:6s} ({before if name == 'before' else 'this checkout'}): per plain step ours "
              f"{runs[0]['own_syncs']:.0f}, all {runs[0]['all_syncs']:.0f} (DeepSpeed, transformers, torch included); "
              f"plain step {statistics.median(r['step_s'] for r in runs) * 1e3:.0f} ms (median of 2 runs x "
              f"{runs[0]['plain_steps']} steps)")
    ratio = statistics.median(r["step_s"] for r in results["after"]) / statistics.median(r["step_s"] for r in results["before"])
    print(f"host syncs  plain-step time after / before: {ratio:.3f}x "
          "(CPU: a sync costs nothing here; the count is the GPU's cost)")
    # A 2-step run at the default validation.max_batches (20): the end-of-run validation's share of it.
    shares = {}
    for name in ("before", "after", "before", "after"):
        report = probe_report(roots[name], workdir, f"short-{name}-{len(shares.get(name, []))}", shards,
                              workdir / "tokenizer", 2, ("phases.1.steps=0", "validation.max_batches=20"))
        shares.setdefault(name, []).append((sum(report["validate_s"]), report["fit_s"]))
    for name, runs in shares.items():
        validation, fit = (statistics.median(values) for values in zip(*runs))
        print(f"short run   {name:6s}: a 2-step run with validation.max_batches=20: validation {validation:.2f} s of "
              f"{fit:.2f} s ({validation / fit:.0%}; median of 2 runs)")
    for config in ("t5-base-recipe", "quickstart", "flan-t5-xl-1node"):
        import yaml

        micro = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())["data"]["micro_batch_size"]
        off, on = padding_share(shards, micro, False), padding_share(shards, micro, True)
        print(f"padding     {config} (micro batch {micro}): padding share of source tokens {off:.3f} without "
              f"bucketing, {on:.3f} with (synthetic corpus)")


# ------------------------------------------------------------------------------------ one rank, no ZeRO
def bench_single_rank(tokenizer, workdir: Path, d_model: int, layers: int, steps: int) -> None:
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    backbone = workdir / "backbone"
    model = T5ForConditionalGeneration(backbone_config(tokenizer, d_model, layers))
    with torch.no_grad():  # transformers 5 ties T5's head whatever the config says: its own values, as Flan-T5's
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.05)
    model.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    shards = synthetic_shards(workdir)
    from revisions import this_checkout

    root = this_checkout(workdir / "checkout")
    pairs = {"fp32": ("single", "zero2"), "bf16": ("zero1", "zero2")}
    for precision, presets in pairs.items():
        runs: dict[str, list[dict]] = {}
        for preset in (*presets, *presets):  # interleaved: drift hits both alike
            name = f"{precision}-{preset}-{len(runs.get(preset, []))}"
            run = probe_run(root, workdir, name, shards, workdir / "tokenizer", steps, (
                f"model.backbone={backbone}", f"deepspeed={preset}", f"precision={precision}", "logging.every_steps=1000"))
            run["rss_gib"] = max(m.get("memory/max_rss_gib", 0.0)
                                 for m in map(json.loads, (workdir / name / "metrics.jsonl").open()))
            manifest = next((workdir / name / "checkpoints").glob("step_*/manifest.json"))
            run["optimizer"] = json.loads(manifest.read_text())["optimizer"]
            runs.setdefault(preset, []).append(run)
        for preset, measured in runs.items():
            print(f"one rank    {precision} {preset:6s} ({measured[0]['optimizer']}): plain step "
                  f"{statistics.median(r['step_s'] for r in measured) * 1e3:.0f} ms, syncs per plain step "
                  f"{measured[0]['all_syncs']:.0f}, peak RSS {statistics.median(r['rss_gib'] for r in measured) * 1024:.0f} MiB "
                  f"(median of 2 runs)")
        lean, zero2 = (runs[preset] for preset in presets)
        speed = statistics.median(r["step_s"] for r in zero2) / statistics.median(r["step_s"] for r in lean)
        extra = (statistics.median(r["rss_gib"] for r in lean) - statistics.median(r["rss_gib"] for r in zero2)) * 1024
        print(f"one rank    {precision}: {presets[0]} is {speed:.3f}x the speed of ZeRO-2, peak RSS {extra:+.0f} MiB against it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", choices=["steps", "memory", "syncs", "single"], help="run one section")
    parser.add_argument("--before", default="main", help="revision the host-sync section compares against")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        zero3_worker(args.tokenizer, args.d_model, args.layers, args.precision, args.out)
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mib = 2**20
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        tokenizer = make_tokenizer(workdir / "tokenizer")
        print(f"backbone: random T5, d_model {args.d_model}, {args.layers}+{args.layers} layers; "
              f"batch {BATCH_SIZE} x {SEQUENCE_LENGTH} tokens; latent {LATENT_DIM}; threads {torch.get_num_threads()}")
        if args.only == "syncs":
            bench_host_syncs(workdir, args.before, args.steps)
            return
        if args.only == "single":
            bench_single_rank(tokenizer, workdir, args.d_model, args.layers, args.steps)
            return
        timing = bench_step_time(tokenizer, args.d_model, args.layers, args.steps)
        print(f"step time   VAE {timing['vae_step_s'] * 1e3:.1f} ms  seq2seq {timing['seq2seq_step_s'] * 1e3:.1f} ms  "
              f"ratio {timing['ratio']:.3f}x (goal <= 1.10x)  [params {timing['vae_params']:,} vs {timing['seq2seq_params']:,}]")
        baseline = unsharded_memory(tokenizer, args.d_model, args.layers)
        print(f"memory      1 rank unsharded fp32: params {baseline['params_bytes'] / mib:.1f} MiB + AdamW "
              f"{baseline['optimizer_bytes'] / mib:.1f} MiB = {baseline['total_bytes'] / mib:.1f} MiB")
        for precision in ("fp32", "bf16"):
            ranks = zero3_memory(workdir / "tokenizer", args.d_model, args.layers, precision, workdir)
            worst = max(rank["total_bytes"] for rank in ranks)
            print(f"memory      ZeRO-3 2 ranks {precision}, per rank (max): "
                  f"params {max(r['params_bytes'] for r in ranks) / mib:.1f} MiB "
                  f"+ fp32 masters {max(r['fp32_master_bytes'] for r in ranks) / mib:.1f} MiB + Adam "
                  f"{max(r['optimizer_bytes'] for r in ranks) / mib:.1f} MiB = {worst / mib:.1f} MiB  "
                  f"ratio {worst / baseline['total_bytes']:.3f}x (goal <= 0.6x)")


if __name__ == "__main__":
    main()
