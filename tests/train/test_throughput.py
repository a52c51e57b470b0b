"""MFU, tokens/s and accelerator memory in metrics.jsonl and TensorBoard, from a real 2-rank run."""

from __future__ import annotations

import math

import pytest

from seq2vae.data.shards import load_meta
from seq2vae.model import VAEConfig
from seq2vae.model.build import backbone_config
from seq2vae.model.flops import training_flops_per_token
from seq2vae.model.shape import model_shape

PEAK_TFLOPS = 0.05  # a CPU-sized "peak", so MFU lands in a checkable range

pytestmark = pytest.mark.slow  # a 2-rank torchrun training run


@pytest.fixture(scope="module")
def throughput_run(data_overrides, launch, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("throughput") / "run"
    overrides = [*data_overrides, f"run_dir={run_dir}", "logging.every_steps=2", f"logging.peak_tflops={PEAK_TFLOPS}",
                 "validation.every_steps=0", "checkpoint.every_steps=100"]
    done = launch.run(launch.train_args(launch.configs / "debug-zero2.yaml", *overrides))
    assert done.returncode == 0, launch.tail(done)
    return run_dir, launch.metrics(run_dir)


def test_metrics_have_window_throughput_mfu_and_memory_max_over_ranks(throughput_run, shard_dir, tokenizer_dir):
    run_dir, metrics = throughput_run
    logged = [m for m in metrics if "perf/mfu" in m]
    assert [m["step"] for m in logged] == [2, 4, 6, 8, 10, 12]
    config = VAEConfig(backbone="debug-t5", tokenizer=str(tokenizer_dir), latent_dim=16)
    flops_per_token = training_flops_per_token(model_shape(backbone_config(config), config), load_meta(shard_dir)["max_length"])
    for record in logged:
        tokens = record["perf/tokens_per_s"]
        assert tokens == pytest.approx(record["perf/source_tokens_per_s"] + record["perf/target_tokens_per_s"])
        # Noising deletes encoder tokens in the first phase, never target tokens.
        assert 0 < record["perf/source_tokens_per_s"] <= record["perf/target_tokens_per_s"] * 1.0001
        achieved_per_rank = flops_per_token * tokens / 2
        assert record["perf/model_tflops_per_s_per_rank"] == pytest.approx(achieved_per_rank / 1e12)
        assert record["perf/mfu"] == pytest.approx(achieved_per_rank / (PEAK_TFLOPS * 1e12))
        assert 0 < record["perf/mfu"] < 1 and math.isfinite(record["perf/mfu"])
        # On CPU the accelerator's memory is the process RSS: a tiny T5 run holds 0.1 - 8 GiB.
        for key in ("memory/allocated_gib", "memory/reserved_gib", "memory/peak_allocated_gib", "memory/peak_reserved_gib"):
            assert 0.1 < record[key] < 8, (key, record[key])
        assert record["memory/peak_allocated_gib"] >= record["memory/allocated_gib"] * 0.999
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert {"perf/mfu", "perf/tokens_per_s", "memory/peak_reserved_gib"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("perf/mfu")] == [2, 4, 6, 8, 10, 12]
