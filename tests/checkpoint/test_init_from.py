"""`model.init_from`: a new run starting from an exported model or a run's latest checkpoint (issue 10.1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROBE = Path(__file__).with_name("initial_weights_probe.py")


def _model_config(tokenizer_dir, **settings):
    from seq2vae.model import VAEConfig

    return VAEConfig(**{"backbone": "debug-t5", "tokenizer": str(tokenizer_dir), "latent_dim": 16, **settings})


@pytest.mark.slow
def test_a_model_directory_and_a_run_directory_resolve(tiny_t5_dir, golden_runs, tokenizer_dir):
    from seq2vae.checkpoint.init_from import resolve_init_from

    model = resolve_init_from(_model_config(tokenizer_dir, init_from=str(tiny_t5_dir)))
    assert (model.kind, model.path) == ("model", tiny_t5_dir)
    run = resolve_init_from(_model_config(tokenizer_dir, init_from=str(golden_runs["zero3"] / "run")))
    assert (run.kind, run.path.name) == ("run", "step_00000020")


def test_bad_directories_are_refused_early_with_the_key_and_the_reason(tiny_t5_dir, tmp_path, tokenizer_dir):
    from seq2vae.checkpoint.init_from import resolve_init_from
    from seq2vae.config import ConfigError

    cases = [
        (_model_config(tokenizer_dir, init_from=str(tmp_path / "missing")), "no such directory"),
        (_model_config(tokenizer_dir, init_from=str(tmp_path)), "neither a model directory"),
        (_model_config(tokenizer_dir, init_from=str(tiny_t5_dir), latent_dim=32),
         "model.latent_dim is 16 but this config has model.latent_dim=32"),
        (_model_config(tokenizer_dir, init_from=str(tiny_t5_dir), backbone="debug-bart"), "model.backbone is 'debug-t5'"),
        (_model_config(tokenizer_dir, init_from=str(tiny_t5_dir), injection="both"), "model.injection"),
    ]
    for config, reason in cases:
        with pytest.raises(ConfigError, match="key 'model.init_from'") as raised:
            resolve_init_from(config)
        assert reason in str(raised.value), (reason, str(raised.value))
    pickled = shutil.copytree(tiny_t5_dir, tmp_path / "pickled")
    torch.save({}, pickled / "backbone" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pytorch_model.bin"):
        resolve_init_from(_model_config(tokenizer_dir, init_from=str(pickled)))


def _init_run(launch, data_overrides, stage: str, init_from: Path, out: Path, *extra: str) -> Path:
    from seq2vae.config import save_config
    from seq2vae.train.config import load_train_config

    out.mkdir()
    config = load_train_config(
        CONFIGS / f"debug-{stage}.yaml",
        [*data_overrides, f"run_dir={out / 'run'}", f"model.init_from={init_from}", "seed=7", *extra],
    )
    save_config(config, out / "config.yaml")
    return out / "config.yaml"


@pytest.mark.parametrize(
    "stage, source", [("zero3", "exported"), ("zero2", "run")], ids=["zero3-from-export", "zero2-from-run-dir"]
)
@pytest.mark.slow
def test_init_from_starts_from_the_source_weights(stage, source, golden_runs, data_overrides, launch, tmp_path):
    from seq2vae.checkpoint.export import export_run
    from seq2vae.model import Seq2SeqVAE

    # The zero2 golden run's final weights, as a model directory; the zero3 golden run as a run directory.
    exported = export_run(golden_runs["zero2"] / "run", tmp_path / "exported")
    init_from = exported if source == "exported" else golden_runs["zero3"] / "run"
    expected_model = exported if source == "exported" else export_run(init_from, tmp_path / "expected")
    expected = {name: p.detach() for name, p in Seq2SeqVAE.from_pretrained(expected_model).named_parameters()}

    out = tmp_path / "probe"
    # A short training run after the start: steps count from 1 again (optimizer and data start fresh).
    config = _init_run(launch, data_overrides, stage, init_from, out, "phases.0.steps=1", "phases.1.steps=1",
                       "validation.every_steps=0", "validation.max_batches=1")
    done = launch.run([str(PROBE), str(config), str(out)])
    assert done.returncode == 0, launch.tail(done)
    started = load_file(out / "initial.safetensors")
    assert started.keys() == expected.keys()
    differing = [name for name in expected if not torch.equal(started[name], expected[name])]
    assert not differing, differing[:5]
    assert [m["step"] for m in launch.metrics(out / "run")] == [1, 2]
    assert "resumed from" not in done.stdout + done.stderr
