"""IW-NLL throughput: K samples per sentence through batched decoder calls vs one decoder call per sample.

Both paths score the same sentences with the same draws (checked to agree) in one run, so the ratio
is measured side by side. Goal: batched >= 5x faster at K = 100.

    python bench/bench_eval.py                      # tiny debug T5 on CPU, under ~2 minutes
    python bench/bench_eval.py --device cuda --sentences 256 --batch-size 16
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from seq2vae.data.collate import collate
from seq2vae.data.synthetic import generate_corpus
from seq2vae.data.tokenizer import train_tokenizer
from seq2vae.evaluation.harness import iw_samples_per_call, posterior_pass, sentence_noise
from seq2vae.evaluation.metrics import iw_log_likelihood, log_normal, log_standard_normal
from seq2vae.model import VAEConfig, build_vae


def looped_iw(vae, batch: dict, noise: torch.Tensor) -> torch.Tensor:
    """The reference: one `log_likelihood` call per importance sample. noise [B,K,Z] -> IW bound [B]."""
    device = next(vae.parameters()).device
    labels = batch["labels"].to(device)
    mu, logvar = vae.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    mu, logvar = mu.float(), logvar.float()
    z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * noise.to(device)  # [B,K,Z]
    log_px_z = torch.stack([vae.log_likelihood(z[:, k], labels) for k in range(z.shape[1])], dim=1)  # [B,K]
    return iw_log_likelihood(log_px_z.float(), log_standard_normal(z), log_normal(z, mu[:, None], logvar[:, None])).cpu()


def interleaved_timings(paths: dict, batches: list, device: torch.device, repeats: int) -> dict[str, tuple[float, list]]:
    """Runs every path on each batch in turn, `repeats` times, keeping each batch's fastest time per path.

    Alternating the paths batch by batch exposes both to the same load on a shared machine, and the
    minimum over repeats discards the runs that another process slowed down (as `timeit` advises).
    Returns {name: (summed seconds, outputs per batch)}.
    """
    results = {name: (0.0, []) for name in paths}
    for batch, noise in batches:
        best = {name: math.inf for name in paths}
        outputs = {}
        for _ in range(repeats):
            for name, function in paths.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs[name] = function(batch, noise)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - start)
        for name in paths:
            seconds, previous = results[name]
            results[name] = (seconds + best[name], previous + [outputs[name]])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="debug-t5", help="debug-t5 / debug-bart, or a local model directory")
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--decoder-batch-size", type=int, default=None, help="sentences x samples per batched call (default: the harness's)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timings per batch and path; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_dir = Path(scratch) / "tokenizer"
        train_tokenizer((row["text"] for row in generate_corpus(2000, seed=0)), tokenizer_dir, vocab_size=1000)
        torch.manual_seed(0)
        config = VAEConfig(backbone=args.backbone, tokenizer=str(tokenizer_dir), latent_dim=16)
        vae = build_vae(config).to(device).eval()
    tokenizer = vae.tokenizer
    texts = [row["text"] for row in generate_corpus(args.sentences, seed=1)]
    samples = [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]
    batches = []
    for start in range(0, len(samples), args.batch_size):
        indices = range(start, min(start + args.batch_size, len(samples)))
        noise = torch.stack([sentence_noise(0, i, args.iw_samples, config.latent_dim) for i in indices])
        batches.append((collate([samples[i] for i in indices], tokenizer.pad_token_id), noise))
    samples_per_call = iw_samples_per_call(args.decoder_batch_size, args.batch_size, args.iw_samples, device)

    def batched(batch, noise):
        return posterior_pass(vae, batch, noise, samples_per_call)["iw_log_px"]

    def looped(batch, noise):
        return looped_iw(vae, batch, noise)

    with torch.no_grad():
        warm_up = [(batches[0][0], batches[0][1][:, :samples_per_call])]  # allocator, kernels, caches
        interleaved_timings({"batched": batched, "looped": looped}, warm_up, device, repeats=1)
        timings = interleaved_timings({"batched": batched, "looped": looped}, batches, device, args.repeats)
    (batched_seconds, batched_out), (looped_seconds, looped_out) = timings["batched"], timings["looped"]
    difference = (torch.cat(batched_out) - torch.cat(looped_out)).abs().max().item()
    assert difference < 1e-2 * max(1.0, torch.cat(looped_out).abs().max().item()), f"paths disagree by {difference}"
    batched_rate = args.sentences / batched_seconds
    looped_rate = args.sentences / looped_seconds
    print(f"backbone {args.backbone}, device {device}, {torch.get_num_threads()} CPU threads, K={args.iw_samples}, "
          f"{args.sentences} sentences, batch {args.batch_size}, {samples_per_call} samples per batched call "
          f"({math.ceil(args.iw_samples / samples_per_call)} calls per batch), fastest of {args.repeats} per batch")
    print(f"batched [B,k,Z] calls : {batched_rate:8.2f} sentences/s ({batched_seconds:.2f} s)")
    print(f"loop, one call/sample : {looped_rate:8.2f} sentences/s ({looped_seconds:.2f} s)")
    print(f"speed-up              : {batched_rate / looped_rate:.1f}x (goal >= 5x)")
    print(f"max |difference| of the two paths' IW bounds: {difference:.2e} nats")


if __name__ == "__main__":
    main()
