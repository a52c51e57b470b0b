"""User errors and how they reach the user: one line on stderr, exit code 2, no traceback.

`UserError` is the base of every mistake the user fixes (a config key, a file, a flag): ConfigError,
MetaError, InputError, ShardError, TokenizerMismatchError, EvalDataError, ... derive from it (and keep
their old base, ValueError or RuntimeError, so existing `except` clauses still match).

The entry points (the `seq2vae` dispatcher, `python -m seq2vae.train` under torchrun) run the command
inside `deliver_user_errors`, which prints `seq2vae <command>: error: <message>` once and returns 2.
Under torchrun only global rank 0 prints: every rank meets the same bad input (they read the same
files), so printing on each would repeat the message per rank; a failure found on one rank only is
shared with the others first (see `seq2vae.train.failures`). `--debug` or SEQ2VAE_DEBUG=1 shows the
traceback instead.

Known third-party deprecation warnings (torch deprecations triggered inside DeepSpeed on every call)
are shown once per process instead of once per call site (`quiet_known_warnings`).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable

USER_ERROR_EXIT_CODE = 2  # argparse's code for a usage error: the user has something to fix
DEBUG_ENVIRONMENT_VARIABLE = "SEQ2VAE_DEBUG"
DEBUG_FLAG = "--debug"


class UserError(Exception):
    """A mistake the user fixes; the message alone (no traceback) says what and where."""


class PeerUserError(UserError):
    """Raised on ranks whose peer hit a user error: the same message, printed by rank 0 only."""


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether tracebacks were asked for, argv without --debug)."""
    flag = DEBUG_FLAG in argv
    environment = os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").lower() not in ("", "0", "false", "no")
    return flag or environment, [arg for arg in argv if arg != DEBUG_FLAG]


def is_reporting_rank() -> bool:
    """Global rank 0 of a torchrun job, or a process outside torchrun."""
    return os.environ.get("RANK", "0") == "0"


def report(command: str, error: BaseException) -> None:
    """Prints the one-line message on rank 0 (other ranks stay silent)."""
    if is_reporting_rank():
        print(f"seq2vae {command}: error: {error}", file=sys.stderr, flush=True)


def deliver_user_errors(command: str, function: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Runs `function(argv)`; a UserError becomes one line on stderr (rank 0) and exit code 2."""
    debug, argv = debug_requested(argv)
    if debug:
        os.environ[DEBUG_ENVIRONMENT_VARIABLE] = "1"  # torchrun-launched helpers and subprocesses see it too
    quiet_known_warnings()
    try:
        return int(function(argv) or 0)
    except UserError as error:
        if debug and is_reporting_rank():
            traceback.print_exc()
        report(command, error)
        return USER_ERROR_EXIT_CODE


# (category, path fragment of the file a warning is attributed to) of third-party warnings that fire on
# every call of a hot function: DeepSpeed's ZeRO-3 calls deprecated torch.distributed collectives per
# parameter bucket and step, and a 2-rank job of 130 steps logged about 9,000 identical lines.
KNOWN_NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, "/torch/"),
    (FutureWarning, "/deepspeed/"),
    (DeprecationWarning, "/deepspeed/"),
    (UserWarning, "/torch/distributed/"),
)


def quiet_known_warnings() -> None:
    """Shows each known third-party deprecation warning once per process, not once per call.

    A "once" filter alone is not enough: Python keeps "once" in the warning module's registry, which
    is cleared whenever the filters change, and DeepSpeed's CPU accelerator runs `numactl` through
    subprocess (whose os.get_exec_path enters warnings.catch_warnings) dozens of times per step. So
    the "once" filters are backed by a record of the (category, message) pairs already shown.
    """
    for category, _ in KNOWN_NOISY_WARNINGS:
        warnings.filterwarnings("once", category=category, module=r"(torch|deepspeed)(\.|$)")
    if getattr(warnings.showwarning, "_seq2vae_once", False):
        return
    shown: set[tuple[type[Warning], str]] = set()
    show = warnings.showwarning

    def show_known_once(message, category, filename, lineno, file=None, line=None):
        path = str(filename).replace("\\", "/")
        if any(issubclass(category, known) and fragment in path for known, fragment in KNOWN_NOISY_WARNINGS):
            key = (category, str(message))
            if key in shown:
                return
            shown.add(key)
        show(message, category, filename, lineno, file, line)

    show_known_once._seq2vae_once = True
    warnings.showwarning = show_known_once
