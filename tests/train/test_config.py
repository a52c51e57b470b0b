"""The typed training config: every packaged YAML loads, and mistakes name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2vae.config import ConfigError
from seq2vae.train.config import DataConfig, TrainConfig, gradient_accumulation_steps, load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))


def test_the_required_configs_exist():
    names = {path.name for path in YAMLS}
    assert {"quickstart.yaml", "t5-base-recipe.yaml", "flan-t5-xxl-zero3.yaml", "debug-zero2.yaml", "debug-zero3.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_packaged_config_loads(path):
    config = load_train_config(path)
    assert isinstance(config, TrainConfig)
    assert config.total_steps == sum(phase.steps for phase in config.phases) > 0


def test_the_recipes_say_what_the_issue_asks():
    recipe = load_train_config(CONFIGS / "t5-base-recipe.yaml")
    warmup, vae = recipe.phases
    assert recipe.model.backbone == "t5-base" and recipe.model.latent_dim == 32
    assert warmup.freeze == ["decoder"] and (warmup.deletion_rate, warmup.masking_rate) == (0.15, 0.4)
    assert vae.free_bits > 0 and vae.freeze == []
    xxl = load_train_config(CONFIGS / "flan-t5-xxl-zero3.yaml")
    assert xxl.model.backbone == "google/flan-t5-xxl" and xxl.deepspeed == "zero3_hpz"


def test_overrides_beat_yaml_and_index_phases():
    config = load_train_config(CONFIGS / "debug-zero2.yaml", ["optim.lr=0.5", "phases.1.steps=3", "phases.0.freeze=[encoder]"])
    assert config.optim.lr == 0.5
    assert config.phases[1].steps == 3
    assert config.phases[0].freeze == ["encoder"]


def test_overrides_may_come_before_and_after_options():
    from seq2vae.train.cli import parse_args

    args = parse_args(["--config", "c.yaml", "optim.lr=1", "--resume", "never", "phases.0.steps=2"])
    assert args.overrides == ["optim.lr=1", "phases.0.steps=2"] and args.resume == "never"


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("phases.0.beta.kind=sigmoid", "phases.0.beta.kind"),
        ("precision=fp16", "precision"),
        ("phases.0.freeze=[decoder,attention]", "phases.0.freeze"),
        ("phases.1.name=autoencoder", "phases.1.name"),
        ("phases.0.steps=-1", "phases.0.steps"),
        ("phases.0.masking_rate=1.0", "phases.0.masking_rate"),
        ("phases.1.deletion_rate=-0.1", "phases.1.deletion_rate"),
        ("data.micro_batch_size=0", "data.micro_batch_size"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("phases.1.latent=mean", "phases.1.latent"),  # the VAE phase has beta > 0
        ("model.dropout=1.5", "model.dropout"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config(CONFIGS / "debug-zero2.yaml", [override])


def test_invalid_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="'linear'.*'cyclical'.*'optimus'"):
        load_train_config(CONFIGS / "debug-zero2.yaml", ["phases.0.beta.kind=sigmoid"])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train: x\n  micro_batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.micro_batchsize"):
        load_train_config(path)


def test_global_batch_size_must_divide_into_micro_times_world():
    assert gradient_accumulation_steps(DataConfig(micro_batch_size=4, global_batch_size=None), world_size=2) == 1
    assert gradient_accumulation_steps(DataConfig(micro_batch_size=4, global_batch_size=32), world_size=2) == 4
    with pytest.raises(ValueError, match="data.global_batch_size"):
        gradient_accumulation_steps(DataConfig(micro_batch_size=4, global_batch_size=20), world_size=2)


def test_help_config_lists_every_key_with_help(capsys):
    from seq2vae.train.cli import main

    assert main(["--help-config"]) == 0
    text = capsys.readouterr().out
    for key in ("data.global_batch_size", "optim.max_consecutive_skips", "phases.N.free_bits_mode", "deepspeed", "resume"):
        assert key in text
    assert all("#" in line and line.split("#", 1)[1].strip() for line in text.splitlines())


def test_cli_reports_config_errors_without_a_traceback(capsys):
    from seq2vae.train.cli import main

    assert main(["--config", str(CONFIGS / "debug-zero2.yaml"), "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def test_the_source_label_names_the_command_line_once():
    from seq2vae.config import ConfigError, load_config
    from seq2vae.train.config import TrainConfig

    with pytest.raises(ConfigError) as raised:
        load_config(TrainConfig, CONFIGS / "debug-zero2.yaml", ["seed=1", "optim.lr=0.1", "data.micro_batch_size=x"])
    assert (str(raised.value).count("+ command line") == 1
            and "debug-zero2.yaml + command line: key 'data.micro_batch_size'" in str(raised.value))
