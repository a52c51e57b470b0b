"""The training config: one dataclass per concern, every field documented (`--help-config` prints them).

Precedence: defaults < YAML file < `key=value` overrides (`seq2vae.config.load_config`). Rules that
span several fields (unique phase names, valid freeze groups, rates in [0, 1)) are checked by
`validate_train_config`, which `load_train_config` and `trainer.run` both call, so a config built in
Python gets the same checks as one read from YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import ConfigError, doc, load_config
from ..evaluation import check_estimator_settings
from ..model.config import VAEConfig

# The names `Seq2SeqVAE.parameter_groups()` returns; a phase freezes any subset of them.
PARAMETER_GROUP_NAMES = ("embeddings", "encoder", "decoder", "posterior", "latent")
# Validation scalars (eval/<name> in validation.jsonl) that checkpoint.best_metric may rank by, and
# which way is better.
BEST_METRICS = {
    "recon_nll": "min", "neg_elbo": "min", "iw_nll": "min", "ppl_elbo_per_token": "min", "ppl_iw_per_token": "min",
    "mi_dataset": "max", "mi_mini_batch": "max", "active_units": "max",
}


@dataclass
class DataConfig:
    train: str = doc("", "shard directory written by `seq2vae shard` (its train-*.tar shards are read)")
    valid: str | None = doc(None, "shard directory for validation; null = the valid split of `train`")
    micro_batch_size: int = doc(8, "sentences per rank per forward/backward pass")
    global_batch_size: int | None = doc(
        None,
        "sentences per optimizer step over all ranks; null = micro_batch_size x world size (no "
        "accumulation); otherwise it must be a multiple of micro_batch_size x world size",
    )
    num_workers: int = doc(
        0,
        "data-loader worker processes per rank; part of the batch order, so a resumed run needs the same "
        "value (and the same world size, micro batch size and seed)",
    )
    shuffle_buffer: int = doc(1000, "samples per shuffle block of each loader worker")
    length_bucketing: bool = doc(False, "group sentences of similar length into a batch (less padding)")
    on_corrupt: Literal["error", "skip"] = doc("error", "a corrupt sample stops training, or is logged and skipped")


@dataclass
class BetaSchedule:
    kind: Literal["constant", "linear", "cyclical", "optimus", "kl_target"] = doc(
        "constant",
        "constant: beta = value; linear: ramp start -> value over the warm-up, then value; cyclical "
        "(Fu et al. 2019): `cycles` cycles, each ramping start -> value over a fraction `ratio` of the "
        "cycle then holding; optimus (Li et al. 2020): start for the first 50% of the phase, a linear "
        "ramp over the next 25%, then value; kl_target: a controller moves beta within [start, value] so "
        "that the mean KL per sentence reaches `target_kl` (logged as train/kl beside train/kl_target)",
    )
    value: float = doc(1.0, "the (maximum) KL weight beta")
    start: float = doc(0.0, "beta at the start of a ramp (linear, cyclical, optimus)")
    warmup_fraction: float = doc(0.0, "linear: length of the ramp as a fraction of the phase's steps")
    warmup_steps: int | None = doc(None, "linear: length of the ramp in steps (overrides warmup_fraction)")
    cycles: int = doc(4, "cyclical: number M of cycles in the phase")
    ratio: float = doc(0.5, "cyclical: fraction R of each cycle spent ramping up")
    target_kl: float | None = doc(None, "kl_target: the mean KL (nats per sentence, unweighted) to hold")
    gain: float = doc(0.01, "kl_target: beta change per step per unit of relative KL error ((KL - target) / target)")


@dataclass
class PhaseConfig:
    name: str = doc("vae", "phase name (unique; used in logs and checkpoints)")
    steps: int = doc(1000, "optimizer steps in this phase (0 skips it, e.g. a VAE trained without the autoencoder phase)")
    beta: BetaSchedule = doc(default_factory=BetaSchedule, help="KL weight schedule within the phase")
    free_bits: float = doc(0.0, "KL threshold lambda in nats per latent dimension (0 = off)")
    free_bits_mode: Literal["dimension", "batch"] = doc(
        "dimension",
        "'dimension': threshold each sentence's KL_d (Optimus' dim_target_kl, which masks to 0 where we clamp "
        "to lambda); 'batch': threshold the batch-mean KL_d (Kingma et al. 2016). See docs/CONVENTIONS.md"
    )
    latent: Literal["sample", "mean"] = doc(
        "sample",
        "what the decoder reads: 'sample' = z drawn from q(z|x) (the reference's every phase); 'mean' = z = mu, "
        "a deterministic autoencoder (beta 0 only: with no reconstruction term on sigma, a KL term would only "
        "shrink mu)",
    )
    deletion_rate: float = doc(0.0, "fraction of encoder input tokens deleted (denoising)")
    masking_rate: float = doc(0.0, "fraction of encoder input tokens replaced by the mask token (denoising)")
    freeze: list[str] = doc(
        default_factory=list,
        help="parameter groups not trained in this phase: embeddings, encoder, decoder, posterior, "
        "latent. 'decoder' is the decoder blocks, norms and untied LM head; the token embedding that "
        "T5/BART share between encoder and decoder is the separate 'embeddings' group, so freezing "
        "'decoder' alone still trains the embeddings the decoder reads",
    )


@dataclass
class OptimConfig:
    lr: float = doc(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    betas: list[float] = doc(default_factory=lambda: [0.9, 0.999], help="AdamW (beta1, beta2)")
    eps: float = doc(1e-8, "AdamW epsilon")
    warmup_steps: int = doc(0, "linear learning-rate warm-up from 0, in optimizer steps")
    schedule: Literal["cosine", "linear", "constant"] = doc(
        "cosine", "decay after warm-up, to min_lr_ratio x lr at the last step"
    )
    min_lr_ratio: float = doc(0.1, "final learning rate as a fraction of lr (cosine/linear)")
    gradient_clipping: float = doc(1.0, "clip the global gradient norm to this (0 = off)")
    max_consecutive_skips: int = doc(10, "abort after this many consecutive skipped steps (non-finite loss or gradient norm)")


@dataclass
class CheckpointConfig:
    every_steps: int = doc(1000, "save a checkpoint every N optimizer steps (also at each phase end and the end)")
    keep_last: int = doc(3, "keep the K newest checkpoints, delete older ones; >= 2, so a damaged newest one has a fallback")
    asynchronous: bool = doc(
        False,
        "write periodic checkpoints from a background thread while training goes on (costs a host-memory copy of "
        "this rank's checkpoint state); stop and final saves stay synchronous",
    )
    seal_after_steps: int = doc(
        1, "asynchronous checkpoints: steps trained before a save is waited for, sealed (manifest) and named latest"
    )
    keep_best: bool = doc(
        False,
        "keep the checkpoint of the best validation so far: a validation that improves on it saves that step "
        "(unless it is saved anyway) and names it in checkpoints/best, which keep_last never prunes; "
        "model.init_from=RUN_DIR then starts from it. The reference keeps its phase 1's best (configs/paper/grid.tsv)",
    )
    best_metric: str = doc(
        "recon_nll",
        "the validation scalar keep_best ranks by: recon_nll (the reference's val_recon_loss), neg_elbo, iw_nll, "
        "ppl_elbo_per_token, ppl_iw_per_token (lower is better), mi_dataset, mi_mini_batch, active_units (higher)",
    )


@dataclass
class LoggingConfig:
    every_steps: int = doc(10, "write scalars to TensorBoard and metrics.jsonl every N steps")
    histogram_every: int = doc(100, "write the histogram of mu every N steps (0 = never)")
    progress_bar: bool = doc(True, "tqdm progress bar on rank 0")
    peak_tflops: float | None = doc(
        None, "peak dense TFLOP/s of one device for perf/mfu; null = look the GPU up in seq2vae.hardware (none on CPU)"
    )


@dataclass
class ValidationConfig:
    every_steps: int = doc(500, "validate every N steps (0 = only at the end)")
    max_batches: int = doc(
        20, "validation batches per rank (at most the run's total steps, so a short run is not mostly validation)"
    )
    iw_samples: int = doc(5, "importance samples K per sentence for the IW-NLL estimate (each costs a decoder pass)")
    mi_mini_batch_size: int = doc(
        32, "M of the mini-batch MI estimate: equal-length groups of at most M (He et al. 2019; capped at log M)"
    )
    num_reconstructions: int = doc(4, "validation sentences reconstructed (greedy) and logged as text")


@dataclass
class TrainConfig:
    run_dir: str = doc("runs/default", "run directory: config, checkpoints, TensorBoard, metrics")
    seed: int = doc(0, "seed of model init, data order, noising and sampling")
    model: VAEConfig = doc(default_factory=VAEConfig, help="the VAE (backbone, latent size, pooling, injection)")
    data: DataConfig = doc(default_factory=DataConfig, help="training data")
    phases: list[PhaseConfig] = doc(
        default_factory=lambda: [PhaseConfig()], help="phases run in order inside one job"
    )
    optim: OptimConfig = doc(default_factory=OptimConfig, help="optimiser and learning-rate schedule")
    checkpoint: CheckpointConfig = doc(default_factory=CheckpointConfig, help="checkpointing")
    logging: LoggingConfig = doc(default_factory=LoggingConfig, help="logging")
    validation: ValidationConfig = doc(default_factory=ValidationConfig, help="periodic validation")
    deepspeed: str = doc(
        "auto",
        "DeepSpeed config: a JSON path, or a packaged name: auto (zero2, but single on one fp32 rank), single "
        "(stage 0, no ZeRO; fp32 only), zero1, zero2, zero3, zero3_offload",
    )
    precision: Literal["bf16", "fp32"] = doc("bf16", "parameter/activation precision (fp16 is not offered: T5 overflows)")
    resume: str = doc("auto", "auto: continue from RUN_DIR/checkpoints/latest if any; never; or a checkpoint path")
    stop_at_step: int | None = doc(
        None, "save and stop (exit 0) after this global step, e.g. for time-boxed jobs; null = run all phases"
    )
    distributed_timeout_s: int = doc(
        600, "timeout of collectives after the first step: a rank stuck this long (a peer died) raises instead of hanging"
    )
    startup_timeout_s: int = doc(
        3600, "timeout of collectives until the first step is done (model loading, checkpoint reading, op builds)"
    )

    @property
    def total_steps(self) -> int:
        return sum(phase.steps for phase in self.phases)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"key '{key}': {message}")


def validate_train_config(config: TrainConfig) -> TrainConfig:
    """Checks rules spanning fields; raises ConfigError naming the key. Returns `config`."""
    _require(bool(config.run_dir), "run_dir", "must not be empty")
    _require(bool(config.data.train), "data.train", "a shard directory is required")
    _require(config.data.micro_batch_size > 0, "data.micro_batch_size", "must be > 0")
    if config.data.global_batch_size is not None:
        _require(config.data.global_batch_size > 0, "data.global_batch_size", "must be > 0 or null")
    _require(config.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    _require(config.data.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    _require(len(config.phases) > 0, "phases", "at least one phase is required")
    names = [phase.name for phase in config.phases]
    for i, phase in enumerate(config.phases):
        key = f"phases.{i}"
        _require(bool(phase.name), f"{key}.name", "must not be empty")
        _require(phase.name not in names[:i], f"{key}.name", f"phase name {phase.name!r} is already used by an earlier phase")
        _require(phase.steps >= 0, f"{key}.steps", f"must be >= 0 (0 skips the phase), got {phase.steps}")
        _require(phase.free_bits >= 0, f"{key}.free_bits", f"must be >= 0, got {phase.free_bits}")
        for rate in ("deletion_rate", "masking_rate"):
            value = getattr(phase, rate)
            _require(0 <= value < 1, f"{key}.{rate}", f"must be in [0, 1), got {value}")
        _require(
            phase.deletion_rate + phase.masking_rate < 1,
            f"{key}.masking_rate",
            "deletion_rate + masking_rate must be < 1",
        )
        _require(
            not (config.model.reference_compat.denoise and phase.masking_rate > 0),
            f"{key}.masking_rate",
            "model.reference_compat.denoise reproduces the reference's deletion only; set masking_rate to 0",
        )
        for name in phase.freeze:
            _require(
                name in PARAMETER_GROUP_NAMES,
                f"{key}.freeze",
                f"{name!r} is not a parameter group; valid: {', '.join(PARAMETER_GROUP_NAMES)}",
            )
        _require(
            set(phase.freeze) != set(PARAMETER_GROUP_NAMES), f"{key}.freeze", "freezes every parameter group"
        )
        beta = phase.beta
        _require(beta.value >= 0 and beta.start >= 0, f"{key}.beta", "value and start must be >= 0")
        _require(0 <= beta.warmup_fraction <= 1, f"{key}.beta.warmup_fraction", "must be in [0, 1]")
        if beta.warmup_steps is not None:
            _require(beta.warmup_steps >= 0, f"{key}.beta.warmup_steps", "must be >= 0")
        _require(beta.cycles >= 1, f"{key}.beta.cycles", "must be >= 1")
        _require(0 < beta.ratio <= 1, f"{key}.beta.ratio", "must be in (0, 1]")
        if beta.kind == "kl_target":
            _require(beta.target_kl is not None and beta.target_kl > 0, f"{key}.beta.target_kl",
                     f"kind kl_target needs a target KL > 0 (nats per sentence), got {beta.target_kl}")
            _require(beta.value > beta.start, f"{key}.beta.value",
                     "kind kl_target moves beta within [start, value]: value must exceed start")
            _require(beta.gain > 0, f"{key}.beta.gain", f"must be > 0, got {beta.gain}")
        _require(
            phase.latent == "sample" or (beta.value == 0 and beta.start == 0),
            f"{key}.latent",
            "'mean' decodes from mu, which needs beta 0 throughout the phase (beta.value and beta.start 0)",
        )
    _require(config.total_steps > 0, "phases", "every phase has 0 steps: nothing to train")
    optim = config.optim
    _require(optim.lr > 0, "optim.lr", "must be > 0")
    _require(optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _require(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), "optim.betas", "must be two numbers in [0, 1)")
    _require(optim.eps > 0, "optim.eps", "must be > 0")
    _require(optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    _require(0 <= optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    _require(optim.gradient_clipping >= 0, "optim.gradient_clipping", "must be >= 0")
    _require(optim.max_consecutive_skips >= 1, "optim.max_consecutive_skips", "must be >= 1")
    _require(config.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be > 0")
    _require(config.checkpoint.keep_last >= 2, "checkpoint.keep_last", "must be >= 2 (a fallback when the newest is damaged)")
    _require(config.checkpoint.seal_after_steps >= 1, "checkpoint.seal_after_steps", "must be >= 1")
    _require(config.checkpoint.best_metric in BEST_METRICS, "checkpoint.best_metric",
             f"{config.checkpoint.best_metric!r} is not a validation metric; valid: {', '.join(BEST_METRICS)}")
    _require(config.logging.every_steps > 0, "logging.every_steps", "must be > 0")
    _require(config.logging.histogram_every >= 0, "logging.histogram_every", "must be >= 0")
    _require(config.validation.every_steps >= 0, "validation.every_steps", "must be >= 0")
    _require(config.validation.max_batches > 0, "validation.max_batches", "must be > 0")
    check_estimator_settings("validation", config.validation.iw_samples, config.validation.mi_mini_batch_size)
    _require(config.validation.num_reconstructions >= 0, "validation.num_reconstructions", "must be >= 0")
    _require(bool(config.resume), "resume", "use auto, never or a checkpoint path")
    if config.stop_at_step is not None:
        _require(config.stop_at_step > 0, "stop_at_step", "must be > 0 or null")
    _require(config.distributed_timeout_s > 0, "distributed_timeout_s", "must be > 0")
    _require(config.startup_timeout_s > 0, "startup_timeout_s", "must be > 0")
    return config


def gradient_accumulation_steps(data: DataConfig, world_size: int) -> int:
    """global = micro x accumulation x world; raises ValueError naming the key when it does not divide."""
    per_pass = data.micro_batch_size * world_size
    if data.global_batch_size is None:
        return 1
    if data.global_batch_size % per_pass:
        raise ConfigError(
            f"key 'data.global_batch_size': {data.global_batch_size} is not a multiple of "
            f"data.micro_batch_size x world size = {data.micro_batch_size} x {world_size} = {per_pass}"
        )
    return data.global_batch_size // per_pass


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults < YAML at `path` < `key=value` overrides, then the cross-field checks."""
    return validate_train_config(load_config(TrainConfig, path, overrides))


__all__ = [
    "BEST_METRICS",
    "BetaSchedule",
    "CheckpointConfig",
    "DataConfig",
    "LoggingConfig",
    "OptimConfig",
    "PARAMETER_GROUP_NAMES",
    "PhaseConfig",
    "TrainConfig",
    "ValidationConfig",
    "gradient_accumulation_steps",
    "load_train_config",
    "validate_train_config",
]
