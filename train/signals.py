"""Preemption: SIGUSR1 / SIGTERM set a flag; ranks agree on it at the next step boundary, save, exit 75.

A handler only sets the flag: saving from inside a signal handler would run collectives at an
arbitrary point on one rank and deadlock the others. The handler stays installed until the process
exits, so a SIGTERM that torchrun sends to the surviving workers while they finish does not kill a
rank in the middle of writing its checkpoint shard.
"""

from __future__ import annotations

import signal

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; the SLURM template requeues on it
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Records the first stop signal received; `requested` is this rank's view only."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def install(self) -> "StopRequest":
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self
