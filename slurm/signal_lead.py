"""How long before the time limit SLURM warns a training job: long enough to finish a step and save.

The trainer records how long its last save took (RUN_DIR/checkpoints/save_timing.json, written by
`seq2vae.checkpoint.saving` after every save). A requeued or resubmitted job renders its warning from
that measurement; a new run from the planner's checkpoint size at an assumed write speed; both with a
floor. SLURM sends the `--signal` warning up to a minute early, never late, so the lead is a lower
bound on the time the ranks get. Without a warning in time, SLURM's TERM at the limit leaves them
only KillWait (30 s by default) before SIGKILL.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError

# Written by seq2vae.checkpoint.saving (SAVE_TIMING_FILE there); repeated so rendering never imports
# the training stack. A test checks that the two agree.
SAVE_TIMING_FILE = "save_timing.json"
MINIMUM_LEAD_SECONDS = 120
# One save's time varies with the filesystem's load: the warning allows for a save twice as slow.
SAVE_SAFETY_FACTOR = 2.0
# What the planner assumes a node writes to the shared filesystem when no save has been measured yet.
ASSUMED_WRITE_BYTES_PER_SECOND_PER_NODE = 2**30


@dataclass(frozen=True)
class SaveTiming:
    """One save as the trainer measured it: wall seconds on rank 0 (all ranks wait for the slowest)."""

    step: int
    save_seconds: float
    step_seconds: float  # the optimizer step before it: the stop waits for a step boundary


@dataclass(frozen=True)
class SignalLead:
    seconds: int
    reason: str  # how the figure was derived, written into the job script


def read_save_timing(run_dir: str | Path) -> SaveTiming | None:
    """The last save's timing in `run_dir`, None when the run has not saved yet; ConfigError naming the
    file when it cannot be read."""
    path = Path(run_dir) / "checkpoints" / SAVE_TIMING_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return SaveTiming(int(record["step"]), float(record["save_seconds"]), float(record["step_seconds"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"'{path}': cannot read the last save's timing ({error!r}); delete it or give --signal-seconds"
        ) from None


def checkpoint_write_seconds(checkpoint_bytes: int, nodes: int) -> float:
    """Seconds to write `checkpoint_bytes` (all ranks' files) when every node writes its share at the
    assumed speed."""
    return checkpoint_bytes / (ASSUMED_WRITE_BYTES_PER_SECOND_PER_NODE * max(nodes, 1))


def signal_lead(run_dir: str | Path | None, estimated_save_seconds: float | None = None) -> SignalLead:
    """The warning lead: SAVE_SAFETY_FACTOR x the measured (else estimated) save + one step, at least
    MINIMUM_LEAD_SECONDS."""
    timing = read_save_timing(run_dir) if run_dir else None
    if timing is not None:
        needed = SAVE_SAFETY_FACTOR * timing.save_seconds + timing.step_seconds
        source = (f"{SAVE_SAFETY_FACTOR:g} x the last save ({timing.save_seconds:.1f} s at step {timing.step}) "
                  f"+ a step ({timing.step_seconds:.1f} s)")
    elif estimated_save_seconds is not None:
        needed = SAVE_SAFETY_FACTOR * estimated_save_seconds
        source = (f"{SAVE_SAFETY_FACTOR:g} x the planned save ({estimated_save_seconds:.1f} s at "
                  f"{ASSUMED_WRITE_BYTES_PER_SECOND_PER_NODE / 2**30:g} GiB/s per node)")
    else:
        return SignalLead(MINIMUM_LEAD_SECONDS, "no save measured or planned yet: the floor")
    seconds = max(MINIMUM_LEAD_SECONDS, math.ceil(needed))
    floor_note = f", raised to the floor of {MINIMUM_LEAD_SECONDS} s" if seconds > math.ceil(needed) else ""
    return SignalLead(seconds, f"{source}{floor_note}")
