"""Run under `torchrun --nproc_per_node 2` by test_distributed.py (gloo, CPU).

Arguments: MODEL_DIR DATA_PATH OUTPUT_DIR [seq2vae eval options...]
1. `seq2vae eval` through its CLI with those options (rank 0 writes OUTPUT_DIR/eval-2ranks.json).
2. `validate` on per-rank batch lists of different lengths (rank 0: 3 batches, rank 1: 1): must not
   hang, and must return the same dict on every rank; each rank writes validate-rank{R}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist


def main() -> None:
    model_dir, data_path, output_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    from seq2vae.data.collate import collate
    from seq2vae.evaluation.cli import main as eval_main
    from seq2vae.evaluation.data import load_samples
    from seq2vae.evaluation.harness import validate
    from seq2vae.model import Seq2SeqVAE

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    eval_options = sys.argv[4:]
    code = eval_main(["--model", model_dir, "--data", data_path, *eval_options, "--output", str(output_dir / "eval-2ranks.json")])
    assert code == 0, code
    vae = Seq2SeqVAE.from_pretrained(model_dir)
    samples, _ = load_samples(data_path, vae.tokenizer)
    mine = samples[:12] if rank == 0 else samples[12:16]
    batches = [collate(mine[i : i + 4], vae.tokenizer.pad_token_id) for i in range(0, len(mine), 4)]
    result = validate(vae, batches, num_samples=3, max_batches=None, num_reconstructions=2)
    (output_dir / f"validate-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
