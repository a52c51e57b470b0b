"""ZeRO-3 generation: parameter all-gathers per `greedy_decode` call with the decoder resident for the
call (`seq2vae.distributed.resident_under_zero3`) against ZeRO-3's per-module gathering (once per token),
side by side in one run on 2 CPU ranks (gloo), same model and z; the generated ids must be equal.

    python bench/bench_zero3_generate.py [--max-new-tokens 24]   # spawns torchrun itself
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def worker(model_dir: str, max_new_tokens: int, out: str) -> None:
    import torch.distributed as dist

    import seq2vae.evaluation.harness as harness
    from seq2vae.evaluation.placement import load_zero3

    dist.init_process_group("gloo")
    vae, engine = load_zero3(model_dir)
    import deepspeed.comm as ds_comm

    calls = {"n": 0}

    def counting(original):
        def counted(*args, **kwargs):
            calls["n"] += 1
            return original(*args, **kwargs)

        return counted

    # ZeRO-3 gathers through deepspeed.comm, looked up at call time (partition_parameters.py).
    for name in ("allgather_fn", "all_gather_into_tensor", "all_gather", "all_gather_coalesced"):
        if hasattr(ds_comm, name):
            setattr(ds_comm, name, counting(getattr(ds_comm, name)))
    z = torch.randn(8, vae.config.latent_dim, generator=torch.Generator().manual_seed(0))
    results = {}
    for name, context in (("per token (ZeRO-3 hooks)", contextlib.nullcontext), ("resident for the call", None)):
        if context is not None:  # the old path: greedy_decode without the resident block
            harness.resident_under_zero3 = lambda parameters, device: contextlib.nullcontext()
        else:
            from seq2vae.distributed import resident_under_zero3

            harness.resident_under_zero3 = resident_under_zero3
        harness.greedy_decode(vae, z, max_new_tokens)  # warm-up: ZeRO-3 traces its first pass
        calls["n"] = 0
        started = time.perf_counter()
        ids = harness.greedy_decode(vae, z, max_new_tokens)
        results[name] = {"all_gathers": calls["n"], "seconds": time.perf_counter() - started, "ids": ids}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.max_new_tokens, args.worker[2])
    sys.path.insert(0, str(REPO / "tests"))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        from seq2vae.data.synthetic import generate_corpus
        from seq2vae.data.tokenizer import train_tokenizer
        from seq2vae.model import Seq2SeqVAE, VAEConfig
        from seq2vae.model.debug import debug_backbone_config

        tokenizer = train_tokenizer((row["text"] for row in generate_corpus(2000, seed=0)), scratch / "tok", vocab_size=1000)
        torch.manual_seed(0)
        vae = Seq2SeqVAE.from_config(debug_backbone_config("t5", tokenizer), tokenizer=tokenizer,
                                     config=VAEConfig(backbone="debug-t5", tokenizer=str(scratch / "tok"), latent_dim=16))
        vae.save_pretrained(scratch / "model")
        out = scratch / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                   "--master_port", str(29500 + os.getpid() % 500), __file__, "--max-new-tokens", str(args.max_new_tokens),
                   "--worker", str(scratch / "model"), "-", str(out)]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise SystemExit((done.stdout + done.stderr)[-4000:])
        results = json.loads(out.read_text())
    (old_name, old), (new_name, new) = results.items()
    for name, result in results.items():
        print(f"{name:26s}: {result['all_gathers']:5d} parameter all-gathers, {result['seconds'] * 1e3:7.0f} ms "
              f"for 8 sentences x {args.max_new_tokens} new tokens")
    print(f"all-gathers {new_name} / {old_name}: {new['all_gathers'] / max(old['all_gathers'], 1):.3f}x; "
          f"time {new['seconds'] / old['seconds']:.3f}x; same ids: {new['ids'] == old['ids']}")


if __name__ == "__main__":
    main()
