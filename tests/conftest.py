"""Session fixtures shared by every test package: an offline tokenizer, tiny saved models, training
shards, real torchrun launches (`launch`) and the golden runs whose checkpoints several packages read.

Everything is built here, from the synthetic corpus, because the tests run without hub access.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2vae.distributed import free_port as pick_free_port

# DeepSpeed (imported by train/ tests and subprocesses) must pick its CPU accelerator here.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_CORPUS_SIZE = 3000
# Session fixtures that launch 2-rank training runs or start a SLURM cluster (minutes on 2 cores): a test
# that uses one belongs to the slow tier, or `pytest -m "not slow"` would pay for them.
SLOW_FIXTURES = frozenset({"golden_runs", "slurm_cluster"})


def pytest_collection_modifyitems(config, items):
    unmarked = [
        item.nodeid for item in items
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            f"these tests use {', '.join(sorted(SLOW_FIXTURES))} but are not marked @pytest.mark.slow: " + ", ".join(unmarked)
        )


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A Unigram tokenizer (pad 0, eos 1, unk 2, mask 3) trained on the synthetic corpus."""
    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    texts = (row["text"] for row in generate_corpus(TOKENIZER_CORPUS_SIZE, seed=0))
    train_tokenizer(texts, directory, vocab_size=1000)
    return directory


def save_tiny_vae(kind: str, tokenizer_dir: Path, directory: Path, **settings) -> Path:
    from seq2vae.model import VAEConfig, build_vae

    torch.manual_seed(0)
    config = VAEConfig(backbone=f"debug-{kind}", tokenizer=str(tokenizer_dir), latent_dim=16, **settings)
    return build_vae(config).save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_t5_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A saved tiny random T5 VAE (2+2 layers, d_model 64, latent 16)."""
    return save_tiny_vae("t5", tokenizer_dir, tmp_path_factory.mktemp("models") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_bart_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A saved tiny random BART VAE (2+2 layers, d_model 64, latent 16)."""
    return save_tiny_vae("bart", tokenizer_dir, tmp_path_factory.mktemp("models") / "tiny-bart")


def save_flan_like_backbone(tokenizer_dir: Path, directory: Path) -> Path:
    """A tiny T5 v1.1 / Flan-T5 lookalike: gated-gelu, untied LM head saved with values different from the
    embedding, dropout 0.1, and its tokenizer beside it (usable as `model.backbone=<directory>`)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():  # transformers 5 ties T5's head whatever the config says: give it its own values
        model.lm_head.weight = torch.nn.Parameter(torch.randn(len(tokenizer), 64) * 0.05)
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def flan_like_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A saved tiny Flan-T5-like backbone (untied head that differs from the embedding), with its tokenizer."""
    return save_flan_like_backbone(tokenizer_dir, tmp_path_factory.mktemp("backbones") / "flan-like")


# Hand-countable T5 (see test_model_shape.py): vocabulary 100, D 8, 2 heads x 4, FFN 16 (ReLU, two
# matrices), one encoder and one decoder layer, LM head tied to the embedding.
TINY_T5 = dict(
    vocab_size=100, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=2,
    relative_attention_num_buckets=32, feed_forward_proj="relu", tie_word_embeddings=True,
)
# The published configs of t5-base and google/flan-t5-xxl (their hub config.json files).
T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
    feed_forward_proj="relu", tie_word_embeddings=True,
)
FLAN_T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False, dtype="float32",
)


def _write_backbone_config(directory: Path, settings: dict) -> Path:
    from transformers import T5Config

    T5Config(**settings).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def backbone_dirs(tmp_path_factory) -> dict[str, Path]:
    """Backbone config directories (config.json only, no weights) for the planner and for sizing."""
    root = tmp_path_factory.mktemp("backbones")
    return {
        "tiny-t5": _write_backbone_config(root / "tiny-t5", TINY_T5),
        "t5-base": _write_backbone_config(root / "t5-base", T5_BASE),
        "flan-t5-xxl": _write_backbone_config(root / "flan-t5-xxl", FLAN_T5_XXL),
    }


@pytest.fixture
def free_port() -> int:
    """A TCP port on loopback that is free right now (for torchrun rendezvous)."""
    return pick_free_port()


def _copy_with_out_of_range_id(
    shard_dir: Path, destination: Path, shard_name: str | list[str], sample_index: int, token_id: int
) -> str:
    """Copies a shard directory, then rewrites sample `sample_index` of `shard_name` (or of each shard in
    a list) so one of its ids is `token_id` (a well-formed int32 .npy: only the vocabulary check can
    catch it). Returns the (first) rewritten sample's key."""
    import shutil

    shutil.copytree(shard_dir, destination)
    names = [shard_name] if isinstance(shard_name, str) else shard_name
    return [_rewrite_ids(destination / name, sample_index, token_id) for name in names][0]


def _rewrite_ids(path: Path, sample_index: int, token_id: int) -> str:
    import io
    import tarfile

    import numpy as np

    from seq2vae.data.shards import encode_ids

    members = []
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            members.append((member, archive.extractfile(member).read()))
    keys = sorted({member.name.split(".", 1)[0] for member, _ in members})
    bad_key = keys[sample_index]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for member, data in members:
            if member.name == f"{bad_key}.input_ids.npy":
                ids = np.load(io.BytesIO(data))
                ids[0] = token_id
                data = encode_ids(ids)
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return bad_key


@pytest.fixture(scope="session")
def out_of_range_copy():
    """`copy(shard_dir, destination, shard_name, sample_index, token_id) -> key`: a shard directory copy
    with one token id outside the tokenizer's vocabulary."""
    return _copy_with_out_of_range_id


# ------------------------------------------------------------------------------ training runs
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TRAIN_TESTS = Path(__file__).resolve().parent / "train"  # worker scripts that torchrun starts
PROBE = TRAIN_TESTS / "engine_probe.py"
CORPUS_SENTENCES = 600


def worker_env() -> dict[str, str]:
    """CPU DeepSpeed, one thread per rank (2 ranks share the 2 cores), quiet tokenizers."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun_command(script_args: list[str], nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(pick_free_port()),
        *script_args,
    ]


def torchrun(script_args: list[str], timeout: float = 300, nproc: int = 2) -> subprocess.CompletedProcess:
    """Runs a torchrun job to completion; the output is kept for assertion messages."""
    return subprocess.run(
        torchrun_command(script_args, nproc), env=worker_env(), capture_output=True, text=True, timeout=timeout
    )


def run_seq2vae(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m seq2vae ARGS` as one process, with the workers' environment; output kept for assertions."""
    command = [sys.executable, "-m", "seq2vae", *args]
    return subprocess.run(command, env=worker_env(), capture_output=True, text=True, timeout=timeout)


def train_args(config: Path | str, *overrides: str) -> list[str]:
    return ["-m", "seq2vae.train", "--config", str(config), *overrides]


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tail(process) -> str:
    return ((process.stdout or "") + (process.stderr or ""))[-6000:]


@pytest.fixture(scope="session")
def shard_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """Webdataset shards of the synthetic corpus (train + 10% valid), as `seq2vae shard` writes them."""
    from seq2vae.data.shards import write_shards
    from seq2vae.data.synthetic import write_jsonl

    root = tmp_path_factory.mktemp("train-data")
    corpus = write_jsonl(root / "corpus.jsonl", CORPUS_SENTENCES, seed=1)
    write_shards([str(corpus)], root / "shards", str(tokenizer_dir), valid_fraction=0.1, shard_size=150, progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def data_overrides(shard_dir, tokenizer_dir) -> list[str]:
    """Overrides pointing a packaged debug config at the test shards and tokenizer."""
    return [f"data.train={shard_dir}", f"model.tokenizer={tokenizer_dir}"]


class Launch:
    """The helpers above, handed to tests as the `launch` fixture (importlib mode: no `import conftest`)."""

    configs = CONFIGS
    probe = PROBE
    env = staticmethod(worker_env)
    free_port = staticmethod(pick_free_port)
    command = staticmethod(torchrun_command)
    run = staticmethod(torchrun)
    seq2vae = staticmethod(run_seq2vae)
    train_args = staticmethod(train_args)
    metrics = staticmethod(read_metrics)
    tail = staticmethod(tail)


@pytest.fixture(scope="session")
def launch() -> type[Launch]:
    return Launch


# ------------------------------------------------------------------------------ golden runs
# Shared by train/test_initial_weights.py (stage agreement) and checkpoint/test_safe_load.py,
# test_init_from.py, test_consolidate.py and test_export.py (real checkpoints of real runs): launched once per session.
INITIAL_WEIGHTS_PROBE = Path(__file__).resolve().parent / "checkpoint" / "initial_weights_probe.py"
GOLDEN_STAGES = ("zero1", "zero2", "zero3")
GOLDEN_STEPS = 20


def _probe_config(directory: Path, stage: str, data_overrides: list[str]) -> Path:
    from seq2vae.config import save_config
    from seq2vae.train.config import load_train_config

    # fp32 (the debug config's precision) and DeepSpeed's torch AdamW (torch_adam in every packaged
    # template) on every stage. Dropout and z draws agree without further settings: every stage seeds
    # each rank's generator the same way after the engine is built and consumes it in the same order.
    # Only the order of floating-point sums differs (ZeRO-3 reduces and norms per partition), which
    # is why agreement is to 1e-5 and not bitwise. No free bits: the threshold's kink turns those
    # 1e-7 differences into 1e-4 once a sentence's KL_d sits at lambda (its gradient is on in one run
    # and off in the other; seen at step 17 of 20, with loss and KL still equal to 1e-7).
    config = load_train_config(
        CONFIGS / "debug-zero3.yaml",
        [
            *data_overrides,
            f"deepspeed={stage}",
            f"run_dir={directory / 'run'}",
            f"phases.1.steps={GOLDEN_STEPS - 4}",
            "phases.1.free_bits=0",
            "checkpoint.every_steps=1000",
            "validation.every_steps=0",
            "validation.max_batches=1",
            "resume=never",
        ],
    )
    path = directory / "config.yaml"
    save_config(config, path)
    return path


@pytest.fixture(scope="session")
def golden_runs(data_overrides, tmp_path_factory) -> dict[str, Path]:
    """Probe output directory per run: the three 2-rank stages and "zero3-1rank" (start only).

    Each directory holds config.yaml and initial.safetensors (the gathered initial weights); a stage's
    DIR/run is a complete run directory (metrics.jsonl, checkpoints at steps 4 and 20).
    """
    root = tmp_path_factory.mktemp("initial-weights")
    outputs = {}
    for stage in GOLDEN_STAGES:
        out = root / stage
        out.mkdir()
        done = torchrun([str(INITIAL_WEIGHTS_PROBE), str(_probe_config(out, stage, data_overrides)), str(out)])
        assert done.returncode == 0, tail(done)
        outputs[stage] = out
    single = root / "zero3-1rank"
    single.mkdir()
    done = torchrun(
        [str(INITIAL_WEIGHTS_PROBE), str(_probe_config(single, "zero3", data_overrides)), str(single), "--no-train"], nproc=1
    )
    assert done.returncode == 0, tail(done)
    outputs["zero3-1rank"] = single
    return outputs
