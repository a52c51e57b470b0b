"""Instruments a live `Trainer` (no edits to it): host-device syncs per step, and the step-time split.

Used by bench/gpu_smoke.py (GPU and its CPU dry run), bench/bench_train.py and
tests/train/test_host_syncs.py. As a script it trains one run in this process (a world of one) and
writes the report, with every step's record, as JSON:

    python bench/step_probe.py OUT.json CONFIG.yaml [key=value ...]

Host syncs are counted where they happen: every call of a `torch.Tensor` method that makes the host
wait for the device's queue to drain (`item`, `tolist`, `cpu`, `numpy`, `__bool__`, `__float__`,
`__int__`, `__index__`) and `torch.cuda.synchronize`, from any caller (the trainer, the model,
DeepSpeed) except the host-side data pipeline (seq2vae/data, torch.utils.data), whose tensors never
leave the host. On CPU nothing waits, but the same calls on a GPU would: the count is what a GPU run
pays. Each call is counted once (a `tolist` that calls `item` inside is one sync).

The step-time split: `data` is host time in the trainer's `_next_batch`; `forward`, `backward` and
`optimizer` are the engine's calls, timed with CUDA events on a GPU (device time; read once at the
end) or the host clock on CPU; `host_waits` is host time spent inside the counted sync calls; `step`
is host time from one `train_step` to the next (logging, validation and saves included).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _package_dir(module) -> str:
    # As imported (not resolved): frames name their files the way the import found them.
    return os.path.dirname(module.__file__) + os.sep


def _host_side_prefixes() -> tuple[str, ...]:
    import torch.utils.data

    import seq2vae.data

    return (_package_dir(seq2vae.data), _package_dir(torch.utils.data))


class HostSyncCounter:
    """Context manager counting host-device syncs (see the module doc) and the host time they take."""

    def __init__(self) -> None:
        self.count = 0
        self.own_count = 0  # of those, made by seq2vae's own code (not DeepSpeed, torch or transformers)
        self.wait_s = 0.0
        self.by_caller: dict[str, int] = defaultdict(int)
        self._depth = 0
        self._originals: list[tuple[object, str, object]] = []
        self._host_side = _host_side_prefixes()
        # On CPU every tensor counts (what the same call would cost on a GPU: an upper bound, e.g.
        # torch AdamW's step counters are host tensors on a GPU too).
        self._skip_host_tensors = torch.cuda.is_available()
        import seq2vae

        self._own = _package_dir(seq2vae)

    @contextlib.contextmanager
    def paused(self):
        """The probe's own reads of host tensors are not the trainer's syncs."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def _wrap(self, function):
        counter = self

        @functools.wraps(function)
        def counted(*args, **kwargs):
            if counter._depth:
                return function(*args, **kwargs)
            if counter._skip_host_tensors and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
                return function(*args, **kwargs)  # with a GPU present, a host tensor's read waits for nothing
            caller = sys._getframe(1).f_code.co_filename
            if any(caller.startswith(prefix) for prefix in counter._host_side):
                return function(*args, **kwargs)
            counter._depth += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                counter.wait_s += time.perf_counter() - started
                counter.count += 1
                counter.own_count += caller.startswith(counter._own)
                counter.by_caller[f"{Path(caller).name}:{sys._getframe(1).f_lineno}:{function.__name__}"] += 1
                counter._depth -= 1

        return counted

    def __enter__(self) -> HostSyncCounter:
        targets = [(torch.Tensor, name) for name in SYNC_METHODS] + [(torch.cuda, "synchronize")]
        for owner, name in targets:
            original = getattr(owner, name)
            self._originals.append((owner, name, original))
            setattr(owner, name, self._wrap(original))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()


class _Clock:
    """Start/stop marks for one phase, tagged with the step they fall in: CUDA events on a GPU (read
    later), the host clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[int, object, object]] = []  # (step index, start, end or seconds)

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, step_index: int, begun) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((step_index, begun, event))
        else:
            self.marks.append((step_index, begun, time.perf_counter() - begun))

    def seconds(self, step_indices: set[int]) -> float:
        """Total seconds of the marks in those steps."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(start.elapsed_time(end) / 1e3 for index, start, end in self.marks if index in step_indices)
        return sum(seconds for index, _, seconds in self.marks if index in step_indices)


class StepProbe:
    """Wraps one Trainer's `train_step`, `_next_batch`, `save` and its engine's forward/backward/step
    for the length of a `with` block; `report()` summarises steps from `warmup_steps` on.

    Per step it records the syncs counted since the previous step began (so a step's count includes
    its logging, validation and saving) and whether it was a plain step (none of those three).
    """

    def __init__(self, trainer, warmup_steps: int = 2) -> None:
        self.trainer = trainer
        self.warmup_steps = warmup_steps
        self.device = trainer.world.device
        self.syncs = HostSyncCounter()
        self.clocks = {name: _Clock(self.device) for name in ("forward", "backward", "optimizer")}
        self.steps: list[dict] = []  # per optimizer step: syncs, host_waits_s, data_s, step_s, logging
        self.save_s: list[float] = []
        self.validate_s: list[float] = []
        self.real_tokens = self.padded_tokens = 0  # source tokens of every batch read
        self._micro_marks: dict[str, int] = {}
        self._stack = contextlib.ExitStack()

    # --------------------------------------------------------------------------- wrapping
    def _patch(self, owner, name: str, make) -> None:
        original = getattr(owner, name)
        setattr(owner, name, make(original))
        self._stack.callback(lambda: delattr(owner, name) if name in vars(owner) else None)

    def _timed_engine_call(self, phase: str):
        clock = self.clocks[phase]

        def make(original):
            def call(*args, **kwargs):
                if len(self.steps) < self.warmup_steps:
                    return original(*args, **kwargs)
                begun = clock.start()
                result = original(*args, **kwargs)
                clock.stop(len(self.steps), begun)  # steps close when the next begins: this one's index
                return result

            return call

        return make

    def __enter__(self) -> StepProbe:
        trainer, engine = self.trainer, self.trainer.engine
        self._stack.enter_context(self.syncs)
        self._patch(engine, "forward", self._timed_engine_call("forward"))
        self._patch(engine, "backward", self._timed_engine_call("backward"))
        self._patch(engine, "step", self._timed_engine_call("optimizer"))

        def make_next_batch(original):
            def next_batch():
                batch, wait = original()
                self._current["data_s"] += wait
                with self.syncs.paused():  # the batch is still on the host here
                    mask = batch["attention_mask"]
                    self.real_tokens += int(mask.sum())
                    self.padded_tokens += mask.numel()
                return batch, wait

            return next_batch

        def make_train_step(original):
            def train_step(phase, step_in_phase):
                self._close_step()
                step = trainer.step + 1  # the step number this call produces
                every = trainer.config.logging.every_steps
                self._current = {
                    "step": step, "logging": step % every == 0 or step == trainer.config.total_steps,
                    "syncs": self.syncs.count, "own_syncs": self.syncs.own_count, "saved": False,
                    "validated": False, "host_waits_s": self.syncs.wait_s, "data_s": 0.0,
                    "started": time.perf_counter(),
                }
                return original(phase, step_in_phase)

            return train_step

        def make_validate(original):
            def validate():
                if self._current is not None:
                    self._current["validated"] = True
                started = time.perf_counter()
                metrics = original()
                self.validate_s.append(time.perf_counter() - started)
                return metrics

            return validate

        def make_save(original):
            def save(*args, **kwargs):  # the trainer's own arguments (e.g. asynchronous=) pass through
                if self._current is not None:
                    self._current["saved"] = True
                started = time.perf_counter()
                path = original(*args, **kwargs)
                self.save_s.append(time.perf_counter() - started)
                return path

            return save

        self._current: dict | None = None
        self._patch(trainer, "_next_batch", make_next_batch)
        self._patch(trainer, "train_step", make_train_step)
        self._patch(trainer, "save", make_save)
        self._patch(trainer, "validate", make_validate)
        return self

    def _close_step(self) -> None:
        current = self._current
        if current is None:
            return
        self.steps.append({
            "step": current["step"],
            "logging": current["logging"],
            "plain": not (current["logging"] or current["saved"] or current["validated"]),
            "syncs": self.syncs.count - current["syncs"],
            "own_syncs": self.syncs.own_count - current["own_syncs"],
            "host_waits_s": self.syncs.wait_s - current["host_waits_s"],
            "data_s": current["data_s"],
            "step_s": time.perf_counter() - current["started"],
        })
        self._current = None

    def __exit__(self, *exc) -> None:
        self._close_step()  # the last step: its logging, final save and validation included
        self._stack.close()

    # --------------------------------------------------------------------------- results
    def report(self) -> dict:
        measured = self.steps[self.warmup_steps :]
        plain = [step for step in measured if step["plain"]]  # no logging, validation or save
        logging = [step for step in measured if step["logging"]]
        # The last step carries the final save and validation: out of the per-step times.
        timed = [step for step in measured if step is not self.steps[-1]] or measured

        def median(values):
            return statistics.median(values) if values else None

        # One set of steps for every phase of the split: the measured ones but the last (its final save
        # and validation would swamp the step time).
        indices = {index for index, step in enumerate(self.steps) if step in timed}
        split = {phase: clock.seconds(indices) / max(len(timed), 1) for phase, clock in self.clocks.items()}
        split.update({
            "data": sum(step["data_s"] for step in timed) / max(len(timed), 1),
            "host_waits": sum(step["host_waits_s"] for step in timed) / max(len(timed), 1),
            "step": sum(step["step_s"] for step in timed) / max(len(timed), 1),
        })
        return {
            "measured_steps": len(measured),
            "syncs_per_step_max": max((step["syncs"] for step in plain), default=None),
            "syncs_per_step_median": median([step["syncs"] for step in plain]),
            "own_syncs_per_step_max": max((step["own_syncs"] for step in plain), default=None),
            "plain_steps": len(plain),
            "syncs_per_logging_step_median": median([step["syncs"] for step in logging]),
            "own_syncs_per_logging_step_median": median([step["own_syncs"] for step in logging]),
            "split_s_per_step": split,
            "timing": "cuda events" if self.device.type == "cuda" else "host clock",
            "save_s": self.save_s,
            "validate_s": self.validate_s,
            "padding_share": 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else None,
            "sync_callers": dict(sorted(self.syncs.by_caller.items(), key=lambda item: -item[1])[:15]),
        }


def main(out: str, config_path: str, *overrides: str) -> None:
    from seq2vae.train.config import load_train_config
    from seq2vae.train.trainer import Trainer

    trainer = Trainer(load_train_config(config_path, list(overrides)))
    with StepProbe(trainer, warmup_steps=1) as probe:
        started = time.perf_counter()
        summary = trainer.fit()
        fit_s = time.perf_counter() - started
    report = probe.report()
    report["fit_s"] = fit_s  # the steps, saves and validations: the run after start-up
    report["steps"] = probe.steps
    report["losses"] = summary["losses"]
    Path(out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
