"""The training loop: phases of VAE finetuning on one DeepSpeed engine, with exact resume.

    run(config) -> Trainer(config).fit():  setup -> [resume] -> for each step: train_step ->
    log / validate / save / stop? -> final save and validation

Every rank runs the same sequence of collectives: the decisions that could differ between ranks
(stop signal received, non-finite loss) are all-reduced before anyone acts on them.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint.saving import (
    capture_rng,
    checkpoint_tag,
    finish_checkpoint,
    load_checkpoint,
    resolve_resume,
    restore_rng,
    save_checkpoint,
    set_best_pointer,
    start_checkpoint,
)
from ..config import save_config
from ..data.collate import collate, token_counts
from ..data.noising import apply_noise, mask_token_id_for, protected_token_ids, reference_denoise
from ..data.stream import ShardError, build_loader, read_split
from ..distributed import World, any_rank, barrier, init_world, set_collective_timeout
from ..evaluation import active_units, validate
from ..model.invariants import check_gradients
from ..model.objective import vae_loss
from ..model.reference_compat import frozen_groups
from .config import BEST_METRICS, PhaseConfig, TrainConfig, gradient_accumulation_steps, validate_train_config
from .engine import build_engine, has_gradient, set_learning_rate
from .failures import agree_on_user_error
from .freezing import set_frozen
from .monitor import make_monitor
from .preflight import check_before_run, world_size_from_environment
from .run_lock import hold_run_directory
from .schedules import beta_at, lr_at, next_kl_target_beta
from .signals import REQUEUE_EXIT_CODE, StopRequest
from .throughput import make_throughput_window


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps were skipped for a non-finite loss or gradient norm."""


@dataclass
class SkipCounter:
    """Counts skipped optimizer steps (a non-finite loss on some rank, or a step DeepSpeed dropped for a
    non-finite gradient norm); too many in a row abort the run."""

    limit: int  # optim.max_consecutive_skips
    consecutive: int = 0
    total: int = 0

    def record(self, skipped: bool, step: int) -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"aborting at step {step}: {self.consecutive} consecutive steps were skipped for a non-finite loss or "
                f"gradient norm (optim.max_consecutive_skips={self.limit}); lower optim.lr, check the data, or use precision=fp32"
            )


LOSS_PARTS = ("loss", "recon", "kl", "kl_thresholded")


@dataclass
class StepResult:
    parts: torch.Tensor  # [len(LOSS_PARTS)] on the device: this rank's means over micro-batches
    beta: float
    skipped: bool  # the optimizer step was not applied (on every rank)
    num_tokens: int  # target tokens this rank processed in the step
    num_samples: int
    data_wait_s: float
    step_time_s: float
    kl_per_dim: torch.Tensor  # [Z] batch mean of the last micro-batch (on the device)
    mu: torch.Tensor  # [B,Z] of the last micro-batch (on the device)
    num_source_tokens: int = 0  # encoder input tokens (after noising) this rank processed in the step
    dropped_by_deepspeed: bool = False  # skipped by DeepSpeed itself: every loss was finite, the gradient norm not


def phase_at(phases: list[PhaseConfig], step: int) -> tuple[int, int]:
    """Global step (0-based) -> (phase index, step within that phase)."""
    for index, phase in enumerate(phases):
        if step < phase.steps:
            return index, step
        step -= phase.steps
    raise ValueError("step is past the last phase")


def _git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = validate_train_config(config)
        # Every check that needs no model (shards, tokenizer, DeepSpeed JSON, resume target, ...), on
        # every rank, before the run directory is created or touched; a mismatch should not wait for
        # an 11B backbone to load.
        check_before_run(config, world_size_from_environment())
        self.stop_request = StopRequest().install()
        self._last_step_seconds = 0.0  # recorded with each save, for the SLURM warning lead
        self.pending_save = None  # an asynchronous checkpoint still being written
        self.world: World = init_world(config.startup_timeout_s)  # until the first step; see fit
        self.run_dir = Path(config.run_dir)
        self.run_lock = hold_run_directory(self.run_dir, self.world)  # one run per directory
        self.checkpoints_dir = self.run_dir / "checkpoints"
        if self.world.is_main:
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
            (self.run_dir / "git_revision.txt").write_text(_git_revision() + "\n")
        barrier()
        # A damaged checkpoint is verified (and auto's fallback chosen) before the engine exists.
        self._resume_path = resolve_resume(config.resume, self.checkpoints_dir, self.world)
        self.parts = build_engine(config, self.world, self.run_dir / "ds_config.json")
        self.engine = self.parts.engine
        self.accumulation = gradient_accumulation_steps(config.data, self.world.size)
        tokenizer = self.parts.vae.tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.mask_token_id = mask_token_id_for(tokenizer)
        self.protected_token_ids = protected_token_ids(tokenizer)
        # Per-rank streams: ranks see different data, so their dropout / z draws / noising differ too.
        _seed_everything(config.seed * 1_000_003 + self.world.rank)
        self.noise_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.world.rank)
        self.step = 0
        self.resumed_from: Path | None = None
        self.skips = SkipCounter(config.optim.max_consecutive_skips)
        # kind kl_target: beta is controller state, kept in checkpoints (set when a phase starts or on resume).
        self.kl_target_beta: float | None = None
        # checkpoint.keep_best: {"metric", "value", "step"} of the best validation so far (trainer state,
        # saved with every checkpoint, so a resumed run ranks later validations against the same best).
        self.best: dict[str, Any] | None = None
        self._best_note: str | None = None  # logged once the monitor exists
        loader_state = self._resume()
        if self.world.is_main:
            self._point_best_at_resumed_state()
        self.loader = build_loader(
            config.data.train,
            "train",
            rank=self.world.rank,
            world_size=self.world.size,
            batch_size=config.data.micro_batch_size,
            seed=config.seed,
            pad_token_id=self.pad_token_id,
            num_workers=config.data.num_workers,
            shuffle_buffer=config.data.shuffle_buffer,
            length_bucketing=config.data.length_bucketing,
            on_corrupt=config.data.on_corrupt,
            state=loader_state,
        )
        self.validation_batches, self._validation_note = self._validation_batches()
        self.monitor = make_monitor(
            self.world.is_main, self.run_dir, self.step, config.total_steps, config.logging.progress_bar
        )
        self._phase_index: int | None = None
        self._gradients_checked_in_phase: int | None = None  # the first step of each phase checks them
        self.throughput = make_throughput_window(config, self.parts.vae, self.world.device)

    # ------------------------------------------------------------------------------------ state
    def _resume(self) -> dict | None:
        """Loads the checkpoint `config.resume` selects; returns this rank's data-loader state."""
        path = self._resume_path  # verified in __init__; auto may have fallen back past a damaged one
        if path is None:
            return None
        shared, mine = load_checkpoint(self.engine, path, self.world)
        self.resumed_from = path
        self.step = shared["step"]
        self.skips.consecutive, self.skips.total = shared["consecutive_skips"], shared["total_skips"]
        self.kl_target_beta = shared.get("kl_target_beta")
        saved_best = shared.get("best")  # None in checkpoints of runs without keep_best (or before it existed)
        if saved_best is not None and saved_best["metric"] == self.config.checkpoint.best_metric:
            self.best = saved_best
        if "rng" in mine:
            restore_rng(mine["rng"], self.noise_generator, self.world.device)
        else:  # resumed on another world size: fresh per-rank streams, distinct from those of step 0
            seed = (self.config.seed * 1_000_003 + self.step) * 1_000_003 + self.world.rank
            _seed_everything(seed)
            self.noise_generator.manual_seed(seed)
        if self.world.is_main:
            best = f"; best {self.best['metric']} {self.best['value']:.4f} at step {self.best['step']}" if self.best else ""
            print(f"resumed from {path} at step {self.step}{best}", flush=True)
        return mine["data"]

    def _point_best_at_resumed_state(self) -> None:
        """Makes checkpoints/best agree with the restored best (rank 0): after a fallback past a damaged
        checkpoint, an explicit older --resume or --resume never, the file may name a checkpoint of a
        future this run no longer has."""
        tag = checkpoint_tag(self.best["step"]) if self.config.checkpoint.keep_best and self.best else None
        if tag is not None and not (self.checkpoints_dir / tag).is_dir():
            self._best_note = f"checkpoints/best: {tag} (best validation so far) no longer exists; none is named best"
            tag = None
        set_best_pointer(self.checkpoints_dir, tag)

    def save(self, asynchronous: bool = False, best: bool = False) -> Path:
        """Checkpoint of the current step on all ranks (weights, optimizer, data position, RNG).

        `asynchronous`: returns while the files are still being written; `finish_pending_save` (called
        `checkpoint.seal_after_steps` steps later, or by the next save) completes it and moves `latest`.
        `best`: this step's validation is the best so far; `best` moves to it once it is sealed.
        """
        self.finish_pending_save()
        phase_index, step_in_phase = phase_at(self.config.phases, self.step) if self.step < self.config.total_steps else (
            len(self.config.phases), 0
        )
        shared = {
            "step": self.step,
            "phase_index": phase_index,
            "step_in_phase": step_in_phase,  # with the step, all the beta schedule needs
            "consecutive_skips": self.skips.consecutive,
            "total_skips": self.skips.total,
            # The controller's beta, when the next step continues the phase that set it.
            "kl_target_beta": self.kl_target_beta if phase_index == self._phase_index else None,
            "best": self.best,
        }
        rank_state = {"data": self.loader.state_dict(), "rng": capture_rng(self.noise_generator, self.world.device)}
        if asynchronous:
            self.pending_save = start_checkpoint(
                self.engine, self.checkpoints_dir, self.step, shared, rank_state, self.world, self._last_step_seconds, best
            )
            return self.pending_save.path
        return save_checkpoint(
            self.engine, self.checkpoints_dir, self.step, shared, rank_state, self.config.checkpoint.keep_last, self.world,
            step_seconds=self._last_step_seconds, best=best,
        )

    def finish_pending_save(self) -> None:
        """Completes an asynchronous save on all ranks: wait for its files, seal it, name it latest."""
        if self.pending_save is not None:
            pending, self.pending_save = self.pending_save, None
            finish_checkpoint(self.engine, pending, self.checkpoints_dir, self.config.checkpoint.keep_last, self.world)

    # ------------------------------------------------------------------------------------ steps
    def enter_phase(self, index: int) -> None:
        if index == self._phase_index:
            return
        phase = self.config.phases[index]
        frozen_names = frozen_groups(phase.freeze, self.config.model.reference_compat)
        set_frozen(self.parts.groups, self.parts.optimizer, frozen_names)
        if self._phase_index is not None or self.kl_target_beta is None:  # not the phase a resume continues
            self.kl_target_beta = phase.beta.start if phase.beta.kind == "kl_target" else None
        self._phase_index = index
        frozen = ", ".join(sorted(frozen_names)) or "nothing"
        self.monitor.message(f"phase {index + 1}/{len(self.config.phases)} {phase.name!r}: {phase.steps} steps, frozen: {frozen}")

    def _next_batch(self) -> tuple[dict[str, torch.Tensor], float]:
        started = time.perf_counter()
        batch, error = None, None
        try:
            batch = next(self.loader)
        except ShardError as corrupt:  # on_corrupt=error: the job ends with its message, on every rank
            error = corrupt
        agree_on_user_error(error, self.world.device)
        return batch, time.perf_counter() - started

    def is_logging_step(self, step: int) -> bool:
        """Whether `step` (1-based, as after the step) writes scalars: the steps that read device values."""
        return step % self.config.logging.every_steps == 0 or step == self.config.total_steps

    def train_step(self, phase: PhaseConfig, step_in_phase: int) -> StepResult:
        """One optimizer step: `accumulation` micro-batches, forward, backward, step.

        The host never waits for the device here, except on logging steps: loss parts, KL and mu stay
        on the device (read by `log` on logging steps), token counts come from the host copy of the
        batch, and a non-finite loss is handled without asking the host (below).
        """
        started = time.perf_counter()
        device = self.world.device
        controlled = phase.beta.kind == "kl_target"
        beta = self.kl_target_beta if controlled else beta_at(phase.beta, step_in_phase, phase.steps)
        set_learning_rate(self.parts.optimizer, lr_at(self.config.optim, self.step, self.config.total_steps))
        totals = torch.zeros(len(LOSS_PARTS), dtype=torch.float32, device=device)  # LOSS_PARTS, micro-batch means
        non_finite = torch.zeros((), dtype=torch.bool, device=device)
        data_wait, num_tokens, num_samples, num_source_tokens = 0.0, 0, 0, 0
        # Dropout on: transformers' from_pretrained returns eval mode, and validation leaves it there.
        self.engine.train()
        check_gradients_now = self._gradients_checked_in_phase != self._phase_index
        for micro_step in range(self.accumulation):
            batch, wait = self._next_batch()
            data_wait += wait
            if self.config.model.reference_compat.denoise and phase.deletion_rate > 0:  # the reference's, quirks included
                batch = reference_denoise(batch, phase.deletion_rate, self.pad_token_id, self.noise_generator)
            else:
                batch = apply_noise(
                    batch, phase.deletion_rate, phase.masking_rate, self.mask_token_id, self.pad_token_id, self.noise_generator,
                    keep_ids=self.protected_token_ids,
                )
            num_samples += int(batch["labels"].shape[0])
            source_tokens, target_tokens = token_counts(batch)  # on the host: no device sync
            num_source_tokens += source_tokens
            num_tokens += target_tokens
            # Pinned (torch's caching host allocator reuses the buffers), so the copy is asynchronous and
            # the host goes on queueing kernels; noising made new tensors, hence here, not in the loader.
            pinned = device.type == "cuda"
            batch = {key: (value.pin_memory() if pinned else value).to(device, non_blocking=pinned)
                     for key, value in batch.items()}
            output = self.engine(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                sample=phase.latent == "sample",
            )
            loss, parts = vae_loss(
                output.recon_nll, output.kl_per_dim, beta, phase.free_bits, phase.free_bits_mode,
                self.config.model.reference_compat.recon_mean_length,
            )
            # A non-finite loss on any rank must skip the step on every rank without a host round trip:
            # scaling the loss by NaN makes every gradient of this rank NaN (0 * NaN included); the
            # gradients are summed over ranks, so DeepSpeed's all-reduced global norm is NaN on every
            # rank and every rank drops the step (was_step_applied() is False). Running backward/step
            # keeps the engine's accumulation bookkeeping intact.
            finite = torch.isfinite(loss)
            non_finite |= ~finite
            loss = loss * torch.where(finite, 1.0, float("nan"))
            self.engine.backward(loss)
            if check_gradients_now and micro_step == self.accumulation - 1:  # gradients are whole before step
                self.monitor.message(check_gradients(
                    self.parts.groups, has_gradient, frozen_groups(phase.freeze, self.config.model.reference_compat)))
                self._gradients_checked_in_phase = self._phase_index
            self.engine.step()
            totals += torch.stack([parts[key].detach().float() for key in LOSS_PARTS]) / self.accumulation
        applied = self.engine.was_step_applied()  # host state: DeepSpeed has already decided
        skipped = dropped = False
        if not applied:
            # Rare path (one sync, one collective on every rank, since every rank dropped the step):
            # our own non-finite loss on some rank, or DeepSpeed's drop of a step whose losses were all
            # finite (inf/NaN gradients of a finite loss; fp16 loss-scale overflow elsewhere).
            skipped = any_rank(bool(non_finite), device)
            dropped = not skipped
        elif self.is_logging_step(self.step + 1) and any_rank(bool(non_finite), device):
            raise RuntimeError("internal: DeepSpeed applied an optimizer step whose loss was not finite")
        if self.is_logging_step(self.step + 1) and device.type == "cuda":
            # The host ran ahead of the device since the last logging step; the window's time must
            # include the device catching up (perf/tokens_per_s sums these step times).
            torch.cuda.synchronize(device)
        if controlled and applied:  # the same decision and the same KL on every rank (one sync: the controller's)
            achieved = self._mean_over_ranks({"kl": float(totals[LOSS_PARTS.index("kl")])})["kl"]
            self.kl_target_beta = next_kl_target_beta(beta, achieved, phase.beta)
        return StepResult(
            parts=totals,
            beta=beta,
            skipped=skipped or dropped,
            dropped_by_deepspeed=dropped,
            num_tokens=num_tokens,
            num_samples=num_samples,
            data_wait_s=data_wait,
            step_time_s=time.perf_counter() - started,
            kl_per_dim=output.kl_per_dim.detach().float().mean(0),
            mu=output.mu.detach().float(),
            num_source_tokens=num_source_tokens,
        )

    def record_skip(self, result: StepResult) -> None:
        if result.dropped_by_deepspeed:
            self.monitor.message(
                f"step {self.step}: DeepSpeed dropped the optimizer step on all ranks (non-finite gradient norm, finite loss)"
            )
        elif result.skipped:
            self.monitor.message(f"step {self.step}: non-finite loss on some rank, optimizer step skipped on all")
        self.skips.record(result.skipped, self.step)

    # ------------------------------------------------------------------------------------ reporting
    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        import torch.distributed as dist

        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=self.world.device)
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world.size).tolist()))

    def _memory(self) -> dict[str, float]:
        gib = 2**30
        # Accelerator memory (max over ranks, window peaks) comes from self.throughput.report().
        return {"memory/max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib}

    def log(self, result: StepResult) -> None:
        """Scalars averaged over ranks (a collective: every rank calls it at the same steps). Only
        logging steps read device values; the others only count tokens and time."""
        step = self.step
        self.throughput.add(result.num_source_tokens, result.num_tokens, result.step_time_s)
        if not self.is_logging_step(step):
            self.monitor.progress({"beta": result.beta})
            return
        parts = dict(zip(LOSS_PARTS, result.parts.tolist()))
        train = {f"train/{key}": value for key, value in parts.items()}
        train["train/beta"] = result.beta
        phase = self.config.phases[phase_at(self.config.phases, step - 1)[0]]
        if phase.beta.kind == "kl_target":
            train["train/kl_target"] = phase.beta.target_kl
        grad_norm = self.engine.get_global_grad_norm()
        train["train/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        lr = max(group["lr"] for group in self.parts.optimizer.param_groups)
        per_step = {
            **train,
            "train/lr": lr,
            "train/skipped_steps": float(self.skips.total),
            "data/skipped_samples": float(sum(event["missing"] for event in self.loader.skipped)),
            "perf/samples_per_s": result.num_samples * self.world.size / result.step_time_s,
            "perf/data_wait_share": result.data_wait_s / result.step_time_s,
            "perf/step_time": result.step_time_s,
        }
        averaged = self._mean_over_ranks(per_step)
        averaged["train/lr"], averaged["train/skipped_steps"] = lr, float(self.skips.total)
        averaged["data/skipped_samples"] = round(averaged["data/skipped_samples"] * self.world.size)  # the sum
        mu = result.mu.cpu()
        # This rank's last micro-batch: a cheap trend; validation reports AU over the whole held-out set.
        averaged["latent/active_units"] = float(active_units(mu).count) if mu.shape[0] > 1 else 0.0
        averaged.update(self._memory())
        averaged.update(self.throughput.report())  # tokens/s over the window, MFU, memory max over ranks
        self.monitor.scalars(step, averaged)
        self.monitor.histogram(step, "latent/kl_per_dim", result.kl_per_dim.cpu())
        if self.config.logging.histogram_every and step % self.config.logging.histogram_every == 0:
            self.monitor.histogram(step, "latent/mu", mu)
        self.monitor.progress({"loss": averaged["train/loss"], "kl": averaged["train/kl"], "beta": result.beta})

    # ------------------------------------------------------------------------------------ validation
    def _validation_batches(self) -> tuple[list[dict[str, torch.Tensor]], str | None]:
        """This rank's validation batches (same count on every rank), read once: sentences r, r+W, ...

        Returns (batches, why validation is off or None).
        """
        settings = self.config.validation
        source = self.config.data.valid or self.config.data.train
        micro, world = self.config.data.micro_batch_size, self.world.size
        # Never more batches than the run has steps: a validation batch (forward only, K importance
        # samples) costs about what a step does, so a short run (a smoke test, a 2-step probe) is not
        # mostly validation (20 batches were two thirds of a 2-step run). Runs of >= max_batches steps
        # are unaffected; every validation of a run uses the same batches.
        wanted = min(settings.max_batches, self.config.total_steps) * micro * world
        try:
            samples = list(itertools.islice(read_split(source, "valid"), wanted))
        except (OSError, ValueError) as error:
            return [], f"validation disabled: cannot read the valid split of {source}: {error}"
        usable = (len(samples) // world) * world
        if usable == 0:
            return [], f"validation disabled: the valid split of {source} has fewer sentences than ranks"
        mine = samples[self.world.rank : usable : world]
        return [collate(mine[i : i + micro], self.pad_token_id) for i in range(0, len(mine), micro)], None

    def validate(self) -> dict[str, Any] | None:
        """Recon, KL, -ELBO, IW-NLL, PPL, MI, AU and a few reconstructions on held-out shards (all ranks)."""
        if not self.validation_batches:
            return None
        settings = self.config.validation
        self.engine.eval()  # no dropout in validation; the next train_step switches back
        batches = [{k: v.to(self.world.device) for k, v in batch.items()} for batch in self.validation_batches]
        metrics = validate(
            self.engine.module,
            batches,
            num_samples=settings.iw_samples,
            max_batches=settings.max_batches,
            seed=self.config.seed,
            num_reconstructions=settings.num_reconstructions,
            mi_mini_batch_size=settings.mi_mini_batch_size,
            free_bits=self.config.phases[self._phase_index].free_bits if self._phase_index is not None else None,
        )
        scalars = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.monitor.scalars(self.step, scalars, record="validation.jsonl")
        pairs = metrics.get("reconstructions") or []
        if pairs:
            table = "\n".join(f"| {p['input']} | {p['reconstruction']} |" for p in pairs)
            self.monitor.text(self.step, "eval/reconstructions", "| input | reconstruction |\n|---|---|\n" + table)
        return scalars

    def is_validation_step(self, step: int) -> bool:
        """Periodic validation, and the last step's (before its save, so keep_best can mark that checkpoint)."""
        every = self.config.validation.every_steps
        return bool(every and step % every == 0) or step == self.config.total_steps

    def track_best(self, scalars: dict[str, float] | None) -> bool:
        """checkpoint.keep_best: whether this validation improves on the best so far (then it becomes the best).

        The same answer on every rank (validation returns the same metrics on all), so the save it
        triggers is a collective every rank joins.
        """
        settings = self.config.checkpoint
        value = (scalars or {}).get(f"eval/{settings.best_metric}")
        if not settings.keep_best or value is None or not math.isfinite(value):
            return False
        if self.best is not None:
            better = value < self.best["value"] if BEST_METRICS[settings.best_metric] == "min" else value > self.best["value"]
            if not better:
                return False
        self.best = {"metric": settings.best_metric, "value": value, "step": self.step}
        self.monitor.message(
            f"step {self.step}: best validation {settings.best_metric} so far ({value:.4f}): kept as checkpoints/best")
        return True

    # ------------------------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        config = self.config
        for note in (self._validation_note, self._best_note):
            if note:
                self.monitor.message(note)
        last: StepResult | None = None
        validation: dict[str, float] | None = None
        validated_at: int | None = None
        status, checkpoint = "completed", self.resumed_from
        first_step = self.step  # of this process: 0, or the step it resumed at
        try:
            while self.step < config.total_steps:
                phase_index, step_in_phase = phase_at(config.phases, self.step)
                self.enter_phase(phase_index)
                phase = config.phases[phase_index]
                result = self.train_step(phase, step_in_phase)
                if self.step == first_step:
                    set_collective_timeout(config.distributed_timeout_s)  # loading is over: a stuck peer now fails fast
                self.step += 1
                self.record_skip(result)
                self.log(result)
                last = result
                self._last_step_seconds = result.step_time_s
                # The same step on every rank: the seal's collectives line up.
                if self.pending_save is not None and self.step >= self.pending_save.step + config.checkpoint.seal_after_steps:
                    self.finish_pending_save()
                end_of_phase = step_in_phase + 1 == phase.steps
                # Before validation: after a stop signal the time left until SIGKILL is for the save.
                stop = any_rank(self.stop_request.requested, self.world.device)
                improved = False
                if not stop and self.is_validation_step(self.step):
                    validation, validated_at = self.validate(), self.step
                    improved = self.track_best(validation)
                if stop or self.step == config.stop_at_step:
                    status = "preempted" if stop else "stopped"
                    checkpoint = self.save(best=improved)
                    self.monitor.message(f"{status} at step {self.step}; saved {checkpoint}")
                    break
                if self.step % config.checkpoint.every_steps == 0 or end_of_phase or improved:
                    checkpoint = self.save(asynchronous=config.checkpoint.asynchronous, best=improved)
            self.finish_pending_save()
            if status == "completed":
                if checkpoint is None or checkpoint.name != checkpoint_tag(self.step):
                    checkpoint = self.save()
                if validated_at != self.step:  # resumed at the end: the loop took no step
                    validation = self.validate()
                    if self.track_best(validation) and self.world.is_main:
                        # The run is over, so no later save needs this best in its trainer state.
                        set_best_pointer(self.checkpoints_dir, checkpoint.name)
        finally:
            self.monitor.close()
            if self.run_lock is not None:
                self.run_lock.release()
        return {
            "status": status,
            "exit_code": REQUEUE_EXIT_CODE if status == "preempted" else 0,
            "final_step": self.step,
            "losses": {**dict(zip(LOSS_PARTS, last.parts.tolist())), "beta": last.beta} if last else {},
            "validation": validation,
            "skipped_steps": self.skips.total,
            "run_dir": str(self.run_dir),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "config": str(self.run_dir / "config.yaml"),
            "ds_config": str(self.run_dir / "ds_config.json"),
            "tensorboard": str(self.run_dir / "tensorboard"),
            "metrics": str(self.run_dir / "metrics.jsonl"),
        }


def run(config: TrainConfig) -> dict[str, Any]:
    """Trains `config` in this process (a torchrun worker, or a world of one). Returns a summary:
    status ("completed" | "stopped" | "preempted"), exit_code, final_step, last losses (train/...),
    the last validation metrics (eval/...), skipped_steps, and the run directory's paths.
    The process group stays up afterwards (DeepSpeed caches it), so `run` may be called again in the
    same process.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(config).fit()
