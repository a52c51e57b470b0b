"""DeepSpeed config resolution: "auto" values, batch arithmetic, and keys DeepSpeed would ignore."""

from __future__ import annotations

import copy

import pytest

from seq2vae.train.config import OptimConfig
from seq2vae.train.ds_config import DeepSpeedConfigError, load_ds_template, resolve_ds_config

OPTIM = OptimConfig(lr=3e-4, weight_decay=0.01, betas=[0.9, 0.98], eps=1e-6, gradient_clipping=0.5)


def resolve(template, **kwargs):
    settings = dict(d_model=64, micro_batch_size=4, gradient_accumulation_steps=2, world_size=2, optim=OPTIM, precision="bf16")
    settings.update(kwargs)
    return resolve_ds_config(template, **settings)


@pytest.mark.parametrize(
    "name", ["zero1", "zero2", "zero2_offload", "zero3", "zero3_hpz", "zero3_offload", "zero3_offload_optimizer", "single"]
)
def test_packaged_templates_resolve_completely(name):
    template, source = load_ds_template(name)
    assert source.endswith(f"ds_configs/{name}.json")
    precision = "fp32" if name == "single" else "bf16"  # stage 0 has no bf16 with fp32 accumulation
    config = resolve(template, precision=precision)
    assert config["train_batch_size"] == 4 * 2 * 2
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.5
    params = config["optimizer"]["params"]
    assert {k: params[k] for k in ("lr", "betas", "eps", "weight_decay")} == {
        "lr": 3e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01
    }
    assert config["bf16"]["enabled"] is (precision == "bf16")
    assert config["data_types"]["grad_accum_dtype"] == "fp32"
    assert "auto" not in repr(config)
    assert template != config and "auto" in repr(template)  # pure: the template is untouched


def test_bucket_sizes_follow_d_model():
    template, _ = load_ds_template("zero3")
    zero = resolve(template, d_model=1024)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 1024**2
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 1024**2)
    assert zero["stage3_param_persistence_threshold"] == 10 * 1024


def test_gpu_reduce_buckets_are_large_and_multi_node_bf16_sums_gradients_in_fp32():
    from seq2vae.train.ds_config import GPU_REDUCE_BUCKET_ELEMENTS

    template, _ = load_ds_template("zero2")
    gpu = resolve(template, d_model=1024, world_size=16, device_type="cuda", ranks_per_node=8)
    assert gpu["zero_optimization"]["reduce_bucket_size"] == GPU_REDUCE_BUCKET_ELEMENTS > 1024**2
    assert gpu["communication_data_type"] == "fp32"
    one_node = resolve(template, d_model=1024, world_size=8, device_type="cuda", ranks_per_node=8)
    assert "communication_data_type" not in one_node  # DeepSpeed's default: the model dtype (bf16)
    fp32 = resolve(template, d_model=1024, world_size=16, device_type="cuda", ranks_per_node=8, precision="fp32")
    assert "communication_data_type" not in fp32
    explicit = resolve({**template, "communication_data_type": "bf16"}, world_size=16, device_type="cuda", ranks_per_node=8)
    assert explicit["communication_data_type"] == "bf16"  # asked for: kept
    assert resolve(template, d_model=1024)["zero_optimization"]["reduce_bucket_size"] == 1024**2  # CPU


def test_offload_config_is_explicit_about_pinning_and_clipping():
    template, _ = load_ds_template("zero3_offload")
    zero = template["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and "pin_memory" in zero["offload_optimizer"]
    assert zero["offload_param"]["device"] == "cpu" and "pin_memory" in zero["offload_param"]
    assert "gradient_clipping" in template


def test_fp32_precision_disables_bf16():
    template, _ = load_ds_template("zero2")
    assert resolve(template, precision="fp32")["bf16"]["enabled"] is False


def test_explicit_batch_sizes_must_agree():
    template, _ = load_ds_template("zero2")
    template["train_batch_size"] = 64
    with pytest.raises(DeepSpeedConfigError, match="'train_batch_size' is 64.*implies 16"):
        resolve(template)
    template, _ = load_ds_template("zero2")
    template["train_micro_batch_size_per_gpu"] = 8
    with pytest.raises(DeepSpeedConfigError, match="train_micro_batch_size_per_gpu"):
        resolve(template)


@pytest.mark.parametrize(
    "path, typo, message",
    [
        ((), "gradient_cliping", "gradient_cliping.*did you mean 'gradient_clipping'"),
        (("bf16",), "enable", "bf16.enable"),
        (("zero_optimization",), "stage3_prefetch_bucket", "zero_optimization.stage3_prefetch_bucket"),
        (("zero_optimization", "offload_optimizer"), "pin_mem", "offload_optimizer.pin_mem"),
        (("optimizer", "params"), "weight_decy", "optimizer.params.weight_decy"),
        (("data_types",), "grad_accum_type", "data_types.grad_accum_type"),
    ],
)
def test_unknown_keys_are_rejected_by_name(path, typo, message):
    template, _ = load_ds_template("zero3_offload")
    section = template
    for key in path:
        section = section[key]
    section[typo] = 1
    with pytest.raises(DeepSpeedConfigError, match=message):
        resolve(template)


def test_fp16_scheduler_and_unresolvable_auto_are_rejected():
    base, _ = load_ds_template("zero2")
    fp16 = copy.deepcopy(base) | {"fp16": {"enabled": True}}
    with pytest.raises(DeepSpeedConfigError, match="fp16"):
        resolve(fp16)
    scheduler = copy.deepcopy(base) | {"scheduler": {"type": "WarmupLR", "params": {}}}
    with pytest.raises(DeepSpeedConfigError, match="'scheduler'"):
        resolve(scheduler)
    leftover = copy.deepcopy(base)
    leftover["zero_optimization"]["allgather_bucket_size"] = "auto"
    with pytest.raises(DeepSpeedConfigError, match="zero_optimization.allgather_bucket_size"):
        resolve(leftover)


def test_unknown_packaged_name_lists_the_choices(tmp_path):
    with pytest.raises(DeepSpeedConfigError,
                       match="zero1, zero2, zero2_offload, zero3, zero3_hpz, zero3_offload, zero3_offload_optimizer"):
        load_ds_template("zero4")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DeepSpeedConfigError, match="bad.json: not valid JSON"):
        load_ds_template(str(bad))


def test_overlap_comm_and_hpz_auto_follow_the_device_and_the_node_layout():
    template, _ = load_ds_template("zero3_hpz")
    gpu = resolve(template, world_size=32, device_type="cuda", ranks_per_node=8)
    assert gpu["zero_optimization"]["overlap_comm"] is True
    assert gpu["zero_optimization"]["zero_hpz_partition_size"] == 8
    one_node = resolve(template, world_size=8, device_type="cuda", ranks_per_node=8)
    assert one_node["zero_optimization"]["zero_hpz_partition_size"] == 1
    cpu = resolve(template)
    assert cpu["zero_optimization"]["overlap_comm"] is False and cpu["zero_optimization"]["zero_hpz_partition_size"] == 1


def test_auto_preset_needs_no_zero_on_one_rank():
    from seq2vae.train.config import TrainConfig
    from seq2vae.train.ds_config import preset_for, resolved_ds_config

    assert preset_for("auto", 1, "fp32") == "single"
    assert preset_for("auto", 1, "bf16") == preset_for("auto", 2, "fp32") == preset_for("auto", 8, "bf16") == "zero2"
    assert preset_for("zero3", 1, "fp32") == "zero3"  # asked for: kept
    config = TrainConfig(precision="fp32")
    assert config.deepspeed == "auto"
    assert resolved_ds_config(config, 1, 64)["zero_optimization"] == {"stage": 0}
    assert resolved_ds_config(config, 2, 64)["zero_optimization"]["stage"] == 2
    config.precision = "bf16"  # stage 0 has no bf16 with fp32 accumulation; BF16_Optimizer measured slower
    assert resolved_ds_config(config, 1, 64)["zero_optimization"]["stage"] == 2


def test_stage_zero_in_bf16_is_refused_naming_the_key():
    template, _ = load_ds_template("single")
    assert resolve(template, precision="fp32")["zero_optimization"] == {"stage": 0}
    refused = r"single.json: 'zero_optimization.stage' 0 with precision=bf16.*deepspeed=auto"
    with pytest.raises(DeepSpeedConfigError, match=refused):
        resolve(template, source="ds_configs/single.json")
