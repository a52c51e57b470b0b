"""What a run reports: TensorBoard (RUN_DIR/tensorboard), metrics.jsonl and a tqdm bar, rank 0 only.

Other ranks get a monitor that does nothing, so the trainer calls it unconditionally. On resume the
TensorBoard run is reopened with `purge_step`, which hides events the interrupted run wrote after the
checkpoint, and the JSON-lines records (metrics.jsonl, validation.jsonl) are cut back to the
checkpoint's step the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

# JSON-lines records in the run directory, one line per logged step.
RECORDS = ("metrics.jsonl", "validation.jsonl")


class Monitor:
    """Rank 0's writer. `start_step` is the step already done (0, or the resumed checkpoint's)."""

    def __init__(self, run_dir: Path, start_step: int, total_steps: int, progress_bar: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        for record in RECORDS:
            self._truncate(run_dir / record, start_step)
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True) if progress_bar else None

    @staticmethod
    def _truncate(path: Path, start_step: int) -> None:
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        path.write_text("".join(line + "\n" for line in kept))

    def scalars(self, step: int, values: dict[str, float], record: str = "metrics.jsonl") -> None:
        """Writes tagged scalars ("train/loss", ...) to TensorBoard and one JSON line to RUN_DIR/`record`."""
        assert record in RECORDS, record
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        with (self.run_dir / record).open("a") as stream:
            stream.write(json.dumps({"step": step, **values}) + "\n")

    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def progress(self, postfix: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
        if self.bar is not None:
            self.bar.close()


class NullMonitor:
    """What ranks other than 0 get: every call is a no-op."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def make_monitor(is_main: bool, run_dir: Path, start_step: int, total_steps: int, progress_bar: bool):
    return Monitor(run_dir, start_step, total_steps, progress_bar) if is_main else NullMonitor()
